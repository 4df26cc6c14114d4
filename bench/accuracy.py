"""Accuracy ablation on the Fashion-MNIST test set, and the cost of a distillation step.

Variants (all trained for the same epochs, each with every seed):

=============  ====================================  ==========================  ==============
variant        model                                 loss                        teacher
=============  ====================================  ==========================  ==============
teacher        si_resnet_fp                          CE                          -
plain          resnet_w1a1                           CE                          -
kd             resnet_w1a1                           CE + logit KD               teacher
si_kd          si_resnet_w1a1                        CE + logit KD               teacher
full           si_resnet_w1a1 (SI reads ``a``)       CE + logit KD + block MSE   teacher
si_h           si_h_resnet_w1a1 (SI reads ``h``)     CE + logit KD + block MSE   teacher
mbh            resnet_w1a1, 8-bit head, sign bias    CE + logit KD + block MSE   teacher
si_h_mbh       si_h_resnet_w1a1_mbh                  CE + logit KD + block MSE   teacher
si_h_mbh_ds    si_h_mbh, SI in downsample blocks     CE + logit KD + block MSE   teacher
staged         si_resnet_w1a1                        as full, in two steps       teacher
mbh_ce         resnet_w1a1, 8-bit head, sign bias    CE                          -
=============  ====================================  ==========================  ==============

``mbh`` is ``si_h_mbh`` without SI, so the SI branch is measured on both heads (si_kd vs kd,
si_h_mbh vs mbh). ``mbh_ce`` is the same network trained with CE only: the plain W1A1 baseline of
the shipped network, against which the method (SI + block KD) is judged (goal
``method_gain_mbh``; ``plain`` is the 1-bit-head baseline of ``method_gain``). ``staged`` is the
staged recipe (Real-to-Binary): the same epochs, split into ``epochs // 2`` with binary
activations and float weights (stage ``staged_act``) and the rest with binary weights too; it
needs at least 2 epochs and is compared with ``full`` on the *validation* split
(``decisions.staged``), never on the test set.

``si_h_mbh_ds`` (``si_blocks: downsample``) is the cheaper SI in hardware (two SI branches instead
of four). The teacher stage comes from ``configs/fmnist_teacher.yaml`` (its optimizer and
augmentation), the students from the shipped student recipe ``configs/fmnist_student.yaml`` (its
8-bit stem, augmentation, channels-last layout and best-validation-epoch selection); only
epochs, seeds, the training subset and the dataset change here (``--variants`` trains a subset).
Every student starts from its teacher's weights (``--student-init scratch`` starts them fresh).
The numbers are those of the epoch each stage ships (the recipe's ``select``).

Scheduling: every (seed, stage) is a job in its own process (this module with ``--train-seed``
and ``--train-stage``), started as soon as the stages it needs are complete, at most ``--jobs``
at a time. On a GPU (``--device cuda``) every job runs at once on the one device with the data
resident on it: the seeds' teachers first, then all their students together::

    python -m bench.accuracy --device cuda --epochs 30 --seeds 0 1 2          # the GPU ablation
    python -m bench.accuracy --epochs 2 --train-subset 27500 --jobs 2         # CPU, 2 cores
    python -m bench.accuracy --cost-only
    python -m bench.accuracy --record-device-run OUT --note "..." [--discard VARIANT ...]

``scripts/device_ablation.sh`` runs the GPU command on the lent device machine with a deadline and
returns the results, a log and the weights; ``--record-device-run`` stores such an output, complete
or not (per-stage progress and step times included), under ``device_runs``.

The step-cost ratio is measured in one process: a distillation step (frozen teacher forward +
student forward with taps + CE/KD/block loss + backward + Adam) against a plain CE step of the same
student, interleaved, same batch, median of ``--cost-steps`` each. Both use the fused quantizer
forward that training uses (``quant_models/fastpath.py``); the same distillation step with
Brevitas' own forward is timed alongside, giving ``fused_forward_speedup``, and the fused step in
the channels-last layout (``channels_last_speedup``).

Results: ``bench/results/accuracy.json`` and ``accuracy.md`` (``--results-dir``), rewritten while
the jobs run, with exactly what was run (epochs, seeds, subset, device, wall time) and
``complete: false`` until every job is done. A rerun of the same command resumes.

Full-budget runs: on CPU the ablation fits only a small budget, so single training runs at the
shipped budget (``sibnn-train``, e.g. the shipped recipe with another student) are recorded beside
it, each with its recipe, epochs, device, threads and wall time, and every SI run against its
twin without SI trained with the same recipe (:data:`SI_TWIN`), on validation and on test::

    python -m bench.accuracy --record-runs runs/fmnist_plain_mbh_e18_ema runs/fmnist_si_h_mbh_e18_ema
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import bench.common
from bench.common import write_results
from quant_models import build_model, load_checkpoint
from quant_models.fastpath import fast_forward, plain_forward
from quant_models.networks import SI_ONLY_KEYS
from quant_models.train import train
from quant_models.train.config import RUNTIME_KEYS, build_config
from quant_models.train.distributed import DistEnv
from quant_models.train.losses import distillation_loss, resolve_tap_weights
from quant_models.train.resume import exp_dir, prepare_run_dir
from sibnn_base import signals
from sibnn_base.errors import ArgumentParser, ConfigError, cli_errors
from sibnn_base.typed import load_mapping, to_dict

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "fmnist_student.yaml"
TEACHER_RECIPE = REPO / "configs" / "fmnist_teacher.yaml"


@dataclass(frozen=True)
class Variant:
    """One row of the ablation."""

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


SI_TWIN = {"si_h_resnet_w1a1_mbh": "resnet_w1a1_mbh", "si_h_resnet_w1a1": "resnet_w1a1",
           "si_resnet_w1a1": "resnet_w1a1"}
"""Each SI student and its twin without SI (same head and sign bias), for recorded runs."""

WIDTH_VARIANTS = ("teacher", "plain", "si_h_mbh")
"""Trained again at every extra ``--widths`` width (each width has its own teacher, since block
KD and init need the same geometry): the points of the accuracy-per-LUT plot."""


def variants(epochs: int, widths: tuple[int, ...] = (),
             names: tuple[str, ...] | None = None) -> list[str]:
    """The variants a run of ``epochs`` epochs trains (the staged one needs two stages; only
    ``names`` where given, the teacher always), then ``w<W>_<variant>`` for every extra width."""
    base = [v for v in VARIANTS if (v != "staged" or epochs >= 2)
            and (names is None or v == "teacher" or v in names)]
    return base + [width_name(w, v) for w in widths for v in WIDTH_VARIANTS]


def width_name(width: int, variant: str) -> str:
    return f"w{width}_{variant}"


def split_name(name: str) -> tuple[str, int | None]:
    """``w16_plain`` -> ``("plain", 16)``; ``plain`` -> ``("plain", None)``."""
    head, _, rest = name.partition("_")
    if head[:1] == "w" and head[1:].isdigit() and rest in VARIANTS:
        return rest, int(head[1:])
    return name, None


def label(name: str) -> str:
    v, w = split_name(name)
    return VARIANTS[v].label + ("" if w is None else f" @ width {w}")


PER_VARIANT_KEYS = ("si_blocks",)
"""Model keys of the recipe that the ablation sets per variant instead (``si_h_mbh`` has SI in
every block, ``si_h_mbh_ds`` in the downsample blocks only, whatever the shipped recipe ships)."""


def _recipe_model(recipe: dict, drop: tuple[str, ...] = ()) -> dict:
    """The recipe's network keys shared by every variant (its ``model`` less
    :data:`PER_VARIANT_KEYS` and ``drop``)."""
    return {k: v for k, v in (recipe.get("model") or {}).items()
            if k not in PER_VARIANT_KEYS + drop}


def _stage(name: str):
    recipe = load_mapping(TEACHER_RECIPE if name == "teacher" else RECIPE)
    want = "teacher" if name == "teacher" else "student"
    st = dict(next(s for s in recipe["stages"] if s["name"] == want))
    if name == "teacher":  # the teacher recipe's augmentation, for this stage only
        for k in ("hflip", "crop_pad"):
            st.setdefault(k, recipe.get("data", {}).get(k))
    st.pop("init_from", None)
    st.pop("teacher", None)
    return st


def ablation_config(seed: int, epochs: int, train_subset: int | None, student_init: str,
                    runs_dir: str, data_dir: str | None, threads: int, *, device: str = "cpu",
                    dataset: str = "fmnist", val_size: int | None = None,
                    widths: tuple[int, ...] = (), names: tuple[str, ...] | None = None,
                    compile: bool = False):
    """One experiment per seed: the teacher stage, then every student variant (of ``names``)."""
    recipe = load_mapping(RECIPE)
    s_stage = _stage("student")
    lw = dict(s_stage["loss_weights"])
    losses = {"ce": {"ce": lw["ce"]},
              "kd": {"ce": lw["ce"], "kd": lw["kd"], "temperature": lw["temperature"]},
              "full": lw}
    init = "teacher" if student_init == "teacher" else None
    stages = [{**_stage("teacher"), "name": "teacher", "epochs": epochs}]
    for name in variants(epochs, names=names):  # in VARIANTS order: later variants append
        v = VARIANTS[name]
        if name == "teacher":
            continue
        if name == "staged":
            first = epochs // 2
            stages.append({**s_stage, "name": "staged_act", "student": "si_resnet_w1a1",
                           "model": {"float_weights": True}, "epochs": first, "loss_weights": lw,
                           "teacher": "teacher", "init_from": init})
            stages.append({**s_stage, "name": "staged", "student": "si_resnet_w1a1",
                           "epochs": epochs - first, "loss_weights": lw, "teacher": "teacher",
                           "init_from": "staged_act"})
            continue
        loss = losses[v.loss]
        stages.append({**s_stage, "name": name, "student": v.model, "epochs": epochs,
                       "loss_weights": loss, "model": dict(v.overrides),
                       "teacher": "teacher" if ("kd" in loss or "block" in loss) else None,
                       "init_from": init})
    for w in widths:
        t = width_name(w, "teacher")
        stages.append({**_stage("teacher"), "name": t, "epochs": epochs,
                       "model": {"width": w}})
        for name in WIDTH_VARIANTS[1:]:
            v = VARIANTS[name]
            loss = losses[v.loss]
            stages.append({**s_stage, "name": width_name(w, name), "student": v.model,
                           "epochs": epochs, "loss_weights": loss,
                           "model": {**v.overrides, "width": w},
                           "teacher": t if ("kd" in loss or "block" in loss) else None,
                           "init_from": t if student_init == "teacher" else None})
    sub = f"_n{train_subset}" if train_subset else ""
    data = {**recipe["data"], "name": dataset, "train_subset": train_subset}
    if val_size is not None:
        data["val_size"] = val_size
    if data_dir:
        data["data_dir"] = data_dir
    ds = "" if dataset == "fmnist" else f"{dataset}_"
    d = {**recipe, "experiment": f"ablation_{ds}e{epochs}{sub}_{student_init}_s{seed}",
         "out_dir": runs_dir, "seed": seed, "stages": stages, "data": data,
         "num_threads": threads, "progress": False, "device": device, "compile": compile,
         "model": _recipe_model(recipe, () if dataset == "fmnist" else ("input_size",))}
    return build_config(d)


def needs(cfg, stage: str) -> list[str]:
    """The stages of ``cfg`` that ``stage`` reads (teacher, init_from)."""
    st = cfg.stage(stage)
    return [r for r in (st.teacher, st.init_from) if r is not None]


def step_cost(steps: int, batch: int, data_dir: str | None, compile: bool = False) -> dict:
    """Median seconds of a distillation step and of a plain CE step of the same student; with
    ``compile``, also of the channels-last distillation step compiled (``checked_compile``)."""
    from quant_models.data import load_splits

    torch.manual_seed(0)
    try:
        x = load_splits("fmnist", data_dir).train.x[:batch]
        source = "fmnist"
    except Exception:  # noqa: BLE001 - any missing data: time on uniform random pixels instead
        x = torch.randint(0, 256, (batch, 1, 28, 28)).float() / 255
        source = "random pixels"
    y = torch.randint(0, 10, (batch,))
    mapping = load_mapping(RECIPE)
    recipe = build_config(mapping)
    lw_full = recipe.stage("student").loss_weights
    lw_ce = type(lw_full)(ce=1.0)
    net = _recipe_model(mapping)
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

    def make_distil(student, teacher, opt):
        def distil():
            with torch.no_grad():
                t_logits, t_taps = teacher.forward_taps(x)
            logits, taps = student.forward_taps(x)
            loss, _ = distillation_loss(logits, taps, y, lw_full, tap_w, t_logits, t_taps)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return distil

    distil = make_distil(student, teacher, opt)

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
    distil_cl = make_distil(student_cl, copy.deepcopy(teacher).to(memory_format=torch.channels_last),
                            torch.optim.Adam(student_cl.parameters(), 1e-4))
    plain(), distil(), distil_brevitas(), distil_cl()  # warm-up
    timed = {"plain": (plain, []), "distil": (distil, []), "brevitas": (distil_brevitas, []),
             "channels_last": (distil_cl, [])}
    said: list[str] = []
    if compile:
        from quant_models.networks import TapOutputs
        from quant_models.train.compile_check import checked_compile
        from quant_models.train.stage_setup import forward_loss

        s_c = copy.deepcopy(student_cl)  # fused forward and layout included
        t_c = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
        opt_c = torch.optim.Adam(s_c.parameters(), 1e-4)
        # the training engine's own step (teacher, student with taps, CE + KD + block loss)
        forward = forward_loss(recipe.stage("student"), TapOutputs(s_c, flat=False), t_c, tap_w)
        step = checked_compile(forward, s_c, x, y, log=said.append)

        def distil_compiled():
            loss = step(x, y)[0]
            opt_c.zero_grad()
            loss.backward()
            opt_c.step()
        distil_compiled()
        timed["compiled"] = (distil_compiled, [])
    for _ in range(steps):
        for fn, acc in timed.values():
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    p, d, b, c, *k = (statistics.median(acc) for _, acc in timed.values())
    extra = {"distill_step_compiled_s": round(k[0], 4), "compile_speedup": round(c / k[0], 3),
             "compile_check": said[0]} if k else {}
    return {**extra, "student": "si_resnet_w1a1", "recipe": RECIPE.name, "batch": batch,
            "steps_each": steps, "inputs": source,
            "threads": torch.get_num_threads(), "plain_step_s": round(p, 4),
            "distill_step_s": round(d, 4), "ratio": round(d / p, 3), "goal_ratio_max": 1.6,
            "distill_step_brevitas_forward_s": round(b, 4),
            "fused_forward_speedup": round(b / d, 3),
            "distill_step_channels_last_s": round(c, 4),
            "channels_last_speedup": round(d / c, 3)}


def collect(cfg) -> dict:
    """Final metrics of every finished stage of one seed's experiment (read from its final.pt)."""
    out = {}
    for v in [st.name for st in cfg.stages if st.name != "staged_act"]:
        final = exp_dir(cfg) / v / "final.pt"
        if final.exists():
            m = load_checkpoint(final)["metrics"]
            out[v] = {k: m.get(k) for k in ("test_acc", "val_acc", "val_acc_before_bn_recalibration",
                                            "epochs", "train_time_s")}
            out[v]["device"] = cfg.device
    return out


