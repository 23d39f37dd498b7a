"""Every route and every error code of the proxy, against a real model server."""
from __future__ import annotations

import base64
import io
import json
import random
import string
import zlib

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from cityseg import vocabulary as V
from proxy.telemetry import KNOWN_METHODS
from serving.client import ServingError, ServingNotFound, ServingTimeout, ServingUnavailable

LABELLED = "frankfurt_000000_000294"
UNLABELLED = "berlin_000000_000001"
UNKNOWN = "paris_000000_000000"
BASE = f"/api/v1/images/{LABELLED}"


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def official_ground_truth(raw_root, row) -> np.ndarray:
    """The remap computed from cityscapesscripts' own table, independent of our vocabulary."""
    label = decode_png((raw_root / row["label"]).read_bytes())
    table = np.zeros(256, np.uint8)
    for label_id, entry in id2label.items():
        if label_id >= 0:
            table[label_id] = entry.categoryId
    return table[label]


def row_for(dataset, image_id):
    return next(row for row in dataset[2] if row["image_id"] == image_id)


def assert_json_error(response, status):
    assert response.status_code == status, response.data[:300]
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in response.get_data(as_text=True)


# --- happy paths ---------------------------------------------------------------------------

@pytest.mark.parametrize("path, content_type", [
    ("/api/v1/images", "application/json"),
    ("/api/v1/images?split=val&city=frankfurt&limit=1&offset=1", "application/json"),
    (f"{BASE}/segmentation", "application/json"),
    (f"{BASE}/prediction.png", "image/png"),
    (f"{BASE}/prediction.png?style=color", "image/png"),
    (f"{BASE}/ground_truth.png", "image/png"),
    (f"{BASE}/ground_truth.png?style=color", "image/png"),
    (f"{BASE}/image.png", "image/png"),
    (f"/api/v1/images/{UNLABELLED}/segmentation", "application/json"),
    ("/healthz", "application/json"),
    ("/readyz", "application/json"),
    ("/openapi.json", "application/json"),
    ("/metrics", "text/plain"),
    ("/", "text/html"),
])
def test_route_answers(client, path, content_type):
    response = client.get(path)
    assert response.status_code == 200, response.data[:300]
    assert response.mimetype == content_type
    assert response.data


# --- error codes ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, status", [
    ("GET", "/api/v1/images?split=nope", 400),
    ("GET", "/api/v1/images?city=Frankfurt!", 400),
    ("GET", "/api/v1/images?limit=0", 400),
    ("GET", "/api/v1/images?limit=1001", 400),
    ("GET", "/api/v1/images?limit=ten", 400),
    ("GET", "/api/v1/images?limit=%C2%B2", 400),  # '²' passes str.isdigit()
    ("GET", "/api/v1/images?offset=-1", 400),
    ("GET", "/api/v1/images/not-an-id/segmentation", 400),
    ("GET", "/api/v1/images/Frankfurt_000000_000294/image.png", 400),
    ("GET", f"/api/v1/images/{UNKNOWN}/segmentation", 404),
    ("GET", f"/api/v1/images/{UNKNOWN}/prediction.png", 404),
    ("GET", f"/api/v1/images/{UNKNOWN}/ground_truth.png", 404),
    ("GET", f"/api/v1/images/{UNKNOWN}/image.png", 404),
    ("GET", f"/api/v1/images/{UNLABELLED}/ground_truth.png", 404),
    ("GET", f"{BASE}/prediction.png?style=neon", 400),
    ("GET", f"{BASE}/ground_truth.png?style=neon", 400),
    ("GET", "/no/such/route", 404),
    ("POST", "/healthz", 405),
    ("DELETE", f"{BASE}/segmentation", 405),
    ("PUT", "/api/v1/predict", 405),
    ("GET", "/api/v1/predict", 405),
])
def test_errors_are_json(client, method, path, status):
    response = client.open(path, method=method)
    assert_json_error(response, status)
    if status == 405:
        assert response.headers["Allow"]


