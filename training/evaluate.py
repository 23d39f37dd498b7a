"""`cityseg-evaluate`: dataset-level metrics and plots for a trained or exported model.

    cityseg-evaluate --data-dir DATA --model RUN --split val --report-dir REPORT

`--model` is one of:
- a training run folder (`RUN/best.keras`, image size from `RUN/config.json`, curves from
  `RUN/history.csv`) or a `.keras` file: evaluated through `training.data.make_dataset`, at the
  model's input size, exactly as the trainer validates;
- an exported SavedModel version folder (`MODELS/name/version`), or `MODELS/name` (newest
  version): the encoded PNGs stored in the TFRecords go through the `serving_default`
  signature and the returned masks are compared with the stored labels at full record
  resolution, exactly the serving path.

Writes REPORT/metrics.json (pixel accuracy, mean IoU in both conventions, IoU per category, the
confusion matrix) and the plots of `training.plots`.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from cityseg import vocabulary as V
from cityseg.cli import CliError, HelpFormatter, parse_size, run_cli, setup_logging
from training import plots
from training.train import BEST_MODEL_FILE, CONFIG_FILE, HISTORY_FILE

# TensorFlow (and training.metrics, which needs it) is imported inside the functions that use
# it: `--help` and flag errors answer at once, and setup_logging() quietens TF before it loads.

log = logging.getLogger("cityseg.evaluate")

METRICS_FILE = "metrics.json"
# The RUN layout is the trainer's (training/train.py); these names only say which parts we read.
RUN_MODEL_FILE = BEST_MODEL_FILE
RUN_CONFIG_FILE = CONFIG_FILE
RUN_HISTORY_FILE = HISTORY_FILE
SAVED_MODEL_FILE = "saved_model.pb"
LOG_EVERY_S = 10.0

KERAS = "keras"
SAVED_MODEL = "saved_model"


@dataclass
class EvalConfig:
    """One evaluation run; `validate` rejects impossible values before any work starts."""

    data_dir: Path
    model: Path
    split: str = "val"
    report_dir: Path = Path("report")
    batch_size: int = 4
    image_size: tuple[int, int] | None = None
    max_images: int | None = None
    overlays: int = 4

    def validate(self) -> None:
        if self.split not in V.SPLITS:
            raise CliError(f"unknown split {self.split!r} (expected one of {', '.join(V.SPLITS)})")
        if self.batch_size < 1:
            raise CliError(f"--batch-size must be >= 1, not {self.batch_size}")
        if self.max_images is not None and self.max_images < 1:
            raise CliError(f"--max-images must be >= 1, not {self.max_images}")
        if self.overlays < 0:
            raise CliError(f"--overlays must be >= 0, not {self.overlays}")
        if not self.data_dir.is_dir():
            raise CliError(f"data dir {self.data_dir} does not exist")
        if not self.model.exists():
            raise CliError(f"model {self.model} does not exist")


@dataclass
class ModelSource:
    """What `--model` points at, resolved."""

    kind: str                                   # KERAS or SAVED_MODEL
    path: Path                                  # the .keras file or SavedModel folder
    image_size: tuple[int, int] | None = None   # Keras input size, from the run's config
    run_dir: Path | None = None                 # the training run, for history.csv


@dataclass
class Evaluation:
    """A dataset-level confusion matrix and a few (image, truth, prediction) samples."""

    cm: np.ndarray
    images: int
    resolution: str
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = field(default_factory=list)


# --- Resolving --model -------------------------------------------------------------------

def resolve_model(path: str | Path) -> ModelSource:
    """Works out what kind of model `path` is (see the module docstring).

    Raises:
      FileNotFoundError: for a path holding none of the supported layouts.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".keras":
            raise FileNotFoundError(f"{path} is not a .keras file, run folder or SavedModel")
        return ModelSource(KERAS, path)
    if not path.is_dir():
        raise FileNotFoundError(f"model {path} does not exist")
    if (path / SAVED_MODEL_FILE).is_file():
        return ModelSource(SAVED_MODEL, path)
    if (path / RUN_MODEL_FILE).is_file():
        return ModelSource(KERAS, path / RUN_MODEL_FILE, image_size=run_image_size(path),
                           run_dir=path)
    versions = sorted((int(p.name), p) for p in path.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / SAVED_MODEL_FILE).is_file())
    if versions:
        return ModelSource(SAVED_MODEL, versions[-1][1])
    raise FileNotFoundError(
        f"{path} holds no {RUN_MODEL_FILE}, {SAVED_MODEL_FILE} or numbered SavedModel versions")


