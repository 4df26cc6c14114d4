"""Quantisers: Brevitas' semantics (:class:`QuantSpec`, evaluated with torch float32) and the
integerizer's handlers of ``Quant`` / ``BipolarQuant`` (:class:`QuantizerHandlers`).

A quantiser on a pending float32 function of an integer tensor becomes a threshold node: the
function is evaluated on *every* integer of the input's proven range and the thresholds are read
off (:func:`read_thresholds`), so the result is exact by construction, ties included (Brevitas
rounds half to even; FINN's formula ``(k - 0.5) * s`` would round them up). A quantiser on a
constant (a weight) is folded into a :class:`QuantConst`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from onnx import helper

from flow.front.ir import IntTensor, Pending, f32_tensor
from sibnn_base.errors import UnsupportedGraphError

if TYPE_CHECKING:  # torch is imported where it runs: a CLI's argument errors stay fast
    import torch


@dataclass(frozen=True)
class QuantSpec:
    """One ``Quant`` / ``BipolarQuant`` node's parameters: integer levels ``min_int..max_int``
    on the grid ``scale``, Brevitas' rounding mode."""

    scale: np.ndarray
    zero_point: float
    min_int: int
    max_int: int
    rounding: str
    bipolar: bool

    def apply(self, y: torch.Tensor, layout_rank: int) -> torch.Tensor:
        import torch

        """Integer level (as float tensor) of ``y``; exactly Brevitas' operations."""
        if self.bipolar:
            return torch.where(y >= 0, 1.0, -1.0)
        s = f32_tensor(self.scale)
        if s.ndim == 1 and s.numel() > 1:
            s = s.reshape((1, -1) + (1,) * (layout_rank - 2))
        z = y / s + float(self.zero_point)
        z = {"ROUND": torch.round, "FLOOR": torch.floor, "CEIL": torch.ceil,
             "ROUND_TO_ZERO": torch.trunc}[self.rounding](z)
        z = torch.clamp(z, float(self.min_int), float(self.max_int))
        return z - float(self.zero_point)


