"""Training: config handling, a digits smoke run, exact resume, DDP on CPU, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from quant_models import build_model, load_checkpoint, save_checkpoint
from quant_models.augment import cutout
from quant_models.data import load_splits
from quant_models.train import build_config, load_config, train
from quant_models.train.cli import main as train_main
from quant_models.train.compile_check import LOSS_RTOL, _same_direction, checked_compile
from quant_models.train.config import TapNorm
from quant_models.train.evaluation import evaluate
from quant_models.train.evaluation import validate as real_validate
from quant_models.train.losses import block_mse, logit_kd, normalise_tap
from sibnn_base.errors import ConfigError, OutputDirError
from sibnn_base.typed import to_dict

REPO = Path(__file__).resolve().parents[2]
TIME_KEYS = ("epoch_time_s", "step_time_s", "train_time_s")


def tiny(out_dir, **top) -> dict:
    """A two-stage digits experiment that trains in seconds."""
    d = {
        "experiment": "tiny", "out_dir": str(out_dir), "seed": 0, "num_threads": 1,
        "progress": False,
        "data": {"name": "digits", "val_size": 300, "train_subset": 512},
        "model": {"width": 8, "depth": [1, 1]},
        "eval_batch_size": 400,
        "stages": [
            {"name": "teacher", "student": "si_resnet_fp", "epochs": 3, "lr": 0.01,
             "batch_size": 64},
            {"name": "student", "student": "si_resnet_w1a1", "teacher": "teacher",
             "init_from": "teacher", "epochs": 2, "lr": 0.005, "batch_size": 64,
             "loss_weights": {"ce": 1.0, "kd": 1.0, "temperature": 2.0, "block": 1.0}},
        ],
    }
    d.update(top)
    return d


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip_time(rs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rs]


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = train_main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# -- losses ---------------------------------------------------------------------------------------

def test_losses_are_scale_free_and_zero_at_match():
    torch.manual_seed(0)
    t = torch.randn(4, 8, 5, 5)
    for how in TapNorm:
        n = normalise_tap(t, how)
        assert torch.allclose(n.norm(dim=1), torch.ones(4))
        assert float(block_mse({"a": 7 * t}, {"a": t}, {"a": 1.0}, how)) < 1e-10
        assert float(block_mse({"a": -t}, {"a": t}, {"a": 1.0}, TapNorm.L2)) == pytest.approx(4.0)
    logits = torch.randn(4, 10)
    assert float(logit_kd(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(logit_kd(logits, -logits, 4.0)) > 0


# -- config ---------------------------------------------------------------------------------------

def test_config_roundtrip_and_overrides(tmp_path):
    cfg = build_config(tiny(tmp_path), [("stages.student.epochs", 5), ("stages.*.lr", 0.1),
                                        ("data.hflip", True)])
    assert cfg.stage("student").epochs == 5 and cfg.stage("teacher").lr == 0.1
    assert cfg.data.hflip is True
    assert to_dict(build_config(to_dict(cfg))) == to_dict(cfg)
    shipped = load_config(REPO / "configs" / "fmnist_si_resnet.yaml")
    assert [s.name for s in shipped.stages] == ["teacher", "student"]
    assert shipped.stage("student").loss_weights.block > 0


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.stages and to_dict(build_config(to_dict(cfg))) == to_dict(cfg)


@pytest.mark.parametrize("key, value, match", [
    ("stages.teacher.lrr", 1, "unknown key.*lrr"),
    ("data.nmae", "x", "unknown key.*nmae"),
    ("stages.teacher.epochs", "three", "expected an integer"),
    ("stages.student.teacher", "nobody", "neither an earlier stage"),
    ("stages.student.loss_weights.kdd", 1, "unknown key.*kdd"),
    ("stages.teacher.optimizer", "lion", "not one of"),
    ("model.widht", 4, r"unknown key\(s\) model\.widht"),
    ("stages.student.model.widht", 4, r"unknown key\(s\) stages\.student\.model\.widht"),
    ("stages.teacher.model.float_weights", True, "teacher.*float_weights only applies to a binary"),
    ("model.width", 0, "stage .teacher.: invalid model arguments.*width must be >= 1"),
    ("stages.ghost.epochs", 1, "no stage named"),
    ("data.crop_pad", 9, "data.crop_pad must be in 0..8"),
    ("stages.teacher.crop_pad", -1, "crop_pad must be in 0..8"),
    ("stages.student.ema_decay", 1.0, "ema_decay must lie in"),
    ("stages.teacher.grad_clip", 0, "grad_clip must be > 0"),
    ("stages.teacher.momentum", 1.0, r"momentum must lie in \[0, 1\)"),
    ("stages.student.select", "best", "not one of"),
    ("device", "tpu", "device 'tpu'"),
    ("device", "cuda:7" if torch.cuda.is_available() else "cuda", "cuda"),
])
def test_config_errors(tmp_path, key, value, match):
    with pytest.raises(ConfigError, match=match):
        build_config(tiny(tmp_path), [(key, value)])


def test_teacher_must_be_fp_twin(tmp_path):
    d = tiny(tmp_path)
    d["stages"][0]["student"] = "resnet_w1a1"
    with pytest.raises(ConfigError, match="teacher of si_resnet_w1a1 is 'si_resnet_fp'"):
        build_config(d)


# -- training -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    results = train(build_config(tiny(out)), log=lambda *_: None)
    return out / "tiny", results


def test_smoke_loss_falls(tiny_run):
    run, results = tiny_run
    teacher = rows(run / "teacher" / "metrics.jsonl")
    student = rows(run / "student" / "metrics.jsonl")
    assert [r["epoch"] for r in teacher[:-1]] == [1, 2, 3] and teacher[-1]["final"]
    assert teacher[2]["train_loss"] < teacher[0]["train_loss"]
    assert teacher[2]["val_acc"] > 30.0  # chance is 10 %
    assert student[1]["train_loss"] < student[0]["train_loss"]
    assert {"train_ce", "train_kd", "train_block"} <= set(student[0])
    assert results["student"]["test_acc"] == student[-1]["test_acc"]


def test_every_stage_ends_with_bn_statistics_re_estimated(tiny_run):
    run, results = tiny_run
    for stage in ("teacher", "student"):  # the FP teacher too: a stale teacher misleads the KD
        *epochs, final = rows(run / stage / "metrics.jsonl")
        assert final["bn_recalibrated_on"] == 512
        # every epoch is validated as shipped (re-estimated statistics), the stale number kept
        assert all("val_acc_running_bn" in r for r in epochs)
        assert final["val_acc_before_bn_recalibration"] == epochs[-1]["val_acc_running_bn"]
        assert results[stage]["val_acc"] == final["val_acc"] == epochs[-1]["val_acc"]


def test_export_copies_the_final_model_with_plain_file_mode(tiny_run, tmp_path):
    import os
    import stat

    from quant_models.train.cli import export_final

    run, _ = tiny_run
    old = os.umask(0o022)
    try:
        dest = export_final(build_config(tiny(run.parent)), tmp_path / "m" / "student.pt")
    finally:
        os.umask(old)
    assert dest.read_bytes() == (run / "student" / "final.pt").read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert not list(dest.parent.glob("*.tmp"))


def test_recalibrate_bn_gives_the_average_of_batch_statistics():
    from quant_models.data import Split
    from quant_models.train.evaluation import recalibrate_bn

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    split = Split(x=torch.rand(96, 1, 8, 8) * 3 + 1, y=torch.zeros(96, dtype=torch.long))
    recalibrate_bn(net, split, samples=64, batch_size=32)  # two batches; the last 32 unused
    bn = net[1]
    with torch.no_grad():
        z = net[0](split.x[:64])
    batches = z.split(32)
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.transpose(0, 1).flatten(1).var(1) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)  # float statistics, not an exactness check
    assert torch.allclose(bn.running_var, var, rtol=1e-4)
    assert bn.momentum == 0.1 and not net.training


def test_run_directory_contents(tiny_run):
    run, _ = tiny_run
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["stages"][1]["loss_weights"]["tap_norm"] == "l2"
    assert json.loads((run / "results.json").read_text()).keys() == {"teacher", "student"}
    ck = load_checkpoint(run / "student" / "last.pt", expected_arch="si_resnet_w1a1")
    assert ck["epoch"] == 2 and ck["optimizer"] is not None
    model = build_model("si_resnet_w1a1", pretrained=run / "student" / "final.pt")
    assert not model.training and model.spec.width == 8
    assert not list((run / "student").glob("*.tmp"))


def test_resume_is_exact(tmp_path):
    """Interrupt after student epoch 1 (of 2), resume, and compare with an uninterrupted run."""
    full = train(build_config(tiny(tmp_path / "a")), log=lambda *_: None)

    class Stop(Exception):
        pass

    def stop_after_student_epoch_1(msg):
        if msg.startswith("[student] epoch 1/"):
            raise Stop

    cfg_b = build_config(tiny(tmp_path / "b"))
    with pytest.raises(Stop):
        train(cfg_b, log=stop_after_student_epoch_1)
    assert not (tmp_path / "b/tiny/student/final.pt").exists()
    resumed = train(cfg_b, resume=True, log=lambda *_: None)

    assert strip_time([resumed["student"]]) == strip_time([full["student"]])
    a, b = tmp_path / "a/tiny/student", tmp_path / "b/tiny/student"
    assert strip_time(rows(a / "metrics.jsonl")) == strip_time(rows(b / "metrics.jsonl"))
    sa = load_checkpoint(a / "final.pt")["state_dict"]
    sb = load_checkpoint(b / "final.pt")["state_dict"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_other_config_is_one_line_error(tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    d = tiny(tmp_path / "runs")
    d["stages"] = d["stages"][:1]
    d["stages"][0]["epochs"] = 1
    d["data"]["train_subset"] = 128
    cfg_path.write_text(yaml.safe_dump(d))
    assert run_cli(capsys, "--config", cfg_path, "--export", tmp_path / "m" / "exp.pt")[0] == 0
    exported = build_model("si_resnet_fp", pretrained=tmp_path / "m" / "exp.pt")
    assert not exported.training
    assert load_checkpoint(tmp_path / "m" / "exp.pt")["optimizer"] is None
    rc, err = run_cli(capsys, "--config", cfg_path)
    assert rc == 2 and "--resume" in err and err.count("\n") == 1
    rc, err = run_cli(capsys, "--config", cfg_path, "--resume", "--set", "seed=1")
    assert rc == 2 and err.count("\n") == 1
    assert "another config" in err and "seed" in err
    # a runtime-only key may change on resume; the completed stage is not retrained
    rc, err = run_cli(capsys, "--config", cfg_path, "--resume", "--set", "num_threads=2")
    assert rc == 0, err


def test_diverged_training_stops_with_one_line_and_saves_nothing_of_that_epoch(tmp_path, capsys):
    """A loss that turns NaN/inf stops the run at the end of that epoch with a one-line error
    naming the stage and the fix, instead of training every remaining epoch on NaN; the epoch is
    not checkpointed (``last.pt`` would otherwise hold NaN weights for a ``--resume``)."""
    cfg_path = tmp_path / "c.yaml"
    d = tiny(tmp_path / "runs")
    d["stages"] = [{**d["stages"][0], "epochs": 3, "optimizer": "sgd", "lr": 1e30}]
    cfg_path.write_text(yaml.safe_dump(d))
    rc, err = run_cli(capsys, "--config", cfg_path)
    assert rc == 2 and err.count("\n") == 1, err
    assert "stage 'teacher' diverged" in err and "epoch 1/3" in err
    assert "no epoch was saved" in err and "stages.teacher.grad_clip" in err
    sdir = tmp_path / "runs" / "tiny" / "teacher"
    assert not (sdir / "last.pt").exists() and not (sdir / "final.pt").exists()


def test_ddp_two_processes(tmp_path):
    d = tiny(tmp_path / "runs")
    d["data"]["train_subset"] = 256
    d["stages"][0]["epochs"] = 1
    d["stages"][1]["epochs"] = 1
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "quant_models.train.cli", "--config", str(cfg_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    ck = load_checkpoint(run / "student" / "last.pt")
    assert ck["resume"]["world"] == 2
    m = rows(run / "student" / "metrics.jsonl")
    assert m[0]["epoch"] == 1 and m[-1]["final"] and 0 <= m[-1]["test_acc"] <= 100


# -- bad input ------------------------------------------------------------------------------------

def test_bad_yaml(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("experiment: x\nstages: [1, 2\n")
    rc, err = run_cli(capsys, "--config", p)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "not valid YAML" in err and "line" in err


def test_missing_config_and_unknown_key(tmp_path, capsys):
    rc, err = run_cli(capsys, "--config", tmp_path / "nope.yaml")
    assert rc == 2 and "does not exist" in err
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(tiny(tmp_path)))
    rc, err = run_cli(capsys, "--config", p, "--set", "stages.teacher.lrr=0.1")
    assert rc == 2 and err.count("\n") == 1 and "lrr" in err
    rc, err = run_cli(capsys, "--config", p, "--set", "nonsense")
    assert rc == 2 and "KEY=VALUE" in err


def test_wrong_arch_teacher_checkpoint(tmp_path, capsys):
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, build_model("resnet_w1a1", dataset="digits", width=8, depth=[1, 1]))
    d = tiny(tmp_path / "runs")
    d["stages"] = [{**d["stages"][1], "teacher": str(wrong), "init_from": None}]
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    rc, err = run_cli(capsys, "--config", p)
    assert rc == 2 and err.count("\n") == 1
    assert "'resnet_w1a1' checkpoint, not 'si_resnet_fp'" in err
    assert not (tmp_path / "runs").exists()  # failed before anything was written


def test_teacher_of_other_geometry(tmp_path, capsys):
    other = tmp_path / "wide.pt"
    save_checkpoint(other, build_model("si_resnet_fp", dataset="digits", width=16, depth=[1, 1]))
    d = tiny(tmp_path / "runs")
    d["stages"] = [{**d["stages"][1], "teacher": str(other), "init_from": None}]
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    rc, err = run_cli(capsys, "--config", p)
    assert rc == 2 and "does not match the student (width 16 vs 8)" in err


def test_missing_data_dir(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    d = tiny(tmp_path / "runs")
    d["data"] = {"name": "fmnist"}
    p.write_text(yaml.safe_dump(d))
    rc, err = run_cli(capsys, "--config", p, "--data-dir", tmp_path / "nowhere")
    assert rc == 2 and err.count("\n") == 1
    assert "does not exist" in err and "apt-get install dataset-fashion-mnist" in err


def test_existing_run_without_resume_is_refused(tmp_path):
    d = tiny(tmp_path)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(OutputDirError, match="already holds a run"):
        train(build_config(d))
    with pytest.raises(OutputDirError, match="no run to resume"):
        train(build_config(tiny(tmp_path / "fresh")), resume=True)


# -- the shipped default model --------------------------------------------------------------------

def _shipped_entry():
    from flow.config import DEFAULT_MODEL
    from quant_models.registry import get_entry

    entry = get_entry(DEFAULT_MODEL).pretrained
    if entry is None:
        pytest.skip(f"no pretrained checkpoint registered for {DEFAULT_MODEL}")
    return entry


def test_shipped_default_model_loads_in_eval_mode():
    from flow.config import DEFAULT_MODEL

    entry = _shipped_entry()
    model = build_model(DEFAULT_MODEL, pretrained=True)
    assert not model.training and model.arch == DEFAULT_MODEL
    assert entry.dataset == "fmnist" and tuple(model.spec.input_shape) == tuple(entry.input_shape)
    assert entry.teacher_top1 is not None and "sibnn-train" in entry.command
    binary = sum(p.numel() for n, p in model.named_parameters() if p.ndim > 1)
    assert binary <= 300_000  # fits a Pynq-Z2


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
                    .is_file(), reason="Fashion-MNIST not installed "
                                       "(apt-get install dataset-fashion-mnist)")
def test_shipped_default_model_accuracy_on_test_subset():
    from flow.config import DEFAULT_MODEL
    from quant_models.data import load_test
    from quant_models.train import evaluate

    entry = _shipped_entry()
    test = load_test("fmnist")
    model = build_model(DEFAULT_MODEL, pretrained=True)
    acc = evaluate(model, test.subset(1000), batch_size=500)["acc"]
    assert acc > entry.top1 - 3.0  # 1,000 images: well within sampling noise of the full set


@pytest.mark.slow
def test_shipped_default_model_full_test_set_matches_registry():
    from flow.config import DEFAULT_MODEL
    from quant_models.data import load_test
    from quant_models.train import evaluate

    entry = _shipped_entry()
    model = build_model(DEFAULT_MODEL, pretrained=True)
    acc = evaluate(model, load_test("fmnist"), batch_size=1000)["acc"]
    assert acc == pytest.approx(entry.top1, abs=0.01)


def test_init_from_fp_keeps_the_binary_logit_scale(tmp_path):
    from quant_models.train.stage_setup import init_weights

    fp = build_model("si_resnet_fp", dataset="digits", width=8, depth=[1, 1])
    with torch.no_grad():
        fp.head.logit_scale.fill_(0.125)
        fp.blocks[0].conv.weight.mul_(-1)
    save_checkpoint(tmp_path / "fp.pt", fp)
    d = tiny(tmp_path)
    d["stages"] = [{**d["stages"][1], "teacher": None, "init_from": str(tmp_path / "fp.pt"),
                    "loss_weights": {"ce": 1.0}}]
    cfg = build_config(d)
    student = build_model("si_resnet_w1a1", dataset="digits", width=8, depth=[1, 1])
    own_scale = float(student.head.logit_scale)
    n = init_weights(cfg, cfg.stages[0], student)
    assert n > 0 and float(student.head.logit_scale) == own_scale != 0.125
    assert torch.equal(student.blocks[0].conv.weight, fp.blocks[0].conv.weight)


def test_weight_decay_only_on_conv_and_fc_weights(tmp_path):
    """Decay reaches the conv/FC weights (binary ones included: their latent floats), never
    BatchNorm, the 4-d sign biases or logit_scale."""
    from quant_models.train.stage_setup import make_optimizer

    d = tiny(tmp_path)
    d["stages"] = [{**d["stages"][1], "student": "si_h_resnet_w1a1_mbh", "weight_decay": 0.1,
                    "teacher": None, "init_from": None, "loss_weights": {"ce": 1.0}}]
    stage = build_config(d).stages[0]
    model = build_model("si_h_resnet_w1a1_mbh", dataset="digits", width=8, depth=[1, 1])
    decay_group, rest_group = make_optimizer(stage, model).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay_group["params"]}
    assert decay_group["weight_decay"] == 0.1 and rest_group["weight_decay"] == 0.0
    assert decayed == {n for n, p in model.named_parameters()
                       if n.endswith(".weight") and p.ndim in (2, 4)}
    assert "blocks.0.act.bias" not in decayed and "head.logit_scale" not in decayed
    assert len(decayed) + len(rest_group["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_grad_clip_bounds_every_step(tmp_path, clip):
    """``grad_clip`` clips the global gradient norm before each step: with plain SGD (no
    momentum, no decay) at lr 1 for 8 steps the weights move at most ``8 * clip``; unclipped,
    the same run moves them far more (so the bound is the clip's doing)."""
    fp = build_model("si_resnet_fp", dataset="digits", width=8, depth=[1, 1])
    save_checkpoint(tmp_path / "init.pt", fp)
    d = tiny(tmp_path)
    d["stages"] = [{"name": "teacher", "student": "si_resnet_fp", "epochs": 1, "batch_size": 64,
                    "optimizer": "sgd", "lr": 1.0, "momentum": 0.0, "grad_clip": clip,
                    "init_from": str(tmp_path / "init.pt")}]
    train(build_config(d), log=lambda *_: None)
    after = load_checkpoint(tmp_path / "tiny/teacher/final.pt")["state_dict"]
    moved = torch.cat([(after[k] - p).flatten() for k, p in fp.named_parameters()]).norm()
    steps = 512 // 64
    if clip is None:
        assert moved > 100 * steps * 1e-3
    else:
        assert 0 < moved <= steps * clip * (1 + 1e-4)


# -- the staged recipe (binary activations first, then binary weights) ------------------------------

def staged(out_dir) -> dict:
    """``tiny`` with the student split into a float-weight stage and a binary-weight stage."""
    d = tiny(out_dir, experiment="staged")
    student = d["stages"][1]
    d["stages"][1:] = [{**student, "name": "binary_act", "model": {"float_weights": True},
                        "epochs": 1},
                       {**student, "init_from": "binary_act", "epochs": 1}]
    return d


def test_float_weights_network_has_binary_activations_and_float_layers():
    from quant_models.blocks import BinaryBlock

    net = build_model("si_resnet_w1a1", dataset="digits", width=8, depth=[1, 1],
                      float_weights=True)
    w1a1 = build_model("si_resnet_w1a1", dataset="digits", width=8, depth=[1, 1])
    assert net.spec.binary and not net.spec.binary_weights and w1a1.spec.binary_weights
    assert net.state_dict().keys() == w1a1.state_dict().keys()  # init_from matches every tensor
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m) is torch.nn.Conv2d for m in convs)  # float, not QuantConv2d
    block = next(m for m in net.modules() if isinstance(m, BinaryBlock))
    h = torch.randn(4, 8, 8, 8)
    assert set(block.act(h).unique().tolist()) == {-1.0, 1.0}  # activations stay bipolar
    with pytest.raises(ConfigError, match="float_weights only applies to a binary"):
        build_model("si_resnet_fp", dataset="digits", float_weights=True)


