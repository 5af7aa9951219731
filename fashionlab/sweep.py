"""Hyperparameter sweeps: Optuna picks values for recipe keys; every trial is an ordinary run.

    fashionlab sweep weil-fc --space examples/fc-space.toml --trials 30 --epochs 3
    fashionlab sweep show weil-fc-fc-space --storage sweeps/weil-fc-fc-space/study.journal

The objective is the final model's validation accuracy (never test: a sweep that peeks at the
test set reports a number it has fitted). Each epoch's validation accuracy is reported to the
trial, so the pruner can stop poor trials early. Workers started with the same command share
the study through its storage and stop together once it holds N finished (complete or pruned)
trials; a trial whose worker died is marked failed and another takes its place, so rerunning
the command resumes.

Storage: a file path is Optuna's journal file (appends under a lock: safe for several workers
on one machine or one NFS share); postgresql://... is shared by workers on many machines, with
a heartbeat so a killed worker's trial fails after the grace period; sqlite:///... serves one
worker only, since SQLite locks the whole database per write and concurrent writers fail with
"database is locked".
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionlab import config as cfg
from fashionlab import data, runs, signals
from fashionlab.errors import DivergedError, SpecError, UserError

KINDS = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"),
         "categorical": ("choices",)}
POLL = 2.0  # seconds between looks at the study while other workers' trials run
HEARTBEAT, GRACE = 30, 120  # PostgreSQL: seconds between heartbeats, before a trial is stale


@dataclass
class Param:
    """One searched key: a float or int range, or a list of choices."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def samples(self) -> list:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def _leaves(table: dict, prefix: str = "") -> dict[str, dict]:
    """Nested TOML tables -> {"train.lr": {...}}: `train.lr = {...}` and `"train.lr" = {...}`
    both name the same key, as do `model.layers.1.units` and a quoted form."""
    out = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if not isinstance(value, dict):
            raise SpecError(f"bad sweep space: {key} must be a table like "
                            "{ type = \"float\", low = 1e-4, high = 1e-2, log = true }")
        out.update({key: value} if "type" in value else _leaves(value, key + "."))
    return out


