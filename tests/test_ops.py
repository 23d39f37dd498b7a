"""cityseg.ops: padding to the stride and the working size, at odd sizes and 1x1 borders."""
import numpy as np
import pytest
import tensorflow as tf

from cityseg import ops
from cityseg import vocabulary as V


@pytest.mark.parametrize("size,multiple,expected", [
    ((375, 1242), 32, (384, 1248)), ((360, 480), 32, (384, 480)), ((360, 480), 8, (360, 480)),
    ((1, 1), 32, (32, 32)), ((1080, 1920), 16, (1088, 1920)), ((33, 31), 1, (33, 31)),
])
def test_pad_to_multiple_pads_bottom_right_with_grey_and_void(size, multiple, expected):
    h, w = size
    image = tf.random.uniform((h, w, 3))
    label = tf.fill((h, w), tf.constant(3, tf.uint8))
    padded, padded_label = ops.pad_to_multiple(image, label, multiple)
    assert tuple(padded.shape[:2]) == expected == tuple(padded_label.shape)
    # The picture keeps its coordinates; only new pixels are grey / void.
    np.testing.assert_array_equal(padded[:h, :w].numpy(), image.numpy())
    assert (padded_label[:h, :w].numpy() == 3).all()
    assert (padded.numpy()[h:] == ops.PAD_IMAGE_VALUE).all()
    assert (padded.numpy()[:, w:] == ops.PAD_IMAGE_VALUE).all()
    assert (padded_label.numpy()[h:] == V.VOID).all() and (padded_label.numpy()[:, w:] == V.VOID).all()


def test_pad_to_size_never_crops():
    image = tf.zeros((10, 50, 3))
    padded, _ = ops.pad_to_size(image, None, (20, 20))
    assert tuple(padded.shape) == (20, 50, 3)


@pytest.mark.parametrize("size,long_side,expected", [
    ((1024, 2048), 1024, (512, 1024)), ((1080, 1920), 1024, (576, 1024)),
    ((375, 1242), 1024, (309, 1024)), ((360, 480), 1024, (360, 480)),  # never enlarged
    ((1, 1), 1024, (1, 1)), ((1, 5000), 1024, (1, 1024)), ((1024, 2048), None, (1024, 2048)),
])
def test_working_size_keeps_the_aspect_ratio(size, long_side, expected):
    got = tuple(ops.working_size(tf.constant(size[0]), tf.constant(size[1]), long_side).numpy())
    assert got == expected
    if min(expected) > 100:
        assert got[1] / got[0] == pytest.approx(size[1] / size[0], rel=0.01)
