"""Classic scikit-learn baselines, the models the Fashion-MNIST paper benchmarked.

    fashionlab baseline logreg
    fashionlab baseline svc --train-size 20000

Each method fits on flattened pixels scaled to [0, 1] and writes an ordinary run folder, so
`compare`, `plot` and `report` treat it like a network. What differs, and why:
- config.toml has `[model] name = "baseline-<method>"` with no layers (it cannot be trained
  or evaluated by the network commands); run.json has `"engine": "scikit-learn"` and a
  `"baseline"` table: method, description, train_size.
- metrics.json: epochs_run 1 (one fit), train_seconds = fit time, test_loss = log loss, and
  params = the numbers the fitted model stores (weights, support vectors and their
  coefficients, tree nodes, or the training pixels for k-NN; 0 for gradient boosting).
- No history.csv (no epochs) and no model.safetensors (never pickle a model).
SVC has no probabilities of its own, so it is wrapped in a 3-fold sigmoid calibration; its
predictions are those of one SVC fitted on all the training images.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from fashionlab import config as cfg
from fashionlab import data, runs
from fashionlab.errors import UserError

# method -> (description, default train size, slow?, exponent of fit time in train size)
METHODS = {
    "logreg": ("multinomial logistic regression (lbfgs, C=1, 200 iterations)", 20000, True, 1.0),
    "svc": ("support vector machine, RBF kernel, C=10, sigmoid-calibrated", 10000, True, 1.8),
    "random-forest": ("random forest, 100 trees", 20000, True, 1.1),
    "knn": ("k-nearest neighbours, k=5, distance-weighted", 60000, False, 1.0),
    "gradient-boosting": ("histogram gradient boosting, 100 rounds", 10000, True, 1.0),
}
PILOT = 1000  # images in the timing pilot of a slow method


def make(method: str, seed: int):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    return {
        "logreg": lambda: LogisticRegression(C=1.0, max_iter=200),
        "svc": lambda: CalibratedClassifierCV(SVC(C=10.0, gamma="scale", random_state=seed),
                                              method="sigmoid", cv=3, ensemble=False),
        "random-forest": lambda: RandomForestClassifier(100, random_state=seed),
        "knn": lambda: KNeighborsClassifier(5, weights="distance"),
        "gradient-boosting": lambda: HistGradientBoostingClassifier(
            max_iter=100, early_stopping=False, random_state=seed),
    }[method]()


def stored_numbers(model) -> int:
    """A rough 'parameter count' for the comparison table (see the module docstring)."""
    if hasattr(model, "coef_"):
        return int(model.coef_.size + model.intercept_.size)
    if hasattr(model, "calibrated_classifiers_"):
        svc = model.calibrated_classifiers_[0].estimator
        return int(svc.support_vectors_.size + svc.dual_coef_.size + svc.intercept_.size)
    if hasattr(model, "estimators_"):
        return int(sum(t.tree_.node_count for t in model.estimators_))
    if hasattr(model, "n_samples_fit_"):
        return int(model.n_samples_fit_ * model.n_features_in_)
    return 0


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def _fit_predict(method: str, seed: int, x: np.ndarray, y: np.ndarray, test_x: np.ndarray):
    model = make(method, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs's ConvergenceWarning: the iteration cap is set
        start = time.perf_counter()
        model.fit(x, y)
        fit_seconds = time.perf_counter() - start
        probs = model.predict_proba(test_x)
    return model, probs, fit_seconds


@contextlib.contextmanager
def _ticking(label: str, expected: float | None):
    """Elapsed time (and the expected total) on stderr while scikit-learn works silently."""
    hint = f" (expected about {expected:.0f} s)" if expected else ""
    done = threading.Event()
    start = time.perf_counter()

    def tick() -> None:
        while not done.wait(1.0):
            print(f"\r{label}: {time.perf_counter() - start:.0f} s{hint}  ", end="",
                  file=sys.stderr, flush=True)

    live = sys.stderr.isatty()
    if not live:
        print(f"{label}{hint} ...", file=sys.stderr)
    thread = threading.Thread(target=tick, daemon=True)
    if live:
        thread.start()
    try:
        yield
    finally:
        done.set()
        if live:
            thread.join()
            print(file=sys.stderr)


def run_baseline(method: str, train_size: int | None = None, data_dir: str | None = None,
                 out: str | Path | None = None, seed: int = 0, dataset: str = "fashion-mnist",
                 quiet: bool = False) -> Path:
    """Fit one classic model on a seeded random subset of the training set; return the run."""
    from sklearn import __version__ as sklearn_version
    from sklearn.metrics import log_loss

    from fashionlab import hardware

    if method not in METHODS:
        raise UserError(f"unknown baseline {method!r}; choose from {', '.join(METHODS)}")
    description, default_size, slow, exponent = METHODS[method]
    ds = data.load(data_dir, dataset)
    n = len(ds.train_y)
    size = min(default_size, n) if train_size is None else train_size
    if not 10 <= size <= n:
        raise UserError(f"--train-size must lie between 10 and {n:,} (the training images)")
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:size])
    x, y, test_x = _flat(ds.train_x[idx]), ds.train_y[idx], _flat(ds.test_x)
    present = np.bincount(ds.train_y, minlength=len(ds.classes)) > 0  # a data set may lack some
    fewest = np.bincount(y, minlength=len(ds.classes))[present].min()
    if method == "svc" and fewest < 3:  # its calibration splits each class in three
        raise UserError(f"svc calibrates on 3 folds of each class, and {size} training images "
                        f"leave a class with {fewest}: use a larger --train-size")
    expected = None
    if slow and size > 2 * PILOT and not quiet:
        _, _, pilot = _fit_predict(method, seed, x[:PILOT], y[:PILOT], test_x[:PILOT])
        expected = pilot * (size / PILOT) ** exponent
    config = {"model": {"name": f"baseline-{method}", "layers": []},
              "data": {"dataset": dataset, "val": "none", "normalize": "scale"},
              "train": {"seed": seed}}
    path = runs.create(f"baseline-{method}", out)
    runs.start(path, cfg.dumps(config), {
        "name": f"baseline-{method}", "engine": "scikit-learn", "seed": seed,
        "config_digest": cfg.digest(config), "cpu": hardware.cpu_description(),
        "sklearn": sklearn_version,
        "baseline": {"method": method, "description": description, "train_size": size},
        "data": data.provenance(ds)})
    try:
        with _ticking(f"fitting {method} on {size:,} images", expected) if not quiet \
                else contextlib.nullcontext():
            model, probs, fit_seconds = _fit_predict(method, seed, x, y, test_x)
        full = np.zeros((len(probs), len(ds.classes)), dtype=np.float32)
        full[:, model.classes_] = probs  # a tiny subset may miss a class
        labels = ds.test_y.astype(np.int64)
        runs.save_predictions(path, full, labels)
        runs.write_json(path / "metrics.json", {
            "test_accuracy": float((full.argmax(1) == labels).mean()),
            "test_loss": float(log_loss(labels, full, labels=list(range(len(ds.classes))))),
            "epochs_run": 1, "train_seconds": fit_seconds, "seconds_per_epoch": fit_seconds,
            "params": stored_numbers(model), "train_size": size})
    except KeyboardInterrupt:
        runs.set_state(path, "interrupted", "interrupted by the user")
        raise
    except BaseException as e:
        runs.set_state(path, "failed", f"{type(e).__name__}: {e}")
        raise
    runs.set_state(path, "finished")
    return path
