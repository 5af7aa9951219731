"""A trained run as a single ONNX or TorchScript file for apps that do not run fashionlab.

The exported graph takes raw pixels, float32 (N, 1, 28, 28) in 0..255 with light garments on
black (the output of `fashionlab.photos.preprocess`), and does the run's normalisation itself,
so an app never has to know the data set's mean and std. It returns `logits` and
`probabilities`, both (N, 10). The batch axis is dynamic. Class names, the normalisation and
the input convention are stored in the file's metadata.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from fashionlab import data, runs
from fashionlab.errors import UserError
from fashionlab.inference import Trained, averaged_logits, load_trained

OPSET = 18
FORMATS = ("onnx", "torchscript")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript"}
INPUT = "pixels"
OUTPUTS = ("logits", "probabilities")


class Pixels(nn.Module):
    """The run's model with its input normalisation and test-time views built in."""

    def __init__(self, trained: Trained):
        super().__init__()
        self.module = trained.net.module
        self.config = trained.config

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = averaged_logits(self.module, pixels, self.config, channels_last=False)
        return z, torch.softmax(z, dim=1)


def metadata(trained: Trained) -> dict[str, str]:
    kind = trained.config["data"]["normalize"]
    a, b = data.normalizer(kind)
    return {
        "classes": json.dumps(list(trained.classes)),
        "input": "pixels: float32 (N, 1, 28, 28), 0..255, light object on a black background",
        "normalize": json.dumps({"kind": kind, "scale": a, "shift": b,
                                 "note": "applied inside the graph: x * scale + shift"}),
        "run": trained.run.path.name,
        "producer": "fashionlab",
    }


def file_format(out: str | Path, fmt: str | None) -> str:
    """The format a file's suffix names, which an explicit format may not contradict: an
    app opening model.onnx would otherwise get a TorchScript zip."""
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use {' or '.join(FORMATS)}")
    suffix = Path(out).suffix.lower()
    named = SUFFIXES.get(suffix)
    if fmt is None and named is None:
        raise UserError(f"{out}: name it .onnx or .pt, or give --format onnx|torchscript")
    if fmt is not None and named not in (None, fmt):
        raise UserError(f"{out}: a {suffix} file holds {named}, not {fmt}: rename it or "
                        f"give --format {named}")
    return fmt or named


def export(run: str | Path, out: str | Path, fmt: str | None = None) -> Path:
    """Write the run's model to `out` as one self-contained file, in `fmt` or the format
    its suffix names."""
    out = runs.output_file(out)
    fmt = file_format(out, fmt)
    trained = load_trained(run, precision="fp32")
    model = Pixels(trained).cpu().float().eval()
    try:
        with quiet_torch():
            (to_onnx if fmt == "onnx" else to_torchscript)(model, out, metadata(trained))
    finally:
        out.with_name(out.name + ".partial").unlink(missing_ok=True)
    return out


@contextlib.contextmanager
def quiet_torch():
    """The exporters log about torchvision and warn about their own internals: not our news."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def example() -> torch.Tensor:
    return torch.zeros(2, 1, data.IMAGE_SIZE, data.IMAGE_SIZE)


def to_onnx(model: nn.Module, out: Path, meta: dict[str, str]) -> None:
    """torch's dynamo exporter first; the older TorchScript-based exporter if that fails."""
    import onnx

    tmp = out.with_name(out.name + ".partial")
    try:
        program = torch.onnx.export(
            model, (example(),), dynamo=True, opset_version=OPSET, input_names=[INPUT],
            output_names=list(OUTPUTS), dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False)
        proto = program.model_proto
    except Exception:  # the legacy exporter covers what dynamo cannot trace
        torch.onnx.export(
            model, (example(),), str(tmp), dynamo=False, opset_version=OPSET,
            input_names=[INPUT], output_names=list(OUTPUTS),
            dynamic_axes={INPUT: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUTS}})
        proto = onnx.load(str(tmp))
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = meta["input"]
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    tmp.replace(out)


def to_torchscript(model: nn.Module, out: Path, meta: dict[str, str]) -> None:
    traced = torch.jit.trace(model, (example(),), check_trace=True)
    tmp = out.with_name(out.name + ".partial")
    torch.jit.save(traced, str(tmp), _extra_files={f"{k}.txt": v for k, v in meta.items()})
    tmp.replace(out)
