"""Fixtures of the proxy tests: a raw Cityscapes tree, its manifest, a tiny exported model served
by the real `cityseg-serve` server, and the Flask `app` / `client` (flaskr style).

Everything is real and small: PNG files on disk, a SavedModel exported through
`training.export.export_model`, a gRPC server on a free localhost port.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg import vocabulary as V
from polling import wait_until

MODEL_NAME = "tiny"
SIZE = (96, 192)  # height, width of every synthetic raw image
# (split, city, seq, frame); one test image has no label, as in the real test split.
IMAGES = [
    ("train", "aachen", 0, 19),
    ("train", "bad-honnef", 1, 42),
    ("val", "frankfurt", 0, 294),
    ("val", "frankfurt", 1, 7),
    ("val", "lindau", 3, 100),
    ("test", "berlin", 0, 1),
]
UNLABELLED = "berlin_000000_000001"
# Escapes: an entry whose image lies behind a symlink leading out of the raw root, and an entry
# whose manifest path climbs out with '..'. Both are valid ids; neither file may ever be served.
SYMLINK_ID = "evil_000000_000001"
DOTDOT_ID = "evil_000000_000002"
SECRET = b"TOP-SECRET-CONTENT-0123456789"


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_label(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A street-like labelIds mask: sky, buildings, trees, road, sidewalk, a car, a person."""
    label = np.full((height, width), 23, np.uint8)                     # sky
    horizon = height // 3 + int(rng.integers(-4, 5))
    label[horizon:, :] = 11                                            # building
    tree = int(rng.integers(0, width // 2))
    label[horizon - 6:height // 2 + 8, tree:tree + width // 6] = 21    # vegetation
    road = height * 3 // 5
    label[road:, :] = 7                                                # road
    label[road:road + 6, : width // 4] = 8                             # sidewalk
    car = int(rng.integers(width // 4, width * 2 // 3))
    label[road + 4:road + 20, car:car + 36] = 26                       # car
    label[road - 14:road + 10, car - 14:car - 8] = 24                  # person
    label[horizon:road, width - 8:width - 5] = 17                      # pole
    label[height - 6:, :] = 1                                          # ego vehicle (void)
    label[: 3, : 10] = int(rng.integers(0, V.NUM_LABEL_IDS))           # any valid id
    return label


def synthetic_image(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """A photo whose colours follow the label's Cityscapes colours, plus noise."""
    colors = np.zeros((256, 3), np.float32)
    for entry in V.LABELS:
        if entry.id >= 0:
            colors[entry.id] = entry.color
    noise = rng.normal(0, 12, label.shape + (3,))
    return np.clip(colors[label] + noise, 0, 255).astype(np.uint8)


def write_raw_tree(root: Path, outside: Path) -> list[dict]:
    """Writes the raw images and labels under `root`; returns the manifest rows."""
    rng = np.random.default_rng(7)
    rows = []
    for split, city, seq, frame in IMAGES:
        image_id = f"{city}_{seq:06d}_{frame:06d}"
        label = synthetic_label(rng, *SIZE)
        image_rel = V.image_path(split, image_id)
        (root / image_rel).parent.mkdir(parents=True, exist_ok=True)
        (root / image_rel).write_bytes(png_bytes(synthetic_image(rng, label)))
        label_rel = None
        if image_id != UNLABELLED:
            label_rel = V.label_path(split, image_id)
            (root / label_rel).parent.mkdir(parents=True, exist_ok=True)
            (root / label_rel).write_bytes(png_bytes(label))
        rows.append({"image_id": image_id, "split": split, "city": city,
                     "image": str(image_rel), "label": None if label_rel is None else str(label_rel),
                     "height": SIZE[0], "width": SIZE[1]})

    # The secret lives outside the root, as a real PNG so that nothing fails "by luck".
    outside.mkdir(parents=True, exist_ok=True)
    secret_png = png_bytes(np.zeros((4, 4), np.uint8)) + SECRET
    secret_rel = Path(V.image_path("val", SYMLINK_ID))
    (outside / secret_rel.name).write_bytes(secret_png)
    (outside / "secret.txt").write_bytes(SECRET)
    link_dir = root / secret_rel.parent
    link_dir.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, link_dir, target_is_directory=True)
    rows.append({"image_id": SYMLINK_ID, "split": "val", "city": "evil",
                 "image": str(secret_rel), "label": str(secret_rel), "height": 4, "width": 4})
    dotdot = os.path.relpath(outside / "secret.txt", root)
    rows.append({"image_id": DOTDOT_ID, "split": "val", "city": "evil",
                 "image": dotdot, "label": dotdot, "height": 4, "width": 4})
    return rows


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """(data_dir, raw_root, manifest rows) of the synthetic tree."""
    base = tmp_path_factory.mktemp("proxy-data")
    raw_root, data_dir = base / "raw", base / "data"
    raw_root.mkdir()
    data_dir.mkdir()
    rows = write_raw_tree(raw_root, base / "outside")
    with open(data_dir / V.MANIFEST_FILE, "w") as manifest:
        for row in rows:
            manifest.write(json.dumps(row) + "\n")
    return data_dir, raw_root, rows


def build_tiny_model():
    """A 1x1 convolution that picks the nearest palette colour: argmax of 2 x.c - |c|^2.

    The synthetic photos are drawn in Cityscapes label colours, most of which are their
    category's palette colour, so the masks look right and the metrics are far from trivial.
    """
    import keras

    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(V.NUM_CATEGORIES, 1)
    model = keras.Model(inputs, conv(inputs))
    palette = np.asarray(V.PALETTE, np.float32) / 255.0  # [8, 3]
    kernel = (2.0 * palette.T)[np.newaxis, np.newaxis]   # [1, 1, 3, 8]
    conv.set_weights([kernel, -np.square(palette).sum(axis=1)])
    return model


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """MODELS/ with the tiny model exported as version 1."""
    from training.export import export_model

    root = tmp_path_factory.mktemp("proxy-models")
    export_model(build_tiny_model(), root, MODEL_NAME, stride=1, version=1)
    return root


def start_serving(models_dir, grpc_port: int = 0):
    """Starts the real model server in-process (gRPC on `grpc_port`, REST anywhere)."""
    from serving.server import start_server

    return start_server(models_dir, grpc_port=grpc_port, rest_port=0)


@pytest.fixture(scope="session")
def serving(models_dir):
    """The shared model server; tests that stop a server start their own."""
    handle = start_serving(models_dir)
    yield handle
    handle.stop()


def app_config(dataset, target: str, **extra) -> dict:
    data_dir, raw_root, _ = dataset
    return {"TESTING": True, "DATA_DIR": str(data_dir), "RAW_ROOT": str(raw_root),
            "SERVING": target, "MODEL": MODEL_NAME, "SERVING_TIMEOUT_S": 10.0, **extra}


@pytest.fixture
def app(dataset, serving):
    from proxy.app import create_app

    app = create_app(app_config(dataset, f"127.0.0.1:{serving.grpc_port}"))
    yield app
    app.extensions["cityseg_gateway"].close()


@pytest.fixture
def client(app):
    return app.test_client()


class LiveServer:
    """A Flask app served for real by werkzeug in a thread (for browsers and load)."""

    def __init__(self, app):
        from werkzeug.serving import make_server

        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "LiveServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


class GunicornProxy:
    """`cityseg-proxy` (gunicorn) in a subprocess against the model server `serving`.

    `with GunicornProxy(dataset, serving, port, *flags) as proxy:` returns once /healthz
    answers 200; on leaving, SIGTERM, and the exit must be clean. `proxy.output` then holds its
    log (unless `output` named a file to write it to).
    """

    def __init__(self, dataset, serving, port: int, *flags: str, output=subprocess.PIPE):
        data_dir, raw_root, _ = dataset
        self.url = f"http://127.0.0.1:{port}"
        self.output = ""
        self._argv = [sys.executable, "-m", "proxy.cli", "--data-dir", str(data_dir),
                      "--raw-root", str(raw_root), "--serving",
                      f"127.0.0.1:{serving.grpc_port}", "--model", MODEL_NAME,
                      "--port", str(port), *flags]
        self._stdout = output
        self.process = None

    def __enter__(self) -> "GunicornProxy":
        import requests

        self.process = subprocess.Popen(self._argv, stdout=self._stdout,
                                        stderr=subprocess.STDOUT, text=True)

        def healthy() -> bool:
            assert self.process.poll() is None, (self.process.communicate()[0] or "")[-2000:]
            try:
                # A connection made while the worker still boots waits in the listen queue.
                return requests.get(f"{self.url}/healthz", timeout=10).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                return False

        wait_until(healthy, 90, 0.5)
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.output = self.process.communicate(timeout=30)[0] or ""
        assert self.process.returncode == 0, self.output[-2000:]


@pytest.fixture(scope="session")
def gunicorn_proxy():
    """Returns `GunicornProxy`: `with gunicorn_proxy(dataset, serving, port) as proxy: ...`."""
    return GunicornProxy


@pytest.fixture(scope="session")
def live_server():
    """Returns `LiveServer`: `with live_server(app) as server: requests.get(server.url)`."""
    return LiveServer


@pytest.fixture
def proxy_app_factory(dataset):
    """Builds more apps on the same data: `proxy_app_factory(target, **config)`."""
    from proxy.app import create_app

    built = []

    def build(target: str, **extra):
        app = create_app(app_config(dataset, target, **extra))
        built.append(app)
        return app

    yield build
    for app in built:
        app.extensions["cityseg_gateway"].close()


class Exposition:
    """A Prometheus exposition, parsed by prometheus_client's own parser."""

    def __init__(self, text: str):
        from prometheus_client.parser import text_string_to_metric_families

        self.text = text
        self.samples = [(sample.name, sample.labels, sample.value)
                        for family in text_string_to_metric_families(text)
                        for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (0 when there is none, as for a counter)."""
        return next((v for n, l, v in self.samples if n == name and l == labels), 0.0)

    def label_values(self, name: str, label: str) -> set[str]:
        return {l[label] for n, l, _ in self.samples if n == name}


@pytest.fixture(scope="session")
def exposition():
    """Returns `Exposition`: `exposition(text).value("name_total", method="GET")`."""
    return Exposition


@pytest.fixture(scope="session")
def secret() -> bytes:
    """Bytes stored outside the raw root that must never appear in a response."""
    return SECRET


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()
