"""``sibnn-export``: the bundle, atomic writes and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flow.front.export import export_qonnx_model
from flow.front.golden import GoldenModel
from flow.proof.export import export_bundle
from quant_models import build_model, save_checkpoint
from sibnn_base.errors import OutputDirError
from tests.conftest import assert_one_line_error, run_cli
from tests.fuzz import random_model


def test_bundle_contents(tmp_path):
    m, _, _ = random_model(1)
    rep = export_bundle(tmp_path / "out", model=m, n_inputs=12)
    out = tmp_path / "out"
    for f in ("model.qonnx.onnx", "reference.onnx", "input.npy", "expected_output.npy",
              "verification.json"):
        assert (out / f).is_file(), f
    assert rep["exact"] and json.loads((out / "verification.json").read_text())["exact"]
    px = np.load(out / "input.npy")
    assert px.dtype == np.uint8 and px.shape[0] == 12
    got = GoldenModel.load(out / "reference.onnx").run(px)["scores"]
    assert np.array_equal(got, np.load(out / "expected_output.npy"))


def test_refuses_foreign_directory_and_keeps_it(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    m, _, _ = random_model(2)
    with pytest.raises(OutputDirError, match="not written by sibnn"):
        export_bundle(tmp_path / "mine", model=m, n_inputs=4)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_failed_export_leaves_previous_bundle_intact(tmp_path):
    m, _, _ = random_model(3)
    export_bundle(tmp_path / "b", model=m, n_inputs=4)
    before = (tmp_path / "b" / "reference.onnx").read_bytes()
    with pytest.raises(ValueError):
        export_bundle(tmp_path / "b", model=m, qonnx_path="x.onnx")  # invalid call, raises early
    with pytest.raises(AttributeError):
        export_bundle(tmp_path / "b", model=object(), n_inputs=4)  # fails half-way
    assert (tmp_path / "b" / "reference.onnx").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_cli_with_checkpoint_and_onnx(tmp_path):
    m = build_model("resnet_w1a1", width=4, depth=[1])
    save_checkpoint(tmp_path / "r.pt", m)
    proc = run_cli(["-m", "flow.proof.export", "--model", "resnet_w1a1", "--checkpoint",
                    str(tmp_path / "r.pt"), "--out", str(tmp_path / "e1"), "--n-inputs", "6"])
    assert proc.returncode == 0, proc.stderr
    assert "golden == brevitas and qonnx on 6 inputs" in proc.stdout
    proc = run_cli(["-m", "flow.proof.export", "--onnx", str(tmp_path / "e1" / "model.qonnx.onnx"),
                    "--out", str(tmp_path / "e2"), "--n-inputs", "3"])
    assert proc.returncode == 0, proc.stderr


def test_cli_bad_inputs(tmp_path):
    m = build_model("resnet_w1a1", width=4, depth=[1])
    save_checkpoint(tmp_path / "plain.pt", m)
    assert_one_line_error(run_cli(["-m", "flow.proof.export", "--model", "si_resnet_w1a1",
                                   "--checkpoint", str(tmp_path / "plain.pt"), "--out",
                                   str(tmp_path / "o")]), "'resnet_w1a1' checkpoint")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    assert_one_line_error(run_cli(["-m", "flow.proof.export", "--onnx", str(tmp_path / "bad.onnx"),
                                   "--out", str(tmp_path / "o")]), "not a readable ONNX file")
    plain = export_qonnx_model(build_model("resnet_w1a1", width=4, depth=[1]).eval(),
                               tmp_path / "q.onnx")
    for n in plain.graph.node:
        if n.op_type == "ReduceSum":
            n.op_type, n.name = "ReduceMax", "pool0"
    plain.save(str(tmp_path / "q.onnx"))
    assert_one_line_error(run_cli(["-m", "flow.proof.export", "--onnx", str(tmp_path / "q.onnx"),
                                   "--out", str(tmp_path / "o")]), "ReduceMax (pool0)")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    assert_one_line_error(run_cli(["-m", "flow.proof.export", "--model", "resnet_w1a1", "--checkpoint",
                                   str(tmp_path / "plain.pt"), "--out",
                                   str(tmp_path / "foreign")]), "not written by sibnn")
    assert not (tmp_path / "o").exists()


def test_export_describes_itself_and_the_build_checks_its_io_pair(tmp_path):
    """An exported QONNX names its architecture, weights, checkpoint sha256 and seed; a build of
    it reads that, and proves its golden model reproduces the export's I/O pair bit for bit (a
    tampered pair stops the build with the file and the index)."""
    import hashlib

    from qonnx.core.modelwrapper import ModelWrapper

    from flow.build import build
    from flow.config import resolve_build_config
    from flow.front.export import description, resolve_network
    from flow.report import load_summary
    from sibnn_base.errors import VerificationError

    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("si_resnet_w1a1", width=4, depth=[1]))
    net, weights = resolve_network(checkpoint=str(ckpt), seed=3)
    assert (weights.kind, weights.arch, weights.seed) == ("checkpoint", "si_resnet_w1a1", 3)
    assert weights.sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    export_bundle(tmp_path / "bundle", model=net, weights=weights, n_inputs=6)
    qonnx = tmp_path / "bundle" / "model.qonnx.onnx"
    meta = description(ModelWrapper(str(qonnx)))
    assert meta["sibnn_arch"] == "si_resnet_w1a1" and meta["sibnn_seed"] == "3"
    assert meta["sibnn_checkpoint_sha256"] == weights.sha256
    assert json.loads(meta["sibnn_model_args"])["width"] == 4

    cfg = resolve_build_config(onnx=str(qonnx), output_dir=str(tmp_path / "b"),
                               stop_step="tidy_up", verify_inputs=2)
    s = load_summary(build(cfg, echo=lambda _m: None))
    assert s["golden_io"] == {"input": str(qonnx.parent / "input.npy"), "n_inputs": 6,
                              "exact": True}
    assert "si_resnet_w1a1" in s["weights"] and str(ckpt) in s["weights"]

    y = np.load(qonnx.parent / "expected_output.npy")
    y[2, 1] += 1
    np.save(qonnx.parent / "expected_output.npy", y)
    with pytest.raises(VerificationError, match=r"expected_output.npy.*index \[2, 1\]"):
        build(resolve_build_config(onnx=str(qonnx), output_dir=str(tmp_path / "c"),
                                   stop_step="tidy_up", verify_inputs=2), echo=lambda _m: None)


def test_one_rule_decides_the_weights(tmp_path):
    """Build, export and the notebooks share resolve_network: shipped weights when they exist
    (unless overrides change the network), else seeded untrained ones; never both."""
    from flow.config import DEFAULT_MODEL
    from flow.front.export import resolve_network
    from quant_models.registry import get_entry
    from sibnn_base.errors import CheckpointError, ConfigError

    entry = get_entry(DEFAULT_MODEL)
    _, w = resolve_network()
    assert (w.arch, w.kind, w.sha256) == (DEFAULT_MODEL, "shipped", entry.pretrained.sha256)
    a, w = resolve_network("resnet_w1a1", overrides={"width": 4, "depth": [1]}, seed=5)
    b, _ = resolve_network("resnet_w1a1", overrides={"width": 4, "depth": [1]}, seed=5)
    assert w.kind == "untrained" and w.sha256 is None
    assert all(torch_equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))
    with pytest.raises(CheckpointError, match="no pretrained checkpoint is shipped"):
        resolve_network("resnet_w1a1", overrides={"width": 4}, allow_untrained=False)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("resnet_w1a1", width=4, depth=[1]))
    with pytest.raises(ConfigError, match="cannot be combined with a checkpoint"):
        resolve_network(checkpoint=str(ckpt), overrides={"width": 8})


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)