def run_image_size(run_dir: Path) -> tuple[int, int] | None:
    """The training image size recorded in `RUN/config.json` (`image_size` [h, w] or "HxW")."""
    config_path = run_dir / RUN_CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
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

def evaluate_keras(model, data_dir: Path, split: str, *, batch_size: int,
                   image_size: tuple[int, int] | None, max_images: int | None = None,
                   num_samples: int = 0) -> Evaluation:
    """Confusion matrix of a Keras logits model over a split, at the model's input size.

    Images and labels come through `training.data.make_dataset`, so they are resized exactly
    as in training and validation (labels with nearest neighbour).
    """
    import tensorflow as tf

    from training.data import make_dataset

    if image_size is None:
        image_size = static_input_size(model)
    dataset = make_dataset(data_dir, split, batch_size=batch_size, image_size=image_size)

    @tf.function(reduce_retracing=True)
    def predict(images):
        return tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for images, labels in dataset:
            yield images.numpy(), labels.numpy(), predict(images).numpy()

    resolution = "x".join(map(str, image_size)) if image_size else "stored"
    return accumulate(batches(), max_images, num_samples, resolution)


def evaluate_saved_model(export_dir: Path, data_dir: Path, split: str, *, batch_size: int,
                         max_images: int | None = None, num_samples: int = 0) -> Evaluation:
    """Confusion matrix of an exported SavedModel over a split, through its serving signature.

    The stored PNG bytes are sent as they are, and the returned PNG masks are compared with
    the stored labels at full record resolution: what a serving client would get.
    """
    import tensorflow as tf

    from training.data import list_shards, parse_example, read_records

    loaded = tf.saved_model.load(str(export_dir))
    if V.SIGNATURE_NAME not in loaded.signatures:
        raise ValueError(f"{export_dir} has no {V.SIGNATURE_NAME!r} signature")
    serve = loaded.signatures[V.SIGNATURE_NAME]
    records = read_records(list_shards(data_dir, split)).map(parse_example).batch(batch_size)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for features in records:
            encoded = features[V.FEATURE_IMAGE]
            masks = serve(**{V.INPUT_KEY: encoded})[V.OUTPUT_KEY].numpy()
            for image_png, label_png, mask_png in zip(
                    encoded.numpy(), features[V.FEATURE_LABEL].numpy(), masks):
                image = tf.io.decode_png(image_png, channels=3).numpy()
                label = tf.io.decode_png(label_png, channels=1).numpy()[..., 0]
                mask = tf.io.decode_png(mask_png, channels=1).numpy()[..., 0]
                if mask.shape != label.shape:
                    raise ValueError(f"served mask {mask.shape} differs from label {label.shape}")
                yield image[None], label[None], mask[None]

    return accumulate(batches(), max_images, num_samples, "record")


def static_input_size(model) -> tuple[int, int] | None:
    """The model's fixed (height, width) input, or None if it takes any size."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    height, width = shape[1], shape[2]
    return (int(height), int(width)) if height and width else None


def accumulate(batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]],
               max_images: int | None, num_samples: int, resolution: str) -> Evaluation:
    """Adds (images, labels, predictions) batches into one confusion matrix, logging progress.

    Keeps the first `num_samples` images for the overlays and stops after `max_images`.

    Raises:
      ValueError: if no batch holds an image.
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
            log.info("%d images (%.1f/s), running pixel accuracy %.4f", images,
                     images / (now - started), np.trace(cm) / max(cm.sum(), 1))
            last_log = now
        if max_images is not None and images >= max_images:
            break
    if images == 0:
        raise ValueError("the split holds no images")
    return Evaluation(cm, images, resolution, samples)


# --- The report ----------------------------------------------------------------------------

def model_title(source: ModelSource) -> str:
    """A short name for plot titles: run folder name, `name vN` for exports, or file stem."""
    if source.run_dir is not None:
        return source.run_dir.name
    if source.kind == SAVED_MODEL:
        return f"{source.path.parent.name} v{source.path.name}"
    return source.path.stem


