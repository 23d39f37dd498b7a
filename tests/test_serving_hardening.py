"""cityseg-serve under hostile requests and operator faults (issue 12, items 1-7).

Each test is one of the issue's reproductions against a real server on free localhost ports:
real gRPC and HTTP clients, a real SavedModel (the 1x1 conv of test_serving_server), real
folders for the hot-reload faults. Each failed on the server before these limits existed.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from PIL import Image

from cityseg import vocabulary as V
from polling import wait_until
from serving import client as C
from serving import wire_pb2 as W
from test_serving_server import METRICS_PATH, png, request_count, scrape, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def zero_png(height: int, width: int) -> bytes:
    """An all-black RGB PNG of any size, compressed row by row (a 6000x6000 one is ~100 kB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    compressor, row, parts = zlib.compressobj(9), bytes(1 + 3 * width), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from training.export import export_model

    root = tmp_path_factory.mktemp("models")
    export_model(tiny_model(), root, "tiny", stride=1, version=1)
    return root


@pytest.fixture
def serve():
    """Starts servers with the given options; stops them after the test."""
    from serving.server import start_server

    started = []

    def start(models_dir, **options):
        options.setdefault("poll_wait_s", 0)
        options.setdefault("monitoring_path", METRICS_PATH)
        started.append(start_server(models_dir, **options))
        return started[-1]

    yield start
    for handle in started:
        handle.stop(grace_s=0)


@pytest.fixture(scope="module")
def server(models_dir):
    """One server with the default limits for the requests that are simply refused."""
    from serving.server import start_server

    handle = start_server(models_dir, poll_wait_s=0, monitoring_path=METRICS_PATH)
    yield handle
    handle.stop()


def raw_predict(server, tensor: W.TensorProto, timeout_s: float = 60, **spec):
    """Predict with a hand-made input tensor; returns (code, details, seconds)."""
    request = W.PredictRequest()
    request.model_spec.name = spec.get("model", "tiny")
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    request.inputs[V.INPUT_KEY].CopyFrom(tensor)
    started = time.perf_counter()
    with grpc.insecure_channel(f"localhost:{server.grpc_port}") as channel:
        stub = C.PredictionStub(channel)
        try:
            stub.Predict(request, timeout=timeout_s)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
    return code, details, time.perf_counter() - started


def images_tensor(values: list[bytes], dims: list[int]) -> W.TensorProto:
    return W.TensorProto(dtype=W.DT_STRING, string_val=values,
                         tensor_shape=W.TensorShapeProto(
                             dim=[W.TensorShapeProto.Dim(size=d) for d in dims]))


def http(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://localhost:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def b64_instances(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()}
                                     for i in images]}).encode()


# --- 1. values must fill the declared shape; a batch has a maximum -----------------------

@pytest.mark.parametrize("values, dims", [
    ([b"x"], [20_000_000]),    # 40 bytes that cost 16.8 s and 4.6 GB
    ([b"x"], [2**40]),         # answered UNKNOWN with a MemoryError traceback
    ("png", [32]),             # one image, 32 masks of work
    ("png", [-1]),             # answered OK
    ("png", [1, 1]),           # the images input is rank 1
    ("png", [2]),              # fewer values than the shape: never padded out
])
def test_values_must_fill_the_declared_shape(server, values, dims):
    values = [png(8, 8)] if values == "png" else values
    code, details, seconds = raw_predict(server, images_tensor(values, dims))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert seconds < 5 and "\n" not in details