def test_staged_recipe_trains_and_ends_w1a1(tmp_path):
    from flow.front.export import export_qonnx_model
    from sibnn_base.errors import UnsupportedGraphError

    results = train(build_config(staged(tmp_path)), log=lambda *_: None)
    assert list(results) == ["teacher", "binary_act", "student"]
    run = tmp_path / "staged"
    act = build_model("si_resnet_w1a1", pretrained=run / "binary_act" / "final.pt")
    student = build_model("si_resnet_w1a1", pretrained=run / "student" / "final.pt")
    assert act.spec.float_weights and not student.spec.float_weights
    # the float-weight stage is not W1A1: export refuses it with the reason, the student exports
    with pytest.raises(UnsupportedGraphError, match="float weights.*final stage"):
        export_qonnx_model(act, tmp_path / "act.onnx")
    export_qonnx_model(student, tmp_path / "student.onnx")
    assert (tmp_path / "student.onnx").is_file()


def test_logit_scale_moves_only_between_networks_of_the_same_weight_kind(tmp_path):
    """FP teacher -> float-weight stage copies the scale (both float); the float-weight stage ->
    W1A1 student does not (+-1 weights are ~10x larger than float ones)."""
    from quant_models.train.stage_setup import init_weights

    cfg = build_config(staged(tmp_path))
    fp = build_model("si_resnet_fp", dataset="digits", width=8, depth=[1, 1])
    act = build_model("si_resnet_w1a1", dataset="digits", width=8, depth=[1, 1],
                      float_weights=True)
    w1a1 = build_model("si_resnet_w1a1", dataset="digits", width=8, depth=[1, 1])
    with torch.no_grad():
        fp.head.logit_scale.fill_(0.125)
    for stage, src in (("teacher", fp), ("binary_act", None)):
        d = tmp_path / "staged" / stage
        d.mkdir(parents=True, exist_ok=True)
        save_checkpoint(d / "final.pt", src if src is not None else act)
    init_weights(cfg, cfg.stage("binary_act"), act)
    assert float(act.head.logit_scale) == 0.125
    own = float(w1a1.head.logit_scale)
    init_weights(cfg, cfg.stage("student"), w1a1)
    assert float(w1a1.head.logit_scale) == own != 0.125


