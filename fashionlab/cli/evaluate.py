"""fashionlab evaluate RUN"""

from __future__ import annotations

import argparse

from fashionlab.cli import add_data_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy, confusion matrix",
                       description="Re-evaluate a finished run's weights on the test set.")
    p.add_argument("run", metavar="RUN", help="run folder")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from fashionlab import data, metrics
    from fashionlab.inference import load_trained, loss_and_accuracy

    trained = load_trained(args.run)
    ds = data.of_run(trained.run.info, trained.config, args.data_dir)
    z = trained.logits(ds.test_x)
    labels = torch.from_numpy(ds.test_y.astype("int64"))
    loss, acc = loss_and_accuracy(z, labels)
    cm = metrics.confusion_matrix(ds.test_y.astype(int), z.argmax(1).numpy())
    print(f"run:           {trained.run.path}")
    print(f"test accuracy: {acc:.4f}  ({int(cm.trace())}/{cm.sum()})")
    print(f"test loss:     {loss:.4f}")
    print("\nper-class accuracy:")
    for name, value in zip(trained.classes, metrics.per_class_accuracy(cm), strict=True):
        print(f"  {name:<13} {value:.4f}" if value == value else f"  {name:<13} n/a "
              "(no test images)")
    print("\nconfusion matrix (rows: true class):")
    print(metrics.format_confusion(cm, trained.classes))
    return 0
