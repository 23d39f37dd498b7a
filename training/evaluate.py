"""`cityseg-evaluate`: dataset-level metrics and plots for a trained or exported model.

    cityseg-evaluate --data-dir DATA --model RUN --split val --report-dir REPORT

`--model` is one of:
- a training run folder (`RUN/best.keras`, image size from `RUN/config.json`, curves from
  `RUN/history.csv`) or a `.keras` file: evaluated through `training.data.make_dataset`, at the
  model's input size, exactly as the trainer validates;
- an exported SavedModel version folder (`MODELS/name/version`), or `MODELS/name` (newest
  version), scored in up to two passes through the `serving_default` signature:
  1. record resolution: the encoded PNGs stored in the TFRecords go through the signature and
     the returned masks are compared with the stored labels (the Beam job may have resized
     both, by default to 512x1024);
  2. raw resolution, what the decision system sees: for each `DATA/manifest.jsonl` row of the
     split, the raw camera image (`RAW/leftImg8bit/...png`) goes through the signature and the
     returned mask is compared, at the frame's own size, with the raw `..._gtFine_labelIds.png`
     remapped to the 8 categories (`cityseg.vocabulary.remap_labels`). RAW is `--raw-root`, or
     the input root that DATA/stats.json records (`input_root`); with neither, this pass is
     skipped. Pairs are read and checked by the Beam job's own per-pair code
     (`cityseg.raw.load_pair`); a row whose files are missing or no longer valid is
     skipped, counted in `raw.skipped` and reported in one warning line.

Writes REPORT/metrics.json (pixel accuracy, mean IoU in both conventions, IoU per category, the
confusion matrix; for SavedModels scored at raw resolution also a `raw` object with the same
keys plus `images`, `skipped`, `skipped_reasons`, `raw_root` and `resolution: "raw"`) and the
plots of `training.plots` (plus `iou_per_category_raw.png`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from cityseg import vocabulary as V
from cityseg.cli import CliError, HelpFormatter, parse_size, run_cli, setup_logging
from cityseg.stats import load_stats
from training import plots
from training.run_layout import BEST_MODEL_FILE, CONFIG_FILE, HISTORY_FILE, METRICS_FILE

# TensorFlow (and training.metrics and training.storage, which need it) is imported inside the
# functions that use it: `--help` and flag errors answer at once, and setup_logging() quietens
# TF before it loads. DATA, the model and REPORT are path strings read and written through
# `training.storage` (tf.io.gfile), so any of them may be a gs:// or s3:// URL; RAW (the raw
# Cityscapes tree of the raw-resolution pass) is a local folder.

log = logging.getLogger("cityseg.evaluate")

SAVED_MODEL_FILE = "saved_model.pb"
LOG_EVERY_S = 10.0

KERAS = "keras"
SAVED_MODEL = "saved_model"

RECORD_RESOLUTION = "record"
RAW_RESOLUTION = "raw"
RAW_IOU_FILE = "iou_per_category_raw.png"
# The stats.json key under which a preprocessing run may record its --input-root: the default
# raw root. The Beam job does not write it yet; --raw-root always works.
STATS_INPUT_ROOT_KEY = "input_root"
# Skip reason of a manifest row whose raw image or label file is gone; the other reasons are
# the Beam job's own (`cityseg.raw.REASONS`).
MISSING_FILE = "missing_file"


@dataclass
class EvalConfig:
    """One evaluation run; `validate` rejects impossible values before any work starts."""

    data_dir: str
    model: str
    split: str = "val"
    report_dir: str = "report"
    batch_size: int = 4
    image_size: tuple[int, int] | None = None
    max_images: int | None = None
    overlays: int = 4
    raw_root: Path | None = None                # None: the one stats.json records, if any

    def validate(self) -> None:
        V.check_split(self.split)
        if self.batch_size < 1:
            raise CliError(f"--batch-size must be >= 1, not {self.batch_size}")
        if self.max_images is not None and self.max_images < 1:
            raise CliError(f"--max-images must be >= 1, not {self.max_images}")
        if self.overlays < 0:
            raise CliError(f"--overlays must be >= 0, not {self.overlays}")
        from training import storage

        if not storage.isdir(self.data_dir):
            raise CliError(f"data dir {self.data_dir} does not exist")
        if not storage.exists(self.model):
            raise CliError(f"model {self.model} does not exist")
        if self.raw_root is not None and not self.raw_root.is_dir():
            raise CliError(f"--raw-root {self.raw_root} does not exist or is not a directory")


@dataclass
class ModelSource:
    """What `--model` points at, resolved."""

    kind: str                                   # KERAS or SAVED_MODEL
    path: str                                   # the .keras file or SavedModel folder
    image_size: tuple[int, int] | None = None   # Keras input size, from the run's config
    run_dir: str | None = None                  # the training run, for history.csv


@dataclass
class Evaluation:
    """A dataset-level confusion matrix and a few (image, truth, prediction) samples."""

    cm: np.ndarray
    images: int
    resolution: str
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> inputs not scored


@dataclass
class RawFrame:
    """One manifest row read from the raw tree: what is sent and what it is scored against."""

    image_id: str
    encoded: bytes          # the raw image file's bytes, sent as they are
    image: np.ndarray       # uint8 [H, W, 3]
    truth: np.ndarray       # uint8 [H, W] category ids, remapped from the raw label ids


# --- Resolving --model -------------------------------------------------------------------

def resolve_model(path: str | os.PathLike) -> ModelSource:
    """Works out what kind of model `path` is (see the module docstring).

    Raises:
      FileNotFoundError: for a path holding none of the supported layouts.
    """
    from training import storage

    path = os.fspath(path)
    if storage.isfile(path):
        if not path.endswith(".keras"):
            raise FileNotFoundError(f"{path} is not a .keras file, run folder or SavedModel")
        return ModelSource(KERAS, path)
    if not storage.isdir(path):
        raise FileNotFoundError(f"model {path} does not exist")
    if storage.isfile(storage.join(path, SAVED_MODEL_FILE)):
        return ModelSource(SAVED_MODEL, path)
    if storage.isfile(storage.join(path, BEST_MODEL_FILE)):
        return ModelSource(KERAS, storage.join(path, BEST_MODEL_FILE),
                           image_size=run_image_size(path), run_dir=path)
    versions = sorted((int(name), storage.join(path, name)) for name in storage.listdir(path)
                      if name.isdigit()
                      and storage.isfile(storage.join(path, name, SAVED_MODEL_FILE)))
    if versions:
        return ModelSource(SAVED_MODEL, versions[-1][1])
    raise FileNotFoundError(
        f"{path} holds no {BEST_MODEL_FILE}, {SAVED_MODEL_FILE} or numbered SavedModel versions")


def run_image_size(run_dir: str) -> tuple[int, int] | None:
    """The training image size recorded in `RUN/config.json` (`image_size` [h, w] or "HxW")."""
    from training import storage

    config_path = storage.join(run_dir, CONFIG_FILE)
    if not storage.isfile(config_path):
        return None
    try:
        config = json.loads(storage.read_text(config_path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    size = config.get("image_size") if isinstance(config, dict) else None
    if size is None:
        return None
    if isinstance(size, str):
        return parse_size(size)
    height, width = (int(s) for s in size)
    return height, width



# --- Evaluating ----------------------------------------------------------------------------

def evaluate_keras(model, data_dir: str, split: str, *, stride: int,
                   image_size: tuple[int, int] | None = None, max_images: int | None = None,
                   num_samples: int = 0) -> Evaluation:
    """Confusion matrix of a Keras logits model over a split, on whole frames.

    Each frame keeps its stored size (or is resized to `image_size`, for runs trained that
    way), is padded to a multiple of `stride` exactly as in validation (`cityseg.ops`), and
    the prediction is cropped back to the frame before it is scored: aspect ratio kept, no
    padded pixel counted.
    """
    import tensorflow as tf

    from cityseg import ops
    from training import data

    records = data.read_records(data.list_shards(data_dir, split))

    def prepare(serialized):
        image, label = data.resize_example(*data.decode_example(data.parse_example(serialized)),
                                           image_size)
        padded, _ = ops.pad_to_multiple(image, None, stride)
        return padded, image, label

    dataset = records.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)

    @tf.function(reduce_retracing=True)
    def predict(padded):
        return tf.argmax(model(padded[tf.newaxis], training=False)[0], axis=-1,
                         output_type=tf.int32)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for padded, image, label in dataset:
            height, width = label.shape
            pred = predict(padded).numpy()[:height, :width]
            yield image.numpy()[None], label.numpy()[None], pred[None]

    resolution = "x".join(map(str, image_size)) if image_size else "stored"
    return accumulate(batches(), max_images, num_samples, resolution)


def serving_signature(export_dir: str):
    """Loads a SavedModel and returns its `serving_default` concrete function.

    Raises:
      ValueError: if the SavedModel has no such signature.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(os.fspath(export_dir))
    if V.SIGNATURE_NAME not in loaded.signatures:
        raise ValueError(f"{export_dir} has no {V.SIGNATURE_NAME!r} signature")
    return loaded.signatures[V.SIGNATURE_NAME]


