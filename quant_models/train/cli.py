"""``sibnn-train``: train a schedule of stages from a YAML config.

    sibnn-train --config configs/fmnist_si_resnet.yaml [--set stages.student.epochs=3] [--resume]
    torchrun --nproc_per_node 2 -m quant_models.train.cli --config ...

Three layers (qonnx style): :func:`~quant_models.train.loop.train` works on a config object,
:func:`train_file` on a file, :func:`main` parses arguments.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m`: as the console script, signal handlers come first,
    from sibnn_base.launch import run  # then this module's imports (torch: seconds), then main

    sys.exit(run("quant_models.train.cli:main"))

import argparse
import shutil
from pathlib import Path

import torch.distributed as dist

from sibnn_base.atomic import atomic_write, check_writable_dir
from sibnn_base.errors import ArgumentParser, OutputDirError, cli_errors

from .config import TrainConfig, load_config, parse_set
from .loop import train
from .resume import stage_dir


def export_final(cfg: TrainConfig, dest: str | Path) -> Path:
    """Copy the last stage's ``final.pt`` (model only, self-describing) to ``dest`` atomically."""
    src = stage_dir(cfg, cfg.stages[-1].name) / "final.pt"
    with open(src, "rb") as fh_src:
        return atomic_write(dest, lambda fh: shutil.copyfileobj(fh_src, fh))


def check_export_target(dest: str | Path) -> None:
    """Refuse an ``--export`` path that cannot take the model, before any epoch is trained."""
    dest = Path(dest)
    if dest.is_dir():
        raise OutputDirError(f"--export {dest} is a directory; give a file path such as "
                             f"{dest / 'model.pt'}")
    check_writable_dir(dest.parent, f"--export {dest}")


def train_file(config: str | Path, sets: list[str] = (), *, resume: bool = False,
               data_dir: str | None = None, out_dir: str | None = None,
               export: str | Path | None = None) -> dict[str, dict]:
    """Load ``config`` (YAML), apply ``--set`` overrides and train; returns per-stage metrics.
    With ``export``, the last stage's model is copied there (e.g. into quant_models/pretrained)."""
    overrides = parse_set(list(sets))
    if data_dir is not None:
        overrides.append(("data.data_dir", data_dir))
    if out_dir is not None:
        overrides.append(("out_dir", out_dir))
    cfg = load_config(config, overrides)
    if export is not None:
        check_export_target(export)
    results = train(cfg, resume=resume)
    if export is not None and (not dist.is_initialized() or dist.get_rank() == 0):
        export_final(cfg, export)
    return results


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="sibnn-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML experiment config (configs/*.yaml)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set seed=1 --set stages.student.epochs=5 "
                        "(stages.*.KEY sets it in every stage); repeatable")
    p.add_argument("--data-dir", help="dataset directory (same as --set data.data_dir=...)")
    p.add_argument("--out-dir", help="root of the run directories (same as --set out_dir=...)")
    p.add_argument("--export", metavar="PATH",
                   help="copy the last stage's final model (no optimizer state) to PATH")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in <out_dir>/<experiment> exactly where it stopped")
    args = p.parse_args(argv)
    try:
        train_file(args.config, args.sets, resume=args.resume, data_dir=args.data_dir,
                   out_dir=args.out_dir, export=args.export)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
