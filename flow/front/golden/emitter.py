"""The ONNX graph under construction: nodes and initializers with unique generated names.

Every golden-model emitter (:mod:`flow.front.golden.emit`, :mod:`flow.front.golden.fusion`)
appends to one :class:`GraphEmitter`; the names it generates are ``hint__n`` with one counter,
so a graph is the same, name for name, whenever the IR is.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper


class GraphEmitter:
    """The nodes and initializers of one golden graph, in emission order."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}__{self._n}"

    def const(self, arr, hint: str, dtype=np.float32) -> str:
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), n))
        return n

    def node(self, op: str, inputs: list[str], output: str | None = None, hint: str = "",
             **attrs) -> str:
        out = output or self.name(hint or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out


def channel_shape(rank: int, c: int) -> tuple[int, ...]:
    """The shape ``(1, c, 1, ...)`` of a per-channel constant broadcast over a rank-``rank``
    NCHW tensor."""
    return (1, c) + (1,) * (rank - 2)
