"""TF Serving's REST API (port 8501) over the model registry.

Routes (TF Serving's): `GET /v1/models/{name}[/versions/{v}|/labels/{l}]` (status),
`GET .../metadata`, `POST .../{name}[/versions/{v}|/labels/{l}]:predict` with the row
("instances") or columnar ("inputs") format. Binary values travel as `{"b64": "..."}`.

String outputs: TF Serving base64-encodes a string output only when its alias ends in `_bytes`.
cityseg-serve does that too and, in addition, base64-encodes any string value that is not valid
UTF-8, because raw bytes cannot be put in a JSON string faithfully. Our `masks` are PNGs (never
valid UTF-8), so they always come back as `{"b64": ...}`; the client accepts both forms.
Errors are `{"error": "..."}` with TF Serving's HTTP status for each status code.

Slow or greedy clients: each request must arrive whole (request line, headers, body) within the
read timeout, else it is answered 408 and the connection closed; an idle keep-alive connection is
closed after the same time. At most `max_connections` connections are served at once; one more
is answered 503 at once. A body over the size limit is refused 413 before it is read.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from cityseg import vocabulary as V
from serving.admission import Caller
from serving.errors import RequestError
from serving.grpc_service import model_metadata, status_proto
from serving.protocol import MODEL_VERSION_HEADER, http_status
from serving.registry import ModelRegistry

log = logging.getLogger(__name__)

# The shape of TF Serving's kPathRegex (http_rest_api_handler.cc).
_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<method>classify|regress|predict))?$")
# Versions are int64 in TF Serving's ModelSpec.
_MAX_VERSION = 2**63 - 1
# Refused connections wait this long for the client to finish sending before they are closed
# (closing with unread data would reset the connection and lose the 503 on the way).
_REFUSAL_DRAIN_S = 1.0
_MAX_REFUSING = 64


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if len(text) > 19 or int(text) > _MAX_VERSION:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Failed to convert version {text[:24]}{'...' if len(text) > 24 else ''}"
                           f" to a 64-bit integer")
    return int(text)


# --- JSON <-> arrays --------------------------------------------------------------------

def _decode_strings(value, key: str):
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: binary values must be {{\"b64\": \"...\"}}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: bad base64: {err}") from None
    if isinstance(value, list):
        return [_decode_strings(v, key) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"input {key!r} expects strings, got {type(value).__name__}")


def json_to_array(value, spec, key: str) -> np.ndarray:
    """Converts one input's JSON value to an array of the signature's dtype.

    Raises:
      RequestError: INVALID_ARGUMENT for a value that does not fit the dtype.
    """
    if spec.dtype.name == "string":
        try:
            return np.array(_decode_strings(value, key), dtype=object)
        except ValueError as err:  # ragged nesting
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r}: {err}") from None
    try:
        raw = np.asarray(value)
    except ValueError as err:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: {err}") from None
    if raw.dtype.kind not in "biuf":
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {key!r} expects {spec.dtype.name} numbers, got {raw.dtype}")
    return raw.astype(spec.dtype.as_numpy_dtype)


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def request_inputs(body, specs: dict) -> tuple[dict[str, np.ndarray], bool]:
    """Parses a predict body into input arrays; returns (inputs, row_format).

    Raises:
      RequestError: INVALID_ARGUMENT for a malformed body.
    """
    if not isinstance(body, dict):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "JSON object must have exactly one of 'instances' or 'inputs'")
    single = next(iter(specs)) if len(specs) == 1 else None
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "'instances' must be a non-empty list")
        named = all(isinstance(r, dict) and not _is_b64(r) for r in rows)
        if named:
            keys = set(rows[0])
            if any(set(r) != keys for r in rows):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "every instance must have the same named inputs")
            columns = {k: [r[k] for r in rows] for k in keys}
        elif single is not None:
            columns = {single: rows}
        else:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"instances must be objects naming the inputs {sorted(specs)}")
        row_format = True
    else:
        value = body["inputs"]
        if isinstance(value, dict) and not _is_b64(value):
            columns = value
        elif single is not None:
            columns = {single: value}
        else:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"'inputs' must be an object naming the inputs {sorted(specs)}")
        row_format = False
    unknown = sorted(set(columns) - set(specs))
    if unknown:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input keys {unknown} are not in the signature's inputs "
                           f"{sorted(specs)}")
    return {k: json_to_array(v, specs[k], k) for k, v in columns.items()}, row_format


def _value_json(value, binary: bool):
    if isinstance(value, bytes):
        if not binary:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                pass  # raw bytes cannot live in a JSON string: send them base64-encoded
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    return value


def array_json(array: np.ndarray, key: str):
    """An output array as JSON (strings: text, or {"b64"} for `*_bytes` aliases and binary)."""
    binary = key.endswith("_bytes")
    if array.dtype.kind in "OSU":
        def convert(item):
            if isinstance(item, np.ndarray):
                return [convert(x) for x in item]
            return _value_json(item, binary)
        return convert(array)
    return array.tolist()


def response_json(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """The predict response body in the format the request used."""
    if not row_format:
        if len(outputs) == 1:
            (key, value), = outputs.items()
            return {"outputs": array_json(value, key)}
        return {"outputs": {k: array_json(v, k) for k, v in outputs.items()}}
    sizes = {v.shape[0] if v.ndim else None for v in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "outputs have different batch sizes; use the columnar 'inputs' format")
    columns = {k: array_json(v, k) for k, v in outputs.items()}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(sizes.pop())]}


# --- the HTTP server --------------------------------------------------------------------

class RestApi:
    """Turns (method, path, body) into (HTTP status, JSON body, headers)."""

    def __init__(self, registry: ModelRegistry, *, timeout_s: float, max_body_bytes: int,
                 num_threads: int, metrics=None, monitoring_path: str | None = None,
                 read_timeout_s: float = 30.0):
        self.registry = registry
        self.timeout_s = timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.monitoring_path = monitoring_path
        # Predictions run here so a slow one can be answered 504 at the REST timeout.
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="rest-predict")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict, dict]:
        try:
            match = _PATH.match(path)
            if match is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {path}")
            name = match["name"]
            version = _version(match["version"])
            label = match["label"]
            if match["method"]:
                if method != "POST":
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"Malformed request: {method} {path}")
                if match["method"] != "predict":
                    raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                                       f"{match['method']} is not supported by cityseg-serve")
                return self._predict(name, version, label, body)
            if method != "GET":
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Malformed request: {method} {path}")
            if match["metadata"]:
                return 200, self._metadata(name, version, label), {}
            return 200, self._status(name, version, label), {}
        except RequestError as err:
            return http_status(err.code), {"error": str(err)}, {}
        except RecursionError:  # JSON nested deeper than the parsers' recursion allows
            return 400, {"error": "JSON Parse error: the request is nested too deeply"}, {}

    def _status(self, name, version, label) -> dict:
        if label:
            version = self.registry.label_version(name, label)
        statuses = []
        for status in self.registry.status(name, version):
            proto = status_proto(status)
            statuses.append({
                "version": str(status.version),
                "state": status.state,
                "status": {"error_code": status.error_code.name,
                           "error_message": proto.status.error_message},
            })
        return {"model_version_status": statuses}

    def _metadata(self, name, version, label) -> dict:
        spec = model_pb2.ModelSpec(name=name)
        if version is not None:
            spec.version.value = version
        elif label:
            spec.version_label = label
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=["signature_def"])
        response = model_metadata(self.registry, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return {
            "model_spec": {"name": response.model_spec.name, "signature_name": "",
                           "version": str(response.model_spec.version.value)},
            "metadata": {"signature_def": json_format.MessageToDict(
                signatures, preserving_proto_field_name=True)},
        }

    def _predict(self, name, version, label, body: bytes) -> tuple[int, dict, dict]:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if len(body) > self.max_body_bytes:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"request body of {len(body)} bytes is over the limit of "
                                   f"{self.max_body_bytes}")
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError) as err:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"JSON Parse error: {err}") from None
            # Answered 504 at the timeout; a prediction still waiting for its turn then is
            # dropped rather than run for nobody.
            caller = Caller(deadline=time.monotonic() + self.timeout_s)
            future = self._pool.submit(self._run, name, version, label, parsed, caller)
            try:
                answer, used = future.result(timeout=self.timeout_s)
            except FutureTimeout:
                future.cancel()
                raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"prediction took longer than {self.timeout_s:g} s") from None
            return 200, answer, {MODEL_VERSION_HEADER: str(used)}
        except RequestError as err:
            code = err.code
            raise
        finally:
            if self.metrics is not None:
                self.metrics.observe("rest", name, code, time.perf_counter() - started)

    def _run(self, name, version, label, parsed, caller: Caller) -> tuple[dict, int]:
        signature = V.SIGNATURE_NAME
        if isinstance(parsed, dict) and "signature_name" in parsed:
            signature = str(parsed["signature_name"]) or V.SIGNATURE_NAME
        with self.registry.use(name, version, label) as loaded:
            if signature not in loaded.input_specs:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"Serving signature name: \"{signature}\" not found in "
                                   f"signature def")
            inputs, row_format = request_inputs(parsed, loaded.input_specs[signature])
            outputs = loaded.run(signature, inputs, caller=caller)
            return response_json(outputs, row_format), loaded.version


def make_http_server(api: RestApi, host: str, port: int, *,
                     max_connections: int) -> HTTPServer:
    """An HTTP server bound to (host, port) that answers through `api`.

    Each connection is served by one of `max_connections` threads; a request must arrive whole
    within `api.read_timeout_s` (408 otherwise), and an idle connection is closed after it.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "cityseg-serve"

        def handle_one_request(self):
            # The deadline covers the request line, the headers and the body together: a
            # client trickling a byte at a time is cut off as surely as a silent one.
            self._read_deadline_hit = False
            self._read_timer = threading.Timer(api.read_timeout_s, self._read_deadline_passed)
            self._read_timer.daemon = True
            self._read_timer.start()
            try:
                super().handle_one_request()
            finally:
                self._read_timer.cancel()

        def _read_deadline_passed(self) -> None:
            self._read_deadline_hit = True
            try:  # wakes the blocked read with an end of file; the answer can still be sent
                self.connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass

        def _reply(self, status: int, payload: dict | bytes, headers: dict,
                   content_type: str = "application/json") -> None:
            data = (payload if isinstance(payload, bytes)
                    else json.dumps(payload, separators=(",", ":")).encode("utf-8"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def send_error(self, code, message=None, explain=None):  # noqa: ARG002
            """http.server's own errors (bad request line, headers), as JSON like ours."""
            self.close_connection = True
            # Before a request line is parsed http.server assumes HTTP/0.9, which has no
            # status line: nobody speaks it, and the JSON answer needs its status.
            self.request_version = self.protocol_version
            if self._read_deadline_hit:
                code, message = HTTPStatus.REQUEST_TIMEOUT, self._timeout_message()
            self.log_error("code %d, message %s", code, message)
            self._reply(int(code), {"error": message or HTTPStatus(code).phrase}, {})

        def _timeout_message(self) -> str:
            return f"request not received within {api.read_timeout_s:g} s"

        def _body(self) -> bytes | None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > api.max_body_bytes:
                # Refuse before reading; the connection closes with the answer.
                self.close_connection = True
                status = 400 if length < 0 else 413
                self._reply(status, {"error": f"request body of {length} bytes is not "
                                              f"accepted (limit {api.max_body_bytes})"}, {})
                return None
            body = self.rfile.read(length) if length else b""
            if len(body) < length:  # the deadline cut the read short, or the client left
                self.close_connection = True
                if self._read_deadline_hit:
                    self._reply(408, {"error": self._timeout_message()}, {})
                return None
            return body

        def _dispatch(self, method: str) -> None:
            body = self._body() if method == "POST" else b""
            if body is None:
                return
            self._read_timer.cancel()
            path = self.path.split("?", 1)[0]
            if api.monitoring_path and path == api.monitoring_path and method == "GET":
                body, content_type = api.metrics.exposition(self.headers.get("Accept"))
                self._reply(200, body, {}, content_type)
                return
            try:
                status, payload, headers = api.handle(method, path, body)
            except Exception:  # noqa: BLE001 - a bug must still answer JSON, not drop the line
                log.exception("%s %s failed", method, path[:200])
                status, payload, headers = 500, {"error": "internal server error"}, {}
            self._reply(status, payload, headers)

        def do_GET(self):  # noqa: N802 - http.server's naming
            self._dispatch("GET")

        def do_POST(self):  # noqa: N802
            self._dispatch("POST")

        def do_PUT(self):  # noqa: N802
            self._dispatch("PUT")

        def do_DELETE(self):  # noqa: N802
            self._dispatch("DELETE")

        def log_message(self, format, *args):  # noqa: A002 - http.server's signature
            log.debug("%s %s", self.address_string(), format % args)

    return _PooledHTTPServer((host, port), Handler, max_connections)


class _PooledHTTPServer(HTTPServer):
    """An HTTP server with a fixed set of connection threads; a connection over it gets 503.

    The threads are daemons, like ThreadingHTTPServer's, so an idle keep-alive connection never
    holds up the process's exit.
    """

    allow_reuse_address = True

    def __init__(self, address, handler, max_connections: int):
        super().__init__(address, handler)
        self._free = threading.Semaphore(max_connections)
        self._connections: queue.SimpleQueue = queue.SimpleQueue()
        self._refusals: queue.Queue = queue.Queue(maxsize=_MAX_REFUSING)
        self._threads = [threading.Thread(target=self._serve_connections, name=f"rest-{i}",
                                          daemon=True) for i in range(max_connections)]
        self._threads.append(threading.Thread(target=self._refuse_connections, name="rest-busy",
                                              daemon=True))
        for thread in self._threads:
            thread.start()

    def process_request(self, request, client_address):
        if self._free.acquire(blocking=False):
            self._connections.put((request, client_address))
            return
        try:
            self._refusals.put_nowait(request)
        except queue.Full:  # a flood: no answer, just the closed connection
            self.shutdown_request(request)

    def _serve_connections(self) -> None:
        while (item := self._connections.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - socketserver's own policy: log, close, go on
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                self._free.release()

    def _refuse_connections(self) -> None:
        body = json.dumps({"error": "the server is busy: every connection thread is taken; "
                                    "retry later"}).encode()
        answer = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        while (request := self._refusals.get()) is not None:
            try:
                request.settimeout(_REFUSAL_DRAIN_S)
                request.sendall(answer)
                request.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + _REFUSAL_DRAIN_S
                while time.monotonic() < deadline and request.recv(65536):
                    pass
            except OSError:
                pass
            finally:
                request.close()

    def server_close(self):
        super().server_close()
        for thread in self._threads[:-1]:
            self._connections.put(None)
        try:
            self._refusals.put_nowait(None)
        except queue.Full:
            pass
