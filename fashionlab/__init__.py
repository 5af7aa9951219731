"""fashionlab: build, train, evaluate and compare image classifiers on Fashion-MNIST.

    import fashionlab
    run = fashionlab.train("weil-fc", flags={"train.epochs": 2})
    print(fashionlab.load_run(run).metrics["test_accuracy"])
"""

__version__ = "0.1.0"


def train(*args, **kwargs):
    """Train a recipe name, spec file or config dict; returns the run folder (see train.train)."""
    from fashionlab.train import train as _train

    return _train(*args, **kwargs)


def load_run(path, require_finished: bool = True):
    """Read a run folder back (config, history, metrics, predictions)."""
    from fashionlab.runs import load_run as _load_run

    return _load_run(path, require_finished)
