"""Compile the stitched simulator of one graph: every RTL node's Verilated model (one C++ class
per distinct staged source, cached like :mod:`flow.sim.rtlsim`'s binaries), a generated netlist
that instantiates them and the HLS cycle models and wires the channels, and the engine
(``stitched_sim.cpp``) around it.

Cache layout under ``<cache>/stitched/``: ``lib-<digest>/`` holds one model (``model.o``, its
headers, its memory init files in ``data/``); ``sim-<digest>/sim`` one linked simulator. The
netlist refers to models by digest only, so a rebuild into another output directory, or a graph
that differs only in its HLS nodes' data, links without compiling a model again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from flow.sim.cycle_models import NoCycleModel, cycle_model
from flow.sim.rtl_stage import (
    StagedRtl,
    node_inst,
    refuse_primitives,
    rtl_nodes,
    stage_rtl,
    stream_ports,
    top_ports,
)
from flow.sim.sim_common import publish_entry, run_parallel, source_digest
from flow.sim.verilator import (
    CXX_OPT,
    VERILATOR_FLAGS,
    BuildLog,
    RtlsimTools,
    compile_flags,
    cxx_version,
    verilate_into_cache,
    verilator_runtime,
)
from sibnn_base.errors import SimulationBuildError, UnsupportedGraphError

TEMPLATE = Path(__file__).with_name("stitched_sim.cpp")
"""The simulator's engine; ``netlist.inc`` (generated) is included into it."""

GAUGE_DEFINE = "FINN_SIMULATION"
"""Defined for the sizing run: FINN's FIFO wrapper then instantiates ``fifo_gauge`` (never
full, records its maximum fill) instead of ``fifo``."""


@dataclass(frozen=True)
class ModelLib:
    """One Verilated RTL model, compiled into an object file."""

    digest: str
    dir: Path
    prefix: str
    """The C++ class (``verilator --prefix``)."""
    ports: dict
    """``{port: input|output}`` of its top module."""
    streams: tuple
    """``(stream input indices, stream output indices)`` of the node it was built for."""
    cached: bool
    compile_s: float


def _hls(node_type: str) -> bool:
    return node_type.endswith("_hls")


def _lib_key(st: StagedRtl, tools: RtlsimTools, defines: tuple[str, ...]) -> str:
    return source_digest(
        [*st.sources, *st.data],
        extra=[" ".join(compile_flags(tools)), f"top={st.top}", "stitched-lib",
               f"verilator {tools.verilator_version}", *(f"-D{d}" for d in defines),
               f"cxx {tools.cxx} {cxx_version(tools.cxx)}",
               "sources " + " ".join(s.name for s in st.sources)])


def _compile_lib(st: StagedRtl, tools: RtlsimTools, cache: Path, digest: str,
                 defines: tuple[str, ...], log_path: Path) -> float:
    """Verilate ``st`` into ``<cache>/lib-<digest>/``: its model compiled into ``model.o``, the
    generated headers in ``include/``, Verilator's make variables in ``flags.json``."""
    prefix = f"Vs{digest[:16]}"

    def compile_model(tmp: Path, src: Path, obj: Path, mk: dict, log: BuildLog):
        unity = obj / "sibnn_unity.cpp"
        unity.write_text("".join(f'#include "{c}.cpp"\n' for c in mk["CLASSES"]))
        return log.run([tools.cxx, *mk["CXXFLAGS"], CXX_OPT, "-c", "-o",
                        str(tmp / "model.o"), str(unity)], obj)

    def headers(tmp: Path, obj: Path, mk: dict, seconds: float) -> None:
        (tmp / "include").mkdir()
        for h in obj.glob("*.h"):
            shutil.copyfile(h, tmp / "include" / h.name)
        (tmp / "flags.json").write_text(json.dumps(mk))

    flags = [f for f in VERILATOR_FLAGS if f != "Vtop" and f != "--prefix"]
    return verilate_into_cache(
        st, tools, entry=cache / f"lib-{digest}", product="model.o",
        tmp_prefix=f".tmp-lib-{digest[:12]}-",
        verilator_flags=[*flags, "--prefix", prefix, *(f"-D{d}" for d in defines)],
        prefix=prefix, cxx_step=compile_model, finish=headers, log_path=log_path,
        what="stitched simulation")


