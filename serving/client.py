"""A thin client for TensorFlow Serving's APIs, used by `cityseg-predict` and the proxy.

The same code talks to the official `tensorflow/serving` container and to `cityseg-serve`:
gRPC (`tensorflow.serving.PredictionService` / `ModelService`) or REST (`/v1/models/...`).

Every call carries a deadline. Only UNAVAILABLE (server down, restarting or still loading a
model) is retried, a bounded number of times with exponential backoff, and only while the
deadline leaves time for it; every other failure is raised at once as a `ServingError`
subclass whose message is one line.

The gRPC messages are our own (`serving/wire.proto`: TF Serving's field numbers under the
package `cityseg.wire`), sent on TF Serving's method paths, so a client process (the proxy,
`cityseg-predict`) never imports TensorFlow: the core install (grpcio, protobuf, numpy, pillow)
runs it.
"""
from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import grpc
from google.protobuf import json_format

from cityseg import vocabulary as V
from serving import wire_pb2 as W
from serving.protocol import DEFAULT_MAX_MESSAGE_BYTES, MODEL_VERSION_HEADER, status_code

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 0.2

# TF Serving's gRPC methods. The path is all that names a method on the wire, so our messages
# (package cityseg.wire) reach the real `tensorflow.serving` services unchanged.
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
METADATA_METHOD = "/tensorflow.serving.PredictionService/GetModelMetadata"
STATUS_METHOD = "/tensorflow.serving.ModelService/GetModelStatus"
SIGNATURE_DEF_MAP = "tensorflow.serving.SignatureDefMap"

T = TypeVar("T")


class ServingError(Exception):
    """A failed call to the model server; `code` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN):
        # One line, whatever the server sent (TF op errors span several lines).
        super().__init__(" ".join(str(message).split()))
        self.code = code


class ServingUnavailable(ServingError):
    """The server could not be reached or had no model loaded (after bounded retries)."""


class ServingTimeout(ServingError):
    """The call did not finish before its deadline."""


class ServingInvalidArgument(ServingError):
    """The server rejected the request (wrong input key, dtype, undecodable image...)."""


class ServingNotFound(ServingError):
    """The model, version or label is not served."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[ServingError]] = {
    grpc.StatusCode.UNAVAILABLE: ServingUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServingTimeout,
    grpc.StatusCode.INVALID_ARGUMENT: ServingInvalidArgument,
    grpc.StatusCode.NOT_FOUND: ServingNotFound,
}


def make_error(code: grpc.StatusCode, message: str) -> ServingError:
    """Returns the `ServingError` subclass for a status code, with a one-line message."""
    label = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return _ERROR_CLASSES.get(code, ServingError)(f"{label}: {message}", code)


@dataclass(frozen=True)
class Prediction:
    """The masks for a batch of images, and which model version made them."""

    masks: list[bytes]
    model_name: str
    model_version: int


# --- gRPC: plain functions over a stub (tests inject fakes) -------------------------------