def test_unexpected_error_is_a_json_500_without_traceback(proxy_app_factory, serving):
    app = proxy_app_factory(f"127.0.0.1:{serving.grpc_port}", TESTING=False)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals /etc/passwd")

    response = app.test_client().get("/boom")
    assert_json_error(response, 500)
    assert response.get_json() == {"error": "internal server error"}
    assert "secret" not in response.get_data(as_text=True)


# --- listing -------------------------------------------------------------------------------

def test_listing_filters_and_pages_follow_the_manifest(client, dataset):
    rows = dataset[2]
    everything = client.get("/api/v1/images?limit=1000").get_json()
    assert everything["total"] == len(rows)
    assert {i["image_id"] for i in everything["images"]} == {r["image_id"] for r in rows}
    assert everything["splits"] == {s: sum(r["split"] == s for r in rows) for s in V.SPLITS}
    assert everything["cities"] == sorted({r["city"] for r in rows})

    val = client.get("/api/v1/images?split=val&city=frankfurt").get_json()
    expected = sorted(r["image_id"] for r in rows
                      if r["split"] == "val" and r["city"] == "frankfurt")
    assert [i["image_id"] for i in val["images"]] == expected

    pages = [client.get(f"/api/v1/images?limit=3&offset={o}").get_json() for o in (0, 3, 6)]
    paged = [i["image_id"] for p in pages for i in p["images"]]
    assert paged == [i["image_id"] for i in everything["images"]]
    assert all(p["total"] == len(rows) and p["limit"] == 3 for p in pages)


# --- one image -----------------------------------------------------------------------------

def independent_metrics(truth: np.ndarray, pred: np.ndarray) -> tuple[float, dict]:
    valid = truth != V.VOID
    accuracy = float(((truth == pred) & valid).sum() / valid.sum())
    iou = {}
    for category in V.EVALUATED_CATEGORIES:
        t, p = (truth == category) & valid, (pred == category) & valid
        union = (t | p).sum()
        iou[V.CATEGORIES[category]] = None if union == 0 else float((t & p).sum() / union)
    return accuracy, iou


def test_segmentation_document(client, dataset):
    data_dir, raw_root, _ = dataset
    body = client.get(f"{BASE}/segmentation").get_json()
    assert body["image_id"] == LABELLED and body["split"] == "val"
    assert body["city"] == "frankfurt"
    assert body["model"] == {"name": "tiny", "version": 1}
    assert [c["name"] for c in body["categories"]] == list(V.CATEGORIES)

    prediction = decode_png(base64.b64decode(body["prediction"]))
    truth = decode_png(base64.b64decode(body["ground_truth"]))
    assert prediction.shape == truth.shape == (body["height"], body["width"])
    assert prediction.dtype == np.uint8 and prediction.max() < V.NUM_CATEGORIES
    # The tiny model follows colours, so it must find several categories, not one flat mask.
    assert len(np.unique(prediction)) >= 3
    np.testing.assert_array_equal(
        prediction, decode_png(client.get(f"{BASE}/prediction.png").data))
    np.testing.assert_array_equal(truth, official_ground_truth(raw_root, row_for(dataset, LABELLED)))

    accuracy, iou = independent_metrics(truth, prediction)
    metrics = body["metrics"]
    assert metrics["pixel_accuracy"] == pytest.approx(accuracy)
    assert set(metrics["iou"]) == set(iou)
    for name, value in iou.items():
        assert metrics["iou"][name] == (None if value is None else pytest.approx(value)), name
    defined = [v for v in iou.values() if v is not None]
    assert metrics["mean_iou"] == pytest.approx(sum(defined) / len(defined))
    assert metrics["all_pixels"]["pixels"] == truth.size


@pytest.mark.parametrize("image_id", [r[1] + f"_{r[2]:06d}_{r[3]:06d}" for r in [
    ("train", "aachen", 0, 19), ("train", "bad-honnef", 1, 42), ("val", "frankfurt", 0, 294),
    ("val", "frankfurt", 1, 7), ("val", "lindau", 3, 100)]])
