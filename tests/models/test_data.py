"""Dataset loaders: shapes, ranges, deterministic splits, and one-line errors for missing data."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from quant_models.data import DEFAULT_DIRS, DatasetName, load_splits, load_test
from sibnn_base.errors import DatasetError

FMNIST_DIR = DEFAULT_DIRS[DatasetName.FMNIST]
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed at {FMNIST_DIR} (apt-get install dataset-fashion-mnist)")


def _write_idx(path, arr: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n, gz in (("train", 60, True), ("t10k", 20, False)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte{'.gz' if gz else ''}",
                   rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte{'.gz' if gz else ''}",
                   rng.integers(0, 10, (n,)), gz)
    return tmp_path


def test_digits_splits_are_deterministic_and_disjoint():
    a = load_splits("digits", val_size=300)
    b = load_splits("digits", val_size=300)
    assert tuple(a.train.x.shape[1:]) == (1, 8, 8)
    assert (len(a.train), len(a.val), len(a.test)) == (1138, 300, 359)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    for s in (a.train, a.val, a.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert float(s.x.min()) >= 0.0 and float(s.x.max()) <= 1.0
        # pixels sit exactly on the uint8 grid the binary stem recovers
        assert torch.equal(s.x * 255, (s.x * 255).round())
    c = load_splits("digits", val_size=300, split_seed=1)
    assert not torch.equal(a.val.x, c.val.x)
    # validation samples never appear in training
    tr = {tuple(r) for r in a.train.x.flatten(1).tolist()}
    overlap = sum(tuple(r) in tr for r in a.val.x.flatten(1).tolist())
    dups = len(a.train) + len(a.val) - len({*tr, *map(tuple, a.val.x.flatten(1).tolist())})
    assert overlap <= dups  # only identical images that occur twice in the raw data


def test_idx_from_data_dir(idx_dir):
    s = load_splits("fmnist", idx_dir, val_size=10)
    assert (len(s.train), len(s.val), len(s.test)) == (50, 10, 20)
    assert s.train.x.shape == (50, 1, 28, 28)
    raw = np.frombuffer(gzip.open(idx_dir / "train-images-idx3-ubyte.gz").read()[16:], np.uint8)
    seen = torch.cat([s.train.x, s.val.x]).numpy().ravel()
    assert np.array_equal(np.sort(np.rint(seen * 255.0)), np.sort(raw.astype(np.float64)))
    assert torch.equal(load_test("fmnist", idx_dir).x, s.test.x)


def test_missing_fmnist_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_splits("fmnist", tmp_path / "nope")
    msg = str(e.value)
    assert "\n" not in msg and "does not exist" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_missing_idx_file_named(idx_dir):
    (idx_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_splits("fmnist", idx_dir, val_size=10)


def test_truncated_idx_rejected(idx_dir):
    p = idx_dir / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(DatasetError, match="truncated"):
        load_splits("fmnist", idx_dir, val_size=10)


def test_unknown_dataset_and_bad_val_size(idx_dir):
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_splits("imagenet")
    with pytest.raises(DatasetError, match="val_size"):
        load_splits("fmnist", idx_dir, val_size=60)


def test_cifar10_python_layout(tmp_path):
    rng = np.random.default_rng(0)

    def batch(name, n):
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, n).tolist()}
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(d, fh)
        return d

    first = batch("data_batch_1", 4)
    for i in range(2, 6):
        batch(f"data_batch_{i}", 4)
    batch("test_batch", 6)
    s = load_splits("cifar10", tmp_path, val_size=5)
    assert tuple(s.train.x.shape[1:]) == (3, 32, 32)
    assert (len(s.train), len(s.val), len(s.test)) == (15, 5, 6)
    # channel-major rows: the first 1024 bytes are the red plane
    everything = torch.cat([s.train.x, s.val.x])
    img0 = torch.from_numpy(first[b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255)
    assert any(torch.equal(img0, x) for x in everything)


def test_cifar10_needs_dir(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-python"):
        load_splits("cifar10")
    with pytest.raises(DatasetError, match="data_batch_1 not found"):
        load_splits("cifar10", tmp_path)


@needs_fmnist
def test_fashion_mnist_package():
    s = load_splits("fmnist")
    assert (len(s.train), len(s.val), len(s.test)) == (55000, 5000, 10000)
    assert tuple(s.train.x.shape[1:]) == (1, 28, 28)
    assert sorted(torch.bincount(s.test.y).tolist()) == [1000] * 10
