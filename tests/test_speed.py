"""The speed paths choose by measured rules and never change results: precision, layout,
threads; the bench scripts at least parse their arguments. No timings here (see bench/)."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashionlab import config as cfg
from fashionlab import hardware, models
from fashionlab.inference import logits

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def flags(monkeypatch):
    def set_flags(*names: str) -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(("avx2", *names)))

    return set_flags


@pytest.mark.parametrize("cpu, expected", [
    ((), "fp32"), (("avx512f",), "fp32"), (("avx512f", "avx512_bf16"), "bf16"),
    (("amx_bf16", "amx_tile"), "bf16")])
def test_auto_precision_is_bf16_only_with_native_bf16(flags, cpu, expected):
    flags(*cpu)
    cpu_dev = torch.device("cpu")
    assert hardware.resolve_precision("auto", cpu_dev, conv_flops=2_000_000) == expected
    assert hardware.resolve_precision("auto", cpu_dev, conv_flops=0) == "fp32"


@pytest.mark.parametrize("recipe, expected", [
    ("duan-lenet5", "fp32"), ("weil-fc", "fp32"), ("quick-cnn", "bf16"), ("weil-cnn", "bf16"),
    ("fast", "bf16")])
def test_auto_precision_leaves_small_conv_nets_in_fp32(flags, recipe, expected):
    """LeNet-5's convolutions (0.81 MFLOPs per image) trained faster in fp32 on an AMX Xeon,
    quick-cnn's (1.31) faster in bf16 (docs/speed.md): the line falls between them."""
    flags("amx_bf16", "amx_tile")
    net = models.build(cfg.resolve(recipe)["model"]["layers"])
    assert hardware.resolve_precision("auto", torch.device("cpu"), net.conv_flops) == expected


def test_explicit_precision_is_kept(flags):
    flags()
    assert hardware.resolve_precision("bf16", torch.device("cpu"), conv_flops=0) == "bf16"
    flags("amx_bf16")
    assert hardware.resolve_precision("fp32", torch.device("cpu"), conv_flops=10**9) == "fp32"


def test_cpu_description_names_the_deciding_flags(flags):
    flags("avx512f", "amx_bf16")
    text = hardware.cpu_description()
    assert "avx2 avx512f amx_bf16" in text and "cores" in text and "thread" in text


def test_channels_last_rule():
    assert hardware.use_channels_last("auto", True) and hardware.use_channels_last("on", True)
    assert not hardware.use_channels_last("off", True)
    assert not hardware.use_channels_last("auto", False)
    assert not hardware.use_channels_last("on", False)


