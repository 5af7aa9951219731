"""A small web app to try a trained model: upload, drag or draw a garment, see what it thinks.

    fashionlab serve RUN            # then open http://127.0.0.1:8000

`GET /` is one self-contained page (fashionlab/serve_page/index.html), `POST /predict` takes a
multipart image (field `file`) and answers the same JSON as `predict --json` plus the 28x28
input the model saw, `GET /health` says which run is loaded. FastAPI and uvicorn are the
optional `serve` extra, imported only here.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and `Request` is imported inside create_app so fastapi stays optional.
import base64
import socket
from importlib import resources
from pathlib import Path

from fashionlab import photos
from fashionlab.errors import UserError
from fashionlab.inference import Trained, load_trained

MAX_UPLOAD = 10 * 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # room for the multipart headers around the file itself


def page() -> str:
    return resources.files("fashionlab").joinpath("serve_page/index.html").read_text("utf-8")


def create_app(trained: Trained, max_upload: int = MAX_UPLOAD):
    """The FastAPI app around one loaded model (a function so tests can build it in-process)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="fashionlab", docs_url=None, redoc_url=None, openapi_url=None)
    html = page()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return html

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "run": trained.run.path.name, "classes": list(trained.classes),
                "max_upload_bytes": max_upload}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise HTTPException(411, "send the image with a Content-Length header")
        if int(length) > max_upload + MULTIPART_SLACK:
            raise HTTPException(413, f"upload too large: the limit is {max_upload} bytes")
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "send the image as a multipart form field named 'file'")
        raw = await upload.read(max_upload + 1)
        if len(raw) > max_upload:
            raise HTTPException(413, f"upload too large: the limit is {max_upload} bytes")
        name = Path(upload.filename or "upload").name
        try:
            image = photos.from_bytes(raw, name)
        except UserError as e:
            raise HTTPException(400, str(e)) from None
        result = photos.prediction(name, trained.probabilities(image[None])[0], trained.classes)
        png = base64.b64encode(photos.to_png(image)).decode("ascii")
        return {**result, "input_png": f"data:image/png;base64,{png}"}

    return app


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before saying "serving": a port in use or an address this
    machine does not have is then one line, not uvicorn's log after our own success message;
    port 0 takes a free port, which the line then names."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the run and serve until Ctrl-C (exit 130, as for every command)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("serve needs the web extra: pip install 'fashionlab[serve]'") from None
    app = create_app(load_trained(run))
    with listen(host, port) as sock:
        shown = f"[{host}]" if ":" in host else host
        print(f"fashionlab: serving {run} on http://{shown}:{sock.getsockname()[1]}  "
              "(Ctrl-C stops)", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
