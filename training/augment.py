"""Joint image + label augmentation for training (the seed's set, made reproducible).

Every op takes one example: an image float32 [H, W, 3] in [0, 1] and a category mask [H, W]
(any integer dtype), and returns both with the same geometry. Geometric ops move image and
label with the SAME draw; the mask is only ever resampled with nearest neighbour (interpolating
category ids would invent categories at boundaries) and pixels that come from outside the frame
become void (0) in the mask and neutral grey in the image.

The crops are window-first: they work out which window of the frame they need and resample
only that, once (`resample_window`): the cost follows the window kept, not the whole frame at
the drawn scale. They also take the uint8 frame as decoded (converting only the window), and,
with `frame_size`, a frame still at its stored size (the label at the stored size, the image
possibly at 1/2 or 1/4 of it, as `training.data.decode_example` reads JPEG), drawing the
geometry on the frame at `frame_size` as if it had been resized to it first.

Randomness is stateless: each random op takes a `seed` (int32/int64 [2]) and uses
`tf.random.stateless_*`, so the same seed gives the same result eagerly, inside
`Dataset.map`, on any worker and after a restart. `training.data` draws one seed per example
from `tf.data.Dataset.random(seed)`. The deterministic ops (`rotate`, `crop_and_resize`,
`scale_and_crop`, `resample_window`, `flip_horizontal`, `gaussian_blur`,
`adjust_saturation_hue`) are public so that tests can check them exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from cityseg import ops
from cityseg import vocabulary as V

# What the model sees where a rotation uncovers no image: the padding value of cityseg/ops.
NEUTRAL_IMAGE_VALUE = ops.PAD_IMAGE_VALUE
_BLUR_RADIUS = 4  # kernel of 2 * 4 + 1 = 9 taps covers +-3 sigma for sigma <= 1.5
# RGB -> YIQ (NTSC) for RGB row vectors, columns Y, I, Q. These 4-digit chroma columns sum to
# exactly 0, so grey has no chroma; the inverse is taken in float64, so no change is identity.
_RGB_TO_YIQ = np.array([[0.299, 0.5959, 0.2115],
                        [0.587, -0.2746, -0.5227],
                        [0.114, -0.3213, 0.3112]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation.

    The defaults are the recipe measured on real street photos (docs/benchmarks/recipe.md):
    random scale + crop + flip + photometric jitter, no rotation (a car's camera is level;
    rotation cost throughput and did not help there).

    Attributes:
      scale_range: each frame is resized by a factor drawn uniformly in this range before the
        crop (both axes alike: the aspect ratio is kept). Used only with a crop size.
      max_rotation_degrees: rotation angle drawn uniformly in +-this (0: none).
      max_crop_fraction: the seed's zoom-in when no crop size is given: up to this fraction
        of height and width is cropped away, then resized back.
      blur_probability: chance of a Gaussian blur.
      max_blur_sigma: blur sigma drawn uniformly in (0, this], in pixels.
      flip_probability: chance of a horizontal flip (a street scene mirrored is still a street
        scene; a vertical flip is not, so there is none).
      max_brightness_delta: brightness offset drawn in +-this (images are in [0, 1]).
      contrast_range: contrast factor drawn uniformly in this range.
      saturation_range: saturation factor drawn uniformly in this range.
      max_hue_delta: hue shift drawn in +-this (fraction of the colour circle).
    """

    scale_range: tuple[float, float] = (0.5, 2.0)
    max_rotation_degrees: float = 0.0
    max_crop_fraction: float = 0.2
    blur_probability: float = 0.0
    max_blur_sigma: float = 1.5
    flip_probability: float = 0.5
    max_brightness_delta: float = 0.2
    contrast_range: tuple[float, float] = (0.8, 1.2)
    saturation_range: tuple[float, float] = (0.8, 1.2)
    max_hue_delta: float = 0.03

    def __post_init__(self):
        if not 0.0 <= self.max_rotation_degrees <= 180.0:
            raise ValueError(f"max_rotation_degrees must be in [0, 180], not {self.max_rotation_degrees}")
        if not 0.0 <= self.max_crop_fraction < 1.0:
            raise ValueError(f"max_crop_fraction must be in [0, 1), not {self.max_crop_fraction}")
        for name in ("blur_probability", "flip_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)}")
        if self.max_blur_sigma < 0 or self.max_brightness_delta < 0:
            raise ValueError("max_blur_sigma and max_brightness_delta must be >= 0")
        if not 0.0 <= self.max_hue_delta <= 0.5:
            raise ValueError(f"max_hue_delta must be in [0, 0.5], not {self.max_hue_delta}")
        for name in ("scale_range", "contrast_range", "saturation_range"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high:
                raise ValueError(f"{name} must be 0 < low <= high, not {getattr(self, name)}")


# A config that changes nothing but the crop position: training without augmentation.
NO_AUGMENT = AugmentConfig(scale_range=(1.0, 1.0), max_crop_fraction=0.0, flip_probability=0.0,
                           max_brightness_delta=0.0, contrast_range=(1.0, 1.0),
                           saturation_range=(1.0, 1.0), max_hue_delta=0.0)


# --- Deterministic ops -----------------------------------------------------------------------

def flip_horizontal(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirrors image [H, W, C] and mask [H, W] left-right."""
    return tf.reverse(image, axis=[1]), tf.reverse(label, axis=[1])


def rotation_transform(degrees: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """The 8-vector projective transform rotating an image about its centre.

    `ImageProjectiveTransformV3` maps each OUTPUT pixel (x, y) to the input point
    (a0 x + a1 y + a2, b0 x + b1 y + b2); this is that inverse rotation.
    """
    angle = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    zero = tf.zeros_like(cos)
    return tf.stack([
        cos, -sin, cx - cos * cx + sin * cy,
        sin, cos, cy - sin * cx - cos * cy,
        zero, zero,
    ])


def _transform(x: tf.Tensor, transform: tf.Tensor, interpolation: str, fill) -> tf.Tensor:
    """Applies a projective transform to one [H, W, C] tensor, constant fill outside."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(x)[:2],
        fill_value=tf.cast(fill, tf.float32),
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )
    return out[0]


def rotate(image: tf.Tensor, label: tf.Tensor, degrees) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotates image and mask by `degrees` about the centre, keeping their size.

    The image is resampled bilinearly with neutral grey outside the frame; the mask with
    nearest neighbour and void (0) outside, so no invented category appears.
    """
    shape = tf.shape(image)
    transform = rotation_transform(degrees, shape[0], shape[1])
    image = _transform(tf.cast(image, tf.float32), transform, "BILINEAR", NEUTRAL_IMAGE_VALUE)
    label = _transform(label[..., tf.newaxis], transform, "NEAREST", V.VOID)[..., 0]
    return image, label


def resample_window(image: tf.Tensor, label: tf.Tensor, offset, window,
                    size) -> tuple[tf.Tensor, tf.Tensor]:
    """Cuts the window at `offset` (y, x) of `window` (h, w) pixels and resizes it to `size`.

    Every geometric op ends here, so each frame is resampled once, from its decoded pixels:
    the image with `ops.resize_image` (area when shrinking, bilinear when enlarging), the mask
    with nearest neighbour. `offset` and `window` are in the image's pixels; a label larger
    than the image (a JPEG decoded at 1/2 or 1/4 of its stored size by
    `training.data.decode_example`; the label keeps the stored size) is cut at the same place
    in its own pixels, exactly when its size is a multiple of the image's.

    Args:
      image: float32 [H, W, 3] in [0, 1], or uint8 (then only the window is converted).
      label: integer mask [H', W'], of the image's size or a multiple of it.
      offset: (y, x) int32; the window must fit in the image.
      window: (h, w) int32, >= 1.
      size: (h, w) of the output.

    Returns:
      (image float32 [h, w, 3] in [0, 1], label [h, w]).
    """
    offset = tf.convert_to_tensor(offset, tf.int32)
    window = tf.convert_to_tensor(window, tf.int32)
    image_size = tf.shape(image)[:2]
    resized = ops.resize_image(
        tf.slice(image, [offset[0], offset[1], 0], [window[0], window[1], -1]), size)
    if image.dtype == tf.uint8:
        resized = resized / 255.0
    # The label's pixels per image pixel (1 unless the image was decoded at a reduced scale).
    ratio = tf.cast(tf.shape(label), tf.float32) / tf.cast(image_size, tf.float32)
    start = tf.cast(tf.round(tf.cast(offset, tf.float32) * ratio), tf.int32)
    stop = tf.cast(tf.round(tf.cast(offset + window, tf.float32) * ratio), tf.int32)
    label = tf.slice(label, start, tf.maximum(stop - start, 1))
    return resized, ops.resize_label(label, size)


def crop_and_resize(image: tf.Tensor, label: tf.Tensor, offset: tf.Tensor, crop_size: tf.Tensor,
                    size=None) -> tuple[tf.Tensor, tf.Tensor]:
    """Crops the window at `offset` (y, x) of `crop_size` (h, w), then resizes it back.

    Back to the image's own size, or to `size`; see `resample_window` (the image comes back
    as float32 in [0, 1], the mask resized with nearest neighbour).
    """
    return resample_window(image, label, offset, crop_size,
                           tf.shape(image)[:2] if size is None else size)


def scaled_window(size: tf.Tensor, scale, crop_size,
                  frame_size=None) -> tuple[tf.Tensor, tf.Tensor]:
    """Where a crop of a scaled frame comes from, in the image's own pixels.

    Scaling the frame (of `frame_size`, default the image's `size`) by `scale` gives
    S = max(round(frame_size * scale), 1) pixels per axis; a crop of `crop_size` covers
    out = min(S, crop) of them (the rest of the crop is padding), and those come from
    round(out * size / S) pixels of the image.

    Args:
      size: (h, w) of the image, int32 [2].
      scale: resize factor (> 0).
      crop_size: (h, w) of the crop.
      frame_size: (h, w) the frame is seen at before scaling (`training.data`'s image_size);
        None: the image's size.

    Returns:
      (window int32 [2]: image pixels per axis, out int32 [2]: scaled pixels per axis, <= crop).
    """
    size = tf.cast(size, tf.float32)
    frame = size if frame_size is None else tf.cast(frame_size, tf.float32)
    scaled = tf.maximum(tf.cast(tf.round(frame * scale), tf.int32), 1)
    out = tf.minimum(scaled, tf.convert_to_tensor(crop_size, tf.int32))
    window = tf.round(tf.cast(out, tf.float32) * size / tf.cast(scaled, tf.float32))
    return tf.clip_by_value(tf.cast(window, tf.int32), 1, tf.cast(size, tf.int32)), out


def scale_and_crop(image: tf.Tensor, label: tf.Tensor, scale, crop_size, offset,
                   frame_size=None) -> tuple[tf.Tensor, tf.Tensor]:
    """The crop of `crop_size` at `offset` of the frame resized by `scale`, padded where smaller.

    Only the window the crop needs (`scaled_window`) is resized, never the whole frame: at
    scale 2 that is a quarter of the frame's pixels instead of four times them. The result is
    that of resizing the whole frame and cropping it, but for the crop's outermost pixels (the
    resize of a window cannot see past its edge) and the window being whole image pixels (its
    scale is exact to half an image pixel over the window; at integer scales and with an
    offset on the scaled grid, the pixels are the same).

    Resampling is `resample_window`'s (image: area when shrinking, bilinear when enlarging;
    mask: nearest neighbour); where the scaled frame is smaller than the crop, padding is
    `ops.pad_to_size`'s (grey image, void mask, which the loss ignores), so a frame smaller
    than the crop still trains.

    Args:
      image: float32 [H, W, 3] in [0, 1], or uint8 (then only the window is converted).
      label: integer mask [H, W] (or a multiple of the image's size: `resample_window`).
      scale: resize factor (> 0).
      crop_size: (h, w) of the output.
      offset: (y, x) of the window's top-left corner in the image's pixels; the window
        (`scaled_window`) must fit: 0 <= offset <= (H, W) - window.
      frame_size: (h, w) the frame is scaled from (`scaled_window`); None: the image's size.

    Returns:
      (image float32 [h, w, 3] in [0, 1], label [h, w]).
    """
    window, out = scaled_window(tf.shape(image)[:2], scale, crop_size, frame_size)
    image, label = resample_window(image, label, offset, window, out)
    return ops.pad_to_size(image, label, crop_size)


def gaussian_kernel(sigma: tf.Tensor, radius: int = _BLUR_RADIUS) -> tf.Tensor:
    """A normalised 1-D Gaussian of 2 * radius + 1 taps."""
    sigma = tf.maximum(tf.cast(sigma, tf.float32), 1e-3)
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(x / sigma))
    return kernel / tf.reduce_sum(kernel)


def gaussian_blur(image: tf.Tensor, sigma, radius: int = _BLUR_RADIUS) -> tf.Tensor:
    """Blurs an image [H, W, C] with a separable Gaussian of `sigma` pixels.

    Borders are reflected rather than zero-padded so the frame edge does not darken. Each
    1-D pass is a weighted sum of 2 * radius + 1 shifted views of the frame: on CPU that is
    about 3x faster than `tf.nn.depthwise_conv2d` with the same taps (9 taps, 256x512).
    """
    image = tf.cast(image, tf.float32)
    kernel = tf.unstack(gaussian_kernel(sigma, radius))
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    x = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    x = tf.add_n([tap * x[i:i + height] for i, tap in enumerate(kernel)])
    x = tf.add_n([tap * x[:, i:i + width] for i, tap in enumerate(kernel)])
    return tf.ensure_shape(x, image.shape)


# --- Random ops (stateless: same seed, same draw) --------------------------------------------

def _uniform(seed: tf.Tensor, low, high, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=tf.float32)


def random_flip(image, label, seed, probability: float = 0.5):
    """Flips image and mask together with `probability`."""
    do = _uniform(seed, 0.0, 1.0) < probability
    return tf.cond(do, lambda: flip_horizontal(image, label), lambda: (image, label))


def random_rotation(image, label, seed, max_degrees: float = 25.0):
    """Rotates image and mask together by an angle drawn in +-max_degrees."""
    if max_degrees == 0:
        return image, label
    return rotate(image, label, _uniform(seed, -max_degrees, max_degrees))


def random_crop(image, label, seed, max_fraction: float = 0.2, size=None):
    """Crops away up to `max_fraction` of each side's length at a random place, resizes back.

    Acts as a zoom in of 1x to 1 / (1 - max_fraction)x. Back to the image's own size, or to
    `size` (then the frame is resampled once, from the image's pixels, to that size).
    """
    if max_fraction == 0 and size is None:
        return image, label
    fraction_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    frame = tf.shape(image)[:2]
    keep = 1.0 - _uniform(fraction_seed, 0.0, max_fraction)
    crop = tf.maximum(tf.cast(tf.round(tf.cast(frame, tf.float32) * keep), tf.int32), 1)
    slack = frame - crop
    # maxval is exclusive; + 1 lets the window touch the far edge.
    offset_y = tf.random.stateless_uniform([], y_seed, 0, slack[0] + 1, dtype=tf.int32)
    offset_x = tf.random.stateless_uniform([], x_seed, 0, slack[1] + 1, dtype=tf.int32)
    return crop_and_resize(image, label, tf.stack([offset_y, offset_x]), crop, size)


def random_scale_crop(image, label, seed, crop_size, scale_range=(0.5, 2.0), frame_size=None):
    """`scale_and_crop` with the scale drawn in `scale_range` and the window anywhere.

    The window's place is drawn uniformly among the places it fits in the image (in the
    image's pixels: the same distribution as a crop drawn anywhere in the scaled frame).

    Returns tensors of exactly `crop_size` (static), whatever the frame's size.
    """
    scale_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    low, high = scale_range
    scale = _uniform(scale_seed, low, high) if low != high else tf.constant(float(low))
    size = tf.shape(image)[:2]
    window, _ = scaled_window(size, scale, crop_size, frame_size)
    slack = size - window
    # maxval is exclusive; + 1 lets the window touch the far edge.
    offset_y = tf.random.stateless_uniform([], y_seed, 0, slack[0] + 1, dtype=tf.int32)
    offset_x = tf.random.stateless_uniform([], x_seed, 0, slack[1] + 1, dtype=tf.int32)
    channels = image.shape[-1]
    image, label = scale_and_crop(image, label, scale, crop_size, tf.stack([offset_y, offset_x]),
                                  frame_size)
    return tf.ensure_shape(image, [*crop_size, channels]), tf.ensure_shape(label, list(crop_size))


def random_blur(image, seed, probability: float = 0.3, max_sigma: float = 1.5):
    """Blurs the image (never the mask) with `probability`, sigma drawn in (0, max_sigma]."""
    if probability == 0 or max_sigma == 0:
        return image
    do_seed, sigma_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    do = _uniform(do_seed, 0.0, 1.0) < probability
    sigma = _uniform(sigma_seed, 0.1, max_sigma)
    return tf.cond(do, lambda: gaussian_blur(image, sigma), lambda: tf.cast(image, tf.float32))


def random_brightness_contrast(image, seed, max_delta: float = 0.2,
                               contrast_range: tuple[float, float] = (0.8, 1.2)):
    """Shifts brightness and scales contrast of the image; the result stays in [0, 1]."""
    brightness_seed, contrast_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.cast(image, tf.float32)
    if max_delta > 0:
        image = tf.image.stateless_random_brightness(image, max_delta, brightness_seed)
    low, high = contrast_range
    if low != high or low != 1.0:
        image = tf.image.stateless_random_contrast(image, low, high, contrast_seed)
    return tf.clip_by_value(image, 0.0, 1.0)


def _saturation_hue_matrix(saturation, hue_delta) -> tf.Tensor:
    """The 3x3 colour matrix M (for RGB row vectors: rgb @ M) of a YIQ saturation/hue change.

    RGB -> YIQ, chroma (I, Q) scaled by `saturation` and rotated about the luma axis by
    2 * pi * `hue_delta` (`hue_delta` a fraction of a turn, as in `tf.image.adjust_hue`,
    with the same sign: a positive delta turns red towards yellow), YIQ -> RGB. This is the
    standard linear YIQ hue rotation (tensorflow_addons' `adjust_hsv_in_yiq`, after
    beesbuzz.biz/code/hsv_color_transforms.php), composed into one matrix so the pixels are
    transformed once. Luma (0.299 R + 0.587 G + 0.114 B) is kept.
    """
    angle = 2.0 * math.pi * tf.cast(hue_delta, tf.float32)
    scaled_cos = tf.cast(saturation, tf.float32) * tf.cos(angle)
    scaled_sin = tf.cast(saturation, tf.float32) * tf.sin(angle)
    one, zero = tf.ones_like(scaled_cos), tf.zeros_like(scaled_cos)
    chroma = tf.stack([tf.stack([one, zero, zero]),
                       tf.stack([zero, scaled_cos, -scaled_sin]),
                       tf.stack([zero, scaled_sin, scaled_cos])])
    return (tf.constant(_RGB_TO_YIQ, tf.float32) @ chroma
            @ tf.constant(_YIQ_TO_RGB, tf.float32))


def adjust_saturation_hue(image: tf.Tensor, saturation, hue_delta) -> tf.Tensor:
    """Scales chroma by `saturation` and turns hue by `hue_delta` (of a turn) in YIQ space.

    One 3x3 colour matrix (`_saturation_hue_matrix`) applied to every pixel of an image
    [H, W, 3] in [0, 1]; the result is clipped to [0, 1]. Saturation 1 and delta 0 (or a
    whole turn) change nothing, saturation 0 gives the luma as grey, grey stays grey.
    """
    matrix = _saturation_hue_matrix(saturation, hue_delta)
    image = tf.tensordot(tf.cast(image, tf.float32), matrix, axes=[[2], [0]])
    return tf.clip_by_value(image, 0.0, 1.0)


def random_saturation_hue(image, seed, saturation_range=(0.8, 1.2), max_hue_delta=0.03):
    """Scales saturation and shifts hue (cameras differ in colour rendering).

    The factor is drawn uniformly in `saturation_range` and the hue delta in
    +-`max_hue_delta` (a fraction of the colour circle) with the seeds and ranges of
    `tf.image.stateless_random_saturation` / `stateless_random_hue`, but both are applied as
    one YIQ colour matrix (`adjust_saturation_hue`): one pass over the pixels, about 2-3 ms
    per 256x512 image on CPU against 7-9 ms for the two round trips through HSV.

    It is the YIQ jitter, not HSV's: saturation scales chroma around the luma (which it
    keeps) rather than around max(R, G, B) (which HSV keeps), and a YIQ hue rotation only
    approximates an HSV hue shift (on a smooth image of moderate saturation, a delta of 0.02
    moves HSV hue by 0.023 +- 0.006; the pixels differ from HSV's by about as much as the
    jitter moves them). Grey stays grey. The result is clipped to [0, 1].
    """
    saturation_seed, hue_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.cast(image, tf.float32)
    low, high = saturation_range
    if low == high == 1.0 and max_hue_delta == 0:
        return tf.clip_by_value(image, 0.0, 1.0)
    saturation = _uniform(saturation_seed, low, high) if low != high else tf.constant(float(low))
    hue_delta = _uniform(hue_seed, -max_hue_delta, max_hue_delta)
    return adjust_saturation_hue(image, saturation, hue_delta)


def augment(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor,
            config: AugmentConfig = AugmentConfig(),
            crop_size: tuple[int, int] | None = None,
            frame_size: tuple[int, int] | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Applies the whole set to one example, all draws derived from `seed`.

    Args:
      image: float32 [H, W, 3] in [0, 1], or uint8 as decoded (then only the pixels the crop
        keeps are converted).
      label: integer category mask [H, W] (or a multiple of the image's size: an image
        decoded at a reduced scale, see `resample_window`).
      seed: int32 or int64 [2], e.g. one element of `tf.data.Dataset.random(s).batch(2)`.
      config: strengths of each op.
      crop_size: (h, w): random scale in `config.scale_range`, then a random window of this
        size (frames smaller than it padded with void), so frames of any size batch together.
        None: the seed's zoom-in (`max_crop_fraction`), keeping the frame's size.
      frame_size: (h, w) the frame is seen at (`training.data`'s image_size), for a frame
        that comes at another size (as decoded): the geometry is drawn on that frame and the
        pixels resampled once from the decoded ones, rather than resizing the whole frame
        first and resampling again. None: the image's own size.

    Returns:
      (image float32 [h, w, 3] in [0, 1], label [h, w] of the input dtype): `crop_size`, or
      `frame_size`, or the input's H and W.
    """
    seed = tf.cast(seed, tf.int64)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    image = tf.ensure_shape(image, [None, None, 3])  # decode_* leave the channels unknown
    if crop_size is not None:
        image, label = random_scale_crop(image, label, seeds[0], tuple(crop_size),
                                         config.scale_range, frame_size)
    else:
        size = list(frame_size or image.shape[:2])
        image, label = random_crop(image, label, seeds[0], config.max_crop_fraction, frame_size)
        image, label = tf.ensure_shape(image, [*size, 3]), tf.ensure_shape(label, size)
    image_shape, label_shape = image.shape, label.shape
    # A uint8 frame left whole (no zoom-in) is converted here; a crop converts its window.
    image = ops.normalize_image(image) if image.dtype == tf.uint8 else tf.cast(image, tf.float32)
    image, label = random_rotation(image, label, seeds[1], config.max_rotation_degrees)
    image, label = random_flip(image, label, seeds[2], config.flip_probability)
    image = random_blur(image, seeds[3], config.blur_probability, config.max_blur_sigma)
    image = random_brightness_contrast(image, seeds[4], config.max_brightness_delta,
                                       config.contrast_range)
    image = random_saturation_hue(image, seeds[5], config.saturation_range, config.max_hue_delta)
    # tf.cond and slicing lose the static sizes; every op keeps them, so restore them (batching
    # with drop_remainder then gives fully static shapes).
    return tf.ensure_shape(image, image_shape), tf.ensure_shape(label, label_shape)