def test_a_batch_over_the_maximum_is_refused_on_grpc_and_rest(server):
    images = [png(8, 8, seed=i) for i in range(33)]
    code, details, _ = raw_predict(server, images_tensor(images, [33]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max-batch" in details
    assert http(server.rest_port, "POST", "/v1/models/tiny:predict",
                b64_instances(images))[0] == 400
    code, _, _ = raw_predict(server, images_tensor(images[:32], [32]))
    assert code == grpc.StatusCode.OK  # the maximum itself is served


# --- 2. a pixel budget read from the header ------------------------------------------------

def test_an_image_over_the_pixel_budget_is_refused_before_decoding(server):
    bomb = zero_png(6000, 6000)
    assert len(bomb) < 200_000
    code, details, seconds = raw_predict(server, images_tensor([bomb], [1]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max-pixels" in details
    assert seconds < 2  # refused from the header, not decoded (+1.1 GB, seconds)
    status, body = http(server.rest_port, "POST", "/v1/models/tiny:predict",
                        b64_instances([bomb]))
    assert status == 400 and "6000x6000" in body["error"]


def test_the_pixel_budget_counts_every_image_of_a_request(server):
    half = zero_png(3000, 3000)  # 9 Mpx each: alone within 16 Mpx, two together over it
    code, details, _ = raw_predict(server, images_tensor([half, half], [2]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "18000000 pixels" in details


def test_the_images_input_takes_only_png_or_jpeg(server):
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    code, details, _ = raw_predict(server, images_tensor([gif.getvalue()], [1]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a PNG or JPEG" in details


def test_the_limits_are_flags_and_the_pixel_budget_is_the_proxys():
    from cityseg.images import DEFAULT_MAX_PIXELS  # the proxy's default too (proxy.settings)
    from serving.server import build_parser, options_from_args

    defaults = options_from_args(build_parser().parse_args(["--models-dir", "."]))
    assert defaults.limits.max_pixels == DEFAULT_MAX_PIXELS
    args = build_parser().parse_args(
        ["--models-dir", ".", "--max-batch", "4", "--max-pixels", "1000",
         "--max-concurrent-predicts", "1", "--max-queued-predicts", "2",
         "--grpc-max-concurrent-rpcs", "3", "--rest-read-timeout", "5",
         "--trim-after-pixels", "0"])
    options = options_from_args(args)
    assert (options.limits.max_batch, options.limits.max_pixels,
            options.limits.trim_after_pixels) == (4, 1000, 0)
    assert (options.max_concurrent_predicts, options.max_queued_predicts,
            options.grpc_max_concurrent_rpcs, options.rest_read_timeout_s) == (1, 2, 3, 5.0)


# --- 3. work for callers that left; bounded concurrent work --------------------------------

BIG = 4096  # a 49 kB all-zero PNG of 16.8 Mpx: about a second of work for the 1x1 conv


def timed_small_call(client: C.GrpcClient) -> float:
    started = time.perf_counter()
    client.predict([png(64, 64)], model="tiny")
    return time.perf_counter() - started


def call_all(target: str, image: bytes, count: int, timeout_s: float) -> list:
    """`count` concurrent Predicts of `image`; returns each one's error (None if answered)."""
    def one(_) -> C.ServingError | None:
        with C.GrpcClient(target, timeout_s=timeout_s, retries=0) as client:
            try:
                client.predict([image], model="tiny")
            except C.ServingError as err:
                return err
        return None

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.slow
def test_a_small_call_after_abandoned_large_ones_answers_in_about_its_own_time(
        serve, models_dir):
    server = serve(models_dir)
    target = f"localhost:{server.grpc_port}"
    big = zero_png(BIG, BIG)
    with C.GrpcClient(target, timeout_s=60, retries=0) as client:
        client.predict([big], model="tiny")  # the server has now seen what such a call costs
        alone = min(timed_small_call(client) for _ in range(3))
        _, before = scrape(server)
        errors = call_all(target, big, 8, timeout_s=0.2)
        after_abandoned = timed_small_call(client)
    assert all(isinstance(e, C.ServingTimeout) for e in errors)
    assert after_abandoned < 3 * alone + 1.0, (after_abandoned, alone)
    _, after = scrape(server)
    ok = request_count(after, "grpc", "tiny", "OK") - request_count(before, "grpc", "tiny", "OK")
    assert ok == 1  # the small call only: none of the 8 was computed for nobody


@pytest.mark.slow
def test_requests_whose_callers_left_while_queued_are_never_run(serve, models_dir):
    server = serve(models_dir, max_concurrent_predicts=1)
    target = f"localhost:{server.grpc_port}"
    big = zero_png(BIG, BIG)
    # How long one call holds the turn on this machine (hosts differ): the waiters' deadlines
    # are a fraction of it, so they leave while it runs.
    call_all(target, big, 1, 60)  # warm
    started = time.monotonic()
    call_all(target, big, 1, 60)
    hold_s = time.monotonic() - started
    _, before = scrape(server)
    running = threading.Thread(target=call_all, args=(target, big, 1, 60))
    running.start()  # holds the only turn for hold_s
    time.sleep(hold_s / 10)
    errors = call_all(target, big, 4, timeout_s=hold_s / 3)  # wait behind it, then leave
    running.join()
    assert all(isinstance(e, C.ServingTimeout) for e in errors), errors

    def counted() -> tuple[float, float]:
        _, after = scrape(server)

        def added(status: str) -> float:
            return (request_count(after, "grpc", "tiny", status)
                    - request_count(before, "grpc", "tiny", status))

        return added("OK"), added("DEADLINE_EXCEEDED") + added("CANCELLED")

    # The server counts a request when its handler returns, which may be just after the
    # clients have their answers: wait (at most 10 s) until all five are counted.
    wait_until(lambda: sum(counted()) >= 5, 10, seen=counted)
    # The client's cancel at its deadline may reach the server just before the server's own
    # copy of the deadline expires: either status, never OK.
    assert counted() == (1, 4)


@pytest.mark.slow
def test_a_full_work_queue_answers_unavailable_at_once(serve, models_dir):
    server = serve(models_dir, max_concurrent_predicts=1, max_queued_predicts=1)
    target = f"localhost:{server.grpc_port}"
    big = zero_png(BIG, BIG)
    errors = call_all(target, big, 3, timeout_s=60)  # one runs, one waits, one is refused
    refused = [e for e in errors if e is not None]
    assert len(refused) == 1 and isinstance(refused[0], C.ServingUnavailable)
    assert "busy" in str(refused[0])


# --- 4. REST: read deadline, bounded connections, body size ---------------------------------

def read_answer(sock: socket.socket) -> bytes:
    sock.settimeout(10)  # the server before the fix waited for ever; so would this test
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_rest_client_that_stops_sending_its_body_gets_408(serve, models_dir):
    server = serve(models_dir, rest_read_timeout_s=1.0)
    with socket.create_connection(("localhost", server.rest_port)) as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 52428800\r\n\r\n" + b'{"instances": [')  # 15 of 50 MB
        started = time.monotonic()
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408") and 0.9 < time.monotonic() - started < 5
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]


def test_a_rest_client_trickling_its_headers_is_cut_off_at_the_deadline(serve, models_dir):
    server = serve(models_dir, rest_read_timeout_s=1.0)
    with socket.create_connection(("localhost", server.rest_port)) as sock:
        started = time.monotonic()
        try:
            for _ in range(40):  # a byte every 0.1 s: never idle for a whole read timeout
                sock.sendall(b"X")
                time.sleep(0.1)
        except OSError:
            pass  # the server closed the connection: what this test wants
        answer = read_answer(sock)
    assert time.monotonic() - started < 4.5
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_rest_connections_over_the_pool_get_503_and_the_pool_recovers(serve, models_dir):
    server = serve(models_dir, num_threads=4, rest_read_timeout_s=2.0)
    slow = [socket.create_connection(("localhost", server.rest_port)) for _ in range(4)]
    try:
        for sock in slow:
            sock.sendall(b"GET /v1/models/tiny HTTP/1.1\r\n")  # and never the rest
        time.sleep(0.2)
        status, body = http(server.rest_port, "GET", "/v1/models/tiny")
        assert status == 503 and "busy" in body["error"]
    finally:
        for sock in slow:
            sock.close()
    wait_until(lambda: http(server.rest_port, "GET", "/v1/models/tiny")[0] == 200, 10, 0.1)


def test_a_rest_body_over_the_limit_is_refused_before_it_is_read(server):
    with socket.create_connection(("localhost", server.rest_port)) as sock:
        sock.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 900000000\r\n\r\n")
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413")


# --- 5. hot reload -------------------------------------------------------------------------

def statuses(server, model: str) -> list[tuple[int, str]]:
    with C.GrpcClient(f"localhost:{server.grpc_port}", timeout_s=10, retries=0) as client:
        return client.model_status(model)


def copy_model(models_dir, tmp_path, name: str = "m"):
    """A model folder of its own holding a copy of tiny's version 1 as `1/`."""
    root = tmp_path / "models"
    shutil.copytree(models_dir / "tiny", root / name)
    return root


def test_version_folders_with_leading_zeros_and_pbtxt_load(serve, models_dir, tmp_path):
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    root = copy_model(models_dir, tmp_path)
    (root / "m" / "1").rename(root / "m" / "00000123")  # TF Serving's own test model's layout
    server = serve(root)
    assert statuses(server, "m") == [(123, "AVAILABLE")]
    with C.GrpcClient(f"localhost:{server.grpc_port}", timeout_s=30, retries=0) as client:
        assert client.predict([png(8, 8)], model="m", version=123).model_version == 123

    shutil.copytree(root / "m" / "00000123", root / "m" / "124")
    binary = root / "m" / "124" / "saved_model.pb"
    message = saved_model_pb2.SavedModel.FromString(binary.read_bytes())
    (root / "m" / "124" / "saved_model.pbtxt").write_text(text_format.MessageToString(message))
    binary.unlink()
    server.poll_now()
    assert statuses(server, "m") == [(123, "END"), (124, "AVAILABLE")]


def test_a_folder_that_only_python_calls_a_digit_is_ignored(serve, models_dir, tmp_path, caplog):
    root = copy_model(models_dir, tmp_path)
    (root / "m" / "³").mkdir()  # str.isdigit() is true, int() raises
    server = serve(root)
    assert statuses(server, "m") == [(1, "AVAILABLE")]
    shutil.copytree(root / "m" / "1", root / "m" / "8")
    with caplog.at_level(logging.WARNING, logger="serving.registry"):
        server.poll_now()
        server.poll_now()
    assert statuses(server, "m") == [(1, "END"), (8, "AVAILABLE")]
    assert len([r for r in caplog.records if "³" in r.getMessage()]) <= 1  # logged once


def test_a_version_copied_non_atomically_is_retried_and_its_failure_logged_once(
        serve, models_dir, tmp_path, caplog):
    root = copy_model(models_dir, tmp_path)
    server = serve(root, first_retry_s=0.2)
    version = root / "m" / "2"
    version.mkdir()
    shutil.copy(root / "m" / "1" / "saved_model.pb", version)  # the variables come later
    with caplog.at_level(logging.ERROR, logger="serving.registry"):
        for _ in range(4):
            server.poll_now()
            time.sleep(0.25)
    failures = [r for r in caplog.records if "version 2" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert statuses(server, "m")[-1][0] == 2 and statuses(server, "m")[-1][1] == "END"
    # Issue 12 item 9: the status a client reads says what failed, not where the files live.
    with urllib.request.urlopen(f"http://localhost:{server.rest_port}/v1/models/m") as answer:
        failed = json.load(answer)["model_version_status"][-1]
    assert failed["version"] == "2" and failed["status"]["error_message"], failed
    assert str(tmp_path) not in json.dumps(failed), failed
    with C.GrpcClient(f"localhost:{server.grpc_port}", timeout_s=30, retries=0) as client:
        assert client.predict([png(8, 8)], model="m").model_version == 1  # 1 keeps serving

    for item in (root / "m" / "1").iterdir():  # the rest of the copy arrives
        if item.name != "saved_model.pb":
            (shutil.copytree if item.is_dir() else shutil.copy)(item, version / item.name)

    def version_2_serves() -> bool:
        server.poll_now()
        return statuses(server, "m") == [(1, "END"), (2, "AVAILABLE")]

    wait_until(version_2_serves, 30, 0.2, seen=lambda: statuses(server, "m"))


def test_a_models_folder_that_disappears_keeps_what_is_loaded_serving(
        serve, models_dir, tmp_path):
    root = copy_model(models_dir, tmp_path)
    server = serve(root)
    away = tmp_path / "away"
    root.rename(away)  # a remount: the folder is gone for a while
    try:
        server.poll_now()
        assert statuses(server, "m") == [(1, "AVAILABLE")]
        with C.GrpcClient(f"localhost:{server.grpc_port}", timeout_s=30, retries=0) as client:
            assert client.predict([png(8, 8)], model="m").model_version == 1
    finally:
        away.rename(root)
    server.poll_now()
    assert statuses(server, "m") == [(1, "AVAILABLE")]
    shutil.rmtree(root / "m")  # a listing that works and lacks the model: it is gone
    server.poll_now()
    assert statuses(server, "m")[-1][1] in ("UNLOADING", "END")


# --- 7. hostile REST paths and bodies answer 400 JSON ---------------------------------------

def test_a_version_too_long_for_an_integer_is_400_json(server, caplog):
    with caplog.at_level(logging.DEBUG):
        status, body = http(server.rest_port, "GET", "/v1/models/tiny/versions/" + "9" * 5000)
    assert status == 400 and "version" in body["error"] and len(body["error"]) < 200
    assert not any(r.exc_info for r in caplog.records)


def test_json_nested_deeper_than_the_parser_goes_is_400_json(server, caplog):
    body = b"[" * 100_000 + b"]" * 100_000
    with caplog.at_level(logging.DEBUG):
        status, answer = http(server.rest_port, "POST", "/v1/models/tiny:predict", body)
    assert status == 400 and "nested" in answer["error"]
    nested = json.dumps({"instances": [[[[[[[[[[[[{"b64": ""}]]]]]]]]]]]]}).encode()
    assert http(server.rest_port, "POST", "/v1/models/tiny:predict", nested)[0] == 400
    assert not any(r.exc_info for r in caplog.records)


def test_a_malformed_request_line_is_400_json(server):
    with socket.create_connection(("localhost", server.rest_port)) as sock:
        sock.sendall(b"GET /v1/models/tiny HTTP/1.1 and more\r\n\r\n")
        answer = read_answer(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and "error" in json.loads(body)
