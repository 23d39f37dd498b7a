"""TF Serving's gRPC services over the model registry.

`tensorflow.serving.PredictionService`: Predict and GetModelMetadata (Classify, Regress and
MultiInference answer UNIMPLEMENTED, as they do for a predict-only SavedModel).
`tensorflow.serving.ModelService`: GetModelStatus (HandleReloadConfigRequest: UNIMPLEMENTED).
"""
from __future__ import annotations

import logging
import time

import grpc
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
from serving.errors import RequestError
from serving.registry import ModelRegistry, VersionStatus

log = logging.getLogger(__name__)

_STATES = get_model_status_pb2.ModelVersionStatus.State


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
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except (TypeError, ValueError) as err:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"malformed input tensor: {err}") from None
            with self.registry.use(request.model_spec.name, version, label) as loaded:
                outputs = loaded.run(signature, inputs, tuple(request.output_filter))
                response = predict_pb2.PredictResponse()
                response.model_spec.name = loaded.name
                response.model_spec.version.value = loaded.version
                response.model_spec.signature_name = signature
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
