"""Trains a segmentation model on the Beam job's TFRecords: `cityseg-train --data-dir DATA ...`.

tf.data input (`training.data`), a Keras 3 model (`training.models`), a loss from
`training.losses`, the streaming mean IoU of `training.metrics`; honours `TF_CONFIG` for
multi-worker training (`tf.distribute.MultiWorkerMirroredStrategy`).

RUN layout (written by the chief only; `cityseg-export`, `cityseg-evaluate` and the model
comparison read it):

    RUN/config.json           the resolved TrainConfig (+ data facts, class weights, workers)
    RUN/best.keras            the model with the best validation mean IoU so far (full model)
    RUN/checkpoints/last.weights.h5   weights AND optimizer state after the last epoch
    RUN/checkpoints/state.json        epochs done, best val mean IoU, training seconds (--resume)
    RUN/history.csv           one row per epoch: epoch, loss, val_loss, mean_iou, val_mean_iou,
                              lr, seconds (appended across --resume)
    RUN/tensorboard/          TensorBoard logs (train/ and validation/)
    RUN/summary.json          epochs done, training seconds, best val mean IoU and its val loss,
                              stopped_by ('epochs' | 'time_limit'), params, ...

`mean_iou` is the Cityscapes category metric: 7 non-void categories, ground-truth void ignored.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cityseg import vocabulary as V
from cityseg.cli import CliError, HelpFormatter, parse_size, run_cli, setup_logging

log = logging.getLogger("cityseg.train")

CONFIG_FILE = "config.json"
BEST_MODEL_FILE = "best.keras"
CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.csv"
TENSORBOARD_DIR = "tensorboard"
SUMMARY_FILE = "summary.json"
MONITOR = "val_mean_iou"

LR_SCHEDULES = ("constant", "cosine", "poly")  # = training.schedules.SCHEDULES
LOSS_NAMES = ("ohem", "ce", "weighted_ce", "dice", "focal", "ce+dice")  # = training.losses.LOSSES
# Fields that fix the network; a resumed run must keep them.
ARCHITECTURE_FIELDS = ("model", "width", "aux_heads")
# Epochs when neither --epochs nor --time-limit bounds the run; with a time limit the time
# binds (the learning-rate schedule follows it) and epochs only cap it.
DEFAULT_EPOCHS = 50
EPOCHS_UNDER_TIME_LIMIT = 100_000
# The largest default crop. On a 2-core CPU the time budget, not the data, bounds what a run
# learns: a 256x352 crop costs half a 352x480 one per step (docs/benchmarks/recipe.md), so
# twice the steps in the same minutes; larger frames are cropped to this.
MAX_DEFAULT_CROP = (256, 352)


@dataclass
class TrainConfig:
    """Everything one training run depends on; flags override the defaults.

    `model=None` and `image_size=None` are resolved at start-up (the models' default, the
    stored size of the records); `config.json` holds the resolved values.
    """

    data_dir: str = ""
    output_dir: str = ""
    model: str | None = None
    width: int | None = None
    image_size: tuple[int, int] | None = None   # resize every frame first (None: stored size)
    crop_size: tuple[int, int] | None = None    # training crops (None: the frames' size, capped)
    scale_range: tuple[float, float] = (0.5, 2.0)  # random scale before the crop
    rotation_degrees: float = 0.0
    batch_size: int = 8              # per worker; the global batch is this times the workers
    epochs: int | None = None        # None: DEFAULT_EPOCHS, or unbounded under --time-limit
    steps_per_epoch: int | None = None    # default: one pass over the train split
    validation_steps: int | None = None   # default: the whole val split
    learning_rate: float = 1e-3
    lr_schedule: str = "poly"
    warmup: float = 0.05             # fraction of the budget (steps or time) spent warming up
    weight_decay: float = 1e-2       # AdamW's decoupled decay; not on biases and batch norm
    loss: str = "ohem"
    aux_heads: bool = True           # the papers' auxiliary losses (fastscnn, pspnet)
    ignore_void: bool = True         # void is not scored by the benchmark, so not trained
    augment: bool = True
    cache: bool = True               # keep decoded, resized examples in memory after epoch 1
    mixed_precision: bool = False
    jit_compile: bool | None = None  # XLA; None: on a GPU only (on CPU it is the slow path)
    time_limit_minutes: float | None = None
    seed: int | None = 0
    resume: bool = False
    train_split: str = "train"
    val_split: str = "val"
    weights: str | None = None       # initial weights (fcn8: ImageNet VGG16 no-top .h5)
    class_weights: list[float] | None = field(default=None, repr=False)  # from stats.json


# --- Start-up checks (cheap, before TensorFlow is imported) ----------------------------

def validate_config(cfg: TrainConfig) -> None:
    """Raises CliError (one line) for values that cannot work, before anything heavy runs."""
    if not cfg.data_dir:
        raise CliError("--data-dir is required")
    if not cfg.output_dir:
        raise CliError("--output-dir is required")
    for name in ("batch_size", "epochs"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive, not {value}")
    low, high = cfg.scale_range
    if not 0 < low <= high or not math.isfinite(high):
        raise CliError(f"--scale-range must be 0 < MIN <= MAX, not {low},{high}")
    if not 0 <= cfg.rotation_degrees <= 180:
        raise CliError(f"--rotation must be in [0, 180] degrees, not {cfg.rotation_degrees}")
    if not 0 <= cfg.warmup < 1:
        raise CliError(f"--warmup must be a fraction in [0, 1), not {cfg.warmup}")
    if not 0 <= cfg.weight_decay < 1:
        raise CliError(f"--weight-decay must be in [0, 1), not {cfg.weight_decay}")
    for name in ("steps_per_epoch", "validation_steps", "width"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive, not {value}")
    if not cfg.learning_rate > 0 or not math.isfinite(cfg.learning_rate):
        raise CliError(f"--learning-rate must be positive, not {cfg.learning_rate}")
    if cfg.time_limit_minutes is not None and not cfg.time_limit_minutes > 0:
        raise CliError(f"--time-limit must be positive minutes, not {cfg.time_limit_minutes}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise CliError(f"unknown --lr-schedule {cfg.lr_schedule!r} "
                       f"(choose from {', '.join(LR_SCHEDULES)})")
    if cfg.loss not in LOSS_NAMES:
        raise CliError(f"unknown --loss {cfg.loss!r} (choose from {', '.join(LOSS_NAMES)})")
    for split in (cfg.train_split, cfg.val_split):
        if split not in V.SPLITS:
            raise CliError(f"unknown split {split!r} (expected one of {', '.join(V.SPLITS)})")
    data = Path(cfg.data_dir)
    if not data.is_dir():
        raise CliError(f"data dir {data} does not exist (run cityseg-preprocess first)")
    for split in (cfg.train_split, cfg.val_split):
        folder = data / V.TFRECORDS_DIR / split
        if not any(folder.glob(V.SHARD_GLOB.format(split=split))):
            raise CliError(f"no TFRecord shards for split {split!r} in {folder}")
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        raise CliError(f"weights file {cfg.weights} does not exist")
    for name in ("image_size", "crop_size"):
        size = getattr(cfg, name)
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise CliError(f"--{name.replace('_', '-')} must be positive HxW, not {size}")

    run = Path(cfg.output_dir)
    has_run = (run / CHECKPOINT_DIR).is_dir() or (run / BEST_MODEL_FILE).exists()
    if cfg.resume and not (run / CONFIG_FILE).is_file():
        raise CliError(f"nothing to resume: {run / CONFIG_FILE} does not exist")
    if not cfg.resume and has_run:
        raise CliError(f"{run} already holds a training run; pass --resume to continue it "
                       "or choose another --output-dir")


def validate_model(cfg: TrainConfig) -> None:
    """Checks the model name and that the crop size fits its stride (imports Keras).

    Frames themselves may have any size: validation pads them to the stride. Only the
    training crop, which is batched, must be a multiple of it.
    """
    from training import models

    _check_model_name(cfg.model)
    stride = models.model_stride(cfg.model)
    height, width = cfg.crop_size
    if height % stride or width % stride:
        raise CliError(f"crop size {height}x{width} is not divisible by {stride}, the stride "
                       f"of model {cfg.model!r}; pick e.g. "
                       f"{_round_to(height, stride)}x{_round_to(width, stride)}")


def _check_model_name(name: str | None) -> None:
    from training import models

    if name not in models.MODEL_BUILDERS:
        raise CliError(f"unknown model {name!r} (choose from {', '.join(models.MODEL_BUILDERS)})")


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def default_crop_size(frame_size: tuple[int, int], stride: int,
                      cap: tuple[int, int] = MAX_DEFAULT_CROP) -> tuple[int, int]:
    """The training crop when none is given: the frame, capped, rounded DOWN to the stride.

    Rounded down so that at scale 1 the crop holds picture everywhere (a 360x480 CamVid frame
    or a 512x1024 record gives 256x352 for a stride of 32; a 200x300 frame 192x288).
    """
    return tuple(max(stride, min(size, limit) // stride * stride)
                 for size, limit in zip(frame_size, cap))


def class_weights_from_stats(stats: dict[str, Any], split: str = "train") -> list[float] | None:
    """Per-category loss weights: the ones stats.json carries, else median-frequency balancing.

    Median-frequency balancing (Eigen & Fergus 2015) gives each category
    `median(freq) / freq[c]` over the categories present, so rare ones (human, object) count as
    much as road and sky; void and absent categories get 0.

    Returns:
      NUM_CATEGORIES floats, or None when stats.json has neither weights nor pixel counts.
    """
    for source in (stats, stats.get(split) or {}):
        weights = source.get("class_weights") if isinstance(source, dict) else None
        if isinstance(weights, dict):
            weights = [weights.get(name, 0.0) for name in V.CATEGORIES]
        if weights is not None:
            if len(weights) != V.NUM_CATEGORIES:
                raise CliError(f"stats.json class_weights has {len(weights)} values, "
                               f"expected {V.NUM_CATEGORIES}")
            return [float(w) for w in weights]
    pixels = (stats.get(split) or {}).get("category_pixels")
    if not pixels or len(pixels) != V.NUM_CATEGORIES:
        return None
    total = float(sum(pixels[c] for c in V.EVALUATED_CATEGORIES))
    freqs = {c: pixels[c] / total for c in V.EVALUATED_CATEGORIES if pixels[c] > 0}
    if not freqs:
        return None
    median = sorted(freqs.values())[len(freqs) // 2]
    return [round(median / freqs[c], 6) if c in freqs else 0.0 for c in range(V.NUM_CATEGORIES)]


def _read_stats(data_dir: str) -> dict[str, Any]:
    path = Path(data_dir) / V.STATS_FILE
    if not path.is_file():
        return {}
    try:
        stats = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CliError(f"{path} is not valid JSON: {err}") from None
    return stats if isinstance(stats, dict) else {}


# --- Cluster -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cluster:
    """Who this process is in a multi-worker run (a single process is its own chief)."""

    num_workers: int = 1
    task_type: str | None = None
    task_id: int = 0

    @property
    def is_chief(self) -> bool:
        return self.task_type in (None, "chief") or (
            self.task_type == "worker" and self.task_id == 0 and not self._has_chief)

    _has_chief: bool = False

    @classmethod
    def from_env(cls, environ=os.environ) -> "Cluster":
        """Parses TF_CONFIG (absent: one worker). Raises CliError for malformed JSON."""
        raw = environ.get("TF_CONFIG")
        if not raw:
            return cls()
        try:
            tf_config = json.loads(raw)
            spec = tf_config.get("cluster", {})
            task = tf_config.get("task", {})
            workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
            return cls(num_workers=max(1, workers), task_type=task.get("type"),
                       task_id=int(task.get("index", 0)), _has_chief=bool(spec.get("chief")))
        except (ValueError, AttributeError, TypeError) as err:
            raise CliError(f"TF_CONFIG is not valid cluster JSON: {err}") from None


# --- Training --------------------------------------------------------------------------

def train(cfg: TrainConfig, explicit: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Runs one training (or continues one with `cfg.resume`); returns the summary.

    Args:
      cfg: the run's configuration (already overridden by flags).
      explicit: names of the fields the user set on the command line; on --resume the saved
        config provides the others.

    Raises:
      CliError: for impossible configurations, before any training step.
    """
    run = Path(cfg.output_dir)
    saved_state = None
    if cfg.resume:
        cfg = _merge_saved_config(cfg, run, explicit)
    validate_config(cfg)
    cluster = Cluster.from_env()
    stats = _read_stats(cfg.data_dir)
    if cfg.loss in ("weighted_ce", "focal", "ce+dice") and cfg.class_weights is None:
        cfg.class_weights = class_weights_from_stats(stats, cfg.train_split)
        if cfg.loss == "weighted_ce" and cfg.class_weights is None:
            raise CliError(f"--loss weighted_ce needs class weights or train category_pixels "
                           f"in {Path(cfg.data_dir) / V.STATS_FILE}")

    import tensorflow as tf  # heavy: imported once the cheap checks have passed

    # A multi-worker strategy must exist before any other TensorFlow op runs.
    strategy = (tf.distribute.MultiWorkerMirroredStrategy() if cluster.num_workers > 1
                else tf.distribute.get_strategy())
    if cfg.model is None:
        from training.models import DEFAULT_MODEL
        cfg.model = DEFAULT_MODEL
    if cfg.image_size is not None:
        cfg.image_size = tuple(cfg.image_size)
    if cfg.crop_size is None:
        from training.models import model_stride
        _check_model_name(cfg.model)
        frame = cfg.image_size or _stored_size(cfg.data_dir, cfg.train_split)
        cfg.crop_size = default_crop_size(frame, model_stride(cfg.model))
    cfg.crop_size = tuple(cfg.crop_size)
    if cfg.epochs is None:
        cfg.epochs = EPOCHS_UNDER_TIME_LIMIT if cfg.time_limit_minutes else DEFAULT_EPOCHS
    validate_model(cfg)

    if cfg.resume:
        from training.callbacks import load_state
        saved_state = load_state(run / CHECKPOINT_DIR)
        if saved_state is None:
            raise CliError(f"nothing to resume: no checkpoint in {run / CHECKPOINT_DIR}")

    out = run if cluster.is_chief else Path(tempfile.mkdtemp(prefix="cityseg-worker-"))
    try:
        return _fit(cfg, cluster, strategy, stats, out, saved_state)
    finally:
        if not cluster.is_chief:
            shutil.rmtree(out, ignore_errors=True)


