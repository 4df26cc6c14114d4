"""The notebooks' figures (matplotlib): board resources and throughput, the SI sweep, accuracy per
LUT with its Pareto front, and the exactness trace. Data comes from :mod:`flow.studies`; this
module only draws and saves PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flow.config import PLOTTED_RESOURCES
from flow.studies import accuracy_by_width, pareto_front


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_board_resources(rows: list[dict], png: str | Path):
    """Grouped bars: each resource's estimate as a percentage of the board's capacity, with the
    budget (dashed) and the full device (solid) drawn. Saved to ``png``; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    wbar = 0.8 / len(PLOTTED_RESOURCES)
    for i, k in enumerate(PLOTTED_RESOURCES):
        pct = [100.0 * r[k] / r[f"{k}_capacity"] if r[f"{k}_capacity"] else 0.0 for r in rows]
        bars = ax.bar(x + (i - 1) * wbar, pct, wbar, label=k)
        for b, r in zip(bars, rows, strict=True):
            ax.annotate(f"{r[k]:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    budget = 100.0 * rows[0]["LUT_budget"] / rows[0]["LUT_capacity"]
    ax.axhline(budget, color="tab:red", ls="--", lw=1, label=f"budget ({budget:.0f}%)")
    ax.axhline(100.0, color="black", lw=1, label="device capacity")
    ax.set_xticks(x, [r["board"] for r in rows])
    ax.set_ylabel("utilisation (% of the board's capacity)")
    ax.set_ylim(0, 110)
    ax.set_title(f"{rows[0]['model']}: FINN resource estimates per board (labels: counts)")
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    _save(fig, png)
    return fig


def plot_board_throughput(rows: list[dict], png: str | Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = np.arange(len(rows))
    ax.bar(x, [r["fps"] for r in rows], color="tab:green")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['latency_us']:.0f} us", (i, r["fps"]), ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(x, [r["board"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("throughput (frames/s, FINN estimate)")
    ax.set_title("Throughput per board (labels: latency)")
    _save(fig, png)
    return fig


# ------------------------------------------------------------------------------------------------
# What SI costs and buys
# ------------------------------------------------------------------------------------------------
def plot_accuracy_per_lut(rows: list[dict], accuracy: dict[str, float] | None,
                          png: str | Path, recipe_width: int = 32, budget: str | None = None,
                          full: list[dict] | None = None, full_budget: str | None = None):
    """Test accuracy against the LUT estimate (with the forks/adds priced) for plain and SI per
    width, the Pareto front marked. Points without a measured accuracy are listed in the title,
    not drawn: nothing is invented. ``budget`` (the accuracies' training budget) goes in the
    title. ``full``: networks trained at the shipped budget (``label``, ``LUT_modelled``,
    ``test_acc_mean``, ``test_acc_std``, ``seeds``, ``pareto``), drawn in a panel of their own
    with ``full_budget`` as its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = accuracy_by_width(accuracy, recipe_width)
    if full:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.4))
        _plot_full_budget(ax2, full, full_budget)
    else:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
    pts, tags = [], []
    for variant, marker in (("plain", "o"), ("si_h_mbh", "s")):
        mine = [r for r in rows if r["variant"] == variant and (variant, r["width"]) in acc]
        xs = [r["LUT_modelled"] for r in mine]
        ys = [acc[(variant, r["width"])] for r in mine]
        ax.plot(xs, ys, marker=marker, ls="-", label="plain W1A1" if variant == "plain"
                else "SI(h) + 8-bit head + sign bias")
        for r, x, y in zip(mine, xs, ys, strict=True):
            ax.annotate(f"w{r['width']}", (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
            pts.append((x, y))
            tags.append(r)
    missing = sorted({f"{r['variant']} w{r['width']}" for r in rows
                      if (r["variant"], r["width"]) not in acc})
    if pts:
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="tab:red",
                ls="--", lw=1, marker="*", ms=12, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel("LUT on Pynq-Z2 (FINN estimate + forks/adds by sibnn's model)")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    title = "Accuracy per LUT" + (f" ({budget})" if budget else "")
    if missing:
        title += f"\n(no measured accuracy yet: {', '.join(missing)})"
    ax.set_title(title, fontsize=9)
    _save(fig, png)
    return fig


def _plot_full_budget(ax, full: list[dict], budget: str | None) -> None:
    """The panel of :func:`plot_accuracy_per_lut` for networks trained at the shipped budget:
    mean test accuracy over their seeds (error bar: std where there are >= 2), front marked."""
    for p in full:
        si = p["label"] != "no SI"
        ax.errorbar(p["LUT_modelled"], p["test_acc_mean"],
                    yerr=p["test_acc_std"] if len(p["seeds"]) > 1 else None,
                    marker="s" if si else "o", color="tab:orange" if si else "tab:blue",
                    capsize=3, ls="none")
        ax.annotate(f"{p['label']} ({len(p['seeds'])} seed{'s' if len(p['seeds']) > 1 else ''})",
                    (p["LUT_modelled"], p["test_acc_mean"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    front = sorted((p for p in full if p["pareto"]), key=lambda p: p["LUT_modelled"])
    ax.plot([p["LUT_modelled"] for p in front], [p["test_acc_mean"] for p in front],
            color="tab:red", ls="--", lw=1, marker="*", ms=12, label="Pareto front")
    ax.legend(fontsize=8)
    ax.margins(x=0.25, y=0.3)
    ax.set_xlabel("LUT on Pynq-Z2, default folding (FINN estimate + forks/adds)")
    ax.set_ylabel("Fashion-MNIST test top-1 (%), mean over seeds")
    ax.set_title(f"At the shipped budget ({budget})" if budget else "At the shipped budget",
                 fontsize=9)


def plot_si_sweep(rows: list[dict], png: str | Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for width in sorted({r["width"] for r in rows}):
        ref = next(r for r in rows if r["width"] == width and r["arch"] == "resnet_w1a1")
        si = [r for r in rows if r["width"] == width and r["arch"] == "si_resnet_w1a1"]
        rs = [r["r"] for r in si]
        for ax, key, label in zip(axes, ("params", "LUT", "BRAM_18K"),
                                  ("parameters", "LUT", "BRAM_18K"), strict=True):
            ax.plot(rs, [100.0 * (r[key] / ref[key] - 1.0) if ref[key] else 0.0 for r in si],
                    marker="o", label=f"width {width}")
            ax.set_xlabel("SI squeeze ratio r")
            ax.set_ylabel(f"{label} overhead vs no SI (%)")
            ax.set_title(f"SI cost in {label}")
            ax.axhline(10.0, color="tab:red", ls="--", lw=1)
    axes[0].legend(fontsize=8)
    fig.suptitle("What the SI shortcut costs (dashed: the 10% goal)")
    _save(fig, png)
    return fig


def plot_pareto(rows: list[dict], accuracy: dict[str, float] | None, png: str | Path):
    """Accuracy against LUT, FPS as colour. Without measured accuracy the y axis is parameters
    (and the title says so): nothing is invented."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    pts = []
    for r in rows:
        y = None
        if accuracy:
            key = "plain" if r["arch"] == "resnet_w1a1" else "full"  # ablation variant names
            y = accuracy.get(key) if r.get("default_size") else None
        pts.append((r["LUT"], y, r["fps"], r))
    measured = [p for p in pts if p[1] is not None]
    if measured:
        sc = ax.scatter([p[0] for p in measured], [p[1] for p in measured],
                        c=[p[2] for p in measured], cmap="viridis", s=80)
        ax.set_ylabel("Fashion-MNIST test top-1 (%)")
        title = "Accuracy vs LUT (colour: FPS)"
    else:
        sc = ax.scatter([p[0] for p in pts], [p[3]["params"] for p in pts],
                        c=[p[2] for p in pts], cmap="viridis", s=80)
        ax.set_ylabel("parameters (no measured accuracy for these sizes)")
        title = "Parameters vs LUT (colour: FPS); accuracy not measured for these sizes"
    for lut, y, _, r in (measured or pts):
        yv = y if y is not None else r["params"]
        tag = "no SI" if r["arch"] == "resnet_w1a1" else f"r={r['r']}"
        ax.annotate(f"{tag}, w{r['width']}", (lut, yv), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    fig.colorbar(sc, ax=ax, label="throughput (frames/s)")
    ax.set_xlabel("LUT (FINN estimate)")
    ax.set_title(title)
    _save(fig, png)
    return fig


# ------------------------------------------------------------------------------------------------
# Exactness, shown
# ------------------------------------------------------------------------------------------------
def plot_trace(trace: dict, png: str | Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in trace["rows"] if r["scores"] is not None]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.5),
                                   gridspec_kw={"width_ratios": [1, 3], "wspace": 0.55})
    ax0.imshow(trace["image"][0, :, :, 0] if trace["image"].shape[-1] == 1 else trace["image"][0],
               cmap="gray")
    ax0.set_title(f"input (uint8), golden top-1 = {trace['top1']}")
    ax0.axis("off")
    mat = np.array([r["scores"] for r in rows], dtype=np.int64)
    im = ax1.imshow(mat, aspect="auto", cmap="coolwarm")
    ax1.set_yticks(range(len(rows)), [f"{r['stage']} {'==' if r['equal_to_golden'] else '!='}"
                                      for r in rows], fontsize=8)
    ax1.set_xlabel("class")
    ax1.set_title("integer class scores per stage (identical rows = bit-exact)")
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            ax1.text(j, i, str(mat[i, j]), ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax1, label="score (integer)")
    _save(fig, png)
    return fig
