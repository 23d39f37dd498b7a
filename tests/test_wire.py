"""serving/wire.proto against TF Serving's own protos: the same fields, the same bytes, both ways."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import json_format

from cityseg import vocabulary as V
from serving import client as C
from serving import wire_pb2 as W

tf_protos = pytest.importorskip("tensorflow_serving.apis.predict_pb2")


def tf_messages() -> dict[str, type]:
    """Each of our messages -> TF Serving's message of the same role."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                         model_pb2, predict_pb2)

    return {
        "TensorShapeProto": tensor_shape_pb2.TensorShapeProto,
        "TensorProto": tensor_pb2.TensorProto,
        "TensorInfo": meta_graph_pb2.TensorInfo,
        "SignatureDef": meta_graph_pb2.SignatureDef,
        "ModelSpec": model_pb2.ModelSpec,
        "PredictRequest": predict_pb2.PredictRequest,
        "PredictResponse": predict_pb2.PredictResponse,
        "ModelVersionStatus": get_model_status_pb2.ModelVersionStatus,
        "GetModelStatusRequest": get_model_status_pb2.GetModelStatusRequest,
        "GetModelStatusResponse": get_model_status_pb2.GetModelStatusResponse,
        "SignatureDefMap": get_model_metadata_pb2.SignatureDefMap,
        "GetModelMetadataRequest": get_model_metadata_pb2.GetModelMetadataRequest,
        "GetModelMetadataResponse": get_model_metadata_pb2.GetModelMetadataResponse,
    }


def _field_signature(field) -> tuple:
    # An enum travels as its varint: StatusProto.error_code is an int32 here, TF's error.Code
    # there. Nested messages are compared by their short name (ours live in cityseg.wire).
    packed = field.GetOptions().packed if field.GetOptions().HasField("packed") else None
    nested = field.message_type.name if field.message_type is not None else None
    return field.number, field.type, field.label, packed, nested


def _check_same_fields(ours, theirs, seen: set) -> None:
    if ours.full_name in seen:
        return
    seen.add(ours.full_name)
    for field in ours.fields:
        assert field.name in theirs.fields_by_name, f"{theirs.full_name} has no {field.name}"
        other = theirs.fields_by_name[field.name]
        if {field.type, other.type} == {field.TYPE_INT32, field.TYPE_ENUM}:
            assert field.number == other.number, (ours.full_name, field.name)
            continue
        assert _field_signature(field) == _field_signature(other), (ours.full_name, field.name)
        if field.message_type is not None:
            _check_same_fields(field.message_type, other.message_type, seen)
        if field.enum_type is not None:
            # Every value we name exists with the same number in TensorFlow's enum.
            mine = {v.name: v.number for v in field.enum_type.values}
            real = {v.name: v.number for v in other.enum_type.values}
            assert mine.items() <= real.items(), field.enum_type.full_name


@pytest.mark.parametrize("name", sorted(tf_messages()))
def test_every_field_has_tf_servings_number_and_type(name):
    _check_same_fields(getattr(W, name).DESCRIPTOR, tf_messages()[name].DESCRIPTOR, set())


def test_data_type_enum_is_tensorflows():
    from tensorflow.core.framework import types_pb2

    assert ({v.name: v.number for v in W.DataType.DESCRIPTOR.values}
            == {v.name: v.number for v in types_pb2.DataType.DESCRIPTOR.values})


def _same_bytes(ours, theirs) -> None:
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True)


def test_the_clients_predict_request_parses_as_tf_servings():
    from tensorflow_serving.apis import predict_pb2

    ours = W.PredictRequest(output_filter=[V.OUTPUT_KEY])
    ours.model_spec.CopyFrom(C._model_spec("unet", 7))
    ours.inputs[V.INPUT_KEY].CopyFrom(C.string_tensor([b"\x89PNG a", b"\xff\xd8 b"]))
    theirs = predict_pb2.PredictRequest.FromString(ours.SerializeToString())
    assert theirs.model_spec.name == "unet"
    assert theirs.model_spec.signature_name == V.SIGNATURE_NAME
    assert theirs.model_spec.WhichOneof("version_choice") == "version"
    assert theirs.model_spec.version.value == 7
    tensor = theirs.inputs[V.INPUT_KEY]
    assert tensor.dtype == 7  # DT_STRING
    assert [d.size for d in tensor.tensor_shape.dim] == [2]
    assert list(tensor.string_val) == [b"\x89PNG a", b"\xff\xd8 b"]
    assert list(theirs.output_filter) == [V.OUTPUT_KEY]
    _same_bytes(ours, theirs)


def test_tf_servings_predict_response_parses_as_ours():
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    theirs = predict_pb2.PredictResponse()
    theirs.model_spec.name = "unet"
    theirs.model_spec.version.value = 3
    theirs.outputs[V.OUTPUT_KEY].CopyFrom(
        tf.make_tensor_proto(np.array([b"mask-1", b"mask-2"], dtype=object)))
    ours = W.PredictResponse.FromString(theirs.SerializeToString())
    assert ours.model_spec.name == "unet" and ours.model_spec.version.value == 3
    assert list(ours.outputs[V.OUTPUT_KEY].string_val) == [b"mask-1", b"mask-2"]
    assert ours.outputs[V.OUTPUT_KEY].dtype == W.DT_STRING
    _same_bytes(ours, theirs)


