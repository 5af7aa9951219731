"""Classification metrics on label arrays (NumPy), shared by evaluate, compare and report."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """counts[true, predicted]"""
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(
        classes, classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class: correct / images of that class."""
    return np.diag(cm) / np.maximum(cm.sum(1), 1)


def format_confusion(cm: np.ndarray, classes: tuple[str, ...]) -> str:
    short = [c.split("/")[0][:7] for c in classes]
    head = " " * 13 + "".join(f"{s:>8}" for s in short)
    lines = [head + "   <- predicted"]
    for name, row in zip(classes, cm, strict=True):
        lines.append(f"{name[:12]:<13}" + "".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)
