"""The files of a training run (RUN) and of an evaluation report: the names every reader imports.

`cityseg-train` writes RUN (the chief only); `cityseg-evaluate`, `cityseg-export`, the
benchmarks and the model comparison read it. This module holds names only, so that a reader
needs neither the trainer nor the evaluator to find a file.

    RUN/config.json           the resolved TrainConfig (+ data facts, class weights, workers)
    RUN/best.keras            the inference model with the best validation mean IoU so far
    RUN/checkpoints/          keras.callbacks.BackupAndRestore's backup after the last epoch:
                              latest.weights.h5 (weights AND optimizer state) and the epoch
                              number; `--resume` and a restart after a kill continue from it
    RUN/history.csv           keras.callbacks.CSVLogger, appended across --resume: one row per
                              epoch (0-based, as Keras counts), loss, val_loss, mean_iou,
                              val_mean_iou, lr, seconds
    RUN/tensorboard/          TensorBoard logs (train/ and validation/)
    RUN/summary.json          epochs done, training seconds, best val mean IoU and its val loss,
                              stopped_by ('epochs' | 'time_limit'), params, ...
    REPORT/metrics.json       cityseg-evaluate's report (RUN/eval/ or RUN itself, for export)
"""
from __future__ import annotations

CONFIG_FILE = "config.json"
BEST_MODEL_FILE = "best.keras"
CHECKPOINT_DIR = "checkpoints"
# The name keras.callbacks.BackupAndRestore gives its weights inside CHECKPOINT_DIR (Keras 3);
# cityseg-export falls back to it when a run has no best.keras yet.
CHECKPOINT_WEIGHTS_FILE = "latest.weights.h5"
HISTORY_FILE = "history.csv"
TENSORBOARD_DIR = "tensorboard"
SUMMARY_FILE = "summary.json"

METRICS_FILE = "metrics.json"
# Where cityseg-export looks for a run's evaluation report, in order of preference.
RUN_METRICS_FILES = (f"eval/{METRICS_FILE}", METRICS_FILE)
