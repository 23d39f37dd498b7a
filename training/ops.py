"""Tensor ops shared by training input and the exported serving graph.

Both sides normalise and resize through these functions, so that what the model sees at
serving time is exactly what it saw in training (no train/serve skew).
"""
from __future__ import annotations

import tensorflow as tf


def normalize_image(image: tf.Tensor) -> tf.Tensor:
    """Maps uint8 RGB [.., H, W, 3] to float32 in [0, 1]."""
    return tf.cast(image, tf.float32) / 255.0


def resize_image(image: tf.Tensor, size: tuple[int, int] | tf.Tensor) -> tf.Tensor:
    """Resizes an image (or batch) to `size` (height, width).

    Area averaging when shrinking keeps thin structures (poles, signs) from aliasing away;
    bilinear when enlarging.
    """
    size = tf.convert_to_tensor(size, dtype=tf.int32)
    shape = tf.shape(image)
    shrinking = tf.logical_and(shape[-3] >= size[0], shape[-2] >= size[1])
    image = tf.cast(image, tf.float32)
    return tf.cond(
        shrinking,
        lambda: tf.image.resize(image, size, method=tf.image.ResizeMethod.AREA),
        lambda: tf.image.resize(image, size, method=tf.image.ResizeMethod.BILINEAR),
    )


def resize_label(label: tf.Tensor, size: tuple[int, int] | tf.Tensor) -> tf.Tensor:
    """Resizes a category mask [.., H, W] with nearest neighbour.

    Interpolating category ids would invent categories at boundaries (between 1 and 7 lies 4),
    so masks are only ever resized with `nearest`.
    """
    squeeze = label.shape.rank is not None and label.shape.rank in (2, 3) and (
        label.shape.rank == 2 or label.shape[-1] != 1)
    x = label[..., tf.newaxis] if squeeze else label
    x = tf.image.resize(x, size, method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)
    x = tf.cast(x, label.dtype)
    return x[..., 0] if squeeze else x