def evaluate_saved_model(export_dir: str, data_dir: str, split: str, *, batch_size: int,
                         max_images: int | None = None, num_samples: int = 0,
                         serve=None) -> Evaluation:
    """Confusion matrix of an exported SavedModel over a split, through its serving signature.

    The stored image bytes (PNG, or JPEG from `cityseg-preprocess --image-format jpeg`) are
    sent as they are, and the returned PNG masks are compared with the stored labels at full
    record resolution: what a serving client would get.

    Args:
      serve: the signature from `serving_signature(export_dir)`, when the caller already
        loaded it (one load for both passes); None loads it here.
    """
    import tensorflow as tf

    from training.data import list_shards, parse_example, read_records

    if serve is None:
        serve = serving_signature(export_dir)
    records = read_records(list_shards(data_dir, split)).map(parse_example).batch(batch_size)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for features in records:
            encoded = features[V.FEATURE_IMAGE]
            masks = serve(**{V.INPUT_KEY: encoded})[V.OUTPUT_KEY].numpy()
            for image_png, label_png, mask_png in zip(
                    encoded.numpy(), features[V.FEATURE_LABEL].numpy(), masks):
                # tf.io.decode_png decodes JPEG records too (as its documentation says).
                image = tf.io.decode_png(image_png, channels=3).numpy()
                label = tf.io.decode_png(label_png, channels=1).numpy()[..., 0]
                mask = tf.io.decode_png(mask_png, channels=1).numpy()[..., 0]
                if mask.shape != label.shape:
                    raise ValueError(f"served mask {mask.shape} differs from label {label.shape}")
                yield image[None], label[None], mask[None]

    return accumulate(batches(), max_images, num_samples, RECORD_RESOLUTION)


