"""The bad-input catalogue: what a new user can get wrong with ``sibnn-build`` (flow/build.py),
``sibnn-export`` and ``sibnn-train``, each case run as that user would run it.

Every case asserts exit status 2, exactly one line on the raw stderr naming the problem (no
third-party warning, no traceback), and that no file that existed before the command changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, assert_one_line_error, run_cli

BUILD = ["flow/build.py"]
EXPORT = ["-m", "flow.proof.export"]
TRAIN = ["-m", "quant_models.train.cli"]


def _tiny_train_config(tmp: Path) -> dict:
    return {"experiment": "t", "out_dir": str(tmp / "runs"), "num_threads": 1, "progress": False,
            "data": {"name": "digits", "val_size": 100, "train_subset": 128},
            "model": {"width": 4, "depth": [1]},
            "stages": [{"name": "s", "student": "resnet_w1a1", "epochs": 1, "batch_size": 64}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad input files, made once: each case picks what it needs."""
    t = tmp_path_factory.mktemp("bad")
    f = {"dir": t}
    (t / "empty.onnx").write_bytes(b"")
    (t / "garbage.onnx").write_bytes(b"\x00not an onnx model\xff" * 10)
    (t / "string_board.yaml").write_text("just a string\n")
    (t / "list_board.yaml").write_text("- 1\n- 2\n")
    good = yaml.safe_load((ROOT / "flow" / "boards" / "pynq-z2.yaml").read_text())
    (t / "clock_board.yaml").write_text(yaml.safe_dump({**good, "synth_clk_period_ns": "fast"}))
    (t / "cap_board.yaml").write_text(yaml.safe_dump(
        {**good, "capacity": {**good["capacity"], "LUT": "many"}}))
    (t / "shell_board.yaml").write_text(yaml.safe_dump({**good, "shell_flow_type": "usb"}))
    (t / "nopart_board.yaml").write_text(yaml.safe_dump(
        {k: v for k, v in good.items() if k != "fpga_part"}))
    (t / "frac_board.yaml").write_text(yaml.safe_dump({**good, "budget_fraction": 1.5}))
    (t / "bad.yaml").write_text("key: [unclosed\n")
    (t / "cfg_unknown.yaml").write_text("boardd: pynq-z2\n")
    (t / "cfg_type.yaml").write_text("verify_inputs: many\n")
    (t / "fold_bad.json").write_text("{not json")
    (t / "fold_list.json").write_text("[1, 2]")
    (t / "fold_node.json").write_text(json.dumps({"Defaults": {}, "MVAU_nope": {"PE": 1}}))
    (t / "a_file").write_text("I am a file\n")
    (t / "not_a_ckpt.pt").write_bytes(b"PK\x03\x04 truncated zip")
    import torch

    torch.save({"format_version": 1, "x": _Evil()}, t / "evil.pt")
    torch.save({"weights": torch.zeros(3)}, t / "foreign.pt")
    tc = _tiny_train_config(t)
    (t / "train_ok.yaml").write_text(yaml.safe_dump(tc))
    bad_stage = json.loads(json.dumps(tc))
    bad_stage["stages"][0]["student"] = "resnet50"
    (t / "train_model.yaml").write_text(yaml.safe_dump(bad_stage))
    (t / "train_type.yaml").write_text(yaml.safe_dump({**tc, "seed": "zero"}))
    (t / "train_key.yaml").write_text(yaml.safe_dump({**tc, "epochz": 3}))
    (t / "train_list.yaml").write_text("- a\n- b\n")
    (t / "train_crop.yaml").write_text(yaml.safe_dump(
        {**tc, "data": {**tc["data"], "crop_pad": 20}}))
    (t / "train_device.yaml").write_text(yaml.safe_dump({**tc, "device": "tpu"}))
    (t / "out_dir").mkdir()
    (t / "out_dir" / "keep.txt").write_text("precious\n")
    _boards_round_3(t, good)
    _models_round_3(t)
    return f