def test_resume_may_append_a_stage_but_not_change_one(tmp_path):
    d = tiny(tmp_path)
    d["stages"] = d["stages"][:1]
    d["stages"][0]["epochs"] = 1
    d["data"]["train_subset"] = 128
    first = train(build_config(d), log=lambda *_: None)
    final = tmp_path / "tiny" / "teacher" / "final.pt"
    before = final.read_bytes()
    longer = staged(tmp_path)
    longer.update(experiment="tiny", data=d["data"])
    longer["stages"][0] = d["stages"][0]
    for s in longer["stages"][1:]:
        s["epochs"] = 1
    logs = []
    results = train(build_config(longer), resume=True, log=logs.append)
    assert results["teacher"] == first["teacher"] and final.read_bytes() == before
    assert list(results) == ["teacher", "binary_act", "student"]
    assert any("[teacher] already complete" in m for m in logs)
    changed = {**longer, "stages": [{**longer["stages"][0], "lr": 0.5}, *longer["stages"][1:]]}
    with pytest.raises(ConfigError, match="another config.*stages"):
        train(build_config(changed), resume=True, log=lambda *_: None)


def test_resume_of_a_run_from_before_per_epoch_re_estimation_still_re_estimates(tmp_path):
    """A last.pt whose history has no ``val_acc_running_bn`` (written before BN statistics were
    re-estimated every epoch) and no final.pt: the stage ends with re-estimated statistics."""
    d = tiny(tmp_path)
    d["stages"] = d["stages"][:1]
    d["stages"][0]["epochs"] = 1
    d["data"]["train_subset"] = 128
    cfg = build_config(d)
    train(cfg, log=lambda *_: None)
    sdir = tmp_path / "tiny" / "teacher"
    want = load_checkpoint(sdir / "final.pt")["state_dict"]
    ck = load_checkpoint(sdir / "last.pt")
    ck["resume"]["history"] = [{k: v for k, v in r.items() if k != "val_acc_running_bn"}
                               for r in ck["resume"]["history"]]
    for m in (ck["state_dict"][k] for k in ck["state_dict"] if k.endswith("running_mean")):
        m.zero_()  # stale statistics, as the old code left them
    ck.pop("payload_sha256")  # the old code wrote no tensor hash either
    save_checkpoint(sdir / "last.pt", ckpt=ck)
    (sdir / "final.pt").unlink()
    train(cfg, resume=True, log=lambda *_: None)
    got = load_checkpoint(sdir / "final.pt")["state_dict"]
    assert all(torch.equal(got[k], want[k]) for k in want)