# --- Raw frames (SavedModels, at the camera's own resolution) ------------------------------

def default_raw_root(data_dir: str) -> Path | None:
    """The raw root DATA/stats.json records as the preprocessing input, or None."""
    root = load_stats(data_dir, required=False).get(STATS_INPUT_ROOT_KEY)
    return Path(root) if isinstance(root, str) and root else None


def manifest_rows(data_dir: str, split: str) -> list[dict[str, Any]]:
    """The manifest rows of one split, sorted by image id.

    Raises:
      FileNotFoundError: if DATA/manifest.jsonl is missing.
      ValueError: if a line is not JSON.
    """
    from cityseg.raw import read_jsonl
    from training import storage

    path = storage.join(data_dir, V.MANIFEST_FILE)
    if not storage.isfile(path):
        raise FileNotFoundError(f"no {V.MANIFEST_FILE} in {data_dir} (run cityseg-preprocess "
                                "first); it lists the raw frames to score")
    try:
        rows = read_jsonl(path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} holds a line that is not JSON: {err}") from None
    rows = [row for row in rows if isinstance(row, dict) and row.get("split") == split]
    return sorted(rows, key=lambda row: str(row.get("image_id")))


def load_raw_frame(raw_root: Path, row: dict[str, Any]) -> RawFrame:
    """Reads one manifest row's raw image and label, checked as the Beam job checks them.

    Raises:
      cityseg.raw.RejectedInput: with the reason the row cannot be scored (`missing_file`,
        or one of the Beam job's reasons, e.g. `unknown_label_ids` for a label id outside
        0..33 such as 255).
    """
    from cityseg import raw

    image_id = str(row.get("image_id"))
    image_rel, label_rel = row.get("image"), row.get("label")
    if not image_rel or not label_rel:
        raise raw.RejectedInput(raw.IMAGE_WITHOUT_LABEL,
                                "manifest row lists no image or no label", str(image_rel))
    for rel in (image_rel, label_rel):
        if not (raw_root / rel).is_file():
            raise raw.RejectedInput(MISSING_FILE, "file not found", rel)
    pair = raw.Pair(str(row.get("split")), image_id, str(row.get("city")), image_rel, label_rel)
    # The signature takes the image file's bytes, exactly as a client sends them.
    encoded, image, label_ids = raw.load_pair(str(raw_root), pair)
    return RawFrame(image_id, encoded, image, raw.to_category_mask(label_ids, label_rel))