RUN_NAME_KEYS = ("experiment", "out_dir")
"""Config keys that name a run and where it lives, not how it trains: not part of a recipe."""


def record_run(run_dir: Path) -> dict:
    """One finished ``sibnn-train`` experiment (``runs/<experiment>``): its last stage's final
    metrics and everything that defines its budget and recipe, read from its own files."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"--record-runs: {run_dir} is not a training run (no config.yaml)")
    cfg = build_config(load_mapping(cfg_path))
    stage = cfg.stages[-1]
    lines = (run_dir / stage.name / "metrics.jsonl")
    rows = [json.loads(x) for x in lines.read_text().splitlines()] if lines.is_file() else []
    if not rows or not rows[-1].get("final"):
        raise ConfigError(f"--record-runs: stage {stage.name!r} of {run_dir} has not finished "
                          f"(resume it with sibnn-train --resume)")
    *epochs, final = rows
    recipe = {k: v for k, v in to_dict(cfg).items() if k not in RUN_NAME_KEYS}
    keep = ("val_acc", "test_acc", "val_acc_raw", "test_acc_raw", "ema_decay", "train_time_s",
            "select", "selected_epoch", "best_val_epoch", "val_acc_last", "test_acc_last")
    # the network itself, as its checkpoint describes it: registry defaults may change later
    model_args = load_checkpoint(run_dir / stage.name / "final.pt")["model_args"]
    return {"student": stage.student, "model_args": model_args, "stage": stage.name,
            "epochs": stage.epochs,
            "train_images": cfg.data.train_subset or f"all but the {cfg.data.val_size} val",
            "seed": cfg.seed, "device": cfg.device, "threads": cfg.num_threads,
            "channels_last": cfg.channels_last,
            **{k: final[k] for k in keep if k in final},
            "val_acc_by_epoch": [r["val_acc"] for r in epochs],
            "recipe": recipe}


def _current_recipe(recipe: dict) -> dict:
    """A recorded recipe with every key the config has gained since filled in at its default
    (e.g. ``data.cutout: 0``, ``loss_weights.label_smoothing: 0.0``, whose defaults change
    nothing); a recipe today's config refuses is compared as it was recorded."""
    try:
        full = to_dict(build_config({**recipe, "experiment": "recorded"}))
    except ConfigError:
        return recipe
    return {k: v for k, v in full.items() if k not in RUN_NAME_KEYS}


