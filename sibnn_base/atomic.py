"""Every write sibnn makes to the user's disk: atomic files (:func:`atomic_write`; JSON with
:func:`atomic_write_json` and :func:`atomic_write_jsonl`), the one writable-location check
(:func:`check_writable_dir`), and atomic output directories: build in a temp sibling, then swap
in with renames.

A failed or interrupted run leaves the previous directory untouched; a directory that exists and
was not written by sibnn (no marker file) is never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sibnn_base import signals
from sibnn_base.errors import OutputDirError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` into a temp file in the same directory (with the
    mode a plain ``open`` would give, not mkstemp's 0600), fsync, then ``os.replace``. On any
    failure the previous file is untouched and the temp file removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        with signals.deferred():
            signals.check()  # an interrupted run never replaces the previous file
            os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise OutputDirError(f"cannot write {path}: {err.strerror}; the previous file is "
                                 "unchanged") from None
        raise
    except BaseException:
        with signals.deferred():
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (two spaces, a final newline) with :func:`atomic_write`."""
    text = (json.dumps(obj, indent=2) + "\n").encode()
    return atomic_write(path, lambda fh: fh.write(text))


def atomic_write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write ``rows`` as JSON lines (one object a line) with :func:`atomic_write`: the whole file
    is rewritten."""
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return atomic_write(path, lambda fh: fh.write(text))


def check_writable_dir(path: str | Path, what: str) -> Path:
    """``path`` must be, or be creatable as, a writable directory on a disk file system: its
    nearest existing ancestor is checked, and a file, a kernel file system (``/proc``, ``/sys``)
    or an unwritable directory is a one-line :class:`OutputDirError` that names ``what``.
    Returns that ancestor. The one such check for every tool (build, export, train)."""
    anchor = Path(path)
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise OutputDirError(f"{what}: {anchor} is a file, not a directory")
    parts = anchor.resolve().parts
    if len(parts) > 1 and parts[1] in ("proc", "sys"):
        raise OutputDirError(f"{what} is under /{parts[1]}, a kernel file system; choose a "
                             "directory on disk")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputDirError(f"{what}: {anchor} is not writable")
    return anchor


MARKER = ".sibnn-output.json"

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
"""Write failures that are the disk's, not the tool's: one line, nothing kept."""


def check_target(path: Path, kind: str) -> None:
    """Refuse a target that exists and is not a sibnn ``kind`` directory, or is unwritable."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OutputDirError(f"output path {path} exists and is not a directory")
        owner = owner_kind(path)
        if any(path.iterdir()) and owner is None:
            raise OutputDirError(f"output directory {path} exists and was not written by sibnn; "
                                 "choose another --out/--output-dir or remove it")
        if owner is not None and owner != kind:
            raise OutputDirError(f"output directory {path} holds a sibnn {owner!r} result, "
                                 f"not {kind!r}; choose another directory")
    make_parent(path)


def make_parent(path: Path) -> Path:
    """Create the parent of output directory ``path`` and check that it is writable (a
    one-line :class:`OutputDirError` naming ``path`` otherwise); returns the parent."""
    path = Path(path)
    parent = path.parent if path.parent != Path("") else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"cannot create output directory {path}: {err.strerror}") from None
    check_writable_dir(parent, f"output directory {path}")
    return parent


TEMP_OWNER = ".sibnn-tmp"
"""File inside each of our temp directories: the pid that made it, so a rerun can tell a stale
temp dir of ours (its process is gone) from anything else."""


def make_temp_dir(final: Path, tag: str, kind: str) -> Path:
    """A fresh hidden sibling of ``final`` to build into (one-line error if it cannot be made),
    marked from the start as a sibnn ``kind`` directory (so a failed run kept for inspection is
    recognisably ours). Stale temp dirs of ours for the same target (killed runs) are removed
    first."""
    remove_stale_temp_dirs(final, tag)
    tmp = None
    try:
        with signals.deferred():  # never a temp dir without its owner file
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{tag}", dir=final.parent))
            (tmp / TEMP_OWNER).write_text(str(os.getpid()))
            write_marker(tmp, kind)
        return tmp
    except OSError as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise OutputDirError(f"cannot write next to {final}: {err.strerror}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(final: Path, tag: str) -> list[Path]:
    """Delete ``.<final>.<tag>*`` siblings that we made (owner file) whose process is dead."""
    removed = []
    for d in Path(final).parent.glob(f".{Path(final).name}.{tag}*"):
        owner = d / TEMP_OWNER
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            continue  # not ours: never touched
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def owner_kind(path: Path) -> str | None:
    """Which sibnn tool wrote directory ``path`` (``export``, ``build``, ...), or None: the one
    ownership rule of every tool, read from the one marker file (:data:`MARKER`). A build's
    ``status.json`` says how the build went, never who owns the directory."""
    try:
        return str(json.loads((Path(path) / MARKER).read_text())["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(path: Path, kind: str) -> None:
    """Mark directory ``path`` as a sibnn ``kind`` result."""
    (Path(path) / MARKER).write_text(json.dumps({"kind": kind, "written": time.time()}))


def owned_by_sibnn(path: Path) -> bool:
    """Whether directory ``path`` was written by a sibnn tool."""
    return owner_kind(path) is not None


def swap_in(src: Path, dest: Path) -> None:
    """Make directory ``src`` become ``dest`` with renames: an existing ``dest`` is moved aside
    first and deleted only once ``src`` is in place, so ``dest`` is never half-written.

    A recorded signal stops the swap before it starts; one that arrives during the two renames
    rolls them back, so an interrupted run never replaces ``dest`` (:mod:`sibnn_base.signals`).
    One that arrives after the commit is only recorded: the CLI still exits ``128 + n``."""
    src, dest = Path(src), Path(dest)
    old = None
    with signals.deferred():
        signals.check()
        seen = signals.count()
        if dest.exists():
            old = dest.parent / f".{dest.name}.{os.getpid()}.old"
            os.replace(dest, old)
        os.replace(src, dest)
        if signals.count() != seen:  # interrupted mid-commit: put everything back
            os.replace(dest, src)
            if old is not None:
                os.replace(old, dest)
            old = None
        elif old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(path: str | Path, kind: str) -> Iterator[Path]:
    """Yield a temp directory; on success it replaces ``path`` (with a marker file)."""
    path = Path(path)
    check_target(path, kind)
    tmp = make_temp_dir(path, "partial-", kind)
    try:
        yield tmp
        (tmp / TEMP_OWNER).unlink(missing_ok=True)
        swap_in(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in DISK_ERRORS:
            raise OutputDirError(f"cannot write {path}: {err.strerror}; nothing was "
                                 "replaced") from None
        raise
    except BaseException:
        with signals.deferred():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
