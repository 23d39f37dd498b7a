"""Exports a trained Keras model as a TF Serving SavedModel (`MODELS/{name}/{version}/`).

The graph takes encoded PNG/JPEG images of any size and returns PNG category masks of the same
size: decoding, resizing and normalisation happen inside, through the same ops as training.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import keras
import tensorflow as tf

from cityseg import vocabulary as V
from training import ops


class SegmentationServer(tf.Module):
    """The serving graph around a Keras segmentation model that outputs logits."""

    def __init__(self, model: keras.Model, input_size: tuple[int, int]):
        super().__init__()
        self.model = model
        self.input_size = tf.constant(input_size, dtype=tf.int32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=V.INPUT_KEY)])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Segments a batch of encoded images; returns {'masks': PNG strings [N]}."""
        batch, sizes = tf.map_fn(
            self._decode, images,
            fn_output_signature=(tf.TensorSpec([None, None, 3], tf.float32),
                                 tf.TensorSpec([2], tf.int32)))
        batch = tf.ensure_shape(batch, [None, None, None, 3])
        logits = tf.cast(self.model(batch, training=False), tf.float32)
        masks = tf.map_fn(
            self._encode, (logits, sizes), fn_output_signature=tf.TensorSpec([], tf.string))
        return {V.OUTPUT_KEY: masks}

    def _decode(self, encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # decode_image handles PNG and JPEG; channels=3 folds grayscale and RGBA into RGB.
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        size = tf.shape(image)[:2]
        image = ops.normalize_image(ops.resize_image(image, self.input_size))
        return image, size

    def _encode(self, args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        logits, size = args
        # Resize logits (not the argmax) so boundaries are smooth at full resolution.
        logits = tf.image.resize(logits, size, method=tf.image.ResizeMethod.BILINEAR)
        mask = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.uint8)
        return tf.io.encode_png(mask[..., tf.newaxis])


def next_version(model_dir: Path) -> int:
    """The next free positive integer version under `MODELS/{name}/`."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_model(model: keras.Model, models_dir: str | os.PathLike, name: str, *,
                 input_size: tuple[int, int], version: int | None = None,
                 model_info: dict[str, Any] | None = None,
                 warmup_images: Sequence[bytes] = ()) -> Path:
    """Writes `models_dir/name/version/` as a SavedModel with the contract's signature.

    The version folder appears atomically (written beside it, then renamed), so a server that
    polls the folder never loads a half-written model.

    Args:
      model: Keras model mapping float32 [B, H, W, 3] in [0, 1] to logits [B, H, W, 8].
      models_dir: the serving root holding one folder per model name.
      name: model name, as clients address it.
      input_size: (height, width) the graph resizes images to before the model.
      version: positive integer; defaults to one more than the newest present.
      model_info: extra facts for `assets/model_info.json` (architecture, metrics, ...).
      warmup_images: encoded images written as TF Serving warmup requests.

    Returns:
      The version folder.

    Raises:
      ValueError: for a bad name or version, or a version that already exists.
    """
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"model name {name!r} must be letters, digits, '-', '_' or '.'")
    model_dir = Path(models_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else int(version)
    if version <= 0:
        raise ValueError(f"version must be a positive integer, not {version}")
    target = model_dir / str(version)
    if target.exists():
        raise ValueError(f"{target} already exists; pick another --version")

    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir))
    try:
        server = SegmentationServer(model, input_size)
        tf.saved_model.save(server, str(staging),
                            signatures={V.SIGNATURE_NAME: server.serve.get_concrete_function()})
        info = {
            "name": name,
            "version": version,
            "categories": list(V.CATEGORIES),
            "palette": [list(c) for c in V.PALETTE],
            "input_size": list(input_size),
            "signature": {"name": V.SIGNATURE_NAME, "input": V.INPUT_KEY, "output": V.OUTPUT_KEY},
            **(model_info or {}),
        }
        (staging / "assets").mkdir(exist_ok=True)
        (staging / "assets" / V.MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if warmup_images:
            write_warmup_requests(staging, name, warmup_images)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_warmup_requests(export_dir: Path, name: str, images: Sequence[bytes]) -> Path:
    """Writes `assets.extra/tf_serving_warmup_requests`, which TF Serving replays on load."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = Path(export_dir) / "assets.extra" / V.WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for encoded in images:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=name, signature_name=V.SIGNATURE_NAME))
            request.inputs[V.INPUT_KEY].CopyFrom(tf.make_tensor_proto([encoded], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
