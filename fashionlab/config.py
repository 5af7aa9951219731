"""Experiment configs: defaults < recipe or spec file < command-line flags < --set overrides.

A config is one TOML document with the sections below; a recipe is the same document shipped
in `fashionlab/recipes/`. Unknown sections or keys and values of the wrong type are errors
that name the key, never silently ignored. The resolved config is saved in every run folder.

    fashionlab show weil-fc
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from fashionlab.errors import SpecError

# Every key a config may hold, with its default. A key's type is its default's type.
DEFAULTS: dict[str, dict[str, Any]] = {
    "recipe": {
        "report": "",                    # report file the recipe reproduces
        "section": "",                   # where in the report
        "description": "",               # one line, shown by `fashionlab recipes`
        "claimed_test_accuracy": 0.0,    # the report's figure, as a fraction; 0 = none claimed
        "claimed_val_accuracy": 0.0,     # its validation figure, where it gives one; 0 = none
        "claimed_params": 0,             # the report's parameter count; 0 = not stated
        "notes": "",                     # what the report left out and what we chose, and why
    },
    "model": {
        "name": "",
        "layers": [],                    # Keras-like layer tables; see fashionlab.models
    },
    "data": {
        "dataset": "fashion-mnist",      # or "any": another 28x28 IDX/CSV set, unverified
        "val": "first:5000",             # first:N | last:F (Keras) | fraction:F | none
        "normalize": "scale",            # scale: x/255 | standard: (x/255-mean)/std | raw: 0..255
        "classes": [],                   # names of labels 0..9 (default: Fashion-MNIST's)
    },
    "train": {
        "engine": "torch",               # torch | numpy (the from-scratch engine)
        "optimizer": "adam",             # sgd | adam | adamw | rmsprop, with Keras's defaults
        "lr": 0.0,                       # 0 = the optimizer's Keras default (sgd 0.01, else 0.001)
        "momentum": 0.0,                 # sgd and rmsprop
        "nesterov": False,               # sgd
        "weight_decay": 0.0,             # w -= lr * wd * w each step, as Keras (adamw's default
                                         # is 0 here, 0.004 in Keras)
        "batch_size": 32,                # Keras's default
        "epochs": 10,
        "schedule": "constant",          # constant | cosine | onecycle (per step)
        "warmup_epochs": 0.0,            # linear warm-up from 0, for cosine and constant
        "label_smoothing": 0.0,
        "ema": 0.0,                      # decay of a moving average of the weights; 0 = off
        "patience": 0,                   # stop after N epochs without improvement; 0 = off
        "monitor": "val_accuracy",       # val_accuracy | val_loss: for early stopping
        "restore_best": True,            # with early stopping: keep the best epoch's weights
        "seed": 0,
        "precision": "auto",             # auto | fp32 | bf16 (auto: bf16 where it is fast)
        "channels_last": "auto",         # auto | on | off, for conv nets
        "conv": "auto",                  # auto | direct | dft: CPU conv algorithms (convs.py)
        "tta_flip": False,               # evaluate on image + mirror image, averaged
        "tta_shift": 0,                  # also on the image moved N pixels each of 4 ways
        "eval_batch_size": 256,          # activations of 256 images stay in kept heap blocks
    },
    "augment": {
        "flip": 0.0,                     # probability of a horizontal flip (report 004)
        "translate": 0,                  # random shift by up to N pixels (zero padding)
        "rotate": 0.0,                   # random rotation by up to N degrees
        "erase": 0.0,                    # probability of random erasing (one rectangle)
    },
}

CHOICES = {
    ("data", "dataset"): ("fashion-mnist", "any"),
    ("data", "normalize"): ("scale", "standard", "raw"),
    ("train", "engine"): ("torch", "numpy"),
    ("train", "optimizer"): ("sgd", "adam", "adamw", "rmsprop"),
    ("train", "schedule"): ("constant", "cosine", "onecycle"),
    ("train", "monitor"): ("val_accuracy", "val_loss"),
    ("train", "precision"): ("auto", "fp32", "bf16"),
    ("train", "channels_last"): ("auto", "on", "off"),
    ("train", "conv"): ("auto", "direct", "dft"),
}
POSITIVE = {("train", "batch_size"), ("train", "epochs"), ("train", "eval_batch_size")}
NON_NEGATIVE = {("train", k) for k in ("lr", "momentum", "weight_decay", "warmup_epochs",
                                        "label_smoothing", "ema", "patience", "tta_shift")}
# An optional section, [bf16]: train and augment keys, and model layers, that replace the
# recipe's where the run trains in bf16, which `auto` picks only on CPUs with native bf16 (AMX
# or AVX-512-BF16), where a conv net's step is two or three times as fast; so a recipe with a
# time target can spend that speed (fast.toml, best.toml). `auto` decides on the recipe's own
# model. Flags and --set items still win: a key they set leaves the table (a layer's key, the
# table's layers). Keys read before the precision is known cannot be in it.
BF16 = "bf16"
BF16_SECTIONS = ("train", "augment", "model")
BF16_FIXED = {("train", "precision"), ("train", "engine"), ("train", "seed")}

PROBABILITIES = {("augment", "flip"), ("augment", "erase")}  # 1: every image
FRACTIONS = {("train", "label_smoothing"), ("train", "ema")}  # 1 would learn nothing

RECIPES = resources.files("fashionlab") / "recipes"


def suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


ALIASES = {"learning_rate": "train.lr", "lr_schedule": "train.schedule",
           "validation": "data.val", "validation_split": "data.val"}  # other tools' names


def _home(key: str) -> str | None:
    """section.key where a key given in the wrong place, or by another tool's name, lives."""
    if key in ALIASES:
        return ALIASES[key]
    homes = [f"{section}.{key}" for section, keys in DEFAULTS.items() if key in keys]
    return homes[0] if len(homes) == 1 else None