def _fit(cfg: TrainConfig, cluster: Cluster, strategy, stats: dict[str, Any], out: Path,
         saved_state: dict[str, Any] | None) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    from training import callbacks as cb
    from training import data, losses, metrics, models
    from training.schedules import BudgetSchedule

    start = time.monotonic()
    global_batch = cfg.batch_size * cluster.num_workers
    train_images = _split_size(stats, cfg.data_dir, cfg.train_split)
    val_images = _split_size(stats, cfg.data_dir, cfg.val_split)
    steps = cfg.steps_per_epoch or max(1, math.ceil(train_images / global_batch))
    multi = cluster.num_workers > 1
    # Counted steps (not "until the data ends"): every worker must run the same number of
    # validation steps (collectives), so multi-worker validation repeats the split; one worker
    # reads it exactly once.
    val_steps = cfg.validation_steps or max(1, math.ceil(val_images / global_batch))

    out.mkdir(parents=True, exist_ok=True)
    resolved = {**dataclasses.asdict(cfg),
                "image_size": list(cfg.image_size) if cfg.image_size else None,
                "crop_size": list(cfg.crop_size), "scale_range": list(cfg.scale_range),
                "data_dir": str(Path(cfg.data_dir).resolve()),
                "global_batch_size": global_batch, "num_workers": cluster.num_workers,
                "steps_per_epoch": steps, "validation_steps": val_steps,
                "train_images": train_images, "val_images": val_images,
                "stats": {s: {k: v for k, v in (stats.get(s) or {}).items()
                              if k in ("images", "category_pixels")} for s in V.SPLITS
                          if s in stats}}
    (out / CONFIG_FILE).write_text(json.dumps(resolved, indent=2) + "\n")

    if cfg.seed is not None:
        keras.utils.set_random_seed(cfg.seed)
    previous_policy = keras.mixed_precision.global_policy()
    gpu = bool(tf.config.list_logical_devices("GPU"))
    # XLA is the slow path on CPU (one fastscnn step 7.9x, unet 1.4x slower: measured in
    # docs/benchmarks/train_step.json), so by default it is for GPUs. Its collectives do not
    # mix with the multi-worker strategy's, and XLA on CPU rejects the mixed bfloat16/float32
    # gradients of dropout.
    jit_compile = gpu if cfg.jit_compile is None else cfg.jit_compile
    jit_compile = jit_compile and not multi and not (cfg.mixed_precision and not gpu)
    if cfg.mixed_precision:
        # float16 needs a GPU to pay off; bfloat16 is the CPU/TPU mixed type.
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        from training.augment import AugmentConfig
        stride = models.model_stride(cfg.model)
        train_ds = data.make_dataset(
            cfg.data_dir, cfg.train_split, batch_size=global_batch, image_size=cfg.image_size,
            augment=cfg.augment, shuffle=True, seed=cfg.seed, repeat=True, drop_remainder=True,
            cache=cfg.cache, crop_size=cfg.crop_size,
            augment_config=AugmentConfig(scale_range=tuple(cfg.scale_range),
                                         max_rotation_degrees=cfg.rotation_degrees))
        # Whole frames, padded to the stride (never squashed): what the exported model sees.
        val_ds = data.make_dataset(
            cfg.data_dir, cfg.val_split, batch_size=global_batch, image_size=cfg.image_size,
            repeat=multi or cfg.validation_steps is not None, cache=cfg.cache,
            pad_to_multiple=stride)

        with strategy.scope():
            inference_model = models.build_model(cfg.model, num_classes=V.NUM_CATEGORIES,
                                                 input_shape=(None, None, 3), width=cfg.width,
                                                 weights=cfg.weights)
            loss = losses.make_loss(cfg.loss, cfg.class_weights,
                                    ignore_class=V.VOID if cfg.ignore_void else None)
            model = inference_model
            if cfg.aux_heads:
                model = models.with_aux_heads(inference_model, cfg.model, loss) or model
            if model is not inference_model:
                # The training model also reads the labels (for its auxiliary losses).
                train_ds = train_ds.map(_labels_as_input)
                val_ds = val_ds.map(_labels_as_input)
            optimizer = keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay)
            # Decay shrinks kernels; biases and batch-norm scales/offsets are left alone.
            optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
            model.compile(optimizer=optimizer, loss=loss,
                          metrics=[metrics.MeanIoU(name="mean_iou")], jit_compile=jit_compile)
            if multi:
                _patch_keras_for_multi_worker(model)
            initial_epoch = 0
            if saved_state is not None:
                optimizer.build(model.trainable_variables)
                model.load_weights(Path(cfg.output_dir) / CHECKPOINT_DIR / cb.WEIGHTS_FILE)
                initial_epoch = int(saved_state["epochs_done"])
                log.info("resuming %s after epoch %d (optimizer step %d)", cfg.output_dir,
                         initial_epoch, int(optimizer.iterations))

        budget = cfg.time_limit_minutes * 60 if cfg.time_limit_minutes else None
        time_limit = cb.TimeLimit(budget, start=start) if budget else None
        schedule = BudgetSchedule(cfg.learning_rate, cfg.lr_schedule,
                                  total_steps=cfg.epochs * steps, budget_seconds=budget,
                                  start=start, warmup=cfg.warmup)
        throughput = cb.Throughput(global_batch)
        checkpoint = cb.ResumableCheckpoint(out / CHECKPOINT_DIR, monitor=MONITOR,
                                            state=saved_state)
        best = (saved_state or {}).get("best")
        progress_bar = sys.stderr.isatty() and cluster.is_chief
        callbacks = [
            *([time_limit] if time_limit else []),
            schedule,
            throughput,
            # best.keras is the inference model (main head only): what evaluate and export use.
            cb.BestModelCheckpoint(inference_model, out / BEST_MODEL_FILE, monitor=MONITOR,
                                   initial_value_threshold=best),
            checkpoint,
            cb.HistoryCSV(out / HISTORY_FILE),
            cb.EpochTensorBoard(out / TENSORBOARD_DIR),
            *([] if progress_bar else [cb.EpochLogger(cfg.epochs)]),
        ]
        summary_base = {"epochs_requested": cfg.epochs, "resumed_from_epoch": initial_epoch}
        if initial_epoch >= cfg.epochs:
            log.info("%s already trained %d of %d epochs; nothing to do", cfg.output_dir,
                     initial_epoch, cfg.epochs)
        else:
            log.info("training %s (%s params) on %d+%d images, crops %dx%d, global batch %d, "
                     "%d steps/epoch, %d worker(s)%s", cfg.model,
                     f"{inference_model.count_params():,}", train_images, val_images,
                     *cfg.crop_size, global_batch, steps, cluster.num_workers,
                     f", time limit {cfg.time_limit_minutes:g} min" if budget else "")
            model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs,
                      initial_epoch=initial_epoch, steps_per_epoch=steps,
                      validation_steps=val_steps, callbacks=callbacks, shuffle=False,
                      verbose=1 if progress_bar else 0)
        state = checkpoint.state
        best_logs = state.get("best_logs") or {}
        summary = {
            **summary_base,
            "model": cfg.model,
            "image_size": list(cfg.image_size) if cfg.image_size else None,
            "epochs_done": state.get("epochs_done", 0),
            "training_seconds": state.get("train_seconds", 0.0),
            "this_run_seconds": round(time.monotonic() - start, 3),
            "best_epoch": state.get("best_epoch"),
            "best_val_mean_iou": state.get("best"),
            "best_val_loss": best_logs.get("val_loss"),
            "stopped_by": "time_limit" if time_limit and time_limit.stopped else "epochs",
            "params": int(inference_model.count_params()),
            "crop_size": list(cfg.crop_size),
            "train_images_per_second": throughput.images_per_second(),
            "num_workers": cluster.num_workers,
        }
        cb.write_json_atomic(out / SUMMARY_FILE, summary)
        log.info("done: %d epochs, best val mean IoU %s at epoch %s (stopped by %s) -> %s",
                 summary["epochs_done"], _fmt(summary["best_val_mean_iou"]),
                 summary["best_epoch"], summary["stopped_by"], out)
        return summary
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _patch_keras_for_multi_worker(model) -> None:
    """Works around Keras 3 `fit` failing under MultiWorkerMirroredStrategy.

    keras-team/keras#20585 (still open in Keras 3.15), two places in Keras' TF trainer:
    - the compiled state is built from the first batch by `strategy.reduce`-ing the whole
      (images, labels) tuple, which the collective strategy cannot do ("Attempt to convert a
      value (PerReplica ...)"). The build only needs shapes and dtypes, so this instance
      override takes this worker's local replica's batch;
    - each step's logs (scalars) are reduced with `axis=0`, which fails on scalars; they are
      all-reduced with `axis=None` instead (the mean over workers).
    Everything else in `fit` is Keras' own. Only called in multi-worker processes.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_reduce = getattr(tf_trainer.reduce_per_replica, "__wrapped__",
                              tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
                strategy):  # pylint: disable=protected-access
            return tf.nest.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original_reduce
    tf_trainer.reduce_per_replica = reduce_per_replica

    strategy = model.distribute_strategy

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)  # pylint: disable=protected-access

    model._maybe_symbolic_build = maybe_symbolic_build  # pylint: disable=protected-access


def _labels_as_input(images, labels):
    return (images, labels), labels


def _split_size(stats: dict[str, Any], data_dir: str, split: str) -> int:
    images = (stats.get(split) or {}).get("images")
    if isinstance(images, int) and images > 0:
        return images
    from training.data import count_examples
    return count_examples(data_dir, split)


def _stored_size(data_dir: str, split: str) -> tuple[int, int]:
    """Height and width of the first record of a split (the Beam job's --image-size)."""
    import tensorflow as tf

    from training import data

    for serialized in tf.data.TFRecordDataset(data.list_shards(data_dir, split)).take(1):
        features = data.parse_example(serialized)
        return int(features[V.FEATURE_HEIGHT]), int(features[V.FEATURE_WIDTH])
    raise CliError(f"split {split!r} in {data_dir} holds no records")


def _merge_saved_config(cfg: TrainConfig, run: Path, explicit: frozenset[str]) -> TrainConfig:
    """The saved config of RUN with the explicitly given flags on top (--resume)."""
    path = run / CONFIG_FILE
    if not path.is_file():
        raise CliError(f"nothing to resume: {path} does not exist")
    saved = json.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in names}
    for name in explicit:
        if name in ARCHITECTURE_FIELDS and merged.get(name) is not None:
            given = getattr(cfg, name)
            given = list(given) if isinstance(given, tuple) else given
            if given != merged[name]:
                raise CliError(f"--resume cannot change {name} ({merged[name]} -> {given})")
        merged[name] = getattr(cfg, name)
    merged["resume"] = True
    for name in ("image_size", "crop_size", "scale_range"):
        if merged.get(name) is not None:
            merged[name] = tuple(merged[name])
    return TrainConfig(**merged)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# --- CLI -------------------------------------------------------------------------------

