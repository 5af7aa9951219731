"""Property-based tests: whatever bytes or TOML a user feeds in, the outcome is a valid result
or the project's own one-line error, never a crash or a traceback.

Each test is bounded (max_examples) so the whole file runs in seconds in CI.
"""

from __future__ import annotations

import gzip
import math
import string
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import tomli_w
import torch
from conftest import idx_bytes, make_images
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fashionlab import config as cfg
from fashionlab import data, models
from fashionlab.errors import UserError

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

IMAGES = idx_bytes(make_images(2, 0)[0])
LABELS = idx_bytes(np.arange(12, dtype=np.uint8) % 10)
CSV = "label," + ",".join(f"pixel{i}" for i in range(1, 785)) + "\n" + "".join(
    f"{y}," + ",".join(str(v) for v in x.ravel()) + "\n"
    for x, y in zip(*make_images(2, 1), strict=True))


def outcome(call):
    """Run `call`; a UserError must be one non-empty line. Return the result or None."""
    try:
        return call()
    except UserError as e:
        message = str(e)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return None


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """A valid file after a few byte flips, truncations, insertions and header edits."""
    raw = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.integers(0, max(0, len(raw) - 1)))
        edit = draw(st.sampled_from(["flip", "truncate", "insert", "header", "delete"]))
        if edit == "flip" and raw:
            raw[where] ^= draw(st.integers(1, 255))
        elif edit == "truncate":
            del raw[where:]
        elif edit == "insert":
            raw[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "header":
            raw[:16] = draw(st.binary(min_size=0, max_size=20))
        elif raw:
            del raw[where]
    if draw(st.booleans()):
        raw = bytearray(gzip.compress(bytes(raw)))
        if draw(st.booleans()):  # a damaged or cut download
            cut = draw(st.integers(0, len(raw)))
            raw = raw[:cut] + draw(st.binary(max_size=4))
    return bytes(raw)


def check_idx(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "file.gz"
        path.write_bytes(raw)
        for array in (outcome(lambda: data.parse_idx(raw)), outcome(lambda: data.read_idx(path))):
            if array is not None:
                assert array.dtype == np.uint8 and array.ndim in (1, 3)


@SETTINGS
@given(st.binary(max_size=64))
def test_idx_random_bytes(raw):
    check_idx(raw)


@SETTINGS
@given(st.one_of(mutated(IMAGES), mutated(LABELS)))
def test_idx_mutated_files(raw):
    check_idx(raw)


@SETTINGS
@given(st.sampled_from([1, 3]), st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3),
       st.binary(max_size=32))
@example(3, [2**31, 2**31, 4], b"")  # 2**64 elements: wraps to 0 in int64
def test_idx_forged_header(ndim, dims, body):
    """Huge dimensions (products far beyond int64) must not wrap around into a valid size."""
    header = bytes([0, 0, 8, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims[:ndim])
    array = outcome(lambda: data.parse_idx(header + body))
    if array is not None:
        assert array.shape == tuple(dims[:ndim]) and array.size == len(body)


def check_csv(text: str) -> None:
    result = outcome(lambda: data.parse_csv(text))
    if result is not None:
        images, labels = result
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        assert len(images) == len(labels) and (labels <= 9).all()


@SETTINGS
@given(st.text(max_size=100))
def test_csv_random_text(text):
    check_csv(text)
    check_csv("label" + text)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(CSV)), st.sampled_from(
    ["", ",", "\n", "-", "--1", "256", "-1", "10", "x", "1.5", "²", "9" * 25, ",,", " "])),
    max_size=4))
def test_csv_mutated(edits):
    text = CSV
    for at, insert in edits:
        text = text[:at] + insert + text[at + 1:]
    check_csv(text)


@SETTINGS
@given(mutated(CSV.encode()))
def test_csv_files(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fashion-mnist_train.csv"
        path.write_bytes(raw)
        result = outcome(lambda: data.read_csv(path))
    if result is not None:
        assert result[0].shape[1:] == (28, 28)


# Random TOML: real section, key and layer names mixed with junk, values of every TOML type.
NAMES = st.one_of(st.text(string.ascii_letters + "_", min_size=1, max_size=8),
                  st.text(min_size=1, max_size=6))
SCALARS = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.integers(-3, 300),
                    st.floats(allow_nan=True), st.floats(0, 1),
                    st.text(max_size=6), st.sampled_from(
                        ["relu", "same", "valid", "softmax", "adam", "sgd", "cosine", "any",
                         "first:10", "glorot_uniform", "unit_norm", "max_norm"]),
                    st.dates())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(NAMES, inner, max_size=3)), max_leaves=6)
LAYER_KEY_NAMES = sorted({k for keys in models.LAYER_KEYS.values() for k in keys})
LAYER = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(list(models.LAYER_KEYS)), VALUES)},
    optional={k: st.one_of(SCALARS, st.lists(st.integers(-1, 40), max_size=3))
              for k in LAYER_KEY_NAMES})
SECTIONS = {section: st.dictionaries(st.one_of(st.sampled_from(list(keys)), NAMES), VALUES,
                                     max_size=4) for section, keys in cfg.DEFAULTS.items()}
