"""cppsim without Vitis: compile each ``*_hls`` node's generated C++ with plain g++ and run it.

FINN's own cppsim (``HLSBackend.compile_singlenode_code``) links Vitis HLS libraries; none of
them is needed for bit-accurate simulation. Here the same generated code (FINN's
``code_generation_cppsim``, the code ``PrepareCppSim`` writes) is built with:

* g++ ``--std=c++17 -O3`` (see :data:`CXXFLAGS`);
* FINN's ``npy2stream`` templates (``cnpy``), compiled once into a cached object;
* finn-hlslib from FINN's deps directory (``$FINN_DEPS/finn-hlslib``, else ``<repo>/deps``);
* the open ``ap_types`` headers (``<deps>/ap_types``, or ``$SIBNN_AP_TYPES``);
* our shims (``flow/sim/cppsim_shims``) for Vitis-only headers and pieces missing from the
  finn-hlslib snapshot, searched *last*, so a real header always wins. The shims a node's compile
  actually read (g++'s dependency output) are recorded in :attr:`NodeBuild.shims`.

The generated sources name their ``input_<i>.npy``/``output_<o>.npy`` files by absolute path;
we rewrite those to paths relative to the working directory, so one cached binary serves every
build: it runs with ``cwd`` = a scratch directory. Inputs are written and outputs read back by
FINN's own ``execute_node`` (folding, BIPOLAR <-> BINARY, reshaping), so a node's outputs land in
the execution context exactly as FINN's cppsim puts them there.

Binaries are cached under ``<cache_dir>/<digest>/node_model``, keyed by
:func:`flow.sim.sim_common.source_digest` of the generated sources plus flags, g++ version, header
roots and a fingerprint of every header the compile can see. Nothing here touches FINN's global
settings or installed files.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import NodeProto
from qonnx.core.modelwrapper import ModelWrapper

from flow.env.finn import HW_DOMAIN
from flow.sim.sim_common import (
    NodeBuild,
    publish_entry,
    run_parallel,
    select_nodes,
    source_digest,
)
from sibnn_base import signals
from sibnn_base.errors import SimulationBuildError, ToolMissingError, VerificationError

ROOT = Path(__file__).resolve().parents[2]
SHIMS = Path(__file__).resolve().parent / "cppsim_shims"

CXXFLAGS: tuple[str, ...] = ("--std=c++17", "-O3", "-include", "hls_half.h")
"""g++ flags of every cppsim compile.

* ``-O3``, FINN's own level. Measured on this graph's layers (2 shared cores): g++ time is mostly
  parsing ap_int/finn-hlslib, so -O0..-O3 differ by less than the run-to-run noise (about 3-6 s
  per node each), and the binaries run in 5-110 ms at any level; nothing to gain elsewhere.
* ``-include hls_half.h``: finn-plus' ``cnpy.h`` names a ``half`` type that only Vitis' headers
  declare (a real ``hls_half.h`` earlier on the include path wins over our shim).

Left out of FINN's command: its Vitis include/link flags (no Vitis symbol is referenced), ``-lz``
(``cnpy.cpp`` references no zlib symbol) and ``-fno-builtin -fno-inline`` (speed only)."""

SOURCE_SUFFIXES = (".cpp", ".h", ".hpp")
"""Generated files that go into a node's compile (and its digest)."""

CODEGEN_PLACEHOLDER = "<CPPSIM_CODEGEN_DIR>"
STREAM_WARNING = "WARNING: Hls::stream"
"""What ap_types' ``hls::stream`` prints when read while empty or destroyed with data left."""
RUN_LOG = "run.log"


@dataclass(frozen=True)
class CppsimTools:
    """The compiler and header trees a cppsim build uses, found once by
    :func:`find_cppsim_tools`."""

    gxx: str
    gxx_version: str
    ap_types: Path
    hlslib: Path
    hlslib_commit: str | None
    shims: Path


