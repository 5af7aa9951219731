"""fashionlab serve RUN [--host 127.0.0.1] [--port 8000]"""

from __future__ import annotations

import argparse


def port(text: str) -> int:
    value = int(text)  # argparse turns a ValueError into "invalid port value"
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a web page to try a trained model on your photos",
                       description="Serve a page where you upload, drag or draw a garment and "
                       "see the model's top classes. Listens on localhost unless --host says "
                       "otherwise.")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=port, default=8000, help="port (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fashionlab.serve import serve

    serve(args.run, args.host, args.port)
    return 0
