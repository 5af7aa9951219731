"""The NumPy engine: gradients against torch autograd and finite differences, and its runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fashionlab import config as cfg
from fashionlab import data, models, numpy_engine, numpy_net, optim, runs
from fashionlab.errors import DivergedError, SpecError
from fashionlab.inference import load_trained, load_weights
from fashionlab.train import train as fit

DENSE = {"type": "dense", "units": 7}
SPECS = {  # every supported layer, activation and option appears in at least one spec
    **{f"dense-{a}": [{"type": "flatten"}, {**DENSE, "activation": a},
                      {"type": "dense", "units": 10, "activation": "softmax"}]
       for a in ("sigmoid", "relu", "tanh", "leaky_relu", "linear")},
    "act-layers": [{"type": "sigmoid"}, {"type": "flatten"}, DENSE, {"type": "relu"}, DENSE,
                   {"type": "leaky_relu", "alpha": 0.1}, DENSE, {"type": "tanh"},
                   {"type": "dense", "units": 10}, {"type": "softmax"}],
    "penalties": [{"type": "flatten"},
                  {**DENSE, "activation": "tanh", "l1": 0.01, "l2": 0.02, "use_bias": False},
                  {"type": "dense", "units": 10, "l2": 0.05}],
    "dropout": [{"type": "flatten"}, {"type": "dropout", "rate": 0.3},
                {**DENSE, "activation": "relu"}, {"type": "dropout", "rate": 0.5},
                {"type": "dense", "units": 10, "activation": "softmax"}],
}


def _pair(layers: list[dict], dtype=np.float64, seed: int = 0):
    """The same weights in a numpy net and the torch model built from the same tables."""
    net = numpy_net.build(layers, np.random.default_rng(seed), dtype)
    torch_net = models.build(layers)
    torch_net.module.to(torch.float64 if dtype == np.float64 else torch.float32)
    load_weights(torch_net.module, net.params, "test")
    return net, torch_net


def _batch(dtype=np.float64, n: int = 6):
    rng = np.random.default_rng(1)
    return rng.normal(0, 1, (n, 784)).astype(dtype), rng.integers(0, 10, n)


def _numpy_loss_grads(net, x, y, smoothing=0.0, seed=2):
    z, tape = numpy_net.forward(net, x, np.random.default_rng(seed))
    loss, dz = numpy_net.cross_entropy(z, y, smoothing)
    grads = numpy_net.backward(net, tape, dz)
    return loss + numpy_net.penalty(net, grads), grads, tape


def _torch_loss_grads(torch_net, tape, x, y, smoothing=0.0):
    """Torch forward through the same blocks, applying the numpy run's dropout masks."""
    h = torch.from_numpy(x).reshape(len(x), 1, 28, 28)
    for block, (saved, _) in zip(torch_net.module, tape, strict=True):
        is_dropout = isinstance(block[0], torch.nn.Dropout)
        h = h * torch.from_numpy(saved).reshape(h.shape) if is_dropout else block(h)
    loss = F.cross_entropy(h, torch.from_numpy(y), label_smoothing=smoothing)
    loss = loss + models.penalty(torch_net)
    loss.backward()
    return loss.item(), {k: p.grad.numpy() for k, p in torch_net.module.named_parameters()}


