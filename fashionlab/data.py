"""Fashion-MNIST (or any data set in its IDX or Kaggle-CSV layout) loaded into memory.

    fashionlab data info

Sources, in order: an explicit directory (--data-dir or $FASHIONLAB_DATA), Debian's package
`dataset-fashion-mnist`, then a user cache filled by a checksum-verified download. Everything
here is NumPy so the NumPy engine and the classic baselines can use it without torch.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import urllib.request
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fashionlab.errors import DataError, SpecError

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# SHA-256 of the *decompressed* IDX files: Debian recompresses the .gz files, so hashing the
# compressed bytes would reject a good copy.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CSV_NAMES = ("fashion-mnist_train.csv", "fashion-mnist_test.csv")
# The same images as rows of a CSV file, whatever their order: see fingerprint().
CSV_SHA256 = {
    "fashion-mnist_train.csv": "56016b2341e99c383df5cc0ed736f4afb12a6c90855d9f3d69981b294a0159ad",
    "fashion-mnist_test.csv": "b73438e78d64c9f337edad19c3eea888b49d646dbe27b46e4e3177218f3581e7",
}
IMAGE_SIZE = 28
IDX_UBYTE = 0x08


@dataclass(frozen=True)
class DataSet:
    """The train and test splits as uint8 arrays: images (N, 28, 28), labels (N,)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    path: Path
    verified: bool
    classes: tuple[str, ...] = CLASSES
    files: dict[str, str] = field(default_factory=dict)


def _decompress(raw: bytes, name: str) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: corrupt or truncated gzip data ({e})") from None


def _open_bytes(path: Path) -> bytes:
    try:
        return _decompress(path.read_bytes(), str(path))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def parse_idx(raw: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes (the MNIST file format) into a uint8 array, checking every field."""
    if len(raw) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or ndim == 0:
        raise DataError(
            f"{name}: wrong magic number 0x{raw[:4].hex()} "
            "(expected 0x00000801 for labels or 0x00000803 for images)")
    if ndim not in (1, 3):  # a valid IDX file, of a shape this tool does not read
        raise DataError(f"{name}: an IDX array with {ndim} dimensions; expected images (N, 28, "
                        "28), one grey-scale image per item, or labels (N,)")
    if dtype != IDX_UBYTE:
        raise DataError(f"{name}: IDX data type 0x{dtype:02x} is not unsigned bytes (0x08)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)  # Python ints: a forged header cannot overflow
    body = len(raw) - header
    if body < expected:
        raise DataError(f"{name}: truncated: header promises {expected} bytes of data "
                        f"for shape {dims}, file holds {body}")
    if body > expected:
        raise DataError(f"{name}: {body - expected} unexpected bytes after the data "
                        f"for shape {dims}")
    return np.frombuffer(raw, np.uint8, expected, header).reshape(dims).copy()


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not."""
    path = Path(path)
    return parse_idx(_open_bytes(path), str(path))


def parse_csv(text: str, name: str = "CSV data") -> tuple[np.ndarray, np.ndarray]:
    """Decode the Kaggle layout: a header `label,pixel1..pixel784`, then one image per row.
    NumPy's C reader holds 60,000 rows in a few hundred MB; a list of Python strings took GBs."""
    header, _, body = text.lstrip("\ufeff").partition("\n")  # a BOM, as Excel writes
    header = header.replace('"', "").strip()
    if not header.lower().startswith("label"):
        raise DataError(f"{name}: expected a header starting with 'label' (Kaggle layout)")
    ncol = header.count(",") + 1
    if ncol != 1 + IMAGE_SIZE * IMAGE_SIZE:
        raise DataError(f"{name}: header has {ncol} columns, expected 785 (label + 784 pixels)")
    if not body.strip():
        raise DataError(f"{name}: no data rows")
    try:
        values = np.loadtxt(body.splitlines(), delimiter=",", dtype=np.int32, ndmin=2)
    except (ValueError, OverflowError):
        values = None
    if values is None or values.shape[1] != ncol:
        rows = [r.split(",") for r in body.strip().splitlines()]
        raise DataError(f"{name}: line {_first_bad_row(rows, ncol)} is not {ncol} integers")
    labels = _check_labels(values[:, 0], name)
    if values[:, 1:].min() < 0 or values[:, 1:].max() > 255:
        raise DataError(f"{name}: pixel values must lie in 0..255")
    return values[:, 1:].astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE), labels