EPILOG = """\
examples:
  # the default recipe (fastscnn, random scale + crop, OHEM, aux heads) for 20 minutes;
  # frames of any size, the learning rate decays with the time spent
  cityseg-train --data-dir data --output-dir runs/fastscnn --time-limit 20

  # PSPNet on 512x512 crops at scales 0.75..1.5, cosine schedule
  cityseg-train --data-dir data --model pspnet --crop-size 512x512 --scale-range 0.75,1.5 \
      --lr-schedule cosine --output-dir runs/psp --time-limit 30

  # the seed's recipe: every frame squashed to 128x128, no augmentation
  cityseg-train --data-dir data --model unet --width 64 --image-size 128x128 --no-augment \
      --loss ce --output-dir runs/seed

  # U-Net with class-weighted cross-entropy (weights from DATA/stats.json)
  cityseg-train --data-dir data --model unet --width 32 --loss weighted_ce --output-dir runs/unet

  # continue a run (same RUN folder) for more epochs, optimizer state included
  cityseg-train --output-dir runs/unet --resume --epochs 80

  # FCN-8s from an ImageNet VGG16 no-top weights file (nothing is downloaded)
  cityseg-train --data-dir data --model fcn8 --weights vgg16_notop.h5 --output-dir runs/fcn8

  # multi-worker: the same command on every machine, each with its own TF_CONFIG
  TF_CONFIG='{"cluster":{"worker":["host1:12345","host2:12345"]},"task":{"type":"worker","index":0}}' \\
      cityseg-train --data-dir data --model pspnet --output-dir runs/psp

RUN layout: config.json, best.keras, checkpoints/, history.csv, tensorboard/, summary.json
(see the module docstring of training/train.py).
"""