def _thread_count(monkeypatch, load: float, others: int | None, cores: int) -> int:
    monkeypatch.setattr(hardware.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(hardware, "others_running", lambda: others)
    monkeypatch.setattr(hardware, "usable_cores", lambda: cores)
    hardware.thread_count.cache_clear()
    try:
        return hardware.thread_count()
    finally:
        hardware.thread_count.cache_clear()


@pytest.mark.parametrize("others, cores, expected", [(0, 2, 2), (1, 2, 1), (2, 2, 1), (15, 2, 1),
                                                     (0, 1, 1), (3, 8, 5), (0, 8, 8)])
def test_threads_use_the_cores_no_one_else_is_using(monkeypatch, others, cores, expected):
    # A load average of 2.0 is what a 2-core job leaves for a minute after it ends: it must
    # not matter when the kernel says what is running now.
    assert _thread_count(monkeypatch, 2.0, others, cores) == expected


@pytest.mark.parametrize("load, cores, expected", [(0.3, 2, 2), (1.9, 2, 2), (2.0, 2, 1),
                                                   (16.0, 2, 1), (5.0, 1, 1), (3.0, 8, 8)])
def test_threads_fall_back_to_the_load_average_without_proc(monkeypatch, load, cores, expected):
    assert _thread_count(monkeypatch, load, None, cores) == expected


def test_a_run_with_fewer_threads_than_cores_says_so(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert hardware.fewer_threads_note(1, 2) == (
        "using 1 of 2 cores: other processes were running when this run started "
        "(set OMP_NUM_THREADS=2 to use them all)")
    assert hardware.fewer_threads_note(2, 2) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's own choice needs no note
    assert hardware.fewer_threads_note(1, 2) is None


def test_others_running_reads_the_kernels_count(monkeypatch, tmp_path):
    real = hardware.others_running(looks=1)
    assert real is None or real >= 0  # None only where /proc/loadavg is missing
    if Path("/proc/loadavg").exists():
        assert isinstance(real, int)
    looks = iter(["2.00 2.00 1.50 4/300 99\n", "2.00 2.00 1.50 2/300 99\n",
                  "2.00 2.00 1.50 3/300 99\n"])
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/loadavg":
            (tmp_path / "loadavg").write_text(next(looks))
            return real_open(tmp_path / "loadavg", *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert hardware.others_running(looks=3, gap=0) == 1  # the fewest, less this process


@pytest.mark.parametrize("recipe", ["fast", "best", "duan-lenet5"])
def test_channels_last_predicts_the_same(recipe):
    config = cfg.resolve(recipe, overrides=["train.tta_flip=true"])
    torch.manual_seed(0)
    net = models.build(config["model"]["layers"])
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    # a few training-mode batches so BN's running statistics are not the identity
    net.module.train()
    for _ in range(3):
        net.module(torch.randn(64, 1, 28, 28))
    plain = logits(net.module, images, config, torch.device("cpu"), "fp32", False)
    last = logits(net.module.to(memory_format=torch.channels_last), images, config,
                  torch.device("cpu"), "fp32", True)
    assert plain.shape == (64, 10)
    torch.testing.assert_close(last, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("recipe", ["fast", "best"])
def test_frontier_recipes_resolve(recipe):
    config = cfg.resolve(recipe)
    net = models.build(config["model"]["layers"])
    assert net.is_conv and net.flops > 1e6 and net.params > 10_000


@pytest.mark.parametrize("spec", sorted((BENCH / "frontier").glob("*.toml")), ids=lambda p: p.stem)
def test_frontier_search_specs_build(spec):
    """docs/speed.md quotes each search spec as a command; a spec that no longer builds
    would make those commands fail."""
    config = cfg.resolve(str(spec))
    net = models.build(config["model"]["layers"])
    assert config["data"]["val"] != "none"  # search runs select on validation images
    assert net.is_conv and net.params > 10_000


@pytest.mark.parametrize("recipe, precision, spec, overrides", [
    ("fast", "fp32", "c13", []), ("fast", "bf16", "c16", []),
    ("best", "bf16", "best-wide", ["augment.erase=0.25"])])
def test_frontier_recipe_is_the_validated_spec_fitted_on_all_images(recipe, precision, spec,
                                                                   overrides):
    """A frontier recipe's settings must be those chosen on validation (bench/frontier/c13.toml
    for fast, c16 where it trains in bf16; best-wide.toml with erasing for best in bf16), or
    its claim to validation-only model selection is void; only the split and the epochs (same
    optimizer steps, the test below) may differ."""
    ran = cfg.for_precision(cfg.resolve(recipe), precision)
    validated = cfg.for_precision(
        cfg.resolve(str(BENCH / "frontier" / f"{spec}.toml"), overrides=overrides), "fp32")
    for config in (ran, validated):
        del config["recipe"], config["model"]["name"]
        del config["data"]["val"], config["train"]["epochs"]
    assert ran == validated


@pytest.mark.parametrize("recipe, precision, validated_epochs, slack", [
    ("fast", "fp32", 12, 1), ("fast", "bf16", 18, 469), ("best", "fp32", 30, 469),
    ("best", "bf16", 39, 469)])
def test_frontier_final_fit_keeps_the_validated_schedule(recipe, precision, validated_epochs,
                                                         slack):
    """fast and best were chosen holding out 5000 images (bench/frontier/c13.toml's 12 epochs,
    c16's 18; best's 30, 39 where it trains in bf16), then fit all 60000: for the same
    one-cycle schedule their total optimizer steps must match the validated run's, fast's fp32
    one to the step, the others within one epoch."""
    import math

    config = cfg.for_precision(cfg.resolve(recipe), precision)
    batch = config["train"]["batch_size"]
    steps = config["train"]["epochs"] * math.ceil(60_000 / batch)
    validated = validated_epochs * math.ceil(55_000 / batch)
    assert config["data"]["val"] == "none" and abs(steps - validated) <= slack


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["vs_keras", "throughput", "profile_step", "frontier_plot", "ab",
                                  "convs", "loop_overhead", "keras_order", "tta_views", "threads",
                                  "ema", "ensemble"])
def test_bench_scripts_show_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        _load(name).main(["--help"])
    assert done.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_throughput_counts_every_test_time_view(tmp_path, monkeypatch):
    """fast scores ten views of each image, so its inference TFLOP/s is ten forward passes
    per image; weil-fc scores one."""
    throughput = _load("throughput")
    monkeypatch.setattr(throughput, "matmul_peak", lambda dtype: 1.0)
    out = tmp_path / "t.md"
    throughput.main(["weil-fc", "fast", "--seconds", "0.05", "--out", str(out)])
    rows = {cells[1]: cells for line in out.read_text().splitlines()
            if line.startswith("| weil-fc") or line.startswith("| fast")
            for cells in [[c.strip() for c in line.split("|")]]}
    for name, n in (("weil-fc", 1), ("fast", 10)):
        mflops, views, rate, tflops = (float(rows[name][2]), int(rows[name][9]),
                                       float(rows[name][10].replace(",", "")),
                                       float(rows[name][11]))
        assert views == n
        # the table rounds MFLOPs to 2 decimals, img/s to 1 and TFLOP/s to 4
        assert tflops == pytest.approx(rate * n * mflops / 1e6,
                                       rel=0.005 / mflops + 0.5 / rate + 1e-6, abs=5.1e-5)


def _preload_ab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BENCH / "preload_ab.sh"), *args], capture_output=True,
                          text=True)