def _name(text: str) -> str:
    """A key as the user typed it, quoted if it holds control characters: errors stay one line."""
    return text if text.isprintable() else repr(text)


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            list: "a list"}[type(value)]


def check_value(section: str, key: str, value: Any) -> Any:
    """One config value against its key's type and range (an int for a float key becomes a
    float); anything a spec, a flag or --set gives passes through here."""
    default = DEFAULTS[section][key]
    where = f"{section}.{key}"
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        choices = (f" ({', '.join(CHOICES[section, key])})" if (section, key) in CHOICES
                   else "")
        raise SpecError(f"{where} must be {_type_name(default)}{choices}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{where} must be a finite number, got {value}")
    if (section, key) in CHOICES and value not in CHOICES[section, key]:
        raise SpecError(f"{where} must be one of {', '.join(CHOICES[section, key])}, "
                        f"got {value!r}")
    if (section, key) in POSITIVE and value <= 0:
        raise SpecError(f"{where} must be positive, got {value}")
    if (section, key) in NON_NEGATIVE and value < 0:
        raise SpecError(f"{where} must not be negative, got {value}")
    if (section, key) == ("train", "seed") and not 0 <= value < 2**32:
        raise SpecError(f"{where} must lie in 0..{2**32 - 1}, got {value}")
    if (section, key) in {("train", "tta_shift"), ("augment", "translate")} and value >= 14:
        raise SpecError(f"{where} must be under 14 pixels (half a 28x28 image), got {value}")
    if (section, key) in PROBABILITIES and not 0 <= value <= 1:
        raise SpecError(f"{where} must lie in [0, 1], got {value}")
    if (section, key) in FRACTIONS and not 0 <= value < 1:
        raise SpecError(f"{where} must lie in [0, 1), got {value}")
    return value


