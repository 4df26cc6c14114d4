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


def bnn_pynq_residual(path: Path, seed: int = 0, ch: int = 16) -> Path:
    """A residual W1A1 network of our own written with Brevitas' ``bnn_pynq`` quantizers
    (``CommonWeightQuant``, ``CommonActQuant``), not sibnn's registry: an 8-bit input quantizer
    as CNV has, a valid 3x3 binary conv, then a block whose 1x1 binary-conv branch (two convs)
    joins its input again by an add, requantised to 2 bits, a max pool and a binary FC. Seeded
    weights and spread BatchNorm statistics; exported the plain way (``export_qonnx``) and
    cleaned as :func:`flow.front.export.export_bnn_pynq` does."""
    import brevitas.nn as qnn
    from brevitas.core.restrict_val import RestrictValueType
    from brevitas.export import export_qonnx
    from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model
    from torch import nn

    def conv(cin, cout, k):
        return qnn.QuantConv2d(cin, cout, k, bias=False, weight_quant=CommonWeightQuant,
                               weight_bit_width=1)

    def act(bits):
        return qnn.QuantIdentity(act_quant=CommonActQuant, bit_width=bits)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=CommonActQuant, bit_width=8, min_val=-1.0,
                                         max_val=1.0 - 2.0 ** -7, narrow_range=False,
                                         restrict_scaling_type=RestrictValueType.POWER_OF_TWO)
            self.c0, self.b0, self.a0 = conv(1, ch, 3), nn.BatchNorm2d(ch), act(1)
            self.c1, self.b1, self.a1 = conv(ch, ch, 1), nn.BatchNorm2d(ch), act(1)
            self.c2, self.b2, self.a2 = conv(ch, ch, 1), nn.BatchNorm2d(ch), act(1)
            self.join = act(2)
            self.pool = nn.MaxPool2d(2)
            self.fc = qnn.QuantLinear(ch * 13 * 13, 10, bias=False,
                                      weight_quant=CommonWeightQuant, weight_bit_width=1)

        def forward(self, x):
            h = self.a0(self.b0(self.c0(self.inp(2.0 * x - 1.0))))
            y = self.a2(self.b2(self.c2(self.a1(self.b1(self.c1(h))))))
            z = self.pool(self.join(h + y))
            return self.fc(z.flatten(1))

    import numpy as np

    torch.manual_seed(seed)
    net = Residual()
    rng = np.random.default_rng(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.tensor(rng.normal(0, 2, m.num_features)))
            m.running_var.copy_(torch.tensor(rng.uniform(0.5, 4, m.num_features)))
    net.eval()
    path = Path(path)
    export_qonnx(net, torch.rand(1, 1, 28, 28), str(path), dynamo=False)
    cleanup_model(ModelWrapper(str(path))).save(str(path))
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