def predict(stub, images: Sequence[bytes], *, model: str, timeout_s: float,
            version: int | None = None, retries: int = DEFAULT_RETRIES,
            backoff_s: float = DEFAULT_BACKOFF_S) -> Prediction:
    """Segments encoded images through `PredictionService.Predict`.

    Args:
      stub: a `PredictionStub` (or a fake with `Predict`, taking a `wire_pb2.PredictRequest`).
      images: encoded PNG or JPEG images.
      model: the served model name.
      timeout_s: deadline for the whole call, retries included.
      version: a specific version; None asks for the latest.
      retries: how many times UNAVAILABLE is retried.
      backoff_s: first wait between attempts; doubles each time.

    Returns:
      One PNG mask per image, in order, with the name and version that answered.

    Raises:
      ServingError: a subclass per status code (see module docstring).
    """
    images = [bytes(image) for image in images]
    if not images:
        raise ValueError("predict needs at least one image")
    request = W.PredictRequest()
    request.model_spec.CopyFrom(_model_spec(model, version))
    request.inputs[V.INPUT_KEY].CopyFrom(string_tensor(images))
    response = _call_with_retries(
        lambda timeout: stub.Predict(request, timeout=timeout),
        timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    if V.OUTPUT_KEY not in response.outputs:
        raise ServingError(
            f"response has no {V.OUTPUT_KEY!r} output (got {sorted(response.outputs)})")
    masks = list(response.outputs[V.OUTPUT_KEY].string_val)
    if len(masks) != len(images):
        raise ServingError(f"sent {len(images)} images but got {len(masks)} masks")
    return Prediction(masks=masks, model_name=response.model_spec.name or model,
                      model_version=int(response.model_spec.version.value))


def model_status(stub, *, model: str, timeout_s: float, version: int | None = None,
                 retries: int = DEFAULT_RETRIES,
                 backoff_s: float = DEFAULT_BACKOFF_S) -> list[tuple[int, str]]:
    """Returns [(version, state name)] from `ModelService.GetModelStatus`, e.g. [(1, 'AVAILABLE')].

    Args:
      stub: a `ModelStub` (or a fake with `GetModelStatus`).
    """
    request = W.GetModelStatusRequest()
    request.model_spec.CopyFrom(_model_spec(model, version))
    response = _call_with_retries(
        lambda timeout: stub.GetModelStatus(request, timeout=timeout),
        timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    state_name = W.ModelVersionStatus.State.Name
    return [(int(status.version), state_name(status.state))
            for status in response.model_version_status]


def metadata(stub, *, model: str, timeout_s: float, version: int | None = None,
             retries: int = DEFAULT_RETRIES, backoff_s: float = DEFAULT_BACKOFF_S) -> dict:
    """Returns the model's signature metadata in the JSON shape of TF Serving's REST API.

    `{"model_spec": {...}, "metadata": {"signature_def": {"signature_def": {...}}}}`, so that
    callers see the same dict whichever transport they use.
    """
    request = W.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.CopyFrom(_model_spec(model, version))
    response = _call_with_retries(
        lambda timeout: stub.GetModelMetadata(request, timeout=timeout),
        timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    signatures = W.SignatureDefMap()
    if "signature_def" in response.metadata:
        packed = response.metadata["signature_def"]
        # Any.Unpack would compare the type URL with our message's name (cityseg.wire...);
        # the bytes are TF Serving's SignatureDefMap, which ours parses field for field.
        if packed.type_url.rpartition("/")[2] != SIGNATURE_DEF_MAP:
            raise ServingError(f"signature_def metadata holds {packed.type_url!r}, "
                               f"not a {SIGNATURE_DEF_MAP}")
        signatures.ParseFromString(packed.value)
    return {
        "model_spec": {"name": response.model_spec.name,
                       "signature_name": response.model_spec.signature_name,
                       "version": str(response.model_spec.version.value)},
        "metadata": {"signature_def": json_format.MessageToDict(
            signatures, preserving_proto_field_name=True)},
    }


def string_tensor(values: Sequence[bytes]) -> W.TensorProto:
    """A 1-D DT_STRING `TensorProto` (ours, `wire_pb2`) holding `values`.

    Its bytes are those of `tensorflow.TensorProto`: `tensor_pb2.TensorProto.FromString(
    string_tensor(v).SerializeToString())` gives TensorFlow's message where one is needed.
    """
    return W.TensorProto(
        dtype=W.DT_STRING,
        tensor_shape=W.TensorShapeProto(dim=[W.TensorShapeProto.Dim(size=len(values))]),
        string_val=list(values))


class PredictionStub:
    """`tensorflow.serving.PredictionService` on a channel, with our messages (no TensorFlow)."""

    def __init__(self, channel: grpc.Channel):
        # Attributes named like the service's methods, as generated stubs name them.
        self.Predict = channel.unary_unary(
            PREDICT_METHOD, request_serializer=W.PredictRequest.SerializeToString,
            response_deserializer=W.PredictResponse.FromString)
        self.GetModelMetadata = channel.unary_unary(
            METADATA_METHOD, request_serializer=W.GetModelMetadataRequest.SerializeToString,
            response_deserializer=W.GetModelMetadataResponse.FromString)


class ModelStub:
    """`tensorflow.serving.ModelService` (status only) on a channel, with our messages."""

    def __init__(self, channel: grpc.Channel):
        self.GetModelStatus = channel.unary_unary(
            STATUS_METHOD, request_serializer=W.GetModelStatusRequest.SerializeToString,
            response_deserializer=W.GetModelStatusResponse.FromString)


def _model_spec(model: str, version: int | None) -> W.ModelSpec:
    if not model:
        raise ValueError("a model name is required")
    spec = W.ModelSpec(name=model, signature_name=V.SIGNATURE_NAME)
    if version is not None:
        if int(version) <= 0:
            raise ValueError(f"version must be a positive integer, not {version}")
        spec.version.value = int(version)
    return spec


def _call_with_retries(call: Callable[[float], T], *, timeout_s: float, retries: int,
                       backoff_s: float) -> T:
    """Runs `call(timeout)` under one overall deadline, retrying UNAVAILABLE only."""
    if timeout_s <= 0:
        raise ValueError(f"timeout must be positive, not {timeout_s}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries}")
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServingTimeout(f"DEADLINE_EXCEEDED: no answer within {timeout_s:g} s",
                                 grpc.StatusCode.DEADLINE_EXCEEDED)
        try:
            return call(remaining)
        except grpc.RpcError as err:
            code = err.code() if callable(getattr(err, "code", None)) else None
            details = err.details() if callable(getattr(err, "details", None)) else str(err)
            if code is None:
                code = grpc.StatusCode.UNKNOWN
            error = make_error(code, details or code.name)
        except ServingError as err:  # raised by the REST transport
            error = err
        pause = backoff_s * (2 ** attempt)
        if (error.code != grpc.StatusCode.UNAVAILABLE or attempt >= retries
                or time.monotonic() + pause >= deadline):
            if isinstance(error, ServingUnavailable) and attempt:
                raise ServingUnavailable(f"{error} (after {attempt + 1} attempts)", error.code)
            raise error
        time.sleep(pause)
        attempt += 1


# Shorter than the default retry budget (backoff 0.2 s + 0.4 s): a request made just after the
# server came back must see a reconnect attempt within its retries. At 1 s (+-20 % jitter) the
# first /readyz after a restart answered 503 about one time in five.
RECONNECT_BACKOFF_MS = 300


class GrpcClient:
    """A gRPC connection to a model server, e.g. `GrpcClient('localhost:8500')`."""

    def __init__(self, target: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, backoff_s: float = DEFAULT_BACKOFF_S,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        if timeout_s <= 0:
            raise ValueError(f"timeout must be positive, not {timeout_s}")
        self.target = target
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        # Both limits matter: a full-resolution PNG goes up, its mask comes back. After a failed
        # connection gRPC waits out an exponential back-off (1 s growing to 2 min) before it
        # tries again; capped at 0.3 s, a client finds a restarted server at once instead
        # of answering UNAVAILABLE for minutes.
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ])
        self._prediction = PredictionStub(self._channel)
        self._models = ModelStub(self._channel)

    def predict(self, images: Sequence[bytes], *, model: str,
                version: int | None = None) -> Prediction:
        """Segments encoded images; see `predict`."""
        return predict(self._prediction, images, model=model, version=version,
                       timeout_s=self.timeout_s, retries=self.retries, backoff_s=self.backoff_s)

    def model_status(self, model: str, version: int | None = None) -> list[tuple[int, str]]:
        """[(version, state)] for a served model; see `model_status`."""
        return model_status(self._models, model=model, version=version,
                            timeout_s=self.timeout_s, retries=self.retries,
                            backoff_s=self.backoff_s)

    def metadata(self, model: str, version: int | None = None) -> dict:
        """Signature metadata as TF Serving's REST API prints it; see `metadata`."""
        return metadata(self._prediction, model=model, version=version,
                        timeout_s=self.timeout_s, retries=self.retries, backoff_s=self.backoff_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class RestClient:
    """TF Serving's REST API, e.g. `RestClient('http://localhost:8501')`.

    Masks come back as `{"b64": ...}` from `cityseg-serve`. TF Serving itself only base64-encodes
    string outputs whose alias ends in `_bytes` and otherwise writes the raw bytes into the
    JSON string; both are accepted (raw strings are mapped back to bytes losslessly).
    """

    def __init__(self, base_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, backoff_s: float = DEFAULT_BACKOFF_S):
        if timeout_s <= 0:
            raise ValueError(f"timeout must be positive, not {timeout_s}")
        if "://" not in base_url:
            base_url = f"http://{base_url}"
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"REST base URL must look like http://host:8501, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def predict(self, images: Sequence[bytes], *, model: str,
                version: int | None = None) -> Prediction:
        """Segments encoded images through `POST /v1/models/{model}[/versions/{v}]:predict`."""
        images = [bytes(image) for image in images]
        if not images:
            raise ValueError("predict needs at least one image")
        body = {
            "signature_name": V.SIGNATURE_NAME,
            "instances": [{V.INPUT_KEY: {"b64": base64.b64encode(image).decode("ascii")}}
                          for image in images],
        }
        answer = self._request("POST", f"{self._model_path(model, version)}:predict", body)
        predictions = answer.get("predictions")
        if not isinstance(predictions, list):
            raise ServingError(f"response has no 'predictions' list (keys {sorted(answer)})")
        masks = [decode_binary(p[V.OUTPUT_KEY] if isinstance(p, dict) and V.OUTPUT_KEY in p
                               else p) for p in predictions]
        if len(masks) != len(images):
            raise ServingError(f"sent {len(images)} images but got {len(masks)} masks")
        # TF Serving's REST predict does not name the version that answered; cityseg-serve
        # sends it in a header, otherwise the newest AVAILABLE version is the one used.
        answered = answer.get("_model_version")
        if answered is None:
            answered = version if version is not None else self._latest_version(model)
        return Prediction(masks=masks, model_name=model, model_version=answered)

    def model_status(self, model: str, version: int | None = None) -> list[tuple[int, str]]:
        """[(version, state)] from `GET /v1/models/{model}[/versions/{v}]`."""
        answer = self._request("GET", self._model_path(model, version))
        return [(int(item["version"]), str(item["state"]))
                for item in answer.get("model_version_status", [])]

    def metadata(self, model: str, version: int | None = None) -> dict:
        """`GET /v1/models/{model}[/versions/{v}]/metadata`."""
        return self._request("GET", f"{self._model_path(model, version)}/metadata")

    def close(self) -> None:
        """Nothing to release: every request opens its own connection."""

    def __enter__(self) -> "RestClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _latest_version(self, model: str) -> int:
        available = [v for v, state in self.model_status(model) if state == "AVAILABLE"]
        return max(available, default=0)

    def _model_path(self, model: str, version: int | None) -> str:
        if not model:
            raise ValueError("a model name is required")
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
        if version is not None:
            if int(version) <= 0:
                raise ValueError(f"version must be a positive integer, not {version}")
            path += f"/versions/{int(version)}"
        return path

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        url = self.base_url + path

        def attempt(timeout: float) -> dict:
            request = urllib.request.Request(
                url, data=data, method=method,
                headers={"Content-Type": "application/json"} if data is not None else {})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    answer = _parse_json(response.read())
                    version = response.headers.get(MODEL_VERSION_HEADER)
                    if version and version.isdigit():
                        answer.setdefault("_model_version", int(version))
                    return answer
            except urllib.error.HTTPError as err:
                payload = err.read()
                code = status_code(err.code)
                try:
                    message = _parse_json(payload).get("error") or err.reason
                except ServingError:
                    message = f"HTTP {err.code} {err.reason}"
                raise make_error(code, message) from None
            except urllib.error.URLError as err:
                if isinstance(err.reason, (socket.timeout, TimeoutError)):
                    raise make_error(grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"no answer from {self.base_url} within {timeout:.3g} s")
                raise make_error(grpc.StatusCode.UNAVAILABLE,
                                 f"cannot reach {self.base_url}: {err.reason}") from None
            except (socket.timeout, TimeoutError):
                raise make_error(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"no answer from {self.base_url} within {timeout:.3g} s")
            except (ConnectionError, OSError) as err:
                raise make_error(grpc.StatusCode.UNAVAILABLE,
                                 f"connection to {self.base_url} failed: {err}") from None

        return _call_with_retries(attempt, timeout_s=self.timeout_s, retries=self.retries,
                                  backoff_s=self.backoff_s)


def decode_binary(value: Any) -> bytes:
    """Bytes from a REST string value: `{"b64": ...}` or a raw JSON string.

    A raw string is what TF Serving writes for string outputs not named `*_bytes`; the response
    was decoded with `surrogateescape`, so encoding it the same way gives the exact bytes back.
    """
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as err:
            raise ServingError(f"bad base64 in response: {err}") from None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise ServingError(f"expected a binary value, got {type(value).__name__}")


def _parse_json(payload: bytes) -> dict:
    try:
        answer = json.loads(payload.decode("utf-8", "surrogateescape"))
    except ValueError as err:
        raise ServingError(f"response is not JSON: {err}") from None
    if not isinstance(answer, dict):
        raise ServingError("response is not a JSON object")
    return answer
