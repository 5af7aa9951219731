"""`fashionlab export`: ONNX Runtime and TorchScript agree with PyTorch on the same pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_idx_set

from fashionlab.cli import main
from fashionlab.errors import UserError
from fashionlab.export import OPSET, export
from fashionlab.inference import load_trained
from fashionlab.train import train

LAYERS = [
    {"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
    {"type": "batchnorm"},
    {"type": "maxpool"},
    {"type": "dropout", "rate": 0.2},
    {"type": "flatten"},
    {"type": "dense", "units": 10, "activation": "softmax"},
]


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    """A small conv net with every layer kind that behaves differently in eval mode, trained
    with standard normalisation and shifted and mirrored test-time views, so the graph has to
    carry both."""
    root = tmp_path_factory.mktemp("export")
    config = {"model": {"name": "tiny-cnn", "layers": LAYERS},
              "data": {"dataset": "any", "val": "first:50", "normalize": "standard"},
              "train": {"epochs": 1, "seed": 2, "tta_flip": True, "tta_shift": 1}}
    return train(config, data_dir=str(write_idx_set(root / "data")), out=str(root / "runs"),
                 quiet=True)


def pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype(np.uint8)


def test_onnx_matches_pytorch_with_any_batch(conv_run, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    assert main(["export", str(conv_run), "--format", "onnx", "-o", str(out)]) == 0
    assert f"opset {OPSET}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]   # one file, no external data
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    trained = load_trained(conv_run, precision="fp32")
    assert json.loads(meta["classes"]) == list(trained.classes)
    assert json.loads(meta["normalize"])["kind"] == "standard"
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == OPSET
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    for n in (1, 7):
        x = pixels(n, n)
        logits, probs = session.run(None, {"pixels": x[:, None].astype(np.float32)})
        expected = trained.logits(x).numpy()
        assert logits.shape == (n, 10)
        assert np.abs(logits - expected).max() < 1e-4
        assert np.abs(probs - torch.softmax(torch.from_numpy(expected), 1).numpy()).max() < 1e-4


def test_torchscript_matches_pytorch(conv_run, tmp_path):
    out = export(conv_run, tmp_path / "model.pt", "torchscript")
    files = {"classes.txt": ""}
    module = torch.jit.load(str(out), _extra_files=files)
    assert json.loads(files["classes.txt"]) == [str(i) for i in range(10)]  # dataset "any"
    x = pixels(5, 0)
    logits, _ = module(torch.from_numpy(x[:, None]).float())
    expected = load_trained(conv_run, precision="fp32").logits(x)
    assert (logits - expected).abs().max().item() < 1e-4


def test_unknown_format_is_a_user_error(conv_run, tmp_path):
    with pytest.raises(UserError, match="unknown export format"):
        export(conv_run, tmp_path / "m.x", "tflite")


def test_format_follows_the_suffix_and_may_not_contradict_it(conv_run, tmp_path, capsys):
    assert main(["export", str(conv_run), "-o", str(tmp_path / "m.pt")]) == 0
    assert "(torchscript, " in capsys.readouterr().out
    torch.jit.load(str(tmp_path / "m.pt"))
    assert main(["export", str(conv_run), "-o", str(tmp_path / "m.onnx")]) == 0
    assert "(onnx, opset" in capsys.readouterr().out
    assert main(["export", str(conv_run), "--format", "torchscript",
                 "-o", str(tmp_path / "x.onnx")]) == 2
    assert "a .onnx file holds onnx, not torchscript" in capsys.readouterr().err
    assert main(["export", str(conv_run), "-o", str(tmp_path / "model.bin")]) == 2
    assert "name it .onnx or .pt" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "model.bin").exists()
    assert main(["export", str(conv_run), "--format", "onnx",
                 "-o", str(tmp_path / "model.bin")]) == 0
    capsys.readouterr()
    assert main(["export", str(conv_run), "-q", "-o", str(tmp_path / "q.onnx")]) == 0
    assert capsys.readouterr().out == "" and (tmp_path / "q.onnx").stat().st_size > 1000
