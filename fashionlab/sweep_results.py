"""Reading a sweep's study back: best trials, parameter importances, history plot, and the
best configuration as a recipe file.

    fashionlab sweep show --storage sweeps/weil-fc-fc-space/study.journal --write-recipe best.toml
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from fashionlab import config as cfg
from fashionlab.errors import UserError
from fashionlab.sweep import fmt, open_storage, override


def load_study(name: str | None, storage: str):
    import optuna

    store = open_storage(storage, Path("."), writer=False)
    names = optuna.get_all_study_names(store)
    if not names and "://" not in storage and Path(storage).stat().st_size:
        raise UserError(f"{storage} is not a readable sweep journal (no study in its lines)")
    if name is None:
        if len(names) != 1:
            raise UserError(f"name the study: the storage holds {', '.join(names) or 'none'}")
        name = names[0]
    if name not in names:
        raise UserError(f"no study {name!r} in {storage} (it holds "
                        f"{', '.join(names) or 'none'})")
    return optuna.load_study(study_name=name, storage=store)


def best_config(study) -> dict:
    """The study's base config with the best trial's values, and a header saying so."""
    best = study.best_trial
    base = cfg.parse_toml(study.user_attrs["config"], study.study_name)
    config = cfg.resolve(base, overrides=[override(k, v) for k, v in best.params.items()])
    settings = ", ".join(f"{k} = {fmt(v)}" for k, v in best.params.items())
    config["recipe"] = {**cfg.DEFAULTS["recipe"], "description": (
        f"Best trial ({best.number}) of sweep {study.study_name}: val accuracy "
        f"{best.value:.4f} after {config['train']['epochs']} epochs"),
        "notes": f"Written by `fashionlab sweep show --write-recipe` from study "
                 f"{study.study_name}, base {base['model']['name'] or 'config'}; "
                 f"searched values: {settings}."}
    return config


MIN_FOR_IMPORTANCE = 4  # complete trials


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances; none below a few finished trials, where Optuna warns
    that they come out equal and says nothing."""
    import optuna
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < MIN_FOR_IMPORTANCE:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # one value only
        return {}


def plot_history(study, path: Path) -> Path:
    """Each trial's value and the best so far (matplotlib: no plotly, no browser)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    done = [t for t in study.trials if t.value is not None]
    xs, ys = [t.number for t in done], [t.value for t in done]
    best = [max(ys[:i + 1]) for i in range(len(ys))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(xs, ys, s=14, label="trial")
    ax.step(xs, best, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel="validation accuracy", title=study.study_name)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if ys:  # every trial in view, whole markers, however poor the worst
        pad = 0.05 * (max(ys) - min(ys)) or 0.005
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def show(study, top: int = 5) -> str:
    """The best trials and each parameter's importance, as text."""
    from optuna.trial import TrialState

    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                        TrialState.RUNNING)}
    lines = [f"study {study.study_name}: " + ", ".join(f"{v} {k}" for k, v in counts.items())]
    ranked = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                    key=lambda t: -t.value)[:top]
    keys = list(ranked[0].params) if ranked else []
    lines.append("  ".join(["trial", "val_acc", *keys]))
    for t in ranked:
        lines.append("  ".join([f"{t.number:5d}", f"{t.value:.4f}",
                                *(fmt(t.params.get(k, math.nan)).rjust(len(k)) for k in keys)]))
    weights = importances(study)
    if weights:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()))
    return "\n".join(lines)
