"""Tensor ops shared by preprocessing, training input and the exported serving graph.

Both sides normalise and resize through these functions, so that what the model sees at
serving time is exactly what it saw in training (no train/serve skew).
"""
from __future__ import annotations

import tensorflow as tf

from cityseg.vocabulary import VOID


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


# What the model sees where there is no picture: padding to the stride, padding a frame smaller
# than the training crop, the corners a rotation uncovers. Mid-grey in [0, 1] is the value a
# BatchNorm'd network finds least surprising; training and serving pad with the same value.
PAD_IMAGE_VALUE = 0.5


def round_up(value: tf.Tensor | int, multiple: int) -> tf.Tensor:
    """The smallest multiple of `multiple` >= value (works on ints and int32 tensors)."""
    return (value + multiple - 1) // multiple * multiple


def pad_to_size(image: tf.Tensor, label: tf.Tensor | None, size) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Pads image [H, W, C] (and mask [H, W]) at the bottom and right to at least `size`.

    The image is padded with PAD_IMAGE_VALUE, the mask with void (which the loss and the
    benchmark ignore); nothing is ever cropped, so the original pixels keep their coordinates
    and a prediction is cropped back with `[:H, :W]`.
    """
    shape = tf.shape(image)
    size = tf.convert_to_tensor(size, tf.int32)
    pad_h = tf.maximum(size[0] - shape[0], 0)
    pad_w = tf.maximum(size[1] - shape[1], 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]],
                   constant_values=tf.cast(PAD_IMAGE_VALUE, image.dtype))
    if label is not None:
        label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=tf.cast(VOID, label.dtype))
    return image, label


def pad_to_multiple(image: tf.Tensor, label: tf.Tensor | None,
                    multiple: int) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Pads image [H, W, C] (and mask) to the next multiple of `multiple` (a model's stride)."""
    shape = tf.shape(image)
    return pad_to_size(image, label, [round_up(shape[0], multiple), round_up(shape[1], multiple)])


def working_size(height: tf.Tensor, width: tf.Tensor, max_long_side: int | None) -> tf.Tensor:
    """(h, w) a frame is processed at: shrunk so its long side is at most `max_long_side`.

    Aspect ratio is kept (rounded to whole pixels, at least 1); frames already small enough
    keep their size, never enlarged. None: always the frame's own size.
    """
    size = tf.stack([height, width])
    if max_long_side is None:
        return size
    long_side = tf.cast(tf.maximum(height, width), tf.float32)
    scale = tf.minimum(1.0, float(max_long_side) / long_side)
    scaled = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
    return tf.maximum(scaled, 1)
