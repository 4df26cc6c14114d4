"""Lower the exact integer IR to a streamlined FINN graph (the *exact* front end).

FINN's own front end (``ConvertQONNXtoFINN`` + streamlining) recomputes every threshold with the
formula ``(k - 0.5) * s`` and float arithmetic, so it rounds ties up where Brevitas rounds them to
even, and it cannot convert a bipolar tensor that forks into several binary convolutions to XNOR
form. This module skips all of that: it writes the graph FINN's ``convert_to_hw`` expects directly
from :mod:`flow.front.integerize`'s IR, with the IR's exact thresholds:

* layout NHWC throughout; the input is the uint8 pixel stream ``(1, H, W, C)``;
* a convolution is ``Im2Col`` + ``MatMul`` (integer or bipolar weights), or ``Im2Col`` +
  ``XnorPopcountMatMul`` when input and weights are bipolar: the bipolar tensor is carried as
  BINARY ``b = (a + 1) / 2``, so padding with -1 is ``pad_value = 0`` and every threshold on the
  bipolar accumulator ``acc`` becomes ``ceil((t + N) / 2)`` on the popcount (``acc = 2 p - N``);
* a quantiser is a ``MultiThreshold`` (``out_scale`` 1, ``out_bias`` = the lowest level); a
  decreasing channel is made increasing by negating its weight column;
* a conv with multi-bit weights on such a BINARY tensor reads it as ``BIPOLAR`` (the same bits)
  through a one-threshold recast, since FINN's HLS MVAU takes true-binary inputs only in XNOR
  mode;
* a bipolar tensor consumed by anything but (XNOR) MatMuls (the global pool) is INT2 ``{-1, +1}``:
  two equal thresholds, ``out_bias = -1``;
* adds of equal-scale integers stay ``Add`` (-> ``ElementwiseAdd``); clamps are thresholds;
* the global sum pool is ``GlobalAccPool``; the classifier's output is the integer scores, and the
  float logit scale stays documented in the golden model.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from flow.env.finn import HW_DOMAIN
from flow.front.ir import IntegerIR, IRNode
from sibnn_base.errors import UnsupportedGraphError

QONNX_DOMAIN = "qonnx.custom_op.general"


STREAM_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)
"""The bit widths the lowering gives its tensors (FINN's HLS layers take any width; byte-sized
widths above 8 keep the generated streams and accumulators regular)."""


def _dtype_for(lo: int, hi: int):
    """The smallest qonnx integer ``DataType`` of :data:`STREAM_BITS` bits holding ``[lo, hi]``:
    qonnx's own candidate list (``DataType.get_accumulator_dt_cands``, unsigned first), less the
    non-contiguous BIPOLAR/TERNARY and
    INT1 (a signed stream has a sign bit and a value bit)."""
    from qonnx.core.datatype import DataType

    for name in DataType.get_accumulator_dt_cands():
        dt = DataType[name]
        if name in ("BIPOLAR", "TERNARY", "INT1") or dt.bitwidth() not in STREAM_BITS:
            continue
        if dt.min() <= lo and hi <= dt.max():
            return dt
    raise UnsupportedGraphError(f"integer range [{lo}, {hi}] needs more than 32 bits")

class _ConvLowering:
    """Convolutions and matrix products: ``Im2Col`` windows and (XNOR) ``MatMul`` s."""

    def lower_conv(self, nd: IRNode, pad_of: dict) -> None:

        a = nd.attrs
        src = nd.inputs[0]
        pads = list(a["pads"])
        pad_value = 0
        if src in pad_of:
            p = pad_of[src]
            pp = p.attrs["pads"]  # ONNX order: begins (N, C, H, W), ends (N, C, H, W)
            if pp[0] or pp[1] or pp[4] or pp[5]:
                raise UnsupportedGraphError(f"{p.source}: padding of batch/channel axes")
            extra = [pp[2], pp[3], pp[6], pp[7]]
            if any(pads):
                raise UnsupportedGraphError(f"{nd.source}: Pad node and conv padding together")
            pads = extra
            pad_value = p.attrs["value"]
            src = p.inputs[0]
        if a["group"] != 1 or any(d != 1 for d in a["dilations"]):
            raise UnsupportedGraphError(f"{nd.source}: grouped or dilated convolution")
        w = a["weight"].copy()  # (Co, Ci, kh, kw)
        if nd.output in self.negate:
            w = w * self.negate[nd.output][:, None, None, None]
        co, ci, kh, kw = w.shape
        binary_in = self.repr.get(src) == "binary"
        in_name = src
        if binary_in:
            if any(pads) and pad_value != -1:
                raise UnsupportedGraphError(f"{nd.source}: bipolar input padded with {pad_value}")
            pad_value = 0  # -1 in the bipolar domain is 0 in the binary one
        elif any(pads) and pad_value != 0:
            raise UnsupportedGraphError(f"{nd.source}: padding with {pad_value} a tensor carried as "
                                        "integers; FINN's padding inserts only 0")
        # pads [top, left, bottom, right] for Im2Col
        pad_amount = [pads[0], pads[1], pads[2], pads[3]]
        oh, ow = self.nhwc(nd.output)[1:3]
        strides = tuple(a["strides"])
        cols = self.signed_window(src, strides, (oh, ow)) if binary_in and (kh, kw) == (1, 1) \
            and not any(pads) else None
        if cols is None:
            cols = self.window(in_name, strides, (kh, kw), pad_amount, int(pad_value), (oh, ow))
        wmat = w.transpose(2, 3, 1, 0).reshape(kh * kw * ci, co)  # (kh, kw, ci) x co
        self.matmul(nd, cols, wmat, binary_in)

    def window(self, src: str, strides: tuple, kernel: tuple, pad_amount: list, pad_value: int,
               out_hw: tuple) -> str:
        """The Im2Col of ``src`` through this window. Two of them on one tensor with one window
        (a block's strided 1x1 shortcut and its SI squeeze) become one sliding-window generator,
        forked after it, in ``convert_to_hw`` (:class:`flow.hw.transforms.ShareIdenticalIm2Col`)."""
        n, h, wd, c = self.vinfo[src][0]
        cols = self.name("im2col")
        self.nodes.append(helper.make_node(
            "Im2Col", [src], [cols], domain=QONNX_DOMAIN, name=self.name("Im2Col"),
            stride=list(strides), kernel_size=list(kernel), pad_amount=list(pad_amount),
            pad_value=pad_value, input_shape=str((n, h, wd, c)), dilations=[1, 1], depthwise=0))
        self.vinfo[cols] = ((n, *out_hw, kernel[0] * kernel[1] * c), self.vinfo[src][1])
        return cols

    def signed_window(self, a: str, strides: tuple, out_hw: tuple) -> str | None:
        """For a strided 1x1 conv on ``a = sign(h)`` (carried as bits) when another conv reads
        ``h`` through the same 1x1 window (the SI squeeze on ``h``): the sign of the window of
        ``h``. A 1x1 window only selects pixels, so ``sign(window(h)) = window(sign(h))``
        exactly; the two windows of ``h`` are then one generator in hardware
        (:class:`flow.hw.transforms.ShareIdenticalIm2Col`), which replaces a generator on ``a``
        and one on ``h``, for one small threshold layer. None otherwise."""
        t = self.producer.get(a)
        if t is None or t.op != "threshold" or not t.attrs.get("bipolar") or \
                np.any(t.attrs["direction"] != 1) or self.repr.get(a) != "binary":
            return None
        h = t.inputs[0]
        if self.repr.get(h, "int") != "int" or h in self.negate:
            return None
        if not any(c.op == "conv" and c.attrs["weight"].shape[2:] == (1, 1)
                   and tuple(c.attrs["strides"]) == strides and not any(c.attrs["pads"])
                   for c in self.consumers.get(h, [])):
            return None
        cols_h = self.window(h, strides, (1, 1), [0, 0, 0, 0], 0, out_hw)
        out = self.name("sign_window")
        self.threshold_node(cols_h, out, t.attrs["thresholds"].astype(np.int64).copy(),
                            self.vinfo[a][1], 0.0)
        return out

    def lower_matmul(self, nd: IRNode, pad_of: dict) -> None:
        w = nd.attrs["weight"].copy()  # (Ci, Co)
        if nd.output in self.negate:
            w = w * self.negate[nd.output][None, :]
        self.matmul(nd, nd.inputs[0], w, self.repr.get(nd.inputs[0]) == "binary")

    def matmul(self, nd: IRNode, x: str, wmat: np.ndarray, binary_in: bool) -> None:
        """``x @ wmat``. On a BINARY input with ``+-1`` weights this is an XNOR popcount ``p``,
        and ``repr`` records the per-channel fan-in ``N`` that turns it back into the IR's
        ``W a = 2 p - N``. A BINARY input with multi-bit weights is read as what it carries, the
        bipolar ``a`` (:meth:`recast_bipolar`): FINN's HLS MVAU multiplies a 1-bit ``BIPOLAR``
        input by any weights (finn-hlslib ``Recast<Binary>``), but takes a true-binary input only
        in XNOR mode."""
        from qonnx.core.datatype import DataType

        out = nd.output
        acc = self.ir.tensors[out]
        fan_in, co = wmat.shape
        shape = self.vinfo[x][0][:-1] + (co,)
        if binary_in and np.all(np.abs(wmat) == 1):
            wb = self.add_init((wmat + 1) // 2, DataType["BINARY"], "wbin")
            self.nodes.append(helper.make_node("XnorPopcountMatMul", [x, wb], [out],
                                               domain=QONNX_DOMAIN, name=self.name("XnorMM")))
            # popcount p = #(agreeing bits) and W a = 2 p - N: the same correction with S = N
            self.repr[out] = ("popcount", np.full(co, fan_in, dtype=np.int64))
            self.vinfo[out] = (shape, _dtype_for(0, fan_in))
            return
        if binary_in:
            x = self.recast_bipolar(x)
        wdt = DataType["BIPOLAR"] if np.all(np.abs(wmat) == 1) else _dtype_for(
            int(wmat.min()), int(wmat.max()))
        wi = self.add_init(wmat, wdt, "w")
        self.nodes.append(helper.make_node("MatMul", [x, wi], [out], name=self.name("MatMul")))
        self.repr[out] = "int"
        lo, hi = int(np.min(acc.lo)), int(np.max(acc.hi))
        if out in self.negate:
            lo, hi = min(lo, -hi), max(hi, -lo)
        self.vinfo[out] = (shape, _dtype_for(lo, hi))

    def recast_bipolar(self, b: str) -> str:
        """The ``BIPOLAR`` view ``a = 2 b - 1`` of a BINARY stream ``b``: the same bits, so in
        hardware a reinterpretation. FINN has no op that only relabels a stream, so it is its
        one-threshold ``Thresholding`` layer (``b >= 1``, BIPOLAR output: ``2 b - 1`` in FINN's
        python model, the input bit itself in the generated code), emitted as that HW layer
        because qonnx's ``MultiThreshold`` needs ``out_scale 2`` for a bipolar output and FINN's
        conversion takes only ``out_scale 1``. Padding stays in the BINARY domain before it
        (``pad_value 0`` is the bipolar -1)."""
        from qonnx.core.datatype import DataType

        shape = self.vinfo[b][0]
        c = shape[-1]
        thr = self.add_init(np.ones((c, 1)), DataType["BINARY"], "thr_recast")
        out = self.name("bipolar")
        self.nodes.append(helper.make_node(
            "Thresholding", [b, thr], [out], domain=HW_DOMAIN, backend="fpgadataflow",
            NumChannels=c, PE=1, numSteps=1, inputDataType="BINARY", weightDataType="BINARY",
            outputDataType="BIPOLAR", numInputVectors=list(shape[:-1]), ActVal=0,
            name=self.name("Recast")))
        self.vinfo[out] = (shape, DataType["BIPOLAR"])
        return out


class _ThresholdLowering:
    """Quantisers and clamps: ``MultiThreshold`` s on the (popcount-corrected) accumulators."""

    def lower_threshold(self, nd: IRNode, pad_of: dict) -> None:
        from qonnx.core.datatype import DataType

        a = nd.attrs
        src = nd.inputs[0]
        thr = a["thresholds"].astype(np.int64).copy()  # (C, K) on direction * x
        rep = self.repr.get(src, "int")
        if isinstance(rep, tuple):  # hardware accumulator x of a BINARY input: acc = 2x - S
            s_col = rep[1][:, None]
            thr = -((-(thr + s_col)) // 2)  # acc >= t  <=>  x >= ceil((t + S) / 2)
        elif np.any(a["direction"] != 1) and src not in self.negate:
            raise UnsupportedGraphError(f"{nd.source}: decreasing thresholds on a shared tensor")
        lo_out = int(np.min(self.ir.tensors[nd.output].lo))
        hi_out = int(np.max(self.ir.tensors[nd.output].hi))
        if a["bipolar"]:
            if self.all_consumers_binary(nd.output):
                odt, bias, t = DataType["BINARY"], 0.0, thr
                self.repr[nd.output] = "binary"
            elif isinstance(rep, tuple) and rep[0] == "popcount":
                # an XNOR MVAU takes its output offset from the type (FINN: ActVal = odt.min()),
                # so it emits BINARY and a standalone threshold maps {0, 1} -> {-1, +1} (INT2)
                mid = self.name("bin")
                self.threshold_node(src, mid, thr, DataType["BINARY"], 0.0)
                C = thr.shape[0]
                self.threshold_node(mid, nd.output, np.ones((C, 2), np.int64), DataType["INT2"],
                                    -1.0)
                self.repr[nd.output] = "int"
                return
            else:  # {-1, +1} as INT2: two equal thresholds, bias -1
                odt, bias, t = DataType["INT2"], -1.0, np.repeat(thr, 2, axis=1)
                self.repr[nd.output] = "int"
        else:
            base = int(a["base"])
            if a["step"] != 1:
                raise UnsupportedGraphError(f"{nd.source}: threshold step {a['step']}")
            odt = _dtype_for(min(base, lo_out), max(hi_out, base + thr.shape[1]))
            if odt.signed() and base != odt.min():
                odt = _dtype_for(base, base + thr.shape[1])
            bias, t = float(base), thr
            self.repr[nd.output] = "int"
        self.threshold_node(src, nd.output, t, odt, bias)

    def threshold_node(self, src: str, out: str, t: np.ndarray, odt, bias: float) -> None:
        t = np.sort(t, axis=1)
        tdt = _dtype_for(int(t.min()), int(t.max()))
        ti = self.add_init(t, tdt, "thr")
        self.nodes.append(helper.make_node(
            "MultiThreshold", [src, ti], [out], domain=QONNX_DOMAIN, name=self.name("MT"),
            out_dtype=odt.name, out_scale=1.0, out_bias=float(bias),
            data_layout="NHWC" if len(self.vinfo[src][0]) == 4 else "NC"))
        self.vinfo[out] = (self.vinfo[src][0], odt)

    def lower_clip(self, nd: IRNode, pad_of: dict) -> None:
        lo, hi = nd.attrs["min"], nd.attrs["max"]
        C = self.ir.tensors[nd.output].channels
        ks = np.arange(lo + 1, hi + 1)  # level lo + k reached when x >= lo + k
        t = np.tile(ks, (C, 1))
        rep = self.repr.get(nd.inputs[0], "int")
        if isinstance(rep, tuple):  # accumulator of a BINARY input: acc = 2x - S
            t = -((-(t + rep[1][:, None])) // 2)
        self.threshold_node(nd.inputs[0], nd.output, t, _dtype_for(lo, hi), float(lo))
        self.repr[nd.output] = "int"


class _Lowering(_ConvLowering, _ThresholdLowering):
    """One lowering of an IR: the IR node of each op goes to ``lower_<op>``; the graph is built
    last (:meth:`build`)."""

    def __init__(self, ir: IntegerIR) -> None:
        self.ir = ir
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}
        self.vinfo: dict[str, tuple] = {}  # name -> (shape NHWC, DataType)
        self.consumers: dict[str, list[IRNode]] = {}
        for nd in ir.nodes:
            for i in nd.inputs:
                self.consumers.setdefault(i, []).append(nd)
        self.producer = {nd.output: nd for nd in ir.nodes}
        self.repr: dict[str, str] = {}  # IR tensor -> how it is carried: "int" | "binary"
        self.negate: dict[str, np.ndarray] = {}  # acc tensor -> per-channel sign to fold in
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def nhwc(self, t: str) -> tuple[int, ...]:
        s = self.ir.tensors[t].shape
        return (s[0], *s[2:], s[1]) if len(s) == 4 else tuple(s)

    def add_init(self, arr: np.ndarray, dtype, hint: str) -> str:
        n = self.name(hint)
        self.inits[n] = np.asarray(arr, dtype=np.float32)
        self.vinfo[n] = (tuple(np.shape(arr)), dtype)
        return n

    # -- classification of tensors -------------------------------------------------------------
    def is_bipolar(self, t: str) -> bool:
        p = self.producer.get(t)
        if p is None:
            return False
        if p.op == "threshold":
            return bool(p.attrs.get("bipolar"))
        if p.op == "pad":
            return self.is_bipolar(p.inputs[0]) and p.attrs["value"] == -1
        if p.op in ("maxpool", "reshape"):  # max commutes with the bipolar -> binary map
            return self.is_bipolar(p.inputs[0])
        return False

    def binary_consumer(self, nd: IRNode) -> bool:
        """A conv/matmul that can read its bipolar input ``a`` as BINARY ``b = (a + 1) / 2``.

        With +-1 weights its hardware accumulator is then an XNOR popcount ``p`` while the
        IR's is ``W a = 2 p - N`` (``N`` the whole fan-in, padding included: a pad of -1 is a 0
        bit), so every consumer must be a threshold that absorbs the correction. Multi-bit
        weights read the bits back as ``a`` (:meth:`matmul`). A clip (a quantiser that is the
        identity on the accumulator's range but for saturation) is thresholds too. Zero padding
        is not in the bipolar alphabet, so a conv that pads ``a`` with 0 keeps the INT2
        ``{-1, +1}`` form."""
        if nd.op not in ("conv", "matmul") or not self.is_bipolar(nd.inputs[0]):
            return False
        if nd.op == "conv" and any(nd.attrs["pads"]):
            return False
        cons = self.consumers.get(nd.output, [])
        return bool(cons) and all(c.op in ("threshold", "clip") for c in cons)

    def all_consumers_binary(self, t: str) -> bool:
        """Whether bipolar tensor ``t`` can be carried as BINARY: every consumer (through -1
        pads, max pools and reshapes) is a :meth:`binary_consumer`. One consumer that is not
        (the global pool, a zero-padded conv, an output layer) makes the whole tensor INT2,
        and then no consumer may treat it as bits."""
        cons = self.consumers.get(t, [])
        out = []
        for c in cons:
            if c.op == "pad":
                out.append(c.attrs["value"] == -1 and self.all_consumers_binary(c.output))
            elif c.op in ("maxpool", "reshape"):
                out.append(self.all_consumers_binary(c.output))
            else:
                out.append(self.binary_consumer(c))
        return bool(cons) and all(out)

    # -- emission ----------------------------------------------------------------------------------
    def run(self):
        from qonnx.core.datatype import DataType

        ir = self.ir
        self.plan_negations()
        in_shape = self.nhwc(ir.input_name)
        self.vinfo[ir.input_name] = (in_shape, DataType["UINT8"])
        self.repr[ir.input_name] = "int"
        pad_of: dict[str, IRNode] = {}
        for nd in ir.nodes:
            if nd.op == "input":
                continue
            if nd.op == "pad":
                pad_of[nd.output] = nd
                continue
            handler = getattr(self, f"lower_{nd.op}", None)
            if handler is None:
                raise UnsupportedGraphError(f"the FINN lowering has no mapping for IR op {nd.op} "
                                            f"(from {nd.source})")
            handler(nd, pad_of)
        prim = ir.outputs[0]
        out = prim.tensor
        return self.build(out)

    def plan_negations(self) -> None:
        """Decreasing threshold channels: negate the producing weight columns instead."""
        for nd in self.ir.nodes:
            if nd.op != "threshold" or np.all(nd.attrs["direction"] == 1):
                continue
            p = self.producer.get(nd.inputs[0])
            if p is None or p.op not in ("conv", "matmul") or len(self.consumers[nd.inputs[0]]) != 1:
                raise UnsupportedGraphError(
                    f"{nd.source}: a decreasing quantiser on a tensor that is not a private "
                    "accumulator cannot be lowered to FINN thresholds")
            self.negate[p.output] = nd.attrs["direction"].astype(np.int64)

    def lower_add(self, nd: IRNode, pad_of: dict) -> None:
        t = self.ir.tensors[nd.output]
        for i in nd.inputs:
            if self.repr.get(i, "int") != "int":
                raise UnsupportedGraphError(f"{nd.source}: add of a non-integer stream")
        self.nodes.append(helper.make_node("Add", list(nd.inputs), [nd.output],
                                           name=self.name("Add")))
        self.vinfo[nd.output] = (self.vinfo[nd.inputs[0]][0],
                                 _dtype_for(int(np.min(t.lo)), int(np.max(t.hi))))
        self.repr[nd.output] = "int"

    def lower_sum(self, nd: IRNode, pad_of: dict) -> None:
        src = nd.inputs[0]
        if self.repr.get(src) != "int" or sorted(nd.attrs["axes"]) != [2, 3]:
            raise UnsupportedGraphError(f"{nd.source}: only a global sum pool of an integer "
                                        "stream maps to GlobalAccPool")
        n, h, w, c = self.vinfo[src][0]
        idt = self.vinfo[src][1]
        self.nodes.append(helper.make_node(
            "GlobalAccPool", [src], [nd.output], domain=HW_DOMAIN,
            backend="fpgadataflow", NumChannels=c, PE=1, inputDataType=idt.name,
            numInputVectors=[n, h, w], name=self.name("GlobalAccPool")))
        t = self.ir.tensors[nd.output]
        self.vinfo[nd.output] = ((n, 1, 1, c), _dtype_for(int(np.min(t.lo)), int(np.max(t.hi))))
        self.repr[nd.output] = "int"

    def lower_maxpool(self, nd: IRNode, pad_of: dict) -> None:
        a = nd.attrs
        k = list(a.get("kernel_shape"))
        s = list(a.get("strides", k))
        if any(a.get("pads", [0, 0, 0, 0])) or k != s:
            raise UnsupportedGraphError(f"{nd.source}: only non-overlapping unpadded max pools")
        src = nd.inputs[0]
        self.nodes.append(helper.make_node(
            "MaxPoolNHWC", [src], [nd.output], domain=QONNX_DOMAIN, name=self.name("MaxPool"),
            kernel_shape=k, strides=s, pads=[0, 0, 0, 0]))
        self.vinfo[nd.output] = (self.nhwc(nd.output), self.vinfo[src][1])
        self.repr[nd.output] = self.repr.get(src, "int")

    def lower_reshape(self, nd: IRNode, pad_of: dict) -> None:
        src = nd.inputs[0]
        s_in = self.vinfo[src][0]
        s_out = tuple(self.ir.tensors[nd.output].shape)
        # NHWC (1,1,1,C) -> (1,C) and identity reshapes are free for a stream; keep 4D
        if int(np.prod(s_in)) == s_in[-1] and s_out[-1] == s_in[-1]:
            self.alias(nd.output, src)
            return
        if src == self.ir.input_name and len(s_in) == 4 and s_in[-1] == 1 and len(s_out) == 2:
            # flattening a one-channel input: NHWC and NCHW orders agree, so the accelerator
            # still eats the same pixel stream, declared as (N, H*W)
            self.vinfo[src] = (tuple(s_out), self.vinfo[src][1])
            self.alias(nd.output, src)
            return
        raise UnsupportedGraphError(f"{nd.source}: reshape {s_in} -> {s_out} in the stream")

    def alias(self, new: str, old: str) -> None:
        self.nodes.append(helper.make_node("Identity", [old], [new], name=self.name("Id")))
        self.vinfo[new] = self.vinfo[old]
        self.repr[new] = self.repr.get(old, "int")

    def build(self, out: str):
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.transformation.general import RemoveUnusedTensors
        from qonnx.transformation.infer_shapes import InferShapes

        ir = self.ir
        vis = []
        for name, (shape, _) in self.vinfo.items():
            if name in self.inits or name in (ir.input_name, out):
                continue
            vis.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.flatten().tolist())
                 for n, a in self.inits.items()]
        g = helper.make_graph(
            self.nodes, "sibnn_finn",
            [helper.make_tensor_value_info(ir.input_name, TensorProto.FLOAT,
                                           list(self.vinfo[ir.input_name][0]))],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(self.vinfo[out][0]))],
            initializer=inits, value_info=vis)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)],
                              producer_name="sibnn.lower")
        mw = ModelWrapper(m)
        for name, (_, dt) in self.vinfo.items():
            mw.set_tensor_datatype(name, dt)
        for name in self.vinfo:
            if name not in self.inits:
                rank = len(self.vinfo[name][0])
                if rank in (2, 4):
                    mw.set_tensor_layout(name, ["N", "H", "W", "C"] if rank == 4 else ["N", "C"])
        mw = mw.transform(InferShapes())
        mw = _remove_identities(mw)
        mw = mw.transform(RemoveUnusedTensors())
        return mw



def _remove_identities(mw):
    from qonnx.transformation.general import SortGraph

    g = mw.graph
    for nd in [n for n in g.node if n.op_type == "Identity"]:
        src, dst = nd.input[0], nd.output[0]
        g.node.remove(nd)
        if dst in [o.name for o in g.output]:
            mw.rename_tensor(src, dst)
        else:
            for other in g.node:
                for i, name in enumerate(other.input):
                    if name == dst:
                        other.input[i] = src
    return mw.transform(SortGraph())


def lower_to_finn(ir: IntegerIR):
    """The streamlined FINN graph (NHWC, uint8 pixels in, integer scores out) of ``ir``; its
    NHWC input is recorded under ``sibnn_input_layout`` for :func:`flow.proof.verify.stage_input`."""
    from flow.hw.transforms import INPUT_LAYOUT_KEY

    low = _Lowering(ir).run()
    low.set_metadata_prop(INPUT_LAYOUT_KEY, "NHWC")
    return low
