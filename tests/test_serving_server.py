"""cityseg-serve end to end: a real SavedModel, a real gRPC server and REST server on free ports."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

from cityseg import vocabulary as V
from polling import wait_until
from serving import client as C

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

METRICS_PATH = "/monitoring/prometheus/metrics"


def png(height: int, width: int, seed: int = 0, noise: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    if noise:  # incompressible: the worst case for message sizes
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.zeros((height, width, 3), np.uint8)
        pixels[: height // 2] = (70, 130, 180)
        pixels[height // 2:] = rng.integers(0, 256, 3, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def tiny_model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Conv2D(V.NUM_CATEGORIES, 1)(inputs))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from training.export import export_model

    root = tmp_path_factory.mktemp("models")
    export_model(tiny_model(), root, "tiny", stride=1, version=1)
    export_model(tiny_model(1), root, "swap", stride=1, version=1)
    (root / "empty").mkdir()  # a model folder with no version yet
    return root


@pytest.fixture(scope="module")
def server(models_dir):
    from serving.server import start_server

    handle = start_server(models_dir, poll_wait_s=0.2, monitoring_path=METRICS_PATH)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def grpc_client(server):
    with C.GrpcClient(f"localhost:{server.grpc_port}", timeout_s=30, retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def rest_client(server):
    return C.RestClient(f"http://localhost:{server.rest_port}", timeout_s=30, retries=0)


def http(server, method: str, path: str, body=None) -> tuple[int, dict]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(f"http://localhost:{server.rest_port}{path}", data=data,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def in_process_masks(models_dir, name: str, version: int, images: list[bytes]) -> list[bytes]:
    import tensorflow as tf

    module = tf.saved_model.load(str(models_dir / name / str(version)))
    outputs = module.signatures[V.SIGNATURE_NAME](**{V.INPUT_KEY: tf.constant(images)})
    return list(outputs[V.OUTPUT_KEY].numpy())


def mask_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


# --- gRPC ----------------------------------------------------------------------------------

def test_grpc_predict_matches_the_savedmodel_in_process(server, grpc_client, models_dir):
    images = [png(40, 60, seed=1), png(23, 17, seed=2)]
    prediction = grpc_client.predict(images, model="tiny")
    assert (prediction.model_name, prediction.model_version) == ("tiny", 1)
    assert prediction.masks == in_process_masks(models_dir, "tiny", 1, images)
    assert [mask_array(m).shape for m in prediction.masks] == [(40, 60), (23, 17)]
    assert mask_array(prediction.masks[0]).max() < V.NUM_CATEGORIES


def test_grpc_predict_a_specific_version(grpc_client):
    assert grpc_client.predict([png(8, 8)], model="tiny", version=1).model_version == 1


def test_grpc_model_status(grpc_client):
    assert grpc_client.model_status("tiny") == [(1, "AVAILABLE")]
    assert grpc_client.model_status("empty") == []


def test_grpc_metadata_is_the_signature_def(grpc_client):
    meta = grpc_client.metadata("tiny")
    assert meta["model_spec"]["name"] == "tiny" and meta["model_spec"]["version"] == "1"
    signature = meta["metadata"]["signature_def"]["signature_def"][V.SIGNATURE_NAME]
    assert signature["inputs"][V.INPUT_KEY]["dtype"] == "DT_STRING"
    assert signature["outputs"][V.OUTPUT_KEY]["dtype"] == "DT_STRING"
    assert signature["method_name"] == "tensorflow/serving/predict"


def test_grpc_metadata_needs_the_signature_def_field(server):
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(f"localhost:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = "tiny"
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelMetadata(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("model, version, error", [
    ("nope", None, C.ServingNotFound),
    ("tiny", 99, C.ServingNotFound),
    ("empty", None, C.ServingUnavailable),
])
def test_grpc_status_codes_for_models(grpc_client, model, version, error):
    with pytest.raises(error) as caught:
        grpc_client.predict([png(8, 8)], model=model, version=version)
    assert "\n" not in str(caught.value)


def _raw_predict(server, inputs: dict, signature: str = V.SIGNATURE_NAME):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = signature
    for key, tensor in inputs.items():
        # TensorFlow's TensorProto or the client's wire_pb2 one: the same bytes either way.
        request.inputs[key].ParseFromString(tensor.SerializeToString())
    with grpc.insecure_channel(f"localhost:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(request, timeout=30)


@pytest.mark.parametrize("case", ["wrong key", "wrong dtype", "undecodable", "extra key"])
def test_grpc_bad_inputs_are_invalid_argument(server, case):
    import tensorflow as tf

    good = C.string_tensor([png(8, 8)])
    inputs = {
        "wrong key": {"pixels": good},
        "wrong dtype": {V.INPUT_KEY: tf.make_tensor_proto(np.zeros(2, np.float32))},
        "undecodable": {V.INPUT_KEY: C.string_tensor([b"this is not an image"])},
        "extra key": {V.INPUT_KEY: good, "pixels": good},
    }[case]
    with pytest.raises(grpc.RpcError) as caught:
        _raw_predict(server, inputs)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()


def test_grpc_unknown_signature_is_failed_precondition(server):
    with pytest.raises(grpc.RpcError) as caught:
        _raw_predict(server, {V.INPUT_KEY: C.string_tensor([png(8, 8)])}, signature="nope")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- REST ----------------------------------------------------------------------------------

def test_rest_status_routes(server):
    expected = {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert http(server, "GET", "/v1/models/tiny") == (200, expected)
    assert http(server, "GET", "/v1/models/tiny/versions/1") == (200, expected)
    assert http(server, "GET", "/v1/models/tiny/versions/7")[0] == 404
    assert http(server, "GET", "/v1/models/tiny/labels/stable")[0] == 404


def test_rest_metadata_route_matches_grpc(server, grpc_client):
    status, body = http(server, "GET", "/v1/models/tiny/metadata")
    assert status == 200
    assert body == grpc_client.metadata("tiny")
    assert http(server, "GET", "/v1/models/tiny/versions/1/metadata") == (200, body)


def test_rest_predict_row_and_columnar_formats(server, models_dir):
    images = [png(30, 20, seed=3), png(12, 44, seed=4)]
    expected = in_process_masks(models_dir, "tiny", 1, images)
    b64 = [{"b64": base64.b64encode(i).decode()} for i in images]

    status, rows = http(server, "POST", "/v1/models/tiny:predict", {"instances": b64})
    assert status == 200
    assert [base64.b64decode(p["b64"]) for p in rows["predictions"]] == expected

    named = {"instances": [{V.INPUT_KEY: v} for v in b64]}
    status, rows = http(server, "POST", "/v1/models/tiny/versions/1:predict", named)
    assert status == 200 and len(rows["predictions"]) == 2

    status, columns = http(server, "POST", "/v1/models/tiny:predict",
                           {"signature_name": V.SIGNATURE_NAME, "inputs": {V.INPUT_KEY: b64}})
    assert status == 200
    assert [base64.b64decode(p["b64"]) for p in columns["outputs"]] == expected


@pytest.mark.parametrize("path, body, status", [
    ("/v1/models/nope:predict", {"instances": [{"b64": ""}]}, 404),
    ("/v1/models/tiny/versions/5:predict", {"instances": [{"b64": ""}]}, 404),
    ("/v1/models/empty:predict", {"instances": [{"b64": ""}]}, 503),
    ("/v1/models/tiny:predict", b"{not json", 400),
    ("/v1/models/tiny:predict", {"instances": [{"pixels": {"b64": ""}}]}, 400),
    ("/v1/models/tiny:predict", {"instances": [1.5, 2.5]}, 400),
    ("/v1/models/tiny:predict", {"instances": [{"b64": "!!not base64!!"}]}, 400),
    ("/v1/models/tiny:predict", {"instances": [{"b64": base64.b64encode(b"junk").decode()}]}, 400),
    ("/v1/models/tiny:predict", {"instances": [], "inputs": []}, 400),
    ("/v1/models/tiny:classify", {"examples": []}, 501),
    ("/v2/whatever", None, 404),
])
def test_rest_errors_are_json_with_tf_serving_status(server, path, body, status):
    got, payload = http(server, "POST" if body is not None else "GET", path, body)
    assert got == status
    assert set(payload) == {"error"} and payload["error"] and "\n" not in payload["error"]


def test_rest_client_predict_and_status(rest_client, models_dir):
    images = [png(33, 21, seed=5)]
    prediction = rest_client.predict(images, model="tiny")
    assert prediction.masks == in_process_masks(models_dir, "tiny", 1, images)
    assert prediction.model_version == 1
    assert rest_client.model_status("tiny") == [(1, "AVAILABLE")]
    with pytest.raises(C.ServingNotFound):
        rest_client.predict(images, model="nope")
    with pytest.raises(C.ServingInvalidArgument):
        rest_client.predict([b"garbage"], model="tiny")


# --- monitoring ----------------------------------------------------------------------------

def scrape(server) -> tuple[str, dict[tuple[str, frozenset], float]]:
    """The exposition text, and {(sample name, labels): value} parsed from it."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://localhost:{server.rest_port}{METRICS_PATH}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return text, samples