def find_cppsim_tools(environ: dict[str, str] | None = None,
                      root: Path | None = None) -> CppsimTools:
    """Find g++, finn-hlslib and the ap_types headers (the only place that reads the
    environment). Raises :class:`ToolMissingError` with one line naming what to install."""
    env = dict(os.environ if environ is None else environ)
    gxx = shutil.which("g++", path=env.get("PATH", ""))
    if gxx is None:
        raise ToolMissingError("cppsim needs g++ (apt-get install -y g++)")
    deps = Path(env["FINN_DEPS"]) if env.get("FINN_DEPS") else (root or ROOT) / "deps"
    hlslib = deps / "finn-hlslib"
    if not (hlslib / "bnn-library.h").is_file():
        raise ToolMissingError(f"finn-hlslib not found in {hlslib} (set FINN_DEPS or run "
                               "`make deps`)")
    ap_types = Path(env["SIBNN_AP_TYPES"]) if env.get("SIBNN_AP_TYPES") else deps / "ap_types"
    if not all((ap_types / h).is_file() for h in ("ap_int.h", "hls_stream.h")):
        raise ToolMissingError(f"ap_types headers not found in {ap_types} (run `make install`)")
    return CppsimTools(gxx=gxx, gxx_version=_gxx_version(gxx), ap_types=ap_types.resolve(),
                       hlslib=hlslib.resolve(), hlslib_commit=_git_commit(hlslib),
                       shims=SHIMS)


