"""Segmentation metrics: a dataset-level confusion matrix and the IoUs derived from it.

Two mean-IoU conventions are reported side by side, named so that nobody mixes them up:

- `mean_iou_7`: the Cityscapes category benchmark. Pixels whose ground truth is void are
  ignored; IoU is averaged over the 7 non-void categories. A non-void pixel predicted as void
  still counts as a miss for its true category.
- `mean_iou_8`: the seed project's convention: all 8 categories, void included, every pixel
  counted.

A category absent from both ground truth and prediction has an undefined IoU (NaN here, null in
JSON); it is left out of the means rather than counted as 0 or 1.

The numpy functions serve evaluation and the proxy; `MeanIoU` is the streaming Keras metric the
trainer reports as `mean_iou` (and `val_mean_iou`).
"""
from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cityseg.vocabulary import CATEGORIES, EVALUATED_CATEGORIES, NUM_CATEGORIES, VOID

# --- numpy -------------------------------------------------------------------------------


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int = NUM_CATEGORIES) -> np.ndarray:
    """Counts (truth, prediction) pairs.

    Args:
      y_true: integer category ids, any shape.
      y_pred: integer category ids, same shape as `y_true`.
      num_classes: number of categories C.

    Returns:
      int64 array [C, C]; rows are the ground truth, columns the prediction.

    Raises:
      ValueError: for mismatched shapes or ids outside 0..C-1 (a corrupt mask, not a miss).
    """
    truth = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth shape {truth.shape} differs from prediction shape {pred.shape}")
    truth = truth.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    for name, ids in (("ground truth", truth), ("prediction", pred)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"{name} holds ids outside 0..{num_classes - 1}")
    counts = np.bincount(truth * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU of each category from a confusion matrix (all pixels counted).

    Returns:
      float64 array [C]; NaN where a category is absent from both truth and prediction.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def iou_ignoring_void(cm: np.ndarray, void: int = VOID) -> np.ndarray:
    """IoU of each category with ground-truth void pixels ignored (Cityscapes convention).

    The void row is dropped before the unions are taken, so a prediction on a void pixel is
    neither a hit nor a false positive; the void entry itself is NaN.
    """
    cm = np.array(cm, dtype=np.float64)
    cm[void, :] = 0.0
    iou = iou_per_class(cm)
    iou[void] = np.nan
    return iou


def nanmean_or_nan(values: np.ndarray) -> float:
    """Mean over the defined (non-NaN) values; NaN when none is defined."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def summarize(cm: np.ndarray, categories: tuple[str, ...] = CATEGORIES) -> dict[str, Any]:
    """Everything reported about a confusion matrix, JSON-ready (undefined values are None).

    Returns:
      dict with `pixels`, `pixel_accuracy` (all pixels, the seed's figure),
      `pixel_accuracy_non_void` (ground-truth void ignored), `mean_iou_7`, `mean_iou_8`,
      `iou` {category: IoU, all pixels counted} and `iou_non_void` {category: IoU with GT void
      ignored; the terms of mean_iou_7}.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.shape != (len(categories), len(categories)):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {len(categories)} "
                         "categories")
    total = int(cm.sum())
    non_void = cm[list(EVALUATED_CATEGORIES), :]
    iou_8 = iou_per_class(cm)
    iou_7 = iou_ignoring_void(cm)
    return {
        "pixels": total,
        "pixel_accuracy": _ratio(np.trace(cm), total),
        "pixel_accuracy_non_void": _ratio(
            sum(cm[c, c] for c in EVALUATED_CATEGORIES), int(non_void.sum())),
        "mean_iou_7": _json_float(nanmean_or_nan(iou_7[list(EVALUATED_CATEGORIES)])),
        "mean_iou_8": _json_float(nanmean_or_nan(iou_8)),
        "iou": {name: _json_float(v) for name, v in zip(categories, iou_8)},
        "iou_non_void": {categories[c]: _json_float(iou_7[c]) for c in EVALUATED_CATEGORIES},
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


# --- Keras -------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="cityseg")
class MeanIoU(keras.metrics.Metric):
    """Streaming mean IoU from integer labels and per-pixel logits.

    Accumulates a dataset-level confusion matrix (the mean of per-batch IoUs would weight small
    batches and rare categories wrongly) and reports the mean IoU of the 7 non-void categories
    with ground-truth void ignored, or of all 8 with `include_void=True`; see the module
    docstring.

    The confusion-matrix variable is float64 with aggregation SUM, so replicas under
    tf.distribute add up and counts stay exact far beyond float32's 2**24. Logits may be
    float16/bfloat16 (mixed precision): only their argmax is used.

    `sample_weight`, when given, is a mask: pixels with weight 0 are skipped, all others count
    once. Class-balancing weights must not change what IoU measures.
    """

    def __init__(self, num_classes: int = NUM_CATEGORIES, include_void: bool = False,
                 void_class: int = VOID, name: str = "mean_iou", dtype: Any = None):
        super().__init__(name=name, dtype=dtype or "float32")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, not {num_classes}")
        if not 0 <= void_class < num_classes:
            raise ValueError(f"void_class {void_class} outside 0..{num_classes - 1}")
        self.num_classes = int(num_classes)
        self.include_void = bool(include_void)
        self.void_class = int(void_class)
        self.total_cm = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="float64",
            aggregation="sum", name="total_confusion_matrix")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: `y_true` int [B, H, W] (or [B, H, W, 1]), `y_pred` logits [B, H, W, C]."""
        n = self.num_classes
        truth = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        pred = tf.reshape(tf.argmax(y_pred, axis=-1, output_type=tf.int32), [-1])
        # Out-of-range truth (e.g. an ignore value of 255) is skipped rather than clipped into
        # a real category.
        valid = tf.logical_and(truth >= 0, truth < n)
        if sample_weight is not None:
            weight = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
            weight = tf.broadcast_to(weight, tf.shape(truth)) if weight.shape.rank == 0 else weight
            valid = tf.logical_and(valid, weight > 0)
        index = tf.where(valid, truth * n + pred, 0)
        # A segment sum, not tf.math.bincount: the trainer compiles its step with XLA, which
        # has no DenseBincount kernel. int32 keeps per-batch counts exact (float32 would not
        # be past 2**24 pixels, i.e. 8 full-size frames).
        counts = tf.math.unsorted_segment_sum(tf.cast(valid, tf.int32), index, n * n)
        self.total_cm.assign_add(tf.reshape(tf.cast(counts, tf.float64), [n, n]))

    def result(self):
        cm = tf.convert_to_tensor(self.total_cm)
        if not self.include_void:
            keep = tf.one_hot(self.void_class, self.num_classes, on_value=0.0, off_value=1.0,
                              dtype=tf.float64)
            cm = cm * keep[:, tf.newaxis]  # drop ground-truth void rows
        tp = tf.linalg.diag_part(cm)
        union = tf.reduce_sum(cm, axis=0) + tf.reduce_sum(cm, axis=1) - tp
        present = union > 0
        if not self.include_void:
            present = tf.logical_and(present, tf.range(self.num_classes) != self.void_class)
        iou = tf.math.divide_no_nan(tp, union)
        count = tf.reduce_sum(tf.cast(present, tf.float64))
        mean = tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, iou, 0.0)), count)
        return tf.cast(mean, self.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes,
                "include_void": self.include_void, "void_class": self.void_class}
