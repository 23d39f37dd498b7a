"""Exports a trained Keras model as a TF Serving SavedModel (`MODELS/{name}/{version}/`).

The graph takes encoded PNG/JPEG images of any size and returns PNG category masks of the same
size: decoding, shrinking to the working resolution (aspect ratio kept), padding to the
model's stride and normalisation happen inside, through the same ops as training.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Sequence

import keras
import tensorflow as tf

from cityseg import ops
from cityseg import vocabulary as V
from training import run_layout, storage

# The export's default working resolution: frames are shrunk so that their long side is at
# most this (a 2048x1024 Cityscapes frame is segmented at 1024x512), never enlarged. Chosen in
# docs/benchmarks/realtime.md: the default model answers a 2048x1024 PNG within the latency
# target at this size, and half resolution is where thin objects still survive.
DEFAULT_MAX_LONG_SIDE = 1024


class SegmentationServer(tf.Module):
    """The serving graph around a Keras segmentation model that outputs logits.

    Each image is decoded, shrunk to its working size (aspect ratio kept, long side at most
    `max_long_side`), padded to the model's stride, segmented, and the logits are cropped
    back to the picture and resized to the image's own size: masks match their image pixel
    for pixel, whatever the camera.
    """

    def __init__(self, model: keras.Model, *, stride: int, max_long_side: int | None):
        super().__init__()
        self.model = model
        self.stride = int(stride)
        self.max_long_side = None if max_long_side is None else int(max_long_side)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=V.INPUT_KEY)])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Segments a batch of encoded images; returns {'masks': PNG strings [N]}."""
        # One image at a time: images of one batch may differ in size and aspect.
        masks = tf.map_fn(self._segment, images, fn_output_signature=tf.TensorSpec([], tf.string))
        return {V.OUTPUT_KEY: masks}

    def _segment(self, encoded: tf.Tensor) -> tf.Tensor:
        # decode_image handles PNG and JPEG; channels=3 folds grayscale and RGBA into RGB.
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        size = tf.shape(image)[:2]
        work = ops.working_size(size[0], size[1], self.max_long_side)
        same = tf.reduce_all(tf.equal(work, size))
        x = tf.cond(same, lambda: tf.cast(image, tf.float32),
                    lambda: ops.resize_image(image, work))
        x = ops.normalize_image(x)
        x, _ = ops.pad_to_multiple(x, None, self.stride)
        logits = tf.cast(self.model(x[tf.newaxis], training=False), tf.float32)[0]
        logits = logits[:work[0], :work[1]]
        mask = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.uint8)
        # The argmax at working resolution, then the mask enlarged with nearest neighbour:
        # resizing 8 channels of logits to a 2048x1024 frame and taking the argmax there cost
        # 136 ms on this CPU, this 40 ms (docs/benchmarks/realtime.md); the model's own
        # bilinear upsampling already smoothed the boundaries at working resolution.
        mask = tf.cond(same, lambda: mask[..., tf.newaxis],
                       lambda: ops.resize_label(mask[..., tf.newaxis], size))
        # zlib level 1: a category mask compresses well even at the fastest level.
        return tf.io.encode_png(mask, compression=1)


def next_version(model_dir: str | os.PathLike) -> int:
    """The next free positive integer version under `MODELS/{name}/`."""
    versions = [int(name) for name in storage.listdir(model_dir)
                if name.isdigit() and storage.isdir(storage.join(model_dir, name))]
    return max(versions, default=0) + 1


