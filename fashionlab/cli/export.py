"""fashionlab export RUN --format onnx|torchscript -o FILE"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained model as ONNX or TorchScript",
                       description="Export a finished run as one file. The model takes float32 "
                       "pixels (N, 1, 28, 28) in 0..255 (normalisation is inside) and returns "
                       "logits and probabilities; the batch size is free.")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--format", choices=("onnx", "torchscript"),
                   help="default: from FILE's suffix, .onnx or .pt (.pth, .ts) for TorchScript")
    p.add_argument("-o", "--output", "--out", dest="out", metavar="FILE", required=True,
                   help="file to write (--out: the older name)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab import export

    out = export.export(args.run, args.out, args.format)
    if args.quiet:
        return 0
    fmt = export.file_format(out, args.format)
    extra = f", opset {export.OPSET}" if fmt == "onnx" else ""
    print(f"wrote {out} ({fmt}{extra}, {out.stat().st_size / 1024:.0f} KiB)")
    print(f"input:  {export.INPUT}  float32 (N, 1, 28, 28), pixels 0..255, light on black")
    print(f"output: {', '.join(export.OUTPUTS)}  float32 (N, 10)")
    return 0