def write_report(evaluation: Evaluation, report_dir: Path, *, source: ModelSource, split: str,
                 data_dir: Path, seconds: float) -> dict[str, Any]:
    """Writes metrics.json and the plots; returns the metrics dict."""
    from training import metrics as M

    report_dir.mkdir(parents=True, exist_ok=True)
    summary = M.summarize(evaluation.cm)
    title = f"{model_title(source)} - {split}"
    figures = [plots.plot_iou(summary, report_dir / plots.IOU_FILE, title=f"IoU: {title}"),
               plots.plot_confusion(evaluation.cm, report_dir / plots.CONFUSION_FILE,
                                    title=f"Confusion (row-normalised): {title}"),
               plots.plot_overlays(evaluation.samples, report_dir / plots.OVERLAYS_FILE,
                                   title=title)]
    history = source.run_dir / RUN_HISTORY_FILE if source.run_dir else None
    if history is not None and history.is_file():
        figures.append(plots.plot_history(history, report_dir / plots.HISTORY_FILE,
                                          title=f"Training: {title}"))
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
    (report_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Runs one evaluation end to end; returns what metrics.json holds."""
    config.validate()
    source = resolve_model(config.model)
    started = time.monotonic()
    log.info("evaluating %s (%s) on %s/%s", source.path, source.kind, config.data_dir,
             config.split)
    if source.kind == SAVED_MODEL:
        evaluation = evaluate_saved_model(
            source.path, config.data_dir, config.split, batch_size=config.batch_size,
            max_images=config.max_images, num_samples=config.overlays)
    else:
        from training.models import load_model

        model = load_model(source.path)
        evaluation = evaluate_keras(
            model, config.data_dir, config.split, batch_size=config.batch_size,
            image_size=config.image_size or source.image_size, max_images=config.max_images,
            num_samples=config.overlays)
    metrics = write_report(evaluation, config.report_dir, source=source, split=config.split,
                           data_dir=config.data_dir, seconds=time.monotonic() - started)
    log.info("%d images: pixel accuracy %s, mean IoU (7, void ignored) %s, (8) %s -> %s",
             metrics["images"], _fmt(metrics["pixel_accuracy"]), _fmt(metrics["mean_iou_7"]),
             _fmt(metrics["mean_iou_8"]), config.report_dir / METRICS_FILE)
    return metrics


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# --- CLI -------------------------------------------------------------------------------------

EPILOG = """\
examples:
  cityseg-evaluate --data-dir data --model runs/unet --split val --report-dir reports/unet
  cityseg-evaluate --data-dir data --model runs/unet/best.keras --image-size 256x512 \\
      --split val --report-dir reports/unet-keras --max-images 50
  cityseg-evaluate --data-dir data --model models/unet/1 --split test --report-dir reports/served

metrics.json reports mean_iou_7 (Cityscapes: 7 categories, ground-truth void ignored) and
mean_iou_8 (all 8 categories including void, every pixel counted).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityseg-evaluate", description=__doc__.split("\n")[0], epilog=EPILOG,
        formatter_class=HelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="the preprocessing output (holding tfrecords/)")
    parser.add_argument("--model", required=True, type=Path,
                        help="a run folder, a .keras file, or a SavedModel (MODELS/name[/version])")
    parser.add_argument("--split", default="val", help="split to evaluate")
    parser.add_argument("--report-dir", required=True, type=Path,
                        help="where metrics.json and the plots go")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call")
    parser.add_argument("--image-size", type=parse_size, default=None,
                        help="HxW the Keras model sees (default: the run's config or the model's "
                             "input shape); ignored for SavedModels, which resize in the graph")
    parser.add_argument("--max-images", type=int, default=None,
                        help="evaluate at most this many images")
    parser.add_argument("--overlays", type=int, default=4,
                        help="image/truth/prediction rows in overlays.png")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = EvalConfig(data_dir=args.data_dir, model=args.model, split=args.split,
                        report_dir=args.report_dir, batch_size=args.batch_size,
                        image_size=args.image_size, max_images=args.max_images,
                        overlays=args.overlays)
    evaluate(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `cityseg-evaluate`."""
    return run_cli("cityseg-evaluate", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
