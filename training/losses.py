"""Segmentation losses on logits: cross-entropy (optionally class-weighted), OHEM, soft Dice, focal,
Lovász-softmax.

Every loss takes logits `[B, H, W, C]` (the models never apply softmax) and integer category ids
`[B, H, W]`, and returns one value per image, so Keras' default `sum_over_batch_size` reduction
and its distribution-strategy loss scaling apply unchanged. Logits are cast to float32 first: under
mixed precision a float16 softmax over a large image underflows.

Pixels of `ignore_class` (the trainer passes void, which the benchmark does not score) contribute
nothing: they are masked out of every sum and every normaliser.
"""
from __future__ import annotations

from typing import Callable, Sequence

import keras
import tensorflow as tf

from cityseg import vocabulary as V

_EPSILON = 1e-7


def _prepare(y_true: tf.Tensor, y_pred: tf.Tensor,
             ignore_class: int | None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Returns (labels int32 [B,H,W], logits float32 [B,H,W,C], valid float32 [B,H,W])."""
    logits = tf.cast(y_pred, tf.float32)
    labels = tf.cast(y_true, tf.int32)
    # Keras may hand labels as [B, H, W, 1]; the losses work on [B, H, W].
    if labels.shape.rank == logits.shape.rank:
        labels = tf.squeeze(labels, axis=-1)
    if ignore_class is None:
        valid = tf.ones_like(labels, dtype=tf.float32)
    else:
        valid = tf.cast(tf.not_equal(labels, ignore_class), tf.float32)
    return labels, logits, valid


def _per_image_sum(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(x, axis=tf.range(1, tf.rank(x)))


def _pixel_cross_entropy(y_true, y_pred, class_weights, ignore_class):
    """Per-pixel cross-entropy from logits [B, H, W] and each pixel's weight (0 where ignored,
    else its class weight or 1)."""
    labels, logits, weights = _prepare(y_true, y_pred, ignore_class)
    # Ignored pixels may hold any id; clip so the op accepts them (their weight is 0).
    safe_labels = tf.clip_by_value(labels, 0, logits.shape[-1] - 1)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    if class_weights is not None:
        weights = weights * tf.gather(tf.constant(class_weights, tf.float32), safe_labels)
    return ce, weights


def cross_entropy(y_true: tf.Tensor, y_pred: tf.Tensor, *,
                  class_weights: Sequence[float] | None = None,
                  ignore_class: int | None = None) -> tf.Tensor:
    """Per-image mean sparse cross-entropy from logits, optionally class-weighted.

    With class weights `w`, an image's loss is `sum_p w[y_p] * ce_p / sum_p w[y_p]` over its
    valid pixels (the normalisation PyTorch's weighted `CrossEntropyLoss` uses), so weights change
    which pixels matter, not the loss scale.

    Returns:
      float32 [B].
    """
    ce, weights = _pixel_cross_entropy(y_true, y_pred, class_weights, ignore_class)
    return _per_image_sum(weights * ce) / tf.maximum(_per_image_sum(weights), _EPSILON)


def dice(y_true: tf.Tensor, y_pred: tf.Tensor, *, smooth: float = 1.0,
         ignore_class: int | None = None) -> tf.Tensor:
    """Per-image soft Dice loss: 1 - mean over classes of (2|P∩Y| + s) / (|P| + |Y| + s).

    Classes absent from both the prediction and the label score ~1 (thanks to `smooth`), so a
    correct "nothing here" is not punished; the ignored class is left out of the mean.

    Returns:
      float32 [B].
    """
    labels, logits, valid = _prepare(y_true, y_pred, ignore_class)
    num_classes = logits.shape[-1]
    probs = tf.nn.softmax(logits, axis=-1) * valid[..., tf.newaxis]
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32) * valid[..., tf.newaxis]
    intersection = tf.reduce_sum(probs * onehot, axis=[1, 2])
    total = tf.reduce_sum(probs, axis=[1, 2]) + tf.reduce_sum(onehot, axis=[1, 2])
    score = (2.0 * intersection + smooth) / (total + smooth)  # [B, C]
    if ignore_class is not None:
        keep = [c for c in range(num_classes) if c != ignore_class]
        score = tf.gather(score, keep, axis=-1)
    return 1.0 - tf.reduce_mean(score, axis=-1)


def focal(y_true: tf.Tensor, y_pred: tf.Tensor, *, gamma: float = 2.0,
          class_weights: Sequence[float] | None = None,
          ignore_class: int | None = None) -> tf.Tensor:
    """Per-image focal loss `-(1 - p_t)^gamma log p_t` (Lin et al. 2017), mean over valid pixels.

    Down-weights pixels the model already gets right (the vast road and sky areas) so the thin
    and rare categories drive the gradient. Class weights play the role of the paper's alpha.

    Returns:
      float32 [B].
    """
    _, _, valid = _prepare(y_true, y_pred, ignore_class)
    ce, weights = _pixel_cross_entropy(y_true, y_pred, class_weights, ignore_class)
    p_t = tf.exp(-ce)
    loss = tf.pow(1.0 - p_t, gamma) * ce
    return _per_image_sum(weights * loss) / tf.maximum(_per_image_sum(valid), _EPSILON)


def ohem_cross_entropy(y_true: tf.Tensor, y_pred: tf.Tensor, *,
                       class_weights: Sequence[float] | None = None,
                       ignore_class: int | None = None, threshold: float = 0.7,
                       min_kept_fraction: float = 0.1) -> tf.Tensor:
    """Per-image online hard example mining cross-entropy (Shrivastava et al. 2016; the
    pixel variant of PSPNet/BiSeNet/Fast-SCNN code bases).

    Only the hard pixels count: those whose true category gets probability below
    `threshold`, and at least the `min_kept_fraction` of valid pixels with the largest loss
    (so a well-learned image still trains). Road and sky, learned early, stop drowning the
    gradient of poles, signs and people without fixing per-category weights in advance.

    Returns:
      float32 [B]: the mean cross-entropy over each image's kept pixels.
    """
    ce, weights = _pixel_cross_entropy(y_true, y_pred, class_weights, ignore_class)
    valid = weights > 0
    batch = tf.shape(ce)[0]
    flat = tf.reshape(tf.where(valid, ce, -1.0), [batch, -1])
    valid_count = tf.reduce_sum(tf.cast(valid, tf.int32), axis=[1, 2])
    k = tf.maximum(1, tf.cast(tf.cast(tf.reduce_max(valid_count), tf.float32)
                              * min_kept_fraction, tf.int32))
    k = tf.minimum(k, tf.shape(flat)[1])
    kth = tf.math.top_k(flat, k=k, sorted=True).values[:, -1]
    hard = ce > -tf.math.log(threshold)
    keep = tf.logical_and(valid, tf.logical_or(hard, ce >= kth[:, tf.newaxis, tf.newaxis]))
    kept = tf.cast(keep, tf.float32) * weights
    return _per_image_sum(kept * ce) / tf.maximum(_per_image_sum(kept), _EPSILON)


def lovasz_softmax(y_true: tf.Tensor, y_pred: tf.Tensor, *,
                   ignore_class: int | None = None, stride: int = 1) -> tf.Tensor:
    """Per-image Lovász-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018): a convex
    surrogate of 1 - IoU, the measure the benchmark scores, averaged over the categories present
    in the image's label.

    For each category, pixel errors `|[y = c] - p_c|` are sorted in decreasing order and
    weighted by the gradient of the Jaccard loss's Lovász extension (the paper's Alg. 1): a
    wrong pixel of a small category moves its IoU much more than one of road, so thin poles and
    signs weigh as much as the category they belong to, not as their pixel count. Ignored
    pixels sort after every valid one and add nothing.

    The sort is the cost: at 8x256x352 the whole loss and its gradient took about 7 times the
    weighted OHEM's (an ad-hoc timing on 2 CPU cores). `stride` 2 scores every second pixel of
    every second row, a quarter of the sort, whose IoU is the whole crop's in expectation; with
    it the default recipe trained at 14.8 images/s against 15.7 (docs/benchmarks/lovasz.md).

    Returns:
      float32 [B].
    """
    labels, logits, valid = _prepare(y_true, y_pred, ignore_class)
    if stride > 1:
        labels, logits, valid = (x[:, ::stride, ::stride] for x in (labels, logits, valid))
    num_classes = logits.shape[-1]
    classes = [c for c in range(num_classes) if c != ignore_class]
    batch = tf.shape(logits)[0]
    probs = tf.gather(tf.nn.softmax(logits, axis=-1), classes, axis=-1)  # [B, H, W, K]
    fg = tf.cast(tf.equal(labels[..., tf.newaxis], classes), tf.float32) * valid[..., tf.newaxis]
    # [B, K, P]: one row of pixel errors per (image, category); ignored pixels get -1.
    fg = tf.transpose(tf.reshape(fg, [batch, -1, len(classes)]), [0, 2, 1])
    errors = tf.abs(fg - tf.transpose(tf.reshape(probs, [batch, -1, len(classes)]), [0, 2, 1]))
    flat_valid = tf.reshape(valid, [batch, 1, -1]) > 0
    errors = tf.where(flat_valid, errors, -1.0)
    order = tf.argsort(errors, axis=-1, direction="DESCENDING")
    errors_sorted = tf.maximum(tf.gather(errors, order, batch_dims=2), 0.0)
    fg_sorted = tf.gather(fg, order, batch_dims=2)
    # The Lovász extension's gradient: Jaccard loss after each prefix, differenced.
    total = tf.reduce_sum(fg_sorted, axis=-1, keepdims=True)
    intersection = total - tf.cumsum(fg_sorted, axis=-1)
    union = total + tf.cumsum(1.0 - fg_sorted, axis=-1)
    jaccard = 1.0 - intersection / tf.maximum(union, _EPSILON)
    grad = tf.concat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)
    per_class = tf.reduce_sum(errors_sorted * tf.stop_gradient(grad), axis=-1)  # [B, K]
    present = tf.cast(total[..., 0] > 0, tf.float32)
    return _per_image_sum(per_class * present) / tf.maximum(_per_image_sum(present), 1.0)


@keras.saving.register_keras_serializable(package="cityseg")
class SegmentationLoss(keras.losses.Loss):
    """A Keras loss wrapping one of this module's functions by name (serialisable in .keras)."""

    def __init__(self, kind: str = "ce", class_weights: Sequence[float] | None = None,
                 ignore_class: int | None = None, name: str | None = None, **kwargs):
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r} (expected one of {', '.join(LOSSES)})")
        if kind in WEIGHTS_REQUIRED and class_weights is None:
            raise ValueError(f"loss {kind!r} needs class weights")
        super().__init__(name=name or kind.replace("+", "_"), **kwargs)
        self.kind = kind
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.ignore_class = ignore_class

    def call(self, y_true, y_pred):
        return LOSSES[self.kind](y_true, y_pred, class_weights=self.class_weights,
                                 ignore_class=self.ignore_class)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "class_weights": self.class_weights,
                "ignore_class": self.ignore_class}