def test_preload_ab_names_a_missing_library_before_timing_anything():
    done = _preload_ab("1", "/no/such/libfoo.so", "--", "weil-fc")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "preload_ab.sh: no such library: /no/such/libfoo.so\n"


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["x"], 2), (["1"], 2)])
def test_preload_ab_usage(args, code):
    done = _preload_ab(*args)
    assert done.returncode == code
    assert (done.stdout if code == 0 else done.stderr).startswith("usage: bench/preload_ab.sh")


def _outputs_and_grads(*modules: torch.nn.Module) -> list:
    """Each module's output on one float64 batch, and its parameters' gradients of the output's
    sum of squares: what an A/B in bench/ab.py must leave unchanged."""
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    results = []
    for m in modules:
        m.zero_grad(set_to_none=True)
        out = m(x)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in m.parameters()]))
    return results


def test_ab_fused_relu_pool_computes_what_the_separate_layers_do():
    """bench/ab.py pool times a fused ReLU + average pool against the net's own layers: the
    two must give the same outputs and gradients, or the timing compares different work."""
    ab = _load("ab")
    torch.manual_seed(0)
    net = models.build(cfg.resolve("weil-cnn")["model"]["layers"])
    module = net.module.double()
    fused = ab._fuse_relu_pool(module)
    assert sum(isinstance(m, ab._FusedReluAvgPool) for m in fused) == 2
    (a, ga), (b, gb) = _outputs_and_grads(module, fused)
    assert torch.equal(a, b)
    assert all(torch.allclose(u, v, rtol=0, atol=1e-12) for u, v in zip(ga, gb, strict=True))


def test_ab_im2col_first_conv_computes_what_onednn_does():
    """bench/ab.py im2col times the first convolution as a matmul of patches: it must give
    nn.Conv2d's outputs and gradients, channels-last, or the timing compares different work."""
    ab = _load("ab")
    torch.manual_seed(0)
    plain = models.build(cfg.resolve("weil-cnn")["model"]["layers"]).module.double()
    other = copy.deepcopy(plain)
    ab._im2col_first_conv(other)
    assert sum(type(m) is ab._Im2colConv2d for m in other.modules()) == 1
    (a, ga), (b, gb) = _outputs_and_grads(plain, other)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    assert all(torch.allclose(u, v, rtol=0, atol=1e-9) for u, v in zip(ga, gb, strict=True))
    first = next(m for m in other.modules() if type(m) is ab._Im2colConv2d)
    assert first(torch.randn(2, 1, 28, 28, dtype=torch.float64)).is_contiguous(
        memory_format=torch.channels_last)


