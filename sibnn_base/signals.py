"""SIGINT, SIGTERM and SIGHUP: recorded first, raised where it is safe, checked at every boundary.

Code we do not own can swallow an exception raised from a signal handler (a SIGTERM during
torch's import was lost that way), so stopping never depends on that exception arriving:

* the handler *records* the signal, ends every child process we started (:func:`run`), and raises
  :class:`Terminated` (``KeyboardInterrupt`` for SIGINT) once, for the first
  signal only, so a second signal cannot interrupt the cleanup the first one started;
* :func:`check` raises it again wherever a recorded signal must stop us: between steps, before an
  output is swapped in or a file replaced, and every fraction of a second while a child runs;
* the CLI wrapper (:func:`~sibnn_base.errors.cli_errors`) exits ``128 + n`` whenever a signal was
  recorded, whatever ``main`` returned or raised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: raised in the main thread so that every ``finally`` and
    ``except BaseException`` cleanup runs exactly as for Ctrl-C (temp dirs removed, a started
    build kept as ``<dir>.failed``); the CLI then exits with ``128 + signal``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_received: list[int] = []
_defer = [0]
_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()

POLL_S = 0.2
"""How often a wait on a child process looks for a recorded signal."""


_early = [False]


def install(*, early: bool = False) -> None:
    """Route SIGINT, SIGTERM and SIGHUP through :func:`_handler` (main thread only).

    ``early``: a program's first line, before its imports (which take seconds: torch); a signal
    then is only recorded, and :func:`started` raises it once the CLI's error handling runs."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in HANDLED:
        signal.signal(sig, _handler)
    if early and not _early[0]:
        _early[0] = True
        _defer[0] += 1


def started() -> None:
    """The CLI's ``main`` runs under its error handling: end the start-up deferral of
    :func:`install` (``early``) and raise a signal recorded during start-up."""
    if _early[0]:
        _early[0] = False
        _defer[0] -= 1
    check()


def _interruption(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _handler(signum, _frame) -> None:
    first = not _received
    _received.append(signum)
    kill_children()
    if first and not _defer[0]:
        raise _interruption(signum)


@contextlib.contextmanager
def deferred():
    """A block no signal interrupts (a commit, a cleanup): a signal arriving inside is only
    recorded; :func:`check` after the block raises it."""
    _defer[0] += 1
    try:
        yield
    finally:
        _defer[0] -= 1


def count() -> int:
    """How many signals were recorded so far (a commit compares it before and after)."""
    return len(_received)


def received() -> int | None:
    """The first signal recorded in this process, or None."""
    return _received[0] if _received else None


def check() -> None:
    """Raise the interruption of a recorded signal, if there is one (any thread)."""
    if _received:
        raise _interruption(_received[0])


def kill_children() -> None:
    """Ask every child process started through :func:`popen` (and its process group) to end:
    SIGTERM, which lets a compiler driver delete its temp files; :func:`run` follows up with
    SIGKILL for one that is still there a moment later."""
    with _children_lock:
        procs = list(_children)
    for p in procs:
        _signal_group(p, signal.SIGTERM)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _end(p: subprocess.Popen) -> None:
    """End child ``p`` and its group: SIGTERM, then SIGKILL after a grace second."""
    _signal_group(p, signal.SIGTERM)
    try:
        p.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(p, signal.SIGKILL)
    p.wait()


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` in its own process group, ended by a signal (:func:`kill_children`)
    until :func:`release` forgets it (after it exited)."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    with _children_lock:
        _children.add(proc)
    return proc


def release(proc: subprocess.Popen) -> None:
    """Forget a child from :func:`popen` (it has exited)."""
    with _children_lock:
        _children.discard(proc)


def run(cmd: list[str], *, cwd=None, env=None, timeout: float | None = None,
        **_ignored) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` that a signal ends: the child runs
    in its own process group (a compiler's own children included) with a private ``TMPDIR`` that
    is removed afterwards, the wait looks for a recorded signal every :data:`POLL_S` seconds,
    and the whole group is ended on any way out that is not the child's own exit."""
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="sibnn-child-")
    env = dict(os.environ if env is None else env, TMPDIR=scratch)
    try:
        proc = popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     stdin=subprocess.DEVNULL, text=True, errors="replace")
        try:
            out, err = _wait(proc, timeout)
        finally:
            if proc.returncode is None:
                _end(proc)
            release(proc)
    finally:
        with deferred():
            shutil.rmtree(scratch, ignore_errors=True)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _wait(proc: subprocess.Popen, timeout: float | None) -> tuple[str, str]:
    waited = 0.0
    while True:
        check()
        try:
            out = proc.communicate(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            waited += POLL_S
            if timeout is not None and waited >= timeout:
                raise
            continue
        check()  # a child we ended because of a signal is that signal, not a tool failure
        return out
