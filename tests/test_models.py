"""training.models: every builder's output contract, widths, registry, save/load, distribute."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from cityseg import vocabulary as V
from training import models

# Tiny widths keep every test fast; the architecture is the same at any width.
TINY = {"unet": 4, "pspnet": 4, "fcn8": 2, "fastscnn": 8, "fastscnn_s4": 8}
SIZES = [(64, 128), (96, 160)]


@pytest.fixture(scope="module")
def tiny_models():
    return {name: models.build_model(name, width=width) for name, width in TINY.items()}


@pytest.mark.parametrize("name", list(TINY))
def test_logits_at_input_resolution_for_two_sizes(tiny_models, name):
    model = tiny_models[name]
    rng = np.random.default_rng(0)
    for height, width in SIZES:
        assert height % models.model_stride(name) == 0 and width % models.model_stride(name) == 0
        images = rng.random((2, height, width, 3)).astype("float32")
        logits = model(images, training=False).numpy()
        assert logits.shape == (2, height, width, V.NUM_CATEGORIES)
        assert logits.dtype == np.float32
        # Logits, not probabilities: per-pixel class scores do not sum to 1.
        assert not np.allclose(logits.sum(-1), 1.0, atol=1e-3)
    assert model.layers[-1].name == "logits"
    assert not any(isinstance(layer, keras.layers.Softmax) for layer in model.layers)


@pytest.mark.parametrize("name", list(TINY))
def test_width_scales_the_parameter_count(name):
    small = models.build_model(name, width=TINY[name]).count_params()
    large = models.build_model(name, width=2 * TINY[name]).count_params()
    assert large > 2 * small


@pytest.mark.parametrize("name", ["unet", "pspnet", "fastscnn"])
def test_float32_logits_under_mixed_precision(name):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build_model(name, width=TINY[name])
        logits = model(np.zeros((1, 64, 64, 3), "float32"))
        assert model.layers[1].compute_dtype == "float16"
        assert logits.dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_registry_errors_and_strides():
    known = r"\(choose from unet, pspnet, fcn8, fastscnn, fastscnn_s4\)"
    with pytest.raises(ValueError, match=r"unknown model 'segformer' " + known):
        models.build_model("segformer")
    with pytest.raises(ValueError, match="unknown model"):
        models.model_stride("segformer")
    assert {n: models.model_stride(n) for n in models.MODEL_BUILDERS} == {
        "unet": 16, "pspnet": 8, "fcn8": 32, "fastscnn": 32, "fastscnn_s4": 32}
    assert models.DEFAULT_MODEL in models.MODEL_BUILDERS
    with pytest.raises(ValueError, match="width"):
        models.build_unet(width=-1)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        models.build_pspnet(width=4, weights="/nonexistent/weights.weights.h5")


def test_fastscnn_s4_is_fastscnn_plus_a_stride_4_classifier():
    """The paper's network stays as the paper builds it; the variant only adds the detail head."""
    paper = {layer.name for layer in models.build_model("fastscnn", width=8).layers}
    variant = models.build_model("fastscnn_s4", width=8)
    extra = {layer.name for layer in variant.layers} - paper
    assert paper <= {layer.name for layer in variant.layers}
    assert extra and all(name.startswith("detail_") for name in extra)
    # The classifier reads stride 4: the layer before the final resize is at H/4 x W/4.
    assert tuple(variant.get_layer("classifier").output.shape[1:3]) == (None, None)
    probe = keras.Model(variant.input, variant.get_layer("classifier").output)
    assert probe(np.zeros((1, 64, 96, 3), "float32")).shape == (1, 16, 24, V.NUM_CATEGORIES)
    paper_probe = models.build_model("fastscnn", width=8)
    paper_probe = keras.Model(paper_probe.input, paper_probe.get_layer("classifier").output)
    assert paper_probe(np.zeros((1, 64, 96, 3), "float32")).shape == (1, 8, 12, V.NUM_CATEGORIES)


def test_fixed_input_shape_gives_static_output_shape():
    model = models.build_pspnet(width=4, input_shape=(64, 96, 3))
    assert tuple(model.output_shape) == (None, 64, 96, V.NUM_CATEGORIES)