def _param(key: str, spec: dict) -> Param:
    kind = spec.get("type")
    if kind not in KINDS:
        raise SpecError(f"bad sweep space: {key}: type must be one of {', '.join(KINDS)}, "
                        f"got {kind!r}")
    unknown = set(spec) - {"type", *KINDS[kind]}
    if unknown:
        raise SpecError(f"bad sweep space: {key}: unknown field {sorted(unknown)[0]!r} for "
                        f"type {kind} (allowed: {', '.join(KINDS[kind])})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"bad sweep space: {key}: choices must be a non-empty list")
        return Param(key, kind, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    number = int if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high), ("step", spec.get("step", 1))):
        if not isinstance(value, number) or isinstance(value, bool):
            raise SpecError(f"bad sweep space: {key}: {name} must be "
                            f"{'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    log, step = spec.get("log", False), spec.get("step")
    if not low < high:
        raise SpecError(f"bad sweep space: {key}: low ({low}) must be below high ({high})")
    if log and (low <= 0 or step is not None):
        raise SpecError(f"bad sweep space: {key}: a log range needs low > 0 and no step")
    if step is not None and not 0 < step <= high - low:
        raise SpecError(f"bad sweep space: {key}: step must lie in (0, high - low], got {step}")
    return Param(key, kind, low, high, bool(log), step)


def read_space(path: str | Path, base: dict | None = None) -> list[Param]:
    """Parse and check a space file; with `base`, also try every bound and choice on it."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UserError(f"cannot read sweep space {path}: {e.strerror}") from None
    space = [_param(k, v) for k, v in _leaves(cfg.parse_toml(text, str(path))).items()]
    if not space:
        raise SpecError(f"bad sweep space: {path} names no keys")
    for param in space if base is not None else ():
        for value in param.samples():
            try:
                resolved = cfg.resolve(base, overrides=[override(param.key, value)])
                cfg.check_train(resolved["train"])
                _check_model(resolved)
            except SpecError as e:
                raise SpecError(f"bad sweep space: {param.key} = {value!r}: {e}") from None
    return space


def _check_model(config: dict) -> None:
    from fashionlab import models
    from fashionlab.train import bf16_net, check_nets

    check_nets(config)
    models.build(config["model"]["layers"])
    bf16_net(config)


def override(key: str, value: Any) -> str:
    """A `--set` item; JSON strings and numbers are valid TOML values."""
    return f"{key}={json.dumps(value)}"


def open_storage(spec: str | None, folder: Path, writer: bool = True):
    """A storage for `spec` (None: a journal file in the sweep folder); a writer is told, in
    one line, when SQLite limits the study to one worker."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    # Optuna's own log: INFO per trial, and a warning with a traceback for every failed or
    # surplus trial; the sweep prints its own line per trial, and errors in one line.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if spec and spec.startswith(("postgresql://", "postgresql+psycopg2://")):
        url = spec.replace("postgresql://", "postgresql+psycopg2://", 1)  # SQLAlchemy 2.1
        try:  # would pick psycopg 3, which the sweep extra does not install
            with warnings.catch_warnings():  # "heartbeat is experimental": it works
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
        except Exception as e:  # sqlalchemy's errors: unreachable server, bad password, ...
            raise UserError(f"cannot open the study database: {str(e).splitlines()[0]}") from None
    if spec and spec.startswith("sqlite:///"):
        if not writer and not Path(spec.removeprefix("sqlite:///")).exists():
            raise UserError(f"no sweep database at {spec}")
        if writer:
            _make_folder(Path(spec.removeprefix("sqlite:///")).parent)
            print("note: SQLite storage serves one worker only (concurrent writers fail with "
                  "'database is locked'); use a journal file or PostgreSQL for several",
                  file=sys.stderr)
        try:
            return RDBStorage(spec)
        except Exception as e:  # sqlalchemy's: a missing folder, not a database file, ...
            raise UserError(f"cannot open the study database {spec}: "
                            f"{str(e).splitlines()[0]}") from None
    if spec and "://" in spec:
        raise UserError(f"unsupported storage {spec!r}: give a file path (journal), "
                        "postgresql://... or sqlite:///...")
    path = Path(spec) if spec else folder / "study.journal"
    if path.is_dir():
        raise UserError(f"--storage {path} is a folder: name the journal file to keep the study in")
    if not writer and not path.exists():  # reading: a typo must not leave an empty journal
        raise UserError(f"no sweep journal at {path}")
    _make_folder(path.parent)
    _check_journal(path)
    lock = JournalFileSymlinkLock(str(path))  # Optuna's own default, shared with the mend
    if writer:
        _mend_journal(path, lock)
    try:
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except ValueError as e:  # json's errors among them: a line that is not a record
        raise UserError(f"{path} is not a readable sweep journal ({e})") from None


def _check_journal(path: Path) -> None:
    """Refuse a file that is not an Optuna journal before anything reads or writes it: a
    mistyped --storage must not get a user's file cut or appended to."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        first = f.readline(65536)
    if not first.endswith(b"\n") and first.startswith(b'{"op_code"'):
        return  # a first record torn mid-write: the mend's case
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not (isinstance(record, dict) and "op_code" in record):
        raise UserError(f"{path} is not a sweep journal (its first line is not an Optuna "
                        "record): name a new file, or the sweep's own study.journal")


def _mend_journal(path: Path, lock) -> None:
    """A crash or a full disk mid-append leaves a last line without its newline. Optuna's
    readers skip it, but the next append would join it to a good record and leave a journal
    no reader opens: cut it first, under the lock the writers take."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)
        print(f"note: {path}: cut a torn last record (a crash or a full disk mid-write)",
              file=sys.stderr)
    finally:
        lock.release()


def _same_data(recorded: Any, images: Any, path: str) -> bool:
    """A study's data, as recorded (the files' SHA-256; a folder's path for studies begun
    before the hashes were kept), and this worker's."""
    if isinstance(recorded, str):
        return recorded == path
    return data.by_content(recorded) == images


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder}: {e.strerror}") from None


