"""Dense networks in NumPy with backprop written by hand: the math of the numpy engine.

Report 003's task 1 trains a network without a framework. Everything here works on whole
batches (no per-sample loops) in the arrays' own dtype: float32 to train, float64 for the
gradient tests, which compare every gradient with PyTorch autograd and finite differences.
Weights are kept under torch's state_dict names and (out, in) shapes, so a run trained here
loads into the torch model built from the same layer tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fashionlab import data
from fashionlab.errors import SpecError

INPUT_SIZE, NUM_CLASSES = 28 * 28, 10
# The subset of models.LAYER_KEYS this engine runs, with the same keys and defaults (None means
# required); models.py imports torch, so a test checks the two tables agree.
LAYER_KEYS: dict[str, dict] = {
    "flatten": {},
    "dense": {"units": None, "activation": "linear", "kernel_initializer": "glorot_uniform",
              "use_bias": True, "l1": 0.0, "l2": 0.0, "kernel_constraint": ""},
    "dropout": {"rate": None},
    "relu": {}, "leaky_relu": {"alpha": 0.3}, "tanh": {}, "sigmoid": {}, "softmax": {},
}
TORCH_ONLY = ("conv2d", "maxpool", "avgpool", "global_avgpool", "batchnorm")
MAX_LAYER_PARAMS = 2**31  # as models.py: 8 GiB of float32 in one layer is a typo
ACTIVATIONS = ("linear", "relu", "leaky_relu", "tanh", "sigmoid", "softmax")
ACTIVATION_SLOPE = 0.2  # keras.activations.leaky_relu, used by activation = "leaky_relu"
TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated at 2 std, as Keras uses


@dataclass
class Layer:
    kind: str  # dense | act | dropout | flatten
    act: str = "linear"
    slope: float = 0.0  # leaky_relu
    rate: float = 0.0  # dropout
    key: str = ""  # torch state_dict prefix of a dense layer, e.g. "1.0"
    l1: float = 0.0
    l2: float = 0.0
    constraint: str = ""
    bias: bool = True


@dataclass
class Net:
    layers: list[Layer]
    params: dict[str, np.ndarray]  # torch state_dict name -> array, weights (out, in)
    flops: int  # forward, per image, counted as models.py does

    @property
    def size(self) -> int:
        return sum(p.size for p in self.params.values())


def _check_keys(spec: dict, where: str) -> dict:
    kind = spec.get("type")
    if isinstance(kind, str) and kind in TORCH_ONLY:
        raise SpecError(f"{where}: the numpy engine does not support {kind} layers (it runs "
                        f"{', '.join(LAYER_KEYS)}); use train.engine = \"torch\"")
    if not isinstance(kind, str) or kind not in LAYER_KEYS:
        raise SpecError(f"{where}: unknown layer type {kind!r} "
                        f"(known: {', '.join([*LAYER_KEYS, *TORCH_ONLY])})")
    allowed = LAYER_KEYS[kind]
    unknown = sorted(set(spec) - set(allowed) - {"type"})
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} for {kind} "
                        f"(accepted: {', '.join(allowed) or 'none'})")
    out = {**allowed, **{k: v for k, v in spec.items() if k != "type"}}
    for key, value in out.items():
        default = allowed[key]
        if value is None:
            raise SpecError(f"{where}: {kind} needs {key!r}")
        if default is not None and not isinstance(value, type(default)) and not (
                isinstance(default, float) and isinstance(value, int)
                and not isinstance(value, bool)):
            raise SpecError(f"{where}: {key} must be of type {type(default).__name__}, "
                            f"got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{where}: {key} must be a finite number, got {value}")
    return out


def _activation(name: str, where: str, last: bool) -> str:
    if name not in ACTIVATIONS:
        raise SpecError(f"{where}: the numpy engine does not support activation {name!r} "
                        f"(it runs {', '.join(ACTIVATIONS)})")
    if name == "softmax" and not last:
        raise SpecError(f"{where}: softmax is only supported on the last layer "
                        "(it is fused into the cross-entropy loss)")
    return "linear" if name == "softmax" else name


def _kernel(name: str, shape: tuple[int, int], rng: np.random.Generator, where: str,
            dtype) -> np.ndarray:
    """Keras's initialisers for a torch-layout (out, in) kernel."""
    fan_out, fan_in = shape
    limits = {"glorot_uniform": math.sqrt(6 / (fan_in + fan_out)),
              "he_uniform": math.sqrt(6 / fan_in), "lecun_uniform": math.sqrt(3 / fan_in),
              "random_uniform": 0.05, "torch": 1 / math.sqrt(fan_in)}
    variances = {"glorot_normal": 2 / (fan_in + fan_out), "he_normal": 2 / fan_in,
                 "lecun_normal": 1 / fan_in}
    if name in limits:
        w = rng.uniform(-limits[name], limits[name], shape)
    elif name in variances:
        std = math.sqrt(variances[name]) / TRUNC_STD
        w = rng.normal(0.0, std, shape)
        while (bad := np.abs(w) > 2 * std).any():
            w[bad] = rng.normal(0.0, std, int(bad.sum()))
    elif name == "random_normal":
        w = rng.normal(0.0, 0.05, shape)
    else:
        raise SpecError(f"{where}: unknown kernel_initializer {name!r}")
    return w.astype(dtype)


