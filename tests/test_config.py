"""Config layering: defaults < file < flags < --set, every key and type checked."""

from __future__ import annotations

import copy

import pytest

from fashionlab import config
from fashionlab.errors import SpecError


def test_layering_order(tmp_path, tiny_config):
    path = tmp_path / "spec.toml"
    path.write_text(config.dumps(tiny_config))
    resolved = config.resolve(str(path), flags={"train.epochs": 5, "train.lr": None},
                              overrides=["train.epochs=7", "model.layers.1.units=32"])
    assert resolved["train"]["epochs"] == 7  # --set wins over the flag
    assert resolved["train"]["batch_size"] == 32  # from the file
    assert resolved["train"]["optimizer"] == "adam"  # the default
    assert resolved["model"]["layers"][1]["units"] == 32


def test_recipe_by_name_and_name_default():
    resolved = config.resolve("quick-fc")
    assert resolved["model"]["name"] == "quick-fc" and resolved["train"]["epochs"] == 3
    assert "quick-fc" in config.recipe_names()


def test_spec_file_named_after_its_stem(tmp_path, tiny_config):
    unnamed = {**tiny_config, "model": {**tiny_config["model"], "name": ""}}
    (tmp_path / "c11.toml").write_text(config.dumps(unnamed))
    assert config.resolve(str(tmp_path / "c11.toml"))["model"]["name"] == "c11"
    named = {**tiny_config, "model": {**tiny_config["model"], "name": "mine"}}
    (tmp_path / "c12.toml").write_text(config.dumps(named))
    assert config.resolve(str(tmp_path / "c12.toml"))["model"]["name"] == "mine"


def test_dumps_roundtrip(tiny_config):
    resolved = config.resolve(tiny_config)
    again = config.resolve(config.parse_toml(config.dumps(resolved), "x"))
    assert again == resolved and config.digest(again) == config.digest(resolved)


def test_digest_ignores_recipe_header_but_not_training(tiny_config):
    a = config.resolve(tiny_config)
    b = config.resolve(tiny_config, overrides=["recipe.notes=changed"])
    c = config.resolve(tiny_config, overrides=["train.seed=9"])
    assert config.digest(a) == config.digest(b) != config.digest(c)


@pytest.mark.parametrize("override, message", [
    ("train.lrate=0.1", r"unknown key train.lrate \(did you mean 'lr'\?\)"),
    ("trian.lr=0.1", r"unknown section \[trian\] \(did you mean 'train'\?\)"),
    ("train.epochs=two", "train.epochs must be an integer, got 'two'"),
    ("train.epochs=0", "train.epochs must be positive"),
    ("train.batch_size=0", "train.batch_size must be positive"),
    ("train.lr=-1", "train.lr must not be negative"),
    ("train.optimizer=adagrad", "train.optimizer must be one of sgd, adam, adamw, rmsprop"),
    ("train.nesterov=1", "must be true/false"),
    ("augment.flip=1.5", r"augment.flip must lie in \[0, 1\], got 1.5"),
    ("train.ema=1", r"train.ema must lie in \[0, 1\), got 1.0"),
    ("augment.translate=14", "augment.translate must be under 14 pixels"),
    ("train.learning_rate=0.1", r"unknown key train.learning_rate \(did you mean 'train.lr'\?\)"),
    ("train.val=first:10", r"unknown key train.val \(it belongs in \[data\]: data.val\)"),
    ("train.tta_shift=-1", "train.tta_shift must not be negative"),
    ("train.tta_shift=14", "train.tta_shift must be under 14 pixels"),
    ("model.layers.9.units=3", "no layer 9"),
    ("lr", "expected KEY=VALUE"),
    ("a.b.c=1", "unknown key"),
    ("epochs=2", r"--set epochs: unknown key \(did you mean 'train.epochs'\?\)"),
])
def test_bad_overrides(tiny_config, override, message):
    with pytest.raises(SpecError, match=message):
        config.resolve(tiny_config, overrides=[override])


def test_python_flags_need_section_and_key(tiny_config):
    with pytest.raises(SpecError,
                       match=r"^flag 'epochs': name it section\.key \('train\.epochs'\)$"):
        config.resolve(tiny_config, flags={"epochs": 1})


def test_a_key_outside_its_section_is_pointed_home(tiny_config):
    with pytest.raises(SpecError, match=r"^spec: epochs belongs in a section: train.epochs = 3, "
                       r"or under \[train\]$"):
        config.merge(config.resolve(tiny_config), {"epochs": 3}, "spec")


def test_flip_and_erase_may_touch_every_image(tiny_config):
    resolved = config.resolve(tiny_config, overrides=["augment.flip=1", "augment.erase=1"])
    assert (resolved["augment"]["flip"], resolved["augment"]["erase"]) == (1.0, 1.0)


def test_int_accepted_for_float_and_bare_strings():
    resolved = config.resolve("quick-fc", overrides=["train.lr=1", "train.optimizer=sgd"])
    assert resolved["train"]["lr"] == 1.0 and isinstance(resolved["train"]["lr"], float)
    assert resolved["train"]["optimizer"] == "sgd"


