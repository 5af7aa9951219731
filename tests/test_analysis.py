"""Plots, compare, baselines and the HTML report on tiny runs (and one headless-browser check)."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, idx_bytes, write_idx_set
from PIL import Image

import fashionlab
from fashionlab import compare, plots, report, runs, stats
from fashionlab.baselines import run_baseline
from fashionlab.cli import main
from fashionlab.errors import RunError

CONFIG = {**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 3}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """Two seeds of one config, one other config and a logreg baseline, all on tiny data."""
    root = tmp_path_factory.mktemp("analysis")
    data_dir = write_idx_set(root / "data")
    out = root / "runs"

    def train(seed: int, units: int = 16) -> Path:
        config = copy.deepcopy(CONFIG)
        config["train"]["seed"] = seed
        config["model"]["layers"][1]["units"] = units
        return fashionlab.train(config, data_dir=str(data_dir), out=str(out), quiet=True)

    return {"data": data_dir, "out": out, "seed1": train(1), "seed2": train(2),
            "wide": train(1, units=32),
            "logreg": run_baseline("logreg", 150, str(data_dir), out, dataset="any", quiet=True)}


def test_overfitting_onset_rule():
    def hist(val_loss, loss):
        return [{"epoch": i + 1, "val_loss": v, "loss": t, "val_accuracy": 1 - v}
                for i, (v, t) in enumerate(zip(val_loss, loss, strict=True))]

    assert plots.overfitting_onset(hist([1.0, 0.8, 0.7, 0.75, 0.9], [1, .8, .6, .4, .2])) == 3
    assert plots.overfitting_onset(hist([1.0, 0.8, 0.7, 0.6, 0.9], [1, .8, .6, .4, .2])) is None
    assert plots.overfitting_onset(hist([1.0, 0.7, 0.8, 0.9], [1.0, 0.9, 1.1, 1.2])) is None
    assert plots.overfitting_onset(hist([1.0, 0.8], [1.0, 0.5])) is None
    assert plots.best_epoch(hist([1.0, 0.8, 0.7, 0.75, 0.9], [1, .8, .6, .4, .2])) == 3


def test_plot_run_writes_decodable_figures(tiny):
    done = fashionlab.load_run(tiny["seed1"]).plot()
    folder = tiny["seed1"] / "plots"
    stems = {"curves", "confusion_test", "confusion_train", "per_class", "samples", "mistakes"}
    assert {p.stem for p in done.files} == stems and done.notes == []
    for stem in stems:
        assert (folder / f"{stem}.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
        with Image.open(folder / f"{stem}.png") as im:
            im.load()
            assert 400 <= im.width <= 2500 and 250 <= im.height <= 2500, (stem, im.size)
            assert np.asarray(im.convert("L")).std() > 5  # not a blank page


def test_plot_cli_on_baseline_skips_what_needs_weights(tiny, capsys):
    assert main(["plot", str(tiny["logreg"])]) == 0
    out, err = capsys.readouterr()
    assert "confusion_test" in out and "curves skipped" in err and "train-set confusion" in err
    assert (tiny["logreg"] / "plots" / "confusion_test.png").exists()
    assert not (tiny["logreg"] / "plots" / "confusion_train.png").exists()


def test_compare_pairs_and_seed_group(tiny, tmp_path):
    c = fashionlab.compare([tiny["seed1"], tiny["seed2"], tiny["wide"], tiny["logreg"]])
    assert len(c.pairs) == 6 and not c.unpaired
    accs = []
    for e in c.entries:
        probs, labels = e.run.predictions()
        correct = probs.argmax(1) == labels
        accs.append(correct.mean())
        assert e.accuracy == pytest.approx(e.run.metrics["test_accuracy"], abs=1e-6)
        assert e.interval == stats.wilson_interval(int(correct.sum()), len(labels))
    i, j, t = c.pairs[0]
    assert (i, j) == (0, 1)
    assert t == stats.mcnemar(c.entries[0].correct, c.entries[1].correct)
    [(model, members, mean, std)] = c.groups  # only the two seeds of one config
    assert members == [0, 1] and model == "tiny"
    assert (mean, std) == pytest.approx((np.mean(accs[:2]), np.std(accs[:2], ddof=1)))
    text = str(c)
    assert "baseline-logreg" in text and "McNemar" in text and "over 2 seeds" in text
    assert f"p = {t.p_value:<9.3g}" in text
    assert compare.overlay(c, tmp_path / "curves.svg").stat().st_size > 1000


def test_seeds_scored_on_other_test_images_are_not_a_seed_group(tiny, tmp_path):
    """Two seeds of one config, one scored on other test images (say, a subset): neither a
    McNemar pair nor a mean over seeds."""
    other = tmp_path / "other"
    shutil.copytree(tiny["seed2"], other)
    probs, labels = fashionlab.load_run(other).predictions()
    runs.save_predictions(other, probs[:-1], labels[:-1])
    c = fashionlab.compare([tiny["seed1"], other])
    assert c.unpaired == [(0, 1)] and not c.pairs and not c.groups
    html = report.build([tiny["seed1"], other], data_dir=tiny["data"])
    assert "Not tested: #1 vs #2 (scored on different test images" in html
    assert "over 2 seeds" not in html


def test_report_describes_each_runs_own_data(tiny, tmp_path):
    other = write_idx_set(tmp_path / "data", n_train=150, n_test=60)
    run = fashionlab.train(copy.deepcopy(CONFIG), data_dir=str(other), out=str(tmp_path),
                           quiet=True)
    html = report.build([tiny["seed1"], tiny["seed2"], run])
    assert "<h3>Data of runs #1, #2</h3>" in html and "<h3>Data of run #3</h3>" in html
    assert "150 training, 60 test" in html and "200 training, 100 test" in html
    assert html.count("Most confident mistakes") == 3  # each run's mistakes from its own images
    assert "<h3>Data of" not in report.build([tiny["seed1"], tiny["seed2"]])


def test_runs_are_scored_on_their_own_data_or_not_at_all(tmp_path, capsys):
    folder = write_idx_set(tmp_path / "data", n_train=150, n_test=60)
    run = fashionlab.train(copy.deepcopy(CONFIG), data_dir=str(folder), out=str(tmp_path),
                           quiet=True)
    assert runs.load_run(run).info["data"]["sha256"]["t10k-images-idx3-ubyte"]
    assert main(["evaluate", str(run)]) == 0 and "/60)" in capsys.readouterr().out
    folder.rename(tmp_path / "moved")
    assert main(["evaluate", str(run)]) == 2
    assert f"this run's data folder {folder} is gone: name the data with --data-dir" in (
        capsys.readouterr().err)
    assert main(["evaluate", str(run), "--data-dir", str(tmp_path / "moved")]) == 0
    assert "/60)" in capsys.readouterr().out
    write_idx_set(folder, n_train=150, n_test=60, gz=False)  # the same data, gunzipped
    assert main(["evaluate", str(run)]) == 0
    info = runs.read_info(run)  # as run.json recorded them for a while: keyed with .gz
    runs.write_json(run / "run.json", {**info, "data": {**info["data"], "sha256": {
        f"{k}.gz": v for k, v in info["data"]["sha256"].items()}}})
    assert main(["evaluate", str(run)]) == 0
    capsys.readouterr()
    shutil.rmtree(folder)
    write_idx_set(folder, n_train=150, n_test=70)
    assert main(["evaluate", str(run)]) == 2
    assert "changed since this run trained (SHA-256 differs)" in capsys.readouterr().err


def test_seeds_on_other_training_data_are_not_a_seed_group(tiny, tmp_path):
    folder = write_idx_set(tmp_path / "data", n_train=150, n_test=100)  # the same test images
    config = copy.deepcopy(CONFIG)
    config["train"]["seed"] = 2
    other = fashionlab.train(config, data_dir=str(folder), out=str(tmp_path), quiet=True)
    c = fashionlab.compare([tiny["seed1"], other])
    assert len(c.pairs) == 1 and not c.groups
    assert len(fashionlab.compare([tiny["seed1"], tiny["seed2"]]).groups) == 1


def test_report_does_not_judge_overfitting_without_validation(tiny, tmp_path):
    config = copy.deepcopy(CONFIG)
    config["data"] = {**config["data"], "val": "none"}
    run = fashionlab.train(config, data_dir=str(tiny["data"]), out=str(tmp_path), quiet=True)
    html = report.build([run])
    assert "No validation split: nothing to judge overfitting by." in html
    assert "No sign of overfitting" not in html and "Best epoch" not in html


def test_a_data_set_s_own_class_names_reach_every_output(tiny, tmp_path, capsys):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    config = copy.deepcopy(CONFIG)
    config["data"] = {**config["data"], "classes": names}
    run = fashionlab.train(config, data_dir=str(tiny["data"]), out=str(tmp_path), quiet=True)
    assert main(["evaluate", str(run)]) == 0
    assert "  seven " in capsys.readouterr().out
    assert main(["export", str(run), "-q", "-o", str(tmp_path / "m.pt")]) == 0
    files = {"classes.txt": ""}
    torch.jit.load(str(tmp_path / "m.pt"), _extra_files=files)
    assert json.loads(files["classes.txt"]) == names
    html = report.build([tiny["seed1"], run])  # same data, run #2 with its own names
    assert "<td class=l>nine</td>" in html and "<td class=l>9</td>" in html


def test_compare_cli_refuses_unfinished_run(tiny, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny["seed1"], broken)
    runs.set_state(broken, "interrupted", "interrupted by the user")
    assert main(["compare", str(tiny["seed1"]), str(broken)]) == 2
    err = capsys.readouterr().err
    assert "not finished" in err and len(err.strip().splitlines()) == 1


def test_baseline_writes_an_ordinary_run(tiny):
    run = runs.load_run(tiny["logreg"])
    assert run.config["model"]["name"] == "baseline-logreg"
    assert run.info["engine"] == "scikit-learn"
    assert run.info["baseline"]["method"] == "logreg"
    assert run.info["baseline"]["train_size"] == 150
    m = run.metrics
    assert m["params"] == 784 * 10 + 10 and m["epochs_run"] == 1
    probs, labels = run.predictions()
    assert probs.shape == (100, 10) and np.allclose(probs.sum(1), 1, atol=1e-2)
    assert m["test_accuracy"] == pytest.approx((probs.argmax(1) == labels).mean(), abs=1e-6)
    assert 0.9 <= m["test_accuracy"] <= 1.0  # the tiny classes are bars at distinct rows
    with pytest.raises(RunError):
        runs.load_run(tiny["out"] / "missing")


def test_baseline_rejects_bad_train_size(tiny, capsys):
    assert main(["baseline", "knn", "--train-size", "5000", "--dataset", "any",
                 "--data-dir", str(tiny["data"]), "--out", str(tiny["out"])]) == 2
    assert "--train-size must lie between 10 and 200" in capsys.readouterr().err
    before = sorted(tiny["out"].iterdir())
    assert main(["baseline", "svc", "--train-size", "10", "--dataset", "any",
                 "--data-dir", str(tiny["data"]), "--out", str(tiny["out"])]) == 2
    err = capsys.readouterr().err
    assert "svc calibrates on 3 folds of each class, and 10 training images leave a class " in err
    assert sorted(tiny["out"].iterdir()) == before  # refused before a run folder is made


def test_svc_baseline_on_a_data_set_with_two_classes(tmp_path):
    folder = write_idx_set(tmp_path / "data", n_train=60, n_test=20, gz=False)
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        labels = np.frombuffer((folder / name).read_bytes()[8:], np.uint8) % 2
        (folder / name).write_bytes(idx_bytes(labels))
    run = run_baseline("svc", 60, str(folder), tmp_path / "runs", dataset="any", quiet=True)
    probs, labels = runs.load_run(run).predictions()
    assert set(probs.argmax(1)) <= {0, 1} and set(labels) == {0, 1}


def test_train_cli_plots_unless_told_not_to(tiny, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(fashionlab.config.dumps({**CONFIG, "train": {"epochs": 1, "seed": 3}}))
    args = ["train", str(spec), "--data-dir", str(tiny["data"]), "--out", str(tmp_path), "-q"]
    assert main(args + ["--no-plots"]) == 0
    assert main(args) == 0
    first, second = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert not (first / "plots").exists()
    assert (second / "plots" / "curves.png").exists()


def test_train_cli_takes_the_data_set_kind_as_an_option(tiny, tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(fashionlab.config.dumps({**CONFIG, "data": {"val": "first:50"},
                                             "train": {"epochs": 1}}))
    args = ["train", str(spec), "--data-dir", str(tiny["data"]), "--out", str(tmp_path), "-q",
            "--no-plots"]
    assert main(args) == 2  # the default, fashion-mnist, checks the files
    assert "do not match the SHA-256 of Fashion-MNIST" in capsys.readouterr().err
    assert main([*args, "--dataset", "any"]) == 0


def test_numpy_engine_run_is_plotted_and_compared(tiny):
    pytest.importorskip("fashionlab.numpy_engine")
    config = copy.deepcopy(CONFIG)
    config["train"]["engine"] = "numpy"
    config["train"]["optimizer"] = "sgd"
    path = fashionlab.train(config, data_dir=str(tiny["data"]), out=str(tiny["out"]), quiet=True)
    assert {"curves", "confusion_test", "mistakes"} <= {
        p.stem for p in plots.plot_run(path).files}
    c = compare.compare([path, tiny["seed1"]])
    assert c.entries[0].run.info["engine"] == "numpy" and len(c.pairs) == 1


@pytest.fixture(scope="module")
def report_html(tiny) -> Path:
    out = tiny["out"].parent / "report.html"
    assert main(["report", str(tiny["seed1"]), str(tiny["seed2"]), str(tiny["logreg"]),
                 "-o", str(out), "--title", "Tiny study"]) == 0
    return out


def test_report_is_self_contained(tiny, report_html):
    text = report_html.read_text()
    assert len(re.findall(r"<img ", text)) >= 4
    assert len(re.findall(r'src="data:image/png;base64,', text)) == text.count("<img ")
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched from a network
    for name in ("seed1", "logreg"):
        command = runs.load_run(tiny[name]).info["command"]
        assert f'<code class="cmd">{command}</code>' in text
    assert "Tiny study" in text and "McNemar" in text and "95% interval" in text
    assert text.count('<section class="run"') == 3


CHECK = """<script>
window.addEventListener("error", e => document.body.dataset.errors =
  (document.body.dataset.errors || "") + e.message);