def export_model(model: keras.Model, models_dir: str | os.PathLike, name: str, *,
                 stride: int, max_long_side: int | None = DEFAULT_MAX_LONG_SIDE,
                 version: int | None = None,
                 model_info: dict[str, Any] | None = None,
                 warmup_images: Sequence[bytes] = ()) -> str:
    """Writes `models_dir/name/version/` as a SavedModel with the contract's signature.

    A server polling the folder never loads a half-written model. Locally the version folder
    appears atomically (written beside it, then renamed). On an object store (`gs://`,
    `s3://`: `models_dir` may be any URL `tf.io.gfile` opens) a folder cannot be renamed, so
    the SavedModel is written to a local temporary folder and copied up with its
    `saved_model.pb` last: TF Serving finds no loadable model there before every file it
    needs is in place.

    Args:
      model: Keras model mapping float32 [B, H, W, 3] in [0, 1] to logits [B, H, W, 8].
      models_dir: the serving root holding one folder per model name.
      name: model name, as clients address it.
      stride: the model's stride (`models.model_stride`): frames are padded to it.
      max_long_side: the working resolution: frames whose long side is longer are shrunk to
        it (aspect ratio kept) before the model, and the masks resized back; None: every
        frame at its own size.
      version: positive integer; defaults to one more than the newest present.
      model_info: extra facts for `assets/model_info.json` (architecture, metrics, ...).
      warmup_images: encoded images written as TF Serving warmup requests.

    Returns:
      The version folder (a path string, a URL for a remote `models_dir`).

    Raises:
      ValueError: for a bad name or version, or a version that already exists.
    """
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"model name {name!r} must be letters, digits, '-', '_' or '.'")
    model_dir = storage.join(models_dir, name)
    storage.makedirs(model_dir)
    version = next_version(model_dir) if version is None else int(version)
    if version <= 0:
        raise ValueError(f"version must be a positive integer, not {version}")
    target = storage.join(model_dir, str(version))
    if storage.exists(target):
        raise ValueError(f"{target} already exists; pick another --version")

    remote = storage.is_remote(model_dir)
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=None if remote else model_dir)
    try:
        server = SegmentationServer(model, stride=stride, max_long_side=max_long_side)
        tf.saved_model.save(server, staging,
                            signatures={V.SIGNATURE_NAME: server.serve.get_concrete_function()})
        info = {
            "name": name,
            "version": version,
            "categories": list(V.CATEGORIES),
            "palette": [list(c) for c in V.PALETTE],
            # How frames are processed: shrunk to a long side of at most max_long_side
            # (aspect kept, never enlarged), padded to a multiple of stride.
            "working_resolution": {"max_long_side": max_long_side, "stride": stride,
                                   "aspect_ratio": "kept"},
            "signature": {"name": V.SIGNATURE_NAME, "input": V.INPUT_KEY, "output": V.OUTPUT_KEY},
            **(model_info or {}),
        }
        os.makedirs(os.path.join(staging, "assets"), exist_ok=True)
        with open(os.path.join(staging, "assets", V.MODEL_INFO_FILE), "w") as f:
            f.write(json.dumps(info, indent=2) + "\n")
        if warmup_images:
            write_warmup_requests(staging, name, warmup_images)
        if remote:
            storage.copy_tree(staging, target, last=(tf.saved_model.SAVED_MODEL_FILENAME_PB,))
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_warmup_requests(export_dir: str | os.PathLike, name: str,
                          images: Sequence[bytes]) -> str:
    """Writes `assets.extra/tf_serving_warmup_requests`, which TF Serving replays on load."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    folder = storage.join(export_dir, "assets.extra")
    storage.makedirs(folder)
    path = storage.join(folder, V.WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for encoded in images:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=name, signature_name=V.SIGNATURE_NAME))
            request.inputs[V.INPUT_KEY].CopyFrom(tf.make_tensor_proto([encoded], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


# --- CLI: cityseg-export -------------------------------------------------------------------

EXPORT_EPILOG = """\
examples:
  # export the best model of a training run as the next version of "fastscnn_s4"
  cityseg-export --run-dir runs/fastscnn_s4 --models-dir models --name fastscnn_s4

  # pin the version and attach evaluation metrics written by cityseg-evaluate
  cityseg-export --run-dir runs/unet --models-dir models --name unet --version 3 \\
      --metrics reports/unet/metrics.json

The version folder (MODELS/NAME/VERSION) is printed on stdout.
"""

def load_run_model(run_dir: str | os.PathLike, config: dict[str, Any]) -> tuple[keras.Model, str]:
    """The model of a training run: `best.keras`, else the last checkpoint (with a warning).

    Returns:
      (model, which) where `which` names the file the weights came from.

    Raises:
      FileNotFoundError: if the run has neither.
    """
    import logging

    from training import models

    run = os.fspath(run_dir)
    best = storage.join(run, run_layout.BEST_MODEL_FILE)
    if storage.isfile(best):
        return models.load_model(best), run_layout.BEST_MODEL_FILE
    checkpoint = f"{run_layout.CHECKPOINT_DIR}/{run_layout.CHECKPOINT_WEIGHTS_FILE}"
    last = storage.join(run, checkpoint)
    if not storage.isfile(last):
        raise FileNotFoundError(f"{run} has neither {run_layout.BEST_MODEL_FILE} nor {checkpoint}")
    logging.getLogger("cityseg.export").warning(
        "%s has no %s; exporting the last checkpoint %s instead", run,
        run_layout.BEST_MODEL_FILE, last)
    model = models.build_model(config["model"], num_classes=V.NUM_CATEGORIES,
                               width=config.get("width"))
    # The checkpoint is the training model's: with auxiliary heads when the run had them
    # (their layers are loaded and left out of the export), and optimizer state, which an
    # uncompiled model skips.
    trained = models.with_aux_heads(model, config["model"], None) if config.get(
        "aux_heads") else None
    (trained or model).load_weights(last, skip_mismatch=False)
    return model, checkpoint


def warmup_images_from_data(data_dir: str | os.PathLike, count: int = 3) -> list[bytes]:
    """A few images from DATA's val (else train) records, as stored (PNG, or JPEG).

    TF Serving replays them when it loads the model, so the first real request does not pay
    for graph warm-up. Returns [] when the data is not there (exporting on another machine).
    """
    from training import data

    for split in ("val", "train"):
        try:
            shards = data.list_shards(data_dir, split)
        except (FileNotFoundError, ValueError):
            continue
        images = []
        for serialized in tf.data.TFRecordDataset(shards).take(count):
            images.append(data.parse_example(serialized)[V.FEATURE_IMAGE].numpy())
        if images:
            return images
    return []


def gather_model_info(run_dir: str | os.PathLike, config: dict[str, Any], model: keras.Model,
                      source: str, metrics_file: str | os.PathLike | None) -> dict[str, Any]:
    """model_info.json's facts about a run: architecture, training data, evaluation metrics."""
    run_dir = os.fspath(run_dir)
    summary_path = storage.join(run_dir, run_layout.SUMMARY_FILE)
    summary = json.loads(storage.read_text(summary_path)) if storage.isfile(summary_path) else {}
    if metrics_file is None:
        found = [storage.join(run_dir, name) for name in run_layout.RUN_METRICS_FILES
                 if storage.isfile(storage.join(run_dir, name))]
        metrics_file = found[0] if found else None
    evaluation = json.loads(storage.read_text(metrics_file)) if metrics_file else None
    return {
        "architecture": {"model": config.get("model"), "width": config.get("width"),
                         "params": int(model.count_params()), "outputs": "logits"},
        "training": {
            "run_dir": run_dir if storage.is_remote(run_dir) else os.path.abspath(run_dir),
            "weights": source,
            "data_dir": config.get("data_dir"),
            "stats": config.get("stats"),
            "image_size": config.get("image_size"),
            "crop_size": config.get("crop_size"),
            "loss": config.get("loss"),
            "epochs_done": summary.get("epochs_done"),
            "training_seconds": summary.get("training_seconds"),
            "best_val_mean_iou": summary.get("best_val_mean_iou"),
            "best_val_loss": summary.get("best_val_loss"),
            "stopped_by": summary.get("stopped_by"),
        },
        "evaluation": evaluation,
        "evaluation_file": str(metrics_file) if metrics_file else None,
    }


