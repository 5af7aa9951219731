"""The tf.keras half of bench/vs_keras.py: train one model described in JSON, print JSON results.

    bench/.venv-keras/bin/python bench/keras_side.py < job.json

Runs in its own venv (tensorflow-cpu), so it imports nothing from fashionlab but the
NumPy-only data module: both sides read the same images, split and normalisation.
The layer tables are fashionlab's, translated to the Keras layers they were written from.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from fashionlab import data  # noqa: E402


def keras_layer(spec: dict, keras):
    """One fashionlab layer table -> the Keras layer it stands for."""
    L = keras.layers
    kind = spec["type"]
    kernel = {"activation": spec.get("activation", "linear"),
              "kernel_initializer": spec.get("kernel_initializer", "glorot_uniform"),
              "use_bias": spec.get("use_bias", True)}
    if spec.get("l1") or spec.get("l2"):
        kernel["kernel_regularizer"] = keras.regularizers.L1L2(spec.get("l1", 0.0),
                                                               spec.get("l2", 0.0))
    if spec.get("kernel_constraint"):
        kernel["kernel_constraint"] = spec["kernel_constraint"]
    if kind == "flatten":
        return L.Flatten()
    if kind == "dense":
        return L.Dense(spec["units"], **kernel)
    if kind == "conv2d":
        return L.Conv2D(spec["filters"], spec["kernel"], strides=spec.get("strides", 1),
                        padding=spec.get("padding", "valid"), **kernel)
    if kind in ("maxpool", "avgpool"):
        pool = L.MaxPooling2D if kind == "maxpool" else L.AveragePooling2D
        return pool(spec.get("pool", 2), strides=spec.get("strides") or None,
                    padding=spec.get("padding", "valid"))
    if kind == "global_avgpool":
        return L.GlobalAveragePooling2D()
    if kind == "dropout":
        return L.Dropout(spec["rate"])
    if kind == "batchnorm":
        return L.BatchNormalization(momentum=spec.get("momentum", 0.99),
                                    epsilon=spec.get("epsilon", 1e-3))
    if kind == "leaky_relu":
        return L.LeakyReLU(negative_slope=spec.get("alpha", 0.3))
    return L.Activation(kind)


def optimizer(train: dict, keras):
    lr = train["lr"] or (0.01 if train["optimizer"] == "sgd" else 0.001)
    if train["optimizer"] == "sgd":
        return keras.optimizers.SGD(lr, momentum=train["momentum"], nesterov=train["nesterov"])
    if train["optimizer"] == "rmsprop":
        return keras.optimizers.RMSprop(lr, rho=0.9, momentum=train["momentum"])
    return keras.optimizers.Adam(lr)


def batches(x: np.ndarray, y: np.ndarray, job: dict, tf):
    """Training batches in a new order every epoch, the same orders for the same seed.

    Not model.fit(x, y, shuffle=True): once a global seed is set (set_random_seed), Keras
    3.15 on TensorFlow 2.21 draws the same permutation every epoch (bench/keras_order.py), so
    the net saw one batch order 10-13 times; it fit the training set faster and tested up to
    1.6 points lower (docs/speed.md). Otherwise the pipeline of Keras's own array adapter:
    shuffled indices, batched, gathered.
    """
    xt, yt = tf.constant(x), tf.constant(y.astype(np.int64))
    order = tf.data.Dataset.range(len(y)).shuffle(len(y), seed=job["seed"],
                                                    reshuffle_each_iteration=True)
    return (order.batch(job["train"]["batch_size"])
            .map(lambda i: (tf.gather(xt, i), tf.gather(yt, i)))
            .prefetch(tf.data.AUTOTUNE))


def main() -> None:
    job = json.load(sys.stdin)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
    tf.keras.utils.set_random_seed(job["seed"])
    keras = tf.keras
    ds = data.load(job["data_dir"], job["dataset"])
    train_idx, val_idx = data.split(len(ds.train_y), job["val"], job["seed"])
    a, b = data.normalizer(job["normalize"])

    def prep(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) * a + b)[..., None]

    model = keras.Sequential([keras.Input((28, 28, 1))]
                             + [keras_layer(s, keras) for s in job["layers"]])
    model.compile(optimizer=optimizer(job["train"], keras),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    model.fit(batches(prep(ds.train_x[train_idx]), ds.train_y[train_idx], job, tf),
              epochs=job["epochs"], verbose=0,
              validation_data=(prep(ds.train_x[val_idx]), ds.train_y[val_idx].astype(np.int64)),
              callbacks=[Timer()])
    _, acc = model.evaluate(prep(ds.test_x), ds.test_y.astype(np.int64), batch_size=1000,
                            verbose=0)
    print(json.dumps({"seconds": seconds, "test_accuracy": float(acc),
                      "params": int(model.count_params()), "tensorflow": tf.__version__}))


if __name__ == "__main__":
    main()