def test_ab_order_undoes_the_pool_first_order_and_computes_the_same():
    """bench/ab.py order times LeNet-5 with each tanh back before its max pool: both orders
    must be present as claimed and give the same outputs and gradients."""
    ab = _load("ab")
    torch.manual_seed(0)
    built = models.build(cfg.resolve("duan-lenet5")["model"]["layers"]).module.double()
    spec_order = ab._activation_before_pool(copy.deepcopy(built))

    def kinds(module):
        return [type(m).__name__ for block in module for m in block][:6]

    assert kinds(built) == ["Conv2d", "MaxPool2d", "Tanh", "Conv2d", "MaxPool2d", "Tanh"]
    assert kinds(spec_order) == ["Conv2d", "Tanh", "MaxPool2d", "Conv2d", "Tanh", "MaxPool2d"]
    (a, ga), (b, gb) = _outputs_and_grads(built, spec_order)
    assert torch.equal(a, b)
    assert all(torch.equal(u, v) for u, v in zip(ga, gb, strict=True))


def test_profile_step_fits_fixed_and_per_image_time():
    line = _load("profile_step").fixed_and_per_image(
        {"cl b8/2t": 3.0, "cl b16/2t": 3.5, "cl b32/2t": 4.5, "cl b8/1t": 2.0, "cl b16/1t": 3.0},
        {"cl b8": 8, "cl b16": 16, "cl b32": 32})
    assert "cl/2t: 2.50 ms fixed + 6.25 ms per 100 images" in line
    assert "cl/1t: 1.00 ms fixed + 12.50 ms per 100 images" in line


def test_vs_keras_rejects_an_unknown_model():
    with pytest.raises(SystemExit) as done:
        _load("vs_keras").main(["--models", "000-fc,nope"])
    assert done.value.code == 2


@pytest.mark.parametrize("args", [["--seeds", "1,x"], ["--cnn002-images", "500"],
                                  ["--set", "train.optimizer=adamw"],
                                  ["--set", "train.schedule=cosine"], ["--set", "train.lr=abc"]])
def test_vs_keras_rejects_bad_arguments_before_training(args, capsys):
    with pytest.raises(SystemExit) as done:
        _load("vs_keras").main(args)
    assert done.value.code == 2
    assert "error" in capsys.readouterr().err


def test_vs_keras_gives_accuracy_as_mean_and_sample_std_over_seeds():
    percent = _load("vs_keras").percent
    assert percent([0.9]) == "90.00"
    assert percent([0.90, 0.92, 0.91]) == "91.00 ± 1.00"


def test_keras_side_translates_every_layer_type():
    """Without TensorFlow: a stand-in `keras` records which layer each table becomes."""
    side = _load("keras_side")

    class Recorder:
        def __getattr__(self, name):
            return lambda *args, **kwargs: (name, args, kwargs)

    class FakeKeras:
        layers = regularizers = Recorder()

    net_types = set(models.LAYER_KEYS)
    specs = [{"type": t, "units": 4, "filters": 4, "kernel": 3, "rate": 0.1}
             for t in sorted(net_types)]
    made = {s["type"]: side.keras_layer(s, FakeKeras)[0] for s in specs}
    assert made["conv2d"] == "Conv2D" and made["maxpool"] == "MaxPooling2D"
    assert made["batchnorm"] == "BatchNormalization" and made["leaky_relu"] == "LeakyReLU"
    assert made["tanh"] == "Activation" and made["dense"] == "Dense"
    assert sys.modules.get("tensorflow") is None


def test_keep_freed_memory_yields_to_the_users_setting(monkeypatch):
    hardware.keep_freed_memory.cache_clear()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    try:
        assert hardware.keep_freed_memory() is False
    finally:
        hardware.keep_freed_memory.cache_clear()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert hardware.keep_freed_memory() is (hardware.platform.system() == "Linux")


def test_test_time_views_average_shifted_and_mirrored_logits():
    from fashionlab import augment, inference

    config = cfg.resolve("quick-cnn", overrides=["train.tta_flip=true", "train.tta_shift=2"])
    torch.manual_seed(0)
    module = models.build(config["model"]["layers"]).module.eval()
    x = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    views = inference.views(x, config)
    assert len(views) == 10 and torch.equal(views[1], augment.shift(x, 2, 0))
    assert torch.equal(views[5], x.flip(-1)) and torch.equal(views[9], views[4].flip(-1))

    def plain(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(inference.as_input(v, config, False))

    cpu = torch.device("cpu")
    moves = [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)]
    expected = sum(plain(f(augment.shift(x, dx, dy))) for dx, dy in moves
                   for f in (lambda v: v, lambda v: v.flip(-1))) / 10
    torch.testing.assert_close(logits(module, x, config, cpu, "fp32"), expected)
    config["train"]["tta_shift"] = 0  # mirror only: the same numbers as before views existed
    assert torch.equal(logits(module, x, config, cpu, "fp32"),
                       (plain(x) + plain(x.flip(-1))) / 2)


