"""The training loop: reproducibility, run folder contents, divergence guard, schedules."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import REAL_DATA, needs_real_data

from fashionlab import checkpoint, config, optim, runs
from fashionlab.errors import DivergedError
from fashionlab.inference import load_trained
from fashionlab.train import Loop, _early_stopping, train


def run_tiny(tiny_data, tiny_config, tmp_path, *overrides):
    return train(tiny_config, overrides=list(overrides), data_dir=str(tiny_data),
                 out=str(tmp_path / "runs"), quiet=True)


def test_run_folder_is_complete(tiny_data, tiny_config, tmp_path):
    path = run_tiny(tiny_data, tiny_config, tmp_path)
    run = runs.load_run(path)
    assert run.finished and run.info["engine"] == "torch" and run.info["seed"] == 1
    assert [r["epoch"] for r in run.history] == [1.0, 2.0]
    assert set(run.history[0]) == set(runs.HISTORY_FIELDS)
    m = run.metrics
    assert m["epochs_run"] == 2 and m["params"] == 784 * 16 + 16 + 170
    assert 0 <= m["test_accuracy"] <= 1 and m["train_seconds"] > 0
    probs, labels = run.predictions()
    assert probs.shape == (100, 10) and np.allclose(probs.sum(1), 1, atol=1e-2)
    assert probs.dtype == np.float32  # float16 near-ties flipped argmaxes (compare != metrics)
    assert (probs.argmax(1) == labels).mean() == pytest.approx(m["test_accuracy"], abs=1e-9)
    assert config.resolve(run.config) == config.resolve(tiny_config)
    # The saved weights reproduce the saved predictions.
    trained = load_trained(path)
    test_x = runs.read_tensors(path / "predictions.safetensors")[0]["labels"]
    assert len(test_x) == 100 and trained.net.params == m["params"]
    # Every file with the user's usual permissions: the weights too, which safetensors on its
    # own writes as 0600, unreadable to another user or a `serve` process.
    mask = os.umask(0)
    os.umask(mask)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in path.iterdir()} == {
        f.name: oct(0o666 & ~mask) for f in path.iterdir()}


def test_same_seed_same_numbers(tiny_data, tiny_config, tmp_path):
    extra = ["augment.flip=0.5", "augment.translate=2", "model.layers.1.units=8"]
    a = runs.load_run(run_tiny(tiny_data, tiny_config, tmp_path, *extra))
    b = runs.load_run(run_tiny(tiny_data, tiny_config, tmp_path, *extra))
    c = runs.load_run(run_tiny(tiny_data, tiny_config, tmp_path, *extra, "train.seed=2"))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]
    wa, wb, wc = a.weights(), b.weights(), c.weights()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not all(np.array_equal(wa[k], wc[k]) for k in wa)


def test_learns_the_tiny_task(tiny_data, tiny_config, tmp_path):
    path = run_tiny(tiny_data, tiny_config, tmp_path, "train.epochs=10", "train.lr=0.01",
                    "data.normalize=standard")
    run = runs.load_run(path)
    assert run.history[-1]["loss"] < run.history[0]["loss"]
    assert run.metrics["test_accuracy"] >= 0.9  # the bars are easy to tell apart


def test_divergence_guard_keeps_last_good_epoch(tiny_data, tiny_config, tmp_path, monkeypatch):
    real = optim.lr_factor

    def explode_in_epoch_two(step, total, train_cfg, steps_per_epoch):
        return 1e12 if step >= steps_per_epoch else real(step, total, train_cfg, steps_per_epoch)

    monkeypatch.setattr(optim, "lr_factor", explode_in_epoch_two)
    with pytest.raises(DivergedError, match=r"loss became (nan|inf) at epoch 2.*lower the "
                                            r"learning rate \(epoch 1 kept in"):
        run_tiny(tiny_data, tiny_config, tmp_path, "train.optimizer=sgd", "train.epochs=3")
    path = next((tmp_path / "runs").iterdir())
    info = runs.read_info(path)
    assert info["state"] == "diverged" and "epoch 2" in info["reason"]
    saved = checkpoint.load(path)
    assert saved["loop"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert len(runs.read_history(path)) == 1
    with pytest.raises(Exception, match="not finished"):
        runs.load_run(path)


def test_divergence_guard_watches_the_validation_loss(tiny_data, tiny_config, tmp_path,
                                                      monkeypatch):
    """Batch norm's running statistics can break while the training loss (on batch statistics)
    stays finite: a validation loss of nan is divergence too, not a finished run."""
    import fashionlab.train as train_module

    monkeypatch.setattr(train_module, "loss_and_accuracy", lambda z, y: (math.nan, 0.1))
    with pytest.raises(DivergedError, match=r"^training diverged: validation loss became nan at "
                       r"epoch 1, step 5 \(lr 0\.001\); lower the learning rate \(no epoch "
                       r"finished\)$"):
        run_tiny(tiny_data, tiny_config, tmp_path)
    (run,) = (tmp_path / "runs").iterdir()
    assert runs.read_info(run)["state"] == "diverged"


def test_early_stopping_tracks_best_and_patience():
    loop, cfg_ = Loop(), {"monitor": "val_accuracy", "patience": 2}
    module = torch.nn.Linear(2, 2)
    stops = [_early_stopping(loop, {"epoch": e, "val_accuracy": v}, cfg_, module)
             for e, v in enumerate([0.5, 0.7, 0.6, 0.65, 0.9], 1)]
    assert stops == [False, False, False, True, False]
    assert loop.best_epoch == 5 and loop.best == 0.9 and loop.best_weights is not None


def test_early_stopping_run_restores_best(tiny_data, tiny_config, tmp_path):
    path = run_tiny(tiny_data, tiny_config, tmp_path, "train.epochs=30", "train.patience=2",
                    "train.monitor=val_loss", "train.lr=0.05")
    run = runs.load_run(path)
    best = min(r["val_loss"] for r in run.history)
    assert run.metrics["epochs_run"] <= 30
    kept = run.history[run.metrics["best_epoch"] - 1]
    assert kept["val_loss"] == best
    assert run.metrics["epochs_run"] > run.metrics["best_epoch"]  # it did stop after the best
    assert run.metrics["val_accuracy"] == kept["val_accuracy"]  # the kept epoch's, not the last


@pytest.mark.parametrize("schedule, steps, expected", [
    ("constant", [0, 50, 99], [1.0, 1.0, 1.0]),
    ("cosine", [0, 50, 100], [1.0, 0.5, 0.0]),
    ("onecycle", [0, 25, 50, 100], [0.0, 1.0, 2 / 3, 0.0]),
])
def test_schedules(schedule, steps, expected):
    cfg_ = {"schedule": schedule, "warmup_epochs": 0.0, "epochs": 10}
    got = [optim.lr_factor(s, 100, cfg_, 10) for s in steps]
    assert got == pytest.approx(expected)


def test_warmup_is_linear():
    cfg_ = {"schedule": "cosine", "warmup_epochs": 1.0, "epochs": 10}
    assert [optim.lr_factor(s, 100, cfg_, 10) for s in (0, 4, 9)] == pytest.approx(
        [0.1, 0.5, 1.0])
    assert optim.lr_factor(55, 100, cfg_, 10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_keras_optimizer_defaults():
    p = [torch.nn.Parameter(torch.zeros(1))]
    adam = optim.make_optimizer(p, config.DEFAULTS["train"])
    assert adam.defaults["eps"] == 1e-7 and adam.defaults["lr"] == 0.001
    rms = optim.make_optimizer(p, {**config.DEFAULTS["train"], "optimizer": "rmsprop"})
    assert rms.defaults["rho"] == 0.9 and rms.defaults["eps"] == 1e-7
    sgd = optim.make_optimizer(p, {**config.DEFAULTS["train"], "optimizer": "sgd"})
    assert sgd.defaults["lr"] == 0.01 and sgd.defaults["momentum"] == 0


def _keras_steps(name: str, w: float, grads: list[float], lr: float = 0.001,
                 momentum: float = 0.0, wd: float = 0.0) -> float:
    """Keras 3's update rules written out (keras/src/optimizers: rmsprop.py, sgd.py, and the
    base optimizer's weight decay, applied before each update)."""
    v = m = 0.0
    for g in grads:
        w -= w * wd * lr
        if name == "rmsprop":
            v = 0.9 * v + 0.1 * g * g
            step = lr * g / math.sqrt(v + 1e-7)
            m = momentum * m + step
            w -= m if momentum else step
        else:  # sgd: velocity = momentum * velocity - lr * g
            m = momentum * m - lr * g
            w += m
    return w