def _boards_round_3(t: Path, good: dict) -> None:
    """Board and build-config files that parse but name what does not exist."""
    for name, patch in {"part_board": {"fpga_part": "xc7z999clg400-9"},
                        "part_mismatch_board": {"fpga_part": "xczu7ev-ffvc1156-2-e"},
                        "finn_board_board": {"board": "Arty-A7"},
                        "zero_frac_board": {"budget_fraction": 0},
                        "neg_clock_board": {"synth_clk_period_ns": -5},
                        "over_cap_board": {"capacity": {**good["capacity"], "LUT": 999999}},
                        "extra_key_board": {"fpga_parts": "xc7z020clg400-1"}}.items():
        (t / f"{name}.yaml").write_text(yaml.safe_dump({**good, **patch}))
    (t / "cfg_sim_jobs.yaml").write_text("sim_jobs: 0\n")
    (t / "cfg_verify_zero.yaml").write_text("verify_inputs: 0\n")
    (t / "cfg_sim_inputs.yaml").write_text("sim_inputs: 500\n")
    (t / "cfg_overrides_ckpt.yaml").write_text(yaml.safe_dump(
        {"model_overrides": {"width": 8}, "checkpoint": str(t / "hashless.pt")}))


def _models_round_3(t: Path) -> None:
    """A float ONNX network, a QONNX one with float weights, and checkpoints without a payload
    hash or with a hash their tensors do not match."""
    import torch
    from brevitas.export import export_qonnx
    from brevitas.nn import QuantIdentity
    from torch import nn

    from quant_models import build_model
    from quant_models.checkpoint import make_checkpoint

    float_net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 26 * 26, 10)).eval()
    torch.onnx.export(float_net, torch.zeros(1, 1, 28, 28), str(t / "float.onnx"), dynamo=False)
    half = nn.Sequential(QuantIdentity(bit_width=8), nn.Flatten(), nn.Linear(784, 10)).eval()
    export_qonnx(half, torch.zeros(1, 1, 28, 28), export_path=str(t / "float_weights.onnx"),
                 dynamo=False)
    ckpt = make_checkpoint(build_model("resnet_w1a1", width=4, depth=[1], input_size=28))
    torch.save({k: v for k, v in ckpt.items() if k != "payload_sha256"}, t / "hashless.pt")
    state = dict(ckpt["state_dict"])
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 8)
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1.0
    torch.save({**ckpt, "state_dict": state}, t / "tampered.pt")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# (id, argv with {d} for the files directory, needles that the one error line must contain)
