"""Studies behind the notebooks: estimates per board, the SI sweep, the exactness trace.

The notebooks in ``notebooks/`` only call these functions; every number comes from a real build
(``flow.build.build``) with FINN's estimators, every plot is also written as PNG. The names of the
accuracy ablation's variants live here too (:data:`VARIANTS`, :func:`width_name`,
:func:`split_name`): ``bench.ablation`` trains them, the accuracy-per-LUT plot reads their rows.
"""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from flow.config import DEFAULT_BOARD, PLOTTED_RESOURCES, BuildConfig, list_boards


def full_mode() -> bool:
    """Notebooks run a small configuration unless ``SIBNN_NOTEBOOKS_FULL=1`` (the slow tests)."""
    return os.environ.get("SIBNN_NOTEBOOKS_FULL", "0") == "1"


def _quiet_build(cfg: BuildConfig) -> Path:
    from flow.build import build

    buf = io.StringIO()
    with redirect_stdout(buf):
        return build(cfg, echo=lambda *a, **k: None)


def estimate(cfg: BuildConfig) -> dict:
    """Build ``cfg`` up to FINN's estimate reports and return one flat row of results."""
    from flow.report import load_summary

    cfg = replace(cfg, stop_step=cfg.stop_step or "generate_estimate_reports")
    out = _quiet_build(cfg)
    s = load_summary(out)
    est = s["estimates"]
    return {
        "board": s["board"], "model": s["model"], "out_dir": str(out),
        **{k: est[k] for k in PLOTTED_RESOURCES}, "URAM": est["URAM"],
        "fps": est["throughput_fps"], "latency_us": est["latency_ns"] / 1000.0,
        **{f"{k}_budget": s["budget"][k] for k in PLOTTED_RESOURCES},
        **{f"{k}_capacity": s["capacity"][k] for k in PLOTTED_RESOURCES},
        "all_nodes_hw": s["all_nodes_hw"],
        "exact_stages": sum(1 for v in s["verification"] if v["exact"]),
        "weights": s.get("weights", ""),
        "LUT_modelled": est.get("LUT_modelled", est["LUT"]),
    }


def board_estimates(out_root: str | Path, *, boards: list[str] | None = None,
                    model_overrides: dict | None = None, verify_inputs: int = 2) -> list[dict]:
    """The default model (or an override of it) built to estimates for every board file."""
    rows = []
    for b in boards or list_boards():
        cfg = BuildConfig(board=b, output_dir=str(Path(out_root) / f"estimates_{b}"),
                          model_overrides=dict(model_overrides or {}),
                          verify_inputs=verify_inputs)
        rows.append(estimate(cfg))
    return rows


def table(rows: list[dict], columns: list[str]):
    import pandas as pd

    return pd.DataFrame([{c: r.get(c) for c in columns} for r in rows])


def si_sweep(out_root: str | Path, *, rs: list[int], widths: list[int], depth: list[int],
             board: str = DEFAULT_BOARD, target_fps: int | None = None,
             verify_inputs: int = 1) -> list[dict]:
    """Parameters and FINN estimates for ``si_resnet_w1a1`` over ``r`` x ``width``, with
    ``resnet_w1a1`` (no SI) at every width as the reference. One folding target for all."""
    from quant_models import build_model
    from quant_models.info import summary

    rows = []
    for width in widths:
        variants = [("resnet_w1a1", None)] + [("si_resnet_w1a1", r) for r in rs]
        for arch, r in variants:
            ov = {"width": width, "depth": list(depth)}
            if r is not None:
                ov["r"] = r
            params = summary(build_model(arch, **ov))["total_params"]
            cfg = BuildConfig(board=board, model=arch, model_overrides=ov,
                              output_dir=str(Path(out_root) / f"sweep_{arch}_w{width}_r{r}"),
                              target_fps=target_fps, verify_inputs=verify_inputs)
            row = estimate(cfg)
            from quant_models.networks import NetSpec

            default = NetSpec()
            row.update(arch=arch, width=width, r=r, params=params,
                       default_size=(width == default.width and tuple(depth) == default.depth
                                     and r in (None, default.r)))
            rows.append(row)
    return rows


