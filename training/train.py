"""Trains a segmentation model on the Beam job's TFRecords: `cityseg-train --data-dir DATA ...`.

The loop: tf.data input (`training.data`), a Keras 3 model (`training.models`), a loss from
`training.losses`, the streaming mean IoU of `training.metrics`, and Keras' `fit` with Keras'
own `BackupAndRestore` (resume) and `CSVLogger` (history) beside the callbacks of
`training.callbacks`. Around it: the settings and flags (`training.config`), the cluster of a
multi-worker run (`training.cluster`, `TF_CONFIG`), the Keras workaround that run needs
(`training.keras_multiworker`), the learning-rate schedule (`training.schedules`) and the files
the run writes (`training.run_layout`, only the chief writes them).

`mean_iou` is the Cityscapes category metric: 7 non-void categories, ground-truth void ignored.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Sequence

from cityseg import vocabulary as V
from cityseg.cli import CliError, run_cli, setup_logging
from cityseg.stats import load_stats, split_class_weights
from training import run_layout as layout
from training.config import (
    DEFAULT_EPOCHS, DEFAULT_LOSS, EPOCHS_UNDER_TIME_LIMIT, TrainConfig, check_registry_name, default_crop_size,
    merge_saved_config, parse_config, validate_config, validate_model,
)

log = logging.getLogger("cityseg.train")

MONITOR = "val_mean_iou"


def train(cfg: TrainConfig, explicit: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Runs one training (or continues one with `cfg.resume`); returns the summary.

    Args:
      cfg: the run's configuration (already overridden by flags).
      explicit: names of the fields the user set on the command line; on --resume the saved
        config provides the others.

    Raises:
      CliError: for impossible configurations, before any training step.
    """
    run = os.fspath(cfg.output_dir)  # a string: RUN may be a gs:// or s3:// URL
    if cfg.resume:
        cfg = merge_saved_config(cfg, explicit)
    validate_config(cfg)
    stats = load_stats(cfg.data_dir, required=False)

    from training.cluster import resolve_cluster  # TensorFlow, once the cheap checks passed

    cluster = resolve_cluster()
    strategy = cluster.strategy()  # before any other TensorFlow op runs
    from training import losses, models, storage

    check_registry_name("--loss", cfg.loss, losses.LOSSES)
    if cfg.loss in losses.CLASS_WEIGHTED_LOSSES and cfg.class_weights is None:
        cfg.class_weights = split_class_weights(stats, cfg.train_split)
        if cfg.loss == DEFAULT_LOSS and cfg.class_weights is None and "loss" not in explicit:
            # The default loss on data whose stats.json predates the category counts: train
            # rather than refuse, with its unweighted form.
            cfg.loss = losses.UNWEIGHTED_FORM[DEFAULT_LOSS]
            log.warning("%s has no category counts for the %s split: training with %s (plain "
                        "OHEM) instead of the default %s (re-run cityseg-preprocess to get "
                        "them)", storage.join(cfg.data_dir, V.STATS_FILE), cfg.train_split,
                        cfg.loss, DEFAULT_LOSS)
        elif cfg.loss in losses.WEIGHTS_REQUIRED and cfg.class_weights is None:
            raise CliError(f"--loss {cfg.loss} needs the {cfg.train_split} split's category "
                           f"counts in {storage.join(cfg.data_dir, V.STATS_FILE)} (re-run "
                           "cityseg-preprocess)")
    if cfg.model is None:
        cfg.model = models.DEFAULT_MODEL
    if cfg.image_size is not None:
        cfg.image_size = tuple(cfg.image_size)
    if cfg.crop_size is None:
        check_registry_name("model", cfg.model, models.MODEL_BUILDERS)
        frame = cfg.image_size or _stored_size(cfg.data_dir, cfg.train_split)
        cfg.crop_size = default_crop_size(frame, models.model_stride(cfg.model))
    cfg.crop_size = tuple(cfg.crop_size)
    if cfg.epochs is None:
        cfg.epochs = EPOCHS_UNDER_TIME_LIMIT if cfg.time_limit_minutes else DEFAULT_EPOCHS
    validate_model(cfg)
    checkpoint = storage.join(run, layout.CHECKPOINT_DIR)
    if cfg.resume and not storage.isfile(storage.join(checkpoint,
                                                      layout.CHECKPOINT_WEIGHTS_FILE)):
        raise CliError(f"nothing to resume: no checkpoint in {checkpoint}")

    out = run if cluster.is_chief else tempfile.mkdtemp(prefix="cityseg-worker-")
    try:
        if cfg.resume and not cluster.is_chief:
            # Every worker restores the chief's backup (RUN on a shared or object file system)
            # and then backs up into its own scratch folder.
            storage.copy_tree(checkpoint, os.path.join(out, layout.CHECKPOINT_DIR))
        return _fit(cfg, cluster, strategy, stats, out, done=history_summary(
            storage.join(run, layout.HISTORY_FILE)))
    finally:
        if not cluster.is_chief:
            shutil.rmtree(out, ignore_errors=True)