window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.dataset.images = imgs.length;
  document.body.dataset.decoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
});
</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp()
    try:
        return subprocess.run(
            [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_chromium(report_html, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(report_html.read_text().replace("</body>", CHECK + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-500:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    assert images >= 4
    assert f'data-decoded="{images}"' in body and "data-errors" not in body
    shot = tmp_path / "report.png"
    done = _chromium(f"--screenshot={shot}", "--window-size=1280,4000", report_html.as_uri())
    assert done.returncode == 0, done.stderr[-500:]
    with Image.open(shot) as im:
        grey = np.asarray(im.convert("L"))
    assert grey.shape == (4000, 1280)
    assert grey.std() > 20 and (grey < 128).mean() > 0.01  # text and figures, not a blank page


def test_durations_round_before_splitting_minutes():
    assert compare.duration(239.6) == "4 min 00 s"
    assert compare.duration(125.2) == "2 min 05 s"
    assert compare.duration(42.25) == "42.2 s"
    assert compare.duration(float("nan")) == "-"


def test_confusion_percent_panel_and_its_colour_bar_share_a_unit():
    fig = plots.confusion_figure(np.array([[8, 2], [1, 9]]), ("a", "b"), "t")
    assert [t.get_text() for t in fig.axes[1].texts] == ["80", "20", "10", "90"]
    assert fig.axes[-1].get_ylim() == (0.0, 90.0)  # the percent panel's colour bar, in %


def test_a_run_on_the_official_data_finds_it_wherever_it_is_here(tiny, tmp_path, monkeypatch):
    """Moved to another machine, a run trained on the verified files reads this machine's
    copy (which must verify too); only other data must be named."""
    run = tmp_path / "run"
    shutil.copytree(tiny["seed1"], run)
    info = runs.read_info(run)
    runs.write_json(run / "run.json", {**info, "data": {**info["data"], "path": "/gone",
                                                         "verified": True}})
    calls = []
    monkeypatch.setattr(fashionlab.data, "for_config",
                        lambda data_dir, data_cfg: calls.append(data_dir))
    fashionlab.data.of_run(runs.read_info(run), {"data": {"dataset": "fashion-mnist"}})
    assert calls == [None]  # the default source: --data-dir, $FASHIONLAB_DATA, Debian, cache


def test_curves_without_a_validation_split_draw_and_name_only_training():
    history = [{"epoch": e, "loss": 1 / e, "accuracy": 1 - 1 / (e + 1), "val_loss": math.nan,
                "val_accuracy": math.nan} for e in range(1, 4)]
    fig = plots.curves_figure(history)
    assert fig._suptitle.get_text() == "training curves (no validation split)"
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert labels == ["training accuracy", "training loss"]
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())