def evaluate_saved_model_raw(export_dir: str, data_dir: str, split: str, raw_root: Path, *,
                             batch_size: int, max_images: int | None = None,
                             serve=None) -> Evaluation:
    """Confusion matrix of an exported SavedModel over the raw frames of a split.

    Each manifest row's raw image goes through the serving signature and the returned mask is
    compared, at the raw frame's own size, with the raw label remapped to the 8 categories.
    Rows that cannot be read are skipped and counted (`Evaluation.skipped`), never fatal:
    one warning line names how many and why.

    Args:
      serve: as for `evaluate_saved_model`.

    Raises:
      FileNotFoundError: if DATA/manifest.jsonl is missing.
      ValueError: if a served mask's size differs from its raw frame's.
    """
    import tensorflow as tf

    from cityseg.raw import RejectedInput

    if serve is None:
        serve = serving_signature(export_dir)
    rows = manifest_rows(data_dir, split)
    skipped: Counter[str] = Counter()
    skipped_ids: list[str] = []

    def frames() -> Iterator[RawFrame]:
        for row in rows:
            try:
                yield load_raw_frame(raw_root, row)
            except RejectedInput as err:
                skipped[err.reason] += 1
                skipped_ids.append(str(row.get("image_id")))
                log.debug("raw frame %s skipped: %s", row.get("image_id"), err)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        # Frames are pulled only as far as --max-images needs, so rows past the limit are
        # neither read nor counted as skipped.
        pending = frames()
        scored = 0
        while max_images is None or scored < max_images:
            want = batch_size if max_images is None else min(batch_size, max_images - scored)
            chunk = [frame for _, frame in zip(range(want), pending)]
            if not chunk:
                return
            masks = serve(**{V.INPUT_KEY: tf.constant([f.encoded for f in chunk])})
            for frame, mask_png in zip(chunk, masks[V.OUTPUT_KEY].numpy()):
                mask = tf.io.decode_png(mask_png, channels=1).numpy()[..., 0]
                if mask.shape != frame.truth.shape:
                    raise ValueError(f"served mask {mask.shape} of {frame.image_id} differs "
                                     f"from its raw label {frame.truth.shape}")
                yield frame.image[None], frame.truth[None], mask[None]
            scored += len(chunk)

    evaluation = accumulate(batches(), max_images, 0, RAW_RESOLUTION, allow_empty=True)
    evaluation.skipped = dict(sorted(skipped.items()))
    if skipped:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in evaluation.skipped.items())
        shown = ", ".join(skipped_ids[:3]) + (", ..." if len(skipped_ids) > 3 else "")
        log.warning("raw pass: skipped %d manifest rows of split %s under %s (%s), e.g. %s",
                    sum(skipped.values()), split, raw_root, reasons, shown)
    if evaluation.images == 0:
        log.warning("raw pass: no raw frame of split %s could be scored under %s", split,
                    raw_root)
    return evaluation


