"""The one guard between the flow and the graph tools it calls (FINN, qonnx, ONNX, ONNX Runtime).

An exception that escapes their code while they read, clean, transform, execute or generate code
for a graph says that they cannot take this model: it becomes one line, an
:class:`~sibnn_base.errors.UnsupportedGraphError` (exit 2) naming the step, the tool and its
message, with the traceback in the build's log. An exception raised by sibnn's own code is
sibnn's bug and stays an internal error (exit 1, the log path on the line): see
:func:`sibnn_base.errors.raised_in`, which tells them apart, and the README's exit-code table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sibnn_base import runlog
from sibnn_base.errors import SibnnError, UnsupportedGraphError, raised_in

STEP_NOTE = "sibnn step: "
"""Prefix of the note :mod:`flow.runner` adds to an exception raised inside a step."""


def failed_step(err: BaseException) -> str | None:
    """The step an exception was raised in (from the runner's note), or None."""
    for note in getattr(err, "__notes__", ()):
        if note.startswith(STEP_NOTE):
            return note[len(STEP_NOTE):]
    return None


@contextmanager
def graph_tool_errors(final: Path) -> Iterator[None]:
    """Turn an exception raised inside FINN/qonnx/ONNX/ONNX Runtime into a one-line
    :class:`UnsupportedGraphError`; sibnn's own errors and bugs pass unchanged."""
    try:
        yield
    except SibnnError:
        raise
    except Exception as err:
        tool = raised_in(err)
        if tool is None:
            raise
        step = failed_step(err)
        where = f"at step {step}" if step else "while reading the model"
        log = ""
        if step:  # a step ran, so the build is kept as <final>.failed with its log
            runlog.write_traceback(err)
            log = f" (traceback: {final.name}.failed/build.log)"
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise UnsupportedGraphError(f"{tool} cannot take this model {where}: "
                                    f"{type(err).__name__}: {first}{log}") from None
