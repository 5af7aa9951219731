"""Does tf.keras show the net a new batch order every epoch? The check behind keras_side.batches.

    bench/.venv-keras/bin/python bench/keras_order.py

Trains a one-weight model for 3 epochs on the numbers 0..19 in batches of 5, with the global
seed set as bench/keras_side.py sets it, and prints the first number of each batch per epoch:
once through model.fit(x, y, shuffle=True), once through keras_side.batches. Exits 1 if
keras_side.batches repeats an epoch's order (then the comparison in vs_keras.py is unfair).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402


def orders(fit_args: tuple, fit_kwargs: dict, keras, tf, epochs: int = 3) -> list[list[int]]:
    """The first item of each batch the model trained on, per epoch."""
    seen: list[int] = []

    class Record(keras.layers.Layer):
        def call(self, x, training=None):
            if training:
                tf.py_function(lambda v: seen.append(int(v.numpy()[0, 0])) or 0, [x], tf.int32)
            return x

    model = keras.Sequential([keras.Input((1,)), Record(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(*fit_args, epochs=epochs, verbose=0, **fit_kwargs)
    per_epoch = len(seen) // epochs
    return [seen[i:i + per_epoch] for i in range(0, len(seen), per_epoch)]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    import keras_side
    import tensorflow as tf

    keras = tf.keras
    x = np.arange(20, dtype=np.float32)[:, None]
    tf.keras.utils.set_random_seed(0)
    by_fit = orders((x, x), {"batch_size": 5, "shuffle": True}, keras, tf)
    tf.keras.utils.set_random_seed(0)
    ours = orders((keras_side.batches(x, x[:, 0], {"seed": 0, "train": {"batch_size": 5}}, tf),),
                  {}, keras, tf)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print(f"model.fit(shuffle=True): {by_fit}")
    print(f"keras_side.batches:      {ours}")
    return 0 if len({tuple(o) for o in ours}) == len(ours) else 1


if __name__ == "__main__":
    sys.exit(main())