def _first_bad_row(rows: list[list[str]], ncol: int) -> int:
    """Line number (header = 1) of the first row that is not `ncol` int32 values."""
    for line, row in enumerate(rows, 2):
        try:
            if len(row) != ncol or np.array(row, dtype=np.int32).shape != (ncol,):
                return line
        except (ValueError, OverflowError):
            return line
    return 2


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the set of (label, pixels) rows, blind to their order: a CSV export may list
    the images in another order than the IDX files, and is the same data all the same."""
    rows = np.concatenate([labels.reshape(-1, 1).astype(np.uint8),
                           images.reshape(len(images), -1)], axis=1)
    rows = np.ascontiguousarray(rows).view(f"V{rows.shape[1]}").ravel()
    return hashlib.sha256(np.sort(rows).tobytes()).hexdigest()


def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    try:
        text = _open_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file") from None
    return parse_csv(text, str(path))


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{name}: labels must lie in 0..9, found {int(labels.min())}.."
                        f"{int(labels.max())}")
    return labels.astype(np.uint8)


def _find_idx(folder: Path, stem: str) -> Path | None:
    alt = stem.replace("-idx", ".idx")  # MNIST's own site names them train-images.idx3-ubyte
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_folder(folder: Path) -> tuple[dict, bool, dict]:
    arrays, hashes, verified = {}, {}, True
    for stem in SHA256:
        path = _find_idx(folder, stem)
        if path is None:
            raise DataError(f"{folder}: missing {stem}[.gz]")
        raw = _open_bytes(path)
        digest = hashlib.sha256(raw).hexdigest()
        hashes[path.name] = digest
        verified &= digest == SHA256[stem]
        arrays[stem] = parse_idx(raw, str(path))
    return arrays, verified, hashes


def _pair(images: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{what} images have shape {images.shape}, expected (N, {IMAGE_SIZE}, "
                        f"{IMAGE_SIZE}) (one 28x28 grey-scale image per item)")
    if labels.ndim != 1:
        raise DataError(f"{what} labels must be one-dimensional, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{what}: {len(images)} images but {len(labels)} labels")
    if not len(labels):
        raise DataError(f"the {what} set has no images")
    return images, _check_labels(labels, f"{what} labels")


def looks_like_mnist_digits(images: np.ndarray) -> bool:
    """MNIST digits are thin strokes (mean pixel ~33); Fashion-MNIST garments are filled (~73)."""
    return float(images[:2000].mean()) < 45.0


def source_dir(data_dir: str | Path | None = None) -> tuple[str, Path]:
    """Where the data will come from, without reading it: (source name, folder)."""
    if data_dir:
        return "--data-dir", Path(data_dir)
    if os.environ.get("FASHIONLAB_DATA"):
        return "FASHIONLAB_DATA", Path(os.environ["FASHIONLAB_DATA"])
    if _find_idx(DEBIAN_DIR, "t10k-labels-idx1-ubyte"):
        return "debian package dataset-fashion-mnist", DEBIAN_DIR
    return "download cache", cache_dir()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fashionlab" / "fashion-mnist"


def download(folder: Path, base_url: str | None = None, timeout: float = 30.0) -> None:
    """Fill `folder` with the four files, keeping only those whose content hash matches."""
    base_url = base_url or os.environ.get("FASHIONLAB_MIRROR") or DOWNLOAD_URL
    folder.mkdir(parents=True, exist_ok=True)
    for stem, expected in SHA256.items():
        target = folder / (stem + ".gz")
        if target.is_file():
            continue
        url = base_url.rstrip("/") + "/" + stem + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                raw = response.read()
        except OSError as e:
            raise DataError(
                f"Fashion-MNIST not found and the download of {url} failed ({e}); pass "
                "--data-dir DIR, set FASHIONLAB_DATA, or apt-get install dataset-fashion-mnist"
            ) from None
        if hashlib.sha256(_decompress(raw, url)).hexdigest() != expected:
            raise DataError(f"{url}: downloaded content does not match the known SHA-256")
        tmp = target.with_suffix(".part")
        tmp.write_bytes(raw)
        os.replace(tmp, target)


def load(data_dir: str | Path | None = None, dataset: str = "fashion-mnist") -> DataSet:
    """Load train and test sets. `dataset="any"` accepts other IDX/CSV data sets unverified."""
    if dataset not in ("fashion-mnist", "any"):
        raise DataError(f"unknown dataset {dataset!r}: use 'fashion-mnist' or 'any'")
    source, folder = source_dir(data_dir)
    if source == "download cache" and not _find_idx(folder, "t10k-labels-idx1-ubyte"):
        download(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} ({source}) "
                        + ("is a file: name the folder that holds the data files"
                           if folder.exists() else "does not exist"))
    hashes: dict[str, str] = {}
    csvs = sorted(p.name for p in folder.glob("*.csv"))
    idx = _find_idx(folder, "train-images-idx3-ubyte")
    if csvs and not idx and not all(n in csvs for n in CSV_NAMES):
        raise DataError(f"{folder}: found {', '.join(csvs)}; CSV data is read as "
                        f"{' and '.join(CSV_NAMES)} (Kaggle's names)")
    if all(n in csvs for n in CSV_NAMES) and not idx:
        train_x, train_y = read_csv(folder / CSV_NAMES[0])
        test_x, test_y = read_csv(folder / CSV_NAMES[1])
        hashes = {CSV_NAMES[0]: fingerprint(train_x, train_y),
                  CSV_NAMES[1]: fingerprint(test_x, test_y)}
        verified = hashes == CSV_SHA256
    else:
        arrays, verified, hashes = _load_idx_folder(folder)
        train_x, train_y = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
        test_x, test_y = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    train_x, train_y = _pair(train_x, train_y, "training")
    test_x, test_y = _pair(test_x, test_y, "test")
    if dataset == "fashion-mnist" and not verified:
        if looks_like_mnist_digits(train_x):
            raise DataError(f"{folder}: these are MNIST handwritten digits, not Fashion-MNIST "
                            "(data set 'any' takes them: --dataset any, or data.dataset = "
                            "\"any\" in a spec)")
        if hashes:
            raise DataError(f"{folder}: files do not match the SHA-256 of Fashion-MNIST "
                            "(modified or another data set; data set 'any' takes them: "
                            "--dataset any, or data.dataset = \"any\" in a spec)")
    return DataSet(train_x, train_y, test_x, test_y, source, folder, verified,
                   class_names({"dataset": dataset}), hashes)


def split(n: int, val: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) for a validation spec.

    `first:N` holds out the first N images (report 000); `last:F` the last fraction, which is
    what Keras's `validation_split=F` does; `fraction:F` a seeded random fraction; `none`.
    """
    kind, _, arg = val.partition(":")
    idx = np.arange(n)
    if kind == "none" and not arg:
        return idx, idx[:0]
    try:
        number = float(arg)
    except ValueError:
        number = -1.0
    if not math.isfinite(number):
        number = -1.0
    if kind == "first" and number == int(number) and 0 < number < n:
        return idx[int(number):], idx[:int(number)]
    if kind == "last" and 0 < number < 1:
        split_at = math.floor(n * (1.0 - number))  # Keras's own arithmetic, float error and all
        return idx[:split_at], idx[split_at:]  # (60000 at 0.33: 40199 + 19801)
    if kind == "fraction" and 0 < number < 1:
        k = int(round(n * number))
        perm = np.random.default_rng(seed).permutation(n)
        return np.sort(perm[k:]), np.sort(perm[:k])
    raise DataError(f"bad validation split {val!r} (data.val; --val sets it) for {n:,} "
                    f"training images: use first:N (0<N<{n}), last:F or fraction:F (0<F<1), "
                    "or none")


