"""Parameter accounting: per-block parameters and the SI share (``python -m quant_models info``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class BlockParams:
    name: str
    total: int
    si: int


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_params(model: nn.Module) -> list[BlockParams]:
    rows = [BlockParams("stem", count(model.stem), 0)]
    for i, b in enumerate(model.blocks):
        rows.append(BlockParams(f"block_{i}", count(b), count(b.si) if b.si is not None else 0))
    rows.append(BlockParams("head", count(model.head), 0))
    return rows


def summary(model: nn.Module) -> dict:
    rows = block_params(model)
    total = sum(r.total for r in rows)
    si = sum(r.si for r in rows)
    return {
        "arch": getattr(model, "arch", type(model).__name__),
        "model_args": model.spec.to_dict(),
        "blocks": [r.__dict__ for r in rows],
        "total_params": total,
        "si_params": si,
        "si_share_of_total": si / total if total else 0.0,
        "overhead_vs_no_si": si / (total - si) if total > si else 0.0,
    }


def format_table(s: dict) -> str:
    lines = [f"{s['arch']}  input {s['model_args']['in_channels']}x{s['model_args']['input_size']}"
             f"x{s['model_args']['input_size']}  width {s['model_args']['width']}  depth "
             f"{s['model_args']['depth']}  r {s['model_args']['r']}",
             f"{'block':<10}{'params':>12}{'SI params':>12}{'SI %':>8}"]
    for r in s["blocks"]:
        pct = 100 * r["si"] / r["total"] if r["total"] else 0.0
        lines.append(f"{r['name']:<10}{r['total']:>12,}{r['si']:>12,}{pct:>7.1f}%")
    lines.append(f"{'total':<10}{s['total_params']:>12,}{s['si_params']:>12,}"
                 f"{100 * s['si_share_of_total']:>7.1f}%")
    lines.append(f"SI overhead vs the same network without SI: +{100 * s['overhead_vs_no_si']:.1f}% "
                 "parameters")
    return "\n".join(lines)