def _ce(y_true, y_pred, *, class_weights=None, ignore_class=None):
    # Plain CE ignores class weights even when the trainer has them: that is weighted_ce's job.
    return cross_entropy(y_true, y_pred, ignore_class=ignore_class)


def _weighted_ce(y_true, y_pred, *, class_weights=None, ignore_class=None):
    return cross_entropy(y_true, y_pred, class_weights=class_weights, ignore_class=ignore_class)


def _dice(y_true, y_pred, *, class_weights=None, ignore_class=None):
    return dice(y_true, y_pred, ignore_class=ignore_class)


def _focal(y_true, y_pred, *, class_weights=None, ignore_class=None):
    return focal(y_true, y_pred, class_weights=class_weights, ignore_class=ignore_class)


def _ce_dice(y_true, y_pred, *, class_weights=None, ignore_class=None):
    # CE gives well-behaved early gradients; Dice then counters the class imbalance.
    return (cross_entropy(y_true, y_pred, class_weights=class_weights, ignore_class=ignore_class)
            + dice(y_true, y_pred, ignore_class=ignore_class))


def _ohem(y_true, y_pred, *, class_weights=None, ignore_class=None):
    # Hard pixels choose themselves; class weights stay weighted_ce's business.
    return ohem_cross_entropy(y_true, y_pred, ignore_class=ignore_class)


