"""Every layer type's output shape and parameter count against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fashionlab import models
from fashionlab.errors import SpecError

HEAD = [{"type": "flatten"}, {"type": "dense", "units": 10}]


def rows(layers):
    net = models.build(layers)
    return [(r.output, r.params) for r in net.rows], net


@pytest.mark.parametrize("layer, shape, params", [
    # conv: filters * (k*k*in + 1); valid: 28-3+1 = 26
    ({"type": "conv2d", "filters": 8, "kernel": 3}, (8, 26, 26), 8 * (9 + 1)),
    ({"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same"}, (8, 28, 28), 80),
    ({"type": "conv2d", "filters": 4, "kernel": [5, 3], "use_bias": False}, (4, 24, 26), 60),
    # stride 2 'same' as TensorFlow: ceil(28/2) = 14; valid: (28-3)//2+1 = 13
    ({"type": "conv2d", "filters": 2, "kernel": 3, "strides": 2, "padding": "same"},
     (2, 14, 14), 20),
    ({"type": "conv2d", "filters": 2, "kernel": 3, "strides": 2}, (2, 13, 13), 20),
    ({"type": "maxpool"}, (1, 14, 14), 0),
    ({"type": "avgpool", "pool": 3}, (1, 9, 9), 0),  # Keras: strides default to pool size
    ({"type": "avgpool", "pool": 3, "strides": 1}, (1, 26, 26), 0),
    ({"type": "maxpool", "pool": 3, "padding": "same"}, (1, 10, 10), 0),
    ({"type": "batchnorm"}, (1, 28, 28), 2),  # gamma, beta (running stats are buffers)
    ({"type": "dropout", "rate": 0.5}, (1, 28, 28), 0),
    ({"type": "leaky_relu", "alpha": 0.1}, (1, 28, 28), 0),
    ({"type": "relu"}, (1, 28, 28), 0), ({"type": "tanh"}, (1, 28, 28), 0),
    ({"type": "sigmoid"}, (1, 28, 28), 0),
])
def test_image_layer_shapes_and_params(layer, shape, params):
    (first, *_), net = rows([layer, *HEAD])
    assert first == (shape, params)
    x = torch.zeros(2, 1, 28, 28)
    assert net.module[0](x).shape == (2, *shape)  # the inferred shape is the real one


def test_dense_stack_params():
    layers = [{"type": "flatten"}, {"type": "dense", "units": 256, "activation": "relu"},
              {"type": "batchnorm"}, {"type": "dense", "units": 10, "activation": "softmax"}]
    got, net = rows(layers)
    assert got == [((784,), 0), ((256,), 784 * 256 + 256), ((256,), 512), ((10,), 2570)]
    assert net.params == 200960 + 512 + 2570  # report 000's FC net: 203,530 without the BN


def test_global_avgpool_and_softmax_layer():
    got, net = rows([{"type": "conv2d", "filters": 10, "kernel": 3},
                     {"type": "global_avgpool"}, {"type": "softmax"}])
    assert got[1] == ((10,), 0)
    assert net.module(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_parameter_count():
    layers = [{"type": "conv2d", "filters": 6, "kernel": 5, "padding": "same",
               "activation": "tanh"}, {"type": "maxpool"},
              {"type": "conv2d", "filters": 16, "kernel": 5, "activation": "tanh"},
              {"type": "maxpool"},
              {"type": "conv2d", "filters": 120, "kernel": 5, "activation": "tanh"},
              {"type": "flatten"}, {"type": "dense", "units": 84, "activation": "tanh"},
              {"type": "dense", "units": 10, "activation": "softmax"}]
    got, net = rows(layers)
    assert [g[0] for g in got[:5]] == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5),
                                       (120, 1, 1)]
    assert net.params == 156 + 2416 + 48120 + 10164 + 850  # the classic LeNet-5 total: 61,706


@pytest.mark.parametrize("layers, message", [
    ([{"type": "dense", "units": 10}], r"layer 0 \(dense\): dense needs a flat input"),
    ([{"type": "flatten"}, {"type": "conv2d", "filters": 3, "kernel": 3}, *HEAD],
     r"layer 1 \(conv2d\): conv2d needs an image input"),
    ([{"type": "conv2d", "filters": 3, "kernel": 29}, *HEAD],
     r"layer 0 \(conv2d\): kernel 29x29 does not fit the 28x28 input"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10, "unit": 3}],
     r"layer 1 \(dense\): unknown key 'unit'"),
    ([{"type": "flatten"}, {"type": "dense"}], r"layer 1 \(dense\): dense needs 'units'"),
    ([{"type": "conv3d"}], r"layer 0: unknown layer type 'conv3d'"),
    ([{"type": "flatten"}, {"type": "dense", "units": 12}], r"outputs shape \(12,\)"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"},
      {"type": "dense", "units": 10}], r"layer 1 \(dense\): softmax is only supported"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "swish2"}],
     "unknown activation 'swish2'"),
    ([{"type": "flatten"}, {"type": "dense", "units": "ten"}], "units must be a positive integer"),
    ([{"type": "dropout", "rate": 1.5}, *HEAD], r"dropout rate must be a number in \[0, 1\)"),
    ([{"type": "dropout", "rate": "0.5"}, *HEAD], "dropout rate must be a number in"),
    ([{"type": "maxpool", "strides": 0}, *HEAD], "strides must be a positive integer"),
    ([], "non-empty list"),
])
def test_spec_errors_name_the_layer(layers, message):
    with pytest.raises(SpecError, match=message):
        models.build(layers)


def test_keras_initialisers_bounds():
    torch.manual_seed(0)
    net = models.build([{"type": "flatten"}, {"type": "dense", "units": 100},
                        {"type": "dense", "units": 10, "kernel_initializer": "he_uniform"}])
    w1, w2 = net.module[1][0].weight, net.module[2][0].weight
    assert w1.abs().max() <= (6 / (784 + 100)) ** 0.5 and w1.abs().max() > 0.9 * (6 / 884) ** 0.5
    assert w2.abs().max() <= (6 / 100) ** 0.5 and w2.abs().max() > 0.9 * 0.06 ** 0.5
    assert net.module[1][0].bias.abs().sum() == 0  # Keras: zero biases


def test_batchnorm_uses_keras_defaults():
    net = models.build([{"type": "batchnorm"}, *HEAD])
    bn = net.module[0][0]
    assert bn.eps == 1e-3 and abs(bn.momentum - 0.01) < 1e-12


def test_penalty_matches_keras_formula():
    net = models.build([{"type": "flatten"},
                        {"type": "dense", "units": 10, "l1": 0.01, "l2": 0.001}])
    w = net.module[1][0].weight
    expected = 0.01 * w.abs().sum() + 0.001 * (w ** 2).sum()
    assert torch.allclose(models.penalty(net), expected)


def test_penalty_grads_equal_autograd_through_penalty():
    torch.manual_seed(0)
    net = models.build([{"type": "flatten"},
                        {"type": "dense", "units": 6, "l1": 0.01, "l2": 0.001},
                        {"type": "dense", "units": 10, "l2": 0.5}])
    net.module[1][0].weight.data[0, :3] = 0.0  # sign(0) = 0, as autograd's abs backward
    x = torch.randn(5, 28, 28)
    loss = net.module(x).square().mean()
    ref = torch.autograd.grad(loss + models.penalty(net), [w for w, _, _ in net.penalties],
                              retain_graph=True)
    loss.backward()
    value = models.add_penalty_grads(net)
    assert torch.allclose(value, models.penalty(net))
    for (w, _, _), g in zip(net.penalties, ref, strict=True):
        assert torch.allclose(w.grad, g, atol=1e-7)


def test_unit_norm_constraint_axes():
    net = models.build([{"type": "conv2d", "filters": 4, "kernel": 3,
                         "kernel_constraint": "unit_norm"},
                        {"type": "flatten"},
                        {"type": "dense", "units": 10, "kernel_constraint": "unit_norm"}])
    models.apply_constraints(net)
    conv, dense = net.module[0][0].weight, net.module[2][0].weight
    # Keras normalises axis 0 of (kh, kw, in, out): each kernel column over its rows.
    assert torch.allclose(conv.norm(dim=2), torch.ones(4, 1, 3), atol=1e-5)
    assert torch.allclose(dense.norm(dim=1), torch.ones(10), atol=1e-5)


def test_summary_lists_layers_and_total():
    text = models.summary(models.build([{"type": "flatten"}, *HEAD[1:]]))
    assert "0: flatten" in text and "(None, 784)" in text and "Total params: 7,850" in text
    assert "non-trainable" not in text
    text = models.summary(models.build([{"type": "flatten"}, {"type": "dense", "units": 16},
                                        {"type": "batchnorm"}, {"type": "dense", "units": 10}]))
    assert "Total params: 12,762" in text  # 784*16+16, 2*16 scale and shift, 16*10+10
    assert "running means and variances add 32 non-trainable, 12,794 as Keras counts" in text


@pytest.mark.parametrize("kernel,strides,separate_pad", [(3, 1, False), (5, 1, False),
                                                         (2, 1, True), (3, 2, True)])
def test_same_padding_equals_tensorflow_zero_padding(kernel, strides, separate_pad):
    """Symmetric 'same' padding runs inside the convolution (a separate pad cost a copy per
    step); asymmetric padding, as TensorFlow puts the extra pixel at the end, keeps the pad."""
    torch.manual_seed(0)
    net = models.build([{"type": "conv2d", "filters": 4, "kernel": kernel, "strides": strides,
                         "padding": "same"}, *HEAD])
    block = net.module[0]
    assert any(isinstance(m, torch.nn.ZeroPad2d) for m in block) == separate_pad
    conv = next(m for m in block if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(2, 1, 28, 28)
    total = max((-(-28 // strides) - 1) * strides + kernel - 28, 0)
    padded = F.pad(x, (total // 2, total - total // 2) * 2)
    expected = F.conv2d(padded, conv.weight, conv.bias, strides)
    assert expected.shape[-1] == -(-28 // strides)
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_relu_in_place_only_where_safe_and_same_gradients():
    layers = [
        {"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
        {"type": "avgpool"},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "relu"},
        {"type": "dense", "units": 16, "activation": "tanh"},
        {"type": "relu"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    torch.manual_seed(0)
    net = models.build(layers)
    relus = [m for m in net.module.modules() if isinstance(m, torch.nn.ReLU)]
    assert [r.inplace for r in relus] == [True, True, False, False]  # conv, pool | flatten, tanh
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    grads = []
    for inplace in (True, False):
        for r in relus:
            r.inplace = inplace and r.inplace
        net.module.zero_grad()
        torch.nn.functional.cross_entropy(net.module(x), y).backward()
        grads.append([p.grad.clone() for p in net.module.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "elu", "gelu"])
def test_max_pool_runs_before_a_monotone_activation_with_the_same_results(activation):
    layers = [
        {"type": "conv2d", "filters": 4, "kernel": 3, "activation": activation},
        {"type": "maxpool"},
        {"type": "conv2d", "filters": 4, "kernel": 3, "activation": "gelu"},  # not monotone:
        {"type": "maxpool"},                                                   # stays before
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    torch.manual_seed(0)
    net = models.build(layers)
    flat = [m for block in net.module for m in block]
    kinds = [type(m).__name__ for m in flat]
    act = type(models.ACTIVATIONS[activation]()).__name__
    moved = activation != "gelu"  # GELU is not monotone
    assert kinds[:3] == (["Conv2d", "MaxPool2d", act] if moved else ["Conv2d", act, "MaxPool2d"])
    assert kinds[3:6] == ["Conv2d", "GELU", "MaxPool2d"]
    spec_order = list(flat)
    if moved:
        spec_order[1], spec_order[2] = flat[2], flat[1]
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    outs, grads = [], []
    for module in (net.module, torch.nn.Sequential(*spec_order)):
        net.module.zero_grad()
        z = module(x)
        torch.nn.functional.cross_entropy(z, y).backward()
        outs.append(z.detach())
        grads.append([p.grad.clone() for p in net.module.parameters()])
    # To the bit: a window's inputs tie after the activation but not before only where tanh
    # or sigmoid saturate in float, which these inputs do not reach.
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [True, False])
def test_flatten_hands_back_the_gradient_in_its_input_layout(channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 3, 5, 6).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(3 * 5 * 6, 2)
    grads = {}
    for name, flatten in (("torch", torch.nn.Flatten()), ("ours", models.Flatten())):
        y = x * 2  # keeps the layout: the gradient that reaches this op is the one to check
        out = flatten(y)
        y.register_hook(lambda g, name=name: grads.__setitem__(name, g))
        assert out.shape == (4, 90)
        torch.testing.assert_close(out, x.detach().flatten(1) * 2, rtol=0, atol=0)
        (out @ w).sum().backward()
    assert torch.equal(grads["ours"], grads["torch"])
    assert grads["ours"].is_contiguous(memory_format=fmt)
    assert grads["torch"].is_contiguous()  # what made the layer before it slow


def _tf_same_pool(x: np.ndarray, k: int, kind: str, s: int | None = None) -> np.ndarray:
    """TensorFlow's padding "same" pooling, written out: out = ceil(n / s), total padding
    (out - 1) * s + k - n per axis (at least 0), the smaller half before; windows see only
    real pixels."""
    s = s or k
    n, m = x.shape[-2:]
    oh, ow = -(-n // s), -(-m // s)
    top = max((oh - 1) * s + k - n, 0) // 2
    left = max((ow - 1) * s + k - m, 0) // 2
    out = np.empty(x.shape[:-2] + (oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = max(i * s - top, 0), max(j * s - left, 0)
            win = x[..., r0:i * s - top + k, c0:j * s - left + k]
            out[..., i, j] = win.max((-2, -1)) if kind == "maxpool" else win.mean((-2, -1))
    return out


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
@pytest.mark.parametrize("size, pool, strides", [
    (28, 3, None), (14, 4, None), (7, 3, None), (13, 5, None), (7, 2, None), (28, 2, None),
    (28, 3, 2), (28, 2, 1), (7, 3, 1), (13, 3, 2), (14, 5, 3), (6, 2, 4)])
def test_same_pooling_pads_where_keras_pads(kind, size, pool, strides):
    torch.manual_seed(0)
    layers = [{"type": "conv2d", "filters": 2, "kernel": 1}, {"type": kind, "pool": pool,
                                                               "padding": "same",
                                                               "strides": strides or pool}]
    net = models.build([*layers, {"type": "flatten"}, {"type": "dense", "units": 10}],
                       input_shape=(1, size, size))
    x = torch.randn(3, 1, size, size)
    features = net.module[0](x)
    pooled = net.module[1:-2](features)
    expected = _tf_same_pool(features.detach().numpy(), pool, kind, strides)
    assert pooled.shape[-2:] == expected.shape[-2:]
    np.testing.assert_allclose(pooled.detach().numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layers, message", [
    ([{"type": "leaky_relu", "alpha": -0.5}, *HEAD], "alpha .* must not be negative"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "sigmoid"}],
     r"layer 1 \(dense\): the last layer's activation must be softmax \(or linear: logits\)"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10}, {"type": "relu"}],
     r"layer 2 \(relu\): the last layer's activation must be softmax"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10}, {"type": "leaky_relu"}],
     r"layer 2 \(leaky_relu\): the last layer's activation must be softmax"),
])
def test_a_net_about_to_train_meets_rules_a_saved_run_need_not(layers, message):
    with pytest.raises(SpecError, match=message):
        models.check_trainable(layers)
    assert models.build(layers).params > 0  # a run trained before these rules still loads


def test_leaky_relu_takes_keras_3s_name_for_its_slope():
    net = models.build([{"type": "flatten"}, {"type": "dense", "units": 10},
                        {"type": "leaky_relu", "negative_slope": 0.1},
                        {"type": "dense", "units": 10, "activation": "softmax"}])
    assert [m.negative_slope for m in net.module.modules()
            if isinstance(m, torch.nn.LeakyReLU)] == [0.1]


def test_check_trainable_leaves_bad_values_to_build():
    layers = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": ["softmax"]}]
    models.check_trainable(layers)  # not its business: build names the type
    with pytest.raises(SpecError, match=r"activation must be of type str, got \['softmax'\]"):
        models.build(layers)
