"""The ablation's Markdown table (``accuracy.md``): the variants per seed, the recipe decisions,
the step cost, then the recorded full-budget runs, the device runs and the shipped checkpoints.

Every row has the ablation table's width: label, one cell per seed, mean +- std, vs plain, mean
val.
"""

from __future__ import annotations

from bench.ablation.goals import (
    GAIN,
    GOALS,
    METHOD_BETTER_ON_MEAN_VAL,
    SI_BEATS_TWIN_ON_VAL,
    SI_BETTER_ON_MEAN_VAL,
    SI_BETTER_ON_VAL,
    ablation_goals,
    goal_verdict,
)
from bench.ablation.stats import decisions
from flow.studies import split_name, variant_label, width_name


def table(summary: dict, per_seed: dict, seeds: list[int], cost: dict | None,
          run: dict | None = None, shipped: dict | None = None,
          data: dict | None = None) -> list[list[str]]:
    """The whole table, header first: a row per variant of ``summary`` (per-seed test accuracy,
    mean +- std, the delta to plain at its width, mean val), the decisions and the step cost
    ``cost``, the run's budget (``run``), then the rows of ``data`` (recorded and device runs)
    and of the shipped checkpoints (``shipped``)."""
    rows = [["variant", *[f"seed {s} test %" for s in seeds], "mean ± std %", "vs plain",
             "mean val %"]]
    for v in summary:
        name = variant_label(v)
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
                     *[""] * len(seeds), f"{cost['ratio']:.3f}x", f"goal <= {GOALS.max_step_cost_ratio}x", ""])
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
    best = ablation_goals(summary).get("method_gain")
    if best:
        rows.append([f"the full method ({best['goal'].split(' ')[0]}) vs plain: "
                     f"{best['measured']:+.2f} points -> {'met' if best['met'] else 'MISSED'}"
                     + (f"; the best student on val at this budget: "
                        f"{variant_label(best['best_student_on_val'])}"
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


def _sd(x: float | None) -> str:
    """`` ± x`` (nothing for None: one seed has no spread)."""
    return "" if x is None else f" ± {x:.2f}"


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
                     f"(SI >= +{GAIN} on val: {'yes' if c[SI_BETTER_ON_VAL] else 'no'})",
                     *[""] * (width - 1)])
    for name, b in (data.get("full_runs_best") or {}).items():
        si = f", SI in {b['si_blocks']} blocks" if b["si_blocks"] else ", no SI"
        rows.append([f"best on val of {', '.join(b['runs'])} ({b['epochs']} epochs): {name} "
                     f"({b['student']}{si}), val {b['val_acc']:.2f}, test {b['test_acc']:.2f}; "
                     f"an SI run >= its twin + {GAIN} on val: "
                     f"{'yes' if b[SI_BEATS_TWIN_ON_VAL] else 'no'}",
                     *[""] * (width - 1)])
    for name, m in (data.get("seed_means") or {}).items():
        rows.append([f"{name}, seeds {', '.join(map(str, m['seeds']))}: SI val "
                     f"{m['si_val_mean']:.2f} ± {m['si_val_std']:.2f}, twin "
                     f"{m['plain_val_mean']:.2f} ± {m['plain_val_std']:.2f} (per seed "
                     f"{', '.join(f'{d:+.2f}' for d in m['val_delta_per_seed'])}); test "
                     f"{m['si_test_mean']:.2f} ± {m['si_test_std']:.2f} vs "
                     f"{m['plain_test_mean']:.2f} ± {m['plain_test_std']:.2f}; SI >= twin + {GAIN} "
                     f"on mean val: {'yes' if m[SI_BETTER_ON_MEAN_VAL] else 'no'}",
                     *[""] * (width - 1)])
    for name, m in (data.get("method_comparisons") or {}).items():
        rows.append([f"the method: {name}, seed(s) {', '.join(map(str, m['seeds']))}: val "
                     f"{m['method_val_mean']:.2f}{_sd(m['method_val_std'])} vs "
                     f"{m['plain_val_mean']:.2f}{_sd(m['plain_val_std'])} (per seed "
                     f"{', '.join(f'{d:+.2f}' for d in m['val_delta_per_seed'])}); test "
                     f"{m['method_test_mean']:.2f}{_sd(m['method_test_std'])} vs "
                     f"{m['plain_test_mean']:.2f}{_sd(m['plain_test_std'])}; method >= plain + "
                     f"{GAIN} on mean val: "
                     f"{'yes' if m[METHOD_BETTER_ON_MEAN_VAL] else 'no'}",
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


def device_run_rows(data: dict, width: int) -> list[list[str]]:
    """Table rows for the recorded device runs: each run's budget and note, then its variants."""
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
            rows.append([f"device run: {variant_label(v)}", *[""] * (width - 4),
                         f"{m['test_acc_mean']:.2f}" + ("" if std is None else f" ± {std:.2f}"),
                         "", f"{m['val_acc_mean']:.2f}"])
    return rows


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