def request_count(samples, api: str, model: str, status: str) -> float:
    labels = frozenset({"api": api, "model_name": model, "status": status}.items())
    return samples.get(("cityseg_serving_request_count_total", labels), 0.0)


def test_metrics_label_only_served_models_and_take_no_injected_lines(server, grpc_client):
    evil = 'x"} 1\nevil_injected_metric{a="b'
    _, before = scrape(server)
    with pytest.raises(C.ServingNotFound):
        grpc_client.predict([png(8, 8)], model=evil)
    for index in range(25):  # made-up names: no series of their own
        with pytest.raises(C.ServingNotFound):
            grpc_client.predict([png(8, 8)], model=f"random-{index}-{time.time_ns()}")
    quoted = urllib.parse.quote(evil, safe="")
    assert http(server, "POST", f"/v1/models/{quoted}:predict",
                {"instances": [{"b64": ""}]})[0] == 404
    grpc_client.predict([png(8, 8)], model="tiny")
    text, after = scrape(server)

    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(line.startswith("cityseg_serving_") for line in lines), lines
    assert "evil_injected_metric" not in text
    models = {dict(labels).get("model_name") for _, labels in after} - {None}
    assert models <= {"tiny", "swap", "empty", "other"}
    def added(*labels: str) -> float:
        return request_count(after, *labels) - request_count(before, *labels)

    assert added("grpc", "other", "NOT_FOUND") == 26
    assert added("rest", "other", "NOT_FOUND") == 1
    assert added("grpc", "tiny", "OK") == 1


