"""Every shipped recipe builds, matches the report's parameter count, and trains; the recipes,
show and reproduce commands work end to end on tiny data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tomllib
from conftest import write_idx_set

from fashionlab import config, hardware, models, reproduce, runs
from fashionlab.cli import main
from fashionlab.errors import UserError
from fashionlab.train import train

RECIPES = config.recipe_names()
REPORTS = ("weil-2020-fc-vs-cnn", "duan-2020-fc-vs-lenet", "korssjoen-2020-leakyrelu-bn",
           "bas-ege-optimizers-augmentation")
# Counted by hand from the reports' Keras layers (weights + biases; BN gamma and beta only).
KERAS_PARAMS = {
    "weil-fc": 784 * 256 + 256 + 256 * 10 + 10,
    "weil-cnn": (9 * 32 + 32) + (9 * 32 * 16 + 16) + (6 * 6 * 16 * 128 + 128) + 1290,
    "duan-fc": (784 * 320 + 320) + (320 * 130 + 130) + (130 * 10 + 10),
    "duan-lenet5": (25 * 6 + 6) + (25 * 6 * 16 + 16) + (25 * 16 * 120 + 120) + (120 * 84 + 84)
    + (84 * 10 + 10),
    "korssjoen-fc": (784 * 1024 + 1024) + 2 * 1024 + (1024 * 512 + 512) + 2 * 512
    + (512 * 256 + 256) + 2 * 256 + (256 * 10 + 10),
    "korssjoen-cnn-maxpool": (25 * 128 + 128) + (25 * 128 * 256 + 256) + (25 * 256 * 512 + 512)
    + (7 * 7 * 512 * 128 + 128) + (128 * 64 + 64) + (64 * 10 + 10),
}
# Small enough that the 7-million-parameter Korssjoen CNN trains a step in about a second.
TINY = ["data.dataset=any", "data.val=first:10", "train.epochs=1", "train.batch_size=8",
        "train.eval_batch_size=64"]


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_idx_set(tmp_path_factory.mktemp("micro"), n_train=40, n_test=20)


def test_recipes_cover_the_reports() -> None:
    reports = {reproduce.header(n)["report"] for n in RECIPES}
    assert set(REPORTS) <= reports
    assert len([n for n in RECIPES if reproduce.header(n)["report"]]) >= 14


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_and_trains(name: str, micro_data: Path, tmp_path: Path) -> None:
    resolved = config.resolve(name)
    head = resolved["recipe"]
    assert head["description"] and "\n" not in head["description"]
    assert 0 <= head["claimed_test_accuracy"] < 1 and 0 <= head["claimed_val_accuracy"] < 1
    if head["report"]:
        assert head["section"] and len(head["notes"]) > 100, "say what was inferred and why"
    net = models.build(resolved["model"]["layers"])
    if head["claimed_params"]:
        assert net.params == head["claimed_params"]
    if name in KERAS_PARAMS:
        assert net.params == KERAS_PARAMS[name]
    run = runs.load_run(train(name, overrides=TINY, data_dir=str(micro_data), out=str(tmp_path),
                              quiet=True))
    assert run.metrics["epochs_run"] == 1
    assert 0 <= run.metrics["test_accuracy"] <= 1
    assert math.isfinite(run.metrics["test_loss"])


def test_recipes_command_lists_and_filters(capsys: pytest.CaptureFixture) -> None:
    assert main(["recipes", "weil"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["recipe", "report"]
    assert [ln.split()[0] for ln in lines[1:]] == ["weil-cnn", "weil-fc"]
    fc = lines[2].split()
    assert fc[1:4] == ["weil-2020-fc-vs-cnn", "88.97", "203,530"]
    assert main(["recipes", "bas-cnn-*"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 3 and all("val 9" in r for r in rows)
    assert main(["recipes", "no-such-thing"]) == 2


@pytest.mark.parametrize("name", ["weil-cnn", "korssjoen-fc", "bas-cnn-sgd"])
def test_show_prints_toml_that_resolves_to_the_same_config(
        name: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", name]) == 0
    doc = tomllib.loads(capsys.readouterr().out)
    assert config.resolve(doc) == config.resolve(name)
    assert main(["show", name, "--set", "train.epochs=3"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["train"]["epochs"] == 3
    assert main(["show", name, "--set", "train.epoch=3"]) == 2


@pytest.mark.parametrize("flags, precision", [([], "fp32"), (["amx_bf16"], "bf16")])
def test_show_says_whether_a_bf16_table_applies_here(flags, precision, monkeypatch, capsys):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setenv("FASHIONLAB_DEVICE", "cpu")
    assert main(["show", "fast"]) == 0
    out, err = capsys.readouterr()
    assert tomllib.loads(out)["bf16"]["train"]["epochs"] == 16
    applies = "apply" if precision == "bf16" else "do not apply"
    assert f"it trains in {precision}: the [bf16] keys {applies}" in err
    assert main(["show", "weil-cnn"]) == 0  # no [bf16] table: only what its lr = 0 means
    assert capsys.readouterr().err == "train.lr = 0 means adam's Keras default, 0.001\n"
    assert main(["show", "weil-cnn", "--set", "train.optimizer='sgd'"]) == 0
    assert capsys.readouterr().err == "train.lr = 0 means sgd's Keras default, 0.01\n"


def test_show_and_summary_build_a_bf16_model_table(tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(["amx_bf16"]))
    monkeypatch.setenv("FASHIONLAB_DEVICE", "cpu")
    wide = [dict(layer) for layer in tiny_config["model"]["layers"]]
    wide[1]["units"] = 32
    spec = tmp_path / "wide.toml"
    spec.write_text(config.dumps({**tiny_config, "train": {"precision": "bf16"},
                                  "bf16": {"model": {"layers": wide}}}))
    assert main(["show", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert tomllib.loads(out)["bf16"]["model"]["layers"][1]["units"] == 32
    assert "(its [bf16] model: 25,450 parameters; the recipe's: 12,730)" in err
    assert main(["summary", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "Total params: 12,730" in out and "Total params: 25,450" in out
    wide[1]["units"] = 0
    spec.write_text(config.dumps({**tiny_config, "bf16": {"model": {"layers": wide}}}))
    assert main(["show", str(spec)]) == 2  # a table's net that cannot be built: one line
    assert "[bf16] model: layer 1 (dense): units" in capsys.readouterr().err


def test_select_by_report_field_or_prefix() -> None:
    assert reproduce.select("weil") == ["weil-cnn", "weil-fc"]
    assert reproduce.select("duan-2020-fc-vs-lenet") == ["duan-fc", "duan-fc-deep", "duan-lenet5"]
    everything = reproduce.select("all")
    assert "quick-fc" not in everything and "bas-cnn-sgd" in everything
    assert reproduce.select("bas-ann-*") == ["bas-ann-adam", "bas-ann-rmsprop", "bas-ann-sgd"]
    assert reproduce.select("quick-fc") == ["quick-fc"]
    with pytest.raises(UserError, match="no recipe reproduces"):
        reproduce.select("nobody")
    with pytest.raises(UserError, match="no recipe reproduces"):
        reproduce.select("nobody-*")


def test_difference_uses_the_claimed_split() -> None:
    both = reproduce.Row("a", 0.8897, 0.9010, 13, 13, test=[0.90, 0.91], val=[0.5, 0.5])
    assert reproduce._difference(both) == "+1.53"
    val_only = reproduce.Row("b", 0.0, 0.93, 1, 50, test=[0.8], val=[0.9])
    assert reproduce._difference(val_only) == "-3.00 (val)"
    assert reproduce._difference(reproduce.Row("c", 0.0, 0.0, 1, 1, test=[0.8])) == "—"
    shown = reproduce.Row("d", 0.0, 0.93, 50, 50, val=[0.920250])  # printed 92.03, not 92.025
    assert reproduce._difference(shown) == "-0.97 (val)" and reproduce.table_row(shown)[4] == (
        "92.03")
    cells = reproduce.table_row(both)
    assert cells[:3] == ["`a`", "88.97", "90.50 ± 0.71"] and cells[6] == "13"
    assert reproduce.table_row(val_only)[6] == "1 of 50 (capped)"


@pytest.mark.parametrize("load, flagged", [(0.4, False), (2.1, False), (2.5, False),
                                           (2.6, True), (3.0, True)])
def test_shared_cpu_flag_allows_for_our_own_threads(monkeypatch: pytest.MonkeyPatch,
                                                    load: float, flagged: bool) -> None:
    monkeypatch.setattr(reproduce.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(reproduce.hardware, "usable_cores", lambda: 2)
    row = reproduce.Row("a", 0.0, 0.93, 1, 1, test=[0.9], val=[0.9])
    text = reproduce.markdown([row], "t", "fashionlab reproduce a")
    assert f"load average {load:.1f} when written" in text
    assert ("other jobs shared the CPU" in text) is flagged


def test_reproduce_command_writes_the_table(tiny_data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "out" / "weil.md"
    code = main(["reproduce", "weil", "--max-epochs", "1", "--set", "data.dataset=any",
                 "--set", "data.val=first:50", "--data-dir", str(tiny_data),
                 "--out", str(tmp_path / "runs"), "-o", str(table), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert table.read_text() == printed
    assert "fashionlab reproduce weil --max-epochs 1 --set data.dataset=any" in printed
    assert "machine: " in printed and "capped by --max-epochs" in printed
    assert (f"- **data: {tiny_data.resolve()} (not the official Fashion-MNIST files): not "
            "comparable with the reports' figures**") in printed
    rows = [ln for ln in printed.splitlines() if ln.startswith("| `")]
    assert [r.split(" | ")[0] for r in rows] == ["| `weil-fc`", "| `weil-cnn`"]  # cheap first
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == len(reproduce.COLUMNS)
    assert cells[1] == "88.97" and cells[3] == "90.10" and cells[6] == "1 of 13 (capped)"
    measured = float(cells[2])
    assert 0 <= measured <= 100
    assert cells[5] == f"{measured - 88.97:+.2f}"
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_run_recipe_over_seeds(tiny_data: Path, tmp_path: Path) -> None:
    row = reproduce.run_recipe("weil-fc", seeds=2, max_epochs=1,
                               overrides=["data.dataset=any", "data.val=first:50"],
                               out=str(tmp_path), data_dir=str(tiny_data), quiet=True)
    assert len(row.test) == len(row.val) == len(row.runs) == 2
    assert [runs.load_run(p).info["seed"] for p in row.runs] == [0, 1]
    assert row.capped and row.epochs == 1 and row.full_epochs == 13
    assert "±" in reproduce.table_row(row)[2]


def test_reproduce_rejects_bad_counts() -> None:
    with pytest.raises(UserError, match="--seeds"):
        reproduce.reproduce("weil", seeds=0)
    with pytest.raises(UserError, match="--max-epochs"):
        reproduce.reproduce("weil", max_epochs=0)


def test_reproduce_resume_goes_on_from_a_stopped_run(tiny_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from fashionlab import signals
    from fashionlab.train import train

    options = ["data.dataset=any", "data.val=first:50"]
    out = tmp_path / "runs"
    kw = {"out": str(out), "data_dir": str(tiny_data), "quiet": True}

    def stop_after_first_epoch(run_dir: Path, epoch: int, row: dict) -> None:
        raise signals.Interrupted(signal.SIGINT, "stopped by the test")

    with pytest.raises(KeyboardInterrupt):
        train("weil-fc", overrides=[*options, "train.epochs=2", "train.seed=0"],
              hooks=[stop_after_first_epoch], **kw)
    (stopped,) = out.iterdir()
    assert runs.read_info(stopped)["state"] == "interrupted"

    started_with = runs.read_info(stopped)["code_version"]
    monkeypatch.setattr(runs, "code_version", lambda: started_with + ".changed")
    with pytest.raises(UserError, match="code changed"):  # as `train --resume` refuses
        reproduce.run_recipe("weil-fc", max_epochs=2, overrides=options, resume=True, **kw)
    row = reproduce.run_recipe("weil-fc", max_epochs=2, overrides=options, resume=True,
                               force=True, **kw)
    assert row.runs == [stopped] and list(out.iterdir()) == [stopped]
    assert len(runs.load_run(stopped).history) == 2  # epoch 1 kept, epoch 2 trained on top

    again = reproduce.run_recipe("weil-fc", max_epochs=2, overrides=options, resume=True, **kw)
    assert again.runs == [stopped] and again.test == row.test  # finished: reused as it is
    other_seed = reproduce.run_recipe("weil-fc", max_epochs=2, overrides=[*options,
                                      "train.seed=5"], resume=True, **kw)
    assert other_seed.runs[0] != stopped  # a different config is never picked up
    fresh = reproduce.run_recipe("weil-fc", max_epochs=2, overrides=options, **kw)
    assert fresh.runs[0] not in (stopped, other_seed.runs[0])  # without resume: a new run


def test_a_late_signal_in_one_recipe_stops_reproduce_before_the_next(
        tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    import fashionlab.train as train_module

    real = train_module.train

    def late(run_dir, epoch, row):  # weil-fc's one epoch ends: the signal finds no step left
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(train_module, "train", lambda *a, **k: real(*a, hooks=[late], **k))
    table = tmp_path / "weil.md"
    assert main(["reproduce", "weil", "--max-epochs", "1", "--set", "data.dataset=any",
                 "--set", "data.val=first:50", "--data-dir", str(tiny_data),
                 "--out", str(tmp_path / "runs"), "-o", str(table), "-q"]) == 130
    assert "interrupted by SIGINT before weil-cnn seed " in capsys.readouterr().err
    rows = [line for line in table.read_text().splitlines() if line.startswith("| `")]
    assert [r.split(" | ")[0] for r in rows] == ["| `weil-fc`"]


def test_ctrl_c_in_reproduce_says_how_to_resume_the_table(tmp_path: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce, "reproduce", stopped)
    out, table = tmp_path / "runs", tmp_path / "t.md"
    assert main(["reproduce", "weil", "--max-epochs", "1", "--out", str(out), "-o",
                 str(table)]) == 130
    assert capsys.readouterr().err == (
        f"fashionlab: interrupted; resume with: fashionlab reproduce weil --max-epochs 1 --out "
        f"{out} -o {table} --resume\n")


def test_show_checks_a_bf16_tables_net_as_it_would_train(tiny_config, tmp_path, capsys):
    wide = [dict(layer) for layer in tiny_config["model"]["layers"]]
    wide[-1]["activation"] = "sigmoid"
    spec = tmp_path / "spec.toml"
    spec.write_text(config.dumps({**tiny_config, "bf16": {"model": {"layers": wide}}}))
    assert main(["show", str(spec)]) == 2
    assert "[bf16] model: layer 2 (dense): the last layer's activation must be softmax" in (
        capsys.readouterr().err)