def class_counts(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=10)


# Mean and standard deviation of x/255 over the Fashion-MNIST training images.
MEAN, STD = 0.2860, 0.3530


def normalizer(kind: str) -> tuple[float, float]:
    """(a, b) so that normalised = pixels * a + b, for pixels in 0..255."""
    if kind == "scale":
        return 1 / 255, 0.0
    if kind == "standard":
        return 1 / (255 * STD), -MEAN / STD
    if kind == "raw":
        return 1.0, 0.0
    raise DataError(f"unknown normalisation {kind!r}: use scale, standard or raw")


def class_names(data_cfg: dict) -> tuple[str, ...]:
    """Names of the labels 0..9: the config's `data.classes`, else Fashion-MNIST's, else the
    digits (another data set's names are for its user to give)."""
    names = data_cfg.get("classes") or ()
    if names:
        if len(names) != 10 or not all(isinstance(n, str) and n.strip() for n in names):
            raise SpecError(f"data.classes must name the 10 labels 0..9, got {list(names)!r}")
        return tuple(names)
    if data_cfg.get("dataset", "fashion-mnist") == "fashion-mnist":
        return CLASSES
    return tuple(str(i) for i in range(10))


def for_config(data_dir: str | Path | None, data_cfg: dict) -> DataSet:
    """The data set a config names, its classes named as the config says."""
    names = class_names(data_cfg)
    return replace(load(data_dir, data_cfg.get("dataset", "fashion-mnist")), classes=names)