@pytest.mark.parametrize("name", SPECS)
def test_gradients_match_autograd_float64(name):
    net, torch_net = _pair(SPECS[name])
    x, y = _batch()
    loss, grads, tape = _numpy_loss_grads(net, x, y, smoothing=0.1)
    want_loss, want = _torch_loss_grads(torch_net, tape, x, y, smoothing=0.1)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert set(grads) == set(want)
    for key, g in grads.items():
        np.testing.assert_allclose(g, want[key], rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", ["dense-sigmoid", "act-layers", "penalties"])
def test_gradients_match_autograd_float32(name):
    net, torch_net = _pair(SPECS[name], np.float32)
    x, y = _batch(np.float32, 32)
    loss, grads, tape = _numpy_loss_grads(net, x, y)
    want_loss, want = _torch_loss_grads(torch_net, tape, x, y)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    for key, g in grads.items():
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, want[key], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("name", SPECS)
def test_gradients_match_finite_differences(name):
    net = numpy_net.build(SPECS[name], np.random.default_rng(0), np.float64)
    x, y = _batch()
    _, grads, _ = _numpy_loss_grads(net, x, y, smoothing=0.1)
    pick = np.random.default_rng(3)
    eps = 1e-6
    for key, p in net.params.items():
        for i in pick.choice(p.size, size=min(p.size, 15), replace=False):
            old = p.flat[i]
            p.flat[i] = old + eps
            up = _numpy_loss_grads(net, x, y, smoothing=0.1)[0]  # same seed: same dropout mask
            p.flat[i] = old - eps
            down = _numpy_loss_grads(net, x, y, smoothing=0.1)[0]
            p.flat[i] = old
            assert grads[key].flat[i] == pytest.approx((up - down) / (2 * eps), rel=1e-5,
                                                       abs=1e-8), (key, i)


@pytest.mark.parametrize(("momentum", "nesterov", "decay"),
                         [(0.0, False, 0.0), (0.9, False, 1e-3), (0.9, True, 0.0)])
def test_sgd_steps_and_constraints_match_torch(momentum, nesterov, decay):
    layers = [{"type": "flatten"},
              {**DENSE, "activation": "tanh", "kernel_constraint": "max_norm", "l2": 0.01},
              {"type": "dense", "units": 10, "kernel_constraint": "unit_norm"}]
    net, torch_net = _pair(layers)
    train = {"momentum": momentum, "nesterov": nesterov, "weight_decay": decay}
    opt = optim.make_optimizer(torch_net.module.parameters(),
                               {**train, "optimizer": "sgd", "lr": 0.5})
    x, y = _batch()
    x *= 30  # large steps, so that max_norm's limit of 2 is reached
    velocity, norms = {}, []
    for _ in range(3):
        _, grads, tape = _numpy_loss_grads(net, x, y)
        numpy_net.sgd_step(net, grads, velocity, train, 0.5)
        norms.append(np.linalg.norm(net.params["1.0.weight"], axis=1).max())
        opt.zero_grad()
        _torch_loss_grads(torch_net, tape, x, y)
        opt.step()
        models.apply_constraints(torch_net)
    want = torch_net.module.state_dict()
    assert max(norms) == pytest.approx(2, rel=1e-6)  # the max_norm limit was reached
    np.testing.assert_allclose(np.linalg.norm(net.params["2.0.weight"], axis=1), 1, rtol=1e-6)
    for key, value in net.params.items():
        np.testing.assert_allclose(value, want[key].numpy(), rtol=1e-9, atol=1e-12, err_msg=key)


def test_cross_entropy_is_torch_and_stable():
    rng = np.random.default_rng(0)
    z, y = rng.normal(0, 1000, (8, 10)), rng.integers(0, 10, 8)  # exp() would overflow
    for smoothing in (0.0, 0.2):
        loss, dz = numpy_net.cross_entropy(z, y, smoothing)
        zt = torch.tensor(z, requires_grad=True)
        want = F.cross_entropy(zt, torch.from_numpy(y), label_smoothing=smoothing)
        want.backward()
        assert loss == pytest.approx(want.item(), rel=1e-12)
        np.testing.assert_allclose(dz, zt.grad.numpy(), atol=1e-15)


def test_layer_tables_agree_with_models():
    assert {*numpy_net.LAYER_KEYS, *numpy_net.TORCH_ONLY} == set(models.LAYER_KEYS)
    assert numpy_net.MAX_LAYER_PARAMS == models.MAX_LAYER_PARAMS
    for kind, keys in numpy_net.LAYER_KEYS.items():
        theirs = models.LAYER_KEYS[kind]
        assert {k: (None if v is models.REQUIRED else v) for k, v in theirs.items()} == keys


@pytest.mark.parametrize("name", SPECS)
def test_params_flops_and_shapes_agree_with_models(name):
    net, torch_net = _pair(SPECS[name])
    assert (net.size, net.flops) == (torch_net.params, torch_net.flops)
    shapes = {k: tuple(v.shape) for k, v in torch_net.module.state_dict().items()}
    assert shapes == {k: v.shape for k, v in net.params.items()}


@pytest.mark.parametrize(("change", "named"), [
    ({"model": {"layers": [{"type": "conv2d", "filters": 4, "kernel": 3}, {"type": "flatten"},
                           {"type": "dense", "units": 10}]}}, "conv2d"),
    ({"model": {"layers": [{"type": "flatten"}, {"type": "batchnorm"},
                           {"type": "dense", "units": 10}]}}, "batchnorm"),
    ({"model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10,
                                                  "activation": "gelu"}]}}, "gelu"),
    ({"train": {"optimizer": "adam"}}, "train.optimizer"),
    ({"train": {"schedule": "cosine"}}, "train.schedule"),
    ({"augment": {"flip": 0.5}}, "augment.flip"),
    ({"train": {"tta_shift": 1}}, "train.tta_shift"),
])
def test_unsupported_options_are_refused_by_name(tiny_config, tiny_data, change, named):
    config = cfg.resolve(tiny_config, overrides=["train.engine=numpy", "train.optimizer=sgd"])
    for section, table in change.items():
        config[section].update(table)
    with pytest.raises(SpecError, match=named):
        numpy_engine.train(config, data_dir=str(tiny_data), out=None, quiet=True)


