"""``sibnn-export``: the bundle, atomic writes and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flow.export import export_bundle, export_qonnx_model
from flow.fuzz import random_model
from flow.golden import GoldenModel
from quant_models import build_model, save_checkpoint
from sibnn_base.errors import OutputDirError

from .conftest import assert_one_line_error, run_cli


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
    proc = run_cli(["-m", "flow.export", "--model", "resnet_w1a1", "--checkpoint",
                    str(tmp_path / "r.pt"), "--out", str(tmp_path / "e1"), "--n-inputs", "6"])
    assert proc.returncode == 0, proc.stderr
    assert "golden == brevitas and qonnx on 6 inputs" in proc.stdout
    proc = run_cli(["-m", "flow.export", "--onnx", str(tmp_path / "e1" / "model.qonnx.onnx"),
                    "--out", str(tmp_path / "e2"), "--n-inputs", "3"])
    assert proc.returncode == 0, proc.stderr


def test_cli_bad_inputs(tmp_path):
    m = build_model("resnet_w1a1", width=4, depth=[1])
    save_checkpoint(tmp_path / "plain.pt", m)
    assert_one_line_error(run_cli(["-m", "flow.export", "--model", "si_resnet_w1a1",
                                   "--checkpoint", str(tmp_path / "plain.pt"), "--out",
                                   str(tmp_path / "o")]), "'resnet_w1a1' checkpoint")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    assert_one_line_error(run_cli(["-m", "flow.export", "--onnx", str(tmp_path / "bad.onnx"),
                                   "--out", str(tmp_path / "o")]), "not a readable ONNX file")
    plain = export_qonnx_model(build_model("resnet_w1a1", width=4, depth=[1]).eval(),
                               tmp_path / "q.onnx")
    for n in plain.graph.node:
        if n.op_type == "ReduceSum":
            n.op_type, n.name = "ReduceMax", "pool0"
    plain.save(str(tmp_path / "q.onnx"))
    assert_one_line_error(run_cli(["-m", "flow.export", "--onnx", str(tmp_path / "q.onnx"),
                                   "--out", str(tmp_path / "o")]), "ReduceMax (pool0)")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    assert_one_line_error(run_cli(["-m", "flow.export", "--model", "resnet_w1a1", "--checkpoint",
                                   str(tmp_path / "plain.pt"), "--out",
                                   str(tmp_path / "foreign")]), "not written by sibnn")
    assert not (tmp_path / "o").exists()