def provenance(ds: DataSet) -> dict:
    """What run.json keeps of a run's data: where it came from and the files' SHA-256, so a
    run is scored on its own files and runs on other data are never taken for seeds of one."""
    return {"source": ds.source, "path": str(Path(ds.path).resolve()), "verified": ds.verified,
            **({"sha256": contents(ds)} if ds.files else {})}


def contents(ds: DataSet) -> dict[str, str]:
    """The files' SHA-256 keyed by what they hold, not how they are stored: IDX hashes are of
    the decompressed bytes, so a gunzipped copy is the same data."""
    return by_content(ds.files)


def by_content(hashes: dict[str, str]) -> dict[str, str]:
    """File hashes keyed without `.gz` (run.json recorded them with it for a while)."""
    return {name.removesuffix(".gz"): digest for name, digest in hashes.items()}


def of_run(info: dict, config: dict, data_dir: str | Path | None = None) -> DataSet:
    """The data set a run was trained on (its run.json and config.toml): --data-dir, else the
    folder it recorded, which must still hold the same files: scoring a run on other images
    without being asked would put wrong numbers beside its own."""
    recorded = info.get("data", {})
    official = recorded.get("verified") and config.get("data", {}).get("dataset") != "any"
    if data_dir is not None or not recorded.get("path") or (
            official and not Path(recorded["path"]).is_dir()):  # found wherever it is here
        return for_config(data_dir, config.get("data", {}))
    if not Path(recorded["path"]).is_dir():
        raise DataError(f"this run's data folder {recorded['path']} is gone: name the data "
                        "with --data-dir")
    ds = for_config(recorded["path"], config.get("data", {}))
    if by_content(recorded.get("sha256", contents(ds))) != contents(ds):
        raise DataError(f"the files in {recorded['path']} changed since this run trained "
                        "(SHA-256 differs): name the data with --data-dir")
    return ds