def test_ground_truth_is_the_official_remap_pixel_for_pixel(client, dataset, image_id):
    raw_root = dataset[1]
    expected = official_ground_truth(raw_root, row_for(dataset, image_id))
    raw_label = decode_png((raw_root / row_for(dataset, image_id)["label"]).read_bytes())
    served = decode_png(client.get(f"/api/v1/images/{image_id}/ground_truth.png").data)
    assert served.shape == raw_label.shape  # full resolution, never resized
    np.testing.assert_array_equal(served, expected)
    colored = decode_png(client.get(f"/api/v1/images/{image_id}/ground_truth.png?style=color").data)
    np.testing.assert_array_equal(colored, np.asarray(V.PALETTE, np.uint8)[expected])


def test_image_png_is_the_raw_file(client, dataset):
    raw_root = dataset[1]
    expected = (raw_root / row_for(dataset, LABELLED)["image"]).read_bytes()
    assert client.get(f"{BASE}/image.png").data == expected


def test_unlabelled_image_has_prediction_but_no_ground_truth(client):
    body = client.get(f"/api/v1/images/{UNLABELLED}/segmentation").get_json()
    assert body["ground_truth"] is None and body["metrics"] is None
    assert decode_png(base64.b64decode(body["prediction"])).shape == (body["height"], body["width"])


def test_prediction_png_color_is_the_palette_of_the_ids(client):
    ids = decode_png(client.get(f"{BASE}/prediction.png").data)
    response = client.get(f"{BASE}/prediction.png?style=color")
    assert response.headers["X-Model-Name"] == "tiny"
    assert response.headers["X-Model-Version"] == "1"
    np.testing.assert_array_equal(decode_png(response.data), np.asarray(V.PALETTE, np.uint8)[ids])


# --- uploads -------------------------------------------------------------------------------

def upload(client, data: bytes, *, field="image", query=""):
    return client.post(f"/api/v1/predict{query}", content_type="multipart/form-data",
                       data={field: (io.BytesIO(data), "upload.png")})


def test_upload_gives_the_same_mask_as_the_id(client, dataset):
    raw = (dataset[1] / row_for(dataset, LABELLED)["image"]).read_bytes()
    response = upload(client, raw)
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["X-Model-Version"] == "1"
    np.testing.assert_array_equal(decode_png(response.data),
                                  decode_png(client.get(f"{BASE}/prediction.png").data))


def test_upload_jpeg(client):
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 50, 3), (70, 130, 180), np.uint8)).save(buffer, format="JPEG")
    response = upload(client, buffer.getvalue(), query="?style=color")
    assert response.status_code == 200
    assert decode_png(response.data).shape == (30, 50, 3)


def _truncated_png() -> bytes:
    return png_bytes(np.zeros((8, 8), np.uint8))[:20]


def _corrupt_png() -> bytes:
    # Well-formed chunks (so the proxy's header checks pass) whose pixel data is garbage: the
    # model server itself must reject it, with INVALID_ARGUMENT.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    header = png_bytes(np.zeros((8, 8, 3), np.uint8))[:33]  # signature and IHDR
    return header + chunk(b"IDAT", b"\x00garbage-not-a-zlib-stream" * 4) + chunk(b"IEND", b"")


@pytest.mark.parametrize("name, data, field, status", [
    ("missing field", b"\x89PNG", "other", 400),
    ("empty file", b"", "image", 400),
    ("text", b"hello, not an image", "image", 415),
    ("gif", b"GIF89a" + b"\x00" * 40, "image", 415),
    ("truncated header", _truncated_png(), "image", 400),
    ("corrupt pixels", _corrupt_png(), "image", 400),
])
def test_upload_errors(client, name, data, field, status):
    assert_json_error(upload(client, data, field=field), status)