SECTIONS["model"] = st.fixed_dictionaries({}, optional={
    "name": VALUES, "layers": st.one_of(st.lists(LAYER, max_size=5), VALUES)})
SECTIONS["bf16"] = st.dictionaries(st.one_of(st.sampled_from(["train", "augment"]), NAMES),
                                   st.one_of(SECTIONS["train"], SECTIONS["augment"], VALUES),
                                   max_size=2)
DOCUMENTS = st.fixed_dictionaries({}, optional={**SECTIONS, "junk": VALUES})


def check_config(doc: dict, overrides: list[str] = ()) -> None:
    def build():
        config = cfg.resolve(cfg.parse_toml(tomli_w.dumps(doc), "spec.toml"),
                             overrides=overrides)
        return config, models.build(config["model"]["layers"])

    result = outcome(build)
    if result is not None:
        config, net = result
        for ran in (cfg.for_precision(config, "bf16"), cfg.for_precision(config, "fp32")):
            assert all(math.isfinite(v) for table in ran.values() for v in table.values()
                       if isinstance(v, float))
            assert cfg.resolve(ran) == ran  # what a run saves is a valid config
        assert net.rows[-1].output == (10,) and net.params > 0
        assert cfg.digest(cfg.resolve(cfg.parse_toml(cfg.dumps(config), "x"))) == cfg.digest(
            config)


@SETTINGS
@given(DOCUMENTS)
@example({"model": {"layers": [{"type": ["dense"]}]}})  # unhashable layer type
@example({"model": {"layers": [{"type": "dense\nunits"}]}})
@example({"model": {"layers": [{"type": "dense", "units": 2**40}]}})  # 8 TB: refuse, no malloc
@example({"model": {"layers": [{"type": "dense", "units": True}]}})
@example({"train": {"lr": float("inf")}, "augment": {"rotate": float("nan")}})
@example({"train": {"a\nb": 1}})  # a key with a newline must not break the one-line error
@example({"junk": {}})
def test_random_toml_documents(doc):
    check_config(doc)


@SETTINGS
@given(st.lists(st.one_of(st.text(max_size=20), st.builds(
    "{}={}".format, st.sampled_from(["train.lr", "train.epochs", "data.val", "model.layers.0.units",
                                     "model.layers.9.units", "model.layers.².units", "a.b.c",
                                     "train", "augment.flip"]),
    st.one_of(st.text(max_size=8), st.integers().map(str), st.floats().map(str))),
), max_size=3))
@example(["a\nb.c=1"])
@example(["model.layers.\u00b2.units=3"])
def test_random_overrides(items):
    doc = {"model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]}}
    check_config(doc, items)


@SETTINGS
@given(st.text(max_size=200))
def test_random_toml_text(text):
    outcome(lambda: cfg.resolve(cfg.parse_toml(text, "spec.toml")))


@SETTINGS
@given(st.text(max_size=20), st.integers(0, 100))
@example("first:nan", 10)
@example("first:inf", 10)
@example("last:-inf", 10)
def test_validation_split_specs(val, n):
    result = outcome(lambda: data.split(n, val))
    if result is not None:
        train_idx, val_idx = result
        assert sorted([*train_idx, *val_idx]) == list(range(n))


# Mostly-valid stacks: shape inference must agree with what torch actually computes.
KERNEL = st.one_of(st.integers(1, 6), st.lists(st.integers(1, 6), min_size=2, max_size=2))
PADDING = st.sampled_from(["valid", "same"])
STACK = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("conv2d"), "filters": st.integers(1, 4),
                           "kernel": KERNEL},
                          optional={"strides": st.integers(1, 3), "padding": PADDING}),
    st.fixed_dictionaries({"type": st.sampled_from(["maxpool", "avgpool"])},
                          optional={"pool": KERNEL, "strides": st.integers(0, 3),
                                    "padding": PADDING}),
    st.fixed_dictionaries({"type": st.sampled_from(["dense"]), "units": st.integers(1, 12)}),
    st.fixed_dictionaries({"type": st.sampled_from(
        ["flatten", "global_avgpool", "batchnorm", "relu", "tanh", "softmax"])}),
    st.fixed_dictionaries({"type": st.just("dropout"), "rate": st.floats(0, 0.99)}),
), min_size=1, max_size=6)


@SETTINGS
@given(STACK, st.booleans())
def test_layer_stacks_match_torch_shapes(layers, close):
    if close:
        layers = [*layers, {"type": "flatten"}, {"type": "dense", "units": 10}]
    net = outcome(lambda: models.build(layers))
    if net is None:
        return
    x = torch.zeros(2, *models.INPUT_SHAPE)
    assert tuple(net.module.eval()(x).shape) == (2, *net.rows[-1].output)
    # block by block in the spec's order, without moving activations past max pools
    with mock.patch.object(models, "_pool_before_activation", lambda module: None):
        net = models.build(layers)
    net.module.eval()
    for block, row in zip(net.module, net.rows, strict=True):
        x = block(x)
        assert tuple(x.shape) == (2, *row.output), (row.name, layers)
