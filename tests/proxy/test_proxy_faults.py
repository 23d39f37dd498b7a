"""Faults with a real model server: it stops, it comes back, many clients at once."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving.server import start_server

IMAGE = "frankfurt_000000_000294"
SEGMENTATION = f"/api/v1/images/{IMAGE}/segmentation"


@pytest.mark.slow
def test_serving_stop_gives_503_and_restart_recovers_without_restarting_the_proxy(
        models_dir, proxy_app_factory):
    server = start_server(models_dir, grpc_port=0, rest_port=None)
    port = server.grpc_port
    try:
        client = proxy_app_factory(f"127.0.0.1:{port}").test_client()
        assert client.get(SEGMENTATION).status_code == 200
        assert client.get("/readyz").status_code == 200
    finally:
        server.stop()

    for path in (SEGMENTATION, f"/api/v1/images/{IMAGE}/prediction.png", "/readyz"):
        started = time.monotonic()
        response = client.get(path)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, (path, response.data[:200])
        error = response.get_json()["error"]
        assert error in ("model server unavailable", "model server unreachable"), error
        assert response.headers["Retry-After"]
        assert elapsed < 3.0, f"{path} took {elapsed:.2f} s to report the outage"
    # Files that do not need the model keep working while it is down.
    assert client.get(f"/api/v1/images/{IMAGE}/ground_truth.png").status_code == 200
    assert client.get("/healthz").status_code == 200

    server = start_server(models_dir, grpc_port=port, rest_port=None)
    try:
        # Same proxy app, same gateway object: the very next requests succeed.
        assert client.get("/readyz").status_code == 200
        response = client.get(SEGMENTATION)
        assert response.status_code == 200, response.data[:200]
        assert response.get_json()["model"]["version"] == 1
    finally:
        server.stop()


@pytest.mark.slow
def test_eight_concurrent_clients_get_consistent_answers(app, live_server):
    ids = [image["image_id"] for image in
           app.test_client().get("/api/v1/images?limit=1000").get_json()["images"]
           if not image["image_id"].startswith("evil")]
    expected = {image_id: app.test_client().get(
        f"/api/v1/images/{image_id}/segmentation").get_json()["prediction"] for image_id in ids}

    with live_server(app) as server:
        def worker(index: int) -> list[str]:
            problems = []
            with requests.Session() as session:
                for step in range(6):
                    image_id = ids[(index + step) % len(ids)]
                    response = session.get(f"{server.url}/api/v1/images/{image_id}/segmentation",
                                           timeout=30)
                    if response.status_code != 200:
                        problems.append(f"{image_id}: {response.status_code} {response.text[:100]}")
                    elif response.json()["prediction"] != expected[image_id]:
                        problems.append(f"{image_id}: a different mask under load")
            return problems

        with ThreadPoolExecutor(8) as pool:
            problems = [p for result in pool.map(worker, range(8)) for p in result]
    assert problems == []