def keras_model_stride(model) -> int:
    """The stride frames are padded to: that of the architecture the model is named after
    (the builders name their models, and best.keras keeps the name), else the largest."""
    from training import models

    return models.MODEL_STRIDES.get(model.name, max(models.MODEL_STRIDES.values()))


def accumulate(batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]],
               max_images: int | None, num_samples: int, resolution: str, *,
               allow_empty: bool = False) -> Evaluation:
    """Adds (images, labels, predictions) batches into one confusion matrix, logging progress.

    Keeps the first `num_samples` images for the overlays and stops after `max_images`.

    Raises:
      ValueError: if no batch holds an image (unless `allow_empty`).
    """
    from training import metrics as M

    cm = np.zeros((V.NUM_CATEGORIES, V.NUM_CATEGORIES), dtype=np.int64)
    images = 0
    samples = []
    started = last_log = time.monotonic()
    for image, label, pred in batches:
        if max_images is not None:
            keep = max_images - images
            image, label, pred = image[:keep], label[:keep], pred[:keep]
        cm += M.confusion_matrix(label, pred)
        for i in range(min(len(label), num_samples - len(samples))):
            samples.append((image[i], label[i], pred[i], f"image {images + i}"))
        images += len(label)
        now = time.monotonic()
        if now - last_log >= LOG_EVERY_S:
            log.info("%d images at %s resolution (%.1f/s), running pixel accuracy %.4f",
                     images, resolution, images / (now - started),
                     np.trace(cm) / max(cm.sum(), 1))
            last_log = now
        if max_images is not None and images >= max_images:
            break
    if images == 0 and not allow_empty:
        raise ValueError("the split holds no images")
    return Evaluation(cm, images, resolution, samples)


# --- The report ----------------------------------------------------------------------------

def model_title(source: ModelSource) -> str:
    """A short name for plot titles: run folder name, `name vN` for exports, or file stem."""
    from training import storage

    if source.run_dir is not None:
        return storage.basename(source.run_dir)
    if source.kind == SAVED_MODEL:
        return f"{storage.basename(storage.parent(source.path))} v{storage.basename(source.path)}"
    return os.path.splitext(storage.basename(source.path))[0]


def write_report(evaluation: Evaluation, report_dir: str, *, source: ModelSource, split: str,
                 data_dir: str, seconds: float, raw: Evaluation | None = None,
                 raw_root: Path | None = None) -> dict[str, Any]:
    """Writes metrics.json and the plots; returns the metrics dict.

    matplotlib writes local files only: for a remote `report_dir` the report is made in a
    local folder and copied there (`storage.local_folder`).

    Args:
      raw: the raw-resolution pass (`evaluate_saved_model_raw`), reported under `raw`; when
        None, metrics.json holds no `raw` key.
      raw_root: the raw tree that pass read.
    """
    from training import storage

    with storage.local_folder(report_dir) as local:
        return _write_report(evaluation, Path(local), source=source, split=split,
                             data_dir=data_dir, seconds=seconds, raw=raw, raw_root=raw_root)


