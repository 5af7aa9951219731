"""Run folders: every training run writes one self-describing folder.

    runs/20261123-114501-weil-fc/
        config.toml          resolved config (spec + every option)
        run.json             state (running/finished/interrupted/diverged/failed), reason,
                             command, code version, machine, precision
        history.csv          one row per finished epoch, rewritten as each epoch ends
        metrics.json         test_accuracy (fraction), test_loss, epochs_run, train_seconds, params
        model.safetensors    final weights
        predictions.safetensors  per-image test probabilities (float32) and labels
        checkpoint.safetensors   what resuming needs, replaced atomically each epoch

Every file is written to a temporary name in the same folder, fsynced and renamed, so a kill
or a full disk leaves the previous version intact. NumPy only: both engines write here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from fashionlab.errors import RunError, UserError

_UMASK = os.umask(0o22)
os.umask(_UMASK)
STATES = ("running", "finished", "interrupted", "diverged", "failed")
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")


def _write_failure(error: Exception) -> str | None:
    """Why a write failed, for an OSError or safetensors' own error wrapping one (its text:
    "Error while serializing: I/O error: No space left on device (os error 28)")."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if isinstance(error, SafetensorError) and "I/O error: " in str(error):
        return re.sub(r" \(os error \d+\)$", "", str(error).split("I/O error: ", 1)[1])
    return None


def _atomic(path: Path, write) -> None:
    """Write via `write(tmp_path)` then rename over `path`; on failure `path` is untouched."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes 0600, and safetensors writes its file anew as 0600 too: give the
        # user's usual permissions, so that another user (or `serve`) can read a run
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        Path(tmp).unlink(missing_ok=True)
        reason = _write_failure(e)
        if reason is None:
            raise
        raise UserError(f"cannot write {path}: {reason} (previous version kept)") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(run_dir: Path) -> None:
    """Half-written files a kill -9 left mid-write (ours, and safetensors' own `.tmp*`):
    never read, but a checkpoint's worth of disk each, so a resumed run removes them."""
    for tmp in [*run_dir.glob(".*.tmp"), *run_dir.glob(".tmp*")]:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


RUN_FILES = ("run.json", "config.toml", "metrics.json", "history.csv", "model.safetensors",
             "checkpoint.safetensors", "predictions.safetensors")


FIGURES = ("", ".png", ".svg")  # no suffix: png


def output_file(path: str | Path, suffixes: tuple[str, ...] | None = None) -> Path:
    """A file the user named for a command to write (a report, an export, a figure), checked
    before any work: its folder is made, and it may not be a folder or one of a run folder's
    own files, which writing over would lose a finished result."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"{path}: write it as {' or '.join(s for s in suffixes if s)}")
    if path.is_dir():
        raise UserError(f"{path} is a folder: name the file to write")
    if path.name in RUN_FILES and (path.parent / "run.json").is_file():
        raise UserError(f"{path} is a file of the run in {path.parent}: write somewhere else")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot write {path}: its folder is not writable")
    return path


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def _json_safe(obj: Any) -> Any:
    """NaN and infinity as null: they are not JSON, and strict readers (browsers, jq) refuse
    a file holding them (a run without validation images has no validation accuracy)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False)
               + "\n")


def write_tensors(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    # ascontiguousarray turns a 0-d array (BatchNorm's num_batches_tracked) into shape (1,)
    arrays = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in arrays.items()}
    _atomic(path, lambda tmp: save_file(arrays, str(tmp), metadata=meta))


def read_checkpoint(path: Path, fmt: str, writer: str) -> tuple[dict[str, np.ndarray], dict]:
    """A checkpoint's tensors and its JSON state; any damage is one line naming the file."""
    tensors, meta = read_tensors(path)
    if meta.get("format") != fmt:
        raise RunError(f"{path} was not written by {writer}")
    try:
        return tensors, json.loads(meta["state"])
    except (KeyError, ValueError) as e:
        raise RunError(f"{path} is damaged (its state is unreadable: {e}); remove it to train "
                       "the run again from epoch 1") from None


def read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Safetensors holds no code, so reading a user's file cannot run anything."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunError(f"{path}: not a readable safetensors file ({reason})") from None


