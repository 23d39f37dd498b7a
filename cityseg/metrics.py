"""Segmentation metrics in numpy: a confusion matrix and the IoUs derived from it.

Two mean-IoU conventions are reported side by side, named so that nobody mixes them up:

- `mean_iou_7`: the Cityscapes category benchmark. Pixels whose ground truth is void are
  ignored; IoU is averaged over the 7 non-void categories. A non-void pixel predicted as void
  still counts as a miss for its true category.
- `mean_iou_8`: the seed project's convention: all 8 categories, void included, every pixel
  counted.

A category absent from both ground truth and prediction has an undefined IoU (NaN here, null in
JSON); it is left out of the means rather than counted as 0 or 1.

One owner for evaluation (`training.evaluate`, over a dataset) and the proxy (one image at a
time): numpy only, so that the proxy computes the same figures without loading TensorFlow. The
streaming Keras metric the trainer reports lives in `training.metrics.MeanIoU`.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from cityseg.vocabulary import CATEGORIES, EVALUATED_CATEGORIES, NUM_CATEGORIES, VOID


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