def test_unknown_recipe_suggests(tmp_path):
    with pytest.raises(SpecError, match="no recipe or file named 'quick-fcc'.*'quick-fc'"):
        config.resolve("quick-fcc")
    with pytest.raises(SpecError, match="cannot read"):
        config.resolve(str(tmp_path / "missing.toml"))


def test_invalid_toml_and_empty_model(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nlayers = 3")
    with pytest.raises(SpecError, match="invalid TOML"):
        config.resolve(str(bad))
    with pytest.raises(SpecError, match="no \\[model\\] layers"):
        config.resolve({"train": {"epochs": 1}})


def test_keras_default_learning_rates():
    assert config.learning_rate({"lr": 0.0, "optimizer": "sgd"}) == 0.01
    assert config.learning_rate({"lr": 0.0, "optimizer": "rmsprop"}) == 0.001
    assert config.learning_rate({"lr": 0.5, "optimizer": "adam"}) == 0.5


def test_bf16_table_applies_only_in_bf16_and_command_line_keys_win(tiny_config):
    doc = {**tiny_config, "bf16": {"train": {"epochs": 5, "lr": 0.01},
                                   "augment": {"translate": 1}}}
    resolved = config.resolve(doc, flags={"train.lr": 0.002})
    assert config.bf16_keys(resolved) == {"train.epochs": 5, "augment.translate": 1}
    bf16, fp32 = config.for_precision(resolved, "bf16"), config.for_precision(resolved, "fp32")
    assert (bf16["train"]["epochs"], bf16["augment"]["translate"], bf16["train"]["lr"]) == (
        5, 1, 0.002)
    assert (fp32["train"]["epochs"], fp32["augment"]["translate"], fp32["train"]["lr"]) == (
        2, 0, 0.002)
    assert "bf16" not in bf16 and "bf16" not in fp32  # the run folder's config is what ran
    set_on_command_line = config.resolve(doc, overrides=["train.epochs=3"])
    assert config.for_precision(set_on_command_line, "bf16")["train"]["epochs"] == 3
    again = config.resolve(config.parse_toml(config.dumps(resolved), "x"))
    assert again == resolved and config.digest(again) == config.digest(resolved)
    assert "bf16" not in config.resolve(tiny_config)  # optional: old run folders' digests hold


def test_bf16_model_table_replaces_the_layers_unless_one_is_set(tiny_config):
    wide = copy.deepcopy(tiny_config["model"]["layers"])
    wide[1]["units"] = 32
    doc = {**tiny_config, "bf16": {"model": {"layers": wide}, "train": {"epochs": 5}}}
    resolved = config.resolve(doc)
    assert config.bf16_layers(resolved) == wide
    assert config.for_precision(resolved, "bf16")["model"]["layers"] == wide
    assert config.for_precision(resolved, "fp32")["model"] == tiny_config["model"]
    edited = config.resolve(doc, overrides=["model.layers.1.units=8"])  # edits the recipe's net
    assert config.bf16_layers(edited) is None and config.bf16_keys(edited) == {"train.epochs": 5}
    assert config.for_precision(edited, "bf16")["model"]["layers"][1]["units"] == 8
    alone = config.resolve({**tiny_config, "bf16": {"model": {"layers": wide}}},
                           overrides=["model.layers.1.units=8"])
    assert "bf16" not in alone  # nothing left of the table, no empty [bf16] in `show`


@pytest.mark.parametrize("table, message", [
    ({"train": {"epoch": 5}}, r"unknown key bf16.train.epoch \(did you mean 'epochs'\?\)"),
    ({"data": {"val": "none"}}, r"\[bf16\] holds train.\*, augment.\* and model.layers keys, "
                                r"not 'data'"),
    ({"model": {"name": "wide"}}, "bf16.model holds a non-empty layers list only"),
    ({"model": {"layers": []}}, "bf16.model holds a non-empty layers list only"),
    ({"model": {"layers": "wide"}}, "model.layers must be a list"),
    ({"train": {"precision": "fp32"}}, "bf16.train.precision cannot depend on the precision"),
    ({"train": {"epochs": 0}}, "train.epochs must be positive"),
    ({"augment": 3}, "bf16.augment must be a table"),
])
def test_bad_bf16_tables(tiny_config, table, message):
    with pytest.raises(SpecError, match=message):
        config.resolve({**tiny_config, "bf16": table})


def test_class_names_do_not_change_a_configs_digest():
    """Names are labels, not training: runs and sweeps made before data.classes existed keep
    their digests, and renaming classes does not split a seed group."""
    names = "data.classes=" + str([f"c{i}" for i in range(10)]).replace("'", '"')
    assert config.digest(config.resolve("weil-fc")) == config.digest(
        config.resolve("weil-fc", overrides=[names]))
    assert config.digest(config.resolve("weil-fc")) != config.digest(
        config.resolve("weil-fc", overrides=["train.epochs=3"]))