def test_tta_views_flip_view_scores_what_tta_flip_scores(tiny_run):
    """The "flip" column must be the recipe's own test-time flip, or the table compares the
    extra views against something else."""
    from fashionlab import inference

    trained = inference.load_trained(tiny_run, "fp32")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (40,), generator=gen)
    trained.config["train"]["tta_flip"] = True
    expected = {"flip": (trained.logits(x).argmax(1) == y).float().mean().item() * 100}
    trained.config["train"]["tta_flip"] = False
    expected["alone"] = (trained.logits(x).argmax(1) == y).float().mean().item() * 100
    got = _load("tta_views").view_accuracies(trained, x, y)
    assert list(got) == ["alone", "flip", "flip+shift4", "flip+shift8"]
    assert got["alone"] == pytest.approx(expected["alone"])
    assert got["flip"] == pytest.approx(expected["flip"])


def test_tta_views_ten_view_column_scores_what_tta_shift_1_scores(tiny_run):
    """The "flip+shift4" column is reported as the recipe's ten views (fast's tta_shift = 1);
    the script enumerates its views itself, so it must agree with inference.views."""
    from fashionlab import inference

    trained = inference.load_trained(tiny_run, "fp32")
    x = torch.randint(0, 256, (200, 28, 28), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(1))
    trained.config["train"].update(tta_flip=True, tta_shift=1)
    y = trained.logits(x).argmax(1)  # labels the ten views get all right, and others may not
    tta_views = _load("tta_views")
    assert tta_views.view_accuracies(trained, x, y)["flip+shift4"] == 100.0


def test_tta_views_pairs_arms_by_seed_and_split():
    """The arm differences must pair runs that share a seed and held-out images, and skip the
    rest, or a seed's luck would be read as a setting's worth."""
    views = _load("tta_views").VIEWS

    def acc(value):
        return dict.fromkeys(views, value)

    rows = [("a", (1, "first:5000"), acc(94.0)), ("a", (2, "first:5000"), acc(94.4)),
            ("a", (1, "last:5000"), acc(93.0)),
            ("b", (2, "first:5000"), acc(94.2)), ("b", (1, "last:5000"), acc(93.5)),
            ("b", (3, "first:5000"), acc(99.0))]  # no partner in arm a
    lines = _load("tta_views").paired_summary(rows)
    assert lines[2].startswith("| a | 3 | 93.80 ± 0.72 |")
    assert lines[3].startswith("| b | 3 | 95.57 ± 2.99 |")
    assert lines[-1].startswith("| b | 2 | +0.15 (1/2 above 0) |")


def test_ensemble_averages_log_probabilities_of_the_first_n_runs():
    """Two members each wrong on a different image, and confident where right, must together
    get both: the ensemble's column must average, not take the first member or vote."""
    y = torch.tensor([0, 1, 2])
    a = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]))
    b = torch.log(torch.tensor([[0.4, 0.5, 0.1], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8]]))
    assert _load("ensemble").ensemble_accuracies([a, b], y) == pytest.approx([200 / 3, 100.0])


def test_ema_bench_scores_the_loops_own_average_and_untouched_live_weights(tiny_data, tiny_config,
                                                                          tmp_path):
    """bench/ema.py's extra averages must not change training: its live weights score what a
    run without EMA scores, and its first decay what the loop's own train.ema scores."""
    from fashionlab import runs
    from fashionlab.train import train

    run, scores = _load("ema").validation_scores(tiny_config, 1, [0.9, 0.5], str(tmp_path / "e"),
                                                 data_dir=str(tiny_data))
    plain = train(tiny_config, data_dir=str(tiny_data), out=str(tmp_path / "p"), quiet=True)
    assert list(scores) == ["live weights", "ema 0.9", "ema 0.5"]
    val = {d: runs.load_run(d).metrics["val_accuracy"] * 100 for d in (run, plain)}
    assert scores["ema 0.9"] == pytest.approx(val[run])
    assert scores["live weights"] == pytest.approx(val[plain])
    assert scores["ema 0.5"] != scores["ema 0.9"]