def merge(config: dict, update: dict, origin: str) -> dict:
    """Return `config` with the sections of `update` laid over it, every key checked."""
    out = copy.deepcopy(config)
    for section, table in update.items():
        home = _home(section)
        if section not in DEFAULTS and section != BF16 and home and not isinstance(table, dict):
            raise SpecError(f"{origin}: {_name(section)} belongs in a section: {home} = "
                            f"{table!r}, or under [{home.split('.')[0]}]")
        if section not in DEFAULTS and section != BF16:
            raise SpecError(f"{origin}: unknown section [{_name(section)}]"
                            f"{suggest(section, [*DEFAULTS, BF16])}")
        if not isinstance(table, dict):
            raise SpecError(f"{origin}: [{section}] must be a table")
        if section == BF16:
            out[BF16] = _merge_bf16(out.get(BF16, {}), table, origin)
            continue
        for key, value in table.items():
            if key not in DEFAULTS[section]:
                home = _home(key)
                hint = (f" (did you mean {home!r}?)" if home and home.split(".")[1] != key
                        else f" (it belongs in [{home.split('.')[0]}]: {home})" if home
                        else suggest(key, DEFAULTS[section]))
                raise SpecError(f"{origin}: unknown key {section}.{_name(key)}{hint}")
            out[section][key] = check_value(section, key, value)
    return out


def _merge_bf16(current: dict, table: dict, origin: str) -> dict:
    out = copy.deepcopy(current)
    for section, keys in table.items():
        if section not in BF16_SECTIONS:
            raise SpecError(f"{origin}: [bf16] holds train.*, augment.* and model.layers "
                            f"keys, not {_name(section)!r}")
        if not isinstance(keys, dict):
            raise SpecError(f"{origin}: bf16.{section} must be a table")
        for key, value in keys.items():
            if key not in DEFAULTS[section]:
                raise SpecError(f"{origin}: unknown key bf16.{section}.{_name(key)}"
                                f"{suggest(key, DEFAULTS[section])}")
            if (section, key) in BF16_FIXED:
                raise SpecError(f"{origin}: bf16.{section}.{key} cannot depend on the "
                                "precision: it is read before the precision is chosen")
            if section == "model" and (key != "layers" or not value):
                raise SpecError(f"{origin}: bf16.model holds a non-empty layers list only")
            out.setdefault(section, {})[key] = check_value(section, key, value)
    return out


def for_precision(config: dict, precision: str) -> dict:
    """The config a run trains with: the [bf16] keys laid over the recipe's when it trains in
    bf16, and the table dropped, so the run folder's config says what ran."""
    out = copy.deepcopy(config)
    table = out.pop(BF16, {})
    if precision == "bf16":
        for section, keys in table.items():
            out[section].update(keys)
    return out


def bf16_keys(config: dict) -> dict[str, Any]:
    """The [bf16] table as dotted keys, e.g. {'train.epochs': 16}."""
    return {f"{section}.{key}": value for section, keys in config.get(BF16, {}).items()
            for key, value in keys.items()}


def bf16_layers(config: dict) -> list | None:
    """The [bf16] table's model layers, if it has them: the net a bf16 run trains."""
    return config.get(BF16, {}).get("model", {}).get("layers")


def _drop_from_bf16(config: dict, path: list[str]) -> None:
    """A key set on the command line wins over the recipe's [bf16] value for it; a layer's key
    (model.layers.N.key) edits the recipe's model, so the table's layers leave too."""
    if len(path) == 4:
        path = path[:2]
    if len(path) == 2 and path[0] in config.get(BF16, {}):
        config[BF16][path[0]].pop(path[1], None)
        if not config[BF16][path[0]]:
            del config[BF16][path[0]]
    if BF16 in config and not config[BF16]:
        del config[BF16]


def parse_toml(text: str, origin: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{origin}: invalid TOML ({e})") from None


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in RECIPES.iterdir() if p.name.endswith(".toml"))


