"""Layout rewrites: transposes, pads, pooling and sliding windows put where FINN's layers want
them on the NHWC stream, and sliding windows that do nothing, or the same thing twice, removed.

* :class:`GlobalSumPoolToAccPool`: ``ReduceSum`` over the spatial axes (our global sum pool)
  becomes FINN's ``GlobalAccPool`` on the NHWC stream.
* :class:`MovePadBeforeTranspose`, :class:`MoveTransposeBeforeMultiThreshold`: the explicit
  ``Pad`` and the input quantizer move to the NHWC side of a transpose.
* :class:`RemoveIdentityIm2Col`, :class:`ShareIdenticalIm2Col`: a 1x1 stride-1 window is dropped;
  two identical windows on one tensor become one.
"""

from __future__ import annotations

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.base import Transformation
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import get_by_name

from flow.env.finn import HW_DOMAIN
from flow.hw.transforms.graph_edit import bypass, const, new_tensor, perm


class GlobalSumPoolToAccPool(Transformation):
    """``ReduceSum`` over H, W of a 4D tensor (global sum pool) -> FINN ``GlobalAccPool``.

    Matches ``Transpose(perm=[0,3,1,2])`` (NHWC -> NCHW) followed by ``ReduceSum(axes=[2,3])``, the
    form it takes after conv lowering, and pools the NHWC stream directly; the output is reshaped
    to ``[N, C]`` when ``keepdims=0``. The input must have an integer type.
    """

    def apply(self, model: ModelWrapper):
        for rs in model.graph.node:
            if rs.op_type != "ReduceSum" or len(rs.input) < 2:
                continue
            axes = model.get_initializer(rs.input[1])
            shape = model.get_tensor_shape(rs.input[0])
            if axes is None or shape is None or len(shape) != 4:
                continue
            if sorted(int(a) % 4 for a in np.atleast_1d(axes)) != [2, 3]:
                continue
            tr = model.find_producer(rs.input[0])
            if tr is None or tr.op_type != "Transpose" or \
                    list(get_by_name(tr.attribute, "perm").ints) != [0, 3, 1, 2]:
                continue
            if len(model.find_consumers(tr.output[0])) != 1:
                continue
            nhwc = tr.input[0]
            idt = model.get_tensor_datatype(nhwc)
            if not idt.is_integer():
                continue
            n, h, w, c = model.get_tensor_shape(nhwc)
            keep = get_by_name(rs.attribute, "keepdims")
            keepdims = 1 if keep is None else keep.i
            out = rs.output[0]
            pooled = new_tensor(model, [n, 1, 1, c])
            pool = helper.make_node("GlobalAccPool", [nhwc], [pooled],
                                    domain=HW_DOMAIN, backend="fpgadataflow",
                                    NumChannels=c, PE=1, inputDataType=idt.name,
                                    numInputVectors=[n, h, w], name=f"GlobalAccPool_{rs.name}")
            shape_out = [n, c] if not keepdims else [n, c, 1, 1]
            if keepdims:
                tail = helper.make_node("Transpose", [pooled], [out], perm=[0, 3, 1, 2])
            else:
                tail = helper.make_node("Reshape", [pooled, const(model, np.array(shape_out, dtype=np.int64))], [out])
                model.set_initializer(tail.input[1], np.array(shape_out, dtype=np.int64))
            idx = list(model.graph.node).index(rs)
            model.graph.node.insert(idx, pool)
            model.graph.node.insert(idx + 1, tail)
            model.graph.node.remove(rs)
            model.graph.node.remove(tr)
            model.set_tensor_layout(pooled, ["N", "H", "W", "C"])
            model = model.transform(InferShapes())
            model = model.transform(InferDataTypes())
            return model, True
        return model, False


