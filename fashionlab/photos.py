"""Turn an ordinary photo into a Fashion-MNIST-style 28x28 input.

A model trained on Fashion-MNIST has only ever seen light garments on a pure black background,
cropped tight and filling the frame on their longest side. The data set was made from product
photos (its README): trim the edges close to the corner colour, resize the longest edge to 28,
sharpen, extend the short edge to 28 centred, negate, 8-bit grayscale. `preprocess` follows the
same steps so a photo of a shoe on a white table looks like what the model learned from.

Images come from users, so opening is defensive: a byte cap, a pixel cap checked before
decoding (decompression bombs), a fixed list of formats, EXIF orientation applied.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from fashionlab.errors import UserError

SIZE = 28
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000
WORK_SIZE = 1024        # photos are shrunk to this before the crop: plenty for a 28-pixel result
TRIM = 0.05 * 255       # Fashion-MNIST's trim tolerance: 5% of the intensity range


def read_bytes(path: str | Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The file's bytes, refusing anything that is not a regular file or is over the cap."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{path}: {size} bytes is over the {max_bytes}-byte limit for an image")
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


def open_image(raw: bytes, name: str = "image"):
    """Decode PNG/JPEG/WebP/GIF/BMP bytes into an upright Pillow image (first frame)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(raw) > MAX_BYTES:
        raise UserError(f"{name}: {len(raw)} bytes is over the {MAX_BYTES}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw), formats=FORMATS)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise UserError(f"{name}: {w}x{h} pixels is over the {MAX_PIXELS}-pixel limit")
            if img.format == "JPEG":  # let libjpeg decode at 1/2..1/8 scale: fast, less memory
                img.draft(img.mode, (WORK_SIZE, WORK_SIZE))
            img.load()
            return ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise UserError(f"{name}: not a readable image (use PNG, JPEG, WebP, GIF or BMP)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"{name}: refused as a possible decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise UserError(f"{name}: corrupt or truncated image ({e})") from None


def to_gray(img) -> np.ndarray:
    """Float32 (H, W) intensities in 0..255; transparency is laid over white like a product shot."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale PNG
        arr = np.asarray(img, dtype=np.float32)
        return arr * (255 / 65535) if arr.max(initial=0) > 255 else arr
    if img.mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0, 255)
    if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32)


def preprocess(gray: np.ndarray) -> np.ndarray:
    """Grayscale (H, W) image -> uint8 (28, 28): light object, black background, cropped, centred.

    The background colour is the median of the border pixels: a light border means a dark
    garment on a light background, which is negated (Fashion-MNIST's step 6).
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or min(g.shape) < 1:
        raise UserError(f"expected a 2-D grayscale image, got shape {g.shape}")
    if np.median(border(g)) > 127.5:
        g = 255 - g
    background = float(np.median(border(g)))
    g = np.clip(g - background, 0, None)
    rows, cols = np.nonzero(denoised(g) > TRIM)
    if len(rows) == 0:  # nothing survives the median: a thin line drawing, take it as it is
        rows, cols = np.nonzero(g > TRIM)
    if len(rows) == 0:
        raise UserError("no object found: the image is one flat colour")
    g = g[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    g = g * (255 / g.max())
    return fit(g)


def denoised(g: np.ndarray) -> np.ndarray:
    """3x3 median: one noisy background pixel above the trim level would widen the crop."""
    from PIL import Image, ImageFilter

    img = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.MedianFilter(3)))


def border(g: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels (2% of the short side deep, at least one pixel)."""
    d = max(1, min(g.shape) // 50)
    return np.concatenate([g[:d].ravel(), g[-d:].ravel(), g[:, :d].ravel(), g[:, -d:].ravel()])


def fit(g: np.ndarray) -> np.ndarray:
    """Longest side to 28 (aspect kept), sharpen, centre on a black 28x28 canvas."""
    from PIL import Image, ImageFilter

    h, w = g.shape
    scale = SIZE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(np.clip(g, 0, 255).round().astype(np.uint8))
    img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    img = img.filter(ImageFilter.UnsharpMask(radius=1, percent=60, threshold=0))
    canvas = np.zeros((SIZE, SIZE), np.uint8)
    top, left = (SIZE - size[1]) // 2, (SIZE - size[0]) // 2
    canvas[top:top + size[1], left:left + size[0]] = np.asarray(img)
    return canvas


def from_bytes(raw: bytes, name: str = "image") -> np.ndarray:
    """Encoded image bytes -> the model's uint8 (28, 28) input."""
    gray = shrink(to_gray(open_image(raw, name)))
    try:
        return preprocess(gray)
    except UserError as e:
        raise UserError(f"{name}: {e}") from None


def shrink(g: np.ndarray) -> np.ndarray:
    """Area-average a big photo down to WORK_SIZE: the crop and resize then stay fast."""
    from PIL import Image

    h, w = g.shape
    if max(h, w) <= WORK_SIZE:
        return g
    scale = WORK_SIZE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(g).resize(size, Image.Resampling.BOX))


def load(path: str | Path) -> np.ndarray:
    """An image file -> the model's uint8 (28, 28) input."""
    return from_bytes(read_bytes(path), str(path))


def to_png(image: np.ndarray) -> bytes:
    """A (28, 28) uint8 input as PNG bytes, to show a user what the model saw."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def prediction(name: str, probs: np.ndarray, classes: tuple[str, ...]) -> dict:
    """The JSON record for one image, the same from `predict --json` and `serve`."""
    label = int(probs.argmax())
    return {"file": name, "label": label, "class": classes[label],
            "probabilities": [round(float(p), 6) for p in probs]}