# -- augmentation and devices -------------------------------------------------------------------

def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    from quant_models.augment import random_crop

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4) + 1
    assert torch.equal(random_crop(x, torch.tensor([[2, 2], [2, 2]]), 2), x)  # centred: identity
    y = random_crop(x, torch.tensor([[0, 4], [3, 1]]), 2)
    # sample 0 moved down 2 and left 2 (window at dy=0, dx=4): rows 0-1 and cols 2-3 are padding
    assert torch.equal(y[0, :, 2:, :2], x[0, :, :2, 2:]) and y[0, :, :2].abs().sum() == 0
    assert y[0, :, :, 2:].abs().sum() == 0
    assert torch.equal(y[1, :, :3, 1:], x[1, :, 1:, :3]) and y[1, :, 3].abs().sum() == 0


def test_stage_augmentation_overrides_the_experiment_and_resumes_exactly(tmp_path):
    """A teacher stage with crops and flips, a student without: both resume bit-exactly."""
    d = tiny(tmp_path / "a")
    d["stages"][0].update(crop_pad=2, hflip=True)
    full = train(build_config(d), log=lambda *_: None)
    plain = tiny(tmp_path / "c")
    other = train(build_config(plain), log=lambda *_: None)
    assert full["teacher"]["val_acc"] != other["teacher"]["val_acc"]  # augmentation did act

    class Stop(Exception):
        pass

    def stop(msg):
        if msg.startswith("[teacher] epoch 2/"):
            raise Stop

    d_b = tiny(tmp_path / "b")
    d_b["stages"][0].update(crop_pad=2, hflip=True)
    with pytest.raises(Stop):
        train(build_config(d_b), log=stop)
    resumed = train(build_config(d_b), resume=True, log=lambda *_: None)
    assert strip_time([resumed["teacher"], resumed["student"]]) == \
        strip_time([full["teacher"], full["student"]])