@pytest.mark.parametrize("name, momentum, wd", [
    ("rmsprop", 0.0, 0.0), ("rmsprop", 0.9, 0.0), ("rmsprop", 0.9, 0.1), ("sgd", 0.9, 0.1),
    ("sgd", 0.0, 0.1)])
def test_rmsprop_and_weight_decay_step_as_keras(name, momentum, wd):
    """Three steps of one weight with small gradients, against the rules in Keras's source:
    torch's RMSprop (epsilon outside the root) moved it ten times further on the first."""
    grads = [1e-4, -3e-4, 2e-4]
    p = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    opt = optim.make_optimizer([p], {**config.DEFAULTS["train"], "optimizer": name,
                                     "lr": 0.001, "momentum": momentum, "weight_decay": wd})
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    assert p.item() == pytest.approx(_keras_steps(name, 0.5, grads, 0.001, momentum, wd),
                                     rel=1e-12, abs=1e-15)
    if (name, momentum, wd) == ("rmsprop", 0.0, 0.0):  # the audit's one-step figure
        assert _keras_steps(name, 0.5, grads[:1]) == pytest.approx(0.4996854, abs=1e-7)


def test_adam_weight_decay_is_keras_decoupled_decay():
    """Keras's Adam(weight_decay=wd) shrinks a weight with no gradient by lr * wd a step; torch's
    Adam would add wd * w to the gradient, and Adam's scaling makes that a full step."""
    p = torch.nn.Parameter(torch.tensor([0.001]))
    opt = optim.make_optimizer([p], {**config.DEFAULTS["train"], "optimizer": "adam",
                                     "lr": 0.001, "weight_decay": 0.1})
    for _ in range(2):
        p.grad = torch.zeros(1)
        opt.step()
    assert p.item() == pytest.approx(0.001 * (1 - 0.001 * 0.1) ** 2, rel=1e-6)


