"""A node's generated RTL staged for Verilator (:mod:`flow.sim.rtlsim` compiles it with our
harness, :mod:`flow.sim.stitched_build` into the stitched simulator).

The HDL that ``hw_codegen`` wrote (``code_gen_dir_ipgen``) and the finn-rtllib files the node
lists (``get_rtl_file_list``) are copied, with the node's name replaced by ``sibnn_node`` (so
equal layers share a binary) and the build directory's absolute path by ``.``; its memory init
files (``*.dat``, read by ``$readmemh`` relative to the working directory) are copied alongside,
and the node's harness (``rtlsim_harness.cpp`` with its stream glue) is generated next to them.
FINN's files are never touched. A layer Verilator cannot take (a Xilinx primitive such as
``xpm_*`` or a unisim cell) is found from its sources without compiling
(:func:`unsupported_rtl_nodes`).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from onnx import NodeProto
from qonnx.core.modelwrapper import ModelWrapper

from flow.env.finn import HW_DOMAIN
from flow.sim.verilator import finn_rtllib
from sibnn_base.errors import SimulationBuildError

HARNESS = Path(__file__).with_name("rtlsim_harness.cpp")
"""The harness template; its ``/*@...@*/`` markers are filled per node."""

NODE = "sibnn_node"
"""What a node's name becomes in the staged sources (and so the Verilog top module)."""

MEM_SUFFIXES = (".dat", ".mem", ".hex")
"""Memory init files in a node's code_gen_dir that the binary reads at run time."""

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


# ---------------------------------------------------------------------------------- nodes

def rtl_nodes(model: ModelWrapper) -> list[NodeProto]:
    """The graph's specialised RTL layers (``*_rtl`` in FINN's HW domain), in graph order."""
    return [n for n in model.graph.node
            if n.op_type.endswith("_rtl") and n.domain.startswith(HW_DOMAIN)]


def node_inst(node: NodeProto):
    """FINN's custom-op instance of ``node``."""
    from qonnx.custom_op.registry import getCustomOp

    return getCustomOp(node)


def stream_ports(inst) -> tuple[list[int], list[int]]:
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


def source_files(node: NodeProto, inst, rtllib: Path) -> list[Path]:
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
class StagedRtl:
    """A node's RTL staged in ``dir``: its sources, memory files (in ``dir/data``), harness, top
    module, and the changes made to library files (:data:`PACK_STRUCTS`)."""

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


def stage_rtl(node: NodeProto, inst, rtllib: Path, dest: Path) -> StagedRtl:
    """Copy the node's sources (renamed, build paths made relative) and memory files into
    ``dest``; generate its harness there."""
    cg = _codegen_dir(node, inst)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "data").mkdir(parents=True)
    sources, patches = [], []
    for f in source_files(node, inst, rtllib):
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
    harness.write_text(_harness_text(inst, top_ports(sources, top)))
    return StagedRtl(node, dest, sources, data, harness, top, tuple(patches))


# ---------------------------------------------------------------------------------- harness

def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"\(\*.*?\*\)", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def top_ports(sources: list[Path], top: str) -> dict[str, str]:
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
    ins, outs = stream_ports(inst)
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


# ---------------------------------------------------------------------- what Verilator lacks

def primitives(files: list[Path]) -> list[str]:
    """The Xilinx primitives / XPM macros instantiated in ``files``."""
    return sorted({m.group(1) for f in files for m in
                   XILINX_PRIMITIVE.finditer(_strip_comments(f.read_text(errors="replace")))})


def _unsupported_reason(prims: list[str]) -> str:
    return (f"its RTL instantiates Xilinx primitive(s) {', '.join(prims)}, which Verilator "
            f"cannot simulate")


def refuse_primitives(st: StagedRtl, what: str) -> None:
    """Raise :class:`SimulationBuildError` (starting with ``what``) when the staged sources
    instantiate a Xilinx primitive or XPM macro: Verilator has no model of it."""
    prims = primitives(st.sources)
    if prims:
        raise SimulationBuildError(f"{what}: node {st.node.name} ({st.node.op_type}): "
                                   f"{_unsupported_reason(prims)}")


def unsupported_rtl_nodes(model: ModelWrapper, rtllib: Path | None = None) -> dict[str, str]:
    """``{node: reason}`` for RTL nodes whose sources instantiate a Xilinx primitive or XPM
    macro (no Verilator model), found by scanning the sources without compiling. A node whose
    sources cannot be found is left to :func:`flow.sim.rtlsim.compile_rtl_nodes` to report."""
    rtllib = rtllib or finn_rtllib()
    bad = {}
    for node in rtl_nodes(model) if rtllib else []:
        try:
            prims = primitives(source_files(node, node_inst(node), rtllib))
        except SimulationBuildError:
            continue
        if prims:
            bad[node.name] = _unsupported_reason(prims)
    return bad
