"""The one door from models to ONNX: which weights (:func:`resolve_network`), Brevitas -> QONNX
export (TorchScript path) and the one loader of QONNX files (:func:`load_qonnx`). The export
bundle and the ``sibnn-export`` CLI, which prove the export exact, are :mod:`flow.proof.export`.

``export_qonnx_model`` writes a cleaned QONNX file whose input ``x`` is ``pixel / 255`` (float32,
NCHW) and whose outputs are ``logits`` and, with ``with_taps=True``, every block tap by name. The
file describes itself in ``metadata_props`` (:data:`METADATA_KEYS`): architecture, model
arguments, weights, checkpoint sha256 and seed, so a build of it knows what it compiles.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

METADATA_KEYS = ("sibnn_arch", "sibnn_model_args", "sibnn_weights", "sibnn_checkpoint_sha256",
                 "sibnn_seed")
"""What an exported QONNX file says about itself (ONNX ``metadata_props``)."""


@dataclass(frozen=True)
class Weights:
    """Which weights a network carries: decided once (:func:`resolve_network`) for every tool."""

    arch: str
    """Registry name of the architecture."""
    kind: str
    """``checkpoint`` (a user file), ``shipped`` (the registry's sha256-pinned file) or
    ``untrained`` (seeded initialisation)."""
    description: str
    """One line for reports: ``checkpoint runs/x/best.pt``, ``shipped si_resnet_w1a1_fmnist.pt``."""
    sha256: str | None = None
    """sha256 of the checkpoint file (None for untrained weights)."""
    seed: int = 0
    """The torch seed the network was built under (it decides untrained weights)."""


def resolve_network(name: str | None = None, *, checkpoint: str | None = None,
                    overrides: dict | None = None, seed: int = 0,
                    allow_untrained: bool = True,
                    strict_checkpoint: bool = False) -> tuple[nn.Module, Weights]:
    """The network to export and which weights it carries, in eval mode. The one rule:

    * a ``checkpoint`` path: its weights and architecture (``name``, if given, must match);
    * else the registry model ``name`` (default: the shipped student) with its shipped,
      sha256-verified checkpoint when there is one and no ``overrides`` change the network;
    * else seeded untrained weights (``torch.manual_seed(seed)``), unless ``allow_untrained`` is
      False (a one-line :class:`~sibnn_base.errors.CheckpointError`).

    ``strict_checkpoint`` refuses a checkpoint without a payload hash (else: a logged warning).
    """
    from flow.config import DEFAULT_MODEL
    from quant_models import build_model, model_from_checkpoint
    from quant_models.checkpoint import file_sha256
    from quant_models.registry import get_entry
    from sibnn_base.errors import CheckpointError, ConfigError

    torch.manual_seed(seed)
    if checkpoint:
        if overrides:
            raise ConfigError("model overrides cannot be combined with a checkpoint: the "
                              "checkpoint's model_args define the network")
        net = model_from_checkpoint(checkpoint, expected_arch=name, strict=strict_checkpoint)
        return net.eval(), Weights(net.arch, "checkpoint", f"checkpoint {checkpoint}",
                                   file_sha256(checkpoint), seed)
    name = name or DEFAULT_MODEL
    entry = get_entry(name)
    if entry.pretrained is not None and not overrides:
        net = build_model(name, pretrained=True)
        return net.eval(), Weights(name, "shipped", f"shipped {entry.pretrained.file}",
                                   entry.pretrained.sha256, seed)
    if not allow_untrained:
        raise CheckpointError(f"no pretrained checkpoint is shipped for {name}; train one with "
                              "sibnn-train and pass it with --checkpoint")
    net = build_model(name, **(overrides or {}))
    return net.eval(), Weights(name, "untrained", f"untrained, seed {seed} (no shipped "
                               "checkpoint" + (" for these overrides" if entry.pretrained else "")
                               + ")", None, seed)


def describe(mw, weights: Weights | None, model: nn.Module) -> None:
    """Write what the exported file is (:data:`METADATA_KEYS`) into its ``metadata_props``."""
    spec = getattr(model, "spec", None)
    arch = weights.arch if weights else getattr(model, "arch", type(model).__name__)
    props = {"sibnn_arch": arch,
             "sibnn_model_args": json.dumps(spec.to_dict()) if spec is not None else "",
             "sibnn_weights": weights.description if weights else "given module",
             "sibnn_checkpoint_sha256": (weights.sha256 or "") if weights else "",
             "sibnn_seed": str(weights.seed) if weights else ""}
    for k, v in props.items():
        mw.set_metadata_prop(k, v)


def description(mw) -> dict[str, str]:
    """The :data:`METADATA_KEYS` an exported QONNX file carries (empty for foreign files)."""
    return {k: v for k in METADATA_KEYS if (v := mw.get_metadata_prop(k))}


def export_qonnx_model(model: nn.Module, path: str | Path, *, with_taps: bool = False,
                       input_shape: tuple[int, ...] | None = None,
                       weights: Weights | None = None):
    """Export ``model`` (eval mode) to a cleaned QONNX file and return its ``ModelWrapper``; the
    file carries :data:`METADATA_KEYS` (``weights`` from :func:`resolve_network`).

    Brevitas' default dynamo export turns pooling into ops FINN never maps, so the TorchScript
    exporter is used (``dynamo=False``), followed by qonnx ``cleanup_model``.
    """
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    from quant_models.networks import TapOutputs
    from sibnn_base.errors import UnsupportedGraphError

    path = Path(path)
    model = model.eval()
    spec = getattr(model, "spec", None)
    if spec is not None and spec.float_weights:
        raise UnsupportedGraphError(
            "this network has float weights (float_weights: the first stage of the staged "
            "recipe), so it is not W1A1 and cannot be exported; use the final stage's checkpoint")
    if input_shape is None:
        if spec is None:
            raise ValueError("input_shape is required for models without a NetSpec")
        input_shape = (1, *spec.input_shape)
    if with_taps:
        names = ["logits", *model.tap_names]
        module: nn.Module = TapOutputs(model).eval()
    else:
        names = ["logits"]
        module = model
    dummy = torch.zeros(input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(module, dummy, str(path), dynamo=False, input_names=["x"], output_names=names)
    mw = cleanup_model(ModelWrapper(str(path)))
    _rename_io(mw, ["x"], names)
    describe(mw, weights, model)
    mw.save(str(path))
    return mw


def _rename_io(mw, in_names: list[str], out_names: list[str]) -> None:
    """cleanup_model renames graph I/O to global_in/global_out_N; restore meaningful names."""
    graph = mw.graph
    mapping = {}
    for vi, new in zip(graph.input, in_names, strict=True):
        mapping[vi.name] = new
    for vi, new in zip(graph.output, out_names, strict=True):
        mapping[vi.name] = new
    for old, new in mapping.items():
        if old != new:
            mw.rename_tensor(old, new)


def export_bnn_pynq(name: str, path: str | Path, seed: int = 0) -> Path:
    """Brevitas' ``bnn_pynq`` example network ``name`` (TFC_1W1A, SFC_1W1A, LFC_1W1A, CNV_1W1A,
    ...) with seeded random weights, exported as cleaned QONNX exactly as a user's plain
    ``brevitas.export.export_qonnx`` would write it: the reference networks sibnn is compared with
    (finn-examples' BNNs)."""
    from brevitas.export import export_qonnx
    from brevitas_examples.bnn_pynq.models import model_with_cfg
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    torch.manual_seed(seed)
    net, _ = model_with_cfg(name, pretrained=False)
    shape = (1, 1, 28, 28) if name.startswith(("TFC", "SFC", "LFC")) else (1, 3, 32, 32)
    path = Path(path)
    net.eval()
    export_qonnx(net, torch.rand(*shape), str(path), dynamo=False)
    cleanup_model(ModelWrapper(str(path))).save(str(path))
    return path


def load_qonnx(path: str | Path, *, for_golden: bool = False):
    """The one loader of QONNX files (``--onnx`` of sibnn-build and sibnn-export): one-line errors
    for a missing, empty or unreadable file; then qonnx's cleanup (constant folding, shape
    inference), and every layer of the *cleaned* graph checked, since that is the graph the flow
    compiles, but named as the file names it (:func:`flow.front.support.tag_source_names`).
    Returns the cleaned ``ModelWrapper``.

    A build checks that the flow maps every layer (:func:`flow.front.support.check_supported`);
    ``for_golden`` (sibnn-export) instead needs Quant nodes and ops the integer IR covers."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.front.support import (
        check_for_golden,
        check_supported,
        tag_source_names,
        untag_source_names,
    )
    from sibnn_base.errors import ConfigError, UnsupportedGraphError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX file {path} does not exist")
    if path.stat().st_size == 0:
        raise ConfigError(f"ONNX file {path} is empty (0 bytes)")
    try:
        proto = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and friends
        raise UnsupportedGraphError(f"{path} is not a readable ONNX file "
                                    f"({type(err).__name__})") from None
    if len(proto.graph.node) == 0:
        raise UnsupportedGraphError(f"{path} has an empty graph")
    model = ModelWrapper(proto)
    from flow.front.floatops import check_quantized  # structure and numbers, apart from ops
    from flow.front.wellformed import check_well_formed

    check_well_formed(model)
    check_quantized(model)
    tag_source_names(model)
    check = (lambda m: check_for_golden(m, path)) if for_golden else check_supported
    clean = _cleaned(model, path, check)
    check(clean)
    untag_source_names(clean)
    return clean


def _cleaned(model, path: Path, check):
    """qonnx's cleanup of ``model``. A graph it cannot process is refused in one line, naming
    the unsupported layers of the raw graph where there are any (they are the likely cause)."""
    from qonnx.util.cleanup import cleanup_model

    from sibnn_base.errors import UnsupportedGraphError

    try:
        return cleanup_model(model)
    except Exception as err:  # qonnx/onnx raise anything on a graph they cannot take
        check(model)
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UnsupportedGraphError(
            f"{path}: qonnx's cleanup (shape inference, constant folding) fails on this graph "
            f"({type(err).__name__}{': ' + msg if msg else ''})") from None