def test_cli_refuses_a_device_it_does_not_have(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny(tmp_path / "runs")))
    rc, err = run_cli(capsys, "--config", cfg_path, "--set", "device=cuda")
    assert rc == 2 and "sees no CUDA GPU" in err and "--device cpu" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.gpu
def test_training_on_cuda_matches_the_cpu_metrics_closely(tmp_path):
    """On a GPU: the same tiny run trains on cuda with the data resident there."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    res = train(build_config(tiny(tmp_path / "g", device="cuda")), log=lambda *_: None)
    assert res["student"]["val_acc"] > 30.0
    ck = load_checkpoint(tmp_path / "g/tiny/student/final.pt")
    assert all(t.device.type == "cpu" for t in ck["state_dict"].values())


def test_channels_last_run_writes_ordinary_weights_and_is_part_of_the_run(tmp_path):
    """A channels-last run trains, writes contiguous weights that a default-layout model
    evaluates to the same test accuracy, and a resume may not switch the layout."""
    d = tiny(tmp_path, channels_last=True)
    d["stages"][1]["epochs"] = 1
    res = train(build_config(d), log=lambda *_: None)
    final = tmp_path / "tiny/student/final.pt"
    state = load_checkpoint(final)["state_dict"]
    assert all(v.is_contiguous() for v in state.values())
    model = build_model("si_resnet_w1a1", pretrained=final)
    splits = load_splits("digits", None, val_size=300)
    assert evaluate(model, splits.test)["acc"] == pytest.approx(res["student"]["test_acc"])
    with pytest.raises(ConfigError, match="channels_last"):
        train(build_config({**d, "channels_last": False}), resume=True, log=lambda *_: None)


def test_weight_ema_is_the_lerp_of_the_weights_after_each_step():
    """One update moves every parameter (not the buffers) by ``1 - decay`` towards the
    student's; the average is a copy that does not train."""
    from quant_models.train.ema import WeightEMA

    torch.manual_seed(0)
    student = build_model("si_resnet_w1a1", dataset="digits", width=8, depth=[1, 1])
    ema = WeightEMA(student, 0.75)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.update()
    params = dict(student.named_parameters())
    after = ema.model.state_dict()
    for k, v in after.items():
        want = before[k] + 0.25 * (params[k] - before[k]) if k in params else before[k]
        assert torch.allclose(v, want, rtol=0, atol=1e-6), k
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_stage_ships_the_average_trains_the_same_student_and_resumes_exactly(tmp_path, tiny_run):
    """With ``ema_decay`` the student's own trajectory is the run without it (``val_acc_raw`` =
    its ``val_acc``), ``final.pt`` holds the average (not the last step's weights), and an
    interrupted run resumes to the same average."""
    plain_run, _ = tiny_run
    d = tiny(tmp_path / "a")
    d["stages"][1]["ema_decay"] = 0.9
    full = train(build_config(d), log=lambda *_: None)["student"]
    *epochs, final = rows(tmp_path / "a/tiny/student/metrics.jsonl")
    *plain_epochs, plain_final = rows(plain_run / "student/metrics.jsonl")
    assert [r["val_acc_raw"] for r in epochs] == [r["val_acc"] for r in plain_epochs]
    assert final["test_acc_raw"] == plain_final["test_acc"]
    assert final["ema_decay"] == 0.9 and full["test_acc"] == final["test_acc"]
    shipped = load_checkpoint(tmp_path / "a/tiny/student/final.pt")["state_dict"]
    raw = load_checkpoint(tmp_path / "a/tiny/student/last.pt")["state_dict"]
    weights = [k for k in shipped if k.endswith(".weight") and shipped[k].dim() == 4]
    assert weights and not any(torch.equal(shipped[k], raw[k]) for k in weights)

    class Stop(Exception):
        pass

    def stop_after_student_epoch_1(msg):
        if msg.startswith("[student] epoch 1/"):
            raise Stop

    d_b = {**d, "out_dir": str(tmp_path / "b")}
    with pytest.raises(Stop):
        train(build_config(d_b), log=stop_after_student_epoch_1)
    train(build_config(d_b), resume=True, log=lambda *_: None)
    resumed = load_checkpoint(tmp_path / "b/tiny/student/final.pt")["state_dict"]
    assert all(torch.equal(shipped[k], resumed[k]) for k in shipped)
    with pytest.raises(ConfigError, match="stages"):
        d_b["stages"][1]["ema_decay"] = 0.99
        train(build_config(d_b), resume=True, log=lambda *_: None)



