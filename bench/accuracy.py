"""``python -m bench.accuracy``: the accuracy ablation and the cost of a distillation step.

The command line of :mod:`bench.ablation` (``python -m bench.accuracy --help`` describes it);
this module keeps the documented command and the scheduler's child jobs pointing there.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m`: as the console script, signal handlers come first,
    from sibnn_base.launch import run  # then this module's imports (torch: seconds), then main

    sys.exit(run("bench.accuracy:main"))

from bench.ablation.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
