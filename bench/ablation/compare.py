"""The recorded full-budget runs compared: SI against its twin without SI, across seeds, and
the method (SI + block KD) against plain W1A1 trained with CE only.

Runs are compared when they share a recipe (:func:`recipe_key`: everything that defines how they
trained but the student, the runtime keys and the keys that shape the SI branch only); val
decides, test is reported.
"""

from __future__ import annotations

import json
import statistics

from bench.ablation.goals import (
    GAIN,
    METHOD_BETTER_ON_MEAN_VAL,
    SI_BEATS_TWIN_ON_VAL,
    SI_BETTER_ON_MEAN_VAL,
    SI_BETTER_ON_VAL,
)
from bench.ablation.record import RUN_NAME_KEYS
from quant_models.networks import SI_ONLY_KEYS
from quant_models.registry import SI_TWINS
from quant_models.train.config import RUNTIME_KEYS, build_config
from sibnn_base.errors import ConfigError
from sibnn_base.typed import to_dict


def current_recipe(recipe: dict) -> dict:
    """A recorded recipe with every key the config has gained since filled in at its default
    (e.g. ``data.cutout: 0``, ``loss_weights.label_smoothing: 0.0``, whose defaults change
    nothing); a recipe today's config refuses is compared as it was recorded."""
    try:
        full = to_dict(build_config({**recipe, "experiment": "recorded"}))
    except ConfigError:
        return recipe
    return {k: v for k, v in full.items() if k not in RUN_NAME_KEYS}


def recipe_key(run: dict, ignore: tuple[str, ...] = (),
                stage_ignore: tuple[str, ...] = ()) -> str:
    """What two recorded runs must share to be compared: the recipe but for the student, the
    runtime keys (those a ``--resume`` may change, :data:`~quant_models.train.config.RUNTIME_KEYS`)
    and the model keys that shape the SI branch only (:data:`~quant_models.networks.SI_ONLY_KEYS`:
    the twin without SI is the same network whatever they say). The recipe is read through
    today's config first (:func:`current_recipe`), so a key added after a run was recorded
    counts at its default, which is what that run trained with (one ``build_config`` per call:
    compute it once per run and pass it on). Top-level keys in ``ignore`` (e.g. ``seed``) and stage
    keys in ``stage_ignore`` (e.g. ``loss_weights``) are left out too."""
    def net(model):
        return {k: v for k, v in (model or {}).items() if k not in SI_ONLY_KEYS}

    out = {k: v for k, v in current_recipe(run["recipe"]).items()
           if k not in RUNTIME_KEYS and k not in ignore}
    out["model"] = net(out.get("model"))
    out["stages"] = [{**{k: v for k, v in s.items()
                         if k != "student" and k not in stage_ignore},
                      "model": net(s.get("model"))} for s in out["stages"]]
    return json.dumps(out, sort_keys=True)


def run_comparisons(runs: dict, keys: dict[str, str] | None = None) -> dict:
    """Every recorded SI run against a recorded twin without SI with the same recipe
    (:func:`recipe_key`, or ``keys`` already computed per run): val and test deltas (val
    decides; a single seed, so under about a point is within run noise)."""
    keys = keys or {name: recipe_key(r) for name, r in runs.items()}
    out = {}
    for name, r in runs.items():
        twin = SI_TWINS.get(r["student"])
        for other, o in runs.items():
            if o["student"] == twin and keys[name] == keys[other]:
                d = {"si_run": name, "plain_run": other,
                     "val_delta": round(r["val_acc"] - o["val_acc"], 2),
                     "test_delta": round(r["test_acc"] - o["test_acc"], 2)}
                if "val_acc_raw" in r and "val_acc_raw" in o:
                    d["val_delta_last_step_weights"] = round(r["val_acc_raw"] - o["val_acc_raw"], 2)
                    d["test_delta_last_step_weights"] = round(r["test_acc_raw"] - o["test_acc_raw"],
                                                              2)
                d[SI_BETTER_ON_VAL] = d["val_delta"] >= GAIN
                out[f"{name} vs {other}"] = d
    return out


