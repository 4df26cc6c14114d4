"""Self-describing checkpoints, written atomically and loaded with ``weights_only=True``.

Layout (plain types only)::

    {"format_version": 1, "arch": str, "model_args": dict, "state_dict": {name: Tensor},
     "optimizer": dict | None, "epoch": int, "metrics": dict, "config": dict,
     "payload_sha256": str}

``payload_sha256`` hashes every tensor of ``state_dict`` (name, dtype, shape, bytes) and is checked
on load, so flipped weight bytes are refused instead of exported and reported "exact".
Checkpoints written before it existed load with an :class:`UnverifiedCheckpointWarning` (one
line, in the run's log), or are refused with ``strict=True`` (``--strict-checkpoint``).

``model_args`` is the :class:`~quant_models.networks.NetSpec` as a dict, so the network rebuilds
without any config file (nanoGPT's ``model_args``).

This module knows nothing of the model registry: rebuilding a network from a loaded checkpoint is
:func:`quant_models.registry.model_from_ckpt` (imports run registry -> checkpoint, never back).
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sibnn_base.atomic import atomic_write
from sibnn_base.errors import CheckpointError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "arch", "model_args", "state_dict", "optimizer", "epoch",
                 "metrics", "config")


def make_checkpoint(model: nn.Module, *, arch: str | None = None, optimizer: Any = None,
                    epoch: int = 0, metrics: dict | None = None, config: dict | None = None) -> dict:
    arch = arch or getattr(model, "arch", None)
    spec = getattr(model, "spec", None)
    if arch is None or spec is None:
        raise ValueError("model has no arch/spec; build it with quant_models.build_model")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "model_args": spec.to_dict(),
        "state_dict": state,
        "payload_sha256": payload_sha256(state),
        "optimizer": optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer,
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        "config": dict(config or {}),
    }


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in chunks (what a shipped checkpoint is pinned by)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def payload_sha256(state: dict) -> str:
    """sha256 over a state dict's tensors in name order: name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"state_dict entry {name!r} is not a tensor")
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module | None = None, *, ckpt: dict | None = None,
                    **kwargs) -> Path:
    """Write a checkpoint atomically (:func:`atomic_write`)."""
    if ckpt is None:
        ckpt = make_checkpoint(model, **kwargs)
    return atomic_write(path, lambda fh: torch.save(ckpt, fh))


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without ``payload_sha256``: its tensors cannot be checked."""


def _check_payload(path: Path, ckpt: dict, strict: bool) -> None:
    want = ckpt.get("payload_sha256")
    if want is None:
        msg = (f"checkpoint {path} has no payload_sha256, so its tensors cannot be verified; "
               "re-save it with quant_models.checkpoint.save_checkpoint")
        if strict:
            raise CheckpointError(f"{msg} (refused: --strict-checkpoint)")
        import warnings

        warnings.warn(msg, UnverifiedCheckpointWarning, stacklevel=3)
        return
    if not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"checkpoint {path}: state_dict is not a mapping")
    got = payload_sha256(ckpt["state_dict"])
    if got != want:
        raise CheckpointError(f"checkpoint {path} is corrupt: its tensors hash to "
                              f"{got[:12]}..., the checkpoint records {str(want)[:12]}...")


def load_checkpoint(path: str | Path, expected_arch: str | None = None, *,
                    strict: bool = False) -> dict:
    """Load and validate a checkpoint; every failure is a one-line :class:`CheckpointError`.
    ``strict`` refuses a checkpoint without ``payload_sha256`` (else it loads with a warning)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:  # torch's weights-only unpickler met a class or function
            raise CheckpointError(
                f"checkpoint {path} was refused: it contains Python objects ({found.group(1)}), "
                "not only tensors and plain data, and sibnn never unpickles code; re-save the "
                "weights with quant_models.checkpoint.save_checkpoint") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (not a valid "
                              "pickle)") from None
    except Exception as err:  # noqa: BLE001 - torch's reader of a damaged file raises anything
        # (RuntimeError, EOFError, BadZipFile, ValueError, OSError, AssertionError, ...)
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated "
                              f"({_first_line(err)})") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path} is not a sibnn checkpoint (no format_version); "
                              "save with quant_models.checkpoint.save_checkpoint")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {ckpt['format_version']}, "
                              f"this sibnn reads format {FORMAT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks key(s) {', '.join(missing)}")
    _check_payload(path, ckpt, strict)
    if expected_arch is not None and ckpt["arch"] != expected_arch:
        raise CheckpointError(f"checkpoint {path} is a {ckpt['arch']!r} checkpoint, "
                              f"not {expected_arch!r}")
    return ckpt


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:120] if text else type(err).__name__