def test_a_gpu_asked_for_is_refused(capsys, monkeypatch):
    """--device cuda (or FASHIONLAB_DEVICE) must not be ignored by an engine that runs on the
    CPU only, as the torch engine refuses it where there is no GPU."""
    from fashionlab.cli import main

    monkeypatch.setenv("FASHIONLAB_DEVICE", "cuda")  # what --device cuda sets
    assert main(["train", "bodapati-task1", "-q"]) == 2
    assert capsys.readouterr().err == (
        'fashionlab: error: the numpy engine does not support --device cuda (CPU only); use '
        'train.engine = "torch"\n')


@pytest.mark.parametrize(("layers", "message"), [
    ([{"type": "dens", "units": 10}], "unknown layer type 'dens'"),
    ([{"type": "dense", "units": 10}], "dense needs a flat input"),
    ([{"type": "flatten"}, {"type": "dense", "units": True}], "units must be a positive"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10, "l2": -1.0}], "must not be negative"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10, "bias": 0}], "unknown key 'bias'"),
    ([{"type": "flatten"}, {"type": "dropout", "rate": 1.0}, {"type": "dense", "units": 10}],
     "rate must lie in"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"},
      {"type": "dense", "units": 10}], "softmax is only supported on the last layer"),
    ([{"type": "flatten"}, {"type": "dense", "units": 9}], "end with"),
])
def test_bad_layer_tables_are_refused(layers, message):
    with pytest.raises(SpecError, match=message):
        numpy_net.build(layers, np.random.default_rng(0))


def _train(tiny_config, tiny_data, tmp_path, *overrides):
    return fit(tiny_config, data_dir=str(tiny_data), out=str(tmp_path),
                             quiet=True, overrides=["train.engine=numpy", "train.optimizer=sgd",
                                                    "train.lr=0.1", *overrides])


def test_run_folder_loads_in_torch_and_matches(tiny_config, tiny_data, tmp_path):
    path = _train(tiny_config, tiny_data, tmp_path, "train.momentum=0.9", "train.epochs=3")
    run = runs.load_run(path)
    assert run.info["engine"] == "numpy" and run.info["state"] == "finished"
    assert set(run.metrics) == {"test_accuracy", "test_loss", "epochs_run", "train_seconds",
                                "seconds_per_epoch", "val_accuracy", "best_epoch", "params",
                                "flops_per_image"}
    assert [r["epoch"] for r in run.history] == [1, 2, 3]
    assert run.history[-1]["loss"] < run.history[0]["loss"]
    assert run.metrics["test_accuracy"] > 0.5  # the tiny set's bars are easy to learn
    trained = load_trained(path, precision="fp32")  # auto is bf16 on AMX CPUs
    ds = data.load(str(tiny_data), "any")
    net = numpy_net.build(trained.config["model"]["layers"], np.random.default_rng(0))
    net.params = run.weights()
    mine = numpy_net.logits(net, ds.test_x, trained.config)
    theirs = trained.logits(ds.test_x).numpy()
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)
    assert (theirs.argmax(1) == ds.test_y).mean() == run.metrics["test_accuracy"]
    probs, labels = run.predictions()
    assert (probs.argmax(1) == labels).mean() == run.metrics["test_accuracy"]


def test_same_seed_same_history_and_weights(tiny_config, tiny_data, tmp_path):
    a, b = (_train(tiny_config, tiny_data, tmp_path / s, "train.momentum=0.5") for s in "ab")
    c = _train(tiny_config, tiny_data, tmp_path / "c", "train.momentum=0.5", "train.seed=2")

    def history(path):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in runs.read_history(path)]

    assert history(a) == history(b) != history(c)
    wa, wb = runs.load_run(a).weights(), runs.load_run(b).weights()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_resume_ends_with_the_same_weights(tiny_config, tiny_data, tmp_path, monkeypatch):
    extra = ("train.epochs=3", "model.layers.1.units=32")
    tiny_config["model"]["layers"].insert(2, {"type": "dropout", "rate": 0.2})
    whole = _train(tiny_config, tiny_data, tmp_path / "whole", *extra)
    save = numpy_engine._save_checkpoint

    def save_then_stop(run_dir, net, velocity, rngs, loop):
        save(run_dir, net, velocity, rngs, loop)
        if loop["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(numpy_engine, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_config, tiny_data, tmp_path / "cut", *extra)
    cut = next((tmp_path / "cut").iterdir())
    assert runs.read_info(cut)["state"] == "interrupted"
    monkeypatch.setattr(numpy_engine, "_save_checkpoint", save)
    fit(None, data_dir=str(tiny_data), quiet=True, resume=cut)
    w1, w2 = runs.load_run(whole).weights(), runs.load_run(cut).weights()
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)


def test_divergence_is_reported(tiny_config, tiny_data, tmp_path):
    with pytest.raises(DivergedError, match="lower the learning rate"):
        _train(tiny_config, tiny_data, tmp_path / "out", "train.lr=1e30")
    info = json.loads(next((tmp_path / "out").iterdir()).joinpath("run.json").read_text())
    assert info["state"] == "diverged"


def test_engine_imports_no_torch():
    code = "import sys, fashionlab.numpy_engine; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
