"""Photo preprocessing and `fashionlab predict`: synthetic shapes, real-photo-like test images."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from conftest import needs_real_data
from PIL import Image

from fashionlab import data, photos
from fashionlab.cli import main
from fashionlab.errors import UserError
from fashionlab.train import train


def encode(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kw)
    return out.getvalue()


def rectangle(h=200, w=300, box=(50, 130, 200, 240), bg=240, fg=30) -> np.ndarray:
    g = np.full((h, w), bg, np.uint8)
    g[box[0]:box[1], box[2]:box[3]] = fg
    return g


def extent(image: np.ndarray, level: int = 60) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(image > level)
    return rows.min(), rows.max(), cols.min(), cols.max()


def photo_like(image: np.ndarray, rng: np.random.Generator) -> bytes:
    """A test image as a phone photo might show it: dark on a light, noisy, larger background,
    off-centre, upscaled 4-8x, colour JPEG."""
    k = int(rng.integers(4, 9))
    big = Image.fromarray(255 - image).resize((28 * k, 28 * k), Image.Resampling.BICUBIC)
    bg = int(rng.integers(215, 250))
    h, w = 28 * k + int(rng.integers(20, 200)), 28 * k + int(rng.integers(20, 200))
    canvas = np.full((h, w), bg, np.float32) + rng.normal(0, 3, (h, w))
    top, left = int(rng.integers(0, h - 28 * k + 1)), int(rng.integers(0, w - 28 * k + 1))
    canvas[top:top + 28 * k, left:left + 28 * k] = np.asarray(big, np.float32) * bg / 255
    rgb = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=85)
    return out.getvalue()


def test_dark_on_light_is_inverted_cropped_and_centred():
    out = photos.preprocess(rectangle())
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert out[0, 0] == 0 and out.max() == 255
    top, bottom, left, right = extent(out)
    assert (top, bottom) == (0, 27)          # the long side fills the frame
    assert right - left + 1 == 14            # 80x40 box: aspect 2:1 kept
    assert (left, right) == (7, 20)          # centred


def test_light_on_dark_is_not_inverted():
    out = photos.preprocess(rectangle(box=(10, 40, 10, 100), bg=5, fg=200))
    top, bottom, left, right = extent(out)
    assert (left, right) == (0, 27)
    assert bottom - top + 1 == 9 and abs((top + bottom) / 2 - 13.5) <= 1
    assert out[0, 0] == 0 and out[13, 13] == 255


def test_off_centre_object_moves_to_the_middle():
    a = photos.preprocess(rectangle(box=(5, 45, 5, 35)))
    b = photos.preprocess(rectangle(box=(150, 190, 260, 290)))
    np.testing.assert_array_equal(a, b)


def test_flat_image_has_no_object():
    with pytest.raises(UserError, match="no object"):
        photos.preprocess(np.full((50, 50), 128, np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_formats_agree(fmt):
    expected = photos.preprocess(rectangle())
    got = photos.from_bytes(encode(rectangle(), fmt), f"x.{fmt}")
    assert np.abs(got.astype(int) - expected).mean() < 8


def test_transparent_and_16_bit_png():
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[20:80, 40:60] = (20, 20, 20, 255)       # opaque dark object, transparent elsewhere
    out = photos.from_bytes(encode(rgba))
    assert out[0, 0] == 0 and out[14, 14] == 255
    wide = rectangle().astype(np.uint16) * 257
    png16 = io.BytesIO()
    Image.fromarray(wide).save(png16, format="PNG")
    np.testing.assert_array_equal(photos.from_bytes(png16.getvalue()),
                                  photos.preprocess(rectangle()))


def test_exif_orientation_is_applied():
    img = Image.fromarray(rectangle(h=100, w=300, box=(20, 80, 10, 290)))
    exif = Image.Exif()
    exif[0x0112] = 6                             # "rotate 90 degrees clockwise to display"
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif)
    top, bottom, left, right = extent(photos.from_bytes(out.getvalue()))
    assert bottom - top > right - left           # the wide box is shown tall


def test_bad_images_are_refused(monkeypatch):
    with pytest.raises(UserError, match="not a readable image"):
        photos.from_bytes(b"hello, I am text", "notes.txt")
    with pytest.raises(UserError, match="corrupt or truncated"):
        photos.from_bytes(encode(rectangle())[:200], "cut.png")
    with pytest.raises(UserError, match="not a readable image"):  # TIFF is not on the list
        photos.from_bytes(encode(rectangle(), "TIFF"), "x.tif")
    monkeypatch.setattr(photos, "MAX_PIXELS", 1000)
    with pytest.raises(UserError, match="pixel limit"):
        photos.from_bytes(encode(rectangle()), "huge.png")
    monkeypatch.setattr(photos, "MAX_BYTES", 100)
    with pytest.raises(UserError, match="byte limit"):
        photos.from_bytes(encode(rectangle()), "big.png")


def test_predict_folder_skips_bad_files(tiny_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a shoe.png").write_bytes(encode(rectangle()))
    (folder / "sub" / "b.jpg").write_bytes(encode(rectangle(box=(10, 60, 10, 200)), "JPEG"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / ".hidden.png").write_bytes(b"ignored")
    os.symlink("/etc/hostname", folder / "escape.png")
    saved = tmp_path / "seen"
    code = main(["predict", str(tiny_run), str(folder), "--json", "--save-preprocessed",
                 str(saved)])
    out, err = capsys.readouterr()
    assert code == 2
    results = json.loads(out)
    assert [os.path.basename(r["file"]) for r in results] == ["a shoe.png", "b.jpg"]
    for r in results:
        assert set(r) == {"file", "label", "class", "probabilities"}
        assert len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-4
        assert r["label"] == int(np.argmax(r["probabilities"]))
    assert "broken.jpg" in err and "escape.png" in err and ".hidden" not in err
    assert len(err.strip().splitlines()) == 2
    assert sorted(p.name for p in saved.iterdir()) == ["0000-a_shoe.png", "0001-b.png"]
    assert np.asarray(Image.open(saved / "0000-a_shoe.png")).shape == (28, 28)


def test_predict_table(tiny_run, tmp_path, capsys):
    path = tmp_path / "x.png"
    path.write_bytes(encode(rectangle()))
    assert main(["predict", str(tiny_run), str(path), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "#1", "#2"] and len(lines) == 2
    assert main(["predict", str(tiny_run), str(tmp_path / "missing.png")]) == 2


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return train("quick-fc", flags={"train.epochs": 1}, out=str(root), quiet=True)


@pytest.mark.slow
@needs_real_data
def test_real_photo_like_images_match_test_accuracy(real_run, tmp_path, capsys):
    """The issue's acceptance test: inverted, off-centre, upscaled JPEGs made from held-out
    test images score within 8 points of the same images unmodified."""
    from fashionlab.inference import load_trained

    ds = data.load()
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(ds.test_x), 300, replace=False))  # the folder order
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in pick:
        (folder / f"{i:05d}.jpg").write_bytes(photo_like(ds.test_x[i], rng))
    (folder / "zz-corrupt.jpg").write_bytes(photo_like(ds.test_x[0], rng)[:300])
    assert main(["predict", str(real_run), str(folder), "--json"]) == 2
    out, err = capsys.readouterr()
    assert "zz-corrupt.jpg" in err
    predicted = np.array([r["label"] for r in json.loads(out)])
    assert len(predicted) == len(pick)
    photo_acc = (predicted == ds.test_y[pick]).mean()
    plain_acc = (load_trained(real_run).probabilities(ds.test_x[pick]).argmax(1)
                 == ds.test_y[pick]).mean()
    assert plain_acc > 0.7
    assert photo_acc > plain_acc - 0.08, (photo_acc, plain_acc)


def test_a_run_is_scored_in_the_precision_it_trained_in(tiny_run, monkeypatch):
    """evaluate, predict and serve give the run's metrics.json figure: its own precision, where
    this machine does it natively; never the one `auto` would pick for training here."""
    from fashionlab import hardware, inference, runs

    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert inference.scoring_precision("fp32", cpu) == "fp32"  # auto: bf16 for a big net here
    assert inference.scoring_precision("bf16", cpu) == "bf16"  # even for a small net
    runs.update_info(tiny_run, precision="bf16")
    try:
        assert inference.load_trained(tiny_run).precision == "bf16"
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
        assert inference.scoring_precision("bf16", cpu) == "auto"  # emulated: slow
        assert inference.load_trained(tiny_run).precision == "fp32"
    finally:
        runs.update_info(tiny_run, precision="fp32")
