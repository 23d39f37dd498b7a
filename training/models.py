"""Keras 3 segmentation models: U-Net, PSPNet, FCN-8s, Fast-SCNN and fastscnn_s4.

`fastscnn_s4` (the default) is Fast-SCNN with its classifier at stride 4 instead of 8
(`build_fastscnn(detail=True)`). Every registered builder is called the same way,

    build_<name>(num_classes=8, *, input_shape=(None, None, 3), width=None, weights=None)

and returns a functional `keras.Model` mapping images float32 [B, H, W, 3] in [0, 1] to LOGITS
[B, H, W, num_classes] at the input resolution. Softmax and argmax live only in the exported
serving graph; losses use `from_logits=True`. The last layer (`logits`) computes in float32 so
the models train under the `mixed_float16` / `mixed_bfloat16` policies.

`width` is the number of filters of the first convolution; every other layer scales with it.
H and W must be divisible by `model_stride(name)`; spatial dims may be None, so one model
trains on crops and serves at full resolution.

The custom layers are registered with `keras.saving.register_keras_serializable`, so `.keras`
checkpoints reload with `keras.saving.load_model` once this module is imported.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import keras
import tensorflow as tf
from keras import layers

from cityseg import ops
from cityseg import vocabulary as V

# Moving statistics follow the batches faster than Keras' default 0.99 (PyTorch's default,
# 0.1 there, is this 0.9): short CPU runs take a few hundred steps, and with 0.99 the
# inference-time statistics still lag the weights, which shows as an erratic val loss.
BN_MOMENTUM = 0.9
PYRAMID_BINS = (1, 2, 3, 6)
DETAIL_FILTERS = 48  # fastscnn_s4's stride-4 classifier
_SERIALIZABLE_PACKAGE = "cityseg"


# --- Custom layers (serialisable, work with None spatial dims) ---------------------------

@keras.saving.register_keras_serializable(package=_SERIALIZABLE_PACKAGE)
class AdaptiveAveragePooling2D(layers.Layer):
    """Average-pools [B, H, W, C] to [B, bins, bins, C] for any H and W (PyTorch-style).

    Output cell i averages input rows floor(i H / bins) .. ceil((i + 1) H / bins) - 1 (and the
    same for columns), so cells overlap by at most one row when `bins` does not divide H. Done
    as two small matrix products, which have gradients (`tf.image.resize(area)` has none) and
    need no static shape.
    """

    def __init__(self, bins: int, **kwargs):
        super().__init__(**kwargs)
        if bins < 1:
            raise ValueError(f"bins must be >= 1, not {bins}")
        self.bins = int(bins)

    @staticmethod
    def _pooling_matrix(length: tf.Tensor, bins: int, dtype) -> tf.Tensor:
        """[bins, length] row-normalised 0/1 matrix selecting each cell's span."""
        i = tf.range(bins, dtype=tf.int32)[:, tf.newaxis]
        j = tf.range(length, dtype=tf.int32)[tf.newaxis, :]
        start = (i * length) // bins
        end = ((i + 1) * length + bins - 1) // bins
        mask = tf.cast(tf.logical_and(j >= start, j < end), tf.float32)
        return tf.cast(mask / tf.reduce_sum(mask, axis=1, keepdims=True), dtype)

    def call(self, inputs):
        shape = tf.shape(inputs)
        rows = self._pooling_matrix(shape[1], self.bins, inputs.dtype)
        cols = self._pooling_matrix(shape[2], self.bins, inputs.dtype)
        x = tf.einsum("ih,bhwc->biwc", rows, inputs)
        return tf.einsum("jw,biwc->bijc", cols, x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.bins, self.bins, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "bins": self.bins}


@keras.saving.register_keras_serializable(package=_SERIALIZABLE_PACKAGE)
class ResizeLike(layers.Layer):
    """Bilinearly resizes `x` to the height and width of `reference`: call([x, reference])."""

    def call(self, inputs):
        x, reference = inputs
        size = tf.shape(reference)[1:3]
        return tf.cast(tf.image.resize(x, size, method="bilinear"), x.dtype)

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


# --- Blocks ------------------------------------------------------------------------------