@pytest.mark.parametrize("array", [
    np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
    np.array([1.5, -2.25], np.float64),
    np.array([[1, -2], [3, 4]], np.int32),
    np.array([2**40, -1], np.int64),
    np.array([True, False, True]),
    np.array([1 + 2j], np.complex64),
    np.array([7, 8], np.uint32),
    np.array([2**63 + 5], np.uint64),
    np.array([1.5, 2.0], np.float16),
])
def test_numeric_tensors_cross_both_ways(array):
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    for theirs in (tf.make_tensor_proto(array),                           # tensor_content
                   tf.make_tensor_proto(array.ravel().tolist() if array.dtype.kind != "c"
                                        else array, dtype=tf.as_dtype(array.dtype),
                                        shape=array.shape)):
        ours = W.TensorProto.FromString(theirs.SerializeToString())
        _same_bytes(ours, theirs)
        back = tensor_pb2.TensorProto.FromString(ours.SerializeToString())
        np.testing.assert_array_equal(tf.make_ndarray(back), array)


def test_version_label_and_latest():
    from tensorflow_serving.apis import model_pb2

    ours = W.ModelSpec(name="m", version_label="canary")
    theirs = model_pb2.ModelSpec.FromString(ours.SerializeToString())
    assert theirs.WhichOneof("version_choice") == "version_label"
    assert theirs.version_label == "canary"
    latest = model_pb2.ModelSpec.FromString(C._model_spec("m", None).SerializeToString())
    assert latest.WhichOneof("version_choice") is None


def test_model_status_response_parses_as_ours():
    from tensorflow_serving.apis import get_model_status_pb2

    theirs = get_model_status_pb2.GetModelStatusResponse()
    for version, state in ((1, "AVAILABLE"), (2, "LOADING"), (3, "END")):
        status = theirs.model_version_status.add(version=version)
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
        status.status.error_code = 5 if state == "END" else 0  # NOT_FOUND
        status.status.error_message = "gone" if state == "END" else ""
    ours = W.GetModelStatusResponse.FromString(theirs.SerializeToString())
    assert [(s.version, W.ModelVersionStatus.State.Name(s.state), s.status.error_code)
            for s in ours.model_version_status] == [
        (1, "AVAILABLE", 0), (2, "LOADING", 0), (3, "END", 5)]
    _same_bytes(ours, theirs)


def test_metadata_signature_def_map_reads_like_tf_servings():
    from google.protobuf import any_pb2
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    signatures = get_model_metadata_pb2.SignatureDefMap()
    sig = signatures.signature_def[V.SIGNATURE_NAME]
    sig.method_name = "tensorflow/serving/predict"
    sig.inputs[V.INPUT_KEY].name = "serving_default_images:0"
    sig.inputs[V.INPUT_KEY].dtype = types_pb2.DT_STRING
    sig.inputs[V.INPUT_KEY].tensor_shape.dim.add(size=-1)
    sig.outputs[V.OUTPUT_KEY].name = "StatefulPartitionedCall:0"
    sig.outputs[V.OUTPUT_KEY].dtype = types_pb2.DT_STRING
    sig.outputs[V.OUTPUT_KEY].tensor_shape.unknown_rank = True
    packed = any_pb2.Any()
    packed.Pack(signatures)
    theirs = get_model_metadata_pb2.GetModelMetadataResponse()
    theirs.model_spec.name = "unet"
    theirs.metadata["signature_def"].CopyFrom(packed)

    ours = W.GetModelMetadataResponse.FromString(theirs.SerializeToString())
    assert ours.metadata["signature_def"].type_url.endswith("/" + C.SIGNATURE_DEF_MAP)
    mine = W.SignatureDefMap.FromString(ours.metadata["signature_def"].value)
    assert (json_format.MessageToDict(mine, preserving_proto_field_name=True)
            == json_format.MessageToDict(signatures, preserving_proto_field_name=True))


def test_metadata_reads_our_parse_of_the_any():
    from google.protobuf import any_pb2

    signatures = W.SignatureDefMap()
    signatures.signature_def["x"].method_name = "tensorflow/serving/predict"
    response = W.GetModelMetadataResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 2
    response.metadata["signature_def"].CopyFrom(any_pb2.Any(
        type_url="type.googleapis.com/tensorflow.serving.SignatureDefMap",
        value=signatures.SerializeToString()))

    class Stub:
        def GetModelMetadata(self, request, timeout):  # noqa: N802
            assert list(request.metadata_field) == ["signature_def"]
            return response

    answer = C.metadata(Stub(), model="m", timeout_s=5)
    assert answer["model_spec"]["version"] == "2"
    assert answer["metadata"]["signature_def"]["signature_def"]["x"]["method_name"] == (
        "tensorflow/serving/predict")

    response.metadata["signature_def"].type_url = "type.googleapis.com/some.Other"
    with pytest.raises(C.ServingError, match="some.Other"):
        C.metadata(Stub(), model="m", timeout_s=5)


def test_the_client_and_the_numpy_metrics_load_without_tensorflow():
    code = ("import sys; import serving.client, serving.predict, cityseg.metrics; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorflow_serving', 'keras', 'apache_beam', 'training')); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_training_metrics_reexports_the_numpy_functions():
    from cityseg import metrics as numpy_metrics
    from training import metrics as training_metrics

    for name in ("confusion_matrix", "iou_per_class", "iou_ignoring_void", "nanmean_or_nan",
                 "summarize"):
        assert getattr(training_metrics, name) is getattr(numpy_metrics, name)