def use_xla(cfg: TrainConfig, *, gpu: bool, multi: bool) -> bool:
    """Whether the training step compiles with XLA.

    `--jit`/`--no-jit` decide when given; by default only on a GPU. On this CPU XLA was the
    slow path in the trainer for every model measured: fastscnn's step 5x slower
    (docs/benchmarks/train_step.md), and unet, whose bare step (`train_on_batch` on random
    tensors) is 1.7x faster with XLA (docs/benchmarks/train_step_xla.md), trained at 0.30
    images/s with it against 1.22 without in 10-minute runs (docs/benchmarks/unet_xla.md,
    model_comparison_real.md).
    Never with several workers (XLA's collectives do not mix with the multi-worker
    strategy's), nor with mixed bfloat16 on CPU (XLA rejects the mixed gradients of dropout).
    """
    wanted = gpu if cfg.jit_compile is None else cfg.jit_compile
    return wanted and not multi and not (cfg.mixed_precision and not gpu)


def _fit(cfg: TrainConfig, cluster, strategy, stats: dict[str, Any], out: str,
         done: dict[str, Any]) -> dict[str, Any]:
    """Builds data, model and callbacks and runs `fit`; `done` summarises the epochs before.

    Every file of `out` is written through `tf.io.gfile`, by us or by Keras: Keras 3's
    `CSVLogger`, `BackupAndRestore`, `ModelCheckpoint` and `Model.save` send any path with a
    `scheme://` through gfile themselves (`keras.src.utils.file_utils.is_remote_path`;
    `.keras` and `.weights.h5` files are built in memory or a local temporary folder, then
    copied), and TensorBoard's summary writer opens URLs natively.
    """
    import keras
    import tensorflow as tf

    from training import callbacks as cb
    from training import data, losses, metrics, models, storage
    from training.augment import AugmentConfig

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

    storage.makedirs(out)
    resolved = {**dataclasses.asdict(cfg),
                "image_size": list(cfg.image_size) if cfg.image_size else None,
                "crop_size": list(cfg.crop_size), "scale_range": list(cfg.scale_range),
                "data_dir": (os.fspath(cfg.data_dir) if storage.is_remote(cfg.data_dir)
                             else os.path.abspath(cfg.data_dir)),
                "global_batch_size": global_batch, "num_workers": cluster.num_workers,
                "steps_per_epoch": steps, "validation_steps": val_steps,
                "train_images": train_images, "val_images": val_images,
                "stats": {s: {k: v for k, v in (stats.get(s) or {}).items()
                              if k in ("images", "category_pixels")} for s in V.SPLITS
                          if s in stats}}
    storage.write_text(storage.join(out, layout.CONFIG_FILE),
                       json.dumps(resolved, indent=2) + "\n")

    if cfg.seed is not None:
        keras.utils.set_random_seed(cfg.seed)
    previous_policy = keras.mixed_precision.global_policy()
    gpu = bool(tf.config.list_logical_devices("GPU"))
    jit_compile = use_xla(cfg, gpu=gpu, multi=multi)
    if cfg.mixed_precision:
        # float16 needs a GPU to pay off; bfloat16 is the CPU/TPU mixed type.
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        stride = models.model_stride(cfg.model)
        train_ds = data.make_dataset(
            cfg.data_dir, cfg.train_split, batch_size=global_batch, image_size=cfg.image_size,
            augment=cfg.augment, shuffle=True, seed=cfg.seed, repeat=True, drop_remainder=True,
            cache=cfg.cache, crop_size=cfg.crop_size,
            augment_config=AugmentConfig(scale_range=tuple(cfg.scale_range),
                                         max_rotation_degrees=cfg.rotation_degrees))
        # Whole frames, padded to the stride (never squashed): what the exported model sees.
        # In a fixed order (a seed; nothing is shuffled or augmented here): the same frames
        # share a batch every epoch, and the CPU kernels' results depend on the batch, so an
        # unordered pipeline moved val mean IoU by 1e-3 between identical runs, and best.keras
        # no longer scored what history.csv says. Without autotuning: fit makes this
        # iterator again every epoch, and deleting an autotuned one stalled each epoch.
        val_ds = data.make_dataset(
            cfg.data_dir, cfg.val_split, batch_size=global_batch, image_size=cfg.image_size,
            seed=0,
            repeat=multi or cfg.validation_steps is not None, cache=cfg.cache,
            pad_to_multiple=stride, autotune=False)

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
            optimizer = keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay,
                                               use_ema=cfg.ema > 0,
                                               ema_momentum=cfg.ema or 0.99)
            # Decay shrinks kernels; biases and batch-norm scales/offsets are left alone.
            optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
            model.compile(optimizer=optimizer, loss=loss,
                          metrics=[metrics.MeanIoU(name="mean_iou")], jit_compile=jit_compile)
            # Built here, under the strategy, so that BackupAndRestore restores the optimizer
            # state into mirrored variables.
            optimizer.build(model.trainable_variables)
            if multi:
                from training.keras_multiworker import patch_fit_for_multi_worker
                patch_fit_for_multi_worker(model)

        budget = cfg.time_limit_minutes * 60 if cfg.time_limit_minutes else None
        time_limit = cb.TimeLimit(budget, start=start) if budget else None
        schedule = cb.BudgetSchedule(cfg.learning_rate, cfg.lr_schedule,
                                     total_steps=cfg.epochs * steps, budget_seconds=budget,
                                     start=start, warmup=cfg.warmup)
        throughput = cb.Throughput(global_batch)
        progress_bar = sys.stderr.isatty() and cluster.is_chief
        # best.keras is the inference model (main head only): what evaluate and export use.
        # With --ema it holds the averaged weights, the ones validation scored.
        best = cb.BestModelCheckpoint(inference_model, storage.join(out, layout.BEST_MODEL_FILE),
                                      monitor=MONITOR,
                                      initial_value_threshold=done["best_val_mean_iou"])
        callbacks = [
            cb.EpochStats(),  # first: the callbacks after it see lr and seconds in the logs
            *([time_limit] if time_limit else []),
            schedule,
            throughput,
            *(cb.with_ema_weights([best]) if cfg.ema else [best]),
            cb.CSVLogger(storage.join(out, layout.HISTORY_FILE), append=True),
            cb.EpochTensorBoard(storage.join(out, layout.TENSORBOARD_DIR)),
            # Weights, optimizer state and the epoch after each epoch: --resume, or a restart
            # after a kill, continues from there. Kept after fit (the run may be resumed for
            # more epochs); the previous backup is kept too, for a kill in mid-write. Last,
            # so that history.csv never lacks an epoch the backup holds.
            keras.callbacks.BackupAndRestore(storage.join(out, layout.CHECKPOINT_DIR),
                                             double_checkpoint=True, delete_checkpoint=False),
            *([] if progress_bar else [cb.EpochLogger(cfg.epochs)]),
        ]
        if done["epochs_done"] >= cfg.epochs:
            log.info("%s already trained %d of %d epochs; nothing to do", cfg.output_dir,
                     done["epochs_done"], cfg.epochs)
        else:
            if cfg.resume:
                log.info("resuming %s after epoch %d", cfg.output_dir, done["epochs_done"])
            log.info("training %s (%s params) on %d+%d images, crops %dx%d, global batch %d, "
                     "%d steps/epoch, %d worker(s)%s", cfg.model,
                     f"{inference_model.count_params():,}", train_images, val_images,
                     *cfg.crop_size, global_batch, steps, cluster.num_workers,
                     f", time limit {cfg.time_limit_minutes:g} min" if budget else "")
            model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs,
                      steps_per_epoch=steps, validation_steps=val_steps, callbacks=callbacks,
                      shuffle=False, verbose=1 if progress_bar else 0)
        summary = {
            "epochs_requested": cfg.epochs,
            "resumed_from_epoch": done["epochs_done"],
            "model": cfg.model,
            "image_size": list(cfg.image_size) if cfg.image_size else None,
            **history_summary(storage.join(out, layout.HISTORY_FILE)),
            "this_run_seconds": round(time.monotonic() - start, 3),
            "stopped_by": "time_limit" if time_limit and time_limit.stopped else "epochs",
            "params": int(inference_model.count_params()),
            "crop_size": list(cfg.crop_size),
            "train_images_per_second": throughput.images_per_second(),
            "xla": jit_compile,
            "num_workers": cluster.num_workers,
        }
        storage.write_json_atomic(storage.join(out, layout.SUMMARY_FILE), summary)
        log.info("done: %d epochs, best val mean IoU %s at epoch %s (stopped by %s) -> %s",
                 summary["epochs_done"], _fmt(summary["best_val_mean_iou"]),
                 summary["best_epoch"], summary["stopped_by"], out)
        return summary
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def history_summary(path: str) -> dict[str, Any]:
    """What history.csv says about a run: epochs done, time spent, the best epoch.

    An epoch re-run after a kill (its row written, its backup not) counts once, with its
    last row.

    Returns:
      epochs_done, training_seconds (the epochs' own), best_epoch (1-based) with its
      best_val_mean_iou and best_val_loss (None when no epoch was validated).
    """
    from training import storage
    from training.plots import parse_history

    columns = parse_history(storage.read_text(path)) if storage.isfile(path) else {}
    last_row = {int(epoch): i for i, epoch in enumerate(columns.get("epoch", []))}
    rows = [{key: values[i] for key, values in columns.items()} for i in last_row.values()]
    scored = [row for row in rows if not math.isnan(row.get(MONITOR, math.nan))]
    best = max(scored, key=lambda row: row[MONITOR], default=None)
    return {
        "epochs_done": max(last_row, default=-1) + 1,
        "training_seconds": round(sum(_finite(row.get("seconds")) or 0.0 for row in rows), 3),
        "best_epoch": int(best["epoch"]) + 1 if best else None,
        "best_val_mean_iou": best[MONITOR] if best else None,
        "best_val_loss": _finite(best.get("val_loss")) if best else None,
    }


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


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


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# --- CLI -------------------------------------------------------------------------------

def _main(argv: Sequence[str] | None) -> int:
    cfg, explicit, verbose = parse_config(argv)
    setup_logging(verbose)
    if not cfg.resume:
        validate_config(cfg)  # fail fast, before the data and the model are touched
    train(cfg, explicit)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `cityseg-train` (flags: `training.config.TrainConfig`)."""
    return run_cli("cityseg-train", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
