"""Figures for one run: curves, confusion matrices, samples, mistakes, per-class scores.

    fashionlab plot runs/20261123-114501-quick-cnn      # writes RUN/plots/*.png and *.svg

Every figure is a function returning a matplotlib Figure, so `plot_run`, `compare --plot` and
the HTML report draw the same pictures. The Agg backend is chosen before pyplot loads, so
plotting works on a headless server and never opens a window.

Overfitting onset, the rule drawn on the curves: the epoch with the lowest validation loss,
when at least two epochs follow it, the last of them has a higher validation loss and a lower
training loss than that epoch. From there on the model fits the training set better while
getting worse on images it has not seen.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is set)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fashionlab import data, metrics, runs  # noqa: E402
from fashionlab.errors import UserError  # noqa: E402

plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "svg.fonttype": "none",
                     "axes.spines.top": False, "axes.spines.right": False})
TRAIN, VAL, BEST, OVERFIT = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"


@dataclass
class Plotted:
    """What `plot_run` wrote, and what it had to skip (with the reason)."""

    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def overfitting_onset(history: list[dict]) -> int | None:
    """The epoch where overfitting starts, by the rule in the module docstring, or None."""
    rows = [r for r in history if not math.isnan(r.get("val_loss", math.nan))]
    if len(rows) < 3:
        return None
    i = min(range(len(rows)), key=lambda j: rows[j]["val_loss"])
    last = rows[-1]
    if (len(rows) - 1 - i >= 2 and last["val_loss"] > rows[i]["val_loss"]
            and last["loss"] < rows[i]["loss"]):
        return int(rows[i]["epoch"])
    return None


def best_epoch(history: list[dict]) -> int | None:
    """The epoch with the highest validation accuracy (the first, on ties)."""
    rows = [r for r in history if not math.isnan(r.get("val_accuracy", math.nan))]
    return int(max(rows, key=lambda r: r["val_accuracy"])["epoch"]) if rows else None


def has_validation(history: list[dict]) -> bool:
    """Whether any epoch was scored on validation images (a run with val = none has NaNs)."""
    return any(not math.isnan(r.get("val_loss", math.nan)) for r in history)


def curves_figure(history: list[dict], title: str = "", best: int | None = None) -> plt.Figure:
    """Accuracy and loss per epoch; `best` is the run's own best epoch (by its train.monitor,
    metrics.json), else the one with the highest validation accuracy."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    epochs = [r["epoch"] for r in history]
    style = {"marker": "o", "markersize": 3}
    validated = has_validation(history)
    for ax, key, name in ((acc, "accuracy", "accuracy"), (loss, "loss", "loss")):
        ax.plot(epochs, [r[key] for r in history], color=TRAIN, label=f"training {name}",
                **style)
        if validated:  # a run without a validation split has no such line to name
            ax.plot(epochs, [r[f"val_{key}"] for r in history], color=VAL, linestyle="--",
                    label=f"validation {name}", **style)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    best, onset = best or best_epoch(history), overfitting_onset(history)
    for ax in (acc, loss):
        if best is not None:
            ax.axvline(best, color=BEST, linestyle=":", label=f"best epoch ({best})")
        if onset is not None:
            ax.axvspan(onset, epochs[-1], color=OVERFIT, alpha=0.08,
                       label=f"overfitting (from epoch {onset})")
    for ax in (acc, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    acc.legend(loc="lower right", fontsize=8)
    loss.legend(loc="upper right", fontsize=8)
    fig.suptitle(title or ("training and validation curves" if validated else
                           "training curves (no validation split)"))
    return fig


def confusion_figure(cm: np.ndarray, classes: tuple[str, ...], title: str) -> plt.Figure:
    """Counts on the left, rows normalised to recall (%) on the right."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), layout="constrained")
    percent = 100 * cm / np.maximum(cm.sum(1, keepdims=True), 1)  # the colour bar's unit too
    for ax, values, kind in ((axes[0], cm, "counts"), (axes[1], percent, "% of each true class")):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        top = values.max() or 1
        for (i, j), v in np.ndenumerate(values):
            text = f"{v:d}" if values is cm else (f"{v:.0f}" if v >= 0.5 else "")
            if v:
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if v > top / 2 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(kind)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"{title} (accuracy {np.trace(cm) / max(cm.sum(), 1):.4f}, "
                 f"{int(cm.sum()):,} images)")
    return fig


def _montage(images: np.ndarray, cols: int, pad: int, below: int = 0) -> np.ndarray:
    """Tile images into one array (one imshow is ~50x faster to draw than a grid of axes)."""
    rows = math.ceil(len(images) / cols)
    h, w = images.shape[1] + pad + below, images.shape[2] + pad
    out = np.zeros((rows * h, cols * w), dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        out[r * h:r * h + image.shape[0], c * w:c * w + image.shape[1]] = image
    return out


def samples_figure(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                   per_class: int = 10) -> plt.Figure:
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(len(classes))]
    tiles = np.zeros((len(classes) * per_class, *images.shape[1:]), dtype=np.uint8)
    for c, idx in enumerate(picks):
        tiles[c * per_class:c * per_class + len(idx)] = images[idx]
    fig, ax = plt.subplots(figsize=(1.3 + per_class * 0.42, 0.5 + len(classes) * 0.42),
                           layout="constrained")
    ax.imshow(_montage(tiles, per_class, 4), cmap="gray_r", vmin=0, vmax=255)
    step = images.shape[1] + 4
    ax.set_yticks([c * step + images.shape[1] / 2 for c in range(len(classes))], classes)
    ax.set_xticks([])
    ax.spines[:].set_visible(False)
    ax.tick_params(length=0)
    ax.set_title(f"the first {per_class} training images of each class")
    return fig


def mistakes_figure(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                    classes: tuple[str, ...], k: int = 24) -> plt.Figure | None:
    """The k wrong predictions the model was surest of: label noise or real blind spots."""
    predicted = probs.argmax(1)
    errors = np.flatnonzero(predicted != labels)
    if not len(errors):
        return None
    wrong = errors[np.argsort(-probs[errors, predicted[errors]], kind="stable")][:k]
    cols, size, below = 6, images.shape[1], 20
    tiles = _montage(images[wrong], cols, 8, below)
    fig, ax = plt.subplots(figsize=(cols * 1.6, 0.5 + cols * 1.6 * len(tiles) / tiles.shape[1]),
                           layout="constrained")
    ax.imshow(tiles, cmap="gray_r", vmin=0, vmax=255)
    for n, i in enumerate(wrong):
        r, c = divmod(n, cols)
        ax.text(c * (size + 8) + size / 2, r * (size + 8 + below) + size + 1,
                f"true: {classes[labels[i]]}\npred: {classes[predicted[i]]}\n"
                f"p = {probs[i, predicted[i]]:.2f}   #{i}", ha="center", va="top", fontsize=7)
    ax.axis("off")
    ax.set_title(f"the {len(wrong)} most confident of {len(errors):,} test errors "
                 "(p: predicted probability, #: test image index)")
    return fig


def per_class_figure(labels: np.ndarray, predicted: np.ndarray,
                     classes: tuple[str, ...]) -> plt.Figure:
    scores = metrics.precision_recall_f1(labels, predicted, len(classes))
    pairs = metrics.most_confused(metrics.confusion_matrix(labels, predicted, len(classes)), 8)
    fig, (bars, conf) = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained",
                                     gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(classes))
    for i, key in enumerate(("precision", "recall", "f1")):
        bars.bar(x + (i - 1) * 0.27, scores[key], 0.27, label=key)
    bars.set_ylim(0.0, 1.12)  # from 0, so that bar heights compare; room for the legend
    bars.set_yticks(np.linspace(0, 1, 6))
    bars.set_xticks(x, classes, rotation=30, ha="right")
    bars.set_title("per-class precision, recall and F1 (test set)")
    bars.legend(ncols=3, fontsize=8, loc="upper center")
    bars.grid(axis="y", alpha=0.3)
    names = [f"{classes[a]} / {classes[b]}" for a, b, _, _ in pairs][::-1]
    ab = [n for _, _, n, _ in pairs][::-1]
    ba = [n for _, _, _, n in pairs][::-1]
    conf.barh(names, ab, color=TRAIN, label="first taken for second")
    conf.barh(names, ba, left=ab, color=VAL, label="second taken for first")
    conf.set_title("most-confused class pairs (test images)")
    conf.set_xlabel("test images")
    conf.legend(fontsize=8, loc="lower right")
    return fig


def overlay_figure(named_histories: list[tuple[str, list[dict]]]) -> plt.Figure:
    """Validation accuracy and loss of several runs on shared axes (training loss dotted)."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for i, (name, history) in enumerate(named_histories):
        color = f"C{i % 10}"
        epochs = [r["epoch"] for r in history]
        acc.plot(epochs, [r["val_accuracy"] for r in history], color=color, marker="o",
                 markersize=3, label=name)
        loss.plot(epochs, [r["val_loss"] for r in history], color=color, marker="o",
                  markersize=3, label=name)
        loss.plot(epochs, [r["loss"] for r in history], color=color, linestyle=":")
    from matplotlib.ticker import MaxNLocator

    acc.set_title("validation accuracy")
    loss.set_title("validation loss (dotted: training loss)")
    for ax in (acc, loss):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc.legend(fontsize=8)
    return fig


def save(fig: plt.Figure, stem: Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    out = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
        out.append(path)
    plt.close(fig)
    return out


def png_bytes(fig: plt.Figure, dpi: int = 96) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def train_confusion(run: runs.Run, ds: data.DataSet) -> np.ndarray:
    """Confusion on the images the model trained on (the train split, validation excluded)."""
    from fashionlab.inference import load_trained

    trained = load_trained(run.path)
    conf = trained.config
    idx, _ = data.split(len(ds.train_y), conf["data"]["val"], conf["train"]["seed"])
    predicted = trained.logits(ds.train_x[idx]).argmax(1).numpy()
    return metrics.confusion_matrix(ds.train_y[idx].astype(np.int64), predicted)


def plot_run(run: runs.Run | str | Path, data_dir: str | Path | None = None,
             out: str | Path | None = None,
             formats: tuple[str, ...] = ("png", "svg")) -> Plotted:
    """Write every figure a run allows into `out` (default RUN/plots); note what it skips."""
    run = run if isinstance(run, runs.Run) else runs.load_run(run)
    folder = Path(out) if out else run.path / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    done = Plotted()
    name = run.config.get("model", {}).get("name") or run.name
    kind = "a scikit-learn baseline" if run.info.get("engine") == "scikit-learn" else None
    if run.history:
        done.files += save(curves_figure(run.history, f"{name}: training vs validation",
                                         run.metrics.get("best_epoch") or None),
                           folder / "curves", formats)
    else:
        done.notes.append(f"no per-epoch history ({kind or 'none recorded'}): curves skipped")
    probs, labels = run.predictions()
    try:
        ds = data.of_run(run.info, run.config, data_dir)
    except UserError as e:
        ds = None
        done.notes.append(f"data not loadable ({e}): sample, mistake and train plots skipped")
    classes = ds.classes if ds else data.class_names(run.config.get("data", {}))
    cm = metrics.confusion_matrix(labels, probs.argmax(1), len(classes))
    done.files += save(confusion_figure(cm, classes, f"{name}: test confusion"),
                       folder / "confusion_test", formats)
    done.files += save(per_class_figure(labels, probs.argmax(1), classes),
                       folder / "per_class", formats)
    if ds is None:
        return done
    done.files += save(samples_figure(ds.train_x, ds.train_y, classes), folder / "samples",
                       formats)
    if len(ds.test_y) == len(labels) and np.array_equal(ds.test_y, labels):
        fig = mistakes_figure(ds.test_x, labels, probs, classes)
        if fig is not None:
            done.files += save(fig, folder / "mistakes", formats)
        else:
            done.notes.append("no test errors: no mistake gallery")
    else:
        done.notes.append("the loaded test set differs from the run's: mistake gallery skipped")
    if not (run.path / "model.safetensors").exists():
        done.notes.append(f"no model weights ({kind or 'none saved'}): train-set confusion "
                          "skipped")
    else:
        train_cm = train_confusion(run, ds)
        done.files += save(confusion_figure(train_cm, classes, f"{name}: train confusion"),
                           folder / "confusion_train", formats)
    return done
