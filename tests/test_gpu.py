"""Which device a run uses, and the CUDA path itself.

The rest of the suite runs on the CPU (conftest sets FASHIONLAB_DEVICE=cpu) so that its
numbers are the same on every machine. The tests marked `cuda` run only where PyTorch sees a
GPU (bench/gpu_check.sh runs them on one); elsewhere they are skipped.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from test_resume import SPEC, interrupted_run, only_run

from fashionlab import hardware, runs
from fashionlab.cli import main
from fashionlab.errors import UserError

train_module = importlib.import_module("fashionlab.train")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def test_the_suite_runs_on_the_cpu():
    assert hardware.device() == torch.device("cpu")


@pytest.mark.parametrize("wanted", ["", "auto"])
def test_auto_takes_the_gpu_when_there_is_one(wanted, monkeypatch):
    monkeypatch.setenv("FASHIONLAB_DEVICE", wanted)
    assert hardware.device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_device_is_refused(monkeypatch):
    monkeypatch.setenv("FASHIONLAB_DEVICE", "gpu")
    with pytest.raises(UserError, match="FASHIONLAB_DEVICE='gpu' is not one of auto, cpu, cuda"):
        hardware.device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_cuda_without_a_gpu_is_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASHIONLAB_DEVICE", "cpu")  # put back after --device sets it
    assert main(["train", "quick-fc", "--set", "data.dataset=any", "--device", "cuda",
                 "--data-dir", str(tiny_data), "--out", str(tmp_path / "runs"), "-q"]) == 2
    assert capsys.readouterr().err.startswith(
        "fashionlab: error: device 'cuda' asked for (--device or FASHIONLAB_DEVICE) but PyTorch")
    assert not (tmp_path / "runs").exists()  # nothing half-made


def test_reports_name_the_gpu_a_run_used():
    cpu = "Intel(R) Xeon(R) Processor [avx512_bf16 amx_bf16], 16 cores, 16 threads"
    assert runs.machine({"cpu": cpu, "gpu": "NVIDIA H200"}) == f"{cpu}, GPU NVIDIA H200"
    assert runs.machine({"cpu": cpu}) == cpu
    assert runs.machine({}) == "?"


def test_auto_precision_is_fp32_on_cuda():
    assert hardware.resolve_precision("auto", torch.device("cuda"), conv_flops=10**9) == "fp32"
    assert hardware.resolve_precision("bf16", torch.device("cuda"), conv_flops=10**9) == "bf16"


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trains_on_the_gpu(precision, tiny_config, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FASHIONLAB_DEVICE", "cuda")
    tiny_config["model"]["layers"][:0] = [  # cuDNN, channels-last and batch norm too
        {"type": "conv2d", "filters": 8, "kernel": 3}, {"type": "batchnorm"},
        {"type": "relu"}, {"type": "maxpool"}]
    tiny_config["augment"] = {"flip": 0.5}  # random numbers from a generator on the GPU
    run = runs.load_run(train_module.train(
        tiny_config, flags={"train.precision": precision, "train.epochs": 3},
        data_dir=tiny_data, out=tmp_path, quiet=True))
    assert run.info["device"].startswith("cuda") and run.info["precision"] == precision
    assert run.info["gpu"] == torch.cuda.get_device_name()
    assert run.metrics["test_accuracy"] > 0.5


@cuda
def test_gpu_and_cpu_take_the_same_steps(tiny_config, tiny_data, tmp_path, monkeypatch):
    """No augmentation or dropout, so both see the same batches from the same weights: the
    losses differ only by rounding (TF32 on the GPU)."""
    losses = {}
    for dev in ("cpu", "cuda"):
        monkeypatch.setenv("FASHIONLAB_DEVICE", dev)
        run = runs.load_run(train_module.train(tiny_config, data_dir=tiny_data,
                                               out=tmp_path / dev, quiet=True))
        losses[dev] = [r["loss"] for r in run.history]
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-3)


@cuda
def test_resume_on_the_gpu_continues_the_same_run(tiny_data, tmp_path, monkeypatch):
    """Dropout, augmentation and EMA draw from generators on the GPU: a resumed run must
    restore them, or its weights would be far from an unbroken run's."""
    monkeypatch.setenv("FASHIONLAB_DEVICE", "cuda")
    ref = train_module.train(SPEC, data_dir=tiny_data, out=tmp_path / "ref", quiet=True)
    run = interrupted_run(SPEC, tiny_data, tmp_path / "cut")
    assert main(["train", "--resume", str(run), "-q", "--no-plots"]) == 0
    assert only_run(tmp_path / "cut") == run
    a = runs.read_tensors(ref / "model.safetensors")[0]
    b = runs.read_tensors(run / "model.safetensors")[0]
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-4, err_msg=key)


@cuda
@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="needs a node with one GPU")
def test_more_processes_than_gpus_is_one_line(tiny_data, tmp_path, monkeypatch):
    from test_distributed import FC, torchrun

    monkeypatch.setenv("FASHIONLAB_DEVICE", "cuda")
    spec = tmp_path / "fc.toml"
    spec.write_text(FC.replace('val = "first:2000"', 'val = "first:50"'))
    done = torchrun(2, str(spec), "--data-dir", str(tiny_data), "--out", str(tmp_path / "two"))
    assert done.returncode != 0
    assert "fashionlab: error: torchrun started 2 processes on this node but it has 1 GPU(s)" \
        in done.stderr
