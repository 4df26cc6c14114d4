"""``python flow/build.py --board BOARD [--model NAME | --onnx QONNX] ...``: QONNX -> FINN accelerator.

Three layers, as in qonnx's CLIs:

* :func:`build_model_wrapper`: the library function on objects (a QONNX ``ModelWrapper``, configs);
* :func:`build`: the file wrapper (resolves the model from the registry, a checkpoint or an ONNX
  file, and owns the output directory);
* :func:`main`: argument parsing only (also the ``sibnn-build`` console script).

The output directory is written atomically: the build runs in a temporary sibling directory that
replaces the old one with ``os.replace``/``rename`` only when it succeeded. Bad input (a
:class:`~quant_models.errors.UserError`) leaves nothing behind; any other failure keeps the
partial build as ``<output_dir>.failed/`` with its ``status.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python flow/build.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quant_models.errors import (  # noqa: E402
    ConfigError,
    OutputDirError,
    UserError,
    cli_errors,
)

from flow.config import (  # noqa: E402
    DEFAULT_MODEL,
    BoardConfig,
    BuildConfig,
    list_boards,
    load_board,
    resolve_build_config,
    write_config,
)


def export_registry_model(cfg: BuildConfig, path: Path):
    """Build (or load) the registry model and export it to cleaned QONNX at ``path``."""
    import torch
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    from quant_models import build_model
    from quant_models.registry import get_entry

    name = cfg.model or DEFAULT_MODEL
    entry = get_entry(name)
    torch.manual_seed(cfg.seed)
    if cfg.checkpoint:
        net, weights = build_model(name, pretrained=cfg.checkpoint), f"checkpoint {cfg.checkpoint}"
    elif entry.pretrained is not None and not cfg.model_overrides:
        net, weights = build_model(name, pretrained=True), f"shipped {entry.pretrained.file}"
    else:
        net = build_model(name, **cfg.model_overrides)
        weights = f"untrained, seed {cfg.seed} (no shipped checkpoint yet)"
    net.eval()
    c, h, w = net.spec.input_shape
    export_qonnx(net, torch.rand(1, c, h, w), str(path), dynamo=False)
    model = cleanup_model(ModelWrapper(str(path)))
    model.save(str(path))
    return model, weights


def load_onnx(path: str):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ONNX file {path} does not exist")
    try:
        model = ModelWrapper(str(p))
    except Exception as err:  # onnx raises DecodeError and friends
        raise ConfigError(f"{path} is not a readable ONNX model ({type(err).__name__})") from None
    from flow.steps import step_check_supported

    step_check_supported(model, None)  # with the file's own node names, before cleanup renames
    return cleanup_model(model)


def _check_output_dir(final: Path) -> None:
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"cannot create output directory {final}: {err.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"output directory {final} is not writable ({parent} is read-only)")
    if final.exists():
        if not final.is_dir():
            raise OutputDirError(f"output path {final} exists and is not a directory")
        if any(final.iterdir()) and not (final / "status.json").is_file():
            raise OutputDirError(f"output directory {final} exists and was not written by "
                                 "sibnn-build; refusing to replace it")
        if not os.access(final, os.W_OK):
            raise OutputDirError(f"output directory {final} is not writable")


def _relocate(root: Path, old: str, new: str) -> None:
    """Rewrite absolute paths FINN stored in node attributes after the directory moved."""
    from qonnx.core.modelwrapper import ModelWrapper

    for f in list(root.glob("*.onnx")) + list((root / "intermediate_models").glob("*.onnx")):
        m = ModelWrapper(str(f))
        changed = False
        for n in m.graph.node:
            for a in n.attribute:
                if a.type == a.STRING and old.encode() in a.s:
                    a.s = a.s.replace(old.encode(), new.encode())
                    changed = True
        if changed:
            m.save(str(f))


def build_model_wrapper(model, cfg: BuildConfig, board: BoardConfig, out_dir: Path, tools,
                        *, verifier=None, echo=print):
    """Run the selected steps on a cleaned QONNX ``model`` inside ``out_dir`` (exists, ours).

    Returns ``(final_model, records, ctx)``. Raises on any failure.
    """
    from flow.finn_env import dataflow_config, finn_session
    from flow.runner import run_steps
    from flow.steps import FlowContext, select_steps

    steps = select_steps(cfg.start_step, cfg.stop_step)
    with finn_session(out_dir / "finn_build", tools) as finn_steps:
        finn_cfg = dataflow_config(out_dir, board=board.board, fpga_part=board.fpga_part,
                                   clock_ns=board.synth_clk_period_ns,
                                   shell_flow_type=board.shell_flow_type.value,
                                   vivado=tools.has_vivado, mvau_wwidth_max=cfg.mvau_wwidth_max)
        ctx = FlowContext(cfg=cfg, board=board, tools=tools, finn_cfg=finn_cfg,
                          finn_steps=finn_steps, out_dir=out_dir)
        final, records = run_steps(model, steps, ctx, verifier, echo=echo)
    return final, records, ctx


def _keep_failed(work: Path, final: Path, error: str) -> None:
    """Keep a failed build as ``<final>.failed`` (with its status file); ``final`` is untouched."""
    import sys as _sys

    from flow.runner import write_status

    exc = _sys.exc_info()[1]
    write_status(work, "failed", error=f"{type(exc).__name__}: {exc}" if exc else error)
    failed = final.with_name(final.name + ".failed")
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(work, failed)


def _outputs(records, tools, stop_step: str | None) -> dict[str, str]:
    from flow.steps import STEPS

    done = {r.name: r.status for r in records}
    out = {}
    for s in STEPS:
        if s.output is None:
            continue
        if s.name in done:
            out[s.output] = "generated" if done[s.name] == "done" else done[s.name]
        elif s.vivado and not tools.has_vivado:
            out[s.output] = tools.skipped
        else:
            out[s.output] = f"not run (--stop-step {stop_step})" if stop_step else "not run"
    return out


def build(cfg: BuildConfig, *, echo=print, verifier_factory=None) -> Path:
    """The whole build for ``cfg``; returns the output directory. See the module docstring."""
    from qonnx.core.modelwrapper import ModelWrapper

    from flow import report
    from flow.finn_env import detect_tools
    from flow.runner import ChainVerifier, verification_pixels, write_status
    from flow.steps import STEPS, select_steps, step_check_supported

    board = load_board(cfg.board, cfg.budget_fraction)
    tools = detect_tools()
    if cfg.require_bitfile:
        tools.require_vivado("the bitfile (require_bitfile)")
    steps = select_steps(cfg.start_step, cfg.stop_step)
    if cfg.folding:
        from flow.folding import load_folding

        load_folding(cfg.folding)  # malformed file: fail before anything is written
    final = cfg.resolved_output_dir().absolute()
    _check_output_dir(final)
    if cfg.start_step and steps[0].name != STEPS[0].name:
        prev = STEPS[STEPS.index(steps[0]) - 1]
        prev_file = final / "intermediate_models" / f"{STEPS.index(prev):02d}_{prev.name}.onnx"
        if not prev_file.is_file():
            raise ConfigError(f"--start-step {cfg.start_step} needs {prev_file} from an earlier "
                              "build into the same output directory")
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    started = time.time()
    running = False
    try:
        if cfg.start_step and steps[0].name != STEPS[0].name:
            shutil.copytree(final, work, dirs_exist_ok=True)
            exported = ModelWrapper(str(work / "model.qonnx.onnx"))
            model = ModelWrapper(str(prev_file).replace(str(final), str(work)))
            weights = "from the previous build"
        elif cfg.onnx:
            exported = load_onnx(cfg.onnx)
            exported.save(str(work / "model.qonnx.onnx"))
            model, weights = exported, f"ONNX file {cfg.onnx}"
        else:
            exported, weights = export_registry_model(cfg, work / "model.qonnx.onnx")
            model = exported
        step_check_supported(exported, None)  # name unsupported layers before any work
        write_config(cfg, board, work)
        write_status(work, "running", model=cfg.model_name, board=board.name)
        echo(f"sibnn-build: {cfg.model_name} ({weights}) -> {board.name} [{final}]")
        if tools.has_vivado:
            echo(f"  Vivado: {tools.vivado}")
        else:
            echo(f"  Vivado not found ({tools.reason}): Vivado-only outputs are skipped")
        iname = exported.graph.input[0].name
        shape = tuple(exported.get_tensor_shape(iname)[1:])
        pixels = verification_pixels(shape, cfg.verify_inputs, cfg.seed)
        verifier = (verifier_factory or ChainVerifier)(pixels)
        baseline = verifier("export", exported)
        running = True
        final_model, records, ctx = build_model_wrapper(model, cfg, board, work, tools,
                                                        verifier=verifier, echo=echo)
        summary = report.build_summary(
            model_name=cfg.model_name, board=board, out_dir=work, final_model=final_model,
            records=records, outputs=_outputs(records, tools, cfg.stop_step),
            extra={"weights": weights, "folding": ctx.results.get("folding"),
                   "output_affine": final_model.get_metadata_prop("sibnn_output_affine"),
                   "input_layout": final_model.get_metadata_prop("sibnn_input_layout") or "NCHW",
                   "build_seconds": round(time.time() - started, 2)})
        summary["verification"].insert(0, baseline)
        report.write_summary(summary, work)
        write_status(work, "ok", model=cfg.model_name, board=board.name,
                     seconds=round(time.time() - started, 2))
    except UserError:
        if not running:  # bad input: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
            raise
        _keep_failed(work, final, "failed")
        raise
    except BaseException as err:
        _keep_failed(work, final, f"{type(err).__name__}: {err}")
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _relocate(final, str(work), str(final))
    echo(report.format_summary(report.load_summary(final)))
    return final


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from flow.steps import step_names

    p = argparse.ArgumentParser(
        prog="sibnn-build",
        description="Compile a QONNX network into a FINN dataflow accelerator, verified at every "
                    "stage that executes here.",
        epilog=f"boards: {', '.join(list_boards())}; steps: {', '.join(step_names())}")
    p.add_argument("--board", default=None, help="board id (hw_configs/<board>.yaml)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help=f"registry model (default {DEFAULT_MODEL})")
    src.add_argument("--onnx", default=None, help="QONNX file (e.g. a Brevitas export)")
    p.add_argument("--checkpoint", default=None, help="checkpoint for --model")
    p.add_argument("--output-dir", default=None, help="default build/<model>_<board>")
    p.add_argument("--config", default=None, help="build config YAML/JSON (keys of BuildConfig)")
    p.add_argument("--folding", default=None, help="FINN folding JSON (instead of auto folding)")
    p.add_argument("--start-step", default=None)
    p.add_argument("--stop-step", default=None)
    p.add_argument("--target-fps", type=int, default=None,
                   help="fold for this throughput instead of the fastest within budget")
    return p.parse_args(argv)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cfg = resolve_build_config(
        a.config, board=a.board, model=a.model, onnx=a.onnx, checkpoint=a.checkpoint,
        output_dir=a.output_dir, folding=a.folding, start_step=a.start_step,
        stop_step=a.stop_step, target_fps=a.target_fps)
    build(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