def test_upload_over_pixel_budget_is_413(proxy_app_factory, serving):
    app = proxy_app_factory(f"127.0.0.1:{serving.grpc_port}", MAX_PIXELS=40 * 40)
    ok = upload(app.test_client(), png_bytes(np.zeros((40, 40, 3), np.uint8)))
    assert ok.status_code == 200
    big = upload(app.test_client(), png_bytes(np.zeros((40, 41, 3), np.uint8)))
    assert_json_error(big, 413)


def test_decompression_bomb_header_is_413_without_decoding(client):
    # A 50,000 x 50,000 header over a few bytes: refused from the header alone.
    header = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    header[16:24] = (50_000).to_bytes(4, "big") * 2
    header[29:33] = zlib.crc32(header[12:29]).to_bytes(4, "big")  # a well-formed IHDR
    assert_json_error(upload(client, bytes(header)), 413)


def test_body_over_max_content_length_is_413(proxy_app_factory, serving):
    app = proxy_app_factory(f"127.0.0.1:{serving.grpc_port}", MAX_CONTENT_LENGTH=2000)
    data = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    assert len(data) > 2000
    assert_json_error(upload(app.test_client(), data), 413)


# --- what errors do not tell ---------------------------------------------------------------
# The model server's own words (TF node names, file paths, peer addresses) and a decoder's
# (object reprs) go to the log; a client reads the proxy's one-line messages.

INTERNALS = ("node", "{{", "INVALID_ARGUMENT", "ipv4:", "127.0.0.1", "object at 0x", "BytesIO",
             "Traceback", "/tmp")


def assert_tells_no_internals(response, *extra: str) -> str:
    text = response.get_data(as_text=True)
    for word in INTERNALS + extra:
        assert word not in text, (word, text)
    error = response.get_json()["error"]
    assert "\n" not in error
    return error


def test_upload_the_server_rejects_is_400_in_the_proxys_words(client, caplog):
    response = upload(client, _corrupt_png())
    assert_json_error(response, 400)
    assert assert_tells_no_internals(response) == "model server rejected the image"
    assert "INVALID_ARGUMENT" in caplog.text  # the operator still reads what the server said


def test_unreachable_model_server_is_named_without_its_address(proxy_app_factory, free_tcp_port,
                                                              caplog):
    client = proxy_app_factory(f"127.0.0.1:{free_tcp_port}", SERVING_TIMEOUT_S=2.0).test_client()
    ready = client.get("/readyz")
    assert_json_error(ready, 503)
    assert assert_tells_no_internals(ready, str(free_tcp_port)) == "model server unreachable"
    segmentation = client.get(f"{BASE}/segmentation")
    assert_json_error(segmentation, 503)
    assert assert_tells_no_internals(segmentation, str(free_tcp_port)) == (
        "model server unavailable")
    assert f"127.0.0.1:{free_tcp_port}" in caplog.text  # the address stays in the log


class FailingClient:
    """A model-server client whose every call fails with `error`, in the server's words."""

    def __init__(self, error):
        self.error = error

    def predict(self, images, *, model):
        raise self.error

    model_status = predict

    def close(self):
        pass


@pytest.mark.parametrize("error, status, message", [
    (ServingError("INTERNAL: Graph execution error: {{node map/while/DecodePng}} at "
                  "/models/tiny/1/saved_model.pb"), 502, "model server failed"),
    (ServingUnavailable("UNAVAILABLE: ipv4:127.0.0.1:8500: Connection refused"), 503,
     "model server unavailable"),
    (ServingNotFound("NOT_FOUND: Servable not found for request: Latest(tiny) in "
                     "/models/tiny"), 503, "model not available"),
    (ServingTimeout("DEADLINE_EXCEEDED: ipv4:127.0.0.1:8500 {{node x}}"), 504,
     "model server timed out"),
], ids=["failed", "unavailable", "not-found", "timeout"])
def test_every_serving_failure_is_told_in_the_proxys_words(proxy_app_factory, serving, error,
                                                           status, message):
    from proxy.gateway import ServingGateway

    app = proxy_app_factory(f"127.0.0.1:{serving.grpc_port}")
    app.extensions["cityseg_gateway"] = ServingGateway(
        "127.0.0.1:8500", "tiny", client_factory=lambda *args, **kwargs: FailingClient(error))
    client = app.test_client()
    for response in (client.get(f"{BASE}/segmentation"),
                     upload(client, png_bytes(np.zeros((8, 8, 3), np.uint8)))):
        assert_json_error(response, status)
        assert assert_tells_no_internals(response, "/models", "8500") == message


