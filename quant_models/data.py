"""Datasets as in-memory tensors: Fashion-MNIST / MNIST (IDX), scikit-learn's 8x8 digits, CIFAR-10.

Every loader returns images as float32 ``pixel / 255`` in ``[0, 1]``, NCHW, and int64 labels, which
is the input contract of every network in the zoo (the binary stem recovers the uint8 pixel).

Splits are deterministic: the validation split is carved out of the official training set with a
fixed permutation (``split_seed``), so model selection never looks at the test set. Nothing is
downloaded: a missing dataset raises a one-line :class:`~sibnn_base.errors.DatasetError` that
says how to get it.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from sibnn_base.errors import DatasetError


class DatasetName(str, Enum):
    """Datasets the loaders know."""

    FMNIST = "fmnist"
    MNIST = "mnist"
    DIGITS = "digits"
    CIFAR10 = "cifar10"


DEFAULT_DIRS = {
    DatasetName.FMNIST: Path("/usr/share/datasets/fashion-mnist"),
    DatasetName.MNIST: Path("/usr/share/datasets/mnist"),
}
"""Where the Debian dataset packages install the IDX files."""

HOW_TO_GET = {
    DatasetName.FMNIST: "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir "
                        "with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
    DatasetName.MNIST: "pass --data-dir with the four MNIST IDX files (train-images-idx3-ubyte.gz, "
                       "... from yann.lecun.com/exdb/mnist)",
    DatasetName.CIFAR10: "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/"
                         "cifar.html, unpack it and pass --data-dir .../cifar-10-batches-py",
    DatasetName.DIGITS: "it ships with scikit-learn: `pip install scikit-learn`",
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class Split:
    """One split in memory: ``x`` float32 NCHW in [0, 1], ``y`` int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device) -> Split:
        """The same split on ``device`` (a no-op where it already is)."""
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, n: int | None) -> Split:
        """The first ``n`` samples (all of them if ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Splits:
    """Train / validation / test splits of one dataset."""

    name: str
    train: Split
    val: Split
    test: Split

    def to(self, device) -> Splits:
        """All three splits on ``device`` (data resident on a GPU for training)."""
        return Splits(self.name, self.train.to(device), self.val.to(device), self.test.to(device))


def _parse_name(name: str | DatasetName) -> DatasetName:
    try:
        return DatasetName(name)
    except ValueError:
        valid = ", ".join(d.value for d in DatasetName)
        raise DatasetError(f"unknown dataset {name!r}; valid: {valid}") from None


# -- raw loaders: (train_x uint8 NCHW, train_y, test_x, test_y) -----------------------------------

def _find(directory: Path, stem: str) -> Path | None:
    for cand in (directory / f"{stem}.gz", directory / stem):
        if cand.is_file():
            return cand
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from None
    if len(data) < 4:
        raise DatasetError(f"{path} is not an IDX file (too short)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DatasetError(f"{path} is not a uint8 IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: expected {int(np.prod(shape))} bytes of data, "
                           f"found {body.size}")
    return body.reshape(shape)


def _load_idx(name: DatasetName, directory: Path):
    if not directory.is_dir():
        raise DatasetError(f"{name.value} data directory {directory} does not exist; "
                           f"{HOW_TO_GET[name]}")
    out = []
    for split in ("train", "test"):
        for stem in IDX_FILES[split]:
            path = _find(directory, stem)
            if path is None:
                raise DatasetError(f"{name.value}: {stem}[.gz] not found in {directory}; "
                                   f"{HOW_TO_GET[name]}")
            out.append(_read_idx(path))
    tx, ty, sx, sy = out
    if tx.ndim != 3 or sx.ndim != 3 or len(tx) != len(ty) or len(sx) != len(sy):
        raise DatasetError(f"{name.value} IDX files in {directory} have inconsistent shapes")
    return tx[:, None], ty, sx[:, None], sy


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, bytes, strings and numbers, and nothing else: a
    crafted "CIFAR-10 batch" cannot name a callable (``os.system``, ``eval``) to run on load."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol 2 stores bytes; it only encodes a string
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch "
                                         "holds only arrays, lists, dicts, bytes and numbers")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            import codecs

            return codecs.encode
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray
        return getattr(multiarray, name)


def _load_cifar10(directory: Path):
    name = DatasetName.CIFAR10
    if not directory.is_dir():
        raise DatasetError(f"cifar10 data directory {directory} does not exist; {HOW_TO_GET[name]}")

    def batch(fname: str):
        path = directory / fname
        if not path.is_file():
            raise DatasetError(f"cifar10: {fname} not found in {directory}; {HOW_TO_GET[name]}")
        try:
            with open(path, "rb") as fh:
                d = _ArrayUnpickler(fh, encoding="bytes").load()
            x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(d[b"labels"], dtype=np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as err:
            raise DatasetError(f"cifar10: {path} is not a CIFAR-10 python batch ({err})") from None
        return x, y

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    tx = np.concatenate([p[0] for p in parts])
    ty = np.concatenate([p[1] for p in parts])
    sx, sy = batch("test_batch")
    return tx, ty, sx, sy


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError(f"digits needs scikit-learn; {HOW_TO_GET[DatasetName.DIGITS]}") from None
    d = load_digits()
    # 0..16 -> the uint8 pixel grid, so the input stays exactly representable as pixel / 255
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    # scikit-learn's digits has no official test split: a fixed 20 % of it is the test set
    perm = np.random.default_rng(12345).permutation(len(y))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _to_tensors(x: np.ndarray, y: np.ndarray) -> Split:
    xt = torch.from_numpy(np.array(x, dtype=np.uint8)).to(torch.float32).div_(255.0)
    return Split(xt, torch.from_numpy(np.asarray(y, dtype=np.int64)))


def load_splits(name: str | DatasetName, data_dir: str | Path | None = None, *,
                val_size: int = 5000, split_seed: int = 0) -> Splits:
    """Load a dataset and split its training set into train / validation deterministically.

    Args:
        name: ``fmnist``, ``mnist``, ``digits`` or ``cifar10``.
        data_dir: directory with the dataset files; defaults to the Debian package's directory
            for Fashion-MNIST/MNIST. Required for CIFAR-10; ignored for digits.
        val_size: samples of the official training set held out for validation (model selection).
        split_seed: seed of the fixed permutation that picks the validation samples.
    """
    ds = _parse_name(name)
    if ds is DatasetName.DIGITS:
        tx, ty, sx, sy = _load_digits()
    elif ds is DatasetName.CIFAR10:
        if data_dir is None:
            raise DatasetError(f"cifar10 needs a data directory; {HOW_TO_GET[ds]}")
        tx, ty, sx, sy = _load_cifar10(Path(data_dir))
    else:
        tx, ty, sx, sy = _load_idx(ds, Path(data_dir) if data_dir else DEFAULT_DIRS[ds])
    if not 0 < val_size < len(ty):
        raise DatasetError(f"val_size must be in 1..{len(ty) - 1} for {ds.value}, got {val_size}")
    perm = np.random.default_rng(split_seed).permutation(len(ty))
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    return Splits(ds.value, _to_tensors(tx[train_idx], ty[train_idx]),
                  _to_tensors(tx[val_idx], ty[val_idx]), _to_tensors(sx, sy))


def load_test(name: str | DatasetName, data_dir: str | Path | None = None) -> Split:
    """Only the official test split (for independent evaluation of a checkpoint)."""
    return load_splits(name, data_dir, val_size=1).test


def sample_test_images(n: int, seed: int = 0, name: str | DatasetName = DatasetName.FMNIST,
                       data_dir: str | Path | None = None) -> np.ndarray | None:
    """Up to ``n`` seeded test images (uint8 NHWC) of an IDX dataset, or None when it is not
    installed: the real images of the exactness harness (``flow.proof.verify.load_real_images``)."""
    ds = _parse_name(name)
    directory = Path(data_dir) if data_dir is not None else DEFAULT_DIRS.get(ds)
    path = _find(directory, IDX_FILES["test"][0]) if directory is not None else None
    if path is None:
        return None
    data = _read_idx(path)[..., None]
    idx = np.random.default_rng(seed).choice(len(data), min(n, len(data)), replace=False)
    return data[idx]

