"""Training state <-> one safetensors file, so resuming never unpickles anything.

Tensors (weights, optimizer moments, RNG states) go in the tensor table; everything else
(epoch, history, optimizer hyperparameters, NumPy and Python RNG states) goes as JSON in the
file's metadata. One file replaced atomically means a kill can never pair a new half with an
old one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fashionlab.errors import RunError
from fashionlab.runs import read_checkpoint, write_tensors

FILE = "checkpoint.safetensors"


def flatten(obj: Any, prefix: str, tensors: dict[str, np.ndarray]) -> Any:
    """Replace every tensor in a nested structure by a reference into `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().numpy()
        return {"__tensor__": prefix, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten(k, f"{prefix}.k{i}", tensors),
                              flatten(v, f"{prefix}.{k}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    return obj


def unflatten(obj: Any, tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return torch.from_numpy(tensors[obj["__tensor__"]].copy())
    if "__dict__" in obj:
        return {unflatten(k, tensors): unflatten(v, tensors) for k, v in obj["__dict__"]}
    if "__tuple__" in obj:
        return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    return {k: unflatten(v, tensors) for k, v in obj.items()}


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate(),
             **{name: g.get_state() for name, g in generators.items()},
             "devices": {name: g.device.type for name, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> list[str]:
    """Restore every random stream; return the generators saved on another kind of device.

    A CUDA generator's state (a seed and an offset) means nothing to a CPU one and the other
    way round, so a run resumed on another device keeps those generators as seeded."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    devices = state.get("devices", {})  # checkpoints from before 2026-11-30 lack it
    moved = [name for name, g in generators.items()
             if devices.get(name, g.device.type) != g.device.type]
    for name, g in generators.items():
        if name not in moved:
            g.set_state(state[name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    return moved


def save(run_dir: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, np.ndarray] = {}
    meta = flatten(state, "s", tensors)
    write_tensors(run_dir / FILE, tensors, {"format": "fashionlab-checkpoint",
                                            "state": json.dumps(meta)})


def load(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / FILE
    if not path.exists():
        return None
    tensors, state = read_checkpoint(path, "fashionlab-checkpoint", "fashionlab's torch engine")
    try:
        return unflatten(state, tensors)
    except KeyError as e:
        raise RunError(f"{path} is damaged (tensor {e} is missing); remove it to train the run "
                       "again from epoch 1") from None