def _recipe_key(run: dict, ignore: tuple[str, ...] = (),
                stage_ignore: tuple[str, ...] = ()) -> str:
    """What two recorded runs must share to be compared: the recipe but for the student, the
    runtime keys (those a ``--resume`` may change, :data:`~quant_models.train.config.RUNTIME_KEYS`)
    and the model keys that shape the SI branch only (:data:`~quant_models.networks.SI_ONLY_KEYS`:
    the twin without SI is the same network whatever they say). The recipe is read through
    today's config first (:func:`_current_recipe`), so a key added after a run was recorded
    counts at its default, which is what that run trained with (one ``build_config`` per call:
    compute it once per run and pass it on). Top-level keys in ``ignore`` (e.g. ``seed``) and stage
    keys in ``stage_ignore`` (e.g. ``loss_weights``) are left out too."""
    def net(model):
        return {k: v for k, v in (model or {}).items() if k not in SI_ONLY_KEYS}

    out = {k: v for k, v in _current_recipe(run["recipe"]).items()
           if k not in RUNTIME_KEYS and k not in ignore}
    out["model"] = net(out.get("model"))
    out["stages"] = [{**{k: v for k, v in s.items()
                         if k != "student" and k not in stage_ignore},
                      "model": net(s.get("model"))} for s in out["stages"]]
    return json.dumps(out, sort_keys=True)


def run_comparisons(runs: dict, keys: dict[str, str] | None = None) -> dict:
    """Every recorded SI run against a recorded twin without SI with the same recipe
    (:func:`_recipe_key`, or ``keys`` already computed per run): val and test deltas (val
    decides; a single seed, so under about a point is within run noise)."""
    keys = keys or {name: _recipe_key(r) for name, r in runs.items()}
    out = {}
    for name, r in runs.items():
        twin = SI_TWIN.get(r["student"])
        for other, o in runs.items():
            if o["student"] == twin and keys[name] == keys[other]:
                d = {"si_run": name, "plain_run": other,
                     "val_delta": round(r["val_acc"] - o["val_acc"], 2),
                     "test_delta": round(r["test_acc"] - o["test_acc"], 2)}
                if "val_acc_raw" in r and "val_acc_raw" in o:
                    d["val_delta_last_step_weights"] = round(r["val_acc_raw"] - o["val_acc_raw"], 2)
                    d["test_delta_last_step_weights"] = round(r["test_acc_raw"] - o["test_acc_raw"],
                                                              2)
                d["si_better_by_0.5_on_val"] = d["val_delta"] >= 0.5
                out[f"{name} vs {other}"] = d
    return out


def best_runs(runs: dict, comps: dict, keys: dict[str, str] | None = None) -> dict:
    """For every group of recorded runs that share a recipe (:func:`_recipe_key`: the students
    and their SI placement may differ) and have an SI run compared with its twin in ``comps``
    (:func:`run_comparisons`): the run with the best val accuracy (val decides; test reported),
    and whether any SI run of the group is >= 0.5 val points over its twin (the issue's "full
    method" goal), keyed by the best run. ``keys``: :func:`_recipe_key` per run, if computed."""
    keys = keys or {name: _recipe_key(r) for name, r in runs.items()}
    groups: dict[str, list[str]] = {}
    for name in runs:
        groups.setdefault(keys[name], []).append(name)
    out = {}
    for g in groups.values():
        pairs = [c for c in comps.values() if c["si_run"] in g]
        if not pairs:
            continue
        best = max(g, key=lambda n: runs[n]["val_acc"])
        out[best] = {"runs": g, "student": runs[best]["student"],
                     "si_blocks": runs[best]["model_args"].get("si_blocks", "all")
                     if runs[best]["model_args"].get("si") else None,
                     "val_acc": runs[best]["val_acc"], "test_acc": runs[best]["test_acc"],
                     "epochs": runs[best]["epochs"],
                     "si_beats_twin_by_0.5_on_val": any(c["si_better_by_0.5_on_val"]
                                                        for c in pairs)}
    return out


def _arm(run: dict) -> str:
    """A recorded run's network without its seed: the student and, for an SI student, the keys
    that shape its SI branch as its checkpoint records them (e.g. ``si_blocks=downsample``)."""
    args = run["model_args"]
    if not args.get("si"):
        return run["student"]
    si = ", ".join(f"{k}={args[k]}" for k in SI_ONLY_KEYS if k in args)
    return f"{run['student']} [{si}]"


