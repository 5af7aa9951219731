"""Nothing lost: kills, signals, full disks and divergence leave a resumable run behind.

The end-to-end tests run the real CLI in a subprocess and kill it while it trains; the model
uses dropout, batch norm, augmentation, EMA and a cosine schedule, so every RNG and every
piece of optimizer state must be restored for the weights to match bit for bit; its second
convolution has more than one input channel, so its weights (channels-last) and their Adam
moments are laid out differently from a plain tensor and must be restored in that layout.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx_set
from safetensors import SafetensorError

from fashionlab import checkpoint, hardware, runs, signals
from fashionlab import config as cfg
from fashionlab.cli import main
from fashionlab.errors import UserError

train_module = importlib.import_module("fashionlab.train")  # the package re-exports train()

SPEC = {
    "model": {"name": "tiny-cnn", "layers": [
        {"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
        {"type": "maxpool"},
        {"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"},
        {"type": "flatten"},
        {"type": "dense", "units": 32, "activation": "relu"},
        {"type": "batchnorm"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 10, "activation": "softmax"}]},
    "data": {"dataset": "any", "val": "first:100"},
    "train": {"epochs": 3, "batch_size": 16, "seed": 3, "ema": 0.9, "schedule": "cosine"},
    "augment": {"flip": 0.5, "translate": 2, "erase": 0.3},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every process


def fashionlab(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fashionlab", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def only_run(parent: Path) -> Path:
    (run,) = parent.iterdir()
    return run


def wait_for_first_epoch(parent: Path, proc: subprocess.Popen) -> Path:
    """Poll until epoch 1's checkpoint exists; the process is then early in epoch 2."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for saved in parent.glob("*/checkpoint.safetensors"):
            return saved.parent
        time.sleep(0.005)
    raise AssertionError("training never finished its first epoch")