def conv_bn_relu(x, filters: int, kernel_size: int = 3, *, strides: int = 1,
                 dilation_rate: int = 1, name: str):
    """Conv (no bias: BN follows) -> BatchNorm -> ReLU."""
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                      dilation_rate=dilation_rate, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def double_conv(x, filters: int, *, name: str):
    """The U-Net block: two 3x3 conv-BN-ReLU."""
    x = conv_bn_relu(x, filters, name=f"{name}_a")
    return conv_bn_relu(x, filters, name=f"{name}_b")


def pyramid_pooling(x, filters: int, *, bins=PYRAMID_BINS, name: str):
    """PSPNet's pyramid pooling module: pool to each bin grid, 1x1 conv, upsample, concat."""
    branches = [x]
    for b in bins:
        y = AdaptiveAveragePooling2D(b, name=f"{name}_pool{b}")(x)
        y = conv_bn_relu(y, filters, 1, name=f"{name}_bin{b}")
        branches.append(ResizeLike(name=f"{name}_up{b}")([y, x]))
    return layers.Concatenate(name=f"{name}_concat")(branches)


def separable_conv_bn_relu(x, filters: int, *, strides: int = 1, name: str):
    """Fast-SCNN's DSConv: dw 3x3 -> BN -> ReLU -> pw 1x1 -> BN -> ReLU.

    As the paper's reference implementation builds it: batch norm and ReLU after BOTH the
    depthwise and the pointwise convolution (Keras' SeparableConv2D has neither in between).
    """
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                               name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def inverted_residual(x, filters: int, *, strides: int = 1, expansion: int = 6, name: str):
    """MobileNetV2 bottleneck: 1x1 expand -> dw 3x3 -> 1x1 project (+ skip when shapes match)."""
    in_channels = x.shape[-1]
    y = conv_bn_relu(x, in_channels * expansion, 1, name=f"{name}_expand")
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                               name=f"{name}_dw")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(name=f"{name}_dw_relu")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_project_bn")(y)
    if strides == 1 and in_channels == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def logits_head(x, num_classes: int, *, reference=None, name: str = "classifier"):
    """1x1 conv to class scores, bilinear resize to `reference`'s size, float32 output.

    Resizing to a reference tensor (not UpSampling2D by a factor) keeps the graph valid when
    height and width are unknown, as they are inside the exported serving function.
    """
    x = layers.Conv2D(num_classes, 1, name=name)(x)
    if reference is not None:
        x = ResizeLike(name=f"{name}_up")([x, reference])
    # float32 so softmax/loss are stable under a mixed-precision policy.
    return layers.Activation("linear", dtype="float32", name="logits")(x)


def _scaled(width: int, multiple: float) -> int:
    return max(1, int(round(width * multiple)))


def _check(num_classes: int, width: int, input_shape) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, not {num_classes}")
    if width < 1:
        raise ValueError(f"width must be >= 1, not {width}")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), not {tuple(input_shape)}")


# --- Builders ----------------------------------------------------------------------------

def build_unet(num_classes: int = V.NUM_CATEGORIES, *, input_shape=(None, None, 3),
               width: int | None = None, weights: str | None = None) -> keras.Model:
    """The seed's U-Net: 4 down levels of double conv + max pool, transpose-conv decoder.

    Args:
      num_classes: output channels (8 categories).
      input_shape: (H, W, 3); H and W None or divisible by 16.
      width: filters of the first block (the seed used 64, i.e. 64..1024); default 16.
      weights: path of a weights file saved from this architecture (`model.save_weights`).
    """
    width = width or 16
    _check(num_classes, width, input_shape)
    inputs = keras.Input(input_shape, name=V.INPUT_KEY)
    x, skips = inputs, []
    for level in range(4):
        x = double_conv(x, width * 2 ** level, name=f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = double_conv(x, width * 16, name="bottleneck")
    for level in reversed(range(4)):
        filters = width * 2 ** level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same",
                                   name=f"up{level}_transpose")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = double_conv(x, filters, name=f"up{level}")
    model = keras.Model(inputs, logits_head(x, num_classes), name="unet")
    return _load_weights(model, weights)