def test_ema_and_regularised_cnn_train(tiny_data, tmp_path):
    cfg_ = {"model": {"name": "cnn", "layers": [
        {"type": "conv2d", "filters": 4, "kernel": 3, "l2": 1e-4,
         "kernel_constraint": "unit_norm"},
        {"type": "batchnorm"}, {"type": "relu"}, {"type": "maxpool"},
        {"type": "dropout", "rate": 0.2}, {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"}]},
        "data": {"dataset": "any", "val": "fraction:0.2", "normalize": "standard"},
        "train": {"epochs": 2, "ema": 0.9, "schedule": "onecycle", "tta_flip": True},
        "augment": {"flip": 0.5, "translate": 2, "rotate": 10.0, "erase": 0.3}}
    run = runs.load_run(train(cfg_, data_dir=str(tiny_data), out=str(tmp_path), quiet=True))
    assert run.finished and all(math.isfinite(r["loss"]) for r in run.history)
    norms = np.linalg.norm(run.weights()["0.0.weight"], axis=2)
    # Saved weights are the EMA of unit-norm kernels: an average of unit vectors, norm <= 1.
    assert norms.max() <= 1 + 1e-4 and norms.min() > 0.5


@pytest.mark.slow
@needs_real_data
def test_one_epoch_on_real_data(tmp_path):
    path = train("quick-fc", flags={"train.epochs": 1}, data_dir=str(REAL_DATA),
                 out=str(tmp_path), quiet=True)
    run = runs.load_run(path)
    assert run.info["data"]["verified"] is True
    assert run.metrics["test_accuracy"] > 0.80
    assert len(run.predictions()[1]) == 10000


def test_epoch_line_shows_val_only_when_there_is_a_split():
    row = {"epoch": 2, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.75,
           "seconds": 1.25}
    assert runs.epoch_line(row, 3) == ("epoch 2/3  loss 0.5000  acc 0.8000  val_loss 0.6000"
                                       "  val_acc 0.7500  1.2s")
    no_val = {**row, "val_loss": math.nan, "val_accuracy": math.nan}
    assert runs.epoch_line(no_val, 3) == "epoch 2/3  loss 0.5000  acc 0.8000  1.2s"


@pytest.mark.parametrize("name,wd", [("adam", 0.0), ("adam", 1e-3), ("adamw", 0.01)])
def test_stepper_moves_the_weights_exactly_as_optimizer_step(name, wd):
    """optim.stepper calls the fused kernel itself: the same weights and state to the bit as
    torch's Adam/AdamW step, under a changing learning rate, and after a state reload."""
    runs_ = []
    for direct in (False, True):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
        train_cfg = {"optimizer": name, "lr": 0.01, "weight_decay": wd, "schedule": "onecycle",
                     "warmup_epochs": 0, "epochs": 2}
        opt = optim.make_optimizer(net.parameters(), train_cfg)
        schedule = optim.make_schedule(opt, train_cfg, 4)
        step = optim.stepper(opt) if direct else opt.step
        assert (step is opt.step) != direct
        start = net[0].weight.detach().clone()
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        for i in range(8):
            if i == 5:  # a resume replaces the state tensors
                opt.load_state_dict(opt.state_dict())
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            step()
            schedule.step()
        assert net[0].weight.ne(start).all()
        runs_.append([p.detach().clone() for p in net.parameters()]
                     + [t for s in opt.state.values() for t in (s["exp_avg"], s["exp_avg_sq"],
                                                                s["step"])])
    assert runs_[0][-1].item() == 8  # every step counted
    for a, b in zip(*runs_, strict=True):
        assert torch.equal(a, b)


def test_bf16_model_table_trains_its_layers_from_the_seed(tiny_data, tiny_config, tmp_path):
    """best.toml's [bf16] model: a bf16 run trains the table's net, started where a run of
    those layers as a recipe starts (so the same weights at the end), and records it; fp32,
    or a layer key set on the command line, trains the recipe's own net."""
    wide = [dict(layer) for layer in tiny_config["model"]["layers"]]
    wide[1]["units"] = 32
    doc = {**tiny_config, "bf16": {"model": {"layers": wide}}}

    def run(source, folder, *overrides):
        return runs.load_run(train(source, overrides=["train.precision=bf16", *overrides],
                                   data_dir=str(tiny_data), out=str(tmp_path / folder),
                                   quiet=True))

    table = run(doc, "table")
    plain = run({**tiny_config, "model": {"name": "tiny", "layers": wide}}, "plain")
    assert table.config["model"]["layers"] == wide and "bf16" not in table.config
    assert table.metrics["params"] == plain.metrics["params"] == 784 * 32 + 32 + 330
    assert table.info["bf16_keys"] == {"model.layers": "3 layers, 25,450 parameters"}
    mine, theirs = table.weights(), plain.weights()
    assert mine.keys() == theirs.keys()
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
    assert run(doc, "fp32", "train.precision=fp32").metrics["params"] == 784 * 16 + 16 + 170
    edited = run(doc, "edited", "model.layers.1.units=8")
    assert edited.metrics["params"] == 784 * 8 + 8 + 90 and "bf16_keys" not in edited.info


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_stepper_leaves_other_optimizers_to_their_step(name):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = optim.make_optimizer([p], {"optimizer": name, "lr": 0.1, "weight_decay": 0.0,
                                     "momentum": 0.0, "nesterov": False})
    assert optim.stepper(opt) == opt.step


@pytest.mark.parametrize("precision, epochs", [("bf16", 3), ("fp32", 2)])
def test_bf16_table_sets_what_a_bf16_run_trains_with(tiny_data, tiny_config, tmp_path,
                                                     precision, epochs):
    """fast.toml's [bf16] keys: applied where the run trains in bf16, recorded as applied, and
    the run folder's config is what ran, so a resume elsewhere trains the same run."""
    doc = {**tiny_config, "bf16": {"train": {"epochs": 3}}}
    path = run_tiny(tiny_data, doc, tmp_path, "train.epochs=1", f"train.precision={precision}")
    run = runs.load_run(path)
    assert run.metrics["epochs_run"] == 1  # --set train.epochs wins over [bf16]
    path = train(doc, flags={"train.precision": precision}, data_dir=str(tiny_data),
                 out=str(tmp_path / "runs"), quiet=True)
    run = runs.load_run(path)
    assert run.info["precision"] == precision and run.metrics["epochs_run"] == epochs
    assert run.config["train"]["epochs"] == epochs and "bf16" not in run.config
    assert run.info.get("bf16_keys") == ({"train.epochs": 3} if precision == "bf16" else None)
    assert run.info["config_digest"] == config.digest(config.resolve(run.config))


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"{path.name} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_seed_group_without_validation_writes_strict_json(tiny_data, tiny_config, tmp_path):
    from fashionlab import seeds

    group = seeds.train_seeds(tiny_config, [1], overrides=["data.val='none'"],
                              data_dir=str(tiny_data), out=str(tmp_path), quiet=True)
    summary = _strict_json(group / "group.json")
    assert summary["val_accuracy"] == {"mean": None, "std": None, "n": 1}
    assert summary["test_accuracy"]["std"] is None and summary["test_accuracy"]["mean"] > 0.1
    run = group / summary["runs"][0]["path"]
    assert _strict_json(run / "metrics.json")["val_accuracy"] is None
    assert math.isnan(runs.load_run(run).metrics["val_accuracy"])  # read back as NaN
    assert "(one seed)" in seeds.format_group(group)


def test_a_seed_group_refused_before_any_run_leaves_no_folder(tiny_config, tmp_path):
    from fashionlab import seeds
    from fashionlab.errors import DataError

    with pytest.raises(DataError):
        seeds.train_seeds(tiny_config, [1, 2], data_dir=str(tmp_path / "nowhere"),
                          out=str(tmp_path / "out"), quiet=True)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_last_batch_of_one_joins_the_one_before_under_dense_batch_norm(tiny_data, tiny_config,
                                                                         tmp_path):
    """150 training images in batches of 149 leave one image, which BatchNorm1d refuses."""
    tiny_config["model"]["layers"].insert(2, {"type": "batchnorm"})
    path = run_tiny(tiny_data, tiny_config, tmp_path, "train.batch_size=149", "train.epochs=1")
    assert runs.load_run(path).metrics["epochs_run"] == 1


def test_test_time_flip_without_flipped_training_is_warned_about(tiny_data, tiny_config,
                                                                 tmp_path, capsys):
    tiny_config["train"].update(epochs=1, tta_flip=True)
    train(tiny_config, data_dir=str(tiny_data), out=str(tmp_path), quiet=False)
    assert "warning: train.tta_flip averages in mirrored test images" in capsys.readouterr().err
    tiny_config["augment"] = {"flip": 0.5}
    train(tiny_config, data_dir=str(tiny_data), out=str(tmp_path), quiet=False)
    assert "tta_flip" not in capsys.readouterr().err


def test_a_seed_group_names_each_seed_before_its_epoch_lines(tiny_data, tiny_config, tmp_path,
                                                             capsys):
    from fashionlab import seeds

    tiny_config["train"]["epochs"] = 1
    seeds.train_seeds(tiny_config, [4, 7], data_dir=str(tiny_data), out=str(tmp_path))
    err = capsys.readouterr().err
    assert err.index("== seed 4 (1 of 2)") < err.index("== seed 7 (2 of 2)")
