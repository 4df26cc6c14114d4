"""The run's log: third-party warnings and log records, and the traceback of an internal error.

A CLI's stderr carries sibnn's own one-line messages only. Python warnings and log records from
the libraries sibnn calls (Brevitas, torch, FINN, qonnx) go to the run's log instead: the build's
``build.log`` once the build has one (:func:`attach`), and until then a buffer that is written
into it on attach. ``-v`` (:func:`set_verbose`) shows them on stderr as well. An internal error's
traceback is written to the attached log, or to ``~/.cache/sibnn/logs/`` when the run has none.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
import warnings
from pathlib import Path

_state: dict = {"path": None, "buffer": [], "verbose": False, "prog": "sibnn"}


def start(prog: str) -> None:
    """Capture warnings and log records of this process into the run's log (CLI start)."""
    _state["prog"] = prog
    warnings.showwarning = _show_warning
    root = logging.getLogger()
    if not any(isinstance(h, _Handler) for h in root.handlers):
        root.addHandler(_Handler())


def set_verbose(verbose: bool) -> None:
    """``-v``: also show the captured warnings on stderr."""
    _state["verbose"] = bool(verbose)


def write(text: str) -> None:
    """Append ``text`` (one or more lines) to the run's log."""
    if not text.endswith("\n"):
        text += "\n"
    if _state["verbose"]:
        import sys

        sys.__stderr__.write(text)
    path = _state["path"]
    if path is None:
        _state["buffer"].append(text)
        return
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError:
        _state["buffer"].append(text)


def attach(path: str | Path | None) -> None:
    """Make ``path`` the run's log (None detaches); what was buffered is written into it."""
    _state["path"] = None if path is None else Path(path)
    if path is None or not _state["buffer"]:
        return
    pending, _state["buffer"] = _state["buffer"], []
    verbose, _state["verbose"] = _state["verbose"], False
    try:
        for text in pending:
            write(text)
    finally:
        _state["verbose"] = verbose


def write_traceback(err: BaseException) -> Path:
    """Write ``err``'s traceback to the run's log (or a new file under ``~/.cache/sibnn/logs``
    when none is attached) and return that file."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    if _state["path"] is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        logs = base / "sibnn" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        attach(logs / f"{_state['prog']}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    verbose, _state["verbose"] = _state["verbose"], False
    try:
        write(f"== internal error\n{text}")
    finally:
        _state["verbose"] = verbose
    return _state["path"]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    write(f"{category.__name__}: {message} ({filename}:{lineno})")


class _Handler(logging.Handler):
    """Log records of WARNING and above (FINN's, qonnx', torch's) into the run's log."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