def load_accuracy(path: str | Path) -> dict[str, float] | None:
    """Mean test top-1 per ablation variant from an accuracy results file (``summary`` of what
    ``python -m bench.accuracy`` writes, e.g. ``bench/results/accuracy.json``), None if the file
    or its numbers are absent. The caller names the file: the product does not read bench/."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    out = {v: float(s["test_acc_mean"]) for v, s in (data.get("summary") or {}).items()
           if s.get("test_acc_mean") is not None}
    return out or None


@dataclass(frozen=True)
class Variant:
    """One row of the accuracy ablation (``python -m bench.accuracy``)."""

    model: str
    label: str
    loss: str = "full"
    """``ce``, ``kd`` (CE + logit KD) or ``full`` (the recipe's CE + KD + block MSE)."""
    overrides: dict = field(default_factory=dict)
    """Model keys of this variant (over the recipe's ``model``)."""
    si: bool = False
    """Whether it is an SI variant distilled block-wise: a candidate for "the full method"."""


# In order of priority: a run of the first few (``--variants``) is extended by a later run of more,
# since a run's stages may only be appended to (the teachers first, then the shipped student's
# variant, its twin without SI and the cheaper SI, then the older variants).
VARIANTS: dict[str, Variant] = {
    "teacher": Variant("si_resnet_fp", "FP teacher (si_resnet_fp), CE", "ce"),
    "plain": Variant("resnet_w1a1", "W1A1 plain (resnet_w1a1), CE", "ce"),
    "mbh": Variant("resnet_w1a1", "W1A1 + 8-bit head + sign bias + logit KD + block KD",
                   overrides={"head_bits": 8, "sign_bias": True}),
    "si_h_mbh": Variant("si_h_resnet_w1a1_mbh",
                        "W1A1 + SI(h) + 8-bit head + sign bias + logit KD + block KD",
                        overrides={"si_blocks": "all"}, si=True),
    "si_h_mbh_ds": Variant("si_h_resnet_w1a1_mbh",
                           "si_h_mbh with SI in the downsample blocks only",
                           overrides={"si_blocks": "downsample"}, si=True),
    "full": Variant("si_resnet_w1a1", "W1A1 + SI(a) + logit KD + block KD (full)", si=True),
    "kd": Variant("resnet_w1a1", "W1A1 + logit KD", "kd"),
    "si_kd": Variant("si_resnet_w1a1", "W1A1 + SI(a) + logit KD", "kd"),
    "si_h": Variant("si_h_resnet_w1a1", "W1A1 + SI(h) + logit KD + block KD", si=True),
    "staged": Variant("si_resnet_w1a1", "full, staged: binary activations first, then weights",
                      si=True),
    "mbh_ce": Variant("resnet_w1a1", "W1A1 + 8-bit head + sign bias, CE (plain, no SI)", "ce",
                      overrides={"head_bits": 8, "sign_bias": True}),
}

WIDTH_VARIANTS = ("teacher", "plain", "si_h_mbh")
"""Trained again at every extra ``--widths`` width (each width has its own teacher, since block
KD and init need the same geometry): the points of the accuracy-per-LUT plot."""


def width_name(width: int, variant: str) -> str:
    """A variant trained at an extra width: ``w16_plain``."""
    return f"w{width}_{variant}"


def split_name(name: str) -> tuple[str, int | None]:
    """``w16_plain`` -> ``("plain", 16)``; ``plain`` -> ``("plain", None)``."""
    head, _, rest = name.partition("_")
    if head[:1] == "w" and head[1:].isdigit() and rest in VARIANTS:
        return rest, int(head[1:])
    return name, None


def variant_label(name: str) -> str:
    """What a variant (or ``w<W>_<variant>``) is, for tables: its label and width."""
    v, w = split_name(name)
    return VARIANTS[v].label + ("" if w is None else f" @ width {w}")


ACCURACY_ARCHS = {v: VARIANTS[v].model for v in WIDTH_VARIANTS[1:]}
"""The two families of the accuracy-per-LUT plot, by ablation variant name (plain and SI)."""

ACCURACY_ARCH_KEYS = {"si_h_mbh": {"stem_bits": 1, "si_blocks": "all"}}
"""Model keys of a family beyond width and depth: ``si_h_mbh`` with a binary stem and SI in every
block, not its registry defaults (the shipped network's 8-bit stem, SI in the downsample blocks)."""


def accuracy_by_width(accuracy: dict[str, float] | None, recipe_width: int = 32
                      ) -> dict[tuple[str, int], float]:
    """``{(variant, width): mean test %}`` for plain and SI, from the ablation's ``plain``,
    ``si_h_mbh`` (at the recipe's width) and ``w<W>_plain``, ``w<W>_si_h_mbh`` rows."""
    out = {}
    for name, acc in (accuracy or {}).items():
        variant, width = split_name(name)
        if variant in ACCURACY_ARCHS:
            out[(variant, recipe_width if width is None else width)] = acc
    return out


def lut_sweep(out_root: str | Path, *, widths: list[int], depth: list[int],
              board: str = DEFAULT_BOARD, target_fps: int | None = None,
              verify_inputs: int = 1) -> list[dict]:
    """FINN estimates (plus sibnn's fork/add model) of plain and SI (``si_h_mbh``) at every
    width, one folding target for all: the x axis of the accuracy-per-LUT plot."""
    rows = []
    for width in widths:
        for variant, arch in ACCURACY_ARCHS.items():
            ov = {"width": width, "depth": list(depth), **ACCURACY_ARCH_KEYS.get(variant, {})}
            cfg = BuildConfig(board=board, model=arch, model_overrides=ov,
                              output_dir=str(Path(out_root) / f"lut_{arch}_w{width}"),
                              target_fps=target_fps, verify_inputs=verify_inputs)
            rows.append({**estimate(cfg), "variant": variant, "arch": arch, "width": width})
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (fewer or equal LUT and higher or equal
    accuracy, one of them strictly), sorted by LUT."""
    front = []
    for i, (lut, acc) in enumerate(points):
        dominated = any((l2 <= lut and a2 >= acc) and (l2 < lut or a2 > acc)
                        for j, (l2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def exactness_trace(out_root: str | Path, *, image: np.ndarray | None = None,
                    model_overrides: dict | None = None, board: str = DEFAULT_BOARD) -> dict:
    """One image through Brevitas, the golden model (ONNX Runtime) and every executable FINN
    stage of a real build; returns the integer scores per stage and the equality verdicts."""
    import torch
    from qonnx.core.modelwrapper import ModelWrapper

    from flow.front.export import export_qonnx_model, resolve_network
    from flow.front.golden import golden_from_qonnx
    from flow.proof.verify import (
        execute_stage,
        is_executable,
        load_real_images,
        make_inputs,
        pixels_to_x,
        to_int_grid,
    )

    ov = dict(model_overrides or {})
    cfg = BuildConfig(board=board, model_overrides=ov, stop_step="convert_to_hw",
                      output_dir=str(Path(out_root) / "exactness_build"), verify_inputs=2)
    out = _quiet_build(cfg)
    net, _ = resolve_network(cfg.model_name, overrides=ov, seed=cfg.seed)  # the build's rule
    c, h, w = net.spec.input_shape
    if image is None:
        real = load_real_images(1, seed=7) if (c, h, w) == (1, 28, 28) else None
        image = real if real is not None else make_inputs((h, w, c), 6, 7)[-1:]
    image = np.asarray(image, np.uint8).reshape(1, h, w, c)
    golden, _ = golden_from_qonnx(export_qonnx_model(net, Path(out) / "trace.qonnx.onnx",
                                                     with_taps=True))
    gold = golden.run(image)
    with torch.no_grad():
        logits = net(pixels_to_x(image)).numpy()
    rows = [{"stage": "brevitas (torch)", "scores": to_int_grid(logits, golden.scale, "logits",
                                                                 "brevitas")[0].tolist()},
            {"stage": "golden (onnxruntime)", "scores": gold["scores"][0].astype(int).tolist()}]
    for f in sorted((Path(out) / "intermediate_models").glob("*.onnx")):
        m = ModelWrapper(str(f))
        ok, why = is_executable(m)
        if not ok:
            rows.append({"stage": f.stem, "scores": None, "note": why})
            continue
        y = execute_stage(m, image).reshape(gold["scores"].shape)
        oname = m.graph.output[0].name
        dt = m.get_tensor_datatype(oname)
        s = 1.0 if dt is not None and dt.is_integer() else golden.scale
        rows.append({"stage": f.stem, "scores": to_int_grid(y, s, oname, f.stem)[0].tolist()})
    ref = rows[1]["scores"]
    for r in rows:
        r["equal_to_golden"] = None if r["scores"] is None else bool(np.array_equal(r["scores"],
                                                                                   ref))
    return {"image": image, "rows": rows, "golden": golden, "net": net, "build": str(out),
            "top1": int(gold["top1"][0])}


def mismatch_demo(trace: dict) -> str:
    """What a failed check looks like: the golden model checked against a copy of the network
    with one BatchNorm bias nudged; returns the VerificationError's one-line message."""
    import copy

    import torch

    from flow.proof.verify import make_inputs, verify
    from sibnn_base.errors import VerificationError

    net = copy.deepcopy(trace["net"])
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        bn.bias += 3.0
    c, h, w = net.spec.input_shape
    try:
        verify(trace["golden"], make_inputs((h, w, c), 4, 0), torch_model=net)
    except VerificationError as err:
        return str(err)
    return "no mismatch detected"


def board_names() -> list[str]:
    return list_boards()
