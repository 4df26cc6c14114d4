"""sibnn's integer IR: the exact integer arithmetic every later stage reproduces bit for bit.

Built from a cleaned QONNX graph by :mod:`flow.front.integerize`, emitted as the standard-ONNX
golden model by :mod:`flow.front.golden` and lowered to a FINN graph by :mod:`flow.hw.lower`.
A tensor is an :class:`IntTensor` (integers ``q`` with ``real = scale * q`` and proven per-channel
bounds) or, while it is being built, a :class:`Pending` float32 function of one; the network is
an :class:`IntegerIR` of :class:`IRNode` s in topological order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it runs: a CLI's argument errors stay fast
    import torch

F32_EXACT = 2**24
"""Integers up to this magnitude are exact in float32: the golden model's accumulation bound."""


# ------------------------------------------------------------------------------------------------
# IR values
# ------------------------------------------------------------------------------------------------
@dataclass
class IntTensor:
    """``real = scale * q``; ``q`` integer with ``lo <= q <= hi`` (per channel along axis 1)."""

    name: str
    shape: tuple[int, ...]
    scale: np.ndarray  # float64, scalar () or per-channel (C,)
    lo: np.ndarray  # int64, () or (C,)
    hi: np.ndarray
    dyadic: bool = True  # scale is a power of two (float conv of Brevitas is exact)

    @property
    def channels(self) -> int:
        return self.shape[1] if len(self.shape) >= 2 else 1

    def per_channel(self, arr: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(arr), (self.channels,)).copy()


@dataclass(frozen=True)
class FloatOp:
    """One float32 op of a pending chain. ``kind`` in: mul, add, sub, div, bn, relu, clip."""

    kind: str
    params: tuple = ()

    def torch(self, t: torch.Tensor) -> torch.Tensor:
        import torch

        k, p = self.kind, self.params
        if k == "mul":
            return t * f32_tensor(p[0])
        if k == "add":
            return t + f32_tensor(p[0])
        if k == "sub":
            return t - f32_tensor(p[0])
        if k == "rsub":
            return f32_tensor(p[0]) - t
        if k == "div":
            return t / f32_tensor(p[0])
        if k == "bn":
            mean, var, w, b, eps = p
            return torch.nn.functional.batch_norm(t, f32_tensor(mean), f32_tensor(var),
                                                  f32_tensor(w), f32_tensor(b), False, 0.0,
                                                  float(eps))
        if k == "relu":
            return torch.relu(t)
        if k == "clip":
            return torch.clamp(t, float(p[0]), float(p[1]))
        raise AssertionError(k)


def f32_tensor(a) -> torch.Tensor:
    """``a`` as a float32 torch tensor (a copy)."""
    import torch

    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


@dataclass
class Pending:
    """``float32 chain(to_float(base))``: an unquantised function of an integer tensor."""

    base: IntTensor
    ops: list[FloatOp] = field(default_factory=list)
    pre: FloatOp | None = None  # how the base becomes float (default: mul by its scale)

    def all_ops(self) -> list[FloatOp]:
        first = self.pre or FloatOp("mul", (_scale_bcast(self.base),))
        return [first, *self.ops]


def _scale_bcast(t: IntTensor) -> np.ndarray:
    s = np.asarray(t.scale, dtype=np.float32)
    if s.ndim == 0:
        return s
    return s.reshape((1, -1) + (1,) * (len(t.shape) - 2))


# ------------------------------------------------------------------------------------------------
# IR nodes (what the golden model and the FINN lowering emit)
# ------------------------------------------------------------------------------------------------
@dataclass
class IRNode:
    op: str  # input | conv | matmul | threshold | clip | add | pad | maxpool | sum | reshape | shift
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    source: str = ""  # the QONNX node it came from


@dataclass
class IROutput:
    name: str  # QONNX output name (logits or a tap)
    tensor: str  # IR integer tensor
    scale: np.ndarray
    chain: list[FloatOp]  # float ops from integer to the model's float output (logits)


@dataclass
class IntegerIR:
    """The network in exact integer arithmetic. ``nodes`` are in topological order."""

    nodes: list[IRNode]
    tensors: dict[str, IntTensor]
    input_name: str
    input_shape: tuple[int, ...]  # NCHW of the float model input
    outputs: list[IROutput]
    notes: list[str] = field(default_factory=list)
