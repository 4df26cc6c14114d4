"""One small error hierarchy for the whole of sibnn (shape of finn-plus ``util/exception.py``).

* :class:`UserError` and its subclasses are caused by input the user can fix. CLIs print their
  message on one line and exit with :attr:`UserError.exit_code` (2), with no traceback.
* :class:`VerificationError` means two implementations disagreed on an integer tensor. It gets its
  own exit code (3) so scripts can tell "your input was wrong" from "the hardware would be wrong".
* Anything else is an internal error and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import wraps


class SibnnError(Exception):
    """Base class of every error sibnn raises on purpose."""

    exit_code = 1


class UserError(SibnnError):
    """Bad input: unknown name, malformed file, missing tool. One line, exit 2."""

    exit_code = 2


class UnknownModelError(UserError):
    """A model name that is not in the registry."""


class ConfigError(UserError):
    """A malformed configuration file, an unknown key or an invalid value."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, truncated or of another architecture."""


class DatasetError(UserError):
    """A dataset that is missing or malformed."""


class UnsupportedGraphError(UserError):
    """An ONNX graph with an op (or an op configuration) sibnn cannot map; names the node."""


class ToolMissingError(UserError):
    """An output that needs a tool (Vivado) that is not installed."""


class OutputDirError(UserError):
    """An output directory that cannot be written, or that exists and is not sibnn's."""


class TrainingDivergedError(UserError):
    """A training loss that became NaN or infinite (a recipe that diverges: too high a learning
    rate, no gradient clipping); names the stage and epoch and says what was kept."""


class SimulationBuildError(SibnnError):
    """Generated HLS C++ or RTL that g++/Verilator could not compile; names the node and the log."""


class VerificationError(SibnnError):
    """Two implementations disagreed on an integer tensor; the message names tensor and index."""

    exit_code = 3


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the CLIs' error contract: a usage error is one line on stderr naming the
    problem and pointing at ``--help``, exit status 2 (argparse prints the whole usage first)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread so that every ``finally`` and
    ``except BaseException`` cleanup runs exactly as for Ctrl-C (temp dirs removed, a started
    build kept as ``<dir>.failed``), then the CLI exits with ``128 + signal``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """The one place that turns SIGTERM and SIGHUP into :class:`Terminated` (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)


def cli_errors(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a CLI ``main``: sibnn errors become one line on stderr and their exit code;
    SIGTERM/SIGHUP clean up like Ctrl-C does."""

    @wraps(main)
    def wrapper(*args, **kwargs) -> int:
        install_signal_handlers()
        try:
            rc = main(*args, **kwargs)
        except SibnnError as err:
            kind = "verification failed" if isinstance(err, VerificationError) else "error"
            msg = " ".join(str(err).split("\n")) if isinstance(err, UserError) else str(err)
            print(f"{kind}: {msg}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Terminated as sig:
            import signal

            print(f"terminated by {signal.Signals(sig.signum).name}", file=sys.stderr)
            return 128 + sig.signum
        return int(rc or 0)

    return wrapper