CASES: list[tuple[str, list[str], list[str]]] = [
    # -- sibnn-build: boards and configs
    ("build-unknown-board", BUILD + ["--board", "zx81"], ["zx81", "pynq-z2"]),
    ("build-board-string", BUILD + ["--board", "{d}/string_board.yaml"], ["must hold a mapping"]),
    ("build-board-list", BUILD + ["--board", "{d}/list_board.yaml"], ["not a list"]),
    ("build-board-clock-type", BUILD + ["--board", "{d}/clock_board.yaml"],
     ["synth_clk_period_ns: expected a number", "fast"]),
    ("build-board-capacity-type", BUILD + ["--board", "{d}/cap_board.yaml"],
     ["capacity.LUT", "many"]),
    ("build-board-shell", BUILD + ["--board", "{d}/shell_board.yaml"], ["shell_flow_type", "usb"]),
    ("build-board-missing-key", BUILD + ["--board", "{d}/nopart_board.yaml"],
     ["missing key fpga_part"]),
    ("build-board-fraction", BUILD + ["--board", "{d}/frac_board.yaml"], ["budget_fraction"]),
    ("build-config-missing", BUILD + ["--config", "{d}/nope.yaml"], ["nope.yaml"]),
    ("build-config-malformed", BUILD + ["--config", "{d}/bad.yaml"], ["malformed", "bad.yaml"]),
    ("build-config-unknown-key", BUILD + ["--config", "{d}/cfg_unknown.yaml"], ["boardd"]),
    ("build-config-type", BUILD + ["--config", "{d}/cfg_type.yaml"], ["verify_inputs", "many"]),
    ("build-config-string", BUILD + ["--config", "{d}/string_board.yaml"],
     ["must hold a mapping"]),
    ("build-target-fps-zero", BUILD + ["--target-fps", "0"], ["target_fps must be >= 1"]),
    ("build-target-fps-negative", BUILD + ["--target-fps", "-30"], ["target_fps must be >= 1"]),
    ("build-unknown-model", BUILD + ["--model", "resnet50"], ["resnet50", "si_resnet_w1a1"]),
    ("build-unknown-step", BUILD + ["--start-step", "synthesise"], ["synthesise"]),
    ("build-unknown-stop-step", BUILD + ["--stop-step", "bitstream"], ["bitstream"]),
    ("build-onnx-missing", BUILD + ["--onnx", "{d}/nope.onnx"], ["nope.onnx", "does not exist"]),
    ("build-onnx-empty", BUILD + ["--onnx", "{d}/empty.onnx"], ["empty.onnx", "empty (0 bytes)"]),
    ("build-onnx-garbage", BUILD + ["--onnx", "{d}/garbage.onnx"], ["garbage.onnx"]),
    ("build-onnx-with-checkpoint", BUILD + ["--onnx", "{d}/garbage.onnx", "--checkpoint",
                                            "{d}/x.pt"], ["--checkpoint"]),
    ("build-checkpoint-missing", BUILD + ["--checkpoint", "{d}/nope.pt"], ["nope.pt"]),
    ("build-checkpoint-garbage", BUILD + ["--checkpoint", "{d}/not_a_ckpt.pt"],
     ["not_a_ckpt.pt", "corrupt"]),
    ("build-checkpoint-python-objects", BUILD + ["--checkpoint", "{d}/evil.pt"],
     ["evil.pt", "contains Python objects"]),
    ("build-checkpoint-foreign", BUILD + ["--checkpoint", "{d}/foreign.pt"],
     ["foreign.pt", "not a sibnn checkpoint"]),
    ("build-folding-missing", BUILD + ["--folding", "{d}/nope.json"], ["nope.json"]),
    ("build-folding-malformed", BUILD + ["--folding", "{d}/fold_bad.json"], ["fold_bad.json"]),
    ("build-folding-list", BUILD + ["--folding", "{d}/fold_list.json"], ["fold_list.json"]),
    ("build-output-dir-is-file", BUILD + ["--output-dir", "{d}/a_file"], ["a_file"]),
    ("build-output-dir-foreign", BUILD + ["--output-dir", "{d}/out_dir"],
     ["out_dir", "not written by sibnn"]),
    ("build-output-dir-under-file", BUILD + ["--output-dir", "{d}/a_file/sub"], ["a_file"]),
    ("build-output-dir-proc", BUILD + ["--output-dir", "/proc/sibnn_build"], ["/proc"]),
    ("build-model-and-onnx", BUILD + ["--model", "resnet_w1a1", "--onnx", "{d}/x.onnx"],
     ["not allowed with", "--help"]),
    ("build-unknown-flag", BUILD + ["--bord", "pynq-z2"], ["--bord"]),
    ("export-missing-out", EXPORT, ["--out"]),
    ("train-missing-config", TRAIN, ["--config"]),
    ("train-bad-int-flag", TRAIN + ["--config", "{d}/train_ok.yaml", "--out-dir"], ["--out-dir"]),
    # -- sibnn-export
    ("export-n-inputs-zero", EXPORT + ["--out", "{d}/exp", "--n-inputs", "0"],
     ["--n-inputs must be >= 1"]),
    ("export-n-inputs-negative", EXPORT + ["--out", "{d}/exp", "--n-inputs", "-5"],
     ["--n-inputs must be >= 1"]),
    ("export-unknown-model", EXPORT + ["--out", "{d}/exp", "--model", "resnet50"], ["resnet50"]),
    ("export-onnx-missing", EXPORT + ["--out", "{d}/exp", "--onnx", "{d}/nope.onnx"],
     ["nope.onnx"]),
    ("export-onnx-garbage", EXPORT + ["--out", "{d}/exp", "--onnx", "{d}/garbage.onnx"],
     ["garbage.onnx"]),
    ("export-onnx-and-checkpoint", EXPORT + ["--out", "{d}/exp", "--onnx", "{d}/garbage.onnx",
                                             "--checkpoint", "{d}/x.pt"], ["--checkpoint"]),
    ("export-checkpoint-missing", EXPORT + ["--out", "{d}/exp", "--checkpoint", "{d}/nope.pt"],
     ["nope.pt"]),
    ("export-checkpoint-python-objects", EXPORT + ["--out", "{d}/exp", "--checkpoint",
                                                   "{d}/evil.pt"], ["contains Python objects"]),
    ("export-out-is-file", EXPORT + ["--out", "{d}/a_file"], ["a_file"]),
    ("export-out-foreign-dir", EXPORT + ["--out", "{d}/out_dir"], ["out_dir"]),
    # -- sibnn-train
    ("train-config-missing", TRAIN + ["--config", "{d}/nope.yaml"], ["nope.yaml"]),
    ("train-config-malformed", TRAIN + ["--config", "{d}/bad.yaml"], ["bad.yaml", "YAML"]),
    ("train-config-list", TRAIN + ["--config", "{d}/train_list.yaml"], ["mapping"]),
    ("train-unknown-model", TRAIN + ["--config", "{d}/train_model.yaml"], ["resnet50"]),
    ("train-wrong-type", TRAIN + ["--config", "{d}/train_type.yaml"], ["seed", "zero"]),
    ("train-unknown-key", TRAIN + ["--config", "{d}/train_key.yaml"], ["epochz"]),
    ("train-crop-pad", TRAIN + ["--config", "{d}/train_crop.yaml"], ["crop_pad"]),
    ("train-device", TRAIN + ["--config", "{d}/train_device.yaml"], ["tpu"]),
    ("train-set-not-key-value", TRAIN + ["--config", "{d}/train_ok.yaml", "--set", "seed"],
     ["KEY=VALUE"]),
    ("train-set-unknown-stage", TRAIN + ["--config", "{d}/train_ok.yaml", "--set",
                                         "stages.ghost.epochs=2"], ["ghost"]),
    ("train-set-bad-epochs", TRAIN + ["--config", "{d}/train_ok.yaml", "--set",
                                      "stages.s.epochs=0"], ["epochs"]),
    ("train-out-dir-is-file", TRAIN + ["--config", "{d}/train_ok.yaml", "--out-dir",
                                       "{d}/a_file"], ["a_file", "not a directory"]),
    ("train-out-dir-proc", TRAIN + ["--config", "{d}/train_ok.yaml", "--out-dir",
                                    "/proc/sibnn_runs"], ["/proc"]),
    ("train-export-is-dir", TRAIN + ["--config", "{d}/train_ok.yaml", "--out-dir", "{d}/r1",
                                     "--export", "{d}/out_dir"], ["--export", "is a directory"]),
    ("train-export-under-file", TRAIN + ["--config", "{d}/train_ok.yaml", "--out-dir", "{d}/r2",
                                         "--export", "{d}/a_file/m.pt"], ["a_file"]),
    ("train-resume-nothing", TRAIN + ["--config", "{d}/train_ok.yaml", "--out-dir", "{d}/r3",
                                      "--resume"], ["no run to resume"]),
    # -- round 3: parts FINN does not know, float graphs, unverified checkpoints, more keys
    ("build-board-unknown-part", BUILD + ["--board", "{d}/part_board.yaml"],
     ["xc7z999clg400-9", "not a part FINN knows"]),
    ("build-board-part-of-another-board", BUILD + ["--board", "{d}/part_mismatch_board.yaml"],
     ["xczu7ev-ffvc1156-2-e", "Pynq-Z2", "xc7z020clg400-1"]),
    ("build-board-unknown-finn-board", BUILD + ["--board", "{d}/finn_board_board.yaml"],
     ["Arty-A7", "not a board FINN knows"]),
    ("build-board-capacity-over-table", BUILD + ["--board", "{d}/over_cap_board.yaml"],
     ["LUT 999999 > 53200"]),
    ("build-board-zero-fraction", BUILD + ["--board", "{d}/zero_frac_board.yaml"],
     ["budget_fraction"]),
    ("build-board-negative-clock", BUILD + ["--board", "{d}/neg_clock_board.yaml"],
     ["synth_clk_period_ns must be positive"]),
    ("build-board-misspelt-key", BUILD + ["--board", "{d}/extra_key_board.yaml"],
     ["fpga_parts"]),
    ("build-config-sim-jobs", BUILD + ["--config", "{d}/cfg_sim_jobs.yaml"], ["sim_jobs"]),
    ("build-config-verify-zero", BUILD + ["--config", "{d}/cfg_verify_zero.yaml"],
     ["verify_inputs must be >= 1"]),
    ("build-config-sim-inputs", BUILD + ["--config", "{d}/cfg_sim_inputs.yaml"],
     ["sim_inputs", "500"]),
    ("build-config-overrides-and-checkpoint", BUILD + ["--config", "{d}/cfg_overrides_ckpt.yaml"],
     ["cannot be combined with a checkpoint"]),
    ("build-sim-unknown-mode", BUILD + ["--sim", "spice"], ["--sim", "spice"]),
    ("build-sim-stops-before-codegen", BUILD + ["--sim", "cppsim", "--stop-step", "fold"],
     ["stops before it"]),
    ("build-start-step-without-build", BUILD + ["--start-step", "fold", "--output-dir",
                                                "{d}/fresh"], ["needs an earlier build"]),
    ("build-onnx-is-directory", BUILD + ["--onnx", "{d}/out_dir"], ["out_dir"]),
    ("build-onnx-float-network", BUILD + ["--onnx", "{d}/float.onnx", "--output-dir", "{d}/f1"],
     ["no quantizers", "Conv (/0/Conv)", "Gemm (/3/Gemm)"]),
    ("build-onnx-float-weights", BUILD + ["--onnx", "{d}/float_weights.onnx", "--output-dir",
                                          "{d}/f2"], ["float op(s)", "Gemm (/2/Gemm)"]),
    ("build-checkpoint-hashless-strict", BUILD + ["--model", "resnet_w1a1", "--checkpoint",
                                                  "{d}/hashless.pt", "--strict-checkpoint",
                                                  "--output-dir", "{d}/h1"],
     ["hashless.pt", "no payload_sha256", "--strict-checkpoint"]),
    ("build-checkpoint-tampered", BUILD + ["--model", "resnet_w1a1", "--checkpoint",
                                           "{d}/tampered.pt", "--output-dir", "{d}/h2"],
     ["tampered.pt", "is corrupt: its tensors hash to"]),
    ("export-onnx-float-network", EXPORT + ["--out", "{d}/exp", "--onnx", "{d}/float.onnx"],
     ["no quantizers", "Relu"]),
    ("export-checkpoint-hashless-strict", EXPORT + ["--out", "{d}/exp", "--checkpoint",
                                                    "{d}/hashless.pt", "--strict-checkpoint"],
     ["no payload_sha256"]),
    ("export-checkpoint-tampered", EXPORT + ["--out", "{d}/exp", "--checkpoint",
                                             "{d}/tampered.pt"], ["is corrupt"]),
    ("train-missing-data-dir", TRAIN + ["--config", "{d}/train_ok.yaml", "--set",
                                        "data.name=fmnist", "--data-dir", "{d}/nodata"],
     ["nodata"]),
]


@pytest.fixture(scope="module")
def ran(files) -> dict:
    """Every case's process, run a few at a time (each start pays torch's import), with a
    snapshot of the input files before and after all of them."""
    from concurrent.futures import ThreadPoolExecutor

    d = files["dir"]
    before = _snapshot(d)
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = dict(zip([c[0] for c in CASES], pool.map(
            lambda c: run_cli([a.replace("{d}", str(d)) for a in c[1]], timeout=600), CASES),
            strict=True))
    return {"procs": procs, "before": before, "after": _snapshot(d), "dir": d}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(ran, case):
    name, _, needles = case
    proc = ran["procs"][name]
    assert_one_line_error(proc, *needles)


def test_bad_inputs_change_no_file_and_leave_nothing_half_written(ran):
    assert ran["after"] == ran["before"]
    d = ran["dir"]
    for name in ("exp", "r1", "r2", "r3", "runs", "fresh", "f1", "f2", "h1", "h2"):
        assert not (d / name).exists(), name
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_catalogue_covers_the_three_tools():
    tools = {c[1][0] if c[1][0] != "-m" else c[1][1] for c in CASES}
    assert tools == {"flow/build.py", "flow.proof.export", "quant_models.train.cli"}
    assert len(CASES) >= 80
