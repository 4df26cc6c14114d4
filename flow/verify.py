"""The exactness harness: Brevitas (torch), QONNX ``execute_onnx``, the golden model and every
executable FINN stage, compared on *integer* tensors with ``np.array_equal``.

Floats are turned into integers by dividing by their documented scale; a value that is not an
exact multiple of its scale is itself a failure. A mismatch raises :class:`VerificationError`
naming the tensor, the first differing index and both values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sibnn_base.errors import VerificationError

from .golden import GoldenModel


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def make_inputs(hwc: tuple[int, int, int], n: int, seed: int,
                real: np.ndarray | None = None) -> np.ndarray:
    """``n`` uint8 NHWC images: extremes first (all 0, all 255, constant 128, a 0/255
    checkerboard, a single bright pixel), then seeded random (uniform, sparse, low-contrast), then
    up to a third real images from ``real`` (uint8 NHWC) if given."""
    h, w, c = hwc
    rng = np.random.default_rng(seed)
    fixed = [np.zeros(hwc), np.full(hwc, 255), np.full(hwc, 128),
             ((np.indices((h, w)).sum(0) % 2) * 255)[:, :, None].repeat(c, 2)]
    spot = np.zeros(hwc)
    spot[h // 2, w // 2, :] = 255
    fixed.append(spot)
    imgs = [f.astype(np.uint8) for f in fixed][:n]
    n_real = 0
    if real is not None and len(real):
        n_real = min(len(real), max(0, (n - len(imgs)) // 3))
        idx = rng.choice(len(real), n_real, replace=False)
        imgs += [real[i] for i in idx]
    while len(imgs) < n:
        kind = len(imgs) % 3
        if kind == 0:
            im = rng.integers(0, 256, hwc)
        elif kind == 1:
            im = np.where(rng.random(hwc) < 0.7, 0, rng.integers(0, 256, hwc))
        else:
            im = rng.integers(100, 140, hwc)
        imgs.append(im.astype(np.uint8))
    return np.stack(imgs[:n]).astype(np.uint8)


def pixels_to_x(pixels_nhwc: np.ndarray):
    """The float model input: ``x = pixels / 255`` in NCHW (torch float32)."""
    import torch

    px = np.ascontiguousarray(pixels_nhwc) if pixels_nhwc.flags.writeable else pixels_nhwc.copy()
    return torch.from_numpy(px).permute(0, 3, 1, 2).contiguous().float() / 255.0


# ------------------------------------------------------------------------------------------------
# Executors
# ------------------------------------------------------------------------------------------------
def run_brevitas(model, pixels_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the torch model: ``logits`` and, when it has them, every tap."""
    import torch

    x = pixels_to_x(pixels_nhwc)
    with torch.no_grad():
        if hasattr(model, "forward_taps"):
            logits, taps = model.forward_taps(x)
            out = {"logits": logits.numpy()}
            out.update({k: v.numpy() for k, v in taps.items()})
            return out
        return {"logits": model(x).numpy()}