def _write_report(evaluation: Evaluation, report_dir: Path, *, source: ModelSource, split: str,
                  data_dir: str, seconds: float, raw: Evaluation | None,
                  raw_root: Path | None) -> dict[str, Any]:
    from training import metrics as M
    from training import storage

    summary = M.summarize(evaluation.cm)
    title = f"{model_title(source)} - {split}"
    figures = [plots.plot_iou(summary, report_dir / plots.IOU_FILE, title=f"IoU: {title}"),
               plots.plot_confusion(evaluation.cm, report_dir / plots.CONFUSION_FILE,
                                    title=f"Confusion (row-normalised): {title}"),
               plots.plot_overlays(evaluation.samples, report_dir / plots.OVERLAYS_FILE,
                                   title=title)]
    history = storage.join(source.run_dir, HISTORY_FILE) if source.run_dir else None
    if history is not None and storage.isfile(history):
        with storage.local_copy(history) as local_history:
            figures.append(plots.plot_history(local_history, report_dir / plots.HISTORY_FILE,
                                              title=f"Training: {title}"))
    raw_metrics = None
    if raw is not None:
        raw_summary = M.summarize(raw.cm)
        if raw.images:
            figures.append(plots.plot_iou(raw_summary, report_dir / RAW_IOU_FILE,
                                          title=f"IoU at raw resolution: {title}"))
        raw_metrics = {
            "resolution": raw.resolution,
            "raw_root": str(raw_root) if raw_root is not None else None,
            "images": raw.images,
            "skipped": sum(raw.skipped.values()),
            "skipped_reasons": raw.skipped,
            **raw_summary,
            "confusion_matrix": raw.cm.tolist(),
        }
    metrics = {
        "model": str(source.path),
        "model_kind": source.kind,
        "data_dir": str(data_dir),
        "split": split,
        "images": evaluation.images,
        "resolution": evaluation.resolution,
        **summary,
        "categories": list(V.CATEGORIES),
        "confusion_matrix": evaluation.cm.tolist(),
        "seconds": round(seconds, 3),
        "plots": [p.name for p in figures if p is not None],
    }
    if raw_metrics is not None:
        metrics["raw"] = raw_metrics
    (report_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Runs one evaluation end to end; returns what metrics.json holds."""
    config.validate()
    source = resolve_model(config.model)
    started = time.monotonic()
    log.info("evaluating %s (%s) on %s/%s", source.path, source.kind, config.data_dir,
             config.split)
    raw = raw_root = None
    if source.kind == SAVED_MODEL:
        raw_root = raw_root_for(config)
        serve = serving_signature(source.path)
        evaluation = evaluate_saved_model(
            source.path, config.data_dir, config.split, batch_size=config.batch_size,
            max_images=config.max_images, num_samples=config.overlays, serve=serve)
        if raw_root is not None:
            log.info("scoring the raw frames of %s under %s at their own resolution",
                     config.split, raw_root)
            raw = evaluate_saved_model_raw(
                source.path, config.data_dir, config.split, raw_root,
                batch_size=config.batch_size, max_images=config.max_images, serve=serve)
    else:
        if config.raw_root is not None:
            log.info("--raw-root ignored: raw-resolution scoring is for exported SavedModels")
        from training.models import load_model

        model = load_model(source.path)
        evaluation = evaluate_keras(
            model, config.data_dir, config.split, stride=keras_model_stride(model),
            image_size=config.image_size or source.image_size, max_images=config.max_images,
            num_samples=config.overlays)
    metrics = write_report(evaluation, config.report_dir, source=source, split=config.split,
                           data_dir=config.data_dir, seconds=time.monotonic() - started,
                           raw=raw, raw_root=raw_root)
    log.info("%d images: pixel accuracy %s, mean IoU (7, void ignored) %s, (8) %s -> %s",
             metrics["images"], _fmt(metrics["pixel_accuracy"]), _fmt(metrics["mean_iou_7"]),
             _fmt(metrics["mean_iou_8"]), f"{config.report_dir}/{METRICS_FILE}")
    if "raw" in metrics:
        raw_metrics = metrics["raw"]
        log.info("raw resolution, %d images (%d skipped): pixel accuracy %s, mean IoU (7) %s, "
                 "(8) %s", raw_metrics["images"], raw_metrics["skipped"],
                 _fmt(raw_metrics["pixel_accuracy"]), _fmt(raw_metrics["mean_iou_7"]),
                 _fmt(raw_metrics["mean_iou_8"]))
    return metrics


def raw_root_for(config: EvalConfig) -> Path | None:
    """The raw tree to score a SavedModel on: --raw-root, else the one stats.json records.

    Returns None (with one INFO line) when neither names a usable folder.

    Raises:
      CliError: if --raw-root is given and DATA/manifest.jsonl is missing.
    """
    from training import storage

    manifest = storage.join(config.data_dir, V.MANIFEST_FILE)
    if config.raw_root is not None:
        if not storage.isfile(manifest):
            raise CliError(f"--raw-root needs {manifest} (the list of raw frames), which does "
                           "not exist")
        return config.raw_root
    recorded = default_raw_root(config.data_dir)
    if recorded is None:
        log.info("raw-resolution scoring skipped: no --raw-root and %s records no %r",
                 storage.join(config.data_dir, V.STATS_FILE), STATS_INPUT_ROOT_KEY)
        return None
    if not recorded.is_dir() or not storage.isfile(manifest):
        log.info("raw-resolution scoring skipped: the recorded input root %s or %s is missing "
                 "(pass --raw-root)", recorded, manifest)
        return None
    return recorded


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# --- CLI -------------------------------------------------------------------------------------

EPILOG = """\
examples:
  cityseg-evaluate --data-dir data --model runs/unet --split val --report-dir reports/unet
  cityseg-evaluate --data-dir data --model runs/unet/best.keras --image-size 256x512 \\
      --split val --report-dir reports/unet-keras --max-images 50
  cityseg-evaluate --data-dir data --model models/unet/1 --split test --report-dir reports/served
  # an export scored at record size and at the raw frames' own size (metrics.json "raw")
  cityseg-evaluate --data-dir data --model models/unet --raw-root cityscapes \\
      --split val --report-dir reports/served-raw

metrics.json reports mean_iou_7 (Cityscapes: 7 categories, ground-truth void ignored) and
mean_iou_8 (all 8 categories including void, every pixel counted). For a SavedModel with a raw
root, its "raw" object holds the same figures for the raw images against their remapped
gtFine labelIds, with "images" scored and "skipped" manifest rows (files missing or invalid).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityseg-evaluate", description=__doc__.split("\n")[0], epilog=EPILOG,
        formatter_class=HelpFormatter)
    parser.add_argument("--data-dir", required=True,
                        help="the preprocessing output (holding tfrecords/)")
    parser.add_argument("--model", required=True,
                        help="a run folder, a .keras file, or a SavedModel (MODELS/name[/version])")
    parser.add_argument("--split", default="val", help="split to evaluate")
    parser.add_argument("--report-dir", required=True,
                        help="where metrics.json and the plots go")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call")
    parser.add_argument("--image-size", type=parse_size, default=None,
                        help="HxW the Keras model sees (default: the run's config or the model's "
                             "input shape); ignored for SavedModels, which resize in the graph")
    parser.add_argument("--max-images", type=int, default=None,
                        help="evaluate at most this many images")
    parser.add_argument("--overlays", type=int, default=4,
                        help="image/truth/prediction rows in overlays.png")
    parser.add_argument("--raw-root", type=Path, default=None,
                        help="the raw Cityscapes tree (leftImg8bit/, gtFine/) the manifest "
                             "points into: SavedModels are also scored on its frames at their "
                             "own resolution (default: the input root DATA/stats.json "
                             "records, if any; else that pass is skipped)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = EvalConfig(data_dir=args.data_dir, model=args.model, split=args.split,
                        report_dir=args.report_dir, batch_size=args.batch_size,
                        image_size=args.image_size, max_images=args.max_images,
                        overlays=args.overlays, raw_root=args.raw_root)
    evaluate(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `cityseg-evaluate`."""
    return run_cli("cityseg-evaluate", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