def _parser(with_defaults: bool) -> argparse.ArgumentParser:
    d = TrainConfig()

    def default(value):
        return value if with_defaults else argparse.SUPPRESS

    p = argparse.ArgumentParser(
        prog="cityseg-train", formatter_class=HelpFormatter, epilog=EPILOG,
        description="Train a segmentation model on cityseg TFRecords (tf.data + Keras 3).",
        argument_default=None if with_defaults else argparse.SUPPRESS)
    p.add_argument("--data-dir", dest="data_dir", default=default(None),
                   help="output of cityseg-preprocess (tfrecords/, stats.json)")
    p.add_argument("--output-dir", dest="output_dir", default=default(None),
                   help="the RUN folder (see the layout below)")
    p.add_argument("--model", default=default(None),
                   help="fastscnn, pspnet, unet or fcn8 (default: fastscnn, the real-time model "
                        "that won the real-photo comparison)")
    p.add_argument("--width", type=int, default=default(None),
                   help="filters of the first conv (default: the model's own)")
    p.add_argument("--image-size", dest="image_size", type=parse_size, default=default(None),
                   help="resize every frame to HxW first, squashing its aspect ratio (the "
                        "seed's recipe; default: keep the records' size)")
    p.add_argument("--crop-size", dest="crop_size", type=parse_size, default=default(None),
                   help="HxW training crops, divisible by the model's stride (default: the "
                        "frames' size rounded down to the stride, at most "
                        f"{MAX_DEFAULT_CROP[0]}x{MAX_DEFAULT_CROP[1]})")
    p.add_argument("--scale-range", dest="scale_range", type=_parse_range,
                   default=default(d.scale_range), metavar="MIN,MAX",
                   help="random scale of each frame before the crop")
    p.add_argument("--rotation", dest="rotation_degrees", type=float, metavar="DEGREES",
                   default=default(d.rotation_degrees),
                   help="random rotation in +-DEGREES (0: none)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=default(d.batch_size),
                   help="images per batch on each worker")
    p.add_argument("--epochs", type=int, default=default(d.epochs),
                   help=f"default: {DEFAULT_EPOCHS}, or as many as --time-limit allows")
    p.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int, default=default(None),
                   help="default: one pass over the train split")
    p.add_argument("--validation-steps", dest="validation_steps", type=int,
                   default=default(None), help="default: the whole val split")
    p.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float,
                   default=default(d.learning_rate))
    p.add_argument("--lr-schedule", dest="lr_schedule", choices=LR_SCHEDULES,
                   default=default(d.lr_schedule),
                   help="decay over the budget: the epochs, or --time-limit when it binds first")
    p.add_argument("--warmup", type=float, default=default(d.warmup), metavar="FRACTION",
                   help="fraction of the budget spent warming the learning rate up")
    p.add_argument("--weight-decay", dest="weight_decay", type=float,
                   default=default(d.weight_decay), help="AdamW weight decay (0: plain Adam)")
    p.add_argument("--loss", choices=LOSS_NAMES, default=default(d.loss),
                   help="ohem: online hard example mining cross-entropy")
    p.add_argument("--no-aux", dest="aux_heads", action="store_false",
                   default=default(d.aux_heads),
                   help="no auxiliary heads (fastscnn and pspnet train with them by default)")
    p.add_argument("--train-void", dest="ignore_void", action="store_false",
                   default=default(d.ignore_void),
                   help="also train the void category (default: void pixels are ignored)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   default=default(d.augment),
                   help="no random scale/flip/colour/rotation (crops are still taken)")
    p.add_argument("--no-cache", dest="cache", action="store_false", default=default(d.cache),
                   help="decode the records in every epoch instead of keeping the decoded, "
                        "resized examples in memory (needed when they do not fit: about "
                        "H*W*4 bytes per image, 1.6 GB for Cityscapes train at 256x512)")
    p.add_argument("--mixed-precision", dest="mixed_precision", action="store_true",
                   default=default(d.mixed_precision),
                   help="mixed_float16 on GPU, mixed_bfloat16 on CPU")
    jit = p.add_mutually_exclusive_group()
    jit.add_argument("--jit", dest="jit_compile", action="store_true",
                     default=default(d.jit_compile), help="compile with XLA")
    jit.add_argument("--no-jit", dest="jit_compile", action="store_false",
                     default=default(d.jit_compile),
                     help="do not compile with XLA (default: XLA on a GPU only)")
    p.add_argument("--time-limit", dest="time_limit_minutes", type=float, metavar="MINUTES",
                   default=default(None),
                   help="stop cleanly once this many minutes are spent (best model kept)")
    p.add_argument("--seed", type=int, default=default(d.seed))
    p.add_argument("--resume", action="store_true", default=default(False),
                   help="continue RUN from its last checkpoint (saved config as defaults)")
    p.add_argument("--train-split", dest="train_split", choices=V.SPLITS,
                   default=default(d.train_split))
    p.add_argument("--val-split", dest="val_split", choices=V.SPLITS,
                   default=default(d.val_split))
    p.add_argument("--weights", default=default(None),
                   help="initial weights file (fcn8: ImageNet VGG16 no-top .h5)")
    p.add_argument("-v", "--verbose", action="store_true", default=default(False))
    return p


def _parse_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, not {text!r}") from None
    return low, high


def parse_config(argv: Sequence[str] | None) -> tuple[TrainConfig, frozenset[str], bool]:
    """Flags -> (TrainConfig, names given explicitly, verbose)."""
    args = vars(_parser(with_defaults=True).parse_args(argv))
    explicit = frozenset(vars(_parser(with_defaults=False).parse_args(argv))) - {"verbose"}
    verbose = args.pop("verbose")
    return TrainConfig(**args), explicit, verbose


def _main(argv: Sequence[str] | None) -> int:
    cfg, explicit, verbose = parse_config(argv)
    setup_logging(verbose)
    if not cfg.resume:
        validate_config(cfg)  # fail fast, before TensorFlow is imported
    train(cfg, explicit)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `cityseg-train`."""
    return run_cli("cityseg-train", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