def read_source(source: str) -> tuple[dict, str]:
    """A recipe name or a TOML file path -> (its parsed document, where it came from)."""
    path = Path(source)
    if (path / "run.json").is_file():
        raise SpecError(f"{path} is a run folder: train its config as {path / 'config.toml'}, "
                        f"or continue it with --resume {path}")
    if path.suffix == ".toml" or path.exists():
        try:
            doc = parse_toml(path.read_text(encoding="utf-8"), str(path))
        except OSError as e:
            raise SpecError(f"cannot read {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise SpecError(f"{path}: not a UTF-8 text file (a TOML spec is text)") from None
        model = doc.setdefault("model", {})
        model["name"] = model.get("name") or path.stem  # names the run folder
        return doc, str(path)
    names = recipe_names()
    if source not in names:
        raise SpecError(f"no recipe or file named {source!r}{suggest(source, names)}; "
                        "`fashionlab recipes` lists them")
    doc = parse_toml((RECIPES / f"{source}.toml").read_text(), f"recipe {source}")
    doc.setdefault("model", {}).setdefault("name", source)
    return doc, f"recipe {source}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=0.01` -> (['train', 'lr'], 0.01); values are TOML, bare words are strings."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.01")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def apply_override(config: dict, path: list[str], value: Any) -> dict:
    """Set one dotted key; a layer's key is addressed by index, e.g. model.layers.1.units."""
    name = _name(".".join(path))
    if len(path) == 2:
        return merge(config, {path[0]: {path[1]: value}}, f"--set {name}")
    if len(path) == 1 and _home(path[0]):
        raise SpecError(f"--set {name}: unknown key (did you mean {_home(path[0])!r}?)")
    if len(path) != 4 or path[:2] != ["model", "layers"]:
        raise SpecError(f"--set {name}: unknown key (use section.key or model.layers.N.key)")
    layers = config["model"]["layers"]
    if not (path[2].isdecimal() and int(path[2]) < len(layers)):
        raise SpecError(f"--set {name}: no layer {path[2]} (the model has {len(layers)}, "
                        "numbered from 0)")
    out = copy.deepcopy(config)
    out["model"]["layers"][int(path[2])][path[3]] = value  # checked when the model is built
    return out


def resolve(source: str | dict | None, flags: dict | None = None,
            overrides: list[str] = ()) -> dict:
    """The full config for a run: defaults, then the file, then flags, then --set items."""
    config = copy.deepcopy(DEFAULTS)
    if isinstance(source, dict):
        config = merge(config, source, "config")
    elif source is not None:
        doc, origin = read_source(source)
        config = merge(config, doc, origin)
    for dotted, value in (flags or {}).items():
        if value is not None:
            if dotted.count(".") != 1:
                home = _home(dotted)
                raise SpecError(f"flag {dotted!r}: name it section.key"
                                + (f" ({home!r})" if home else ""))
            section, key = dotted.split(".")
            config = merge(config, {section: {key: value}}, f"--{key.replace('_', '-')}")
            _drop_from_bf16(config, [section, key])
    for item in overrides:
        path, value = parse_override(item)
        config = apply_override(config, path, value)
        _drop_from_bf16(config, path)
    if not config["model"]["layers"]:
        raise SpecError("the config has no [model] layers")
    return config


def check_train(train: dict) -> None:
    """What no single key can check, for a config about to train (a finished run's saved
    config still loads): keys its optimizer has no use for are refused, not recorded and
    silently ignored, and a warm-up must end before training does."""
    if train["warmup_epochs"] >= train["epochs"]:
        raise SpecError(f"train.warmup_epochs ({train['warmup_epochs']:g}) must be below "
                        f"train.epochs ({train['epochs']}): the learning rate would never "
                        "reach its peak")
    name = train["optimizer"]
    if train["momentum"] and name in ("adam", "adamw"):
        raise SpecError(f"train.momentum does nothing for {name} (its betas play that part): "
                        "it applies to sgd and rmsprop")
    if train["nesterov"] and name != "sgd":
        raise SpecError(f"train.nesterov applies to sgd only, not {name}")
    if train["nesterov"] and not train["momentum"]:
        raise SpecError("train.nesterov needs train.momentum above 0")


def learning_rate(train: dict) -> float:
    """The configured lr, or the optimizer's Keras default when lr = 0."""
    if train["lr"] > 0:
        return train["lr"]
    return 0.01 if train["optimizer"] == "sgd" else 0.001


def dumps(config: dict) -> str:
    return tomli_w.dumps(config, multiline_strings=True)  # notes stay readable


def digest(config: dict) -> str:
    """Hash of what changes the result, to detect changed configs: not the recipe header, nor
    the class names (labels, not training; leaving them out also keeps the digests of runs
    and studies made before `data.classes` existed)."""
    relevant = {k: v for k, v in config.items() if k != "recipe"}
    if isinstance(relevant.get("data"), dict):
        relevant["data"] = {k: v for k, v in relevant["data"].items() if k != "classes"}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
