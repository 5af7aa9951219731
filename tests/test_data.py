"""Readers, sources, verification and validation splits."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from conftest import REAL_DATA, idx_bytes, make_images, needs_real_data, write_idx_set

from fashionlab import data
from fashionlab.errors import DataError


def test_parse_idx_roundtrip_images_and_labels():
    images, labels = make_images(7, seed=3)
    assert np.array_equal(data.parse_idx(idx_bytes(images)), images)
    assert np.array_equal(data.parse_idx(idx_bytes(labels)), labels)


def test_read_idx_gzipped_and_plain(tmp_path):
    images, _ = make_images(5, seed=0)
    (tmp_path / "a").write_bytes(idx_bytes(images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images)))
    assert np.array_equal(data.read_idx(tmp_path / "a"), images)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), images)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "not unsigned bytes"),
    (lambda b: b"\x12\x34" + b[2:], "wrong magic number"),
    (lambda b: b[:-10], "truncated"),
    (lambda b: b + b"\x00", "unexpected bytes"),
    (lambda b: b[:2], "too short"),
])
def test_parse_idx_rejects_corruption(mutate, message):
    images, _ = make_images(3, seed=0)
    with pytest.raises(DataError, match=message):
        data.parse_idx(mutate(idx_bytes(images)))


def test_corrupt_gzip_is_a_data_error(tmp_path):
    raw = gzip.compress(idx_bytes(make_images(3, 0)[0]))
    (tmp_path / "x.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        data.read_idx(tmp_path / "x.gz")


def test_csv_reader_kaggle_layout():
    images, labels = make_images(4, seed=2)
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    rows = [",".join(map(str, [y, *x.ravel()])) for x, y in zip(images, labels, strict=True)]
    x, y = data.parse_csv("\n".join([header, *rows]))
    assert np.array_equal(x, images) and np.array_equal(y, labels)
    quoted = header.replace("label", '"label"')  # Excel's way: a BOM, quotes, CRLF lines
    x, y = data.parse_csv("\ufeff" + "\r\n".join([quoted, *rows]) + "\r\n")
    assert np.array_equal(x, images) and np.array_equal(y, labels)


@pytest.mark.parametrize("text, message", [
    ("pixel1,pixel2\n1,2", "header starting with 'label'"),
    ("label,p1,p2\n1,2,3", "expected 785"),
    ("label," + ",".join(["p"] * 784) + "\n3," + ",".join(["x"] * 784), "line 2"),
    ("label," + ",".join(["p"] * 784) + "\n12," + ",".join(["0"] * 784), "labels must lie"),
    ("label," + ",".join(["p"] * 784) + "\n-1," + ",".join(["0"] * 784), "labels must lie"),
    ("label," + ",".join(["p"] * 784) + "\n1," + ",".join(["0"] * 783) + ",99999999999",
     "line 2 is not 785"),
    ("label," + ",".join(["p"] * 784) + "\n1," + ",".join(["300"] * 784), "0..255"),
])
def test_csv_errors(text, message):
    with pytest.raises(DataError, match=message):
        data.parse_csv(text)


def test_load_folder_with_any_dataset(tmp_path):
    folder = write_idx_set(tmp_path / "d", n_train=30, n_test=20, gz=False)
    ds = data.load(folder, dataset="any")
    assert ds.train_x.shape == (30, 28, 28) and ds.test_y.shape == (20,)
    assert not ds.verified and ds.source == "--data-dir"
    assert ds.classes == tuple(str(i) for i in range(10))


def test_unofficial_files_are_refused_as_fashion_mnist(tiny_data):
    with pytest.raises(DataError, match="do not match the SHA-256"):
        data.load(tiny_data)


def test_mnist_digits_are_recognised(tmp_path):
    folder = write_idx_set(tmp_path / "m", n_train=50, n_test=20)
    dark, _ = make_images(50, 0)
    dark = (dark // 8).astype(np.uint8)  # thin bright strokes on black: MNIST-like mean
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(dark)))
    with pytest.raises(DataError, match="MNIST handwritten digits"):
        data.load(folder)


def test_count_mismatch_and_label_range(tmp_path):
    folder = write_idx_set(tmp_path / "c", n_train=30, n_test=20)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(29, np.uint8))))
    with pytest.raises(DataError, match="30 images but 29 labels"):
        data.load(folder, dataset="any")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.full(30, 11, np.uint8))))
    with pytest.raises(DataError, match="labels must lie in 0..9"):
        data.load(folder, dataset="any")


def test_wrong_image_shape(tmp_path):
    folder = write_idx_set(tmp_path / "s", n_train=30, n_test=20)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros((30, 32, 32), np.uint8))))
    with pytest.raises(DataError, match=r"shape \(30, 32, 32\), expected \(N, 28, 28\)"):
        data.load(folder, dataset="any")


def test_missing_file_named(tmp_path):
    folder = write_idx_set(tmp_path / "x", n_train=30, n_test=20)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-images-idx3-ubyte"):
        data.load(folder, dataset="any")


def test_source_order(monkeypatch, tmp_path):
    monkeypatch.setenv("FASHIONLAB_DATA", str(tmp_path))
    assert data.source_dir(tmp_path / "explicit") == ("--data-dir", tmp_path / "explicit")
    assert data.source_dir() == ("FASHIONLAB_DATA", tmp_path)
    monkeypatch.delenv("FASHIONLAB_DATA")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.source_dir() == ("download cache", tmp_path / "cache" / "fashionlab" /
                                 "fashion-mnist")


def test_download_verifies_content(tmp_path):
    served = write_idx_set(tmp_path / "served", n_train=30, n_test=20)
    with pytest.raises(DataError, match="does not match the known SHA-256"):
        data.download(tmp_path / "cache", base_url=served.as_uri())
    assert not list((tmp_path / "cache").glob("*.gz"))  # nothing unverified is kept


def test_download_failure_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.download(tmp_path / "cache", base_url=(tmp_path / "nowhere").as_uri())


@needs_real_data
def test_download_of_real_files_is_verified_and_cached(tmp_path):
    data.download(tmp_path / "cache", base_url=REAL_DATA.as_uri())
    ds = data.load(tmp_path / "cache")
    assert ds.verified and len(ds.train_y) == 60000


@needs_real_data
def test_real_data_is_verified_and_balanced():
    ds = data.load(REAL_DATA)
    assert ds.verified
    assert ds.train_x.shape == (60000, 28, 28) and ds.test_x.shape == (10000, 28, 28)
    assert data.class_counts(ds.train_y).tolist() == [6000] * 10
    assert data.class_counts(ds.test_y).tolist() == [1000] * 10
    assert abs(ds.train_x.mean() / 255 - data.MEAN) < 1e-3
    order = np.random.default_rng(0).permutation(10000)  # a CSV export may reorder the rows
    assert data.fingerprint(ds.test_x[order], ds.test_y[order]) == data.CSV_SHA256[
        "fashion-mnist_test.csv"]
    assert data.fingerprint(ds.train_x, ds.train_y) == data.CSV_SHA256["fashion-mnist_train.csv"]
    assert data.fingerprint(ds.test_x[1:], ds.test_y[1:]) != data.CSV_SHA256[
        "fashion-mnist_test.csv"]


@pytest.mark.parametrize("spec, n_train, first_val", [
    ("first:100", 900, 0), ("last:0.25", 750, 750), ("none", 1000, None)])
def test_split_deterministic_kinds(spec, n_train, first_val):
    train, val = data.split(1000, spec)
    assert len(train) == n_train and len(train) + len(val) == 1000
    assert not set(train) & set(val)
    assert (val[0] if len(val) else None) == first_val


@pytest.mark.parametrize("n, fraction, n_train", [
    (60000, 0.33, 40199), (60000, 0.2, 48000), (60000, 0.1, 54000), (1000, 0.3, 700)])
def test_last_split_is_keras_validation_split(n, fraction, n_train):
    """Keras's validation_split trains on floor(n * (1 - F)) images, float error included:
    60000 at 0.33 trains on 40199 (1 - 0.33 is 0.66999...), not round(60000 * 0.67)."""
    train, val = data.split(n, f"last:{fraction}")
    assert len(train) == n_train == int(n * (1.0 - fraction)) and val[0] == n_train


def test_fraction_split_is_seeded():
    a, va = data.split(1000, "fraction:0.2", seed=1)
    b, vb = data.split(1000, "fraction:0.2", seed=1)
    _, vc = data.split(1000, "fraction:0.2", seed=2)
    assert len(va) == 200 and np.array_equal(va, vb) and not np.array_equal(va, vc)
    assert sorted([*a, *va]) == list(range(1000))


@pytest.mark.parametrize("spec", ["first:0", "first:1000", "fraction:1.5", "half", "last:x"])
def test_bad_split(spec):
    with pytest.raises(DataError, match="bad validation split"):
        data.split(1000, spec)


def test_normalizer():
    a, b = data.normalizer("standard")
    assert abs(255 * data.MEAN * a + b) < 1e-9
    assert data.normalizer("scale") == (1 / 255, 0.0)