def soften_weights(class_weights: Sequence[float], power: float = 0.5) -> list[float]:
    """Class weights raised to `power`: 0.5 turns median-frequency weights whose range is 34x
    on CamVid (human 8.1, flat 0.24) into a 6x range."""
    return [float(w) ** power for w in class_weights]


def _weighted_ohem(y_true, y_pred, *, class_weights=None, ignore_class=None):
    # OHEM picks the hard pixels; square-rooted median-frequency weights then tilt the kept
    # ones towards rare categories. The full weights (weighted_ce) pushed buildings into
    # poles and people: construction fell from 0.76 to 0.38 IoU (docs/benchmarks/recipes.md).
    weights = None if class_weights is None else soften_weights(class_weights)
    return ohem_cross_entropy(y_true, y_pred, class_weights=weights, ignore_class=ignore_class)


def _lovasz(y_true, y_pred, *, class_weights=None, ignore_class=None):
    return lovasz_softmax(y_true, y_pred, ignore_class=ignore_class)


def _weighted_ohem_lovasz(y_true, y_pred, *, class_weights=None, ignore_class=None):
    # The weighted OHEM's per-pixel gradients, plus a term that scores each category as the
    # benchmark does (its IoU), whatever its pixel count; on every second pixel of every
    # second row, a quarter of the sort that is its cost.
    return (_weighted_ohem(y_true, y_pred, class_weights=class_weights, ignore_class=ignore_class)
            + lovasz_softmax(y_true, y_pred, ignore_class=ignore_class, stride=2))