def build_pspnet(num_classes: int = V.NUM_CATEGORIES, *, input_shape=(None, None, 3),
                 width: int | None = None, weights: str | None = None) -> keras.Model:
    """PSPNet: a small dilated conv backbone (stride 8) + pyramid pooling (bins 1, 2, 3, 6).

    The backbone is three stride-2 conv stages followed by dilated conv stages (rates 2 and 4)
    that widen the receptive field without further downsampling, as in PSPNet's dilated
    ResNet, at a fraction of its cost.

    Args:
      num_classes: output channels (8 categories).
      input_shape: (H, W, 3); H and W None or divisible by 8 (any such size works).
      width: filters of the stem; default 32 (the deepest stage has 8x).
      weights: path of a weights file saved from this architecture.
    """
    width = width or 32
    _check(num_classes, width, input_shape)
    inputs = keras.Input(input_shape, name=V.INPUT_KEY)
    x = conv_bn_relu(inputs, width, strides=2, name="stem1")
    x = conv_bn_relu(x, width, name="stem2")
    x = conv_bn_relu(x, width * 2, strides=2, name="stage2a")
    x = conv_bn_relu(x, width * 2, name="stage2b")
    x = conv_bn_relu(x, width * 4, strides=2, name="stage3a")
    x = conv_bn_relu(x, width * 4, name="stage3b")
    for i, rate in enumerate((2, 2, 4, 4)):
        y = conv_bn_relu(x, width * 8 if i == 0 else x.shape[-1], dilation_rate=rate,
                         name=f"dilated{i}")
        x = y if i == 0 else layers.Add(name=f"dilated{i}_add")([x, y])
    x = pyramid_pooling(x, width * 2, name="ppm")
    x = conv_bn_relu(x, width * 4, name="fuse")
    x = layers.Dropout(0.1, name="fuse_dropout")(x)
    model = keras.Model(inputs, logits_head(x, num_classes, reference=inputs), name="pspnet")
    return _load_weights(model, weights)


