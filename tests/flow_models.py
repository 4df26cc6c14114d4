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
