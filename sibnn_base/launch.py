"""The console scripts' entry point: signals are handled from the program's first line.

``sibnn-build`` and friends import their module (torch, FINN: seconds) before ``main`` runs; a
Ctrl-C in that time would end in Python's ``KeyboardInterrupt`` traceback. Here the handlers of
:mod:`sibnn_base.signals` are installed first, deferring (recording) any signal until ``main``'s
error handling (:func:`sibnn_base.errors.cli_errors`) raises it as ``128 + n``.
"""

from __future__ import annotations

import importlib
import sys


def run(target: str) -> int:
    """Install the signal handlers, then import ``module:func`` and run it (the console scripts,
    and ``python -m <module>`` through the guard at the top of each CLI module)."""
    from sibnn_base import signals

    signals.install(early=True)
    module, func = target.split(":")
    try:
        main = getattr(importlib.import_module(module), func)
    except (KeyboardInterrupt, signals.Terminated):  # a signal the deferral could not hold
        return 128 + (signals.received() or 2)
    return main()


def build() -> int:
    return run("flow.build:main")


def export() -> int:
    return run("flow.proof.export:main")


def train() -> int:
    return run("quant_models.train.cli:main")


def models() -> int:
    return run("quant_models.__main__:main")


if __name__ == "__main__":
    sys.exit(run(sys.argv.pop(1)))
