"""The issue's accuracy goals and their verdicts, with thresholds and rules read from data.

``goals.yaml`` beside this module holds every threshold (teacher and student top-1, the teacher
gap, the gain a method must add, the step-cost ratio, the seeds a method goal needs) and the
ablation's pairwise gains; this module turns measurements into goal entries (``goal`` text,
``measured``, ``met``) for the ablation (:func:`ablation_goals`), the shipped checkpoints
(:func:`shipped_goals`) and the recorded full-budget runs (:func:`method_goal`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flow.studies import VARIANTS
from sibnn_base.typed import from_dict, load_mapping

GOALS_FILE = Path(__file__).with_name("goals.yaml")


@dataclass(frozen=True)
class Gain:
    """An ablation goal ``best of candidates - baseline >= min_gain points`` (mean test)."""

    candidates: tuple[str, ...]
    """The variants whose best on mean val is judged (those that ran)."""
    baseline: str
    note: str = ""
    """Appended to the goal's text in parentheses."""


@dataclass(frozen=True)
class Goals:
    """The contents of ``goals.yaml``."""

    teacher_top1: float
    student_top1: float
    max_teacher_gap: float
    min_gain: float
    max_step_cost_ratio: float
    method_goal_min_seeds: int
    gains: dict[str, Gain]


GOALS: Goals = from_dict(Goals, load_mapping(GOALS_FILE), str(GOALS_FILE.name))
GAIN = GOALS.min_gain

# Result keys that name the gain threshold (their values say whether the gain was reached).
SI_BETTER_ON_VAL = f"si_better_by_{GAIN}_on_val"
SI_BEATS_TWIN_ON_VAL = f"si_beats_twin_by_{GAIN}_on_val"
SI_BETTER_ON_MEAN_VAL = f"si_better_by_{GAIN}_on_mean_val"
METHOD_BETTER_ON_MEAN_VAL = f"method_better_by_{GAIN}_on_mean_val"


def _at_least(goal: str, measured: float, floor: float) -> dict:
    return {"goal": goal, "measured": measured, "met": measured >= floor}


def _gap(goal: str, gap: float) -> dict:
    return {"goal": goal, "measured": gap, "met": gap <= GOALS.max_teacher_gap}


def ablation_goals(summary: dict) -> dict:
    """The issue's accuracy goals on an ablation's summary, each with its measured value and
    whether it is met. "The full method" is the best SI variant distilled block-wise (by mean
    *validation* accuracy); then the gains of ``goals.yaml``, in its order."""
    mean = {v: s["test_acc_mean"] for v, s in summary.items()}
    val = {v: s.get("val_acc_mean") for v, s in summary.items()}

    def best_on_val(names: list[str]) -> str:  # ties (or no val): the better test accuracy
        return max(names, key=lambda v: (val[v] if val[v] is not None else -1.0, mean[v]))

    out = {}
    if "teacher" in mean:
        out["teacher_top1"] = _at_least(f"teacher >= {GOALS.teacher_top1} %", mean["teacher"],
                                        GOALS.teacher_top1)
    cands = [v for v in summary if v in VARIANTS and VARIANTS[v].si and v != "staged"]
    if not cands:
        return out
    best = best_on_val(cands)
    out["full_top1"] = _at_least(f"{best} >= {GOALS.student_top1} %", mean[best],
                                 GOALS.student_top1)
    if "teacher" in mean:
        out["teacher_gap"] = _gap(f"teacher - {best} <= {GOALS.max_teacher_gap} points",
                                  round(mean["teacher"] - mean[best], 2))
    if "plain" in mean:
        d = round(mean[best] - mean["plain"], 2)
        # the best student at the recipe width on val, whatever it is: what the default follows
        students = [v for v in summary if v in VARIANTS and v != "teacher"]
        out["method_gain"] = {**_at_least(f"{best} - plain >= {GAIN} points (same width and "
                                          "budget)", d, GAIN),
                              "best_student_on_val": best_on_val(students)}
    for key, g in GOALS.gains.items():
        ran = [v for v in g.candidates if v in mean]
        if g.baseline in mean and ran:
            b = best_on_val(ran)
            note = f" ({g.note})" if g.note else ""
            out[key] = _at_least(f"{b} - {g.baseline} >= {GAIN} points{note}",
                                 round(mean[b] - mean[g.baseline], 2), GAIN)
    return out


def shipped_goals(default_model: str, teacher_name: str, student: dict | None,
                  teacher: dict | None) -> dict:
    """The goals for the shipped student (the build's default model) and its teacher, from their
    whole-test-set evaluations (``test_acc``; None where not shipped)."""
    g = {}
    if student:
        g["student_top1"] = _at_least(f"shipped {default_model} >= {GOALS.student_top1} %",
                                      student["test_acc"], GOALS.student_top1)
    if teacher:
        g["teacher_top1"] = _at_least(f"shipped {teacher_name} >= {GOALS.teacher_top1} %",
                                      teacher["test_acc"], GOALS.teacher_top1)
    if student and teacher:
        g["teacher_gap"] = _gap(f"shipped teacher - shipped student <= {GOALS.max_teacher_gap} "
                                "points", round(teacher["test_acc"] - student["test_acc"], 2))
    return g


def goal_verdict(goal: dict) -> str:
    """``met``, ``MISSED`` or, for a :func:`method_goal` on too few seeds, ``not decided``."""
    return "met" if goal["met"] else "MISSED" if goal.get("decided", True) else "not decided"


def method_goal(comps: dict) -> dict | None:
    """The issue's goal "the full method >= plain W1A1 + min_gain at the same width and budget" at
    the largest recorded budget (most epochs, then most seeds; the method comparisons of
    :func:`bench.ablation.compare.method_comparisons`), decided on mean val over at least
    ``method_goal_min_seeds`` seeds (fewer are reported, ``met`` False: the val spread of a run's
    last epochs is about a point), with test reported and the best of the two sides there on
    val; None without such a comparison."""
    if not comps:
        return None
    name, c = max(comps.items(), key=lambda kv: (kv[1]["epochs"], len(kv[1]["seeds"])))
    decided = len(c["seeds"]) >= GOALS.method_goal_min_seeds
    best = "method" if c["method_val_mean"] >= c["plain_val_mean"] else "plain"
    return {"goal": f"full method (SI + block KD) - plain W1A1 (CE only) >= {GAIN} points on mean "
                    "val, same width and budget", "comparison": name, "epochs": c["epochs"],
            "seeds": c["seeds"], "measured_val": c["val_delta_mean"],
            "measured_test": c["test_delta_mean"],
            "met": c[METHOD_BETTER_ON_MEAN_VAL] and decided,
            "decided": decided, "best_on_val": c[f"{best}_runs"]}