def _mean_std(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample std, rounded to 0.01; std None for one value (no spread to report)."""
    return (round(statistics.mean(xs), 2),
            round(statistics.stdev(xs), 2) if len(xs) > 1 else None)


def _seed_groups(runs: dict) -> dict[str, dict[str, dict[int, str]]]:
    """The recorded runs by recipe without the seed (:func:`_recipe_key`), then by network
    (:func:`_arm`), then by seed: ``{recipe: {network: {seed: run name}}}``."""
    groups: dict[str, dict[str, dict[int, str]]] = {}
    for name, r in runs.items():
        arms = groups.setdefault(_recipe_key(r, ignore=("seed",)), {})
        arms.setdefault(_arm(r), {})[r["seed"]] = name
    return groups


def _any_run(runs: dict, by_seed: dict[int, str]) -> dict:
    """One recorded run of a :func:`_seed_groups` network (its seeds share student, epochs and
    recipe)."""
    return runs[next(iter(by_seed.values()))]


def seed_means(runs: dict) -> dict:
    """The recorded runs across seeds: for every recipe that differs only by seed
    (:func:`_recipe_key` without ``seed``) and every SI network in it with a twin without SI, the
    seeds both have (paired), each side's mean +- std val and test over those seeds, and the mean
    paired delta. Only pairs with >= 2 shared seeds: one seed is :func:`run_comparisons`. Keyed
    ``"<SI network> vs <twin>, <epochs> epochs"``."""
    out = {}
    for arms in _seed_groups(runs).values():
        for arm, by_seed in arms.items():
            first = _any_run(runs, by_seed)
            twin = SI_TWIN.get(first["student"])
            if twin is None or not first["model_args"].get("si") or twin not in arms:
                continue
            seeds = sorted(set(by_seed) & set(arms[twin]))
            if len(seeds) < 2:
                continue
            si = [runs[by_seed[s]] for s in seeds]
            pl = [runs[arms[twin][s]] for s in seeds]
            deltas = [round(a["val_acc"] - b["val_acc"], 2) for a, b in zip(si, pl, strict=True)]
            (sv, svs), (pv, pvs) = (_mean_std([r["val_acc"] for r in x]) for x in (si, pl))
            (st, sts), (pt, pts) = (_mean_std([r["test_acc"] for r in x]) for x in (si, pl))
            out[f"{arm} vs {twin}, {first['epochs']} epochs"] = {
                "seeds": seeds, "si_runs": [by_seed[s] for s in seeds],
                "plain_runs": [arms[twin][s] for s in seeds],
                "si_val_mean": sv, "si_val_std": svs, "plain_val_mean": pv, "plain_val_std": pvs,
                "si_test_mean": st, "si_test_std": sts, "plain_test_mean": pt,
                "plain_test_std": pts, "val_delta_per_seed": deltas,
                "val_delta_mean": round(sv - pv, 2), "test_delta_mean": round(st - pt, 2),
                "si_better_by_0.5_on_mean_val": sv - pv >= 0.5}
    return out


def _arm_means(runs: dict, by_seed: dict[int, str]) -> dict:
    """A :func:`_seed_groups` network over its seeds: the seeds, their runs (in seed order) and
    mean +- std of val and test accuracy (:func:`_mean_std`: std None for one seed)."""
    seeds = sorted(by_seed)
    names = [by_seed[s] for s in seeds]
    rs = [runs[n] for n in names]
    (vm, vs), (tm, ts) = (_mean_std([r[k] for r in rs]) for k in ("val_acc", "test_acc"))
    return {"seeds": seeds, "runs": names, "val_mean": vm, "val_std": vs,
            "test_mean": tm, "test_std": ts}


def network_seed_means(runs: dict) -> dict:
    """Every network trained with one recipe at >= 2 seeds (:func:`_seed_groups`), SI or not,
    teachers too: mean +- std of its val and test accuracy over those seeds (the issue's "mean
    +- std per variant" for the full-budget runs; e.g. a teacher recipe adopted on two seeds).
    Keyed ``"<network>, <epochs> epochs: <run>, <run>, ..."``."""
    out = {}
    for arms in _seed_groups(runs).values():
        for arm, by_seed in arms.items():
            if len(by_seed) >= 2:
                m = _arm_means(runs, by_seed)
                out[f"{arm}, {runs[m['runs'][0]]['epochs']} epochs: {', '.join(m['runs'])}"] = m
    return out


METHOD_STAGE_KEYS = ("teacher", "loss_weights")
"""Stage keys in which the full method and plain W1A1 trained with CE only differ by definition:
left out of the recipe they must share to be compared (:func:`method_comparisons`)."""


def loss_kind(run: dict) -> str:
    """How a recorded run's last stage trained: ``block`` (block-wise KD, the method's loss, with
    or without logit KD), ``kd`` (logit KD only) or ``ce`` (CE only, plain training). A weight the
    recorded recipe lacks is 0, its default in the config."""
    lw = run["recipe"]["stages"][-1].get("loss_weights") or {}
    if lw.get("block", 0) > 0:
        return "block"
    return "kd" if lw.get("kd", 0) > 0 else "ce"


def method_comparisons(runs: dict) -> dict:
    """The issue's method goal at the recorded budgets: every SI network distilled block-wise
    (:func:`loss_kind` ``block``) against its twin without SI trained with CE only (``ce``), with
    the same recipe otherwise (:func:`_recipe_key` without the seed and the stage's teacher and
    loss weights: same data, init, optimizer, schedule, epochs and selection), paired by seed.
    Each side's mean +- std val and test over the seeds both have, the per-seed and mean deltas,
    and whether the mean val delta is >= 0.5 (val decides; one seed is reported with std None).
    Keyed ``"<SI network> + block KD vs <twin> CE only, <epochs> epochs"``."""
    groups: dict[str, dict[tuple[str, str], dict[int, str]]] = {}
    for name, r in runs.items():
        key = _recipe_key(r, ignore=("seed",), stage_ignore=METHOD_STAGE_KEYS)
        groups.setdefault(key, {}).setdefault((_arm(r), loss_kind(r)), {})[r["seed"]] = name
    out = {}
    for arms in groups.values():
        for (arm, kind), by_seed in arms.items():
            first = _any_run(runs, by_seed)
            twin = SI_TWIN.get(first["student"])
            base = arms.get((twin, "ce"))
            if kind != "block" or not first["model_args"].get("si") or not base:
                continue
            seeds = sorted(set(by_seed) & set(base))
            if not seeds:
                continue
            m = _arm_means(runs, {s: by_seed[s] for s in seeds})
            p = _arm_means(runs, {s: base[s] for s in seeds})
            deltas = [round(runs[a]["val_acc"] - runs[b]["val_acc"], 2)
                      for a, b in zip(m["runs"], p["runs"], strict=True)]
            gain = round(m["val_mean"] - p["val_mean"], 2)
            out[f"{arm} + block KD vs {twin} CE only, {first['epochs']} epochs"] = {
                "seeds": seeds, "epochs": first["epochs"], "method_runs": m["runs"],
                "plain_runs": p["runs"],
                **{f"method_{k}": m[k] for k in ("val_mean", "val_std", "test_mean", "test_std")},
                **{f"plain_{k}": p[k] for k in ("val_mean", "val_std", "test_mean", "test_std")},
                "val_delta_per_seed": deltas, "val_delta_mean": gain,
                "test_delta_mean": round(m["test_mean"] - p["test_mean"], 2),
                "method_better_by_0.5_on_mean_val": gain >= 0.5}
    return out


def goal_verdict(goal: dict) -> str:
    """``met``, ``MISSED`` or, for a :func:`method_goal` on one seed, ``not decided``."""
    return "met" if goal["met"] else "MISSED" if goal.get("decided", True) else "not decided"


def method_goal(comps: dict) -> dict | None:
    """The issue's goal "the full method >= plain W1A1 + 0.5 at the same width and budget" at the
    largest recorded budget (most epochs, then most seeds; :func:`method_comparisons`), decided on
    mean val over at least 2 seeds (one seed is reported, ``met`` False: the val spread of a run's
    last epochs is about a point), with test reported and the best of the two sides there on val;
    None without such a comparison."""
    if not comps:
        return None
    name, c = max(comps.items(), key=lambda kv: (kv[1]["epochs"], len(kv[1]["seeds"])))
    decided = len(c["seeds"]) >= 2
    best = "method" if c["method_val_mean"] >= c["plain_val_mean"] else "plain"
    return {"goal": "full method (SI + block KD) - plain W1A1 (CE only) >= 0.5 points on mean val, "
                    "same width and budget", "comparison": name, "epochs": c["epochs"],
            "seeds": c["seeds"], "measured_val": c["val_delta_mean"],
            "measured_test": c["test_delta_mean"],
            "met": c["method_better_by_0.5_on_mean_val"] and decided,
            "decided": decided, "best_on_val": c[f"{best}_runs"]}


def arm_label(model_args: dict) -> str:
    """A short name of a recorded network for plots: ``no SI`` or ``SI(h), downsample blocks,
    r=4``."""
    if not model_args.get("si"):
        return "no SI"
    return (f"SI({model_args.get('si_input', 'a')}), "
            f"{model_args.get('si_blocks', 'all')} blocks, r={model_args.get('r')}")


def longest_recipe_arms(runs: dict) -> list[dict]:
    """The recorded runs of the recipe with the most epochs among those that hold an SI network
    and its twin without SI (seeds pooled; ties: the recipe of the best run on val, which is how
    the shipped student is chosen, then the most runs), one entry per network: its
    student, registry overrides (the checkpoint's ``model_args``), runs, seeds, epochs and mean
    +- std test and val accuracy (std None for one seed). Empty when no recipe has such a pair."""
    best = None
    for arms in _seed_groups(runs).values():
        students = {_any_run(runs, ns)["student"] for ns in arms.values()}
        if not any(SI_TWIN.get(st) in students for st in students):
            continue
        rank = (_any_run(runs, next(iter(arms.values())))["epochs"],
                max(runs[n]["val_acc"] for ns in arms.values() for n in ns.values()),
                sum(map(len, arms.values())))
        if best is None or rank > best[0]:
            best = (rank, arms)
    out = []
    for by_seed in (best[1].values() if best else ()):
        m = _arm_means(runs, by_seed)
        first = runs[m["runs"][0]]
        args = first["model_args"]
        out.append({"student": first["student"], "label": arm_label(args),
                    "overrides": {k: v for k, v in args.items() if k not in ("si", "binary")},
                    "runs": m["runs"], "seeds": m["seeds"], "epochs": first["epochs"],
                    "test_acc_mean": m["test_mean"], "test_acc_std": m["test_std"],
                    "val_acc_mean": m["val_mean"], "val_acc_std": m["val_std"]})
    return sorted(out, key=lambda a: (a["student"], a["label"]))


def run_rows(data: dict, width: int) -> list[list[str]]:
    """Table rows for the recorded full-budget runs and their SI-vs-twin comparisons."""
    runs = data.get("full_runs") or {}
    rows = []
    for name, r in runs.items():
        ema = (f", EMA {r['ema_decay']} (last step's weights: val {r['val_acc_raw']:.2f}, test "
               f"{r['test_acc_raw']:.2f})" if "ema_decay" in r else "")
        if r.get("select") == "best_val":
            ema += (f", best-val epoch {r['selected_epoch']} shipped (last epoch: val "
                    f"{r.get('val_acc_last', r['val_acc']):.2f}, test "
                    f"{r.get('test_acc_last', r['test_acc']):.2f})")
        rows.append([f"run {name}: {r['student']}, {r['epochs']} epochs on {r['train_images']} "
                     f"training images, seed {r['seed']}, {r['device']} x {r['threads']} "
                     f"thread(s), {r['train_time_s'] / 60:.0f} min{ema}", *[""] * (width - 4),
                     f"{r['test_acc']:.2f}", "", f"{r['val_acc']:.2f}"])
    for name, c in (data.get("run_comparisons") or {}).items():
        rows.append([f"{name}: val {c['val_delta']:+.2f}, test {c['test_delta']:+.2f} points "
                     f"(SI >= +0.5 on val: {'yes' if c['si_better_by_0.5_on_val'] else 'no'})",
                     *[""] * (width - 1)])
    for name, b in (data.get("full_runs_best") or {}).items():
        si = f", SI in {b['si_blocks']} blocks" if b["si_blocks"] else ", no SI"
        rows.append([f"best on val of {', '.join(b['runs'])} ({b['epochs']} epochs): {name} "
                     f"({b['student']}{si}), val {b['val_acc']:.2f}, test {b['test_acc']:.2f}; "
                     f"an SI run >= its twin + 0.5 on val: "
                     f"{'yes' if b['si_beats_twin_by_0.5_on_val'] else 'no'}",
                     *[""] * (width - 1)])
    for name, m in (data.get("seed_means") or {}).items():
        rows.append([f"{name}, seeds {', '.join(map(str, m['seeds']))}: SI val "
                     f"{m['si_val_mean']:.2f} ± {m['si_val_std']:.2f}, twin "
                     f"{m['plain_val_mean']:.2f} ± {m['plain_val_std']:.2f} (per seed "
                     f"{', '.join(f'{d:+.2f}' for d in m['val_delta_per_seed'])}); test "
                     f"{m['si_test_mean']:.2f} ± {m['si_test_std']:.2f} vs "
                     f"{m['plain_test_mean']:.2f} ± {m['plain_test_std']:.2f}; SI >= twin + 0.5 "
                     f"on mean val: {'yes' if m['si_better_by_0.5_on_mean_val'] else 'no'}",
                     *[""] * (width - 1)])
    def sd(x: float | None) -> str:
        return "" if x is None else f" ± {x:.2f}"

    for name, m in (data.get("method_comparisons") or {}).items():
        rows.append([f"the method: {name}, seed(s) {', '.join(map(str, m['seeds']))}: val "
                     f"{m['method_val_mean']:.2f}{sd(m['method_val_std'])} vs "
                     f"{m['plain_val_mean']:.2f}{sd(m['plain_val_std'])} (per seed "
                     f"{', '.join(f'{d:+.2f}' for d in m['val_delta_per_seed'])}); test "
                     f"{m['method_test_mean']:.2f}{sd(m['method_test_std'])} vs "
                     f"{m['plain_test_mean']:.2f}{sd(m['plain_test_std'])}; method >= plain + "
                     f"0.5 on mean val: "
                     f"{'yes' if m['method_better_by_0.5_on_mean_val'] else 'no'}",
                     *[""] * (width - 1)])
    g = data.get("method_goal")
    if g:
        rows.append([f"method goal at the largest recorded budget ({g['epochs']} epochs, "
                     f"{len(g['seeds'])} seed(s)): val {g['measured_val']:+.2f}, test "
                     f"{g['measured_test']:+.2f} points -> {goal_verdict(g)}; "
                     f"best on val: {', '.join(g['best_on_val'])}", *[""] * (width - 1)])
    for name, m in (data.get("network_seed_means") or {}).items():
        rows.append([f"{name} (seeds {', '.join(map(str, m['seeds']))}): val "
                     f"{m['val_mean']:.2f} ± {m['val_std']:.2f}, test {m['test_mean']:.2f} ± "
                     f"{m['test_std']:.2f}", *[""] * (width - 1)])
    return rows


EMPTY = {"complete": False, "run": None, "step_cost": None, "summary": {}, "goals": {},
         "per_seed": {}, "configs": {}}
"""A results file with no ablation in it yet."""


def update_runs(path: Path, run_dirs: list[Path]) -> dict:
    """Record ``run_dirs`` (by experiment name, replacing earlier records of the same name) and
    recompute the comparisons; the ablation and shipped numbers already in ``path`` stay."""
    data = json.loads(path.read_text()) if path.exists() else copy.deepcopy(EMPTY)
    runs = dict(data.get("full_runs") or {})
    for d in run_dirs:
        runs[d.name] = record_run(d)
    data["full_runs"] = runs
    keys = {name: _recipe_key(r) for name, r in runs.items()}
    data["run_comparisons"] = run_comparisons(runs, keys)
    data["full_runs_best"] = best_runs(runs, data["run_comparisons"], keys)
    data["seed_means"] = seed_means(runs)
    data["network_seed_means"] = network_seed_means(runs)
    data["method_comparisons"] = method_comparisons(runs)
    data["method_goal"] = method_goal(data["method_comparisons"])
    data.pop("machine", None)
    _write(path, data)
    return data


def _write(path: Path, data: dict) -> None:
    run = data.get("run")
    seeds = run["seeds"] if run else []
    per_seed = {int(k): v for k, v in data["per_seed"].items()}
    write_results("accuracy", data, table(data["summary"], per_seed, seeds, data["step_cost"], run,
                                          data.get("shipped"), data), results_dir=path.parent)


def goals(summary: dict) -> dict:
    """The issue's accuracy goals, each with its measured value and whether it is met. "The full
    method" is the best SI variant distilled block-wise (by mean *validation* accuracy)."""
    mean = {v: s["test_acc_mean"] for v, s in summary.items()}
    val = {v: s.get("val_acc_mean") for v, s in summary.items()}

    def best_on_val(names: list[str]) -> str:  # ties (or no val): the better test accuracy
        return max(names, key=lambda v: (val[v] if val[v] is not None else -1.0, mean[v]))

    out = {}
    if "teacher" in mean:
        out["teacher_top1"] = {"goal": "teacher >= 93.0 %", "measured": mean["teacher"],
                               "met": mean["teacher"] >= 93.0}
    cands = [v for v in summary if v in VARIANTS and VARIANTS[v].si and v != "staged"]
    if not cands:
        return out
    best = best_on_val(cands)
    out["full_top1"] = {"goal": f"{best} >= 91.0 %", "measured": mean[best],
                        "met": mean[best] >= 91.0}
    if "teacher" in mean:
        gap = round(mean["teacher"] - mean[best], 2)
        out["teacher_gap"] = {"goal": f"teacher - {best} <= 2.0 points", "measured": gap,
                              "met": gap <= 2.0}
    if "plain" in mean:
        d = round(mean[best] - mean["plain"], 2)
        # the best student at the recipe width on val, whatever it is: what the default follows
        students = [v for v in summary if v in VARIANTS and v != "teacher"]
        top = best_on_val(students)
        out["method_gain"] = {"goal": f"{best} - plain >= 0.5 points (same width and budget)",
                              "measured": d, "met": d >= 0.5, "best_student_on_val": top}
    mbh_si = [v for v in ("si_h_mbh", "si_h_mbh_ds") if v in mean]
    if "mbh_ce" in mean and mbh_si:
        b = best_on_val(mbh_si)
        d = round(mean[b] - mean["mbh_ce"], 2)
        out["method_gain_mbh"] = {"goal": f"{b} - mbh_ce >= 0.5 points (the shipped network, "
                                          "same width and budget)", "measured": d,
                                  "met": d >= 0.5}
    for si, base, key in (("si_kd", "kd", "si_gain"), ("si_h_mbh", "mbh", "si_h_gain_mbh")):
        if si in mean and base in mean:
            d = round(mean[si] - mean[base], 2)
            out[key] = {"goal": f"{si} - {base} >= 0.5 points", "measured": d, "met": d >= 0.5}
    if "full" in mean and "si_kd" in mean:
        d = round(mean["full"] - mean["si_kd"], 2)
        out["block_kd_gain"] = {"goal": "full - si_kd >= 0.5 points", "measured": d,
                                "met": d >= 0.5}
    return out


def decisions(per_seed: dict, seeds: list[int]) -> dict:
    """Recipe comparisons on the validation split, over the seeds that have both sides (at this
    run's budget): is the staged recipe's mean validation accuracy above the one-step full
    recipe's, and does SI in the downsample blocks only (the cheaper SI in hardware)
    keep the accuracy of SI in every block (``si_h_mbh_ds`` vs ``si_h_mbh``)?"""
    out = {}
    for key, base, other, question in (
            ("staged", "full", "staged", "mean val accuracy of staged above full's, same seeds?"),
            ("si_downsample_only", "si_h_mbh", "si_h_mbh_ds",
             "mean val accuracy of SI in the downsample blocks only at least SI in every "
             "block's, same seeds?")):
        both = [s for s in seeds if {base, other} <= set(per_seed.get(s, {}))]
        if not both:
            continue
        b = statistics.fmean(per_seed[s][base]["val_acc"] for s in both)
        o = statistics.fmean(per_seed[s][other]["val_acc"] for s in both)
        d = {"question": question, "seeds": both, f"{base}_val_acc_mean": round(b, 2),
             f"{other}_val_acc_mean": round(o, 2), "val_delta": round(o - b, 2)}
        if key == "staged":
            d["better_on_val"] = o > b
        else:
            d["as_good_on_val"] = o >= b
            d["test_delta"] = round(statistics.fmean(per_seed[s][other]["test_acc"] -
                                                     per_seed[s][base]["test_acc"]
                                                     for s in both), 2)
        out[key] = d
    return out


def summarise(per_seed: dict, seeds: list[int]) -> dict:
    out = {}
    names = list(VARIANTS) + sorted({v for r in per_seed.values() for v in r} - set(VARIANTS))
    for v in names:
        accs = [per_seed[s][v]["test_acc"] for s in seeds if v in per_seed.get(s, {})]
        if accs:
            vals = [per_seed[s][v].get("val_acc") for s in seeds if v in per_seed.get(s, {})]
            out[v] = {"test_acc_mean": round(statistics.fmean(accs), 2),
                      "val_acc_mean": (round(statistics.fmean(vals), 2)
                                       if all(a is not None for a in vals) else None),
                      "test_acc_std": round(statistics.pstdev(accs), 2) if len(accs) > 1 else None,
                      "seeds_done": len(accs)}
    return out


def table(summary: dict, per_seed: dict, seeds: list[int], cost: dict | None,
          run: dict | None = None, shipped: dict | None = None,
          data: dict | None = None) -> list[list[str]]:
    rows = [["variant", *[f"seed {s} test %" for s in seeds], "mean ± std %", "vs plain",
             "mean val %"]]
    for v in summary:
        name = label(v)
        cells = [f"{per_seed[s][v]['test_acc']:.2f}" if v in per_seed.get(s, {}) else "-"
                 for s in seeds]
        mean = summary[v]["test_acc_mean"]
        std = summary[v].get("test_acc_std")
        base, width = split_name(v)
        ref = summary.get("plain" if width is None else width_name(width, "plain"))
        delta = ("" if ref is None or base in ("teacher", "plain")
                 else f"{mean - ref['test_acc_mean']:+.2f}")
        val = summary[v].get("val_acc_mean")
        rows.append([name, *cells, f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}"),
                     delta, "-" if val is None else f"{val:.2f}"])
    decs = decisions(per_seed, seeds)
    dec = decs.get("staged")
    if dec:
        rows.append([f"staged vs full on the val split (the model-selection set): "
                     f"{dec['val_delta']:+.2f} points at this budget", *[""] * len(seeds), "", "",
                     ""])
    dec = decs.get("si_downsample_only")
    if dec:
        rows.append([f"SI in the downsample blocks only vs in every block (si_h_mbh_ds vs "
                     f"si_h_mbh), {len(dec['seeds'])} seed(s): val {dec['val_delta']:+.2f}, test "
                     f"{dec['test_delta']:+.2f} points", *[""] * len(seeds), "", "", ""])
    if cost:
        rows.append([f"distillation step / plain step (batch {cost['batch']})",
                     *[""] * len(seeds), f"{cost['ratio']:.3f}x", "goal <= 1.6x", ""])
        if "fused_forward_speedup" in cost:
            rows.append(["distillation step, Brevitas forward / fused forward",
                         *[""] * len(seeds), f"{cost['fused_forward_speedup']:.3f}x", "", ""])
        if "channels_last_speedup" in cost:
            rows.append(["distillation step, default / channels-last layout (both fused)",
                         *[""] * len(seeds), f"{cost['channels_last_speedup']:.3f}x", "", ""])
        if "compile_speedup" in cost:
            rows.append(["distillation step, channels-last eager / compiled (checked_compile: "
                         + cost["compile_check"].split(":")[0] + ")",
                         *[""] * len(seeds), f"{cost['compile_speedup']:.3f}x", "", ""])
    best = goals(summary).get("method_gain")
    if best:
        rows.append([f"the full method ({best['goal'].split(' ')[0]}) vs plain: "
                     f"{best['measured']:+.2f} points -> {'met' if best['met'] else 'MISSED'}"
                     + (f"; the best student on val at this budget: "
                        f"{label(best['best_student_on_val'])}"
                        if best.get("best_student_on_val") else ""),
                     *[""] * len(seeds), "", "", ""])
    if run:
        n = run["train_subset"] or "all"
        dev = run.get("device", "cpu")
        wall = run.get("wall_s")
        rows.append([f"run: {run['epochs']} epoch(s) per variant, {n} training images, students "
                     f"init from {run['student_init']}, device {dev}"
                     + (f" ({run['device_name']})" if run.get("device_name") else "")
                     + f", {run['threads']} thread(s) per job"
                     + (f", students on configs/{run['recipe']}" if run.get("recipe") else "")
                     + (f", wall {wall / 60:.1f} min" if wall else ""),
                     *[""] * len(seeds), "", "", ""])
    return (rows + run_rows(data or {}, len(rows[0])) + device_run_rows(data or {}, len(rows[0]))
            + shipped_rows(shipped, len(rows[0])))


def render(path: Path, cost: dict | None = None) -> None:
    """Rewrite the Markdown table (and JSON) from an existing results file, e.g. after an
    interrupted run; no number is recomputed except ``cost``, the step cost, when given."""
    data = json.loads(path.read_text())
    if cost is not None:
        data["step_cost"] = cost
        data.pop("machine", None)  # measured now, on this machine
    _write(path, data)


def update_cost(path: Path, cost: dict) -> None:
    """Store a new step cost; the ablation numbers already in ``path`` stay."""
    if not path.exists():
        write_results("accuracy", {"complete": False, "run": None, "step_cost": cost,
                                   "summary": {}, "goals": {}, "per_seed": {}, "configs": {}},
                      table({}, {}, [], cost), results_dir=path.parent)
        return
    render(path, cost)


def shipped(data_dir: str | None = None, batch: int = 1000) -> dict:
    """Every registry model with a shipped checkpoint, evaluated here on the whole test set of
    its dataset by a plain float loop (``pixels / 255``, eval mode, argmax), against the top-1
    its registry entry claims; the issue's goals for the shipped student (the build's default
    model) and its teacher."""
    from flow.config import DEFAULT_MODEL
    from quant_models.data import load_test
    from quant_models.registry import TEACHER_OF, get_entry, list_models

    models = {}
    for name in list_models():
        entry = get_entry(name).pretrained
        if entry is None:
            continue
        test = load_test(entry.dataset, data_dir)
        model = build_model(name, pretrained=True)
        correct = 0
        with torch.no_grad():
            for i in range(0, len(test.x), batch):
                correct += int((model(test.x[i:i + batch]).argmax(1) == test.y[i:i + batch]).sum())
        acc = round(100.0 * correct / len(test.x), 2)
        models[name] = {"file": entry.file, "sha256": entry.sha256, "dataset": entry.dataset,
                        "test_images": len(test.x), "test_acc": acc,
                        "registry_top1": entry.top1, "matches_registry": acc == entry.top1,
                        "command": entry.command}
    out: dict = {"default_model": DEFAULT_MODEL, "models": models,
                 "evaluated_by": "plain float loop over pixels / 255 on the whole test set"}
    student, teacher = models.get(DEFAULT_MODEL), models.get(TEACHER_OF.get(DEFAULT_MODEL, ""))
    g = {}
    if student:
        g["student_top1"] = {"goal": f"shipped {DEFAULT_MODEL} >= 91.0 %",
                             "measured": student["test_acc"], "met": student["test_acc"] >= 91.0}
    if teacher:
        g["teacher_top1"] = {"goal": f"shipped {TEACHER_OF[DEFAULT_MODEL]} >= 93.0 %",
                             "measured": teacher["test_acc"], "met": teacher["test_acc"] >= 93.0}
    if student and teacher:
        gap = round(teacher["test_acc"] - student["test_acc"], 2)
        g["teacher_gap"] = {"goal": "shipped teacher - shipped student <= 2.0 points",
                            "measured": gap, "met": gap <= 2.0}
    out["goals"] = g
    return out


def shipped_rows(sh: dict | None, width: int) -> list[list[str]]:
    """Table rows for the shipped checkpoints (``width`` cells per row)."""
    if not sh:
        return []
    # columns: label, one per seed, mean, vs plain, val
    rows = [[f"shipped {n} ({m['file']}), whole test set", *[""] * (width - 4),
             f"{m['test_acc']:.2f}",
             "registry " + ("matches" if m["matches_registry"] else f"says {m['registry_top1']}"),
             ""] for n, m in sh["models"].items()]
    rows += [[f"goal {g['goal']}: {g['measured']} -> {'met' if g['met'] else 'MISSED'}",
              *[""] * (width - 1)] for g in sh["goals"].values()]
    return rows


def update_shipped(path: Path, sh: dict) -> None:
    """Store the shipped-checkpoint evaluation; the ablation numbers already in ``path`` stay."""
    data = json.loads(path.read_text()) if path.exists() else copy.deepcopy(EMPTY)
    data["shipped"] = sh
    data.pop("machine", None)
    _write(path, data)


def record_device_run(path: Path, out_dir: Path, note: str, discard: list[str]) -> dict:
    """Store a device ablation's output (``$OUT`` of ``scripts/device_ablation.sh``: its
    ``accuracy.json`` and ``runs.tgz``) under ``device_runs`` of ``path``, complete or not: the
    stages that finished (but those named in ``discard``, e.g. runs known to be wrong), every
    stage's progress (epochs done, median seconds per epoch and per step after the first epoch,
    last val accuracy) and ``note``. The ablation numbers already in ``path`` stay."""
    import tarfile

    missing = [f for f in ("accuracy.json", "runs.tgz") if not (out_dir / f).is_file()]
    if missing:
        raise ConfigError(f"--record-device-run: {out_dir} has no {' or '.join(missing)} (give "
                          "the folder scripts/device_ablation.sh wrote to, its $OUT)")
    dev = json.loads((out_dir / "accuracy.json").read_text())
    progress: dict[str, dict] = {}
    with tarfile.open(out_dir / "runs.tgz") as tar:
        for m in tar.getmembers():
            if not m.name.endswith("metrics.jsonl"):
                continue
            exp, stage = Path(m.name).parts[-3:-1]
            rows = [json.loads(x) for x in tar.extractfile(m).read().decode().splitlines()]
            ep = [r for r in rows if "epoch" in r and not r.get("final")]
            if not ep:
                continue
            later = ep[1:] or ep
            progress.setdefault(exp.rsplit("_s", 1)[-1], {})[stage] = {
                "epochs_done": len(ep), "first_epoch_s": ep[0]["epoch_time_s"],
                "epoch_s_median": statistics.median(r["epoch_time_s"] for r in later),
                "step_s_median": statistics.median(r["step_time_s"] for r in later),
                "last_val_acc": ep[-1]["val_acc"]}
    finished = {seed: {v: m for v, m in r.items() if v not in discard}
                for seed, r in dev["per_seed"].items()}
    summary = summarise({int(k): v for k, v in finished.items()}, [int(k) for k in finished])
    rec = {"run": dev["run"], "complete": dev["complete"], "discarded": discard, "note": note,
           **_script_log(out_dir / "ablation.log"),
           "finished": finished, "summary": summary,
           "progress": {k: progress[k] for k in sorted(progress)}}
    data = json.loads(path.read_text()) if path.exists() else copy.deepcopy(EMPTY)
    data.setdefault("device_runs", []).append(rec)
    _write(path, data)
    return rec


def _script_log(path: Path) -> dict:
    """What ``scripts/device_ablation.sh`` logged about itself: whether CUDA MPS was on, and its
    wall time (absent from logs of before it logged them)."""
    import re

    text = path.read_text(errors="replace") if path.is_file() else ""
    out: dict = {}
    if "] MPS on" in text:
        out["mps"] = True
    elif "] MPS unavailable" in text:
        out["mps"] = False
    walls = re.findall(r"\] wall (\d+) s, exit (-?\d+)", text)
    if walls:
        out["script_wall_s"], out["script_exit"] = int(walls[-1][0]), int(walls[-1][1])
    return out


def device_run_rows(data: dict, width: int) -> list[list[str]]:
    rows = []
    for r in data.get("device_runs") or []:
        run = r["run"]
        rows.append([f"device run ({run['device_name']}, {run['epochs']} epochs, seeds "
                     f"{run['seeds']}, {'complete' if r['complete'] else 'incomplete'}"
                     + ("" if "mps" not in r else f", MPS {'on' if r['mps'] else 'off'}")
                     + ("" if "script_wall_s" not in r else f", wall {r['script_wall_s']} s")
                     + "): "
                     f"{r['note']}", *[""] * (width - 1)])
        for v, m in r["summary"].items():
            std = m.get("test_acc_std")
            rows.append([f"device run: {label(v)}", *[""] * (width - 4),
                         f"{m['test_acc_mean']:.2f}" + ("" if std is None else f" ± {std:.2f}"),
                         "", f"{m['val_acc_mean']:.2f}"])
    return rows


def _device_name(device: str) -> str | None:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4, help="epochs of every variant")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train-subset", type=int, default=None,
                   help="train on the first N training images (default: all 55,000)")
    p.add_argument("--quick", action="store_true",
                   help="--epochs 1 --train-subset 6400 (minutes per variant on one core)")
    p.add_argument("--student-init", choices=["teacher", "scratch"], default="teacher")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--jobs", type=int, default=None,
                   help="training processes at once (default: all on cuda, 1 on cpu)")
    p.add_argument("--parallel", action="store_true",
                   help="on cpu: one job per seed at once (same as --jobs <number of seeds>)")
    p.add_argument("--dataset", default="fmnist", help="fmnist (default), or digits for a smoke run")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   metavar="VARIANT", help="train only these variants (and their teacher); "
                   f"default all: {', '.join(VARIANTS)}")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every training step, checked against the eager step first; "
                        "with the step cost, time the compiled step too")
    p.add_argument("--widths", type=int, nargs="*", default=[],
                   help="also train teacher, plain and si_h_mbh at these widths (the points of "
                        "the accuracy-per-LUT plot), e.g. --widths 16 24 48")
    p.add_argument("--val-size", type=int, default=None,
                   help="validation images carved from the training set (default: the recipe's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs-dir", default=str(REPO / "runs"))
    p.add_argument("--results-dir", default=None, help="where accuracy.json/.md go "
                                                        "(default bench/results)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--cost-steps", type=int, default=10)
    p.add_argument("--cost-only", action="store_true", help="only measure the step-cost ratio")
    p.add_argument("--shipped", action="store_true",
                   help="only evaluate the shipped checkpoints on the whole test set (goals: "
                        "student >= 91 %%, teacher >= 93 %%, gap <= 2 points)")
    p.add_argument("--no-cost", action="store_true", help="skip the step-cost measurement")
    p.add_argument("--record-runs", nargs="+", default=None, metavar="RUN_DIR",
                   help="only record these finished sibnn-train runs (runs/<experiment>) beside "
                        "the ablation, each SI run compared with its twin without SI trained "
                        "with the same recipe")
    p.add_argument("--record-device-run", default=None, metavar="OUT_DIR",
                   help="only record the output of scripts/device_ablation.sh (accuracy.json "
                        "and runs.tgz in OUT_DIR), complete or not, beside the ablation")
    p.add_argument("--note", default="", help="with --record-device-run: what to know about it")
    p.add_argument("--discard", nargs="*", default=[], metavar="VARIANT",
                   help="with --record-device-run: variants whose finished runs are not kept")
    p.add_argument("--train-seed", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--train-stage", default=None, help=argparse.SUPPRESS)
    p.add_argument("--render", action="store_true",
                   help="only rewrite accuracy.md from the existing accuracy.json")
    args = p.parse_args(argv)
    results_dir = Path(args.results_dir) if args.results_dir else bench.common.RESULTS
    if args.render:
        render(results_dir / "accuracy.json")
        return 0
    if args.record_runs:
        data = update_runs(results_dir / "accuracy.json", [Path(d) for d in args.record_runs])
        for name, c in data["run_comparisons"].items():
            print(f"{name}: val {c['val_delta']:+.2f}, test {c['test_delta']:+.2f} points")
        for name, b in data["full_runs_best"].items():
            print(f"best on val of {', '.join(b['runs'])}: {name} (val {b['val_acc']:.2f}, "
                  f"test {b['test_acc']:.2f}); SI >= twin + 0.5 on val: "
                  f"{'yes' if b['si_beats_twin_by_0.5_on_val'] else 'no'}")
        for name, m in data["seed_means"].items():
            print(f"{name}, seeds {m['seeds']}: val {m['si_val_mean']:.2f} vs "
                  f"{m['plain_val_mean']:.2f} ({m['val_delta_mean']:+.2f}), test "
                  f"{m['si_test_mean']:.2f} vs {m['plain_test_mean']:.2f}")
        for name, m in data["network_seed_means"].items():
            print(f"{name}: val {m['val_mean']:.2f} ± {m['val_std']:.2f}, test "
                  f"{m['test_mean']:.2f} ± {m['test_std']:.2f}")
        for name, m in data["method_comparisons"].items():
            print(f"the method: {name}, seeds {m['seeds']}: val {m['method_val_mean']:.2f} vs "
                  f"{m['plain_val_mean']:.2f} ({m['val_delta_mean']:+.2f}), test "
                  f"{m['method_test_mean']:.2f} vs {m['plain_test_mean']:.2f}")
        g = data["method_goal"]
        if g:
            print(f"goal {g['goal']}: measured {g['measured_val']:+.2f} ({g['epochs']} epochs, "
                  f"seeds {g['seeds']}) -> {goal_verdict(g)}")
        return 0
    if args.record_device_run:
        rec = record_device_run(results_dir / "accuracy.json", Path(args.record_device_run),
                                args.note, args.discard)
        for v, m in rec["summary"].items():
            print(f"{v}: test {m['test_acc_mean']:.2f} (std {m['test_acc_std']}), "
                  f"val {m['val_acc_mean']:.2f}, {m['seeds_done']} seed(s)")
        return 0
    if args.shipped:
        sh = shipped(args.data_dir)
        update_shipped(results_dir / "accuracy.json", sh)
        for n, m in sh["models"].items():
            print(f"{n}: {m['test_acc']:.2f} % on {m['test_images']} test images "
                  f"(registry: {m['registry_top1']})")
        for g in sh["goals"].values():
            print(f"goal {g['goal']}: measured {g['measured']} -> {'met' if g['met'] else 'MISSED'}")
        return 0
    if args.quick:
        args.epochs, args.train_subset = 1, 6400
    torch.set_num_threads(args.threads)

    names = None if args.variants is None else tuple(args.variants)

    def config(seed: int):
        return ablation_config(seed, args.epochs, args.train_subset, args.student_init,
                               args.runs_dir, args.data_dir, args.threads, device=args.device,
                               dataset=args.dataset, val_size=args.val_size,
                               widths=tuple(args.widths), compile=args.compile,
                               names=names)

    if args.train_seed is not None:  # a child job: train one stage of one seed, write nothing else
        cfg = config(args.train_seed)
        train(cfg, resume=True, only=[args.train_stage],
              log=lambda m: print(f"[seed {args.train_seed}] {m}", flush=True))
        return 0

    configs = {s: config(s) for s in args.seeds}  # validates everything (device included) first
    cost = None
    if not args.no_cost:
        cost = step_cost(args.cost_steps, 256, args.data_dir, compile=args.compile)
        print(f"step cost: distill {cost['distill_step_s']}s / plain {cost['plain_step_s']}s "
              f"= {cost['ratio']}x")
    if args.cost_only:
        update_cost(results_dir / "accuracy.json", cost)
        return 0
    jobs = args.jobs or (len(args.seeds) if args.parallel and args.device == "cpu" else None)
    if jobs is None:
        jobs = 10**6 if args.device.startswith("cuda") else 1
    run = {"epochs": args.epochs, "seeds": args.seeds, "train_subset": args.train_subset,
           "student_init": args.student_init, "threads": args.threads, "jobs_at_once": jobs,
           "device": args.device, "device_name": _device_name(args.device),
           "dataset": args.dataset, "widths": args.widths, "recipe": RECIPE.name,
           "variants": variants(args.epochs, tuple(args.widths), names),
           "compile": args.compile,
           "teacher_recipe": TEACHER_RECIPE.name,
           "evaluated_on": f"{args.dataset} test set, the epoch each stage ships (its select)", "wall_s": None}
    t0 = time.perf_counter()

    old = results_dir / "accuracy.json"
    prev = json.loads(old.read_text()) if old.exists() else {}
    kept = {k: prev[k] for k in ("shipped", "full_runs", "run_comparisons", "full_runs_best",
                                 "seed_means", "network_seed_means", "device_runs")
            if k in prev}

    def save(final: bool = False) -> dict:
        """Rewrite the results from every finished stage on disk (complete once all are); the
        shipped-checkpoint evaluation (``--shipped``) and the recorded runs (``--record-runs``)
        already in the file stay."""
        per_seed = {s: collect(c) for s, c in configs.items()}
        summary = summarise(per_seed, args.seeds)
        complete = all(len(r) == len(variants(args.epochs, tuple(args.widths),
                                              names))
                       for r in per_seed.values())
        if final:
            run["wall_s"] = round(time.perf_counter() - t0, 1)
        data = {"complete": complete, "run": run, "step_cost": cost, "summary": summary,
                "goals": goals(summary), "decisions": decisions(per_seed, args.seeds),
                "per_seed": {str(s): r for s, r in per_seed.items()},
                "configs": {str(s): to_dict(c) for s, c in configs.items()}}
        data.update(kept)
        _write(results_dir / "accuracy.json", data)
        return data

    for cfg in configs.values():  # write (or check, on a rerun) each seed's run directory once
        prepare_run_dir(cfg, (exp_dir(cfg) / "config.yaml").exists(), DistEnv())
    save()
    schedule(args, configs, jobs, save)
    data = save(final=True)
    for g in data["goals"].values():
        print(f"goal {g['goal']}: measured {g['measured']} -> {'met' if g['met'] else 'MISSED'}")
    return 0


def pending_jobs(configs: dict) -> list[tuple[int, str]]:
    """The (seed, stage) jobs without a ``final.pt``, in start order: every seed's ablation
    variants before any extra width (``--widths``), config order otherwise. An interrupted run
    then has the ablation on all seeds (mean +- std), not the widths of the first seed only."""
    todo = [(seed, st.name) for seed, cfg in configs.items() for st in cfg.stages
            if not (exp_dir(cfg) / st.name / "final.pt").exists()]
    return sorted(todo, key=lambda k: split_name(k[1])[1] is not None)  # a stable sort


def schedule(args, configs: dict, jobs: int, save) -> None:
    """Run every (seed, stage) job in its own process, each as soon as the stages it needs are
    complete, at most ``jobs`` at a time; results are refreshed whenever a job ends."""
    todo = pending_jobs(configs)
    running: dict[tuple[int, str], subprocess.Popen] = {}
    failed: dict[tuple[int, str], int] = {}

    def done(seed: int, stage: str) -> bool:
        return (exp_dir(configs[seed]) / stage / "final.pt").exists()

    while todo or running:
        for key in [k for k in todo if all(done(k[0], n) for n in needs(configs[k[0]], k[1]))]:
            if len(running) >= jobs:
                break
            seed, stage = key
            cmd = [sys.executable, "-m", "bench.accuracy", "--train-seed", str(seed),
                   "--train-stage", stage, "--epochs", str(args.epochs),
                   "--student-init", args.student_init, "--runs-dir", args.runs_dir,
                   "--threads", str(args.threads), "--device", args.device,
                   "--dataset", args.dataset, "--widths", *map(str, args.widths)]
            if args.variants is not None:
                cmd += ["--variants", *args.variants]
            if args.compile:
                cmd.append("--compile")
            for flag, val in (("--train-subset", args.train_subset), ("--data-dir", args.data_dir),
                              ("--val-size", args.val_size)):
                if val is not None:
                    cmd += [flag, str(val)]
            running[key] = signals.popen(cmd, cwd=REPO)  # a signal ends the jobs too
            todo.remove(key)
        time.sleep(0.5 if running else 0)
        signals.check()
        for key, proc in list(running.items()):
            if proc.poll() is not None:
                signals.release(proc)
                del running[key]
                if proc.returncode:
                    failed[key] = proc.returncode
                save()
        blocked = [k for k in todo if any(n in {f[1] for f in failed if f[0] == k[0]}
                                          for n in needs(configs[k[0]], k[1]))]
        for k in blocked:
            todo.remove(k)
        if not running and todo and not any(
                all(done(k[0], n) for n in needs(configs[k[0]], k[1])) for k in todo):
            break
    if failed or todo:
        what = ", ".join(f"seed {s} {n}" for s, n in sorted(failed)) or "dependencies"
        raise SystemExit(f"bench.accuracy: training failed ({what}); rerun the same command to "
                         "resume")


if __name__ == "__main__":
    raise SystemExit(main())
