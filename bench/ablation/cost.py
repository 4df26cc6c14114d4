"""The cost of a distillation step against a plain CE step of the same student.

Measured in one process: a distillation step (frozen teacher forward + student forward with taps
+ CE/KD/block loss + backward + Adam) against a plain CE step, interleaved, same batch, median of
``steps`` each. Both use the fused quantizer forward that training uses
(``quant_models/fastpath.py``); the same distillation step with Brevitas' own forward is timed
alongside, the fused step in the channels-last layout, and optionally the compiled step.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from bench.ablation.goals import GOALS
from bench.ablation.plan import RECIPE, recipe_model
from quant_models import build_model
from quant_models.fastpath import fast_forward, plain_forward
from quant_models.train.config import build_config
from quant_models.train.losses import distillation_loss, resolve_tap_weights
from sibnn_base.typed import load_mapping


def _batch(batch: int, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``batch`` training images (random pixels without the data) and random labels."""
    from quant_models.data import load_splits

    torch.manual_seed(0)
    try:
        x = load_splits("fmnist", data_dir).train.x[:batch]
        source = "fmnist"
    except Exception:  # noqa: BLE001 - any missing data: time on uniform random pixels instead
        x = torch.randint(0, 256, (batch, 1, 28, 28)).float() / 255
        source = "random pixels"
    return x, torch.randint(0, 10, (batch,)), source


def _distil_step(x, y, student, teacher, opt, lw, tap_w):
    """One distillation step of ``student`` from ``teacher`` on ``(x, y)``."""
    def distil():
        with torch.no_grad():
            t_logits, t_taps = teacher.forward_taps(x)
        logits, taps = student.forward_taps(x)
        loss, _ = distillation_loss(logits, taps, y, lw, tap_w, t_logits, t_taps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return distil


def _compiled_step(x, y, stage, student_cl, teacher, tap_w, said: list[str]):
    """The training engine's own step (teacher, student with taps, CE + KD + block loss) on a
    copy of the channels-last student, compiled and checked (``checked_compile``, its verdict
    appended to ``said``), run once."""
    from quant_models.networks import TapOutputs
    from quant_models.train.compile_check import checked_compile
    from quant_models.train.stage_setup import forward_loss

    s_c = copy.deepcopy(student_cl)  # fused forward and layout included
    t_c = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
    opt_c = torch.optim.Adam(s_c.parameters(), 1e-4)
    forward = forward_loss(stage, TapOutputs(s_c, flat=False), t_c, tap_w)
    step = checked_compile(forward, s_c, x, y, log=said.append)

    def distil_compiled():
        loss = step(x, y)[0]
        opt_c.zero_grad()
        loss.backward()
        opt_c.step()
    distil_compiled()
    return distil_compiled


def step_cost(steps: int, batch: int, data_dir: str | None, compile: bool = False) -> dict:
    """Median seconds of a distillation step and of a plain CE step of the same student; with
    ``compile``, also of the channels-last distillation step compiled (``checked_compile``)."""
    x, y, source = _batch(batch, data_dir)
    mapping = load_mapping(RECIPE)
    recipe = build_config(mapping)
    lw_full = recipe.stage("student").loss_weights
    lw_ce = type(lw_full)(ce=1.0)
    net = recipe_model(mapping)
    student = build_model("si_resnet_w1a1", dataset="fmnist", **net)
    teacher = build_model("si_resnet_fp", dataset="fmnist", **net).eval()
    tap_w = resolve_tap_weights(lw_full, student.tap_names)
    opt = torch.optim.Adam(student.parameters(), 1e-4)

    def plain():
        logits, taps = student.forward_taps(x)
        loss, _ = distillation_loss(logits, taps, y, lw_ce, tap_w)
        opt.zero_grad()
        loss.backward()
        opt.step()

    distil = _distil_step(x, y, student, teacher, opt, lw_full, tap_w)

    def distil_brevitas():  # the same step with Brevitas' own quantizer forward
        plain_forward(student)
        try:
            distil()
        finally:
            fast_forward(student)

    student.train()
    fast_forward(student)  # as training runs it (quant_models/fastpath.py)
    # the same step in the channels-last layout (the training config's channels_last)
    student_cl = copy.deepcopy(student).to(memory_format=torch.channels_last)
    distil_cl = _distil_step(x, y, student_cl,
                             copy.deepcopy(teacher).to(memory_format=torch.channels_last),
                             torch.optim.Adam(student_cl.parameters(), 1e-4), lw_full, tap_w)
    plain(), distil(), distil_brevitas(), distil_cl()  # warm-up
    timed = {"plain": (plain, []), "distil": (distil, []), "brevitas": (distil_brevitas, []),
             "channels_last": (distil_cl, [])}
    said: list[str] = []
    if compile:
        timed["compiled"] = (_compiled_step(x, y, recipe.stage("student"), student_cl, teacher,
                                            tap_w, said), [])
    for _ in range(steps):
        for fn, acc in timed.values():
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return _cost_record(*(statistics.median(acc) for _, acc in timed.values()), said=said,
                        batch=batch, steps=steps, source=source)


def _cost_record(p: float, d: float, b: float, c: float, *k: float, said: list[str], batch: int,
                 steps: int, source: str) -> dict:
    """The step cost as stored: the medians of the plain, distillation, Brevitas-forward,
    channels-last and (``k``) compiled steps, and their ratios."""
    extra = {"distill_step_compiled_s": round(k[0], 4), "compile_speedup": round(c / k[0], 3),
             "compile_check": said[0]} if k else {}
    return {**extra, "student": "si_resnet_w1a1", "recipe": RECIPE.name, "batch": batch,
            "steps_each": steps, "inputs": source,
            "threads": torch.get_num_threads(), "plain_step_s": round(p, 4),
            "distill_step_s": round(d, 4), "ratio": round(d / p, 3),
            "goal_ratio_max": GOALS.max_step_cost_ratio,
            "distill_step_brevitas_forward_s": round(b, 4),
            "fused_forward_speedup": round(b / d, 3),
            "distill_step_channels_last_s": round(c, 4),
            "channels_last_speedup": round(d / c, 3)}