def _export_parser():
    import argparse

    from cityseg.cli import HelpFormatter

    p = argparse.ArgumentParser(
        prog="cityseg-export", formatter_class=HelpFormatter, epilog=EXPORT_EPILOG,
        description="Export a training run as a versioned TF Serving SavedModel.")
    p.add_argument("--run-dir", required=True, help="a cityseg-train output folder (RUN)")
    p.add_argument("--models-dir", required=True, help="the serving root (MODELS)")
    p.add_argument("--name", required=True, help="model name clients use")
    p.add_argument("--version", type=int, default=None,
                   help="positive integer (default: one more than the newest)")
    p.add_argument("--metrics", default=None,
                   help="evaluation metrics JSON to embed (default: RUN/eval/metrics.json or "
                        "RUN/metrics.json when present)")
    p.add_argument("--data-dir", default=None,
                   help="DATA for warm-up images (default: the run's training data)")
    p.add_argument("--max-long-side", type=_long_side, default=DEFAULT_MAX_LONG_SIDE,
                   metavar="PIXELS",
                   help="working resolution: frames with a longer long side are shrunk to it "
                        "(aspect ratio kept, masks resized back to the frame); 'none': every "
                        "frame at its own size")
    p.add_argument("--warmup-images", type=int, default=3,
                   help="number of warm-up requests written (0: none)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _long_side(text: str) -> int | None:
    import argparse

    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'none', not {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _main(argv: Sequence[str] | None) -> int:
    import logging

    from cityseg.cli import CliError, setup_logging

    args = _export_parser().parse_args(argv)
    setup_logging(args.verbose)
    log = logging.getLogger("cityseg.export")
    run = args.run_dir
    config_path = storage.join(run, run_layout.CONFIG_FILE)
    if not storage.isfile(config_path):
        raise CliError(f"{run} is not a training run: {config_path} does not exist")
    if args.version is not None and args.version <= 0:
        raise CliError(f"--version must be a positive integer, not {args.version}")
    if args.metrics is not None and not storage.isfile(args.metrics):
        raise CliError(f"metrics file {args.metrics} does not exist")
    if args.warmup_images < 0:
        raise CliError(f"--warmup-images must be >= 0, not {args.warmup_images}")
    target = storage.join(args.models_dir, args.name, str(args.version))
    if args.version is not None and storage.exists(target):
        raise CliError(f"{target} already exists; pick another --version")
    config = json.loads(storage.read_text(config_path))
    from training.models import model_stride

    model, source = load_run_model(run, config)
    info = gather_model_info(run, config, model, source, args.metrics)
    data_dir = args.data_dir or config.get("data_dir")
    warmup = (warmup_images_from_data(data_dir, args.warmup_images)
              if data_dir and args.warmup_images else [])
    if args.warmup_images and not warmup:
        log.warning("no warm-up images: no val/train records under %s", data_dir)
    path = export_model(model, args.models_dir, args.name, stride=model_stride(config["model"]),
                        max_long_side=args.max_long_side, version=args.version,
                        model_info=info, warmup_images=warmup)
    log.info("exported %s (%s, long side at most %s, %d warm-up requests)", path, source,
             args.max_long_side or "the frame's", len(warmup))
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `cityseg-export`."""
    from cityseg.cli import run_cli

    return run_cli("cityseg-export", _main, argv)