def assert_same_weights(a: Path, b: Path) -> None:
    wa = runs.read_tensors(a / "model.safetensors")[0]
    wb = runs.read_tensors(b / "model.safetensors")[0]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].tobytes() == wb[key].tobytes(), key


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Tiny data (57 steps per epoch), the spec file, and an uninterrupted reference run."""
    tmp = tmp_path_factory.mktemp("resume")
    data = write_idx_set(tmp / "data", n_train=1000)
    spec = tmp / "spec.toml"
    spec.write_text(cfg.dumps(SPEC))
    ref = fashionlab("train", spec, "--out", tmp / "ref", "--data-dir", data, "-q")
    return {"tmp": tmp, "data": data, "spec": spec, "ref_proc": ref}


def reference(setup: dict) -> Path:
    proc = setup["ref_proc"]
    assert proc.wait(timeout=300) == 0, proc.communicate()
    return only_run(setup["tmp"] / "ref")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(setup):
    out = setup["tmp"] / "killed"
    proc = fashionlab("train", setup["spec"], "--out", out, "--data-dir", setup["data"], "-q")
    run = wait_for_first_epoch(out, proc)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    saved = checkpoint.load(run)
    assert saved["loop"]["epoch"] == 1 and len(saved["loop"]["history"]) == 1
    assert runs.read_info(run)["state"] == "running"  # SIGKILL leaves no chance to say more
    with pytest.raises(UserError, match="is not finished"):
        runs.load_run(run)

    resumed = fashionlab("train", "--resume", run, "-q")  # data folder read from run.json
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"run: {run}" in stdout
    finished = runs.load_run(run)
    assert finished.metrics["epochs_run"] == 3
    assert [r["epoch"] for r in finished.history] == [1, 2, 3]
    ref = reference(setup)
    assert_same_weights(ref, run)
    assert finished.metrics["test_accuracy"] == runs.load_run(ref).metrics["test_accuracy"]


@pytest.mark.slow
def test_sigint_marks_interrupted_and_resumes(setup):
    out = setup["tmp"] / "sigint"
    proc = fashionlab("train", setup["spec"], "--out", out, "--data-dir", setup["data"], "-q")
    run = wait_for_first_epoch(out, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr.splitlines() == [
        "fashionlab: interrupted by SIGINT during epoch 2 (last saved: epoch 1); "
        f"resume with: fashionlab train --resume {run}"]
    info = runs.read_info(run)
    assert info["state"] == "interrupted"
    assert info["reason"] == "interrupted by SIGINT during epoch 2 (last saved: epoch 1)"

    resumed = fashionlab("train", "--resume", run, "-q")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert runs.read_info(run)["state"] == "finished"
    assert_same_weights(reference(setup), run)


@pytest.mark.slow
def test_sigterm_exits_143(setup):
    out = setup["tmp"] / "sigterm"
    proc = fashionlab("train", setup["spec"], "--out", out, "--data-dir", setup["data"], "-q")
    run = wait_for_first_epoch(out, proc)
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "interrupted by SIGTERM during epoch 2" in stderr and "--resume" in stderr
    assert runs.read_info(run)["state"] == "interrupted"
    assert checkpoint.load(run)["loop"]["epoch"] == 1


@pytest.mark.slow
def test_resuming_a_finished_run_says_so(setup, capsys):
    ref = reference(setup)
    before = {f: f.stat().st_mtime_ns for f in ref.rglob("*")}
    assert main(["train", "--resume", str(ref), "-q"]) == 0
    err = capsys.readouterr().err
    assert err == (f"{ref} is already finished; nothing to resume (to train it longer, start "
                   f"a new run: fashionlab train {ref / 'config.toml'} --epochs N)\n")
    assert {f: f.stat().st_mtime_ns for f in ref.rglob("*")} == before  # no file rewritten,
    # not even the figures


def interrupted_run(tiny_config: dict, tiny_data: Path, out: Path) -> Path:
    """A run stopped by Ctrl-C right after epoch 1 (in-process, via an epoch hook)."""
    def ctrl_c(run_dir, epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(signals.Interrupted):
        train_module.train(tiny_config, data_dir=tiny_data, out=out, quiet=True, hooks=[ctrl_c])
    run = only_run(out)
    assert runs.read_info(run)["state"] == "interrupted"
    return run


def test_changed_config_is_refused_unless_forced(tiny_config, tiny_data, tmp_path, capsys):
    run = interrupted_run(tiny_config, tiny_data, tmp_path / "runs")
    assert main(["train", "--resume", str(run), "--epochs", "3", "-q"]) == 2
    err = capsys.readouterr().err
    assert err == (f"fashionlab: error: {run}: the config changed since this run started; "
                   "resuming could mix two experiments (--force to resume)\n")
    assert runs.read_info(run)["state"] == "interrupted"

    assert main(["train", "--resume", str(run), "--epochs", "3", "--force"]) == 0
    assert "warning: resuming" in capsys.readouterr().err
    finished = runs.load_run(run)
    assert finished.metrics["epochs_run"] == 3
    assert finished.config["train"]["epochs"] == 3
    assert finished.info["config_digest"] == cfg.digest(cfg.resolve(finished.config))


def test_edited_config_file_is_refused(tiny_config, tiny_data, tmp_path, capsys):
    run = interrupted_run(tiny_config, tiny_data, tmp_path / "runs")
    toml = run / "config.toml"
    toml.write_text(toml.read_text().replace("batch_size = 32", "batch_size = 8"))
    assert main(["train", "--resume", str(run), "-q"]) == 2
    assert "the config changed" in capsys.readouterr().err


def test_resume_needs_no_source(tiny_config, tiny_data, tmp_path, capsys):
    run = interrupted_run(tiny_config, tiny_data, tmp_path / "runs")
    assert main(["train", "quick-fc", "--resume", str(run)]) == 2
    assert "drop RECIPE|FILE" in capsys.readouterr().err


def test_second_signal_raises_at_once():
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job
    with signals.graceful() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.signum == signal.SIGINT  # the first one only sets the flag
        with pytest.raises(signals.Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises before this ends
    assert caught.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def failing_save(monkeypatch, error: BaseException, on_call: int = 2) -> None:
    """Make the `on_call`-th checkpoint write die half way, as a full disk or a kill would."""
    calls = []
    real = runs.save_file

    def save_file(arrays, path, metadata=None):
        if "checkpoint" in path:
            calls.append(path)
            if len(calls) == on_call:
                Path(path).write_bytes(b"half a checkpoint")
                raise error
        return real(arrays, path, metadata=metadata)

    monkeypatch.setattr(runs, "save_file", save_file)


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    # what safetensors itself raises when the disk fills under it
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
])
def test_disk_full_keeps_previous_checkpoint(error, tiny_config, tiny_data, tmp_path,
                                             monkeypatch):
    failing_save(monkeypatch, error)
    with pytest.raises(UserError) as caught:
        train_module.train(tiny_config, data_dir=tiny_data, out=tmp_path / "runs", quiet=True)
    run = only_run(tmp_path / "runs")
    message = str(caught.value)
    assert message == (f"cannot write {run / 'checkpoint.safetensors'}: No space left on device "
                       "(previous version kept)")
    assert runs.read_info(run)["state"] == "failed"
    assert runs.read_info(run)["reason"] == message
    assert checkpoint.load(run)["loop"]["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.safetensors", "config.toml", "history.csv", "run.json"]  # no temp files

    monkeypatch.undo()
    train_module.train(None, resume=run, quiet=True)
    assert runs.load_run(run).metrics["epochs_run"] == 2


def test_kill_during_checkpoint_write_keeps_previous(tiny_config, tiny_data, tmp_path,
                                                     monkeypatch):
    failing_save(monkeypatch, signals.Interrupted(signal.SIGINT, "interrupted again by SIGINT"))
    with pytest.raises(signals.Interrupted):
        train_module.train(tiny_config, data_dir=tiny_data, out=tmp_path / "runs", quiet=True)
    run = only_run(tmp_path / "runs")
    assert runs.read_info(run)["state"] == "interrupted"
    assert checkpoint.load(run)["loop"]["epoch"] == 1
    assert not list(run.glob(".*.tmp"))


def test_unexpected_error_marks_failed(tiny_config, tiny_data, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(train_module, "_early_stopping", broken)
    with pytest.raises(ZeroDivisionError):
        train_module.train(tiny_config, data_dir=tiny_data, out=tmp_path / "runs", quiet=True)
    info = runs.read_info(only_run(tmp_path / "runs"))
    assert (info["state"], info["reason"]) == ("failed", "ZeroDivisionError: boom")


def test_divergence_from_the_cli(tiny_config, tiny_data, tmp_path, capsys):
    """A huge lr: exit 2, one line, state diverged; a good epoch before it stays loadable."""
    spec = tmp_path / "spec.toml"
    spec.write_text(cfg.dumps(tiny_config))
    args = ["train", str(spec), "--data-dir", str(tiny_data), "--out", str(tmp_path / "a"),
            "--optimizer", "sgd", "--lr", "1e30", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    run = only_run(tmp_path / "a")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fashionlab: error: training diverged: loss became nan at epoch 1")
    assert err.rstrip().endswith("lower the learning rate (no epoch finished)")
    assert runs.read_info(run)["state"] == "diverged"

    run = interrupted_run(tiny_config, tiny_data, tmp_path / "b")
    good = checkpoint.load(run)["model"]
    assert main(["train", "--resume", str(run), "--set", "train.lr=1e30", "--force", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at epoch 2, step 5 (lr 1e+30)" in err
    assert f"(epoch 1 kept in {run})" in err
    assert runs.read_info(run)["state"] == "diverged"
    kept = checkpoint.load(run)
    assert kept["loop"]["epoch"] == 1
    assert all(np.array_equal(good[k], kept["model"][k]) for k in good)


def test_resume_refuses_a_run_still_training(tmp_path, capsys):
    """run.json names a live process on this machine: resuming too would clobber its files."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = runs.create("busy", tmp_path)
        config = cfg.resolve(SPEC)
        runs.start(run, cfg.dumps(config), {"pid": live.pid, "config_digest": cfg.digest(config)})
        assert main(["train", "--resume", str(run)]) == 2
        assert capsys.readouterr().err == (f"fashionlab: error: {run} is still being trained by "
                                           f"process {live.pid}; stop it first (--force to resume "
                                           "anyway)\n")
    finally:
        live.kill()
        live.wait()