def build(specs: list[dict], rng: np.random.Generator, dtype=np.float32) -> Net:
    """Check the layer tables as models.build does and initialise the weights."""
    if not isinstance(specs, list) or not specs:
        raise SpecError("[model] layers must be a non-empty list of layer tables")
    layers, params, flops, flat, width = [], {}, 0, False, INPUT_SIZE
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise SpecError(f"layer {i}: must be a table like {{type = \"dense\", units = 10}}")
        where, last = f"layer {i} ({spec.get('type', '?')})", i == len(specs) - 1
        p, kind = _check_keys(spec, where), spec["type"]
        if kind == "flatten":
            layers.append(Layer("flatten"))
            flat = True
        elif kind == "dense":
            units = p["units"]
            if not flat:
                raise SpecError(f"{where}: dense needs a flat input, got (1, 28, 28); "
                                "add {type = \"flatten\"} before it")
            if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
                raise SpecError(f"{where}: units must be a positive integer, got {units!r}")
            if (width + 1) * units > MAX_LAYER_PARAMS:
                raise SpecError(f"{where}: {(width + 1) * units:,} parameters in one layer is "
                                f"too many (limit {MAX_LAYER_PARAMS:,})")
            if p["l1"] < 0 or p["l2"] < 0:
                raise SpecError(f"{where}: l1 and l2 must not be negative")
            if p["kernel_constraint"] not in ("", "unit_norm", "max_norm"):
                raise SpecError(f"{where}: kernel_constraint must be unit_norm or max_norm")
            layer = Layer("dense", _activation(p["activation"], where, last), ACTIVATION_SLOPE,
                          key=f"{i}.0", l1=float(p["l1"]), l2=float(p["l2"]),
                          constraint=p["kernel_constraint"], bias=p["use_bias"])
            params[f"{i}.0.weight"] = _kernel(p["kernel_initializer"], (units, width), rng,
                                              where, dtype)
            if layer.bias:
                params[f"{i}.0.bias"] = np.zeros(units, dtype)
            layers.append(layer)
            flops += 2 * width * units
            width = units
        elif kind == "dropout":
            rate = p["rate"]
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise SpecError(f"{where}: dropout rate must lie in [0, 1), got {p['rate']!r}")
            layers.append(Layer("dropout", rate=float(p["rate"])))
        else:
            slope = float(p["alpha"]) if kind == "leaky_relu" else 0.0
            layers.append(Layer("act", _activation(kind, where, last), slope))
    shape = (width,) if flat else (1, 28, 28)
    if shape != (NUM_CLASSES,):
        raise SpecError(f"the last layer outputs shape {shape}; {NUM_CLASSES} classes need "
                        f"({NUM_CLASSES},): end with {{type = \"dense\", units = {NUM_CLASSES}}}")
    return Net(layers, params, flops)


def _act(name: str, z: np.ndarray, slope: float) -> np.ndarray:
    if name == "sigmoid":
        return 0.5 + 0.5 * np.tanh(0.5 * z)  # = 1/(1+exp(-z)), with no overflow for z << 0
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, slope * z)
    return z


def _act_grad(name: str, z: np.ndarray, a: np.ndarray, slope: float,
              d: np.ndarray) -> np.ndarray:
    """d(loss)/dz from d(loss)/da; at z = 0 relu passes 0 and leaky_relu the slope, as torch."""
    if name == "sigmoid":
        return d * a * (1 - a)
    if name == "tanh":
        return d * (1 - a * a)
    if name == "relu":
        return d * (z > 0)
    if name == "leaky_relu":
        return np.where(z > 0, d, slope * d)
    return d


