"""What the two code simulators (``flow.sim.cppsim``: g++ on generated HLS C++, ``flow.sim.rtlsim``:
Verilator on generated RTL) share: the record of one compiled node, the source digest that keys
the compile cache, the cache location and the parallel compile loop.

A node is compiled into its own directory under the cache, named by the digest of everything
that decides the binary (generated sources with build-specific paths replaced, headers, flags,
tool versions), so a rebuild into a fresh output directory compiles nothing that has not changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NodeBuild:
    """One specialised node compiled into an executable simulation of its generated code."""

    node: str
    """The ONNX node name."""
    op_type: str
    """Its op type (e.g. ``MVAU_hls``, ``Thresholding_rtl``)."""
    kind: str
    """``cppsim`` (g++ on the HLS C++) or ``rtlsim`` (Verilator on the RTL)."""
    executable: Path
    """The compiled simulation binary (inside the cache)."""
    cached: bool
    """True when the binary came from the cache (nothing compiled)."""
    compile_s: float
    """Seconds spent compiling (0 when cached)."""
    shims: tuple[str, ...] = ()
    """Our stand-in headers/modules the compile used (a real file always wins over a shim)."""


def source_digest(files: Iterable[Path], *, replace: dict[str, str] | None = None,
                  extra: Iterable[str] = ()) -> str:
    """sha256 over ``files`` (by name and content, in the given order) with each key of
    ``replace`` substituted by its value first (build-specific absolute paths), plus ``extra``
    strings (flags, tool versions, include roots)."""
    h = hashlib.sha256()
    for f in files:
        data = Path(f).read_bytes()
        for old, new in (replace or {}).items():
            data = data.replace(old.encode(), new.encode())
        h.update(Path(f).name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    for e in extra:
        h.update(b"\1" + e.encode())
    return h.hexdigest()


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$SIBNN_SIM_CACHE``, else ``$XDG_CACHE_HOME/sibnn/sim``, else ``~/.cache/sibnn/sim``."""
    env = os.environ if environ is None else environ
    if env.get("SIBNN_SIM_CACHE"):
        return Path(env["SIBNN_SIM_CACHE"])
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "sibnn" / "sim"


def run_parallel(fn: Callable, items: list, jobs: int) -> list:
    """``[fn(x) for x in items]`` on ``jobs`` threads (compiles are subprocesses); the first
    exception is raised after every started job has finished."""
    if jobs <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(fn, x) for x in items]
        errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e
        return [f.result() for f in futures]


def publish_entry(tmp: Path, entry: Path, product: str) -> None:
    """Move a finished cache entry ``tmp`` into place as ``entry`` atomically. If another
    process published the same key first (``entry/product`` exists), keep theirs: same key,
    same binary."""
    try:
        os.rename(tmp, entry)
    except OSError:
        if not (entry / product).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def select_nodes(nodes: list, names: list[str] | None, what: str) -> list:
    """``nodes`` (those a simulator takes), or the ones named in ``names`` in that order; a
    name that is not among them is a ``ValueError`` naming ``what`` they must be."""
    if names is None:
        return nodes
    by_name = {n.name: n for n in nodes}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"not {what} of this graph: {', '.join(unknown)}")
    return [by_name[n] for n in names]
