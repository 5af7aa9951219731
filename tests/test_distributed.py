"""Data-parallel training under torchrun (gloo on CPU): same result as one process, rank 0
writes alone, and every rank stops together when training diverges."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import idx_bytes, needs_real_data

from fashionlab import data, distributed
from fashionlab.cli import main
from fashionlab.errors import UserError
from fashionlab.runs import load_run
from fashionlab.train import train

FC = """
[model]
name = "fc"
layers = [
  { type = "flatten" },
  { type = "dense", units = 64, activation = "relu" },
  { type = "dense", units = 10, activation = "softmax" },
]
[data]
dataset = "any"
val = "first:2000"
[train]
epochs = 2
batch_size = 64
seed = 3
"""


def torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", str(n), "-m", "fashionlab", "train", *args,
                           "--distributed", "--quiet", "--no-plots"],
                          capture_output=True, text=True, timeout=300)


def test_alone_is_rank_0_of_1():
    assert distributed.rank_world() == (0, 1) and distributed.is_main()
    distributed.check_shards(7, 4)  # one process: any batch will do


def test_distributed_without_torchrun_is_a_user_error(tmp_path, capsys):
    with pytest.raises(UserError, match="needs torchrun"):
        distributed.setup()
    assert main(["train", "quick-fc", "--distributed", "--out", str(tmp_path / "runs")]) == 2
    assert "torchrun" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def real_subset(tmp_path: Path) -> Path:
    """12,000 training and 2,000 test images of the real data: a meaningful accuracy, fast."""
    ds = data.load()
    folder = tmp_path / "subset"
    folder.mkdir()
    for stem, arr in (("train-images-idx3-ubyte", ds.train_x[:12000]),
                      ("train-labels-idx1-ubyte", ds.train_y[:12000]),
                      ("t10k-images-idx3-ubyte", ds.test_x[:2000]),
                      ("t10k-labels-idx1-ubyte", ds.test_y[:2000])):
        (folder / stem).write_bytes(idx_bytes(arr))
    return folder


@needs_real_data
@pytest.mark.slow
def test_two_ranks_match_one_process(real_subset, tmp_path):
    spec = tmp_path / "fc.toml"
    spec.write_text(FC)
    one = load_run(train(str(spec), data_dir=str(real_subset), out=str(tmp_path / "one"),
                         quiet=True))
    done = torchrun(2, str(spec), "--data-dir", str(real_subset), "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    folders = list((tmp_path / "two").iterdir())
    assert len(folders) == 1  # rank 1 wrote nothing
    two = load_run(folders[0])
    assert two.info["world_size"] == 2 and one.info["world_size"] == 1
    acc1, acc2 = one.metrics["test_accuracy"], two.metrics["test_accuracy"]
    print(f"test accuracy: 1 process {acc1:.4f}, 2 processes {acc2:.4f}")
    assert acc1 > 0.75 and abs(acc1 - acc2) <= 0.005
    for a, b in zip(one.history, two.history, strict=True):  # the global loss, not a shard's
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=0.005)


@pytest.mark.slow
def test_two_ranks_take_one_process_steps_when_a_batch_splits_unevenly(tiny_data, tmp_path):
    """Batches of 63 (shards of 32 and 31): each rank's loss weighs in by its share of the
    batch, so the steps are one process's to float rounding (equal weights were 3e-3 off)."""
    spec = tmp_path / "fc.toml"
    spec.write_text(FC.replace('val = "first:2000"', 'val = "first:50"')
                    .replace("batch_size = 64", "batch_size = 63"))
    one = load_run(train(str(spec), data_dir=str(tiny_data), out=str(tmp_path / "one"),
                         quiet=True))
    done = torchrun(2, str(spec), "--data-dir", str(tiny_data), "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    two = load_run(next((tmp_path / "two").iterdir()))
    for a, b in zip(one.history, two.history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_a_batch_too_small_for_the_ranks_is_refused_before_a_run_folder(tiny_data, tmp_path):
    spec = tmp_path / "fc.toml"
    spec.write_text(FC.replace('val = "first:2000"', 'val = "first:50"'))
    done = torchrun(2, str(spec), "--data-dir", str(tiny_data), "--out", str(tmp_path / "two"),
                    "--batch-size", "1")
    assert done.returncode != 0
    assert "2 ranks need at least 2 images per batch; batch size 1" in done.stderr
    assert not (tmp_path / "two").exists()


def test_divergence_stops_every_rank(tiny_data, tmp_path):
    spec = tmp_path / "fc.toml"
    spec.write_text(FC.replace('val = "first:2000"', 'val = "first:50"'))
    done = torchrun(2, str(spec), "--data-dir", str(tiny_data), "--out", str(tmp_path / "two"),
                    "--optimizer", "sgd", "--lr", "1e12")
    assert done.returncode != 0
    assert done.stderr.count("training diverged") >= 2  # both ranks, same check
    (folder,) = (tmp_path / "two").iterdir()
    info = json.loads((folder / "run.json").read_text())
    assert info["state"] == "diverged" and "diverged" in info["reason"]


@pytest.mark.slow
def test_ctrl_c_under_torchrun_names_the_torchrun_command_that_resumes(tiny_data, tmp_path,
                                                                       capsys):
    import os
    import signal
    import time

    spec = tmp_path / "fc.toml"
    spec.write_text(FC.replace('val = "first:2000"', 'val = "first:50"')
                    .replace("epochs = 2", "epochs = 100000"))
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", "2", "-m", "fashionlab", "train", str(spec),
                             "--data-dir", str(tiny_data), "--out", str(tmp_path / "two"),
                             "--distributed", "--quiet", "--no-plots"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("two/*/checkpoint.safetensors")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (run,) = (tmp_path / "two").iterdir()
    assert (f"resume with: torchrun --nproc-per-node 2 -m fashionlab train --resume {run} "
            "--distributed") in err
    assert main(["train", "--resume", str(run), "-q", "--epochs", "3", "--force"]) == 0
    assert (f"warning: {run} trained as 2 process(es) and resumes as 1: its steps match an "
            "unbroken run's to float rounding only") in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["resumed_world_size"] == 1


def test_torchrun_without_distributed_is_refused(monkeypatch, capsys):
    """Two processes each training the whole model alone, into two run folders, is never
    what `torchrun ... train` meant."""
    from fashionlab.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "quick-fc"]) == 2
    assert capsys.readouterr().err == (
        "fashionlab: error: started as one of 2 processes (torchrun) without --distributed: "
        "each would train the whole model alone; add --distributed\n")