def forward(net: Net, x: np.ndarray, rng: np.random.Generator | None = None):
    """Flat inputs (N, 784) -> (logits, tape for backward); rng given = training mode."""
    tape = []
    for layer in net.layers:
        saved = None
        if layer.kind == "dense":
            z = x @ net.params[layer.key + ".weight"].T
            if layer.bias:
                z += net.params[layer.key + ".bias"]
            saved, x = (x, z), _act(layer.act, z, layer.slope)
        elif layer.kind == "act":
            saved, x = (x, x), _act(layer.act, x, layer.slope)
        elif layer.kind == "dropout" and rng is not None and layer.rate:
            saved = (rng.random(x.shape, dtype=x.dtype) >= layer.rate) / x.dtype.type(
                1 - layer.rate)
            x = x * saved
        tape.append((saved, x))
    return x, tape


def backward(net: Net, tape: list, dz: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of the loss for every parameter, given d(loss)/d(logits)."""
    grads = {}
    first = next(i for i, layer in enumerate(net.layers) if layer.kind == "dense")
    for i in range(len(net.layers) - 1, first - 1, -1):
        layer, (saved, out) = net.layers[i], tape[i]
        if layer.kind in ("dense", "act"):
            dz = _act_grad(layer.act, saved[1], out, layer.slope, dz)
        if layer.kind == "dense":
            w = net.params[layer.key + ".weight"]
            grads[layer.key + ".weight"] = dz.T @ saved[0]
            if layer.bias:
                grads[layer.key + ".bias"] = dz.sum(0)
            if i > first:
                dz = dz @ w
        elif layer.kind == "dropout" and saved is not None:
            dz = dz * saved
    return grads


def cross_entropy(z: np.ndarray, y: np.ndarray, smoothing: float = 0.0):
    """Mean softmax cross-entropy and its gradient wrt the logits, as torch's cross_entropy."""
    n, k = z.shape
    shifted = z - z.max(1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(1, keepdims=True)
    logp = shifted - np.log(total)
    target = np.full_like(z, smoothing / k)
    target[np.arange(n), y] += 1 - smoothing
    return float(-(target * logp).sum() / n), (e / total - target) / z.dtype.type(n)


def penalty(net: Net, grads: dict[str, np.ndarray] | None = None) -> float:
    """Keras kernel regularisers l1*sum|w| + l2*sum(w^2); adds their gradient to `grads`."""
    total = 0.0
    for layer in net.layers:
        if layer.kind == "dense" and (layer.l1 or layer.l2):
            w = net.params[layer.key + ".weight"]
            total += layer.l1 * float(np.abs(w).sum()) + layer.l2 * float((w * w).sum())
            if grads is not None:
                grads[layer.key + ".weight"] += layer.l1 * np.sign(w) + 2 * layer.l2 * w
    return total


def sgd_step(net: Net, grads: dict, velocity: dict, train: dict, lr: float) -> None:
    """optim.make_optimizer's SGD, in place: Keras's weight decay (w -= lr * wd * w), then
    torch.optim.SGD's update (momentum buffer, nesterov)."""
    wd, mu = train["weight_decay"], train["momentum"]
    for key, g in grads.items():
        p = net.params[key]
        if wd:
            p *= 1 - lr * wd
        if mu:
            v = velocity.setdefault(key, np.zeros_like(p))
            v *= mu
            v += g
            g = g + mu * v if train["nesterov"] else v
        p -= lr * g
    for layer in net.layers:
        if layer.constraint:  # Keras applies kernel constraints after each step
            w = net.params[layer.key + ".weight"]
            norm = np.sqrt((w * w).sum(1, keepdims=True))
            w *= (1 if layer.constraint == "unit_norm" else np.minimum(norm, 2)) / (norm + 1e-7)


def logits(net: Net, images: np.ndarray, config: dict) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 logits, in eval batches, as inference.logits."""
    a, b = data.normalizer(config["data"]["normalize"])
    batch, out = config["train"]["eval_batch_size"], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].astype(np.float32)
        z = forward(net, x.reshape(len(x), -1) * a + b)[0]
        if config["train"]["tta_flip"]:
            z = (z + forward(net, x[:, :, ::-1].reshape(len(x), -1) * a + b)[0]) / 2
        out.append(z)
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)
