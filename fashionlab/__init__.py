"""fashionlab: build, train, evaluate and compare image classifiers on Fashion-MNIST.

    import fashionlab
    run = fashionlab.train("weil-fc", flags={"train.epochs": 2})
    print(fashionlab.load_run(run).metrics["test_accuracy"])
    fashionlab.load_run(run).plot()                 # figures into RUN/plots
    print(fashionlab.compare([run, other_run]))     # accuracy intervals, McNemar tests
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


def callable_module(name: str) -> None:
    """Let submodule `fashionlab.X` be called as its function X.

    Importing a submodule rebinds the package attribute of that name to the module, which
    would break `fashionlab.train(...)` or `fashionlab.compare(...)` once anything imported
    fashionlab.train or fashionlab.compare; a callable module works in every import order.
    """
    import sys
    import types

    function = name.rsplit(".", 1)[1]

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function)(*args, **kwargs)

    sys.modules[name].__class__ = CallableModule


def __getattr__(name: str):
    """`fashionlab.compare(runs)`: loads the submodule on first use (PEP 562)."""
    if name == "compare":
        import importlib

        return importlib.import_module("fashionlab.compare")
    raise AttributeError(f"module 'fashionlab' has no attribute {name!r}")