def test_resume_on_another_kind_of_device(tiny_config, tiny_data, tmp_path, capsys):
    """A run begun on a GPU can finish on a CPU (and back): its augmentation generator's
    state cannot cross devices, so that stream restarts from the seed, with a warning."""
    tiny_config["augment"] = {"flip": 0.5}
    run = interrupted_run(tiny_config, tiny_data, tmp_path / "runs")
    saved = checkpoint.load(run)
    assert saved["rng"]["devices"] == {"order": "cpu", "augment": "cpu"}
    saved["rng"]["devices"]["augment"] = "cuda"  # as a run on a GPU saves it
    saved["rng"]["augment"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's size
    checkpoint.save(run, saved)
    assert main(["train", "--resume", str(run), "-q", "--no-plots"]) == 0
    assert capsys.readouterr().err == (
        f"warning: {run} trained on cuda and resumes on cpu: its augment random numbers start "
        "again from the seed, so it will not match an unbroken run\n")
    finished = runs.load_run(run)
    precision = hardware.resolve_precision("auto", torch.device("cpu"), conv_flops=0)
    assert finished.metrics["epochs_run"] == 2
    assert finished.info["resumed_on"] == f"cpu ({precision})"


def test_a_checkpoint_with_damaged_state_is_one_line(tiny_config, tiny_data, tmp_path, capsys):
    run = interrupted_run(tiny_config, tiny_data, tmp_path / "runs")
    path = run / "checkpoint.safetensors"
    tensors, meta = runs.read_tensors(path)
    runs.write_tensors(path, tensors, {**meta, "state": meta["state"][:-20]})  # bytes lost
    assert main(["train", "--resume", str(run), "-q", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fashionlab: error: {path} is damaged (its state is unreadable: ")
    assert err.endswith("remove it to train the run again from epoch 1\n") and err.count("\n") == 1


def test_resume_removes_what_a_kill_mid_write_left(tiny_config, tiny_data, tmp_path):
    run = interrupted_run(tiny_config, tiny_data, tmp_path / "runs")
    left = [run / ".checkpoint.safetensors.k3j2h1.tmp", run / ".tmpa8Xz0q"]
    for path in left:
        path.write_bytes(b"\0" * 1000)
    assert main(["train", "--resume", str(run), "-q", "--no-plots"]) == 0
    assert not any(path.exists() for path in left)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_resume_goes_on_only_on_the_runs_own_data(tiny_config, tiny_data, tmp_path, capsys):
    run = interrupted_run(tiny_config, tiny_data, tmp_path / "runs")
    write_idx_set(tiny_data, n_train=150)  # the folder now holds other images
    assert main(["train", "--resume", str(run), "-q", "--no-plots"]) == 2
    assert "changed since this run trained (SHA-256 differs)" in capsys.readouterr().err
    assert runs.read_info(run)["state"] != "finished"


def test_a_resume_may_not_switch_engines(tiny_config, tiny_data, tmp_path, capsys):
    run = interrupted_run(tiny_config, tiny_data, tmp_path / "runs")
    assert main(["train", "--resume", str(run), "--engine", "numpy", "--force", "-q"]) == 2
    assert "trains with the torch engine, whose checkpoint the numpy engine cannot go on" in (
        capsys.readouterr().err)
    assert runs.load_run(run, require_finished=False).config["train"]["engine"] == "torch"


def test_a_run_started_without_plots_is_resumed_without_them(tiny_config, tiny_data, tmp_path):
    run = interrupted_run(tiny_config, tiny_data, tmp_path / "runs")
    info = runs.read_info(run)
    runs.write_json(run / "run.json", {**info, "command": "fashionlab train x.toml --no-plots"})
    assert main(["train", "--resume", str(run), "-q"]) == 0
    assert runs.read_info(run)["state"] == "finished" and not (run / "plots").exists()


def test_resume_without_a_checkpoint_says_it_starts_again(tiny_config, tiny_data, tmp_path,
                                                          capsys):
    run = interrupted_run(tiny_config, tiny_data, tmp_path / "runs")
    (run / "checkpoint.safetensors").unlink()
    assert main(["train", "--resume", str(run), "-q", "--no-plots"]) == 0
    assert capsys.readouterr().err.startswith(
        f"warning: {run} has no checkpoint (it stopped before its first epoch ended, or the "
        "file was removed): training starts again from epoch 1\n")
    assert runs.load_run(run).metrics["epochs_run"] == tiny_config["train"]["epochs"]


def _stop_seed_group(monkeypatch, config: dict, data_dir: Path, tmp_path: Path, seeds: str,
                     seed: int, hook) -> Path:
    """`train --seeds SEEDS` with `hook` at the epoch ends of one seed's run, which stops the
    group (exit 130); returns the group folder."""
    real = train_module.train

    def hooked(source, flags=None, **kwargs):
        hooks = [hook] if flags == {"train.seed": seed} else []
        return real(source, flags=flags, hooks=hooks, **kwargs)

    spec = tmp_path / "spec.toml"
    spec.write_text(cfg.dumps(config))
    monkeypatch.setattr(train_module, "train", hooked)
    assert main(["train", str(spec), "--seeds", seeds, "--data-dir", str(data_dir), "--out",
                 str(tmp_path / "g"), "-q", "--no-plots"]) == 130
    return only_run(tmp_path / "g")


def test_a_signal_after_a_runs_last_step_stops_the_seed_group_before_the_next_seed(
        tiny_config, tiny_data, tmp_path, capsys, monkeypatch):
    """SIGINT during seed 1's last validation pass: seed 1 finishes (nothing left to stop),
    and the group stops before seed 2 instead of dropping the signal."""
    last = tiny_config["train"]["epochs"]

    def late_signal(run_dir, epoch, row):
        if epoch == last:
            signal.raise_signal(signal.SIGINT)

    group = _stop_seed_group(monkeypatch, tiny_config, tiny_data, tmp_path, "1,2", 1,
                             late_signal)
    assert capsys.readouterr().err.endswith(
        "interrupted by SIGINT after the run before seed 2; resume with: fashionlab train "
        f"--resume {group}\n")
    assert [r["seed"] for r in json.loads((group / "group.json").read_text())["runs"]] == [1]
    assert [runs.read_info(p)["state"] for p in group.iterdir() if p.is_dir()] == ["finished"]


def test_a_signal_caught_too_late_is_pending_until_asked_for():
    with signals.graceful() as flag:
        signal.raise_signal(signal.SIGTERM)
    assert flag.signum == signal.SIGTERM
    with pytest.raises(signals.Interrupted) as stop:
        signals.raise_pending("after trial 3")
    assert stop.value.exit_code == 143 and str(stop.value) == (
        "interrupted by SIGTERM after trial 3")
    signals.raise_pending("again")  # consumed: nothing left to raise


def test_a_stopped_seed_group_resumes(tiny_config, tiny_data, tmp_path, capsys, monkeypatch):
    """Ctrl-C in seed 2 of three: --resume GROUP keeps seed 1, resumes seed 2's own folder and
    trains seed 3, and seed 2 ends as an unbroken run of it would."""
    real = train_module.train

    def ctrl_c(run_dir, epoch, row):
        raise KeyboardInterrupt

    group = _stop_seed_group(monkeypatch, tiny_config, tiny_data, tmp_path, "1,2,3", 2, ctrl_c)
    assert capsys.readouterr().err.endswith(f"; resume with: fashionlab train --resume {group}\n")
    assert [r["seed"] for r in json.loads((group / "group.json").read_text())["runs"]] == [1]
    stopped = {p.name for p in group.iterdir() if p.is_dir()}

    monkeypatch.undo()
    assert main(["train", "--resume", str(group), "-q"]) == 0
    summary = json.loads((group / "group.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [1, 2, 3]
    assert summary["test_accuracy"]["n"] == 3
    assert stopped < {p.name for p in group.iterdir() if p.is_dir()}  # seed 2 resumed in place
    alone = real(tiny_config, flags={"train.seed": 2}, data_dir=str(tiny_data),
                 out=str(tmp_path / "alone"), quiet=True)
    resumed = group / summary["runs"][1]["path"]
    assert resumed.name in stopped
    assert_same_weights(resumed, alone)


@pytest.mark.slow
def test_sigterm_stops_the_numpy_engine_the_same_way(setup, tmp_path):
    """The hand-written engine keeps the same promise: a clean stop at a step, the state and
    the reason in run.json, exit 143 and the command that resumes it."""
    spec = tmp_path / "numpy.toml"
    spec.write_text(cfg.dumps({
        "model": {"name": "np", "layers": [
            {"type": "flatten"}, {"type": "dense", "units": 32, "activation": "relu"},
            {"type": "dense", "units": 10, "activation": "softmax"}]},
        "data": {"dataset": "any", "val": "first:100"},
        "train": {"engine": "numpy", "optimizer": "sgd", "epochs": 500, "batch_size": 16}}))
    out = tmp_path / "runs"
    proc = fashionlab("train", spec, "--out", out, "--data-dir", setup["data"], "-q")
    run = wait_for_first_epoch(out, proc)
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    info = runs.read_info(run)
    assert info["state"] == "interrupted"
    assert info["reason"].startswith("interrupted by SIGTERM during epoch ")
    assert stderr.endswith(f"; resume with: fashionlab train --resume {run}\n")
