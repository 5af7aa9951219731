"""Several seeds of one config, and their mean and spread.

    fashionlab train weil-fc --seeds 1,2,3      # or --seeds 5 for seeds 1..5

One seed's accuracy says little: two seeds of the same config often differ by more than two
configs do. The runs go in one group folder beside a group.json:

    runs/20261123-114501-weil-fc-seeds/
        group.json                      {"kind": "fashionlab-seed-group", "seeds": [...],
                                         "runs": [{"seed", "path", "test_accuracy",
                                                   "val_accuracy"}, ...],
                                         "test_accuracy": {"mean", "std", "n"}, ...}
        20261123-114501-weil-fc/        an ordinary run folder per seed
        ...

group.json is rewritten after every run, so a stopped group keeps its finished seeds; std is
the sample standard deviation (n - 1), null for one run (undefined, as compare shows it).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

from fashionlab import config as cfg
from fashionlab import runs, signals, stats
from fashionlab.errors import UserError


def parse_seeds(text: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3]; '5' -> [1, 2, 3, 4, 5]."""
    try:
        items = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected a count (5) or a list (1,2,3)") from None
    if len(items) == 1 and "," not in text:
        if items[0] < 1:
            raise UserError(f"--seeds {text}: the count must be at least 1")
        return list(range(1, items[0] + 1))
    if len(set(items)) != len(items) or not items:
        raise UserError(f"--seeds {text!r}: list each seed once")
    for seed in items:  # before a group folder is made for them
        cfg.check_value("train", "seed", seed)
    return items


def spread(values: list[float | None]) -> dict[str, float]:
    """Mean and sample std (undefined, so null in group.json, for one seed); a value read
    back from group.json as null is NaN."""
    mean, std = stats.mean_std([math.nan if v is None else v for v in values])
    return {"mean": mean, "std": std, "n": len(values)}


def train_seeds(source: str | dict, seeds: list[int], *, flags: dict | None = None,
                overrides: list[str] = (), data_dir: str | None = None,
                out: str | None = None, quiet: bool = False) -> Path:
    """Train one run per seed in a new group folder; return the folder."""
    config = cfg.resolve(source, flags, overrides)  # fail on a bad config before any folder
    group = runs.create(f"{config['model']['name'] or 'run'}-seeds", out)
    unseeded = {**config, "train": {**config["train"], "seed": 0}}
    summary = {"kind": "fashionlab-seed-group", "source": str(source) if isinstance(
        source, str) else "config", "config_digest_without_seed": cfg.digest(unseeded),
        "config": cfg.dumps(config), "seeds": seeds, "runs": [],
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None}
    runs.write_json(group / "group.json", summary)
    try:
        return _train_group(group, summary, quiet)
    except Exception:
        if not any(p.is_dir() for p in group.iterdir()):  # refused before a run began (bad
            shutil.rmtree(group, ignore_errors=True)  # data): nothing to keep or resume
        raise


def resume_group(group: str | Path, quiet: bool = False, force: bool = False,
                 data_dir: str | None = None) -> Path:
    """Finish a stopped group: keep its finished seeds, resume the one a signal stopped, train
    the ones never started, with the config the group began with (on `data_dir` where its
    own data has moved)."""
    group = Path(group)
    summary = read_group(group)
    if "config" not in summary:
        raise UserError(f"{group} was made before groups could be resumed (no config in "
                        "group.json): train the missing seeds with --seeds again")
    if data_dir:
        summary["data_dir"] = str(Path(data_dir).resolve())
    return _train_group(group, summary, quiet, force, data_dir)


def read_group(group: Path) -> dict:
    try:
        return json.loads((group / "group.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{group}/group.json is unreadable ({e})") from None


def _train_group(group: Path, summary: dict, quiet: bool, force: bool = False,
                 data_dir: str | None = None) -> Path:
    """Each seed not yet in the summary: resumed where its run folder exists, else trained."""
    from fashionlab.train import train

    config = cfg.resolve(cfg.parse_toml(summary["config"], f"{group}/group.json"))
    started = {runs.read_info(p)["seed"]: p for p in sorted(group.iterdir())
               if (p / "run.json").is_file()}
    done = {r["seed"] for r in summary["runs"]}
    for seed in summary["seeds"]:
        if seed in done:
            continue
        try:
            signals.raise_pending(f"after the run before seed {seed}")
            if not quiet:  # the epoch lines that follow are this seed's
                print(f"== seed {seed} ({summary['seeds'].index(seed) + 1} of "
                      f"{len(summary['seeds'])})", file=sys.stderr)
            if seed in started and runs.read_info(started[seed]).get("state") == "finished":
                path = started[seed]
            elif seed in started:
                path = train(None, resume=started[seed], quiet=quiet, force=force,
                             data_dir=data_dir)
            else:
                path = train(config, flags={"train.seed": seed}, data_dir=summary["data_dir"],
                             out=str(group), quiet=quiet)
        except KeyboardInterrupt as e:  # resume the group, not only this seed's run
            e.run_dir = group
            raise
        metrics = runs.load_run(path).metrics
        summary["runs"].append({"seed": seed, "path": path.name,
                                "test_accuracy": metrics["test_accuracy"],
                                "val_accuracy": metrics.get("val_accuracy", math.nan)})
        for key in ("test_accuracy", "val_accuracy"):
            summary[key] = spread([r[key] for r in summary["runs"]])
        runs.write_json(group / "group.json", summary)
    return group


def format_group(group: Path) -> str:
    s = read_group(group)
    lines = [f"{r['path']}  seed {r['seed']}  test accuracy {r['test_accuracy']:.4f}"
             for r in s["runs"]]
    t = s["test_accuracy"]
    lines.append(f"test accuracy: {t['mean']:.4f} ± {t['std']:.4f} (mean ± std over "
                 f"{t['n']} seeds)" if t["n"] > 1 else f"test accuracy: {t['mean']:.4f} (one seed)")
    return "\n".join(lines)