def test_adaptive_pooling_matches_numpy_and_has_gradients():
    x = np.random.default_rng(1).random((2, 7, 10, 3)).astype("float32")
    layer = models.AdaptiveAveragePooling2D(3)
    out = layer(x).numpy()

    def spans(n, bins):  # PyTorch's AdaptiveAvgPool2d cell boundaries
        return [(i * n // bins, -(-(i + 1) * n // bins)) for i in range(bins)]

    expected = np.stack([np.stack([x[:, r0:r1, c0:c1].mean(axis=(1, 2))
                                   for c0, c1 in spans(10, 3)], axis=1)
                         for r0, r1 in spans(7, 3)], axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        loss = tf.reduce_sum(layer(tensor))
    assert float(tf.reduce_sum(tape.gradient(loss, tensor))) == pytest.approx(2 * 3 * 9, rel=1e-4)


@pytest.mark.parametrize("name", list(TINY))
def test_keras_file_round_trip(tiny_models, name, tmp_path):
    model = tiny_models[name]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    images = np.random.default_rng(2).random((1, 64, 96, 3)).astype("float32")
    np.testing.assert_allclose(restored(images).numpy(), model(images).numpy(), atol=1e-5)
    # The same file also seeds a fresh builder through `weights=`.
    rebuilt = models.build_model(name, width=TINY[name], weights=str(path))
    np.testing.assert_allclose(rebuilt(images).numpy(), model(images).numpy(), atol=1e-5)


@pytest.mark.slow
def test_one_training_step_under_a_distribution_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = models.build_model("pspnet", width=4)
        model.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(3)
    images = rng.random((4, 64, 64, 3)).astype("float32")
    labels = rng.integers(0, V.NUM_CATEGORIES, (4, 64, 64)).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.slow
def test_fcn8_default_is_the_true_vgg16_fcn8s():
    model = models.build_fcn8()
    encoder = sum(layer.count_params() for layer in model.layers if layer.name.startswith("block"))
    assert encoder == 14_714_688  # keras.applications.VGG16(include_top=False)
    logits = model(np.zeros((1, 32, 64, 3), "float32"))
    assert logits.shape == (1, 32, 64, V.NUM_CATEGORIES)


@pytest.mark.slow
def test_fcn8_imports_imagenet_vgg16_weights_from_a_local_no_top_file(tmp_path):
    """The ImageNet import path with a locally saved file: no download, exactly its weights."""
    keras.utils.set_random_seed(1)
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    path = tmp_path / "vgg16_notop.h5"  # keras.applications' legacy format, as published
    vgg.save(path)

    model = models.build_model("fcn8", weights=str(path))
    convs = [layer for layer in vgg.layers if layer.weights]
    assert len(convs) == 13
    for layer in convs:
        kernel, bias = layer.get_weights()
        ours_kernel, ours_bias = model.get_layer(layer.name).get_weights()
        if layer.name == "block1_conv1":
            kernel = kernel[:, :, ::-1, :]  # VGG's BGR input channels, folded into our RGB
        np.testing.assert_array_equal(ours_kernel, kernel)
        np.testing.assert_array_equal(ours_bias, bias)
    # The input normalisation VGG's ImageNet filters expect comes with the weights.
    assert model.get_layer("vgg_preprocess") is not None
    with pytest.raises(ValueError, match="width 64"):
        models.build_model("fcn8", width=16, weights=str(path))


@pytest.mark.parametrize("name", ["fastscnn", "fastscnn_s4", "pspnet"])
def test_aux_heads_add_their_losses_and_leave_the_inference_model_alone(name):
    """The papers' auxiliary losses: weight 0.4, trained, and absent from the exported model."""
    import numpy as np

    from training import losses

    inference = models.build_model(name, width=8)
    loss = losses.make_loss("ce", ignore_class=V.VOID)
    trained = models.with_aux_heads(inference, name, loss)
    assert len(trained.trainable_weights) > len(inference.trainable_weights)
    # Shared layers: training the one trains the other.
    assert all(any(w is t for t in trained.weights) for w in inference.weights)
    images = np.random.default_rng(0).random((2, 64, 96, 3)).astype("float32")
    labels = np.random.default_rng(1).integers(1, V.NUM_CATEGORIES, (2, 64, 96)).astype("int32")
    logits = trained([images, labels], training=True)
    assert tuple(logits.shape) == (2, 64, 96, V.NUM_CATEGORIES)
    assert len(trained.losses) == len(models.AUX_HEAD_INPUTS[name])
    for aux_loss in trained.losses:
        # 0.4 x cross-entropy of near-uniform logits: about 0.4 ln 8.
        assert 0.2 < float(aux_loss) < 2.0
    assert inference.output.shape[-1] == V.NUM_CATEGORIES


def test_models_without_aux_heads():
    from training import losses

    for name in ("unet", "fcn8"):
        assert models.with_aux_heads(models.build_model(name, width=4), name,
                                     losses.make_loss("ce")) is None