# --- full resolution -----------------------------------------------------------------------

@pytest.mark.slow
def test_full_resolution_png_through_grpc_and_rest(grpc_client, rest_client):
    image = png(1024, 2048, noise=True)
    assert len(image) > 4 * 1024 * 1024  # over gRPC's default 4 MiB message limit
    by_grpc = grpc_client.predict([image], model="tiny")
    by_rest = rest_client.predict([image], model="tiny")
    assert by_grpc.masks == by_rest.masks
    assert mask_array(by_grpc.masks[0]).shape == (1024, 2048)


# --- version swap --------------------------------------------------------------------------

@pytest.mark.slow
def test_new_version_swaps_in_under_load_without_failures(server, models_dir):
    from training.export import export_model

    image = png(24, 24, seed=9)
    stop = threading.Event()
    seen: list[list[int]] = [[] for _ in range(4)]
    failures: list[BaseException] = []

    def hammer(index: int) -> None:
        with C.GrpcClient(f"localhost:{server.grpc_port}", timeout_s=30, retries=0) as client:
            while not stop.is_set():
                try:
                    seen[index].append(client.predict([image], model="swap").model_version)
                except C.ServingError as err:
                    failures.append(err)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        export_model(tiny_model(2), models_dir, "swap", stride=1, version=2)
        with C.GrpcClient(f"localhost:{server.grpc_port}") as watcher:
            wait_until(lambda: watcher.model_status("swap") == [(1, "END"), (2, "AVAILABLE")],
                       60, 0.1, seen=lambda: watcher.model_status("swap"))
        counts = [len(s) for s in seen]
        # A few more requests per thread after the swap.
        wait_until(lambda: all(len(s) >= c + 3 for s, c in zip(seen, counts)), 60,
                   seen=lambda: [len(s) for s in seen])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    for versions in seen:
        assert versions[0] == 1 and versions[-1] == 2
        assert versions == sorted(versions)  # never back to 1 once 2 answered
