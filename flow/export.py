"""Brevitas -> QONNX export (TorchScript path) and the ``sibnn-export`` CLI.

``export_qonnx_model`` writes a cleaned QONNX file whose input ``x`` is ``pixel / 255`` (float32,
NCHW) and whose outputs are ``logits`` and, with ``with_taps=True``, every block tap by name.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

TAPS_OUTPUT_PREFIX = ""
"""Tap outputs keep their tap names (``stem``, ``block_0``, ...) in the QONNX graph."""


def export_qonnx_model(model: nn.Module, path: str | Path, *, with_taps: bool = False,
                       input_shape: tuple[int, ...] | None = None):
    """Export ``model`` (eval mode) to a cleaned QONNX file and return its ``ModelWrapper``.

    Brevitas' default dynamo export turns pooling into ops FINN never maps, so the TorchScript
    exporter is used (``dynamo=False``), followed by qonnx ``cleanup_model``.
    """
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    from quant_models.networks import TapOutputs

    path = Path(path)
    model = model.eval()
    if input_shape is None:
        spec = getattr(model, "spec", None)
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
