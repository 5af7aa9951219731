"""Sweeps: space validation, several workers on one study, resuming, show, and PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import write_idx_set

optuna = pytest.importorskip("optuna")

import fashionlab  # noqa: E402
from fashionlab import config as cfg  # noqa: E402
from fashionlab import sweep  # noqa: E402
from fashionlab.cli import main  # noqa: E402
from fashionlab.errors import SpecError, UserError  # noqa: E402

SPACE = """
train.lr = { type = "float", low = 1e-3, high = 3e-2, log = true }
model.layers.1.units = { type = "int", low = 8, high = 24 }
"""
TINY = """
[model]
name = "tiny"
layers = [
  { type = "flatten" },
  { type = "dense", units = 16, activation = "relu" },
  { type = "dense", units = 10, activation = "softmax" },
]
[data]
dataset = "any"
val = "first:50"
[train]
epochs = 2
batch_size = 32
seed = 1
"""
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "space.toml").write_text(SPACE)
    return tmp_path / "tiny.toml", tmp_path / "space.toml"


@pytest.mark.parametrize("text, message", [
    ('train.lr = { type = "real", low = 1, high = 2 }', "type must be one of"),
    ('train.lr = { type = "float", low = 2, high = 1 }', "low (2) must be below high (1)"),
    ('train.lr = { type = "float", low = 0, high = 1, log = true }', "log range needs low > 0"),
    ('train.lr = { type = "float", low = 0.1, high = 1, logg = true }', "unknown field 'logg'"),
    ('model.layers.1.units = { type = "int", low = 1.5, high = 8 }', "low must be an integer"),
    ('train.opt = { type = "categorical", choices = ["adam"] }', "unknown key train.opt"),
    ('model.layers.7.units = { type = "int", low = 8, high = 16 }', "no layer 7"),
    ('train.optimizer = { type = "categorical", choices = ["adam", "lion"] }', "'lion'"),
    ('train.optimizer = { type = "categorical", choices = [] }', "non-empty list"),
    ('train.warmup_epochs = { type = "float", low = 0.5, high = 3 }',
     "train.warmup_epochs = 3: train.warmup_epochs (3) must be below train.epochs (2)"),
    ('train.momentum = { type = "float", low = 0.1, high = 0.9 }', "does nothing for adam"),
    ('train.lr = { type = "float", low = 0.001, high = 0.01, step = 0.1 }',
     "step must lie in (0, high - low], got 0.1"),
    ('model.layers.1.units = { type = "int", low = 8, high = 16, step = 0 }',
     "step must lie in (0, high - low], got 0"),
    ("train.lr = 0.01", "must be a table"),
    ("", "names no keys"),
])
def test_bad_space_is_one_line_error(files, text, message):
    recipe, space = files
    space.write_text(text)
    with pytest.raises(SpecError, match="bad sweep space") as e:
        sweep.read_space(space, cfg.resolve(str(recipe)))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_space_keys_nested_or_quoted_are_the_same(files):
    recipe, space = files
    space.write_text('"train.lr" = { type = "float", low = 0.001, high = 0.01 }\n'
                     'model.layers.1.units = { type = "int", low = 8, high = 64, step = 8 }\n')
    params = sweep.read_space(space, cfg.resolve(str(recipe)))
    assert [(p.key, p.kind, p.low, p.high, p.step) for p in params] == [
        ("train.lr", "float", 0.001, 0.01, None), ("model.layers.1.units", "int", 8, 64, 8)]


def test_storage_choices(tmp_path, capsys):
    with pytest.raises(UserError, match="unsupported storage"):
        sweep.open_storage("mysql://x/y", tmp_path)
    sweep.open_storage(f"sqlite:///{tmp_path}/s.db", tmp_path)
    assert capsys.readouterr().err == (
        "note: SQLite storage serves one worker only (concurrent writers fail with 'database is "
        "locked'); use a journal file or PostgreSQL for several\n")
    sweep.open_storage(f"sqlite:///{tmp_path}/s.db", tmp_path, writer=False)  # `sweep show`
    assert capsys.readouterr().err == ""
    with pytest.raises(UserError, match=r"^no sweep database at sqlite:///.*/no/s\.db$"):
        sweep.open_storage(f"sqlite:///{tmp_path}/no/s.db", tmp_path, writer=False)
    sweep.open_storage(f"sqlite:///{tmp_path}/no/s.db", tmp_path)  # a new folder is made
    assert (tmp_path / "no").is_dir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"^cannot create .*/afile: File exists$"):
        sweep.open_storage(f"sqlite:///{tmp_path}/afile/s.db", tmp_path)
    capsys.readouterr()
    with pytest.raises(UserError, match=r"is a folder: name the journal file"):
        sweep.open_storage(str(tmp_path), tmp_path)
    with pytest.raises(UserError, match=r"^no sweep journal at .*/typo\.journal$"):
        sweep.open_storage(str(tmp_path / "typo.journal"), tmp_path, writer=False)
    assert not (tmp_path / "typo.journal").exists()
    store = sweep.open_storage(None, tmp_path / "sw")
    assert type(store).__name__ == "JournalStorage"


def _worker(recipe: Path, space: Path, trials: int, storage: str, out: Path, data: Path,
            heartbeat: tuple[int, int] = (30, 120)) -> subprocess.Popen:
    """One sweep worker in its own process, as a user would start it on another terminal."""
    code = (f"import fashionlab.sweep as s; s.HEARTBEAT, s.GRACE = {heartbeat}; s.POLL = 0.5\n"
            f"s.sweep({str(recipe)!r}, {str(space)!r}, {trials}, storage={storage!r}, "
            f"study='tiny', out={str(out)!r}, data_dir={str(data)!r}, log=lambda _: None)")
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def _trials(storage, name: str = "tiny"):
    if name not in optuna.get_all_study_names(storage):  # no worker has made it yet
        return []
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_a_trial_past_the_target_stands_down(files, tiny_data, tmp_path):
    """A worker that began a trial as another finished the last one needed: its trial fails
    at once as surplus, trains nothing and is logged as such."""
    recipe, space = files
    out = tmp_path / "sw"
    study = sweep.sweep(str(recipe), str(space), 1, out=str(out), data_dir=str(tiny_data),
                        log=lambda _: None)
    base = cfg.resolve(str(recipe))
    late = sweep._objective(study, 1, base, sweep.read_space(space, base), out, str(tiny_data))
    study.optimize(late, n_trials=1, catch=(sweep.Surplus,))
    first, second = study.get_trials(deepcopy=False)
    assert first.state == optuna.trial.TrialState.COMPLETE and "surplus" not in first.user_attrs
    assert second.state == optuna.trial.TrialState.FAIL and second.user_attrs["surplus"]
    assert sweep._trial_line(second).startswith("trial   1  surplus")
    assert len(list((out / "trials").iterdir())) == 1


def test_two_workers_share_a_journal_and_stop_at_n(files, tiny_data, tmp_path):
    recipe, space = files
    journal = str(tmp_path / "sw" / "study.journal")
    workers = [_worker(recipe, space, 5, journal, tmp_path / "sw", tiny_data) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]
    trials = _trials(sweep.open_storage(journal, tmp_path))
    assert sum(t.state in FINISHED for t in trials) == 5
    assert len({t.number for t in trials}) == len(trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers took trials
    runs = sorted((tmp_path / "sw" / "trials").iterdir())
    # a trial begun as the other worker finished the 5th stands down before training
    assert len(runs) == len([t for t in trials if not t.user_attrs.get("surplus")])
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            history = (Path(t.user_attrs["run"]) / "history.csv").read_text().splitlines()
            assert len(history) == 3 and 0 < t.value <= 1  # header + 2 epochs


def test_rerun_resumes_and_show_writes_best_recipe(files, tiny_data, tmp_path, capsys):
    recipe, space = files
    out = tmp_path / "sw"
    args = ["sweep", str(recipe), "--space", str(space), "--study", "tiny", "--out", str(out),
            "--data-dir", str(tiny_data), "--pruner", "none", "--epochs", "1"]
    assert main([*args, "--trials", "2"]) == 0
    assert "trial" in capsys.readouterr().err
    assert main([*args, "--trials", "2"]) == 0  # already done: no new trial
    assert main([*args, "--trials", "3", "--quiet"]) == 0  # one more
    assert capsys.readouterr().err == ""
    journal = str(out / "study.journal")
    study = optuna.load_study(study_name="tiny", storage=sweep.open_storage(journal, out))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    capsys.readouterr()

    best = tmp_path / "best.toml"
    assert main(["sweep", "show", "--storage", journal, "--write-recipe", str(best)]) == 0
    printed = capsys.readouterr().out
    assert "study tiny: 3 complete" in printed and f"{study.best_value:.4f}" in printed
    assert (out / "history.png").stat().st_size > 1000
    written = cfg.resolve(str(best))
    assert written["train"]["lr"] == pytest.approx(study.best_params["train.lr"])
    assert written["model"]["layers"][1]["units"] == study.best_params["model.layers.1.units"]
    assert written["train"]["epochs"] == 1 and "Best trial" in written["recipe"]["description"]


def test_another_config_under_the_same_study_is_refused(files, tiny_data, tmp_path):
    recipe, space = files
    common = dict(storage=None, study="tiny", out=str(tmp_path / "sw"), data_dir=str(tiny_data),
                  log=lambda _: None)
    sweep.sweep(str(recipe), space, 1, epochs=1, **common)
    with pytest.raises(UserError, match="started with another config;"):
        sweep.sweep(str(recipe), space, 2, epochs=2, **common)
    other_space = tmp_path / "other.toml"
    other_space.write_text(SPACE.replace("high = 24", "high = 32"))
    with pytest.raises(UserError, match="started with another search space;"):
        sweep.sweep(str(recipe), other_space, 2, epochs=1, **common)
    copy = shutil.copytree(tiny_data, tmp_path / "copy")  # another machine's copy: the same
    sweep.sweep(str(recipe), space, 2, epochs=1, **{**common, "data_dir": str(copy)})
    other = write_idx_set(tmp_path / "other", n_train=150)
    with pytest.raises(UserError, match="started with another data;"):
        sweep.sweep(str(recipe), space, 3, epochs=1, **{**common, "data_dir": str(other)})


def test_a_trial_scores_the_weights_it_kept_whatever_early_stopping_monitors(files, tiny_data,
                                                                           tmp_path):
    """Under monitor = "val_loss" the kept epoch is the lowest-loss one, not the most
    accurate: the objective is the kept weights' accuracy (it was the history's maximum)."""
    recipe, space = files
    recipe.write_text(TINY.replace("epochs = 2", 'epochs = 12\npatience = 20\n'
                                   'monitor = "val_loss"'))
    space.write_text('train.lr = { type = "categorical", choices = [0.008] }\n')
    study = sweep.sweep(str(recipe), space, 1, out=str(tmp_path / "sw"), pruner="none",
                        data_dir=str(tiny_data), log=lambda line: None)
    run = fashionlab.load_run(study.trials[0].user_attrs["run"])
    assert study.trials[0].value == run.metrics["val_accuracy"]
    assert study.trials[0].value < max(r["val_accuracy"] for r in run.history)  # they differ


def test_ctrl_c_in_a_trial_says_to_rerun_the_sweep(files, tiny_data, tmp_path, capsys,
                                                   monkeypatch):
    import fashionlab.train as train_module

    real = train_module.train

    def ctrl_c(run_dir, epoch, row):
        if epoch == 2:  # the last: the run finishes, and the sweep stops before the next
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(train_module, "train",
                        lambda *a, hooks=(), **k: real(*a, hooks=[*hooks, ctrl_c], **k))
    recipe, space = files
    out = tmp_path / "sw"
    args = ["sweep", str(recipe), "--space", str(space), "--trials", "2", "--out", str(out),
            "--data-dir", str(tiny_data), "--pruner", "none"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.endswith("interrupted by SIGINT after trial 0; resume with: fashionlab "
                        f"sweep {recipe} --space {space} --trials 2 --out {out} --data-dir "
                        f"{tiny_data} --pruner none\n")
    assert "Traceback" not in err and err.count("\n") == 2  # the trial's line, then this
    monkeypatch.undo()
    assert main(args) == 0
    study = optuna.load_study(study_name="tiny-space",
                              storage=sweep.open_storage(str(out / "study.journal"), out))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def _one_trial_sweep(files, data_dir: Path, out: Path) -> tuple[list[str], Path]:
    """A one-trial sweep run from the CLI; the arguments (without --trials) and its journal."""
    recipe, space = files
    args = ["sweep", str(recipe), "--space", str(space), "--out", str(out), "--data-dir",
            str(data_dir), "--pruner", "none", "--epochs", "1", "-q"]
    assert main([*args, "--trials", "1"]) == 0
    return args, out / "study.journal"


def test_a_journal_torn_by_a_crash_is_mended_by_the_next_writer(files, tiny_data, tmp_path,
                                                                capsys):
    args, journal = _one_trial_sweep(files, tiny_data, tmp_path / "sw")
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-37])  # the last record's tail never reached the disk
    capsys.readouterr()
    assert main([*args, "--trials", "2"]) == 0
    assert f"note: {journal}: cut a torn last record" in capsys.readouterr().err
    storage = sweep.open_storage(str(journal), journal.parent, writer=False)
    study = optuna.load_study(study_name="tiny-space", storage=storage)
    assert len([t for t in study.trials if t.state in FINISHED]) == 2
    notes = tmp_path / "notes.txt"
    notes.write_text("line one\nimportant last line")  # a mistyped --storage
    assert main(["sweep", "show", "--storage", str(notes)]) == 2
    assert f"{notes} is not a sweep journal" in capsys.readouterr().err
    assert main([*args, "--trials", "2", "--storage", str(notes)]) == 2
    assert f"{notes} is not a sweep journal" in capsys.readouterr().err
    assert notes.read_text() == "line one\nimportant last line"  # not cut, not appended to


def test_sweep_needs_a_validation_split(files):
    recipe, space = files
    recipe.write_text(TINY.replace('val = "first:50"', 'val = "none"'))
    with pytest.raises(UserError, match="validation split"):
        sweep.sweep(str(recipe), space, 2)


# PostgreSQL: a throwaway cluster in a temp dir, as an unprivileged user (postgres refuses root).

def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl") or next(iter(sorted(glob.glob(
        "/usr/lib/postgresql/*/bin/pg_ctl"))), None)
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    if os.environ.get("FASHIONLAB_TEST_PG"):
        yield os.environ["FASHIONLAB_TEST_PG"]
        return
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="fashionlab-pg-"))
    if os.geteuid() == 0:
        user = "postgres" if _has_user("postgres") else "nobody"
        shutil.chown(folder, user)
        as_user = ["runuser", "-u", user, "--"]
    port, data = _free_port(), folder / "data"

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "fl")
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
           f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
        yield f"postgresql://fl@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_postgres_killed_worker_fails_and_study_completes(files, tiny_data, tmp_path,
                                                          postgres_url):
    recipe, space = files
    recipe.write_text(TINY.replace("epochs = 2", "epochs = 6"))  # long enough to kill mid-way
    storage = sweep.open_storage(postgres_url, tmp_path)
    if "tiny" in optuna.get_all_study_names(storage):  # a given server may hold an old run
        optuna.delete_study(study_name="tiny", storage=storage)
    start = [(recipe, space, 3, postgres_url, tmp_path / f"sw{i}", tiny_data, (1, 3))
             for i in range(2)]
    doomed, survivor = _worker(*start[0]), _worker(*start[1])
    deadline, mine = time.time() + 120, []
    while time.time() < deadline and doomed.poll() is None:
        mine = [t for t in _trials(storage) if t.user_attrs.get("pid") == doomed.pid
                and t.state == optuna.trial.TrialState.RUNNING]
        if mine and (tmp_path / "sw0" / "trials").exists():
            break
        time.sleep(0.2)
    assert mine, "the first worker never started a trial"
    os.kill(doomed.pid, signal.SIGKILL)  # no chance to mark its trial: the heartbeat must
    doomed.wait()
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-2000:]
    by_number = {t.number: t for t in _trials(storage)}
    assert by_number[mine[0].number].state == optuna.trial.TrialState.FAIL
    assert sum(t.state in FINISHED for t in by_number.values()) == 3
    assert len(by_number) == len(_trials(storage))


# Multi-seed runs.

@pytest.mark.parametrize("text, seeds", [("3", [1, 2, 3]), ("4,2", [4, 2]), ("7,", [7])])
def test_parse_seeds(text, seeds):
    from fashionlab.seeds import parse_seeds

    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["0", "a", "1,1", "1.5"])
def test_bad_seeds(text):
    from fashionlab.seeds import parse_seeds

    with pytest.raises(UserError, match="--seeds"):
        parse_seeds(text)


def test_seeds_write_a_group_summary(files, tiny_data, tmp_path, capsys):
    import json
    import statistics

    recipe, _ = files
    assert main(["train", str(recipe), "--seeds", "1,2", "--epochs", "1", "--quiet",
                 "--no-plots", "--data-dir", str(tiny_data), "--out", str(tmp_path / "r")]) == 0
    (group,) = (tmp_path / "r").iterdir()
    summary = json.loads((group / "group.json").read_text())
    accs = [json.loads((group / r["path"] / "metrics.json").read_text())["test_accuracy"]
            for r in summary["runs"]]
    seeds = [json.loads((group / r["path"] / "run.json").read_text())["seed"]
             for r in summary["runs"]]
    assert seeds == [1, 2] and summary["seeds"] == [1, 2]
    assert summary["test_accuracy"] == pytest.approx(
        {"mean": statistics.mean(accs), "std": statistics.stdev(accs), "n": 2})
    assert f"{statistics.mean(accs):.4f} ± " in capsys.readouterr().out


def test_show_refuses_what_it_cannot_do(files, tiny_data, tmp_path, capsys):
    recipe, space = files
    out = tmp_path / "sw"
    space.write_text('train.lr = { type = "categorical", choices = [1e30] }\n')
    recipe.write_text(TINY.replace("seed = 1", 'seed = 1\noptimizer = "sgd"'))
    assert main(["sweep", str(recipe), "--space", str(space), "--trials", "1", "--out",
                 str(out), "--data-dir", str(tiny_data), "-q"]) == 0  # the one trial diverged
    show = ["sweep", "show", "--storage", str(out / "study.journal")]
    capsys.readouterr()
    assert main([*show, "--write-recipe", str(tmp_path / "best.toml")]) == 2
    assert capsys.readouterr().err.endswith(
        "error: no trial of the study has finished: nothing to plot or write\n")
    assert main([*show, "--top", "0"]) == 2
    assert "--top must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "best.toml").exists()


def test_a_dead_workers_trial_fails_and_so_does_its_runs_state(tmp_path):
    import platform

    from fashionlab import runs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "trials" / "run"
    run.mkdir(parents=True)
    runs.write_json(run / "run.json", {"state": "running", "pid": dead.pid})
    study = optuna.create_study(storage=sweep.open_storage(None, tmp_path), study_name="s")
    trial = study.ask()
    for key, value in {"pid": dead.pid, "host": platform.node(), "run": str(run)}.items():
        trial.set_user_attr(key, value)
    sweep._fail_stale(study)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert runs.read_info(run)["state"] == "failed"
    assert runs.read_info(run)["reason"] == "its sweep worker died"


def test_older_studies_and_a_torn_first_record_go_on(files, tiny_data, tmp_path, capsys):
    """A study begun when the data was recorded as a folder's path continues on that folder;
    a journal whose very first record a crash tore is mended, not refused."""
    args, journal = _one_trial_sweep(files, tiny_data, tmp_path / "sw")
    storage = sweep.open_storage(str(journal), journal.parent)
    optuna.load_study(study_name="tiny-space", storage=storage).set_user_attr(
        "data", str(tiny_data.resolve()))
    assert main([*args, "--trials", "2"]) == 0
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "study.journal").write_bytes(journal.read_bytes().split(b"\n")[0][:80])
    capsys.readouterr()
    assert main([*args[:4], "--out", str(torn), *args[6:], "--trials", "1"]) == 0
    assert "cut a torn last record" in capsys.readouterr().err