def run_qonnx(model, pixels_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """QONNX ``execute_onnx``, one image at a time (exported graphs have batch 1)."""
    from qonnx.core.onnx_exec import execute_onnx

    x = pixels_to_x(pixels_nhwc).numpy()
    in_name = model.graph.input[0].name
    shape = model.get_tensor_shape(in_name)
    names = [o.name for o in model.graph.output]
    outs: dict[str, list] = {o: [] for o in names}
    for i in range(len(x)):
        r = execute_onnx(model, {in_name: x[i:i + 1].reshape(shape)})
        for k in outs:
            outs[k].append(r[k])
    res = {k: np.concatenate(v) for k, v in outs.items()}
    res["logits"] = res.pop(names[0])  # the primary output, whatever the exporter named it
    return res


# ------------------------------------------------------------------------------------------------
# Comparisons
# ------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    tensor: str
    between: str
    exact: bool
    n_values: int


@dataclass
class Report:
    comparisons: list[Comparison] = field(default_factory=list)
    n_inputs: int = 0
    seconds: float = 0.0

    @property
    def exact(self) -> bool:
        return all(c.exact for c in self.comparisons)

    def to_dict(self) -> dict:
        return {"exact": self.exact, "n_inputs": self.n_inputs, "seconds": round(self.seconds, 3),
                "comparisons": [c.__dict__ for c in self.comparisons]}


def to_int_grid(values: np.ndarray, scale, name: str, source: str) -> np.ndarray:
    """The integers ``q`` with ``float32(q * scale) == values`` bit for bit, as int64.

    ``q = rint(values / scale)``; a value whose float32 product ``q * scale`` does not reproduce it
    exactly is off its grid, and that is a failure (no tolerance anywhere).
    """
    values = np.asarray(values)
    s = np.asarray(scale, dtype=np.float32)
    if s.ndim == 1 and s.size > 1 and values.ndim >= 2:
        s = s.reshape((1, -1) + (1,) * (values.ndim - 2))
    q = np.rint(values.astype(np.float64) / s.astype(np.float64))
    recon = q.astype(np.float32) * s
    bad = np.argwhere(recon != values.astype(np.float32))
    if bad.size:
        i = tuple(bad[0])
        raise VerificationError(
            f"{source}: tensor {name} is off its grid at index {list(map(int, i))}: "
            f"{values[i]!r} is not float32(integer * {float(np.ravel(s)[0]):g})")
    return q.astype(np.int64)


def assert_equal(name: str, expected: np.ndarray, got: np.ndarray, between: str) -> Comparison:
    """``np.array_equal`` or a :class:`VerificationError` with the first differing index."""
    if expected.shape != got.shape:
        raise VerificationError(f"{between}: tensor {name} has shape {got.shape}, expected "
                                f"{expected.shape}")
    if not np.array_equal(expected, got):
        idx = tuple(np.argwhere(expected != got)[0])
        n_bad = int(np.count_nonzero(expected != got))
        raise VerificationError(
            f"{between}: tensor {name} differs at index {list(map(int, idx))}: expected "
            f"{expected[idx]!r}, got {got[idx]!r} ({n_bad} of {expected.size} values differ)")
    return Comparison(name, between, True, int(expected.size))


def compare_to_golden(outputs: dict[str, np.ndarray], gold: dict[str, np.ndarray],
                      golden: GoldenModel, source: str) -> list[Comparison]:
    """Compare a float model's outputs (``logits`` + taps) with the golden model's integers."""
    res = []
    logits = outputs["logits"]
    scale = golden.scale
    if scale is not None:
        ints = to_int_grid(logits, scale, "logits", source)
        res.append(assert_equal("scores", gold["scores"].astype(np.int64), ints,
                                f"golden vs {source}"))
    res.append(assert_equal("logits (float32 bits)", gold["logits"], logits.astype(np.float32),
                            f"golden vs {source}"))
    for tap, s in golden.tap_scales.items():
        if tap in outputs:
            ints = to_int_grid(outputs[tap], s, tap, source)
            res.append(assert_equal(tap, gold[tap].astype(np.int64), ints, f"golden vs {source}"))
    return res


def verify(golden: GoldenModel, pixels_nhwc: np.ndarray, *, torch_model=None,
           qonnx_model=None) -> Report:
    """Golden vs Brevitas and/or QONNX on ``pixels_nhwc``. Raises on the first mismatch."""
    t0 = time.perf_counter()
    rep = Report(n_inputs=len(pixels_nhwc))
    gold = golden.run(pixels_nhwc)
    if torch_model is not None:
        rep.comparisons += compare_to_golden(run_brevitas(torch_model, pixels_nhwc), gold, golden,
                                             "brevitas")
    if qonnx_model is not None:
        rep.comparisons += compare_to_golden(run_qonnx(qonnx_model, pixels_nhwc), gold, golden,
                                             "qonnx")
    rep.seconds = time.perf_counter() - t0
    return rep


# ------------------------------------------------------------------------------------------------
# FINN stages
# ------------------------------------------------------------------------------------------------
def stage_io(model) -> tuple[str, str, bool, bool]:
    """(input name, output name, input is uint8 pixels, input is NHWC) of a FINN-stage graph."""
    from qonnx.core.datatype import DataType

    iname = model.graph.input[0].name
    oname = model.graph.output[0].name
    pixels = model.get_tensor_datatype(iname) == DataType["UINT8"]
    shape = model.get_tensor_shape(iname)
    nhwc = len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3)
    return iname, oname, pixels, nhwc


def run_stage(model, pixels_nhwc: np.ndarray) -> np.ndarray:
    """Execute a FINN-stage graph (python execution) on each image; returns the primary output."""
    from qonnx.core.onnx_exec import execute_onnx

    iname, oname, pixels, nhwc = stage_io(model)
    x = pixels_nhwc.astype(np.float32)
    if not pixels:
        x = x / np.float32(255.0)
    if not nhwc:
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x)
    shape = model.get_tensor_shape(iname)
    outs = []
    for i in range(len(x)):
        xi = x[i:i + 1].reshape(shape)
        outs.append(execute_onnx(model, {iname: xi})[oname])
    return np.concatenate(outs)


def check_stage(step: str, model, golden: GoldenModel, pixels_nhwc: np.ndarray,
                gold: dict | None = None) -> dict:
    """Verify one executable FINN stage against the golden model.

    The stage's primary output is either the float logits (before the final scale is removed) or
    the integer scores; both are reduced to integers and compared with ``np.array_equal``.
    Returns ``{"step", "exact", "n_inputs", "seconds"}``; raises :class:`VerificationError`.
    """
    from qonnx.core.datatype import DataType

    t0 = time.perf_counter()
    gold = gold if gold is not None else golden.run(pixels_nhwc)
    out = run_stage(model, pixels_nhwc)
    out = out.reshape(gold["scores"].shape)
    oname = model.graph.output[0].name
    dt = model.get_tensor_datatype(oname)
    if dt is not None and dt.is_integer() and dt != DataType["FLOAT32"]:
        ints = to_int_grid(out, 1.0, oname, f"step {step}")
    elif golden.scale is not None:
        ints = to_int_grid(out, golden.scale, oname, f"step {step}")
    else:
        raise VerificationError(f"step {step}: float output and no documented scale")
    assert_equal("scores", gold["scores"].astype(np.int64), ints, f"golden vs step {step}")
    return {"step": step, "exact": True, "n_inputs": int(len(pixels_nhwc)),
            "seconds": round(time.perf_counter() - t0, 3)}


def load_real_images(n: int, seed: int = 0) -> np.ndarray | None:
    """Up to ``n`` Fashion-MNIST test images (uint8 NHWC) if the Debian package is installed."""
    import gzip

    path = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
    if not path.is_file():
        return None
    with gzip.open(path, "rb") as fh:
        data = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    idx = np.random.default_rng(seed).choice(len(data), min(n, len(data)), replace=False)
    return data[idx]