def test_readiness_names_a_missing_model_on_a_reachable_server(proxy_app_factory, serving):
    response = proxy_app_factory(f"127.0.0.1:{serving.grpc_port}", MODEL="other").test_client(
        ).get("/readyz")
    assert_json_error(response, 503)
    assert assert_tells_no_internals(response) == (
        "model server reachable; model other not available")


CORRUPT_LABEL = "corrupt_000000_000001"      # label bytes that are no PNG
OUT_OF_TABLE_LABEL = "corrupt_000000_000002"  # a PNG label holding id 200
CORRUPT_IMAGE = "corrupt_000000_000003"      # a PNG header over garbage pixels


@pytest.fixture
def corrupt_client(tmp_path, proxy_app_factory, serving):
    """A proxy whose manifest lists files that are broken on the server side."""
    raw_root, data_dir = tmp_path / "raw", tmp_path / "data"
    image = png_bytes(np.full((12, 20, 3), 128, np.uint8))
    label = np.full((12, 20), 7, np.uint8)
    out_of_table = label.copy()
    out_of_table[0, 0] = 200
    files = {CORRUPT_LABEL: (image, b"not a png at all"),
             OUT_OF_TABLE_LABEL: (image, png_bytes(out_of_table)),
             CORRUPT_IMAGE: (_corrupt_png(), png_bytes(label))}
    data_dir.mkdir()
    with open(data_dir / V.MANIFEST_FILE, "w") as manifest:
        for image_id, (image_bytes, label_bytes) in files.items():
            image_rel, label_rel = V.image_path("val", image_id), V.label_path("val", image_id)
            for relative, data in ((image_rel, image_bytes), (label_rel, label_bytes)):
                (raw_root / relative).parent.mkdir(parents=True, exist_ok=True)
                (raw_root / relative).write_bytes(data)
            manifest.write(json.dumps({
                "image_id": image_id, "split": "val", "city": "corrupt", "image": str(image_rel),
                "label": str(label_rel), "height": 12, "width": 20}) + "\n")
    return proxy_app_factory(f"127.0.0.1:{serving.grpc_port}", DATA_DIR=str(data_dir),
                             RAW_ROOT=str(raw_root)).test_client()


@pytest.mark.parametrize("image_id, suffix, message", [
    (CORRUPT_LABEL, "ground_truth.png", f"ground truth of {CORRUPT_LABEL} is corrupt"),
    (CORRUPT_LABEL, "segmentation", f"ground truth of {CORRUPT_LABEL} is corrupt"),
    (OUT_OF_TABLE_LABEL, "ground_truth.png", f"ground truth of {OUT_OF_TABLE_LABEL} is corrupt"),
    # The proxy sent its own stored file: the server's refusal is our data's fault, not the
    # client's request (a 400 would tell the client to change something it cannot).
    (CORRUPT_IMAGE, "segmentation", f"stored image of {CORRUPT_IMAGE} is corrupt"),
    (CORRUPT_IMAGE, "prediction.png", f"stored image of {CORRUPT_IMAGE} is corrupt"),
])
def test_corrupt_stored_files_are_500_naming_the_image_id(corrupt_client, caplog, image_id,
                                                          suffix, message):
    response = corrupt_client.get(f"/api/v1/images/{image_id}/{suffix}")
    assert_json_error(response, 500)
    assert assert_tells_no_internals(response) == message
    assert image_id in caplog.text


