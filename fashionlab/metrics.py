"""Classification metrics on label arrays (NumPy), shared by evaluate, compare and report."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """counts[true, predicted]"""
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(
        classes, classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class: correct / images of that class; NaN for a class with no images
    (0 would read as a class the model always gets wrong)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(cm) / cm.sum(1)


def format_confusion(cm: np.ndarray, classes: tuple[str, ...]) -> str:
    short = [c.split("/")[0][:7] for c in classes]
    head = " " * 13 + "".join(f"{s:>8}" for s in short)
    lines = [head + "   <- predicted"]
    for name, row in zip(classes, cm, strict=True):
        lines.append(f"{name[:12]:<13}" + "".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)


def precision_recall_f1(labels: np.ndarray, predicted: np.ndarray,
                        classes: int = 10) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support, from scikit-learn (zero where undefined)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(labels, predicted, labels=list(range(classes)),
                                                 zero_division=0)
    return {"precision": p, "recall": r, "f1": f, "support": s}


def most_confused(cm: np.ndarray, k: int = 5) -> list[tuple[int, int, int, int]]:
    """The k class pairs mixed up most, both directions summed: (a, b, a->b, b->a), a < b."""
    off = cm - np.diag(np.diag(cm))
    pairs = [(a, b, int(off[a, b]), int(off[b, a]))
             for a in range(len(cm)) for b in range(a + 1, len(cm)) if off[a, b] + off[b, a]]
    return sorted(pairs, key=lambda t: (-(t[2] + t[3]), t[0], t[1]))[:k]
