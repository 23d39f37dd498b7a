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
from training.evaluate import METRICS_FILE


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


# --- CLI: cityseg-export -------------------------------------------------------------------

EXPORT_EPILOG = """\
examples:
  # export the best model of a training run as the next version of "fastscnn"
  cityseg-export --run-dir runs/fastscnn --models-dir models --name fastscnn

  # pin the version and attach evaluation metrics written by cityseg-evaluate
  cityseg-export --run-dir runs/unet --models-dir models --name unet --version 3 \\
      --metrics reports/unet/metrics.json

The version folder (MODELS/NAME/VERSION) is printed on stdout.
"""

# Where cityseg-evaluate's report may sit inside a RUN folder, in order of preference.
# Where cityseg-evaluate's report may sit inside a RUN (`--report-dir RUN/eval` or RUN itself).
RUN_METRICS_FILES = (f"eval/{METRICS_FILE}", METRICS_FILE)


def load_run_model(run_dir: str | os.PathLike, config: dict[str, Any]) -> tuple[keras.Model, str]:
    """The model of a training run: `best.keras`, else the last checkpoint (with a warning).

    Returns:
      (model, which) where `which` names the file the weights came from.

    Raises:
      FileNotFoundError: if the run has neither.
    """
    import logging

    from training import models, train

    run = Path(run_dir)
    best = run / train.BEST_MODEL_FILE
    if best.is_file():
        return models.load_model(best), train.BEST_MODEL_FILE
    from training.callbacks import WEIGHTS_FILE

    last = run / train.CHECKPOINT_DIR / WEIGHTS_FILE
    if not last.is_file():
        raise FileNotFoundError(f"{run} has neither {train.BEST_MODEL_FILE} nor "
                                f"{train.CHECKPOINT_DIR}/{WEIGHTS_FILE}")
    logging.getLogger("cityseg.export").warning(
        "%s has no %s; exporting the last checkpoint %s instead", run, train.BEST_MODEL_FILE,
        last)
    model = models.build_model(config["model"], num_classes=V.NUM_CATEGORIES,
                               width=config.get("width"))
    # The checkpoint also holds optimizer state, which an uncompiled model skips.
    model.load_weights(last, skip_mismatch=False)
    return model, f"{train.CHECKPOINT_DIR}/{WEIGHTS_FILE}"


def warmup_images_from_data(data_dir: str | os.PathLike, size: tuple[int, int],
                            count: int = 3) -> list[bytes]:
    """A few PNG images from DATA's val (else train) records, resized to `size`.

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
            image, _ = data.decode_example(data.parse_example(serialized))
            small = tf.cast(tf.round(ops.resize_image(image, size)), tf.uint8)
            images.append(tf.io.encode_png(small).numpy())
        if images:
            return images
    return []


def gather_model_info(run_dir: Path, config: dict[str, Any], model: keras.Model, source: str,
                      metrics_file: str | os.PathLike | None) -> dict[str, Any]:
    """model_info.json's facts about a run: architecture, training data, evaluation metrics."""
    from training import train

    summary_path = run_dir / train.SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if metrics_file is None:
        found = [run_dir / name for name in RUN_METRICS_FILES if (run_dir / name).is_file()]
        metrics_file = found[0] if found else None
    evaluation = json.loads(Path(metrics_file).read_text()) if metrics_file else None
    return {
        "architecture": {"model": config.get("model"), "width": config.get("width"),
                         "params": int(model.count_params()), "outputs": "logits"},
        "training": {
            "run_dir": str(run_dir.resolve()),
            "weights": source,
            "data_dir": config.get("data_dir"),
            "stats": config.get("stats"),
            "image_size": config.get("image_size"),
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
    p.add_argument("--warmup-images", type=int, default=3,
                   help="number of warm-up requests written (0: none)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _main(argv: Sequence[str] | None) -> int:
    import logging

    from cityseg.cli import CliError, setup_logging
    from training import train

    args = _export_parser().parse_args(argv)
    setup_logging(args.verbose)
    log = logging.getLogger("cityseg.export")
    run = Path(args.run_dir)
    config_path = run / train.CONFIG_FILE
    if not config_path.is_file():
        raise CliError(f"{run} is not a training run: {config_path} does not exist")
    if args.version is not None and args.version <= 0:
        raise CliError(f"--version must be a positive integer, not {args.version}")
    if args.metrics is not None and not Path(args.metrics).is_file():
        raise CliError(f"metrics file {args.metrics} does not exist")
    if args.warmup_images < 0:
        raise CliError(f"--warmup-images must be >= 0, not {args.warmup_images}")
    target = Path(args.models_dir) / args.name / str(args.version)
    if args.version is not None and target.exists():
        raise CliError(f"{target} already exists; pick another --version")
    config = json.loads(config_path.read_text())
    input_size = tuple(int(s) for s in config["image_size"])

    model, source = load_run_model(run, config)
    info = gather_model_info(run, config, model, source, args.metrics)
    data_dir = args.data_dir or config.get("data_dir")
    warmup = (warmup_images_from_data(data_dir, input_size, args.warmup_images)
              if data_dir and args.warmup_images else [])
    if args.warmup_images and not warmup:
        log.warning("no warm-up images: no val/train records under %s", data_dir)
    path = export_model(model, args.models_dir, args.name, input_size=input_size,
                        version=args.version, model_info=info, warmup_images=warmup)
    log.info("exported %s (%s, input %dx%d, %d warm-up requests)", path, source, *input_size,
             len(warmup))
    print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `cityseg-export`."""
    from cityseg.cli import run_cli

    return run_cli("cityseg-export", _main, argv)
