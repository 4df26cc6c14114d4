"""Small seeded QONNX models for the flow tests (exported fresh into each test's tmp dir)."""

from __future__ import annotations

from pathlib import Path

import torch


def _export(net: torch.nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    net.eval()
    export_qonnx(net, torch.rand(*shape), str(path), dynamo=False)
    cleanup_model(ModelWrapper(str(path))).save(str(path))
    return path


def randomize_bn(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Spread BatchNorm statistics so thresholds land inside the accumulator ranges."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 6 - 3)
            m.running_var.copy_(torch.rand(n, generator=g) * 3.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return net


def brevitas_bnn_pynq(name: str, path: Path, seed: int = 0) -> Path:
    """Brevitas ``bnn_pynq`` TFC_1W1A / CNV_1W1A with seeded random weights, as QONNX."""
    from brevitas_examples.bnn_pynq.models import model_with_cfg

    torch.manual_seed(seed)
    net, _ = model_with_cfg(name, pretrained=False)
    shape = (1, 1, 28, 28) if name.startswith(("TFC", "SFC", "LFC")) else (1, 3, 32, 32)
    return _export(net, shape, path)


def si_resnet(path: Path, seed: int = 0, **overrides) -> Path:
    """Our SI-ResNet (small by default) with seeded weights and spread BatchNorm, as QONNX."""
    from quant_models import build_model

    torch.manual_seed(seed)
    kw = {"depth": [1, 1], "width": 8}
    kw.update(overrides)
    net = randomize_bn(build_model("si_resnet_w1a1", **kw), seed)
    c, h, w = net.spec.input_shape
    return _export(net, (1, c, h, w), path)
