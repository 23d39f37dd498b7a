"""The streaming mean IoU the trainer reports, as a Keras metric.

The numpy functions (confusion matrix, IoUs, the summary) live in `cityseg.metrics`, shared with
the proxy, and are re-exported here for the callers that import them from `training.metrics`;
see that module for the two mean-IoU conventions. `MeanIoU` computes the same `mean_iou_7` (or
`mean_iou_8`) in a graph, batch after batch, as `mean_iou` (and `val_mean_iou`).
"""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from cityseg.metrics import (  # noqa: F401 - re-exported for training.evaluate and older callers
    confusion_matrix,
    iou_ignoring_void,
    iou_per_class,
    nanmean_or_nan,
    summarize,
)
from cityseg.vocabulary import NUM_CATEGORIES, VOID


@keras.saving.register_keras_serializable(package="cityseg")
class MeanIoU(keras.metrics.Metric):
    """Streaming mean IoU from integer labels and per-pixel logits.

    Accumulates a dataset-level confusion matrix (the mean of per-batch IoUs would weight small
    batches and rare categories wrongly) and reports the mean IoU of the 7 non-void categories
    with ground-truth void ignored, or of all 8 with `include_void=True`; see
    `cityseg.metrics`.

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