def best_runs(runs: dict, comps: dict, keys: dict[str, str] | None = None) -> dict:
    """For every group of recorded runs that share a recipe (:func:`recipe_key`: the students
    and their SI placement may differ) and have an SI run compared with its twin in ``comps``
    (:func:`run_comparisons`): the run with the best val accuracy (val decides; test reported),
    and whether any SI run of the group is :data:`~bench.ablation.goals.GAIN` val points or more
    over its twin (the issue's "full method" goal), keyed by the best run. ``keys``: :func:`recipe_key` per run, if computed."""
    keys = keys or {name: recipe_key(r) for name, r in runs.items()}
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
                     SI_BEATS_TWIN_ON_VAL: any(c[SI_BETTER_ON_VAL]
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
    """The recorded runs by recipe without the seed (:func:`recipe_key`), then by network
    (:func:`_arm`), then by seed: ``{recipe: {network: {seed: run name}}}``."""
    groups: dict[str, dict[str, dict[int, str]]] = {}
    for name, r in runs.items():
        arms = groups.setdefault(recipe_key(r, ignore=("seed",)), {})
        arms.setdefault(_arm(r), {})[r["seed"]] = name
    return groups


def _any_run(runs: dict, by_seed: dict[int, str]) -> dict:
    """One recorded run of a :func:`_seed_groups` network (its seeds share student, epochs and
    recipe)."""
    return runs[next(iter(by_seed.values()))]


def seed_means(runs: dict) -> dict:
    """The recorded runs across seeds: for every recipe that differs only by seed
    (:func:`recipe_key` without ``seed``) and every SI network in it with a twin without SI, the
    seeds both have (paired), each side's mean +- std val and test over those seeds, and the mean
    paired delta. Only pairs with >= 2 shared seeds: one seed is :func:`run_comparisons`. Keyed
    ``"<SI network> vs <twin>, <epochs> epochs"``."""
    out = {}
    for arms in _seed_groups(runs).values():
        for arm, by_seed in arms.items():
            first = _any_run(runs, by_seed)
            twin = SI_TWINS.get(first["student"])
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
                "student": first["student"], "twin": twin, "epochs": first["epochs"],
                "seeds": seeds, "si_runs": [by_seed[s] for s in seeds],
                "plain_runs": [arms[twin][s] for s in seeds],
                "si_val_mean": sv, "si_val_std": svs, "plain_val_mean": pv, "plain_val_std": pvs,
                "si_test_mean": st, "si_test_std": sts, "plain_test_mean": pt,
                "plain_test_std": pts, "val_delta_per_seed": deltas,
                "val_delta_mean": round(sv - pv, 2), "test_delta_mean": round(st - pt, 2),
                SI_BETTER_ON_MEAN_VAL: sv - pv >= GAIN}
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
    the same recipe otherwise (:func:`recipe_key` without the seed and the stage's teacher and
    loss weights: same data, init, optimizer, schedule, epochs and selection), paired by seed.
    Each side's mean +- std val and test over the seeds both have, the per-seed and mean deltas,
    and whether the mean val delta is at least :data:`~bench.ablation.goals.GAIN` (val decides;
    one seed is reported with std None).
    Keyed ``"<SI network> + block KD vs <twin> CE only, <epochs> epochs"``."""
    groups: dict[str, dict[tuple[str, str], dict[int, str]]] = {}
    for name, r in runs.items():
        key = recipe_key(r, ignore=("seed",), stage_ignore=METHOD_STAGE_KEYS)
        groups.setdefault(key, {}).setdefault((_arm(r), loss_kind(r)), {})[r["seed"]] = name
    out = {}
    for arms in groups.values():
        for (arm, kind), by_seed in arms.items():
            first = _any_run(runs, by_seed)
            twin = SI_TWINS.get(first["student"])
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
                METHOD_BETTER_ON_MEAN_VAL: gain >= GAIN}
    return out



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
        if not any(SI_TWINS.get(st) in students for st in students):
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

