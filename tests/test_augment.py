"""Batch augmentations: exact results on hand-made images, shapes, and seeded determinism."""

from __future__ import annotations

import pytest
import torch

from fashionlab import augment

ALMOST_ONE = 1 - 1e-6
OFF = {"flip": 0.0, "translate": 0, "rotate": 0.0, "erase": 0.0}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), generator=gen(seed)).float()


def dot(n: int, row: int, col: int, size: int = 28) -> torch.Tensor:
    """n copies of a black image with one pixel of 255 at (row, col)."""
    x = torch.zeros(n, 1, size, size)
    x[:, 0, row, col] = 255.0
    return x


def test_flip_with_p_near_one_mirrors_every_image() -> None:
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    out = augment.flip(x, ALMOST_ONE, gen())
    assert out[0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]
    assert torch.equal(out, x.flip(3))
    assert torch.equal(augment.flip(x, 0.0, gen()), x)


def test_flip_half_mirrors_some_and_is_seeded() -> None:
    x = images(64)
    out = augment.flip(x, 0.5, gen(3))
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((mirrored | kept).all())
    assert 16 < int(mirrored.sum()) < 48
    assert torch.equal(out, augment.flip(x, 0.5, gen(3)))
    assert not torch.equal(out, augment.flip(x, 0.5, gen(4)))


def test_translate_moves_a_pixel_by_at_most_the_shift() -> None:
    x = dot(200, 10, 12)
    out = augment.translate(x, 2, gen(1))
    assert out.shape == x.shape
    assert bool((out.flatten(1).sum(1) == 255).all()), "a pixel 10 from the edge never leaves"
    where = out[:, 0].flatten(1).argmax(1)
    dy, dx = where // 28 - 10, where % 28 - 12
    offsets = set(zip(dy.tolist(), dx.tolist(), strict=True))
    assert offsets <= {(a, b) for a in range(-2, 3) for b in range(-2, 3)}
    assert len(offsets) == 25  # 200 draws cover all 5 x 5 shifts
    assert torch.equal(out, augment.translate(x, 2, gen(1)))


def test_translate_pads_with_black_at_the_border() -> None:
    out = augment.translate(dot(100, 0, 0), 1, gen(0))
    sums = out.flatten(1).sum(1)
    assert set(sums.tolist()) == {0.0, 255.0}  # shifted off the image, or kept
    full = augment.translate(torch.full((50, 1, 28, 28), 7.0), 3, gen(0))
    assert set(full.unique().tolist()) <= {0.0, 7.0}
    assert float((full == 0).float().mean()) > 0  # some rows/columns came from the padding


def test_rotate_by_zero_is_identity_and_keeps_the_centre() -> None:
    x = images(4)
    assert torch.allclose(augment.rotate(x, 0.0, gen()), x, atol=1e-3)
    block = torch.zeros(16, 1, 28, 28)
    block[:, 0, 13:15, 13:15] = 255.0  # centred on the rotation centre (13.5, 13.5)
    out = augment.rotate(block, 15.0, gen(2))
    assert out.shape == block.shape
    centre = out[:, 0, 12:16, 12:16].flatten(1).sum(1)
    assert torch.allclose(out.flatten(1).sum(1), centre)  # nothing lands outside 4x4
    assert bool((out[:, 0, 13:15, 13:15] > 100).all())
    assert torch.equal(out, augment.rotate(block, 15.0, gen(2)))
    assert not torch.allclose(out[0], out[1])  # each image gets its own angle


def test_erase_blanks_one_rectangle_per_image() -> None:
    x = torch.full((32, 1, 28, 28), 200.0)
    out = augment.erase(x, ALMOST_ONE, gen(5))
    for image in out[:, 0]:
        zero = image == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert bool(box.all()), "the erased pixels form one filled rectangle"
        assert 9 <= int(zero.sum()) <= 0.25 * 784 * 1.3
    assert bool((out[(out != 0)] == 200).all())
    assert torch.equal(augment.erase(x, 0.0, gen(5)), x)
    assert torch.equal(out, augment.erase(x, ALMOST_ONE, gen(5)))


@pytest.mark.parametrize("aug", [{"flip": 0.5}, {"translate": 2}, {"rotate": 10.0},
                                 {"erase": 0.5},
                                 {"flip": 0.5, "translate": 2, "rotate": 10.0, "erase": 0.5}])
def test_apply_keeps_shape_and_dtype_and_is_seeded(aug: dict) -> None:
    settings = {**OFF, **aug}
    assert augment.enabled(settings)
    x = images(16)
    out = augment.apply(x, settings, gen(7))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    assert torch.equal(out, augment.apply(x, settings, gen(7)))
    assert not torch.equal(out, x)


def test_apply_with_everything_off_returns_the_batch() -> None:
    x = images(4)
    assert not augment.enabled(OFF)
    assert augment.apply(x, OFF, gen()) is x


def test_shift_moves_the_image_and_blacks_the_edge():
    x = torch.arange(1, 10, dtype=torch.uint8).reshape(1, 3, 3)
    assert augment.shift(x, 1, 0).tolist() == [[[0, 1, 2], [0, 4, 5], [0, 7, 8]]]
    assert augment.shift(x, 0, -1).tolist() == [[[4, 5, 6], [7, 8, 9], [0, 0, 0]]]
    assert augment.shift(x, -2, 0).tolist() == [[[3, 0, 0], [6, 0, 0], [9, 0, 0]]]
    assert torch.equal(augment.shift(x, 0, 0), x)
