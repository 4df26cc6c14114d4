"""``python -m bench`` (``make bench``): every benchmark that fits minutes on 2 cores.

* ``golden_speed``: golden model (ONNX Runtime) vs Brevitas throughput;
* ``flow``: default build time, SI hardware overhead, auto vs hand folding;
* ``sim``: ``--sim all`` compile/run time per node type, cold and cached against the plain
  build (needs g++, finn-hlslib and Verilator: ``make deps``);
* ``accuracy_per_lut``: plain and SI at widths 16-48, LUT estimates built here against the
  accuracies ``bench/results/accuracy.json`` holds, with the Pareto front;
* ``accuracy --cost-only``: the distillation step cost (the ablation's training runs take about
  an hour: ``make bench-accuracy``).

``python -m bench NAME ...`` runs only the named ones.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m`: as the console script, signal handlers come first,
    from sibnn_base.launch import run  # then this module's imports (torch: seconds), then main

    sys.exit(run("bench.__main__:main"))

from bench import accuracy, accuracy_per_lut, flow, golden_speed, sim
from sibnn_base.errors import cli_errors

BENCHMARKS = {
    "golden_speed": lambda: golden_speed.main([]),
    "flow": lambda: flow.main([]),
    "sim": lambda: sim.main([]),
    "accuracy_per_lut": lambda: accuracy_per_lut.main([]),
    "accuracy": lambda: accuracy.main(["--cost-only"]),
}


@cli_errors
def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"error: unknown benchmark(s) {', '.join(unknown)}; choose from "
              f"{', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== bench {name}", flush=True)
        rc = BENCHMARKS[name]()
        if rc:
            return int(rc)
    return 0

