"""Runs on disk read into records: the ablation's own stages, finished ``sibnn-train`` runs
(``--record-runs``) and the output of a device ablation (``--record-device-run``)."""

from __future__ import annotations

import json
import re
import statistics
import tarfile
from pathlib import Path

from bench.ablation.stats import summarise
from quant_models import load_checkpoint
from quant_models.train.config import build_config
from quant_models.train.resume import exp_dir
from sibnn_base.errors import ConfigError
from sibnn_base.typed import load_mapping, to_dict


def collect(cfg) -> dict:
    """Final metrics of every finished stage of one seed's experiment (read from its final.pt)."""
    out = {}
    for v in [st.name for st in cfg.stages if st.name != "staged_act"]:
        final = exp_dir(cfg) / v / "final.pt"
        if final.exists():
            m = load_checkpoint(final)["metrics"]
            out[v] = {k: m.get(k) for k in ("test_acc", "val_acc", "val_acc_before_bn_recalibration",
                                            "epochs", "train_time_s")}
            out[v]["device"] = cfg.device
    return out


RUN_NAME_KEYS = ("experiment", "out_dir")
"""Config keys that name a run and where it lives, not how it trains: not part of a recipe."""


def record_run(run_dir: Path) -> dict:
    """One finished ``sibnn-train`` experiment (``runs/<experiment>``): its last stage's final
    metrics and everything that defines its budget and recipe, read from its own files."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"--record-runs: {run_dir} is not a training run (no config.yaml)")
    cfg = build_config(load_mapping(cfg_path))
    stage = cfg.stages[-1]
    lines = (run_dir / stage.name / "metrics.jsonl")
    rows = [json.loads(x) for x in lines.read_text().splitlines()] if lines.is_file() else []
    if not rows or not rows[-1].get("final"):
        raise ConfigError(f"--record-runs: stage {stage.name!r} of {run_dir} has not finished "
                          f"(resume it with sibnn-train --resume)")
    *epochs, final = rows
    recipe = {k: v for k, v in to_dict(cfg).items() if k not in RUN_NAME_KEYS}
    keep = ("val_acc", "test_acc", "val_acc_raw", "test_acc_raw", "ema_decay", "train_time_s",
            "select", "selected_epoch", "best_val_epoch", "val_acc_last", "test_acc_last")
    # the network itself, as its checkpoint describes it: registry defaults may change later
    model_args = load_checkpoint(run_dir / stage.name / "final.pt")["model_args"]
    return {"student": stage.student, "model_args": model_args, "stage": stage.name,
            "epochs": stage.epochs,
            "train_images": cfg.data.train_subset or f"all but the {cfg.data.val_size} val",
            "seed": cfg.seed, "device": cfg.device, "threads": cfg.num_threads,
            "channels_last": cfg.channels_last,
            **{k: final[k] for k in keep if k in final},
            "val_acc_by_epoch": [r["val_acc"] for r in epochs],
            "recipe": recipe}


def device_run(out_dir: Path, note: str, discard: list[str]) -> dict:
    """A device ablation's output (``$OUT`` of ``scripts/device_ablation.sh``: its
    ``accuracy.json`` and ``runs.tgz``), complete or not: the stages that finished (but those
    named in ``discard``, e.g. runs known to be wrong), every stage's progress (epochs done,
    median seconds per epoch and per step after the first epoch, last val accuracy) and
    ``note``."""
    missing = [f for f in ("accuracy.json", "runs.tgz") if not (out_dir / f).is_file()]
    if missing:
        raise ConfigError(f"--record-device-run: {out_dir} has no {' or '.join(missing)} (give "
                          "the folder scripts/device_ablation.sh wrote to, its $OUT)")
    dev = json.loads((out_dir / "accuracy.json").read_text())
    progress: dict[str, dict] = {}
    with tarfile.open(out_dir / "runs.tgz") as tar:
        for m in tar.getmembers():
            if not m.name.endswith("metrics.jsonl"):
                continue
            exp, stage = Path(m.name).parts[-3:-1]
            rows = [json.loads(x) for x in tar.extractfile(m).read().decode().splitlines()]
            ep = [r for r in rows if "epoch" in r and not r.get("final")]
            if not ep:
                continue
            later = ep[1:] or ep
            progress.setdefault(exp.rsplit("_s", 1)[-1], {})[stage] = {
                "epochs_done": len(ep), "first_epoch_s": ep[0]["epoch_time_s"],
                "epoch_s_median": statistics.median(r["epoch_time_s"] for r in later),
                "step_s_median": statistics.median(r["step_time_s"] for r in later),
                "last_val_acc": ep[-1]["val_acc"]}
    finished = {seed: {v: m for v, m in r.items() if v not in discard}
                for seed, r in dev["per_seed"].items()}
    summary = summarise({int(k): v for k, v in finished.items()}, [int(k) for k in finished])
    rec = {"run": dev["run"], "complete": dev["complete"], "discarded": discard, "note": note,
           **_script_log(out_dir / "ablation.log"),
           "finished": finished, "summary": summary,
           "progress": {k: progress[k] for k in sorted(progress)}}
    return rec


def _script_log(path: Path) -> dict:
    """What ``scripts/device_ablation.sh`` logged about itself: whether CUDA MPS was on, and its
    wall time (absent from logs of before it logged them)."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    out: dict = {}
    if "] MPS on" in text:
        out["mps"] = True
    elif "] MPS unavailable" in text:
        out["mps"] = False
    walls = re.findall(r"\] wall (\d+) s, exit (-?\d+)", text)
    if walls:
        out["script_wall_s"], out["script_exit"] = int(walls[-1][0]), int(walls[-1][1])
    return out