def attr(node, name, default=None):
    """The value of ONNX attribute ``name`` of ``node``, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def int_bounds(bw: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """The integer range of a ``bw``-bit quantiser."""
    if signed:
        lo = -(2 ** (bw - 1)) + (1 if narrow else 0)
        return lo, 2 ** (bw - 1) - 1
    return 0, 2**bw - 1 - (1 if narrow else 0)


def is_pow2(a: np.ndarray) -> bool:
    """Whether every value of ``a`` is a positive power of two."""
    a = np.asarray(a, dtype=np.float64)
    if np.any(a <= 0):
        return False
    m, _ = np.frexp(a)
    return bool(np.all(m == 0.5))


@dataclass
class QuantConst:
    """A quantised constant (a weight): its integers ``q`` and the quantiser that made them."""

    q: np.ndarray
    spec: QuantSpec


def read_thresholds(q, grid, lo, hi, qmin, qmax, step, node):
    """Per-channel thresholds on ``direction * acc`` reproducing ``q`` (C, L) over ``grid``."""
    C, L = q.shape
    n_levels = (qmax - qmin) // step
    thr = np.zeros((C, n_levels), np.int64)
    direction = np.ones(C, np.int64)
    for c in range(C):
        n = int(hi[c] - lo[c]) + 1
        qc = q[c, :n]
        d = np.diff(qc)
        if np.all(d >= 0):
            direction[c] = 1
            accs = grid[c, :n]
            for k in range(n_levels):
                level = qmin + step * (k + 1)
                idx = np.nonzero(qc >= level)[0]
                thr[c, k] = accs[idx[0]] if idx.size else hi[c] + 1
        elif np.all(d <= 0):
            direction[c] = -1
            accs = -grid[c, :n][::-1]
            qr = qc[::-1]
            for k in range(n_levels):
                level = qmin + step * (k + 1)
                idx = np.nonzero(qr >= level)[0]
                thr[c, k] = accs[idx[0]] if idx.size else -lo[c] + 1
        else:
            raise UnsupportedGraphError(
                f"{node.op_type} node {node.name}: channel {c} is not monotone in its integer "
                "input, so it cannot be expressed as thresholds")
        if np.any((qc - qmin) % step):
            raise UnsupportedGraphError(f"{node.op_type} {node.name}: levels off the grid")
    return thr, direction


class QuantizerHandlers:
    """The :class:`~flow.front.integerize.Integerizer`'s ``Quant`` / ``BipolarQuant`` handlers
    and the quantiser reading that constant folding shares."""

    def quant_spec(self, node, ins) -> QuantSpec:
        if node.op_type == "BipolarQuant":
            return QuantSpec(np.asarray(ins[1], np.float64), 0.0, -1, 1, "ROUND", True)
        scale, zp, bw = (np.asarray(ins[1], np.float64), ins[2], ins[3])
        if np.any(np.asarray(zp) != 0):
            raise UnsupportedGraphError(f"Quant node {node.name}: non-zero zero point")
        if np.asarray(bw).size != 1 or float(bw) != int(bw):
            raise UnsupportedGraphError(f"Quant node {node.name}: bit width must be an integer")
        lo, hi = int_bounds(int(bw), bool(attr(node, "signed", 1)), bool(attr(node, "narrow", 0)))
        rnd = attr(node, "rounding_mode", b"ROUND")
        rnd = rnd.decode() if isinstance(rnd, bytes) else str(rnd)
        if rnd not in ("ROUND", "FLOOR", "CEIL", "ROUND_TO_ZERO"):
            raise UnsupportedGraphError(f"Quant node {node.name}: rounding mode {rnd}")
        return QuantSpec(scale, 0.0, lo, hi, rnd, False)

    def quant_const(self, node, ins):
        spec = self.quant_spec(node, ins)
        x = f32_tensor(ins[0])
        q = spec.apply(x, x.ndim).numpy().astype(np.int64)
        return q, spec

    def op_Quant(self, node) -> None:
        self.activation_quant(node)

    def op_BipolarQuant(self, node) -> None:
        self.activation_quant(node)

    def activation_quant(self, node) -> None:
        ins = [self.const(i) for i in node.input]
        spec = self.quant_spec(node, ins)
        src = self.env.get(node.input[0])
        if not isinstance(src, (IntTensor, Pending)):
            raise UnsupportedGraphError(f"{node.op_type} node {node.name}: input is not computed")
        pend = self.as_pending(src)
        base = pend.base
        scale = np.asarray(spec.scale, np.float64)
        out_scale = scale if scale.size > 1 else scale.reshape(())
        step = 2 if spec.bipolar else 1
        levels = (spec.min_int, spec.max_int)
        rank = len(base.shape)
        C = base.channels
        lo, hi = base.per_channel(base.lo), base.per_channel(base.hi)
        length = int(np.max(hi - lo)) + 1
        grid = lo[:, None] + np.minimum(np.arange(length)[None, :], (hi - lo)[:, None])  # (C, L)
        import torch

        if rank == 4:
            t = torch.from_numpy(grid.astype(np.float32)).reshape(1, C, length, 1)
        elif rank == 2:
            t = torch.from_numpy(grid.astype(np.float32)).T.contiguous()  # (L, C)
        else:
            raise UnsupportedGraphError(f"{node.op_type} {node.name}: rank-{rank} input")
        with torch.no_grad():
            y = t
            for fop in pend.all_ops():
                y = fop.torch(y)
            q = spec.apply(y, rank)
        q = q.reshape(1, C, length).squeeze(0) if rank == 4 else q.T
        q = q.numpy().astype(np.int64)  # (C, L)
        out_name = self.fresh("q")
        # the function is the identity or a clamp of the integer: no thresholds needed
        if not spec.bipolar and np.array_equal(q, np.clip(grid, spec.min_int, spec.max_int)):
            qlo, qhi = np.clip(lo, *levels), np.clip(hi, *levels)
            out = IntTensor(out_name, base.shape, out_scale, qlo, qhi, is_pow2(scale))
            if np.all(lo >= spec.min_int) and np.all(hi <= spec.max_int):
                out.name = base.name  # an alias: same integers, the quantizer's scale
                self.env[node.output[0]] = out
                return
            self.emit("clip", [base.name], out, node, min=spec.min_int, max=spec.max_int)
            self.env[node.output[0]] = out
            return
        thr, direction = read_thresholds(q, grid, lo, hi, spec.min_int, spec.max_int, step, node)
        qlo = q.min(axis=1)
        qhi = q.max(axis=1)
        out = IntTensor(out_name, base.shape, out_scale, qlo, qhi, is_pow2(scale))
        self.emit("threshold", [base.name], out, node, thresholds=thr, direction=direction,
                  base=spec.min_int, step=step, bipolar=spec.bipolar)
        self.env[node.output[0]] = out
