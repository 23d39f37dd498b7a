"""training.augment: every op eagerly AND inside Dataset.map (big_vision style)."""
import numpy as np
import pytest
import tensorflow as tf

from cityseg import vocabulary as V
from training import augment as A

H, W = 32, 48


def run(mode, fn, *args):
    """Calls fn(*args) eagerly, or as a Dataset.map over a one-element dataset."""
    if mode == "eager":
        out = fn(*args)
    else:
        ds = tf.data.Dataset.from_tensors(tuple(args)).map(fn)
        out = next(iter(ds))
    return tf.nest.map_structure(lambda t: t.numpy(), out)


MODES = pytest.mark.parametrize("mode", ["eager", "dataset"])


@pytest.fixture
def image():
    return tf.constant(np.random.default_rng(0).random((H, W, 3)), tf.float32)


@pytest.fixture
def label():
    # Left half category 1, right half 7, a block of 4 bottom right: left/right asymmetric.
    mask = np.ones((H, W), np.uint8)
    mask[:, W // 2:] = 7
    mask[20:28, 30:40] = 4
    return tf.constant(mask)


@MODES
def test_flip_flips_image_and_label_together(mode, image, label):
    img, lab = run(mode, A.flip_horizontal, image, label)
    np.testing.assert_array_equal(img, image.numpy()[:, ::-1])
    np.testing.assert_array_equal(lab, label.numpy()[:, ::-1])


@MODES
@pytest.mark.parametrize("probability, flipped", [(1.0, True), (0.0, False)])
def test_random_flip_probability(mode, image, label, probability, flipped):
    fn = lambda i, l: A.random_flip(i, l, tf.constant([1, 2]), probability)  # noqa: E731
    img, lab = run(mode, fn, image, label)
    expected = label.numpy()[:, ::-1] if flipped else label.numpy()
    np.testing.assert_array_equal(lab, expected)
    np.testing.assert_array_equal(img, image.numpy()[:, ::-1] if flipped else image.numpy())


@MODES
def test_rotation_fills_label_border_with_void_and_image_with_grey(mode):
    image = tf.ones((H, W, 3), tf.float32)
    label = tf.fill((H, W), tf.constant(3, tf.uint8))
    img, lab = run(mode, lambda i, l: A.rotate(i, l, 25.0), image, label)
    assert img.shape == (H, W, 3) and lab.shape == (H, W) and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0, 3}  # nearest: no value between 0 and 3 invented
    for y, x in [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)]:
        assert lab[y, x] == 0
        np.testing.assert_allclose(img[y, x], A.NEUTRAL_IMAGE_VALUE)
    assert lab[H // 2, W // 2] == 3
    np.testing.assert_allclose(img[H // 2, W // 2], 1.0)


@MODES
def test_rotation_by_90_degrees_is_exact_on_a_square(mode):
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 8, (16, 16)).astype(np.uint8)
    image = tf.constant(rng.random((16, 16, 3)), tf.float32)
    img, lab = run(mode, lambda i, l: A.rotate(i, l, 90.0), image, tf.constant(mask))
    np.testing.assert_array_equal(lab, np.rot90(mask, k=1))
    np.testing.assert_allclose(img, np.rot90(image.numpy(), k=1), atol=1e-5)


@MODES
def test_rotation_by_zero_is_identity(mode, image, label):
    img, lab = run(mode, lambda i, l: A.rotate(i, l, 0.0), image, label)
    np.testing.assert_array_equal(lab, label.numpy())
    np.testing.assert_allclose(img, image.numpy(), atol=1e-5)


@MODES
def test_crop_and_resize_keeps_size_and_uses_nearest_for_labels(mode, image, label):
    # Top-left quadrant is all category 1: zooming into it gives only 1s.
    fn = lambda i, l: A.crop_and_resize(i, l, tf.constant([0, 0]), tf.constant([H // 2, W // 2]))  # noqa: E731,E501
    img, lab = run(mode, fn, image, label)
    assert img.shape == (H, W, 3) and lab.shape == (H, W)
    np.testing.assert_array_equal(lab, np.ones((H, W), np.uint8))
    # The whole frame at offset 0 is the identity.
    fn = lambda i, l: A.crop_and_resize(i, l, tf.constant([0, 0]), tf.constant([H, W]))  # noqa: E731
    img, lab = run(mode, fn, image, label)
    np.testing.assert_array_equal(lab, label.numpy())
    np.testing.assert_allclose(img, image.numpy(), atol=1e-5)


@MODES
def test_random_crop_never_invents_categories(mode, image, label):
    for seed in range(5):
        fn = lambda i, l: A.random_crop(i, l, tf.constant([seed, 7]), 0.2)  # noqa: E731,B023
        img, lab = run(mode, fn, image, label)
        assert lab.shape == (H, W) and img.shape == (H, W, 3)
        assert set(np.unique(lab)) <= {1, 4, 7}


@MODES
def test_gaussian_blur_smooths_and_keeps_constants(mode, image):
    blurred = run(mode, lambda i: A.gaussian_blur(i, 1.5), image)
    assert blurred.shape == (H, W, 3)
    assert blurred.std() < 0.6 * image.numpy().std()
    np.testing.assert_allclose(blurred.mean(), image.numpy().mean(), atol=0.02)
    constant = run(mode, lambda i: A.gaussian_blur(i, 1.5), tf.fill((H, W, 3), 0.3))
    np.testing.assert_allclose(constant, 0.3, atol=1e-5)  # reflected borders: no dark frame


@MODES
def test_brightness_contrast_stays_in_unit_range(mode, image):
    out = run(mode, lambda i: A.random_brightness_contrast(i, tf.constant([3, 4]), 0.5, (0.5, 1.5)),
              image)
    assert out.shape == (H, W, 3) and out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, image.numpy())


@MODES
def test_augment_shapes_dtypes_and_label_values(mode, image, label):
    for seed in range(4):
        fn = lambda i, l: A.augment(i, l, tf.constant([seed, 11], tf.int64))  # noqa: E731,B023
        img, lab = run(mode, fn, image, label)
        assert img.shape == (H, W, 3) and img.dtype == np.float32
        assert lab.shape == (H, W) and lab.dtype == np.uint8
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert set(np.unique(lab)) <= {0, 1, 4, 7}


def test_augment_is_deterministic_for_a_seed_eagerly_and_in_a_dataset(image, label):
    seed = tf.constant([5, 6], tf.int64)
    eager = run("eager", A.augment, image, label, seed)
    again = run("eager", A.augment, image, label, seed)
    in_map = run("dataset", A.augment, image, label, seed)
    other = run("eager", A.augment, image, label, tf.constant([5, 7], tf.int64))
    for a, b in zip(eager, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(eager[0], in_map[0], atol=1e-5)
    np.testing.assert_array_equal(eager[1], in_map[1])
    assert not np.allclose(eager[0], other[0])


@pytest.mark.parametrize("kwargs", [
    {"max_rotation_degrees": -1}, {"max_crop_fraction": 1.0}, {"flip_probability": 2.0},
    {"contrast_range": (1.2, 0.8)}, {"max_blur_sigma": -0.5},
])
def test_impossible_config_raises(kwargs):
    with pytest.raises(ValueError):
        A.AugmentConfig(**kwargs)


@pytest.mark.parametrize("size", [(375, 1242), (360, 480), (1, 1), (7, 300)])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_scale_and_crop_gives_the_crop_at_any_frame_size(size, scale):
    """Frames smaller than the crop are padded with void; no category is ever invented."""
    h, w = size
    rng = np.random.default_rng(0)
    image = tf.constant(rng.random((h, w, 3)), tf.float32)
    label = tf.constant(rng.integers(1, 4, (h, w)), tf.uint8)
    crop = (64, 96)
    out_image, out_label = A.scale_and_crop(image, label, scale, crop, tf.constant([0, 0]))
    assert tuple(out_image.shape) == (*crop, 3) and tuple(out_label.shape) == crop
    scaled = (max(1, round(h * scale)), max(1, round(w * scale)))
    values = set(np.unique(out_label.numpy()))
    assert values <= {0, 1, 2, 3}
    if scaled[0] < crop[0] or scaled[1] < crop[1]:
        # Padding: grey image, void label beyond the scaled frame.
        assert (out_label.numpy()[scaled[0]:] == V.VOID).all()
        assert (out_label.numpy()[:, scaled[1]:] == V.VOID).all()
        assert np.allclose(out_image.numpy()[scaled[0]:], A.NEUTRAL_IMAGE_VALUE)
    else:
        assert V.VOID not in values


def test_scale_and_crop_at_scale_one_is_a_plain_window():
    image = tf.reshape(tf.range(20 * 30 * 3, dtype=tf.float32), (20, 30, 3))
    label = tf.reshape(tf.range(20 * 30) % 7, (20, 30))
    out_image, out_label = A.scale_and_crop(image, label, 1.0, (8, 16), tf.constant([5, 9]))
    np.testing.assert_array_equal(out_image.numpy(), image.numpy()[5:13, 9:25])
    np.testing.assert_array_equal(out_label.numpy(), label.numpy()[5:13, 9:25])


@pytest.mark.parametrize("size", [(375, 1242), (360, 480), (1, 1)])
def test_augment_with_a_crop_size_has_static_crop_shapes(size):
    image = tf.random.uniform((*size, 3))
    label = tf.ones(size, tf.uint8)
    fn = tf.function(lambda i, l, s: A.augment(i, l, s, A.AugmentConfig(), crop_size=(96, 128)))
    out_image, out_label = fn(image, label, tf.constant([1, 2], tf.int64))
    assert tuple(out_image.shape) == (96, 128, 3) and tuple(out_label.shape) == (96, 128)
    assert 0.0 <= float(tf.reduce_min(out_image)) and float(tf.reduce_max(out_image)) <= 1.0
    assert set(np.unique(out_label.numpy())) <= {0, 1}
