"""``python -m bench.accuracy``: the accuracy ablation and the cost of a distillation step.

The command line of :mod:`bench.ablation` (``python -m bench.accuracy --help`` describes it);
this module keeps the documented command and the scheduler's child jobs pointing there.
"""

from __future__ import annotations

from bench.ablation.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