def _fail_stale(study) -> None:
    """Mark trials of dead workers failed so the study can finish without them.

    RDB storage knows by the heartbeat. The journal has no heartbeat, so a running trial
    recorded by this host whose process is gone (or that never recorded one) is stale.
    """
    import optuna
    from optuna.trial import TrialState

    if optuna.storages._heartbeat.is_heartbeat_enabled(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        return
    from fashionlab.train import _alive

    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if pid is None:  # a worker that died before recording itself, or one just starting
            stale = now - started > 60
        else:
            stale = host == platform.node() and not _alive({"pid": pid, "host": host})
        if stale:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            run = Path(t.user_attrs.get("run", "")) / "run.json"
            if t.user_attrs.get("run") and run.is_file():  # else it says running forever
                runs.set_state(run.parent, "failed", "its sweep worker died")


class Surplus(Exception):
    """Two workers began trials at once past the target: the later one stands down."""


def _objective(study, n: int, base: dict, space: list[Param], folder: Path,
               data_dir: str | None):
    import optuna
    from optuna.trial import TrialState

    from fashionlab.train import StopRun, train

    def objective(trial) -> float:
        trial.set_user_attr("pid", os.getpid())  # pid first: a pid without a host is alive
        trial.set_user_attr("host", platform.node())
        ahead = [t for t in study.get_trials(deepcopy=False)
                 if t.number < trial.number and t.state != TrialState.FAIL]
        if len(ahead) >= n:
            trial.set_user_attr("surplus", True)  # failed, but not by the config: no run
            raise Surplus(f"the study already has {n} finished or running trials")
        overrides = [override(p.key, p.suggest(trial)) for p in space]

        def report(run_dir: Path, epoch: int, row: dict) -> None:
            if epoch == 1 or "run" not in trial.user_attrs:
                trial.set_user_attr("run", str(run_dir.resolve()))
            trial.report(row["val_accuracy"], epoch)
            if trial.should_prune():
                raise StopRun("interrupted", "pruned by sweep")

        try:
            run_dir = train(base, overrides=overrides, out=str(folder / "trials"),
                            hooks=[report], quiet=True, data_dir=data_dir)
        except StopRun as stop:
            raise optuna.TrialPruned(stop.reason) from None
        except DivergedError as e:
            raise optuna.TrialPruned(f"diverged: {e}") from None
        trial.set_user_attr("run", str(run_dir.resolve()))
        run = runs.load_run(run_dir)
        trial.set_user_attr("test_accuracy", run.metrics["test_accuracy"])  # for show only
        return run.metrics["val_accuracy"]  # of the weights the run kept, whatever monitored

    return objective


def sweep(source: str | dict, space_file: str | Path, trials: int, *, epochs: int | None = None,
          storage: str | None = None, study: str | None = None, out: str | None = None,
          data_dir: str | None = None, pruner: str = "median", log=print):
    """Run trials until the study holds `trials` finished ones; return the optuna Study."""
    import optuna
    from optuna.trial import TrialState

    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    base = cfg.resolve(source, {"train.epochs": epochs})
    if base["data"]["val"] == "none":
        raise UserError("a sweep optimises validation accuracy: the recipe needs a "
                        "validation split (data.val)")
    space = read_space(space_file, base)
    name = study or f"{Path(str(source)).stem}-{Path(space_file).stem}"
    folder = Path(out) if out else Path("sweeps") / name
    store = open_storage(storage, folder)
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=4,
                                                             n_warmup_steps=1),
               "none": optuna.pruners.NopPruner}
    the_study = optuna.create_study(study_name=name, storage=store, direction="maximize",
                                    pruner=pruners[pruner](), load_if_exists=True)
    recorded = the_study.user_attrs.get("config")
    searched = json.loads(json.dumps([vars(p) | {"choices": list(p.choices)} for p in space]))
    recorded_data = data.provenance(data.for_config(data_dir, base["data"]))
    images = recorded_data.get("sha256") or recorded_data["path"]
    if recorded is None:
        the_study.set_user_attr("config", cfg.dumps(base))
        the_study.set_user_attr("space", searched)
        the_study.set_user_attr("data", images)
        the_study.set_user_attr("folder", str(folder.resolve()))
    else:
        other = [what for what, differs in (
            ("config", cfg.digest(cfg.parse_toml(recorded, name)) != cfg.digest(base)),
            ("search space", the_study.user_attrs.get("space") != searched),
            ("data", not _same_data(the_study.user_attrs.get("data", images), images,
                                     recorded_data["path"]))) if differs]
        if other:
            raise UserError(f"study {name!r} was started with another {' and '.join(other)}; "
                            "give --study NAME for a new study (sweeps never mix experiments)")
    objective = _objective(the_study, trials, base, space, folder, data_dir)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    while True:
        _fail_stale(the_study)
        done = len(the_study.get_trials(deepcopy=False, states=finished))
        running = len(the_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if done >= trials:
            break
        if done + running >= trials:  # the rest are running elsewhere; one may yet fail
            time.sleep(POLL)
            continue
        the_study.optimize(objective, n_trials=1, catch=(Surplus,))
        mine = [t for t in the_study.get_trials(deepcopy=False)
                if t.user_attrs.get("pid") == os.getpid()]
        log(_trial_line(mine[-1]))
        signals.raise_pending(f"after trial {mine[-1].number}")
    return the_study


def _trial_line(t) -> str:
    value = "" if t.value is None else f"  val_accuracy {t.value:.4f}"
    params = "  ".join(f"{k}={fmt(v)}" for k, v in t.params.items())
    state = "surplus" if t.user_attrs.get("surplus") else t.state.name.lower()
    return f"trial {t.number:3d}  {state:8s}{value}  {params}"


def fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