def _gxx_version(gxx: str) -> str:
    out = subprocess.run([gxx, "--version"], capture_output=True, text=True, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        raise ToolMissingError(f"cppsim needs a working g++ ({gxx} --version failed; "
                               "apt-get install -y g++)")
    return out.stdout.splitlines()[0].strip()


def _git_commit(repo: Path) -> str | None:
    """The checked-out commit of ``repo``: a git clone's HEAD, or the commit ``make deps``
    (``scripts/deps.sh``) recorded in ``.sibnn-commit`` for the snapshot it unpacked."""
    recorded = repo / ".sibnn-commit"
    if recorded.is_file():
        return recorded.read_text().strip() or None
    if not (repo / ".git").exists():
        return None
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def pinned_hlslib_commit() -> str | None:
    """The finn-hlslib commit finn-plus pins (``finn/interface/external_dependencies.yaml``)."""
    import yaml
    from finn import interface

    f = Path(interface.__file__).parent / "external_dependencies.yaml"
    try:
        return yaml.safe_load(f.read_text())["git_deps"]["finn-hlslib"]["commit"]
    except (OSError, KeyError, TypeError):
        return None


def _version_hint(tools: CppsimTools) -> str:
    """Why generated code may not compile: a finn-hlslib other than the one finn-plus pins."""
    pin = pinned_hlslib_commit()
    have = tools.hlslib_commit
    if pin is None or (have is not None and have.startswith(pin[:10])):
        return ""
    return (f"; finn-hlslib in {tools.hlslib} is at {have[:10] if have else 'an unknown commit'}"
            f", not {pin[:10]}, which finn-plus' generated code is written against: run "
            "`make deps` with GitHub access (or HLSLIB_SRC=<clone with that commit>)")


def npy2stream_dir() -> Path:
    """FINN's ``npy2stream`` templates (``cnpy``, ``npy2apintstream.hpp``)."""
    from finn.templates import get_templates_folder

    return Path(get_templates_folder()) / "npy2stream"


def include_flags(tools: CppsimTools, *, hlslib: bool = True) -> list[str]:
    """``-I`` flags in search order: FINN templates, finn-hlslib, ap_types, then our shims (the
    shims last, so a real header always wins)."""
    dirs = (npy2stream_dir(), tools.hlslib, tools.ap_types, tools.shims)
    return [f"-I{d}" for d in dirs if hlslib or d != tools.hlslib]


def hls_nodes(model) -> list[NodeProto]:
    """The ``*_hls`` nodes of a specialised graph, in graph order."""
    return [n for n in model.graph.node
            if n.op_type.endswith("_hls") and n.domain.startswith(HW_DOMAIN)]


# ------------------------------------------------------------------------------------------------
# code generation
# ------------------------------------------------------------------------------------------------
def _custom_op(node: NodeProto, **attrs):
    """FINN's custom-op instance for a copy of ``node`` with ``attrs`` set (the caller's node and
    model are never modified)."""
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(copy.deepcopy(node))
    for k, v in attrs.items():
        inst.set_nodeattr(k, v)
    return inst


def generate_node_code(model: ModelWrapper, node: NodeProto, node_dir: Path) -> list[Path]:
    """Write ``node``'s cppsim sources into a fresh ``node_dir`` (FINN's
    ``code_generation_cppsim``, as ``PrepareCppSim`` calls it) and make their npy paths relative.
    Returns the sources that decide the binary, sorted by name."""
    if node_dir.exists():
        shutil.rmtree(node_dir)
    node_dir.mkdir(parents=True)
    _custom_op(node, code_gen_dir_cppsim=str(node_dir)).code_generation_cppsim(model)
    sources = sorted(p for p in node_dir.iterdir() if p.suffix in SOURCE_SUFFIXES)
    prefix = f"{node_dir}/"
    for src in sources:
        text = src.read_text()
        if prefix in text:
            src.write_text(text.replace(prefix, ""))
        if str(node_dir) in src.read_text():
            raise SimulationBuildError(
                f"node {node.name} ({node.op_type}): {src} names its build directory in a form "
                "the cppsim path rewrite does not handle; the binary would not be relocatable")
    return sources


# ------------------------------------------------------------------------------------------------
# compilation
# ------------------------------------------------------------------------------------------------
def _header_roots(tools: CppsimTools) -> list[tuple[str, Path, bool]]:
    """(tag, directory, recursive) of every include root, in search order."""
    return [("npy2stream", npy2stream_dir(), True), ("hlslib", tools.hlslib, False),
            ("ap_types", tools.ap_types, True), ("shims", tools.shims, False)]


def headers_fingerprint(tools: CppsimTools, tags: tuple[str, ...] | None = None) -> str:
    """sha256 over every header the compile can include (and ``cnpy.cpp``), by relative path and
    content: a changed header invalidates the cache even where a root's path is unchanged.
    ``tags`` limits it to some roots."""
    h = hashlib.sha256()
    for tag, root, recursive in _header_roots(tools):
        if tags is not None and tag not in tags:
            continue
        files = root.rglob("*") if recursive else root.iterdir()
        for f in sorted(p for p in files if p.is_file() and p.suffix in (".h", ".hpp", ".cpp")):
            data = f.read_bytes()
            h.update(f"{tag}/{f.relative_to(root)}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def _digest_extra(tools: CppsimTools, fingerprint: str) -> list[str]:
    return ["kind=cppsim", "flags=" + " ".join(CXXFLAGS), f"gxx={tools.gxx_version}",
            f"hlslib={tools.hlslib}", f"hlslib_commit={tools.hlslib_commit}",
            f"ap_types={tools.ap_types}", f"shims={tools.shims}",
            f"npy2stream={npy2stream_dir()}", f"headers={fingerprint}"]


def _run_logged(cmd: list[str], log: Path) -> int:
    """Run ``cmd``, appending the command and its output to ``log``; returns its exit status."""
    proc = signals.run(cmd)  # a signal ends g++ too
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    return proc.returncode


def _first_error(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    hit = next((ln for ln in lines if re.search(r"\berror\b", ln)), None)
    return (hit or next((ln for ln in reversed(lines) if ln.strip()), "no output")).strip()


CNPY_ROOTS = ("npy2stream", "ap_types", "shims")
"""The include roots ``cnpy.cpp`` is compiled against (it needs no finn-hlslib)."""


def cnpy_object(tools: CppsimTools, cache_dir: Path) -> Path:
    """FINN's ``cnpy.cpp`` compiled once per flags/g++/headers (it costs more g++ time than a
    node's own code) into ``<cache_dir>/cppsim-cnpy-<key>/cnpy.o``."""
    roots = {tag: str(d) for tag, d, _ in _header_roots(tools) if tag in CNPY_ROOTS}
    key = hashlib.sha256("\0".join(
        [" ".join(CXXFLAGS), tools.gxx_version, json.dumps(roots, sort_keys=True),
         headers_fingerprint(tools, CNPY_ROOTS)]).encode()).hexdigest()
    entry = cache_dir / f"cppsim-cnpy-{key[:32]}"
    if (entry / "cnpy.o").is_file():
        return entry / "cnpy.o"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cnpy.", dir=cache_dir))
    log = tmp / "compile.log"
    cmd = [tools.gxx, *CXXFLAGS, *include_flags(tools, hlslib=False), "-c",
           str(npy2stream_dir() / "cnpy.cpp"), "-o", str(tmp / "cnpy.o")]
    try:
        if _run_logged(cmd, log) != 0:
            kept = cache_dir / "cppsim-cnpy-failed.log"
            shutil.copyfile(log, kept)
            raise SimulationBuildError(f"g++ failed on FINN's cnpy.cpp: {_first_error(kept)} "
                                       f"(log: {kept})")
        publish_entry(tmp, entry, "cnpy.o")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry / "cnpy.o"


def _shims_used(dep_files: list[Path], shims: Path) -> tuple[str, ...]:
    """The shim headers named in g++'s ``-MD`` dependency output."""
    used: set[str] = set()
    for d in dep_files:
        for token in d.read_text().replace("\\\n", " ").split():
            p = Path(token)
            if p.is_absolute() and p.parent == shims:
                used.add(p.name)
    return tuple(sorted(used))


@dataclass(frozen=True)
class _Job:
    node: NodeProto
    node_dir: Path
    sources: list[Path]
    digest: str


def _compile(job: _Job, tools: CppsimTools, cache_dir: Path, cnpy_o: Path) -> NodeBuild:
    """Compile one node into a temporary cache entry, then publish it under its digest."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{job.digest[:16]}.", dir=cache_dir))
    try:
        return _compile_into(tmp, job, tools, cache_dir, cnpy_o)
    finally:  # published entries were renamed away; anything left is a failed or cut attempt
        shutil.rmtree(tmp, ignore_errors=True)


def _compile_into(tmp: Path, job: _Job, tools: CppsimTools, cache_dir: Path,
                  cnpy_o: Path) -> NodeBuild:
    name, op = job.node.name, job.node.op_type
    log = job.node_dir / "compile.log"
    log.write_text("")
    t0 = time.perf_counter()
    objs, deps = [], []
    ok = True
    for i, src in enumerate(s for s in job.sources if s.suffix == ".cpp"):
        obj, dep = tmp / f"{i}_{src.stem}.o", tmp / f"{i}_{src.stem}.d"
        cmd = [tools.gxx, *CXXFLAGS, *include_flags(tools), "-MD", "-MF", str(dep), "-c",
               str(src), "-o", str(obj)]
        ok = _run_logged(cmd, log) == 0
        if not ok:
            break
        objs.append(obj)
        deps.append(dep)
    if ok:
        cmd = [tools.gxx, *[str(o) for o in objs], str(cnpy_o), "-o", str(tmp / "node_model")]
        ok = _run_logged(cmd, log) == 0
    compile_s = time.perf_counter() - t0
    if not ok:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SimulationBuildError(f"g++ failed on node {name} ({op}): {_first_error(log)} "
                                   f"(log: {log}){_version_hint(tools)}")
    shims = _shims_used(deps, tools.shims)
    for o in objs:
        o.unlink()
    src_copy = tmp / "src"
    src_copy.mkdir()
    for s in job.sources:
        shutil.copy2(s, src_copy / s.name)
    shutil.copyfile(log, tmp / "compile.log")
    meta = {"node": name, "op_type": op, "shims": list(shims), "compile_s": compile_s,
            "flags": list(CXXFLAGS), "gxx": tools.gxx_version,
            "hlslib_commit": tools.hlslib_commit}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    entry = cache_dir / job.digest
    publish_entry(tmp, entry, "node_model")
    return NodeBuild(node=name, op_type=op, kind="cppsim", executable=entry / "node_model",
                     cached=False, compile_s=compile_s, shims=shims)


def _cached(job: _Job, cache_dir: Path) -> NodeBuild | None:
    entry = cache_dir / job.digest
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not (entry / "node_model").is_file():
        return None
    return NodeBuild(node=job.node.name, op_type=job.node.op_type, kind="cppsim",
                     executable=entry / "node_model", cached=True,
                     compile_s=0.0, shims=tuple(meta.get("shims", ())))


def compile_hls_nodes(model: ModelWrapper, work_dir: Path, tools: CppsimTools, *,
                      cache_dir: Path, jobs: int = 2,
                      names: list[str] | None = None) -> dict[str, NodeBuild]:
    """Generate, digest and compile (or take from the cache) the cppsim binary of every ``*_hls``
    node of ``model`` (or of the nodes named in ``names``), ``jobs`` compiles at a time.

    ``work_dir/<node name>/`` receives each node's generated sources and, on failure, its
    ``compile.log``. ``model`` is not modified. Raises :class:`SimulationBuildError` naming the
    first node g++ rejected."""
    work_dir, cache_dir = Path(work_dir).absolute(), Path(cache_dir).absolute()
    fingerprint = headers_fingerprint(tools)
    extra = _digest_extra(tools, fingerprint)
    jobs_list = []
    for node in select_nodes(hls_nodes(model), names, "*_hls nodes"):
        node_dir = work_dir / node.name
        sources = generate_node_code(model, node, node_dir)
        digest = source_digest(sources, replace={str(node_dir): CODEGEN_PLACEHOLDER},
                               extra=extra)
        jobs_list.append(_Job(node, node_dir, sources, digest))
    builds = {j.node.name: _cached(j, cache_dir) for j in jobs_list}
    todo = [j for j in jobs_list if builds[j.node.name] is None]
    if todo:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cnpy_o = cnpy_object(tools, cache_dir)
        unique: dict[str, _Job] = {}
        for j in todo:  # identical layers (same sources) compile once
            unique.setdefault(j.digest, j)
        for b in run_parallel(lambda j: _compile(j, tools, cache_dir, cnpy_o),
                              list(unique.values()), jobs):
            builds[b.node] = b
        for j in todo:
            builds[j.node.name] = builds[j.node.name] or _cached(j, cache_dir)
    return builds  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# execution
# ------------------------------------------------------------------------------------------------
def _launcher(scratch: Path, executable: Path) -> Path:
    """A script that runs ``executable`` in its own directory with output to ``run.log``: FINN's
    ``exec_precompiled_singlenode_model`` then runs the shared binary with cwd = ``scratch``."""
    script = scratch / "node_model.sh"
    exe = str(executable).replace("'", "'\\''")
    script.write_text("#!/bin/sh\n"
                      'cd "$(dirname "$0")" || exit 97\n'
                      f"exec '{exe}' > {RUN_LOG} 2>&1\n")
    script.chmod(0o755)
    return script


def _finn_delegates_to_hlsbackend(inst) -> bool:
    """Whether ``inst``'s cppsim execution is exactly ``HLSBackend.execute_node``: its class
    does not override ``execute_node``, or overrides it with one of finn-plus 1.6.1's methods that
    hand cppsim straight to ``HLSBackend.execute_node`` (a further override falls back to FINN)."""
    from finn.custom_op.fpgadataflow.hls.elementwise_binary_hls import (
        ElementwiseBinaryOperation_hls,
    )
    from finn.custom_op.fpgadataflow.hls.globalaccpool_hls import GlobalAccPool_hls
    from finn.custom_op.fpgadataflow.hlsbackend import HLSBackend
    from finn.custom_op.fpgadataflow.replicate_stream import ReplicateStream

    delegating = {HLSBackend.execute_node, ReplicateStream.execute_node,
                  GlobalAccPool_hls.execute_node, ElementwiseBinaryOperation_hls.execute_node}
    return type(inst).execute_node in delegating


def _execute_like_hlsbackend(inst, context: dict[str, np.ndarray], scratch: Path,
                             streams: tuple[int, ...] | None = None) -> None:
    """``HLSBackend.execute_node``'s cppsim branch without its rtlsim input packing, which it
    computes and discards in cppsim mode (about 1 s per 25k-element input, 50x the binary).
    ``streams``: the inputs to write as npy files (default: every input with a stream)."""
    from qonnx.core.datatype import DataType

    node = inst.onnx_node
    for i, name in enumerate(node.input):
        if inst.get_instream_width(i) == 0 or (streams is not None and i not in streams):
            continue  # not a stream: no npy file
        x = context[name]
        if x.dtype not in (np.float32, np.float16):
            x = x.astype(np.float32)
        if tuple(x.shape) != tuple(inst.get_normal_input_shape(i)):
            raise VerificationError(f"cppsim of node {node.name}: input {name} has shape "
                                    f"{x.shape}, expected {tuple(inst.get_normal_input_shape(i))}")
        if inst.get_input_datatype(i) == DataType["BIPOLAR"]:
            x = (x + 1) / 2  # stored as binary
        np.save(scratch / f"input_{i}.npy", inst.fold_input_for_npy(x, i).copy())
    inst.exec_precompiled_singlenode_model()
    inst.npy_to_dynamic_output(context)
    for o, name in enumerate(node.output):
        if inst.get_output_datatype(o) == DataType["BIPOLAR"]:
            context[name] = 2 * context[name] - 1


WEIGHT_STREAM_MODES = ("dynamic", "external", "internal_decoupled", "external_mem")
"""MVAU memory modes whose cppsim reads the weights from ``input_1.npy`` (finn-plus 1.6.1)."""


def _is_streamed_weight_mvau(inst) -> bool:
    """``inst`` is finn-plus 1.6.1's ``MVAU_hls`` (not a subclass that may execute differently) in
    a mode that streams its weights from a file."""
    from finn.custom_op.fpgadataflow.hls.matrixvectoractivation_hls import MVAU_hls

    return (type(inst).execute_node is MVAU_hls.execute_node and
            inst.get_nodeattr("mem_mode") in WEIGHT_STREAM_MODES)


def _execute_mvau(inst, context: dict[str, np.ndarray], scratch: Path, weight_files: Path
                  ) -> None:
    """``MVAU_hls.execute_node``'s cppsim branch, except that the weight file is written once per
    distinct weight tensor and node configuration (by FINN's own ``make_weight_file``, into
    ``weight_files``) and then linked into ``scratch``; the activations go in and out as for every
    other HLS layer (:func:`_execute_like_hlsbackend`)."""
    node = inst.onnx_node
    w = np.asarray(context[node.input[1]], dtype=np.float32)
    attrs = sorted((a.name, str(a)) for a in node.attribute  # not where this run happens
                   if a.name != "exec_mode" and not re.search(r"(_dir|_path)(_\w+)?$", a.name))
    key = hashlib.sha256(w.tobytes() + repr((w.shape, attrs)).encode()).hexdigest()[:32]
    weight_files.mkdir(parents=True, exist_ok=True)
    cached = weight_files / f"{key}.npy"
    if not cached.is_file():
        with tempfile.TemporaryDirectory(dir=weight_files) as d:
            tmp = Path(d) / "w.npy"
            inst.make_weight_file(w.reshape(-1, w.shape[-1]), "decoupled_npy", str(tmp))
            os.replace(tmp, cached)  # atomic; a racing thread writes the same bytes
    target = scratch / "input_1.npy"
    target.unlink(missing_ok=True)
    try:
        os.link(cached, target)
    except OSError:
        shutil.copyfile(cached, target)
    _execute_like_hlsbackend(inst, context, scratch, streams=(0,))


def _retry_busy(run, attempts: int = 50) -> None:
    """``run()``, retried while exec'ing the freshly written launcher fails with ETXTBSY: when
    nodes run on several threads, a child forked by another thread can briefly hold the
    launcher's write descriptor (the classic fork/exec race; the file itself is complete)."""
    for k in range(attempts):
        try:
            return run()
        except OSError as err:
            if err.errno != errno.ETXTBSY or k == attempts - 1:
                raise
            time.sleep(0.02 * (k + 1))


def run_hls_node(model: ModelWrapper, node: NodeProto, context: dict[str, np.ndarray],
                 build: NodeBuild, scratch: Path, weight_files: Path | None = None) -> None:
    """Execute ``build``'s binary on ``node``'s inputs from ``context`` and store its outputs in
    ``context`` as FINN's python execution does (float32, normal output shapes, BIPOLAR as +-1).

    The inputs are written (folded, BIPOLAR as binary) and the outputs read back as FINN's own
    ``execute_node`` does in cppsim mode, into ``scratch``, where the binary runs. A binary that
    fails, or whose streams are read while empty or left holding data (the hardware would hang),
    raises :class:`VerificationError` naming the node.

    ``weight_files``: a directory where an MVAU's streamed weight file is kept per distinct weight
    tensor and node configuration, and linked into ``scratch``; FINN's ``execute_node`` writes it
    again on every call (about 0.6 s per node and input, most of a ``--sim`` run)."""
    scratch = Path(scratch).absolute()
    scratch.mkdir(parents=True, exist_ok=True)
    for stale in [*scratch.glob("input_*.npy"), *scratch.glob("output_*.npy"), scratch / RUN_LOG]:
        stale.unlink(missing_ok=True)
    launcher = _launcher(scratch, build.executable)
    inst = _custom_op(node, code_gen_dir_cppsim=str(scratch), executable_path=str(launcher),
                      exec_mode="cppsim")
    where = f"cppsim of node {node.name} ({node.op_type})"
    log = scratch / RUN_LOG
    try:
        if _finn_delegates_to_hlsbackend(inst):
            _retry_busy(lambda: _execute_like_hlsbackend(inst, context, scratch))
        elif weight_files is not None and _is_streamed_weight_mvau(inst):
            _retry_busy(lambda: _execute_mvau(inst, context, scratch, Path(weight_files)))
        else:
            _retry_busy(lambda: inst.execute_node(context, model.graph))
    except subprocess.CalledProcessError as err:
        raise VerificationError(f"{where} exited with status {err.returncode} "
                                f"(log: {log})") from None
    output = log.read_text(errors="replace") if log.is_file() else ""
    if STREAM_WARNING in output:
        first = next(ln for ln in output.splitlines() if STREAM_WARNING in ln)
        raise VerificationError(f"{where}: {first.strip()} (log: {log})")
    for out in node.output:
        context[out] = np.asarray(context[out], dtype=np.float32)
