"""Shared helpers for benchmarks: results files and machine description."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from sibnn_base.atomic import atomic_write, atomic_write_json

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """Where and when a result was measured; the load averages (runnable processes over the last
    1, 5 and 15 minutes, at write time) say whether timed numbers shared the CPUs."""
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_results(name: str, data: dict, table: list[list[str]],
                  results_dir: Path | None = None) -> Path:
    """Write ``<results_dir>/<name>.json`` and ``.md`` (a Markdown table); default
    :data:`RESULTS`. Each file is replaced atomically: an interrupted write leaves the old one."""
    out = Path(results_dir) if results_dir is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), **data}
    path = atomic_write_json(out / f"{name}.json", data)
    head, *rows = table
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    doc = (f"# {name}\n\n" + "\n".join(md) + "\n").encode()
    atomic_write(out / f"{name}.md", lambda fh: fh.write(doc))
    return path