def _scripted_val(monkeypatch, accs: list[float], done: int = 0) -> list[dict]:
    """Make the validation of epoch ``done + 1``, ``done + 2``, ... report ``accs[done]``,
    ``accs[done + 1]``, ... (after the real re-estimation and evaluation ran) and record the
    weights it saw; returns the record."""
    import copy

    import quant_models.train.loop as loop

    seen = []

    def validate(model, recal, val, batch_size, env):
        out = real_validate(model, recal, val, batch_size, env)
        seen.append(copy.deepcopy(model.state_dict()))
        return {**out, "val_acc": accs[done + len(seen) - 1]}

    monkeypatch.setattr(loop, "validate", validate)
    return seen


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Stop(Exception):
    pass


def test_select_best_val_ships_the_best_validation_epoch_and_resumes_to_it(tmp_path, monkeypatch):
    """``select: best_val`` ships the epoch of the highest validation accuracy (the first of
    equals) and reports the last epoch's numbers beside it; ``select: last`` ships the last
    epoch and names the best; ``select`` is the one stage key a ``--resume`` may change, and the
    resumed run ships what an uninterrupted one ships."""
    accs = [50.0, 70.0, 60.0, 70.0]
    d = tiny(tmp_path / "a")
    d["stages"] = d["stages"][:1]
    d["stages"][0].update(epochs=4, select="best_val")
    seen = _scripted_val(monkeypatch, accs)
    got = train(build_config(d), log=lambda *_: None)["teacher"]
    sdir = tmp_path / "a/tiny/teacher"
    assert got["selected_epoch"] == got["best_val_epoch"] == 2 and got["val_acc"] == 70.0
    final = load_checkpoint(sdir / "final.pt")
    assert final["epoch"] == 2 and _same(final["state_dict"], seen[1])
    assert _same(load_checkpoint(sdir / "best.pt")["state_dict"], seen[1])
    assert not _same(seen[1], seen[3])  # the last epoch's weights are other weights
    model = build_model("si_resnet_fp", pretrained=sdir / "final.pt")
    test = load_splits("digits", val_size=300).test
    assert got["test_acc"] == evaluate(model, test)["acc"]
    model.load_state_dict(seen[3])
    assert got["test_acc_last"] == evaluate(model, test)["acc"] and got["val_acc_last"] == 70.0
    assert rows(sdir / "metrics.jsonl")[-1]["select"] == "best_val"

    # the same run with select: last, interrupted after epoch 3 ...
    d_b = {**d, "out_dir": str(tmp_path / "b"), "stages": [{**d["stages"][0], "select": "last"}]}
    _scripted_val(monkeypatch, accs)

    def stop_after_epoch_3(msg):
        if msg.startswith("[teacher] epoch 3/"):
            raise _Stop

    with pytest.raises(_Stop):
        train(build_config(d_b), log=stop_after_epoch_3)
    # ... and resumed with select: best_val: the epoch-2 weights come back from best.pt
    _scripted_val(monkeypatch, accs, done=3)
    resumed = train(build_config({**d, "out_dir": str(tmp_path / "b")}), resume=True,
                    log=lambda *_: None)["teacher"]
    assert strip_time([resumed]) == strip_time([got])
    assert _same(load_checkpoint(tmp_path / "b/tiny/teacher/final.pt")["state_dict"], seen[1])

    # select: last ships the last epoch and names the best one
    _scripted_val(monkeypatch, accs)
    last = train(build_config({**d_b, "out_dir": str(tmp_path / "c")}),
                 log=lambda *_: None)["teacher"]
    assert (last["selected_epoch"], last["best_val_epoch"], last["select"]) == (4, 2, "last")
    assert last["test_acc"] == got["test_acc_last"] and "test_acc_last" not in last
    assert _same(load_checkpoint(tmp_path / "c/tiny/teacher/final.pt")["state_dict"], seen[3])


