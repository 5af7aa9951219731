"""Shared fixtures: tiny IDX data sets written by the tests, and the real data when present."""

from __future__ import annotations

import copy
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fashionlab import data

REAL_DATA = data.DEBIAN_DIR if (data.DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").exists() else None
needs_real_data = pytest.mark.skipif(
    REAL_DATA is None and not os.environ.get("CI"),
    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")

# Tests share 2 cores with a parallel worker: one thread each keeps timings sane.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The same numbers on every machine: a GPU, where there is one, is for tests/test_gpu.py.
os.environ["FASHIONLAB_DEVICE"] = "cpu"


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in IDX format (magic 0x0801 labels / 0x0803 images)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable tiny data: each class is a bright bar at its own row band, plus noise.

    Mean intensity is kept above MNIST's so the digits detector does not fire.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(60, 100, (n, 28, 28)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 + 2 * y: 4 + 2 * y, 4:24] = 250
    return images, labels.astype(np.uint8)


def write_idx_set(folder: Path, n_train: int = 200, n_test: int = 100, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_images(n_train, 0)
    test_x, test_y = make_images(n_test, 1)
    for stem, arr in (("train-images-idx3-ubyte", train_x), ("train-labels-idx1-ubyte", train_y),
                      ("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y)):
        raw = idx_bytes(arr)
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return folder


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A 200/100-image IDX data set; train with `--dataset any` (its hashes are not official)."""
    return write_idx_set(tmp_path / "tiny")


TINY_CONFIG = {
    "model": {"name": "tiny", "layers": [
        {"type": "flatten"},
        {"type": "dense", "units": 16, "activation": "relu"},
        {"type": "dense", "units": 10, "activation": "softmax"}]},
    "data": {"dataset": "any", "val": "first:50"},
    "train": {"epochs": 2, "batch_size": 32, "seed": 1},
}


@pytest.fixture
def tiny_config() -> dict:
    """A small FC config that trains on tiny_data in well under a second."""
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One finished 1-epoch tiny run, shared by the tests of a module that only read it."""
    from fashionlab.train import train

    root = tmp_path_factory.mktemp("tiny-run")
    return train(TINY_CONFIG, flags={"train.epochs": 1}, data_dir=str(write_idx_set(root / "d")),
                 out=str(root / "runs"), quiet=True)