def build_fcn8(num_classes: int = V.NUM_CATEGORIES, *, input_shape=(None, None, 3),
               width: int | None = None, weights: str | None = None) -> keras.Model:
    """FCN-8s on a VGG16 encoder: score pool3, pool4 and conv7, fuse with x2, x2, x8 upsampling.

    The VGG16 is built here with the layer names of `keras.applications.VGG16`, so that width
    can scale it: width 64 (default) is the true VGG16 with the paper's 4096-filter conv6/conv7
    (about 134 M parameters); width 16 gives a 1/16-cost variant.

    Args:
      num_classes: output channels (8 categories).
      input_shape: (H, W, 3); H and W None or divisible by 32.
      width: filters of VGG's first block; default 64 (true VGG16).
      weights: None (random init), a `.keras`/`.weights.h5` file saved from this architecture,
        or a local `keras.applications.VGG16` no-top ImageNet file
        (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`; needs width 64). Never downloads.
        ImageNet weights also add VGG's input normalisation (see `_vgg16_imagenet`).
    """
    width = width or 64
    _check(num_classes, width, input_shape)
    imagenet = weights is not None and _is_vgg_notop_file(weights)
    if imagenet and width != 64:
        raise ValueError(f"ImageNet VGG16 weights need width 64, not {width}")
    inputs = keras.Input(input_shape, name=V.INPUT_KEY)
    x = inputs
    if imagenet:
        # VGG's ImageNet filters expect 0..255 pixels minus the ImageNet mean; the channel
        # order (BGR) is folded into the first kernel when the weights are copied.
        x = layers.Normalization(mean=[123.68 / 255, 116.779 / 255, 103.939 / 255],
                                 variance=[(1 / 255) ** 2] * 3, name="vgg_preprocess")(x)
    pools = []
    for block, (convs, multiple) in enumerate(((2, 1), (2, 2), (3, 4), (3, 8), (3, 8)), 1):
        for i in range(1, convs + 1):
            x = layers.Conv2D(width * multiple, 3, padding="same", activation="relu",
                              name=f"block{block}_conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        pools.append(x)
    pool3, pool4 = pools[2], pools[3]
    fc = width * 64
    x = layers.Conv2D(fc, 7, padding="same", activation="relu", name="fc6")(x)
    x = layers.Dropout(0.5, name="fc6_dropout")(x)
    x = layers.Conv2D(fc, 1, activation="relu", name="fc7")(x)
    x = layers.Dropout(0.5, name="fc7_dropout")(x)
    score = layers.Conv2D(num_classes, 1, name="score_fr")(x)
    score = layers.Conv2DTranspose(num_classes, 4, strides=2, padding="same", use_bias=False,
                                   name="upscore2")(score)
    score = layers.Add(name="fuse_pool4")(
        [score, layers.Conv2D(num_classes, 1, name="score_pool4")(pool4)])
    score = layers.Conv2DTranspose(num_classes, 4, strides=2, padding="same", use_bias=False,
                                   name="upscore_pool4")(score)
    score = layers.Add(name="fuse_pool3")(
        [score, layers.Conv2D(num_classes, 1, name="score_pool3")(pool3)])
    score = layers.Conv2DTranspose(num_classes, 16, strides=8, padding="same", use_bias=False,
                                   name="upscore8")(score)
    outputs = layers.Activation("linear", dtype="float32", name="logits")(score)
    model = keras.Model(inputs, outputs, name="fcn8")
    if imagenet:
        return _vgg16_imagenet(model, weights)
    return _load_weights(model, weights)


def build_fastscnn(num_classes: int = V.NUM_CATEGORIES, *, input_shape=(None, None, 3),
                   width: int | None = None, weights: str | None = None,
                   detail: bool = False) -> keras.Model:
    """Fast-SCNN (Poudel et al. 2019), the real-time model: ~1.1 M parameters at width 32.

    Learning to downsample (conv + 2 DSConv, stride 8) -> global feature extractor (inverted
    residual bottlenecks to stride 32 + pyramid pooling) -> feature fusion (upsampled global
    features + 1x1 projected stride-8 features) -> classifier (2 DSConv + 1x1), upsampled x8.

    Args:
      num_classes: output channels (8 categories).
      input_shape: (H, W, 3); H and W None or divisible by 32.
      width: filters of the first conv; default 32 as in the paper (the rest scale).
      weights: path of a weights file saved from this architecture.
      detail: `fastscnn_s4`, not in the paper: the classifier's features, reduced to
        DETAIL_FILTERS channels (1x1 conv) and upsampled to stride 4, meet the first
        downsampling's stride-4 features (1x1 projected, added), and one more DSConv works
        there before the 1x1 to class scores; upsampled x4. For thin objects (poles, signs),
        which are narrower than a stride-8 cell at CamVid's 360x480.
    """
    width = width or 32
    _check(num_classes, width, input_shape)
    s = width / 32.0
    inputs = keras.Input(input_shape, name=V.INPUT_KEY)
    # Learning to downsample.
    x = conv_bn_relu(inputs, _scaled(32, s), strides=2, name="ltd_conv")
    stride4 = separable_conv_bn_relu(x, _scaled(48, s), strides=2, name="ltd_ds1")
    high_res = separable_conv_bn_relu(stride4, _scaled(64, s), strides=2, name="ltd_ds2")
    # Global feature extractor.
    x = high_res
    for stage, (filters, strides) in enumerate(((64, 2), (96, 2), (128, 1))):
        for i in range(3):
            x = inverted_residual(x, _scaled(filters, s), strides=strides if i == 0 else 1,
                                  name=f"gfe{stage}_{i}")
    x = pyramid_pooling(x, _scaled(32, s), name="gfe_ppm")
    x = conv_bn_relu(x, _scaled(128, s), 1, name="gfe_ppm_project")
    # Feature fusion: global (stride 32) upsampled to stride 8, meets the high-res branch.
    fused = _scaled(128, s)
    low = ResizeLike(name="ffm_up")([x, high_res])
    low = layers.DepthwiseConv2D(3, padding="same", dilation_rate=4, use_bias=False,
                                 name="ffm_dw")(low)
    low = layers.BatchNormalization(momentum=BN_MOMENTUM, name="ffm_dw_bn")(low)
    low = layers.ReLU(name="ffm_dw_relu")(low)
    low = layers.Conv2D(fused, 1, use_bias=False, name="ffm_low_project")(low)
    low = layers.BatchNormalization(momentum=BN_MOMENTUM, name="ffm_low_bn")(low)
    high = layers.Conv2D(fused, 1, use_bias=False, name="ffm_high_project")(high_res)
    high = layers.BatchNormalization(momentum=BN_MOMENTUM, name="ffm_high_bn")(high)
    x = layers.ReLU(name="ffm_relu")(layers.Add(name="ffm_add")([low, high]))
    # Classifier.
    x = separable_conv_bn_relu(x, fused, name="cls_ds1")
    x = separable_conv_bn_relu(x, fused, name="cls_ds2")
    if detail:
        filters = _scaled(DETAIL_FILTERS, s)
        x = conv_bn_relu(x, filters, 1, name="detail_context")
        x = ResizeLike(name="detail_up")([x, stride4])
        fine = layers.Conv2D(filters, 1, use_bias=False, name="detail_project")(stride4)
        fine = layers.BatchNormalization(momentum=BN_MOMENTUM, name="detail_project_bn")(fine)
        x = layers.ReLU(name="detail_relu")(layers.Add(name="detail_add")([x, fine]))
        x = separable_conv_bn_relu(x, filters, name="detail_ds")
    x = layers.Dropout(0.1, name="cls_dropout")(x)
    model = keras.Model(inputs, logits_head(x, num_classes, reference=inputs),
                        name="fastscnn_s4" if detail else "fastscnn")
    return _load_weights(model, weights)


# --- Weights -----------------------------------------------------------------------------

def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a saved `.keras` model for inference (no optimizer state, no compile).

    This module registers the custom layers that such files name, so loading through it never
    depends on which modules a caller happened to import first.
    """
    return keras.saving.load_model(path, compile=False)


def _load_weights(model: keras.Model, weights: str | os.PathLike | None) -> keras.Model:
    """Loads weights saved from the same architecture; never downloads anything."""
    if weights is None:
        return model
    from training import storage

    path = os.fspath(weights)  # local, or a gs:// / s3:// URL: Keras reads both
    if not storage.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".keras"):
        saved = load_model(path)
        model.set_weights(saved.get_weights())
    else:
        model.load_weights(path)
    return model


def _is_vgg_notop_file(weights: str | os.PathLike) -> bool:
    """True for a legacy `.h5` file (keras.applications' format), not a `.weights.h5`/.keras."""
    name = Path(weights).name
    return name.endswith(".h5") and not name.endswith(".weights.h5")


def _vgg16_imagenet(model: keras.Model, weights: str | os.PathLike) -> keras.Model:
    """Copies ImageNet VGG16 (no top) weights from a local file into the encoder of `model`."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    vgg = keras.applications.VGG16(include_top=False, weights=str(path),
                                   input_shape=(None, None, 3))
    for layer in vgg.layers:
        if not layer.weights:
            continue
        kernel, bias = layer.get_weights()
        if layer.name == "block1_conv1":
            kernel = kernel[:, :, ::-1, :]  # VGG's BGR input order -> our RGB
        model.get_layer(layer.name).set_weights([kernel, bias])
    return model


# --- Registry ----------------------------------------------------------------------------

MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "unet": build_unet,
    "pspnet": build_pspnet,
    "fcn8": build_fcn8,
    "fastscnn": build_fastscnn,
    "fastscnn_s4": functools.partial(build_fastscnn, detail=True),
}
# Input H and W must be multiples of this (the deepest downsampling of each model).
MODEL_STRIDES: dict[str, int] = {"unet": 16, "pspnet": 8, "fcn8": 32, "fastscnn": 32}
# Variants of a registered network: what is not the builder's (stride, auxiliary heads) is the
# base network's.
VARIANT_OF = {"fastscnn_s4": "fastscnn"}
MODEL_STRIDES.update({variant: MODEL_STRIDES[base] for variant, base in VARIANT_OF.items()})
# The default is the best real-photo mean IoU among the models whose export answers a
# 2048x1024 frame in real time (docs/benchmarks/real_photos.md, realtime.md): Fast-SCNN with
# the stride-4 classifier, 0.729 against the paper's 0.716 on CamVid val in 20 minutes, 3.2x
# decode_png against 3.0x. The seed's models are several times slower on this CPU and, for
# the same training minutes, see several times fewer images (model_comparison_real.md).
DEFAULT_MODEL = "fastscnn_s4"


# Auxiliary heads the papers train with (weight 0.4 each), by the layer whose output they read:
# Fast-SCNN (Poudel et al. 2019, sec. 4.1) at the end of learning-to-downsample and of the
# global feature extractor; PSPNet (Zhao et al. 2017, sec. 3.3) part-way through the dilated
# backbone (their res4b22). Training only: the exported and evaluated model is the main head.
AUX_HEAD_INPUTS: dict[str, tuple[str, ...]] = {
    "fastscnn": ("ltd_ds2_relu", "gfe_ppm_project_relu"),
    "pspnet": ("dilated1_add",),
}
AUX_HEAD_INPUTS.update({variant: AUX_HEAD_INPUTS[base] for variant, base in VARIANT_OF.items()
                        if base in AUX_HEAD_INPUTS})
AUX_LOSS_WEIGHT = 0.4


def aux_head(x, num_classes: int, filters: int, *, name: str):
    """conv 3x3 -> BN -> ReLU -> dropout 0.1 -> 1x1 to class scores, at x's resolution."""
    x = conv_bn_relu(x, filters, name=f"{name}_conv")
    x = layers.Dropout(0.1, name=f"{name}_dropout")(x)
    x = layers.Conv2D(num_classes, 1, name=f"{name}_classifier")(x)
    return layers.Activation("linear", dtype="float32", name=f"{name}_logits")(x)


@keras.saving.register_keras_serializable(package=_SERIALIZABLE_PACKAGE)
class AuxiliaryLoss(layers.Layer):
    """Adds `weight * loss(labels, aux_logits)` to the model's losses; passes `main` through.

    call([main, aux_logits, labels]). The labels are brought to the auxiliary head's own
    resolution (nearest neighbour) instead of the logits to the frame's: the papers' weight
    and head, at a fraction of the cost (upsampling two extra heads to full resolution and
    back-propagating through the resize doubled a Fast-SCNN training step on this CPU).
    """

    def __init__(self, loss=None, weight: float = AUX_LOSS_WEIGHT, **kwargs):
        super().__init__(**kwargs)
        self.loss_fn = loss
        self.weight = float(weight)

    def call(self, inputs):
        main, aux_logits, labels = inputs
        if self.loss_fn is not None:
            labels = tf.cast(labels, tf.int32)
            small = ops.resize_label(labels, tf.shape(aux_logits)[1:3])
            self.add_loss(self.weight * self.loss_fn(small, aux_logits))
        return main

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


def with_aux_heads(model: keras.Model, name: str, loss) -> keras.Model:
    """The training model: inputs [images, labels], output `model`'s logits, aux losses added.

    Each auxiliary head (AUX_HEAD_INPUTS) reads a layer of `model` and adds
    `AUX_LOSS_WEIGHT * loss` against the labels to the training loss (`AuxiliaryLoss`); the
    layers are shared with `model`, which stays the inference model (main head only). The
    data must then be ((images, labels), labels). Returns None for models without
    auxiliary heads (unet, fcn8).
    """
    inputs = AUX_HEAD_INPUTS.get(_check_name(name), ())
    if not inputs:
        return None
    num_classes = model.output.shape[-1]
    labels = keras.Input((None, None), dtype="int32", name="labels")
    out = model.output
    for i, layer_name in enumerate(inputs):
        features = model.get_layer(layer_name).output
        logits = aux_head(features, num_classes, max(32, features.shape[-1] // 4),
                          name=f"aux{i + 1}")
        out = AuxiliaryLoss(loss, name=f"aux{i + 1}_loss")([out, logits, labels])
    return keras.Model([model.input, labels], out, name=f"{model.name}_train")


def _check_name(name: str) -> str:
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODEL_BUILDERS)})")
    return name


def build_model(name: str, **kwargs) -> keras.Model:
    """Builds the model registered as `name` (see MODEL_BUILDERS) with the builder's kwargs.

    Raises:
      ValueError: for an unknown name or impossible arguments.
    """
    return MODEL_BUILDERS[_check_name(name)](**kwargs)


def model_stride(name: str) -> int:
    """The factor input height and width must be divisible by for model `name`."""
    return MODEL_STRIDES[_check_name(name)]