# -- compiled steps -------------------------------------------------------------------------------

def _student_step():
    """A digits student, its eager training step (CE + KD + block loss) and one batch."""
    from quant_models.fastpath import fast_forward
    from quant_models.networks import TapOutputs
    from quant_models.train.stage_setup import forward_loss

    cfg = build_config(tiny("unused"))
    torch.manual_seed(0)
    teacher = build_model("si_resnet_fp", dataset="digits", width=8, depth=[1, 1]).eval()
    student = build_model("si_resnet_w1a1", dataset="digits", width=8, depth=[1, 1]).train()
    fast_forward(student)
    stage = cfg.stage("student")
    step = forward_loss(stage, TapOutputs(student, flat=False), teacher,
                        {n: 1.0 for n in student.tap_names})
    x = load_splits("digits", val_size=300).train.x[:64]
    return student, step, x, torch.arange(64) % 10


def test_a_compiled_step_with_wrong_gradients_is_rejected_and_training_stays_eager():
    student, step, x, y = _student_step()
    before = {k: v.clone() for k, v in student.state_dict().items()}

    def halves_gradients(fn):  # a "compiler" whose step has the same loss, half the gradients
        def wrong(x, y):
            loss, parts, logits = fn(x, y)
            return loss.detach() + 0.5 * (loss - loss.detach()), parts, logits
        return wrong

    said = []
    kept = checked_compile(step, student, x, y, log=said.append,
                                          compiler=halves_gradients)
    assert kept is step
    assert "rejected" in said[0] and "training eager" in said[0]
    # the check's forward passes left the BatchNorm statistics as they were
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())

    def fails(fn):
        raise RuntimeError("no C compiler")
    said.clear()
    assert checked_compile(step, student, x, y, log=said.append,
                                          compiler=fails) is step
    assert said == ["compile failed (RuntimeError: no C compiler); training eager"]


def test_a_compiled_loss_a_little_off_with_the_same_gradients_is_kept_and_a_far_one_is_not():
    student, step, x, y = _student_step()

    def offset(rel):  # a "compiler" whose loss is off by rel, with the eager gradients
        def compiler(fn):
            def shifted(x, y):
                loss, parts, logits = fn(x, y)
                return loss + rel * loss.detach(), parts, logits
            return shifted
        return compiler

    rtol = LOSS_RTOL
    said = []
    assert checked_compile(step, student, x, y, log=said.append,
                                          compiler=offset(0.4 * rtol)) is not step
    assert "match" in said[-1]
    assert checked_compile(step, student, x, y, log=said.append,
                                          compiler=offset(2 * rtol)) is step
    assert "rejected" in said[-1] and "0 of" in said[-1]


def test_a_resumed_run_checks_its_compiled_step_on_the_weights_it_continues_from(tmp_path,
                                                                                 monkeypatch):
    """With ``compile``, the check runs after a resume has restored the weights (a step rejected
    on a student fresh from its teacher gets another chance), and it leaves the run exact even if
    checking draws from the global RNG."""
    import quant_models.train.stage_setup as stage_setup

    seen = []

    def record(step, model, x, y, log=print, compiler=None):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        torch.rand(1)  # as a compiler might: the run must not notice
        log("compiled step checked (recorded)")
        return step

    monkeypatch.setattr(stage_setup, "checked_compile", record)
    full = train(build_config(tiny(tmp_path / "a", compile=True)), log=lambda *_: None)
    assert len(seen) == 2  # each stage once

    class Stop(Exception):
        pass

    def stop_after_student_epoch_1(msg):
        if msg.startswith("[student] epoch 1/"):
            raise Stop

    cfg_b = build_config(tiny(tmp_path / "b", compile=True))
    with pytest.raises(Stop):
        train(cfg_b, log=stop_after_student_epoch_1)
    epoch1 = load_checkpoint(tmp_path / "b/tiny/student/last.pt")["state_dict"]
    seen.clear()
    said = []
    resumed = train(cfg_b, resume=True, log=said.append)
    (w,) = seen  # the finished teacher is not checked again
    assert w.keys() == epoch1.keys() and all(torch.equal(w[k], epoch1[k]) for k in w)
    assert said.index("[student] resuming after epoch 1/2") < said.index(
        "[student] compiled step checked (recorded)")
    assert strip_time([resumed["student"]]) == strip_time([full["student"]])


