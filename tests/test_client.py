"""The serving client: requests it builds, retries, deadlines and error mapping (fakes + sockets)."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from cityseg import vocabulary as V
from serving import client as C
from serving import protocol
from serving import wire_pb2 as W


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "boom"):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class FakePredictionStub:
    """Fails with the given codes, then answers with one mask per image."""

    def __init__(self, failures=(), version: int = 3):
        self.failures = list(failures)
        self.version = version
        self.calls: list[tuple[object, float]] = []

    def Predict(self, request, timeout):  # noqa: N802 - the stub's method name
        self.calls.append((request, timeout))
        if self.failures:
            raise FakeRpcError(self.failures.pop(0))
        response = W.PredictResponse()  # what the real stub's deserializer returns
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = self.version
        images = request.inputs[V.INPUT_KEY].string_val
        response.outputs[V.OUTPUT_KEY].CopyFrom(C.string_tensor([b"mask:" + i for i in images]))
        return response


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_predict_builds_the_tf_serving_request():
    stub = FakePredictionStub()
    prediction = C.predict(stub, [b"a", b"bc"], model="unet", version=3, timeout_s=5)
    assert prediction == C.Prediction(masks=[b"mask:a", b"mask:bc"], model_name="unet",
                                      model_version=3)
    (request, timeout), = stub.calls
    assert 0 < timeout <= 5
    assert request.model_spec.name == "unet"
    assert request.model_spec.signature_name == V.SIGNATURE_NAME
    assert request.model_spec.version.value == 3
    tensor = request.inputs[V.INPUT_KEY]
    assert list(tensor.string_val) == [b"a", b"bc"]
    assert [d.size for d in tensor.tensor_shape.dim] == [2]


def test_predict_without_version_asks_for_latest():
    stub = FakePredictionStub()
    C.predict(stub, [b"a"], model="unet", timeout_s=5)
    assert not stub.calls[0][0].model_spec.HasField("version")


def test_unavailable_is_retried_with_exponential_backoff():
    stub = FakePredictionStub(failures=[grpc.StatusCode.UNAVAILABLE] * 2)
    started = time.monotonic()
    prediction = C.predict(stub, [b"a"], model="m", timeout_s=5, retries=2, backoff_s=0.05)
    elapsed = time.monotonic() - started
    assert prediction.masks == [b"mask:a"]
    assert len(stub.calls) == 3
    assert elapsed >= 0.05 + 0.10  # waited backoff, then twice the backoff
    # Each attempt only gets what is left of the one deadline.
    timeouts = [t for _, t in stub.calls]
    assert timeouts == sorted(timeouts, reverse=True) and timeouts[-1] < 5 - 0.15 + 0.01


def test_unavailable_gives_up_after_the_retries():
    stub = FakePredictionStub(failures=[grpc.StatusCode.UNAVAILABLE] * 10)
    with pytest.raises(C.ServingUnavailable) as caught:
        C.predict(stub, [b"a"], model="m", timeout_s=5, retries=3, backoff_s=0.01)
    assert len(stub.calls) == 4
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "after 4 attempts" in str(caught.value)


@pytest.mark.parametrize("code, error", [
    (grpc.StatusCode.NOT_FOUND, C.ServingNotFound),
    (grpc.StatusCode.INVALID_ARGUMENT, C.ServingInvalidArgument),
    (grpc.StatusCode.DEADLINE_EXCEEDED, C.ServingTimeout),
    (grpc.StatusCode.INTERNAL, C.ServingError),
])
def test_other_errors_are_not_retried(code, error):
    stub = FakePredictionStub(failures=[code, code, code])
    with pytest.raises(error) as caught:
        C.predict(stub, [b"a"], model="m", timeout_s=5, retries=2, backoff_s=0.01)
    assert len(stub.calls) == 1
    assert caught.value.code == code
    assert str(caught.value).startswith(code.name)


def test_error_messages_are_one_line():
    error = C.make_error(grpc.StatusCode.INVALID_ARGUMENT, "decode failed\n\t [[{{node x}}]]\n")
    assert str(error) == "INVALID_ARGUMENT: decode failed [[{{node x}}]]"


def test_backoff_never_outlives_the_deadline():
    stub = FakePredictionStub(failures=[grpc.StatusCode.UNAVAILABLE] * 10)
    started = time.monotonic()
    with pytest.raises(C.ServingUnavailable):
        C.predict(stub, [b"a"], model="m", timeout_s=0.3, retries=10, backoff_s=0.1)
    assert time.monotonic() - started < 0.5
    assert len(stub.calls) < 4


def test_bad_arguments_raise_before_any_call():
    stub = FakePredictionStub()
    with pytest.raises(ValueError):
        C.predict(stub, [], model="m", timeout_s=1)
    with pytest.raises(ValueError):
        C.predict(stub, [b"a"], model="m", timeout_s=0)
    with pytest.raises(ValueError):
        C.predict(stub, [b"a"], model="m", timeout_s=1, version=0)
    assert stub.calls == []


def test_grpc_client_against_a_port_with_no_server():
    started = time.monotonic()
    with C.GrpcClient(f"127.0.0.1:{free_port()}", timeout_s=5, retries=2,
                      backoff_s=0.05) as client:
        with pytest.raises(C.ServingUnavailable) as caught:
            client.predict([b"a"], model="m")
    assert "after 3 attempts" in str(caught.value)
    assert 0.15 <= time.monotonic() - started < 5


def test_grpc_client_deadline_against_a_slow_server():
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    release = threading.Event()

    class Slow(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802
            release.wait(10)
            context.abort(grpc.StatusCode.INTERNAL, "too late")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Slow(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with C.GrpcClient(f"127.0.0.1:{port}", timeout_s=0.4, retries=2) as client:
            started = time.monotonic()
            with pytest.raises(C.ServingTimeout) as caught:
                client.predict([b"a"], model="m")
            elapsed = time.monotonic() - started
    finally:
        release.set()
        server.stop(0)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.35 <= elapsed < 1.5


# --- REST ----------------------------------------------------------------------------------

def rapidjson_string(data: bytes) -> bytes:
    """How TF Serving writes a string output not named *_bytes: raw bytes, JSON-escaped."""
    out = bytearray(b'"')
    for byte in data:
        if byte in (0x22, 0x5C):
            out += b"\\" + bytes([byte])
        elif byte < 0x20:
            out += b"\\u%04x" % byte
        else:
            out.append(byte)
    return bytes(out + b'"')


class FakeRest:
    """A local HTTP server answering predict/status like TF Serving (or slowly, or with errors)."""

    def __init__(self, predictions: bytes = b"", status: int = 200, delay_s: float = 0.0):
        outer = self
        self.requests: list[tuple[str, str, dict | None]] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body):
                time.sleep(delay_s)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                length = int(self.headers["Content-Length"])
                outer.requests.append(("POST", self.path, json.loads(self.rfile.read(length))))
                if status != 200:
                    self._answer(b'{"error": "Servable not found for request"}')
                else:
                    self._answer(b'{"predictions": [' + predictions + b"]}")

            def do_GET(self):  # noqa: N802
                outer.requests.append(("GET", self.path, None))
                self._answer(json.dumps({"model_version_status": [
                    {"version": "4", "state": "AVAILABLE",
                     "status": {"error_code": "OK", "error_message": ""}}]}).encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


MASK = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) + b'"\\end'


@pytest.mark.parametrize("encoded", [
    b'{"b64": "' + base64.b64encode(MASK) + b'"}',   # cityseg-serve, or an alias named *_bytes
    rapidjson_string(MASK),                          # tensorflow/serving with the alias 'masks'
])
def test_rest_client_reads_both_binary_forms(encoded):
    fake = FakeRest(predictions=encoded)
    try:
        prediction = C.RestClient(fake.url, timeout_s=5).predict([b"img"], model="unet")
    finally:
        fake.close()
    assert prediction.masks == [MASK]
    assert prediction.model_version == 4  # from the status, as TF Serving does not send it
    method, path, body = fake.requests[0]
    assert (method, path) == ("POST", "/v1/models/unet:predict")
    assert body == {"signature_name": V.SIGNATURE_NAME,
                    "instances": [{V.INPUT_KEY: {"b64": base64.b64encode(b"img").decode()}}]}


@pytest.mark.parametrize("status, error, code", [
    (404, C.ServingNotFound, grpc.StatusCode.NOT_FOUND),
    (400, C.ServingInvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (503, C.ServingUnavailable, grpc.StatusCode.UNAVAILABLE),
    (504, C.ServingTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (403, C.ServingError, grpc.StatusCode.PERMISSION_DENIED),
    (418, C.ServingError, grpc.StatusCode.UNKNOWN),
])
def test_rest_client_maps_http_errors(status, error, code):
    fake = FakeRest(status=status)
    try:
        with pytest.raises(error) as caught:
            C.RestClient(fake.url, timeout_s=5, retries=0).predict([b"img"], model="x",
                                                                    version=2)
    finally:
        fake.close()
    assert caught.value.code == code
    assert "Servable not found" in str(caught.value)
    assert fake.requests[0][1] == "/v1/models/x/versions/2:predict"


def test_http_status_table_reads_back_to_the_same_status():
    # What the server answers for any code, the client reads as a code answered the same way.
    for code in grpc.StatusCode:
        assert protocol.http_status(protocol.status_code(protocol.http_status(code))) == \
            protocol.http_status(code), code
    assert protocol.status_code(400) == grpc.StatusCode.INVALID_ARGUMENT  # not OUT_OF_RANGE
    assert protocol.status_code(408) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_rest_client_timeout():
    fake = FakeRest(predictions=b'{"b64": ""}', delay_s=2)
    try:
        started = time.monotonic()
        with pytest.raises(C.ServingTimeout):
            C.RestClient(fake.url, timeout_s=0.3).predict([b"img"], model="x")
        assert time.monotonic() - started < 1.5
    finally:
        fake.close()


def test_rest_client_retries_a_closed_port():
    client = C.RestClient(f"127.0.0.1:{free_port()}", timeout_s=5, retries=1, backoff_s=0.05)
    with pytest.raises(C.ServingUnavailable) as caught:
        client.model_status("x")
    assert "after 2 attempts" in str(caught.value)


def test_rest_client_rejects_bad_urls():
    with pytest.raises(ValueError):
        C.RestClient("ftp://host:8501")