def test_ab_bf16_convs_only_rounds_the_convolutions_and_nothing_else():
    """bench/ab.py convbf16 times LeNet-5 with bf16 in its convolutions only: those two must
    compute in bf16 (off fp32 by bf16's rounding) and hand back fp32, while the one that covers
    its whole input stays the fp32 matmul training makes of it."""
    ab = _load("ab")
    torch.manual_seed(0)
    plain = models.build(cfg.resolve("duan-lenet5")["model"]["layers"]).module
    other = ab._bf16_convs(copy.deepcopy(plain))
    convs_plain = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    convs_other = [m for m in other.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs_other) == 3 and all(type(m) is not torch.nn.Conv2d for m in convs_other)
    for p, o, shape in zip(convs_plain, convs_other, [(2, 1, 28, 28), (2, 6, 14, 14),
                                                      (2, 16, 5, 5)], strict=True):
        x = torch.randn(shape)
        a, b = p(x), o(x)
        assert b.dtype == torch.float32
        error = (a - b).abs().max().item()
        if shape[2:] == p.kernel_size:
            assert error < 1e-5
        else:
            assert 1e-4 < error < 0.1 * a.abs().max().item()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.equal(b, p(x).float())


def test_ab_onednn_bf16_math_holds_only_during_its_step():
    """bench/ab.py convbf16 runs one variant with oneDNN's bf16 math for fp32 convolutions:
    the flag must be on while that step runs and back as it was after, even when the step
    fails, or every variant timed after it would run with it."""
    ab = _load("ab")
    flags = torch.backends.mkldnn.conv
    before, seen = flags.fp32_precision, []
    ab._onednn_bf16_math(lambda: seen.append(flags.fp32_precision))()
    assert seen == ["bf16"] and flags.fp32_precision == before

    def fails() -> None:
        raise RuntimeError("step")

    with pytest.raises(RuntimeError):
        ab._onednn_bf16_math(fails)()
    assert flags.fp32_precision == before


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_ab_traced_forward_computes_what_the_layers_do():
    """bench/ab.py trace times a TorchScript trace of the forward pass against the layers run
    one by one; it traces on its first call and must give the same outputs and gradients,
    or the A/B would time a different net."""
    ab = _load("ab")
    torch.manual_seed(0)
    plain = models.build(cfg.resolve("duan-lenet5")["model"]["layers"]).module.double()
    traced = ab._Traced(copy.deepcopy(plain))
    (out_a, grads_a), (out_b, grads_b) = _outputs_and_grads(plain, traced)
    assert traced.traced is not None
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def _steps(script: str, tmp_path: Path, budget: int, steps: str) -> subprocess.CompletedProcess:
    """Run bench/steps.sh's step function under a budget, as the check scripts do."""
    body = (f'BUDGET={budget}; STEPS=" {steps} "; LOGS={tmp_path}; '
            f'source {BENCH / "steps.sh"}; {script}')
    return subprocess.run(["bash", "-c", body], capture_output=True, text=True, timeout=60)


def test_a_check_step_runs_when_named_and_logs_its_output(tmp_path):
    done = _steps("step hello 1 echo hi; step other 1 echo no", tmp_path, 60, "hello")
    lines = done.stdout.splitlines()  # "in 1 s" where a second turned over during the step
    assert lines[0].startswith("== hello: echo hi (")
    assert lines[1] in ("== hello: rc 0 in 0 s", "== hello: rc 0 in 1 s") and lines[2:] == ["hi"]
    assert (tmp_path / "hello.log").read_text() == "hi\n"
    assert not (tmp_path / "other.log").exists()


def test_a_check_step_that_would_not_fit_the_budget_is_skipped(tmp_path):
    done = _steps("step big 600 echo ran; step failing 1 false", tmp_path, 60, "all")
    lines = done.stdout.splitlines()
    assert lines[0].startswith("== big: skipped (") and lines[0].endswith("s left, needs 600)")
    assert "ran" not in done.stdout
    assert any(line.startswith("== failing: rc 1 in ") for line in lines)


def test_cpu_check_names_the_cpu_and_skips_what_its_budget_cannot_hold(tmp_path):
    """bench/cpu_check.sh with a short budget: the CPU line and flags come out, a `fast` run
    that needs more than is left is skipped, not started."""
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable, "STEPS": "info fast-s1",
           "BUDGET": "120"}
    done = subprocess.run(["bash", str(BENCH / "cpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "== info: rc 0" in out and "Model name" in out
    assert "== fast-s1: skipped (" in out and "needs 660)" in out
    assert not list((tmp_path / "runs").iterdir())