@cache
def code_version() -> str:
    """Git commit of the fashionlab source (with +dirty), or the package version."""
    from fashionlab import __version__

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+git.{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def parent(out: str | Path | None = None) -> Path:
    """The folder new run folders go in: --out, or runs/ in the working directory."""
    return Path(out) if out else Path("runs")


def create(name: str, out: str | Path | None = None) -> Path:
    """Make a new, unique run folder; mkdir is atomic, so concurrent runs never share one."""
    base = parent(out)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {base}: {e.strerror}") from None
    if not os.access(base, os.W_OK):
        raise UserError(f"output folder {base} is not writable")
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{name or 'run'}".replace("/", "-")
    for i in range(1000):
        path = base / (stem if i == 0 else f"{stem}-{i + 1}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"cannot find a free run folder name under {base}")


def command_line() -> str:
    """The command as typed: `python -m fashionlab ...` is recorded as `fashionlab ...`."""
    program = Path(sys.argv[0]).name
    program = "fashionlab" if program in ("__main__.py", "fashionlab") else program
    return " ".join([program, *sys.argv[1:]])


def start(path: Path, config_toml: str, info: dict[str, Any]) -> None:
    write_text(path / "config.toml", config_toml)
    info = {"state": "running", "reason": "", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": command_line(),
            "code_version": code_version(), "python": platform.python_version(),
            "host": platform.node(), "pid": os.getpid(), **info}
    write_json(path / "run.json", info)


def resumed(path: Path, has_checkpoint: bool) -> None:
    """A run taken up again, by either engine: running, by this process (which a second
    `--resume` then refuses), without the temporaries a kill left, and saying so when there
    is no checkpoint to go on from."""
    update_info(path, state="running", reason="resumed", pid=os.getpid())
    remove_temporaries(path)
    if not has_checkpoint:
        print(f"warning: {path} has no checkpoint (it stopped before its first epoch ended, or "
              "the file was removed): training starts again from epoch 1", file=sys.stderr)


def read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads((path / "run.json").read_text())
    except FileNotFoundError:
        if (path / "group.json").is_file():
            raise RunError(f"{path} is a group of seed runs, not one run: name its runs, "
                           f"{path}/*/") from None
        raise RunError(f"{path} is not a fashionlab run folder (no run.json)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{path}/run.json is unreadable ({e})") from None
    if not isinstance(info, dict):
        raise RunError(f"{path}/run.json is unreadable (a JSON {type(info).__name__}, not an "
                       "object)")
    return info


def machine(info: dict[str, Any]) -> str:
    """Where a run trained, as its run.json says: the CPU, and the GPU when it used one."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (info.get("cpu") or "?") + gpu


def update_info(path: Path, **fields: Any) -> None:
    info = read_info(path)
    info.update(fields)
    write_json(path / "run.json", info)


def set_state(path: Path, state: str, reason: str = "") -> None:
    assert state in STATES, state
    extra = {"ended": time.strftime("%Y-%m-%dT%H:%M:%S")} if state != "running" else {}
    update_info(path, state=state, reason=reason, **extra)


def record_end(path: Path, error: BaseException) -> None:
    """Record in run.json how a run ended early (StopRun and DivergedError carry `run_state`);
    failing to record it (a full disk) must not hide the error that ended the run."""
    state = getattr(error, "run_state", None) or (
        "interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
    known = isinstance(error, (UserError, KeyboardInterrupt)) or hasattr(error, "run_state")
    try:
        set_state(path, state, str(error) if known else f"{type(error).__name__}: {error}")
    except UserError:
        pass


def epoch_line(row: dict[str, float], epochs: int) -> str:
    """The one line both engines print as an epoch ends (no val figures without a val split)."""
    val = ("" if math.isnan(row["val_loss"]) else
           f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}")
    return (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}"
            f"{val}  {row['seconds']:.1f}s")


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path / "history.csv", buf.getvalue())


def read_history(path: Path) -> list[dict[str, float]]:
    file = path / "history.csv"
    if not file.exists():
        return []
    try:
        with open(file) as f:
            return [{k: (float(v) if v not in ("", None) else float("nan"))
                     for k, v in row.items()} for row in csv.DictReader(f)]
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as e:
        raise RunError(f"{file} is unreadable ({str(e).splitlines()[0]})") from None


def save_predictions(path: Path, probabilities: np.ndarray, labels: np.ndarray) -> None:
    """float32 test-set probabilities (10k x 10 = 400 kB) for McNemar tests and galleries.

    Not float16: two probabilities near a tie round to the same half-precision value and the
    argmax then flips, so `compare` scored a run one image off its own metrics.json.
    """
    write_tensors(path / "predictions.safetensors",
                  {"probabilities": probabilities.astype(np.float32),
                   "labels": labels.astype(np.uint8)}, {"format": "fashionlab-predictions"})


@dataclass
class Run:
    """A finished (or inspected) run folder, read back."""

    path: Path
    config: dict[str, Any]
    info: dict[str, Any]
    history: list[dict[str, float]]
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.info.get("state") == "finished"

    def predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities float32 (N, 10), labels (N,)) on the test set."""
        arrays, _ = read_tensors(self.path / "predictions.safetensors")
        return arrays["probabilities"].astype(np.float32), arrays["labels"].astype(np.int64)

    def weights(self) -> dict[str, np.ndarray]:
        return read_tensors(self.path / "model.safetensors")[0]

    def plot(self, data_dir: str | Path | None = None, out: str | Path | None = None):
        """Write the run's figures (see fashionlab.plots.plot_run); matplotlib loads only here."""
        from fashionlab.plots import plot_run

        return plot_run(self, data_dir=data_dir, out=out)


def load_run(path: str | Path, require_finished: bool = True) -> Run:
    """Read a run folder; unfinished runs are refused unless `require_finished=False`."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run folder {path} does not exist")
    info = read_info(path)
    if require_finished and info.get("state") != "finished":
        reason = f": {info['reason']}" if info.get("reason") else ""
        raise RunError(f"{path} is not finished (state {info.get('state', '?')}{reason})")
    config = _read(path / "config.toml", tomllib.loads)
    metrics_file = path / "metrics.json"
    metrics = _read(metrics_file, json.loads) if metrics_file.exists() else {}
    metrics = {k: math.nan if v is None else v for k, v in metrics.items()}  # see _json_safe
    return Run(path, config, info, read_history(path), metrics)


def _read(file: Path, parse) -> Any:
    try:
        return parse(file.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{file} is unreadable ({str(e).splitlines()[0]})") from None