def compile_libs(model: ModelWrapper, tools, cache: Path, work: Path, *, gauge: bool,
                 jobs: int = 2) -> dict[str, ModelLib]:
    """One :class:`ModelLib` per RTL node of ``model`` (taken from the cache where it exists).
    ``gauge``: FIFOs as FINN's simulation FIFO (the sizing run)."""
    cache = Path(cache).absolute()
    cache.mkdir(parents=True, exist_ok=True)
    defines = (GAUGE_DEFINE,) if gauge else ()
    nodes = rtl_nodes(model)

    def one(node) -> ModelLib:
        inst = node_inst(node)
        st = stage_rtl(node, inst, tools.rtllib, Path(work) / "stage" / node.name)
        refuse_primitives(st, "stitched simulation")
        node_defines = defines if node.op_type == "StreamingFIFO_rtl" else ()
        digest = _lib_key(st, tools, node_defines)
        entry = cache / f"lib-{digest}"
        cached, seconds = (entry / "model.o").is_file(), 0.0
        if not cached:
            seconds = _compile_lib(st, tools, cache, digest, node_defines,
                                   Path(work) / "logs" / f"{node.name}.log")
        return ModelLib(digest=digest, dir=entry, prefix=f"Vs{digest[:16]}",
                        ports=top_ports(st.sources, st.top),
                        streams=stream_ports(inst), cached=cached,
                        compile_s=round(seconds, 3))

    libs = run_parallel(one, nodes, jobs)
    return {n.name: lib for n, lib in zip(nodes, libs, strict=True)}


# ------------------------------------------------------------------------------- netlist

def _c(s: str) -> str:
    return json.dumps(s)


def _rtl_struct(k: int, lib: ModelLib) -> str:
    """The C++ node class for RTL node ``k``: port glue between its channels and the model."""
    ins, outs = lib.streams
    drive, after, idle = [], [], []
    used = {"ap_clk", "ap_rst_n"}
    for a, i in enumerate(ins):
        p = f"m->in{i}_V_"
        drive.append(f"put({p}TDATA, in[{a}]->data.data(), in[{a}]->words); "
                     f"{p}TVALID = in[{a}]->valid;")
        after.append(f"ch |= drive(in[{a}]->ready, static_cast<bool>({p}TREADY));")
        used |= {f"in{i}_V_TDATA", f"in{i}_V_TVALID", f"in{i}_V_TREADY"}
    for b, o in enumerate(outs):
        p = f"m->out{o}_V_"
        drive.append(f"{p}TREADY = out[{b}]->ready;")
        after.append(f"ch |= drive(out[{b}]->valid, static_cast<bool>({p}TVALID)); "
                     f"ch |= get({p}TDATA, out[{b}]->data.data(), out[{b}]->words);")
        used |= {f"out{o}_V_TDATA", f"out{o}_V_TVALID", f"out{o}_V_TREADY"}
    missing = sorted(used - set(lib.ports))
    if missing:
        raise SimulationBuildError(f"stitched simulation: model {lib.prefix} lacks ports {missing}")
    for p, d in sorted(lib.ports.items()):
        if d == "input" and p not in used:
            idle.append(f"{{ const std::vector<uint32_t> z(64, 0); put(m->{p}, z.data(), 64); }}")
    fifo = "count" in lib.ports and "maxcount" in lib.ports
    extra = ("    long fill() const override { return static_cast<long>(m->count); }\n"
             "    long max_fill() const override { return static_cast<long>(m->maxcount); }\n"
             if fifo else "")
    return f"""
struct R{k} : Node {{
    {lib.prefix}* m;
    R{k}(VerilatedContext* ctx, const char* dir) {{
        m = new {lib.prefix}(ctx, "R{k}");
        {' '.join(idle)}
        m->ap_clk = 0; m->ap_rst_n = 0;
        in_dir(dir, [&] {{ m->eval(); }});  // initial blocks read their memory files here
    }}
    ~R{k}() override {{ m->final(); delete m; }}
    bool comb() override {{
        bool ch = false;
        m->ap_clk = 0; m->ap_rst_n = g_reset ? 0 : 1;
        {' '.join(drive)}
        m->eval();
        {' '.join(after)}
        return ch;
    }}
    void clock(bool) override {{ m->ap_clk = 1; m->eval(); }}
{extra}}};
"""


