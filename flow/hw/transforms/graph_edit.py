"""Small graph edits the rewrites share, and :class:`FixedPoint`, which runs rewrites to a fixed
point with the tidy-up only after one that changed the graph."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import get_by_name


class FixedPoint(Transformation):
    """Apply each transformation exhaustively, in order; report whether any changed the graph.

    The semantics of qonnx' ``ComposedTransformation`` (and so of FINN's ``StreamlinePlus``, which
    is a tree of them, reached to a fixed point by ``ModelWrapper.transform``), but the tidy-up
    (cleanup, unique names, shape and datatype inference) runs only after a transformation that
    changed something. qonnx runs it after every one, which made streamlining our nets cost minutes.
    """

    def __init__(self, transformations: list[Transformation]):
        super().__init__()
        self.transformations = list(transformations)

    @classmethod
    def from_composed(cls, t: Transformation) -> Transformation:
        """Convert a (nested) ``ComposedTransformation`` into the same tree of FixedPoints."""
        from qonnx.transformation.composed import ComposedTransformation

        if isinstance(t, ComposedTransformation):
            return cls([cls.from_composed(x) for x in t.transformations])
        return t

    def apply(self, model: ModelWrapper):
        from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames
        from qonnx.transformation.remove import RemoveIdentityOps

        modified = False
        for t in self.transformations:
            changed_here = False
            while True:
                model, changed = t.apply(model)
                if not changed:
                    break
                changed_here = True
            if changed_here:
                modified = True
                model.cleanup()
                for tidy in (RemoveIdentityOps(), GiveUniqueNodeNames(),
                             GiveReadableTensorNames(), InferShapes(), InferDataTypes()):
                    model = model.transform(tidy)
        return model, modified


def new_tensor(model: ModelWrapper, shape) -> str:
    """A new float tensor of ``shape`` (its value info added); returns its name."""
    name = model.make_new_valueinfo_name()
    model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    return name


def const(model: ModelWrapper, value, dtype: DataType | None = None) -> str:
    """A new float32 initializer holding ``value`` (typed ``dtype`` if given); returns its name."""
    arr = np.asarray(value, dtype=np.float32)
    name = model.make_new_valueinfo_name()
    model.set_initializer(name, arr)
    if dtype is not None:
        model.set_tensor_datatype(name, dtype)
    return name


def scalar_const(model: ModelWrapper, tensor: str) -> float | None:
    """The value of ``tensor`` when it is a one-element initializer, else None."""
    init = model.get_initializer(tensor)
    if init is None or init.size != 1:
        return None
    return float(np.asarray(init).reshape(-1)[0])


def bypass(model: ModelWrapper, node, replacement: str) -> bool:
    """Feed ``node``'s consumers from ``replacement`` and remove ``node`` (not for graph outputs).
    Returns whether it was removed."""
    if node.output[0] in [o.name for o in model.graph.output]:
        return False
    for c in model.find_consumers(node.output[0]) or []:
        for k, t in enumerate(c.input):
            if t == node.output[0]:
                c.input[k] = replacement
    model.graph.node.remove(node)
    return True


def insert_after(model: ModelWrapper, anchor, new_nodes) -> None:
    """Insert ``new_nodes`` right after node ``anchor`` (keeps the graph topologically sorted)."""
    idx = list(model.graph.node).index(anchor)
    for k, n in enumerate(new_nodes):
        model.graph.node.insert(idx + 1 + k, n)


def perm(node) -> list[int] | None:
    """A ``Transpose`` node's ``perm`` attribute, or None."""
    attr = get_by_name(node.attribute, "perm")
    return list(attr.ints) if attr is not None else None
