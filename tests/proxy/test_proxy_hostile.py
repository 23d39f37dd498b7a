"""Hostile ids and escaping paths: always a 4xx JSON error, never a file's contents.

Each request is made twice: through Flask's test client, and as raw bytes on the wire to a real
HTTP server (http.client sends the path exactly as written, percent-escapes and all).
"""
from __future__ import annotations

import http.client
import json
import os

import pytest

from cityseg import vocabulary as V
from proxy.resolver import ImageNotFound, ImageRecord, Resolver

SUFFIXES = ("segmentation", "prediction.png", "ground_truth.png", "image.png")
HOSTILE_IDS = [
    "..",
    "../",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fsecret.txt",
    "%252e%252e%252f%252e%252e%252fsecret.txt",
    "%00",
    "frankfurt_000000_000294%00",
    "frankfurt_000000_000294%00.png",
    "frankfurt_000000_000294%0a",
    "frankfurt_000000_000294%2f..%2f..%2f..%2fetc%2fpasswd",
    "%2fetc%2fpasswd",
    "%ef%bd%86rankfurt_000000_000294",  # full-width 'f'
    "a" * 5000,
    "frankfurt_" + "0" * 5000,
]
ESCAPING_IDS = ["evil_000000_000001", "evil_000000_000002"]  # symlink out, '..' in manifest


def check_refused(status: int, content_type: str, body: bytes, secret: bytes) -> None:
    assert 400 <= status < 500, (status, body[:200])
    assert content_type.startswith("application/json"), content_type
    assert set(json.loads(body)) == {"error"}
    assert secret not in body and b"root:" not in body and b"\x89PNG" not in body


@pytest.fixture(scope="module")
def wire(live_server, dataset, serving):
    """A real HTTP server running the proxy; yields a raw GET function."""
    from proxy.app import create_app

    data_dir, raw_root, _ = dataset
    app = create_app({"DATA_DIR": str(data_dir), "RAW_ROOT": str(raw_root),
                      "SERVING": f"127.0.0.1:{serving.grpc_port}", "MODEL": "tiny"})
    with live_server(app) as server:
        port = int(server.url.rsplit(":", 1)[1])

        def get(path: str):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.putrequest("GET", path, skip_accept_encoding=True)
                connection.endheaders()
                response = connection.getresponse()
                return response.status, response.getheader("Content-Type", ""), response.read()
            finally:
                connection.close()

        yield get


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("image_id", HOSTILE_IDS, ids=lambda s: s[:40])
def test_hostile_id_is_refused(client, wire, secret, image_id, suffix):
    path = f"/api/v1/images/{image_id}/{suffix}"
    response = client.get(path)
    check_refused(response.status_code, response.content_type, response.data, secret)
    check_refused(*wire(path), secret)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("image_id", ESCAPING_IDS)
def test_manifest_paths_escaping_the_root_are_refused(client, wire, secret, image_id, suffix):
    path = f"/api/v1/images/{image_id}/{suffix}"
    response = client.get(path)
    assert response.status_code == 404
    check_refused(response.status_code, response.content_type, response.data, secret)
    check_refused(*wire(path), secret)


@pytest.mark.parametrize("path", [
    "/api/v1/images/../../../../etc/passwd",
    "/api/v1/images/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/../../../../etc/passwd",
    "/static/%2e%2e%2f%2e%2e%2fapp.py",
])
def test_traversal_outside_the_id_routes_is_refused(wire, secret, path):
    status, content_type, body = wire(path)
    check_refused(status, content_type, body, secret)
    assert b"import" not in body


def test_symlinks_that_stay_inside_the_root_are_followed(tmp_path):
    # The guard is "inside the root after realpath", not "no symlinks": a tree made of
    # links within the root (as some dataset mirrors are) still works.
    root = tmp_path / "raw"
    real = root / "store" / "photo.png"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"\x89PNG inside")
    image_rel = V.image_path("val", "lindau_000000_000001")
    (root / image_rel).parent.mkdir(parents=True)
    os.symlink(real, root / image_rel)
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"\x89PNG outside")
    escape_rel = V.image_path("val", "lindau_000000_000002")
    os.symlink(outside, root / escape_rel)
    resolver = Resolver([
        ImageRecord("lindau_000000_000001", "val", "lindau", str(image_rel), None, 1, 1),
        ImageRecord("lindau_000000_000002", "val", "lindau", str(escape_rel), None, 1, 1),
    ], root)
    assert resolver.read_image(resolver.lookup("lindau_000000_000001")) == b"\x89PNG inside"
    with pytest.raises(ImageNotFound):
        resolver.read_image(resolver.lookup("lindau_000000_000002"))