class MovePadBeforeTranspose(Transformation):
    """``Transpose(NHWC->NCHW) -> Pad(H, W only)`` becomes ``Pad(NHWC, axes=[1, 2]) -> Transpose``.

    FINN's ``FMPadding`` wants an NHWC ``Pad`` with ``axes=[1, 2]``; conv lowering leaves our
    explicit ``Pad`` in NCHW between two transposes, which then cancel.
    """

    def apply(self, model: ModelWrapper):
        for pad in model.graph.node:
            if pad.op_type != "Pad" or len(pad.input) < 2:
                continue
            tr = model.find_producer(pad.input[0])
            if tr is None or tr.op_type != "Transpose" or perm(tr) != [0, 3, 1, 2]:
                continue
            pads = model.get_initializer(pad.input[1])
            if pads is None or len(pads) != 8 or (len(pad.input) > 3 and pad.input[3]):
                continue
            pads = [int(p) for p in pads]
            if pads[0] or pads[1] or pads[4] or pads[5]:
                continue
            value = pad.input[2] if len(pad.input) > 2 else ""
            n, h, w, c = model.get_tensor_shape(tr.input[0])
            padded = new_tensor(model, [n, h + pads[2] + pads[6], w + pads[3] + pads[7], c])
            new_pad = helper.make_node(
                "Pad", [tr.input[0], const(model, np.array([pads[2], pads[3], pads[6], pads[7]], dtype=np.int64)),
                        value, const(model, np.array([1, 2], dtype=np.int64))],
                [padded], mode="constant", name=pad.name)
            model.set_initializer(new_pad.input[1], np.array([pads[2], pads[3], pads[6], pads[7]], dtype=np.int64))
            model.set_initializer(new_pad.input[3], np.array([1, 2], dtype=np.int64))
            new_tr = helper.make_node("Transpose", [padded], [pad.output[0]], perm=[0, 3, 1, 2],
                                      name=f"{pad.name}_to_nchw")
            idx = list(model.graph.node).index(pad)
            model.graph.node.insert(idx, new_pad)
            model.graph.node.insert(idx + 1, new_tr)
            model.graph.node.remove(pad)
            if not model.find_consumers(tr.output[0]):
                model.graph.node.remove(tr)
            model.set_tensor_datatype(padded, model.get_tensor_datatype(tr.input[0]))
            model.set_tensor_layout(padded, ["N", "H", "W", "C"])
            return model.transform(InferShapes()), True
        return model, False


class MoveTransposeBeforeMultiThreshold(Transformation):
    """``MultiThreshold(NCHW) -> Transpose(NCHW->NHWC)`` becomes ``Transpose -> MultiThreshold(NHWC)``.

    A per-channel threshold commutes with a layout change; moving the transpose up lets
    :class:`~flow.hw.transforms.interface.AbsorbInputTranspose` fold it into the interface when the threshold reads the graph
    input (Brevitas CNV's 8-bit input quantizer).
    """

    def apply(self, model: ModelWrapper):
        for mt in model.graph.node:
            if mt.op_type != "MultiThreshold":
                continue
            inst = getCustomOp(mt)
            if inst.get_nodeattr("data_layout") not in ("NCHW", ""):
                continue
            cons = model.find_consumers(mt.output[0]) or []
            if len(cons) != 1 or cons[0].op_type != "Transpose" or perm(cons[0]) != [0, 2, 3, 1]:
                continue
            if mt.output[0] in [o.name for o in model.graph.output]:
                continue
            tr = cons[0]
            x, y, z = mt.input[0], mt.output[0], tr.output[0]
            n, c, h, w = model.get_tensor_shape(x)
            dt = model.get_tensor_datatype(y)
            tr.input[0], tr.output[0] = x, y
            mt.input[0], mt.output[0] = y, z
            model.set_tensor_shape(y, [n, h, w, c])
            model.set_tensor_datatype(y, model.get_tensor_datatype(x))
            model.set_tensor_datatype(z, dt)
            inst.set_nodeattr("data_layout", "NHWC")
            nodes = model.graph.node
            i_mt, i_tr = list(nodes).index(mt), list(nodes).index(tr)
            nodes.remove(tr)
            nodes.insert(i_mt, tr)
            del i_tr
            return model.transform(InferShapes()), True
        return model, False


class RemoveIdentityIm2Col(Transformation):
    """Drop ``Im2Col`` with a 1x1 kernel, stride 1, no padding and no dilation: it is the identity
    on the NHWC stream, but FINN would still build a sliding-window unit for it (the SI branch's
    1x1 convolutions had one each)."""

    def apply(self, model: ModelWrapper):
        for n in model.graph.node:
            if n.op_type != "Im2Col":
                continue
            inst = getCustomOp(n)
            if list(inst.get_nodeattr("kernel_size")) != [1, 1] or \
                    list(inst.get_nodeattr("stride")) != [1, 1] or \
                    any(inst.get_nodeattr("pad_amount")) or \
                    list(inst.get_nodeattr("dilations")) not in ([1, 1], []):
                continue
            if model.get_tensor_shape(n.input[0]) != model.get_tensor_shape(n.output[0]):
                continue
            if bypass(model, n, n.input[0]):
                return model, True
        return model, False


class ShareIdenticalIm2Col(Transformation):
    """Two ``Im2Col`` nodes on the same tensor with the same attributes become one (the fork moves
    behind the sliding window). In a downsampling SI block the shortcut's and the SI squeeze's
    1x1 stride-2 convolutions read the same bipolar tensor and would each get a window unit."""

    def apply(self, model: ModelWrapper):
        seen: dict = {}
        for n in model.graph.node:
            if n.op_type != "Im2Col":
                continue
            key = (n.input[0], tuple(sorted((a.name, str(a)) for a in n.attribute)))
            if key not in seen:
                seen[key] = n
                continue
            if bypass(model, n, seen[key].output[0]):
                return model, True
        return model, False