# --- operations ----------------------------------------------------------------------------

def test_health_and_readiness(client, dataset):
    assert client.get("/healthz").get_json() == {"status": "ok", "images": len(dataset[2])}
    assert client.get("/readyz").get_json() == {
        "status": "ready", "model": {"name": "tiny", "versions": [1]}}


def test_readiness_is_503_for_a_model_the_server_does_not_serve(proxy_app_factory, serving):
    app = proxy_app_factory(f"127.0.0.1:{serving.grpc_port}", MODEL="other")
    assert_json_error(app.test_client().get("/readyz"), 503)
    assert_json_error(app.test_client().get(f"{BASE}/segmentation"), 503)


def test_serving_deadline_is_504(proxy_app_factory, serving):
    app = proxy_app_factory(f"127.0.0.1:{serving.grpc_port}", SERVING_TIMEOUT_S=0.0005)
    assert_json_error(app.test_client().get(f"{BASE}/segmentation"), 504)


def test_metrics_count_requests_by_route_template(client, exposition):
    client.get("/healthz")
    client.get(f"/api/v1/images/{UNKNOWN}/image.png")
    metrics = exposition(client.get("/metrics").get_data(as_text=True))
    requests = "cityseg_proxy_requests_total"
    assert metrics.value(requests, method="GET", route="/healthz", status="200") == 1
    assert metrics.value(requests, method="GET", route="/api/v1/images/<path:image_id>/image.png",
                         status="404") == 1
    assert UNKNOWN not in metrics.text  # ids never become labels
    assert metrics.value("cityseg_proxy_request_duration_seconds_count", route="/healthz") == 1


def test_metrics_count_made_up_methods_as_one_other_series(client, exposition):
    rng = random.Random(12)
    methods = {"".join(rng.choices(string.ascii_uppercase, k=8)) for _ in range(25)}
    assert len(methods) == 25
    for method in methods:
        assert client.open("/healthz", method=method).status_code == 405
    metrics = exposition(client.get("/metrics").get_data(as_text=True))
    requests = "cityseg_proxy_requests_total"
    assert metrics.label_values(requests, "method") <= KNOWN_METHODS | {"other"}
    assert metrics.value(requests, method="other", route="unmatched", status="405") == 25


def test_page_lists_the_model_and_legend(client):
    html = client.get("/").get_data(as_text=True)
    assert "tiny" in html
    for name in V.CATEGORIES:
        assert name in html
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html
        assert client.get(asset).status_code == 200
    assert "http://" not in html and "https://" not in html  # no CDN: everything is local


# --- configuration -------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"DATA_DIR": "/nonexistent/data"}, "manifest not found"),
    ({"RAW_ROOT": "/nonexistent/raw"}, "raw root is not a directory"),
    ({"SERVING": "localhost"}, "HOST:PORT"),
    ({"MODEL": ""}, "missing proxy setting"),
    ({"SERVING_TIMEOUT_S": 0}, "timeout must be positive"),
])
def test_impossible_configuration_fails_at_start(dataset, change, message):
    from proxy.app import create_app

    config = {"DATA_DIR": str(dataset[0]), "RAW_ROOT": str(dataset[1]),
              "SERVING": "127.0.0.1:8500", "MODEL": "tiny", **change}
    with pytest.raises(ValueError, match=message) as info:
        create_app(config)
    assert "\n" not in str(info.value)


def test_malformed_manifest_names_the_line(tmp_path, dataset):
    from proxy.app import create_app

    (tmp_path / V.MANIFEST_FILE).write_text(
        json.dumps(row_for(dataset, LABELLED)) + "\n" + '{"image_id": "../etc"}\n')
    with pytest.raises(ValueError, match=r"manifest.jsonl:2: bad manifest line"):
        create_app({"DATA_DIR": str(tmp_path), "RAW_ROOT": str(dataset[1]),
                    "SERVING": "127.0.0.1:8500", "MODEL": "tiny"})
