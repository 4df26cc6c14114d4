"""Self-describing checkpoints: round trip, atomic writes, and every bad checkpoint."""

from __future__ import annotations

import pickle

import pytest
import torch

from quant_models import (
    build_model,
    list_models,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from quant_models.checkpoint import REQUIRED_KEYS
from quant_models.registry import get_entry
from sibnn_base.errors import CheckpointError
from tests.conftest import assert_one_line_error, run_cli


def _trained_like(name="si_resnet_w1a1", **kw):
    m = build_model(name, width=8, depth=[1, 1], **kw)
    for mod in m.modules():  # non-default buffers so a round trip is meaningful
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    return m.eval()


def test_round_trip(tmp_path):
    m = _trained_like()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    path = save_checkpoint(tmp_path / "a.pt", m, optimizer=opt, epoch=3,
                           metrics={"val_top1": 12.5}, config={"lr": 0.1})
    ckpt = torch.load(path, weights_only=True)  # plain types only
    assert set(REQUIRED_KEYS) <= set(ckpt)
    assert ckpt["arch"] == "si_resnet_w1a1" and ckpt["epoch"] == 3
    m2 = model_from_checkpoint(path)
    assert not m2.training
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert m2.spec == m.spec


def test_saved_checkpoint_has_umask_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "b.pt", _trained_like())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_pretrained_path_loads_same_arch(tmp_path):
    m = _trained_like("resnet_w1a1")
    save_checkpoint(tmp_path / "b.pt", m)
    m2 = build_model("resnet_w1a1", pretrained=tmp_path / "b.pt")
    assert m2.spec == m.spec


def test_checkpoint_of_another_architecture(tmp_path):
    save_checkpoint(tmp_path / "plain.pt", _trained_like("resnet_w1a1"))
    with pytest.raises(CheckpointError, match="is a 'resnet_w1a1' checkpoint, not 'si_resnet_w1a1'"):
        build_model("si_resnet_w1a1", pretrained=tmp_path / "plain.pt")


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _trained_like())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_garbage_checkpoint(tmp_path):
    (tmp_path / "g.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "g.pt")


def test_foreign_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="not a sibnn checkpoint"):
        load_checkpoint(tmp_path / "f.pt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_atomic_save_keeps_previous_file(tmp_path):
    m = _trained_like()
    path = save_checkpoint(tmp_path / "d.pt", m, epoch=1)
    before = path.read_bytes()
    with pytest.raises((AttributeError, pickle.PicklingError)):
        save_checkpoint(path, m, epoch=2, config={"bad": lambda: None})  # unpicklable
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.pt"]


def test_shipped_pretrained():
    entry = get_entry("si_resnet_w1a1")
    if entry.pretrained is None:
        with pytest.raises(CheckpointError, match="no pretrained checkpoint is shipped"):
            build_model("si_resnet_w1a1", pretrained=True)
    else:
        m = build_model("si_resnet_w1a1", pretrained=True)
        assert not m.training
        assert tuple(m.spec.input_shape) == tuple(entry.pretrained.input_shape)


SHIPPED = [n for n in list_models() if get_entry(n).pretrained is not None]


def test_three_models_are_shipped():
    assert SHIPPED == ["si_h_resnet_w1a1_mbh", "si_resnet_fp", "si_resnet_w1a1"]


@pytest.mark.parametrize("name", SHIPPED)
def test_a_name_builds_the_architecture_of_the_weights_it_ships(name):
    """``build_model(name)`` trains from scratch the network ``build_model(name,
    pretrained=True)`` loads: the same spec, module tree, parameter and buffer names and shapes."""
    fresh, shipped = build_model(name), build_model(name, pretrained=True)
    assert fresh.spec == shipped.spec
    assert [(n, type(m).__name__) for n, m in fresh.named_modules()] == \
        [(n, type(m).__name__) for n, m in shipped.named_modules()]
    assert {k: v.shape for k, v in fresh.state_dict().items()} == \
        {k: v.shape for k, v in shipped.state_dict().items()}
    assert [n for n, _ in fresh.named_parameters()] == [n for n, _ in shipped.named_parameters()]


def test_cli_reports_corrupt_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"\x00" * 100)
    code = ("from quant_models import build_model\n"
            "from sibnn_base.errors import cli_errors\n"
            f"raise SystemExit(cli_errors(lambda: build_model('si_resnet_w1a1', "
            f"pretrained={str(tmp_path / 'x.pt')!r}))())")
    assert_one_line_error(run_cli(["-c", code]), "corrupt or truncated")


# -- a checkpoint is read once ---------------------------------------------------------------------

@pytest.fixture
def torch_loads(monkeypatch):
    """Every ``torch.load`` from now on, as the list of what it was given."""
    calls, real = [], torch.load

    def counting(f, *args, **kwargs):
        calls.append(f)
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return calls


def test_model_from_checkpoint_reads_the_file_once(tmp_path, torch_loads):
    m = _trained_like()
    path = save_checkpoint(tmp_path / "a.pt", m)
    m2 = model_from_checkpoint(path, expected_arch="si_resnet_w1a1")
    assert torch_loads == [path]
    assert m2.spec == m.spec and m2.arch == "si_resnet_w1a1" and not m2.training
    torch_loads.clear()
    build_model("si_resnet_w1a1", pretrained=path)
    assert torch_loads == [path]


def test_teacher_checkpoint_is_read_once(tmp_path, torch_loads):
    from quant_models.train import build_config
    from quant_models.train.stage_setup import load_teacher

    path = save_checkpoint(tmp_path / "teacher.pt", _trained_like("si_resnet_fp"))
    cfg = build_config({"experiment": "x", "out_dir": str(tmp_path),
                        "model": {"width": 8, "depth": [1, 1]},
                        "stages": [{"name": "s", "student": "si_resnet_w1a1",
                                    "teacher": str(path), "epochs": 1}]})
    torch_loads.clear()
    teacher = load_teacher(cfg, cfg.stages[0], _trained_like())
    assert [str(p) for p in torch_loads] == [str(path)]
    assert teacher.arch == "si_resnet_fp" and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_shipped_teacher_measures_what_it_claims():
    """build_model("si_resnet_fp", pretrained=True): the FP teacher every student distils from,
    sha256-pinned, with the student's geometry, and at its registered test top-1 to the image."""
    import torch

    from quant_models.data import load_test
    from sibnn_base.errors import DatasetError

    entry = get_entry("si_resnet_fp").pretrained
    teacher = build_model("si_resnet_fp", pretrained=True)
    student = get_entry("si_resnet_w1a1")
    assert teacher.spec.width == 32 and list(teacher.spec.depth) == [1, 1, 2]
    assert student.pretrained is None or tuple(student.pretrained.input_shape) == \
        tuple(entry.input_shape)
    try:
        test = load_test(entry.dataset)
    except DatasetError as err:
        pytest.skip(f"needs the {entry.dataset} test set: {err}")
    with torch.no_grad():
        correct = sum(int((teacher(test.x[i:i + 1000]).argmax(1) == test.y[i:i + 1000]).sum())
                      for i in range(0, len(test.x), 1000))
    assert round(100.0 * correct / len(test.x), 2) == entry.top1
