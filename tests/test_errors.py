"""Every row of docs/errors.md: a class of bad input, the command that meets it, the message.

Each case runs the CLI in-process and asserts exit code 2, exactly one line on stderr, no
traceback, and the message (a regular expression, matched against that line).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import idx_bytes, make_images, write_idx_set

from fashionlab import config as cfg
from fashionlab import resources, runs
from fashionlab.cli import main

TINY = {"model": {"name": "tiny", "layers": [
    {"type": "flatten"}, {"type": "dense", "units": 8, "activation": "relu"},
    {"type": "dense", "units": 10, "activation": "softmax"}]},
    "data": {"dataset": "any", "val": "first:10"}, "train": {"epochs": 1}}
CSV_HEADER = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def idx_set(tmp: Path, gz: bool = False) -> Path:
    return write_idx_set(tmp / "data", n_train=40, n_test=20, gz=gz)


def info(folder: Path, dataset: str = "any") -> list[str]:
    return ["data", "info", "--dataset", dataset, "--data-dir", str(folder)]


def replace(tmp: Path, name: str, raw: bytes) -> list[str]:
    folder = idx_set(tmp)
    (folder / name).write_bytes(raw)
    return info(folder)


def edit(tmp: Path, name: str, change) -> list[str]:
    folder = idx_set(tmp)
    (folder / name).write_bytes(change((folder / name).read_bytes()))
    return info(folder)


def csv_set(tmp: Path, train_text: str | bytes) -> list[str]:
    folder = tmp / "csv"
    folder.mkdir()
    x, y = make_images(3, 0)
    good = CSV_HEADER + "\n" + "".join(
        f"{label}," + ",".join(map(str, image.ravel())) + "\n"
        for image, label in zip(x, y, strict=True))
    (folder / "fashion-mnist_test.csv").write_text(good)
    path = folder / "fashion-mnist_train.csv"
    path.write_bytes(train_text if isinstance(train_text, bytes) else train_text.encode())
    return info(folder)


def spec(tmp: Path, doc: dict | str, *options: str) -> list[str]:
    path = tmp / "spec.toml"
    path.write_text(doc if isinstance(doc, str) else cfg.dumps(doc))
    return ["train", str(path), "--data-dir", str(idx_set(tmp)), "-q", *options]


def layers(*stack: dict) -> dict:
    return {**TINY, "model": {"layers": list(stack)}}


def fake_run(tmp: Path, state: str, reason: str = "", model: bytes | None = None) -> Path:
    """A run folder in a given state, without training (the files other commands read)."""
    path = runs.create("fake", tmp / "runs")
    runs.start(path, cfg.dumps(cfg.resolve(TINY)), {"name": "fake"})
    runs.set_state(path, state, reason)
    if model is not None:
        (path / "model.safetensors").write_bytes(model)
    return path


def digits(tmp: Path) -> list[str]:
    folder = idx_set(tmp)
    x, _ = make_images(40, 0)
    (folder / IMAGES).write_bytes(idx_bytes(x // 8))  # dark thin-stroke-like images
    return info(folder, "fashion-mnist")


FLAT = {"type": "flatten"}
OUT = {"type": "dense", "units": 10}
CASES = [
    # -- data files -------------------------------------------------------------------------
    ("data folder missing", lambda t: info(t / "nope"), r"data folder .*/nope \(--data-dir\) "
     r"does not exist"),
    ("data folder is a file", lambda t: info(_a_file(t)),
     r"data folder .*/notes\.txt \(--data-dir\) is a file: name the folder that holds the data "
     r"files$"),
    ("data file missing", lambda t: info(
        _unlink(idx_set(t) / "t10k-labels-idx1-ubyte")),
     r"/data: missing t10k-labels-idx1-ubyte\[\.gz\]$"),
    ("corrupt gzip", lambda t: _cut_gz(idx_set(t, gz=True)),
     r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip data"),
    ("truncated IDX", lambda t: edit(t, IMAGES, lambda b: b[:-100]),
     r"truncated: header promises 31360 bytes of data for shape \(40, 28, 28\), file holds 31260"),
    ("bytes after the data", lambda t: edit(t, IMAGES, lambda b: b + b"xx"),
     r"2 unexpected bytes after the data for shape \(40, 28, 28\)"),
    ("wrong magic number", lambda t: edit(t, LABELS, lambda b: b"\x01\x00\x08\x01" + b[4:]),
     r"wrong magic number 0x01000801 \(expected 0x00000801 for labels or 0x00000803"),
    ("IDX of another shape", lambda t: replace(t, IMAGES, idx_bytes(np.zeros((40, 28, 28, 3),
                                                                             np.uint8))),
     r"train-images-idx3-ubyte: an IDX array with 4 dimensions; expected images \(N, 28, 28\)"),
    ("not an IDX file", lambda t: replace(t, LABELS, b"<html>404</html>"),
     r"wrong magic number 0x3c68746d"),
    ("wrong IDX data type", lambda t: edit(t, LABELS, lambda b: b[:2] + b"\x0d" + b[3:]),
     r"IDX data type 0x0d is not unsigned bytes \(0x08\)"),
    ("images and labels mismatched", lambda t: edit(t, LABELS, lambda b: idx_bytes(
        np.zeros(39, np.uint8))), r"training: 40 images but 39 labels"),
    ("empty test set", lambda t: _empty_test(idx_set(t)), r"the test set has no images$"),
    ("wrong image shape", lambda t: replace(t, IMAGES, idx_bytes(np.zeros((40, 32, 32)))),
     r"training images have shape \(40, 32, 32\), expected \(N, 28, 28\)"),
    ("labels out of range", lambda t: replace(t, LABELS, idx_bytes(np.full(40, 12))),
     r"training labels: labels must lie in 0\.\.9, found 12\.\.12"),
    ("MNIST digits, not Fashion-MNIST", digits,
     r"these are MNIST handwritten digits, not Fashion-MNIST \(data set 'any' takes them: "
     r"--dataset any, or data\.dataset = \"any\" in a spec\)$"),
    ("modified or other data set", lambda t: info(idx_set(t), "fashion-mnist"),
     r"files do not match the SHA-256 of Fashion-MNIST"),
    ("CSV without header", lambda t: csv_set(t, "1,2,3\n"),
     r"fashion-mnist_train\.csv: expected a header starting with 'label'"),
    ("CSV wrong column count", lambda t: csv_set(t, "label,a,b\n1,2,3\n"),
     r"header has 3 columns, expected 785 \(label \+ 784 pixels\)"),
    ("CSV bad cell", lambda t: csv_set(t, CSV_HEADER + "\n" + "1," * 784 + "x\n"),
     r"line 2 is not 785 integers"),
    ("CSV short row", lambda t: csv_set(t, CSV_HEADER + "\n" + "1,2\n"),
     r"line 2 is not 785 integers"),
    ("CSV pixel out of range", lambda t: csv_set(t, CSV_HEADER + "\n" + "1," * 784 + "300\n"),
     r"pixel values must lie in 0\.\.255"),
    ("CSV label out of range", lambda t: csv_set(t, CSV_HEADER + "\n" + "11," + "0," * 783
                                                 + "0\n"), r"labels must lie in 0\.\.9"),
    ("CSV no rows", lambda t: csv_set(t, CSV_HEADER + "\n"), r"no data rows"),
    ("CSV that is not Fashion-MNIST", lambda t: _csv_as_fashion(t),
     r"/csv: files do not match the SHA-256 of Fashion-MNIST"),
    ("CSV under other names", lambda t: _renamed_csv(t), r"/csv: found mnist_test\.csv, "
     r"mnist_train\.csv; CSV data is read as fashion-mnist_train\.csv and fashion-mnist_test"
     r"\.csv \(Kaggle's names\)$"),
    ("CSV not text", lambda t: csv_set(t, b"\xff\xfe" + bytes(range(256))),
     r"not a text CSV file"),
    # -- spec files ---------------------------------------------------------------------------
    ("invalid TOML", lambda t: spec(t, "[model\nlayers = 3"), r"spec\.toml: invalid TOML \("),
    ("unknown section", lambda t: spec(t, {**TINY, "trian": {}}),
     r"unknown section \[trian\] \(did you mean 'train'\?\)"),
    ("unknown key", lambda t: spec(t, {**TINY, "train": {"lrate": 0.1}}),
     r"unknown key train\.lrate \(did you mean 'lr'\?\)"),
    ("wrong value type", lambda t: spec(t, {**TINY, "train": {"epochs": "ten"}}),
     r"train\.epochs must be an integer, got 'ten'"),
    ("class names not ten", lambda t: spec(t, {**TINY, "data": {
        **TINY["data"], "classes": ["cat", "dog"]}}),
     r"data\.classes must name the 10 labels 0\.\.9, got \['cat', 'dog'\]$"),
    ("spec file missing", lambda t: ["train", str(t / "missing.toml")],
     r"cannot read .*missing\.toml: No such file or directory"),
    ("unknown recipe", lambda t: ["train", "weil-fx"],
     r"no recipe or file named 'weil-fx' \(did you mean 'weil-fc'\?\)"),
    ("spec file not text", lambda t: _binary_spec(t),
     r"spec\.toml: not a UTF-8 text file \(a TOML spec is text\)$"),
    ("no layers", lambda t: spec(t, {"data": TINY["data"]}), r"the config has no \[model\] layers"),
    ("unknown layer type", lambda t: spec(t, layers(FLAT, {"type": "dense2"}, OUT)),
     r"layer 1: unknown layer type 'dense2' \(known: flatten, dense"),
    ("unknown layer key", lambda t: spec(t, layers(FLAT, {"type": "dense", "unit": 5}, OUT)),
     r"layer 1 \(dense\): unknown key 'unit' for dense \(did you mean 'units'\?\) "
     r"\(accepted: units"),
    ("sigmoid on the last layer", lambda t: spec(t, layers(FLAT, {
        "type": "dense", "units": 10, "activation": "sigmoid"})),
     r"layer 1 \(dense\): the last layer's activation must be softmax \(or linear: logits\); "
     r"sigmoid outputs are not class probabilities"),
    ("missing layer key", lambda t: spec(t, layers(FLAT, {"type": "dense"})),
     r"layer 1 \(dense\): dense needs 'units'"),
    ("wrong layer value type", lambda t: spec(t, layers(FLAT, {**OUT, "activation": 1})),
     r"layer 1 \(dense\): activation must be of type str, got 1"),
    ("unknown activation", lambda t: spec(t, layers(FLAT, {**OUT, "activation": "relux"})),
     r"unknown activation 'relux'"),
    ("kernel larger than input", lambda t: spec(t, layers(
        {"type": "conv2d", "filters": 4, "kernel": 30}, FLAT, OUT)),
     r"layer 0 \(conv2d\): kernel 30x30 does not fit the 28x28 input"),
    ("dense on an image", lambda t: spec(t, layers(OUT)),
     r"layer 0 \(dense\): dense needs a flat input, got \(1, 28, 28\)"),
    ("wrong number of outputs", lambda t: spec(t, layers(FLAT, {"type": "dense", "units": 5})),
     r"the last layer outputs shape \(5,\); 10 classes need \(10,\)"),
    ("batch norm momentum out of range", lambda t: spec(t, layers(
        FLAT, {"type": "batchnorm", "momentum": 2}, OUT)),
     r"layer 1 \(batchnorm\): batchnorm momentum must lie in \[0, 1\] \(Keras's: the share of "
     r"the running statistics kept each step\), got 2$"),
    ("softmax before the end", lambda t: spec(t, layers(
        FLAT, {"type": "dense", "units": 8, "activation": "softmax"}, OUT)),
     r"softmax is only supported on the last layer"),
    ("absurdly large layer", lambda t: spec(t, layers(FLAT, {"type": "dense", "units": 10**8},
                                                     OUT)),
     r"layer 1 \(dense\): 78,500,000,000 parameters in one layer is too many"),
    # -- options ------------------------------------------------------------------------------
    ("negative lr", lambda t: spec(t, TINY, "--lr", "-1"),
     r"train\.lr must not be negative, got -1\.0"),
    ("zero lr", lambda t: spec(t, TINY, "--lr", "0"),
     r"--lr 0 would never move the weights; leave --lr out for the optimizer's default"),
    ("zero batch size", lambda t: spec(t, TINY, "--batch-size", "0"),
     r"train\.batch_size must be positive, got 0"),
    ("zero epochs", lambda t: spec(t, TINY, "--epochs", "0"), r"train\.epochs must be positive"),
    ("non-number epochs", lambda t: spec(t, TINY, "--epochs", "ten"),
     r"argument --epochs: invalid int value: 'ten' \(see --help\)"),
    ("unknown optimizer flag", lambda t: spec(t, TINY, "--optimizer", "adamax"),
     r"argument --optimizer: invalid choice: 'adamax'"),
    ("unknown optimizer in --set", lambda t: spec(t, TINY, "--set", "train.optimizer=adamax"),
     r"train\.optimizer must be one of sgd, adam, adamw, rmsprop, got 'adamax'"),
    ("seed out of range", lambda t: spec(t, TINY, "--seed", "-1"),
     r"train\.seed must lie in 0\.\.4294967295, got -1$"),
    ("--seeds out of range", lambda t: spec(t, TINY, "--seeds", "1,4294967296"),
     r"train\.seed must lie in 0\.\.4294967295, got 4294967296$"),
    ("a choice given as another type", lambda t: spec(t, TINY, "--set",
                                                      "train.channels_last=false"),
     r"train\.channels_last must be a string \(auto, on, off\), got False$"),
    ("an optimizer key the optimizer ignores", lambda t: spec(t, TINY, "--set",
                                                              "train.momentum=0.9"),
     r"train\.momentum does nothing for adam \(its betas play that part\): it applies to sgd "
     r"and rmsprop$"),
    ("Nesterov without momentum", lambda t: spec(t, TINY, "--optimizer", "sgd", "--set",
                                                 "train.nesterov=true"),
     r"train\.nesterov needs train\.momentum above 0$"),
    ("infinite lr", lambda t: spec(t, TINY, "--set", "train.lr=inf"),
     r"train\.lr must be a finite number, got inf"),
    ("--set without =", lambda t: spec(t, TINY, "--set", "train.lr"),
     r"--set 'train\.lr': expected KEY=VALUE"),
    ("--set unknown key", lambda t: spec(t, TINY, "--set", "train.lrr=0.1"),
     r"--set train\.lrr: unknown key train\.lrr \(did you mean 'lr'\?\)"),
    ("--set missing layer", lambda t: spec(t, TINY, "--set", "model.layers.7.units=3"),
     r"--set model\.layers\.7\.units: no layer 7 \(the model has 3"),
    ("--set bad layer value", lambda t: spec(t, TINY, "--set", "model.layers.1.units=-3"),
     r"layer 1 \(dense\): units must be a positive integer, got -3"),
    ("show a layer that cannot be built", lambda t: ["show", "quick-fc", "--set",
                                                    "model.layers.1.units=-5"],
     r"layer 1 \(dense\): units must be a positive integer, got -5$"),
    ("bad --val", lambda t: spec(t, TINY, "--val", "half"),
     r"bad validation split 'half' \(data\.val; --val sets it\) for 40 training images: use "
     r"first:N \(0<N<40\), last:F"),
    ("--val out of range", lambda t: spec(t, TINY, "--val", "first:40"),
     r"bad validation split 'first:40'"),
    ("--val not finite", lambda t: spec(t, TINY, "--val", "first:nan"),
     r"bad validation split 'first:nan'"),
    ("early stopping without validation", lambda t: spec(
        t, TINY, "--val", "none", "--set", "train.patience=2"),
     r"early stopping \(train\.patience\) needs a validation split"),
    ("warm-up as long as training", lambda t: spec(t, TINY, "--set", "train.warmup_epochs=1"),
     r"train\.warmup_epochs \(1\) must be below train\.epochs \(1\): the learning rate would "
     r"never reach its peak$"),
    ("unknown dataset", lambda t: spec(t, TINY, "--set", "data.dataset=cifar"),
     r"data\.dataset must be one of fashion-mnist, any, got 'cifar'"),
    ("a run folder given as a spec", lambda t: ["train", str(fake_run(t, "finished"))],
     r"is a run folder: train its config as .*/config\.toml, or continue it with --resume "),
    ("--force without --resume", lambda t: spec(t, TINY, "--force"),
     r"--force goes with --resume \(a new run has nothing to force\)$"),
    ("resume with a recipe", lambda t: ["train", "quick-fc", "--resume", str(t)],
     r"--resume continues a run with its saved config: drop RECIPE\|FILE"),
    # -- resources ----------------------------------------------------------------------------
    ("output folder not writable", lambda t: spec(t, TINY, "--out", str(_file(t) / "runs")),
     r"output folder .*/a-file/runs is not writable \(Not a directory\)"),
    ("not enough memory", lambda t: _patched(t, "available_memory", lambda device: 2**20),
     r"not enough memory: this model with batch_size 32 needs about \d+ MiB, 1 MiB available "
     r"\(lower train\.batch_size"),
    ("not enough disk", lambda t: _patched(t, "free_disk", lambda folder: 2**20),
     r"not enough disk space in .*: the run needs about \d+ MiB for its checkpoints, 1 MiB free"),
    # -- run folders --------------------------------------------------------------------------
    ("run folder missing", lambda t: ["evaluate", str(t / "nope")],
     r"run folder .*/nope does not exist"),
    ("not a run folder", lambda t: ["evaluate", str(t)],
     r"is not a fashionlab run folder \(no run\.json\)"),
    ("unreadable run.json", lambda t: ["evaluate", str(_bad_json(t))], r"run\.json is unreadable"),
    ("interrupted run", lambda t: ["evaluate", str(fake_run(t, "interrupted", "interrupted by "
                                                           "SIGINT during epoch 2"))],
     r"is not finished \(state interrupted: interrupted by SIGINT during epoch 2\)$"),
    ("run still running", lambda t: ["evaluate", str(fake_run(t, "running"))],
     r"is not finished \(state running\)$"),
    ("diverged run", lambda t: ["evaluate", str(fake_run(t, "diverged", "training diverged"))],
     r"is not finished \(state diverged: training diverged\)$"),
    ("compare an unfinished run", lambda t: ["compare", str(fake_run(t, "failed", "boom"))],
     r"is not finished \(state failed: boom\)$"),
    ("a run compared with itself", lambda t: ["compare", *[str(fake_run(t, "finished"))] * 2],
     r"/runs/.*-fake is listed twice$"),
    ("report on an unfinished run", lambda t: ["report", str(fake_run(t, "running")),
                                              "-o", str(t / "r.html")],
     r"is not finished \(state running\)$"),
    ("unreadable history.csv", lambda t: ["compare", str(_bad_history(t))],
     r"/history\.csv is unreadable \(could not convert string to float: 'x'\)$"),
    ("a baseline where a network is needed", lambda t: ["evaluate", str(_baseline(t))],
     r"is a scikit-learn baseline: it has test predictions for compare and report, but no "
     r"network to evaluate, predict or export$"),
    ("a seed group where a run is needed", lambda t: ["compare", str(_group(t))],
     r"/group is a group of seed runs, not one run: name its runs, .*/group/\*/$"),
    ("corrupt weights file", lambda t: ["evaluate", str(fake_run(t, "finished", model=b"junk"))],
     r"model\.safetensors: not a readable safetensors file"),
    ("resume a missing run", lambda t: ["train", "--resume", str(t / "nope")],
     r"run folder .*/nope does not exist"),
    # -- files to write -----------------------------------------------------------------------
    ("export to a folder", lambda t: ["export", str(fake_run(t, "finished")), "-o", str(t)],
     r"error: .* is a folder: name the file to write$"),
    ("export over a run's own file", lambda t: _into_run(t, "export", "model.safetensors"),
     r"/model\.safetensors is a file of the run in .*: write somewhere else$"),
    ("report over a run's own file", lambda t: _into_run(t, "report", "run.json"),
     r"/run\.json is a file of the run in .*: write somewhere else$"),
    ("reproduce's table into a folder", lambda t: ["reproduce", "weil", "-o", str(t)],
     r"error: .* is a folder: name the file to write$"),
    ("curves in another format", lambda t: ["compare", str(fake_run(t, "finished")), "--plot",
                                            str(t / "curves.csv")],
     r"curves\.csv: write it as \.png or \.svg$"),
    ("a sweep's best config over a run's own file", lambda t: [
        "sweep", "show", "--storage", str(t / "s.journal"), "--write-recipe",
        str(fake_run(t, "finished") / "config.toml")],
     r"/config\.toml is a file of the run in .*: write somewhere else$"),
]


def _baseline(tmp: Path) -> Path:
    run = fake_run(tmp, "finished")
    runs.update_info(run, engine="scikit-learn")
    return run


def _group(tmp: Path) -> Path:
    (tmp / "group").mkdir()
    (tmp / "group" / "group.json").write_text("{}")
    return tmp / "group"


def _binary_spec(tmp: Path) -> list[str]:
    (tmp / "spec.toml").write_bytes(b"\xff\xfe[\x00m\x00")
    return ["train", str(tmp / "spec.toml")]


def _bad_history(tmp: Path) -> Path:
    run = fake_run(tmp, "finished")
    (run / "history.csv").write_text("epoch,loss\n1,x\n")
    return run


def _into_run(tmp: Path, command: str, name: str) -> list[str]:
    run = fake_run(tmp, "finished")
    return [command, str(run), "-o", str(run / name)]


def _a_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("not data")
    return tmp / "notes.txt"


def _csv_as_fashion(tmp: Path) -> list[str]:
    csv_set(tmp, CSV_HEADER + "\n" + "1," + "200," * 783 + "200\n")
    return info(tmp / "csv", "fashion-mnist")


def _renamed_csv(tmp: Path) -> list[str]:
    args = csv_set(tmp, CSV_HEADER + "\n")
    for name in ("train", "test"):
        (tmp / "csv" / f"fashion-mnist_{name}.csv").rename(tmp / "csv" / f"mnist_{name}.csv")
    return args


def _empty_test(folder: Path) -> list[str]:
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(0, np.uint8)))
    return info(folder)


def _unlink(path: Path) -> Path:
    path.unlink()
    return path.parent


def _cut_gz(folder: Path) -> list[str]:
    path = folder / (IMAGES + ".gz")
    path.write_bytes(path.read_bytes()[:200])
    return info(folder)


def _file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("not a folder")
    return tmp / "a-file"


def _bad_json(tmp: Path) -> Path:
    (tmp / "run.json").write_text("{not json")
    return tmp


def _patched(tmp: Path, name: str, fake) -> tuple[list[str], dict]:
    """A resources probe replaced by `fake`: a small machine, without needing one."""
    return spec(tmp, TINY, "--out", str(tmp / "runs")), {name: fake}


@pytest.mark.parametrize("make_argv, pattern", [pytest.param(m, p, id=i) for i, m, p in CASES])
def test_bad_input(make_argv, pattern, tmp_path, capsys, monkeypatch):
    argv = make_argv(tmp_path)
    if isinstance(argv, tuple):
        argv, fakes = argv
        for name, fake in fakes.items():
            monkeypatch.setattr(resources, name, fake)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors exit from parse_args
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    made = [p.parent.name for p in tmp_path.glob("runs/*/run.json")]
    assert all("fake" in name for name in made), made  # a refused run leaves no folder


def test_table_matches_docs():
    """docs/errors.md lists exactly these cases, so the table and the tests cannot drift."""
    doc = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    rows = [line.split("|")[1].strip() for line in doc.splitlines() if line.startswith("| ")]
    tested_here = [r for r in rows[1:] if "tests/test_" not in r]
    assert tested_here == [i for i, _, _ in CASES]


def test_a_write_the_system_refuses_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    """A read-only disk, a permission or a full disk where a command writes: the machine's
    reason and the file in one line, exit 2, not an internal error."""
    from fashionlab import plots

    def refuse(fig, stem, formats=("png", "svg")):
        raise OSError(30, "Read-only file system", str(stem) + ".png")

    monkeypatch.setattr(plots, "save", refuse)
    assert main(["plot", str(tiny_run), "--out", str(tmp_path / "figures")]) == 2
    err = capsys.readouterr().err
    assert err == f"fashionlab: error: {tmp_path / 'figures'}/curves.png: Read-only file system\n"


def test_interrupt_outside_training_says_so(capsys, monkeypatch):
    from fashionlab.cli import recipes

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "run", interrupted)
    assert main(["recipes"]) == 130
    assert capsys.readouterr().err == "fashionlab: interrupted\n"


def test_export_and_report_make_their_folder_and_leave_no_partial_file(tiny_run, tmp_path,
                                                                      monkeypatch):
    from fashionlab import export

    out = tmp_path / "new" / "deeper" / "model.onnx"
    assert main(["export", str(tiny_run), "-o", str(out)]) == 0 and out.stat().st_size > 0
    report = tmp_path / "other" / "r.html"
    assert main(["report", str(tiny_run), "-o", str(report)]) == 0 and report.is_file()

    def fails(model, path, meta):
        path.with_name(path.name + ".partial").write_bytes(b"half")
        raise OSError(28, "No space left on device", str(path) + ".partial")

    monkeypatch.setattr(export, "to_onnx", fails)
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "m.onnx")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "other"]
