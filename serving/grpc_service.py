"""TF Serving's gRPC services over the model registry.

`tensorflow.serving.PredictionService`: Predict and GetModelMetadata (Classify, Regress and
MultiInference answer UNIMPLEMENTED, as they do for a predict-only SavedModel).
`tensorflow.serving.ModelService`: GetModelStatus (HandleReloadConfigRequest: UNIMPLEMENTED).
"""
from __future__ import annotations

import logging
import math
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cityseg import vocabulary as V
from serving.admission import Caller, caller_left
from serving.errors import RequestError
from serving.registry import ModelRegistry, VersionStatus

log = logging.getLogger(__name__)

_STATES = get_model_status_pb2.ModelVersionStatus.State


# Where each dtype's values travel when `tensor_content` is empty (TensorProto, tensor.proto), and
# how many entries one element takes there (a complex number is two).
_VALUE_FIELDS = {
    "float32": ("float_val", 1), "float64": ("double_val", 1), "int32": ("int_val", 1),
    "int16": ("int_val", 1), "int8": ("int_val", 1), "uint8": ("int_val", 1),
    "uint16": ("int_val", 1), "int64": ("int64_val", 1), "uint32": ("uint32_val", 1),
    "uint64": ("uint64_val", 1), "bool": ("bool_val", 1), "float16": ("half_val", 1),
    "bfloat16": ("half_val", 1), "complex64": ("scomplex_val", 2),
    "complex128": ("dcomplex_val", 2), "string": ("string_val", 1),
}


def tensor_from_proto(key: str, proto) -> np.ndarray:
    """A request's TensorProto as an array, once its values are known to fill its shape exactly.

    `tf.make_ndarray` pads missing values out to the declared shape (repeating the last one),
    so a 40-byte request declaring 20 million strings would cost gigabytes; the shape and the
    values are compared on the proto first, so nothing bigger than the message is allocated.

    Raises:
      RequestError: INVALID_ARGUMENT for an unknown rank, a negative dimension, an unsupported
        dtype, or a value count other than the product of the dimensions.
    """
    def refuse(why: str) -> RequestError:
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: {why}")

    if proto.tensor_shape.unknown_rank:
        raise refuse("the tensor shape has no rank")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(size < 0 for size in dims):
        raise refuse(f"dimensions must be >= 0, got {dims}")
    elements = math.prod(dims)
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        raise refuse(f"unsupported dtype {proto.dtype}") from None
    if dtype.name not in _VALUE_FIELDS:
        raise refuse(f"unsupported dtype {dtype.name}")
    field, per_element = _VALUE_FIELDS[dtype.name]
    if proto.tensor_content and dtype.name != "string":
        got = len(proto.tensor_content) / dtype.size
    else:
        got = len(getattr(proto, field)) / per_element
    if got != elements:
        raise refuse(f"shape {dims} holds {elements} values but the tensor carries "
                     f"{got:g}; every value must be sent")
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as err:
        raise refuse(f"malformed tensor: {err}") from None


def spec_version(model_spec) -> tuple[int | None, str | None]:
    """(version, label) asked for by a ModelSpec; both None means latest."""
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return int(model_spec.version.value), None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def status_proto(status: VersionStatus):
    """A ModelVersionStatus message for one version."""
    message = get_model_status_pb2.ModelVersionStatus(
        version=status.version, state=_STATES.Value(status.state))
    message.status.error_code = error_codes_pb2.Code.Value(status.error_code.name)
    message.status.error_message = status.error_message
    return message


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over the registry's loaded versions."""

    def __init__(self, registry: ModelRegistry, metrics=None):
        self.registry = registry
        self.metrics = metrics

    def Predict(self, request, context):
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            version, label = spec_version(request.model_spec)
            signature = request.model_spec.signature_name or V.SIGNATURE_NAME
            inputs = {k: tensor_from_proto(k, v) for k, v in request.inputs.items()}
            caller = Caller.of_grpc(context)
            with self.registry.use(request.model_spec.name, version, label) as loaded:
                outputs = loaded.run(signature, inputs, tuple(request.output_filter), caller)
                response = predict_pb2.PredictResponse()
                response.model_spec.name = loaded.name
                response.model_spec.version.value = loaded.version
                response.model_spec.signature_name = signature
            if caller.left():  # computed for nobody: counted as such, not as an answer
                raise caller_left(caller, "before the answer was ready")
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response
        except RequestError as err:
            code = err.code
            context.abort(err.code, str(err))
        finally:
            if self.metrics is not None:
                self.metrics.observe("grpc", request.model_spec.name, code,
                                     time.perf_counter() - started)

    def GetModelMetadata(self, request, context):
        try:
            return model_metadata(self.registry, request)
        except RequestError as err:
            context.abort(err.code, str(err))


def model_metadata(registry: ModelRegistry, request):
    """Builds a GetModelMetadataResponse (signature_def packed in an Any, as TF Serving does).

    Raises:
      RequestError: INVALID_ARGUMENT without the signature_def field, NOT_FOUND/UNAVAILABLE as
        for Predict.
    """
    fields = list(request.metadata_field)
    if not fields:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "GetModelMetadataRequest must specify at least one metadata_field")
    for name in fields:
        if name != "signature_def":
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Metadata field {name} is not supported")
    version, label = spec_version(request.model_spec)
    with registry.use(request.model_spec.name, version, label) as loaded:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in loaded.signature_defs.items():
            signatures.signature_def[key].CopyFrom(signature_def)
    response.metadata["signature_def"].Pack(signatures)
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus: the state of every version the server has seen."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def GetModelStatus(self, request, context):
        try:
            version, label = spec_version(request.model_spec)
            if label:
                version = self.registry.label_version(request.model_spec.name, label)
            statuses = self.registry.status(request.model_spec.name, version)
        except RequestError as err:
            context.abort(err.code, str(err))
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.extend(status_proto(s) for s in statuses)
        return response


def add_services(server: grpc.Server, registry: ModelRegistry, metrics=None) -> None:
    """Registers both services on a grpc.Server."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(registry, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), server)