@pytest.mark.slow
def test_torch_compile_of_a_student_step_matches_eager_on_cpu():
    student, step, x, y = _student_step()
    said = []
    compiled = checked_compile(step, student, x, y, log=said.append)
    assert compiled is not step, said
    assert "match" in said[0]


def test_compiled_gradients_may_differ_by_a_few_flipped_signs_not_by_direction_or_size():
    same = _same_direction
    torch.manual_seed(0)
    g = torch.randn(4096)
    flipped = g.clone()
    flipped[:20] *= -1  # a few pre-activations crossed zero
    assert same(g, flipped) and same(g, g) and same(None, None)
    assert not same(g, torch.zeros_like(g))  # the H200's compiled students: zero gradients
    assert not same(g, 0.5 * g) and not same(g, torch.randn(4096)) and not same(g, None)
    assert same(torch.zeros(3), torch.zeros(3)) and not same(torch.zeros(3), torch.ones(3))


# -- cutout and label smoothing ---------------------------------------------------------------------

def test_cutout_zeros_a_square_clipped_at_the_border():
    x = torch.ones(3, 2, 10, 10)
    y = cutout(x, torch.tensor([[5, 5], [0, 0], [9, 4]]), 4)
    assert y.shape == x.shape and torch.equal(y[:, 0], y[:, 1])  # every channel alike
    assert int((y[0, 0] == 0).sum()) == 16 and torch.all(y[0, 0, 3:7, 3:7] == 0)
    assert int((y[1, 0] == 0).sum()) == 4 and torch.all(y[1, 0, :2, :2] == 0)  # clipped corner
    assert int((y[2, 0] == 0).sum()) == 12 and torch.all(y[2, 0, 7:, 2:6] == 0)
    assert torch.equal(cutout(x, torch.tensor([[5, 5]] * 3), 0), x)


def test_label_smoothing_and_cutout_are_config_keys_with_checked_ranges(tmp_path):
    from quant_models.train.losses import distillation_loss

    cfg = build_config(tiny(tmp_path, data={"name": "digits", "val_size": 300,
                                            "train_subset": 512, "cutout": 4}))
    assert cfg.data.cutout == 4
    for bad, match in (({"data": {"name": "digits", "cutout": 17}}, "data.cutout"),):
        with pytest.raises(ConfigError, match=match):
            build_config(tiny(tmp_path, **bad))
    d = tiny(tmp_path)
    d["stages"][0]["loss_weights"] = {"ce": 1.0, "label_smoothing": 1.0}
    with pytest.raises(ConfigError, match="label_smoothing"):
        build_config(d)
    d["stages"][0]["loss_weights"] = {"ce": 1.0, "label_smoothing": 0.1}
    d["stages"][0]["cutout"] = 20
    with pytest.raises(ConfigError, match="cutout must be in 0..16"):
        build_config(d)
    d["stages"][0]["cutout"] = 6
    lw = build_config(d).stage("teacher").loss_weights
    logits, y = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([0])
    hard = distillation_loss(logits, {}, y, type(lw)(ce=1.0), {})[0]
    soft = distillation_loss(logits, {}, y, lw, {})[0]
    assert float(soft) > float(hard) > 0  # smoothing penalises a confident right answer


def test_a_run_with_cutout_resumes_exactly(tmp_path):
    """Cutout's centres come from the epoch's seeded generator: interrupt after teacher epoch 2
    (of 3), resume, and compare with an uninterrupted run."""
    d = tiny(tmp_path / "a", data={"name": "digits", "val_size": 300, "train_subset": 512,
                                   "cutout": 4})
    d["stages"] = d["stages"][:1]
    full = train(build_config(d), log=lambda *_: None)

    class Stop(Exception):
        pass

    def stop(msg):
        if msg.startswith("[teacher] epoch 2/"):
            raise Stop

    cfg_b = build_config({**d, "out_dir": str(tmp_path / "b")})
    with pytest.raises(Stop):
        train(cfg_b, log=stop)
    resumed = train(cfg_b, resume=True, log=lambda *_: None)
    assert strip_time([resumed["teacher"]]) == strip_time([full["teacher"]])
    plain = train(build_config({**d, "out_dir": str(tmp_path / "c"),
                                "data": {**d["data"], "cutout": 0}}), log=lambda *_: None)
    assert plain["teacher"]["val_loss"] != full["teacher"]["val_loss"]  # cutout took effect


@pytest.mark.slow
def test_the_device_teacher_sweep_runs_every_recipe_and_reports_val_and_test(tmp_path):
    """``scripts/device_teachers.sh`` as the GPU machine runs it, here on CPU at a tiny scale."""
    import os
    import subprocess
    import tarfile

    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(out),
           "RUNS_DIR": str(tmp_path / "runs"), "DEADLINE": "600",
           "EXTRA": "data.name=digits data.val_size=300 data.train_subset=256 "
                    "stages.teacher.epochs=1 model.width=8 model.depth=[1,1]",
           "RECIPES": "base:seed=0 cut_ls:data.cutout=4,stages.teacher.loss_weights."
                      "label_smoothing=0.1"}
    proc = subprocess.run(["bash", "scripts/device_teachers.sh", "0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((out / "teachers.json").read_text())
    assert set(res) == {"base", "cut_ls"}
    assert all(0 < res[n]["0"]["val_acc"] <= 100 and "test_acc" in res[n]["0"] for n in res)
    with tarfile.open(out / "teachers.tgz") as tar:
        assert sum(n.endswith("teacher/final.pt") for n in tar.getnames()) == 2
    assert "compiled step checked" in proc.stdout
