"""`fashionlab serve`: the API through FastAPI's TestClient, the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest
from PIL import Image

from fashionlab.inference import load_trained
from fashionlab.serve import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_trained(tiny_run)


@pytest.fixture(scope="module")
def client(trained):
    from fastapi.testclient import TestClient

    return TestClient(create_app(trained, max_upload=50_000))


def png(h: int = 120, w: int = 80) -> bytes:
    g = np.full((h, w), 235, np.uint8)
    g[10:h - 10, 20:w - 20] = 40
    out = io.BytesIO()
    Image.fromarray(g).save(out, format="PNG")
    return out.getvalue()


def test_health_and_page(client, trained):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["classes"] == list(trained.classes)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text and "fetch(\"predict\"" in page.text


def test_predict_round_trip(client, trained):
    r = client.post("/predict", files={"file": ("../../etc/shoe.png", png(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"file", "label", "class", "probabilities", "input_png"}
    assert body["file"] == "shoe.png"
    assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-4
    assert body["class"] == trained.classes[body["label"]]
    seen = Image.open(io.BytesIO(base64.b64decode(body["input_png"].split(",", 1)[1])))
    image = np.array(seen)
    assert image.shape == (28, 28) and image[0, 0] == 0 and image[14, 14] == 255
    expected = trained.probabilities(image[None])[0]
    assert np.abs(np.array(body["probabilities"]) - expected).max() < 1e-5


def test_bad_uploads_are_refused(client):
    r = client.post("/predict", files={"file": ("notes.txt", b"just text", "text/plain")})
    assert r.status_code == 400 and "not a readable image" in r.json()["detail"]
    r = client.post("/predict", files={"file": ("flat.png", png(10, 10)[:60], "image/png")})
    assert r.status_code == 400
    r = client.post("/predict", files={"other": ("x.png", png(), "image/png")})
    assert r.status_code == 400 and "'file'" in r.json()["detail"]
    big = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(big).save(out, format="BMP")                 # 90 KB > the 50 KB limit
    r = client.post("/predict", files={"file": ("big.bmp", out.getvalue(), "image/bmp")})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


@pytest.fixture(scope="module")
def server(trained):
    """A real uvicorn server on a free localhost port, in a thread, for the browser."""
    import uvicorn

    from fashionlab.serve import listen

    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(trained), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)
    sock.close()


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--window-size=960,720",
             "--virtual-time-budget=8000", *args],
            capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@needs_chromium
def test_page_renders_and_predicts_in_chromium(server, trained, tmp_path):
    shot = tmp_path / "serve.png"
    chromium(f"--screenshot={shot}", server + "#demo")
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (720, 960)
    assert image.std() > 20                        # not a blank page
    dom = chromium("--dump-dom", server + "#demo").stdout
    names = re.findall(r'<div class="bar"><span class="name">([^<]*)</span>', dom)
    assert len(names) == 3 and set(names) <= set(trained.classes), dom[-3000:]
    assert 'src="data:image/png;base64,' in dom
    assert re.search(r'<p id="error" role="alert"></p>', dom)


def test_a_port_in_use_or_out_of_range_is_one_line(tiny_run, capsys):
    from fashionlab import serve
    from fashionlab.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_run), "--port", str(port)]) == 2
        assert capsys.readouterr().err == (
            f"fashionlab: error: cannot listen on 127.0.0.1:{port}: Address already in use\n")
    serve.listen("127.0.0.1", port).close()  # free again: no error
    with pytest.raises(SystemExit) as done:
        main(["serve", str(tiny_run), "--port", "99999"])
    assert done.value.code == 2
    assert "argument --port: invalid port value: '99999'" in capsys.readouterr().err


def test_serve_on_port_0_names_the_port_it_took_and_stops_on_ctrl_c(tiny_run):
    import os
    import signal
    import sys
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "fashionlab", "serve", str(tiny_run),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"on http://127\.0\.0\.1:(\d+) ", line).group(1))
        assert port > 0
        for _ in range(100):  # the line comes just before uvicorn accepts
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                time.sleep(0.1)
        assert b"<html" in page.lower()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130  # as every command stopped by Ctrl-C
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