def netlist(model: ModelWrapper, chans: list, libs: dict[str, ModelLib],
            models: dict) -> str:
    """The generated ``netlist.inc``: model includes, one class per RTL node, and ``build()``
    creating the channels and nodes in graph order."""
    includes = sorted({f'#include "{lib.prefix}.h"' for lib in libs.values()})
    structs, body = [], []
    idx = {c.name: i for i, c in enumerate(chans)}
    body.append(f"    d.chans.resize({len(chans)});")
    for i, c in enumerate(chans):
        body.append(f"    d.chans[{i}] = new Chan{{{_c(c.name)}, {c.words}, {c.beats}}}; "
                    f"d.chans[{i}]->data.assign({c.words}, 0);")
    for k, n in enumerate(model.graph.node):
        ins = [idx[n.input[i]] for i in stream_inputs(model, n)]
        outs = [idx[t] for t in n.output if t in idx]
        if n.name in libs:
            lib = libs[n.name]
            structs.append(_rtl_struct(k, lib))
            body.append(f"    {{ Node* x = new R{k}(ctx, {_c(str(lib.dir / 'data'))});")
        else:
            m = models[n.name]
            body.append(f"    {{ Hls* h = new Hls(); Node* x = h; h->depth = {m.depth}; "
                        f"h->pipe.assign({m.depth}, 0); "
                        f"h->sched = load_sched(data, {_c(n.name)}, {m.iterations}); "
                        f"h->inbuf.assign({len(ins)}, 0); h->outbuf.assign({len(outs)}, 0); "
                        f"h->out_next.assign({len(outs)}, 0); h->written.assign({len(outs)}, 0);")
        body.append(f"      x->name = {_c(n.name)}; x->op_type = {_c(n.op_type)};")
        body.append("      x->in = {" + ", ".join(f"d.chans[{i}]" for i in ins) + "};")
        body.append("      x->out = {" + ", ".join(f"d.chans[{i}]" for i in outs) + "};")
        body.append("      d.nodes.push_back(x); }")
    body.append(f"    d.input = d.chans[{idx[model.graph.input[0].name]}];")
    body.append(f"    d.output = d.chans[{idx[model.graph.output[0].name]}];")
    return ("\n".join(includes) + "\nnamespace ss {\n" + "".join(structs)
            + "\nvoid build(Design& d, VerilatedContext* ctx, const std::string& data) {\n"
            + "\n".join(body) + "\n}\n}  // namespace ss\n")


def stream_inputs(model: ModelWrapper, node) -> list[int]:
    """Stream input indices of ``node`` in port order (initializers such as an MVAU's weights
    are not streams)."""
    return [i for i, t in enumerate(node.input) if t and model.get_initializer(t) is None]


def hls_models(model: ModelWrapper) -> dict:
    """The cycle model of every HLS node; a node without one is :class:`UnsupportedGraphError`
    naming it (the stitched simulation does not guess)."""
    out = {}
    for n in model.graph.node:
        if not _hls(n.op_type):
            continue
        try:
            out[n.name] = cycle_model(node_inst(n))
        except NoCycleModel as err:
            raise UnsupportedGraphError(f"stitched simulation: node {n.name}: {err}") from None
    return out


def link(model: ModelWrapper, chans: list, libs: dict[str, ModelLib], models: dict, tools,
         cache: Path, work: Path) -> tuple[Path, bool, float]:
    """Generate the netlist and link the simulator (cached by the digest of netlist, engine and
    models). Returns ``(executable, cached, seconds)``."""
    cache = Path(cache).absolute()
    text = netlist(model, chans, libs, models)
    uniq = sorted({lib.digest: lib for lib in libs.values()}.values(), key=lambda x: x.digest)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "netlist.inc").write_text(text)
    digest = source_digest([TEMPLATE, work / "netlist.inc"],
                           extra=[lib.digest for lib in uniq] + [tools.cxx, CXX_OPT])
    entry = cache / f"sim-{digest}"
    if (entry / "sim").is_file():
        return entry / "sim", True, 0.0
    t0 = time.monotonic()
    any_lib = uniq[0] if uniq else None
    mk = json.loads((any_lib.dir / "flags.json").read_text()) if any_lib else None
    if mk is None:
        raise SimulationBuildError("stitched simulation: a graph without RTL nodes needs a "
                                   "Verilator model for its FIFOs; none was built")
    log = BuildLog(tools.environ())
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-sim-", dir=cache))
    try:
        shutil.copyfile(TEMPLATE, tmp / "main.cpp")
        shutil.copyfile(work / "netlist.inc", tmp / "netlist.inc")
        runtime = verilator_runtime(tools, cache, mk, log)
        incs = [f"-I{lib.dir / 'include'}" for lib in uniq]
        proc = log.run([tools.cxx, *[f for f in mk["CXXFLAGS"] if f != "-I."], CXX_OPT,
                        "-I.", *incs, "-o", str(tmp / "sim"), str(tmp / "main.cpp"),
                        *[str(lib.dir / "model.o") for lib in uniq], *map(str, runtime),
                        *mk["LDLIBS"]], tmp)
        (work / "link.log").write_text(log.text)
        if proc.returncode != 0 or not (tmp / "sim").is_file():
            err = next((ln for ln in log.text.splitlines() if " error" in ln or "Error" in ln),
                       "no output")
            raise SimulationBuildError(f"stitched simulation: the simulator does not link: "
                                       f"{err.strip()} (log: {work / 'link.log'})")
        publish_entry(tmp, entry, "sim")
        return entry / "sim", False, time.monotonic() - t0
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_schedules(models: dict, data: Path) -> None:
    for name, m in models.items():
        np.asarray(m.schedule, dtype="<u2").tofile(data / f"{name}.sched")
