"""The ablation's statistics over seeds: mean +- std per variant, and the recipe decisions on the
validation split."""

from __future__ import annotations

import statistics

from flow.studies import VARIANTS


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
    """Per variant that ran on any of ``seeds`` (:data:`~flow.studies.VARIANTS` order, then any
    other name sorted): mean test and val accuracy, the test std over seeds (None for one) and
    the seeds done."""
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