def _ohem_lovasz(y_true, y_pred, *, class_weights=None, ignore_class=None):
    # The same two terms with plain OHEM: the default's form on data without category counts.
    return _weighted_ohem_lovasz(y_true, y_pred, ignore_class=ignore_class)


LOSSES: dict[str, Callable[..., tf.Tensor]] = {
    "ce": _ce,
    "ohem": _ohem,
    "weighted_ohem": _weighted_ohem,
    "weighted_ce": _weighted_ce,
    "dice": _dice,
    "focal": _focal,
    "ce+dice": _ce_dice,
    "lovasz": _lovasz,
    "weighted_ohem+lovasz": _weighted_ohem_lovasz,
    "ohem+lovasz": _ohem_lovasz,
}
# The losses that read class weights; the trainer derives weights from stats.json for these.
CLASS_WEIGHTED_LOSSES = frozenset({"weighted_ce", "weighted_ohem", "focal", "ce+dice",
                                   "weighted_ohem+lovasz"})
# Those that mean nothing without them.
WEIGHTS_REQUIRED = frozenset({"weighted_ce", "weighted_ohem", "weighted_ohem+lovasz"})
# What a loss that reads category counts becomes on data without them, where the trainer
# trains its default rather than refuse.
UNWEIGHTED_FORM = {"weighted_ohem": "ohem", "weighted_ohem+lovasz": "ohem+lovasz"}


def make_loss(name: str, class_weights: Sequence[float] | None = None, *,
              ignore_class: int | None = None) -> SegmentationLoss:
    """Builds a loss by name: `ce`, `ohem`, `weighted_ohem`, `weighted_ce`, `dice`, `focal`,
    `ce+dice`, `lovasz`, `weighted_ohem+lovasz` or `ohem+lovasz`.

    Args:
      name: one of `LOSSES`.
      class_weights: one weight per category (length `NUM_CATEGORIES`); required by
        `weighted_ce`, also used by `weighted_ohem` (square-rooted, also in
        `weighted_ohem+lovasz`), `focal` (as alpha) and `ce+dice` (on the CE term).
      ignore_class: a category whose pixels are left out (the trainer passes void).

    Raises:
      ValueError: for an unknown name, missing or wrongly sized class weights.
    """
    if class_weights is not None and len(class_weights) != V.NUM_CATEGORIES:
        raise ValueError(f"class weights need {V.NUM_CATEGORIES} values, got {len(class_weights)}")
    return SegmentationLoss(name, class_weights=class_weights, ignore_class=ignore_class)
