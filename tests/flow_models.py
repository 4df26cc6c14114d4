"""Small seeded QONNX models for the flow tests (exported fresh into each test's tmp dir).
Brevitas' bnn_pynq networks come from the product (:func:`flow.front.export.export_bnn_pynq`), which the
benchmarks use too."""

from __future__ import annotations

from pathlib import Path

import torch


def si_resnet(path: Path, seed: int = 0, **overrides) -> Path:
    """Our SI-ResNet (small by default) with seeded weights and spread BatchNorm, as QONNX."""
    import numpy as np

    from flow.front.export import export_qonnx_model
    from quant_models import build_model
    from quant_models.stress import randomize_bn

    torch.manual_seed(seed)
    kw = {"depth": [1, 1], "width": 8}
    kw.update(overrides)
    net = build_model("si_resnet_w1a1", **kw)
    randomize_bn(net, np.random.default_rng(seed))
    export_qonnx_model(net.eval(), path)
    return path


def bnn_pynq_plain(name: str, path: Path, seed: int = 0, dynamo: bool | None = None) -> Path:
    """Brevitas' ``bnn_pynq`` network ``name`` (e.g. ``TFC_1W1A``) with seeded random weights and
    BatchNorms, exported the plain way a user would: ``brevitas.export.export_qonnx(model,
    input_t=..., export_path=...)``, no cleanup. ``dynamo`` None keeps Brevitas' default exporter
    (torch.export with this torch); False is the TorchScript exporter, whose graph keeps
    TensorNorm's ``Pow`` on two initializers."""
    import numpy as np
    from brevitas.export import export_qonnx
    from brevitas_examples.bnn_pynq.models import model_with_cfg

    from quant_models.stress import randomize_bn

    torch.manual_seed(seed)
    net, _ = model_with_cfg(name, pretrained=False)
    randomize_bn(net, np.random.default_rng(seed))
    net.eval()
    shape = (1, 1, 28, 28) if name.startswith(("TFC", "SFC", "LFC")) else (1, 3, 32, 32)
    kw = {} if dynamo is None else {"dynamo": dynamo}
    export_qonnx(net, input_t=torch.rand(*shape), export_path=str(path), **kw)
    return path
