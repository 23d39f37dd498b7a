"""Metrics against hand-computed confusion matrices, and the Keras metric against numpy."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cityseg.vocabulary import CATEGORIES
from training import metrics as M

# A 3x4 scene, categories void 0, flat 1, sky 5, vehicle 7.
TRUTH = np.array([[5, 5, 5, 5],
                  [1, 7, 7, 0],
                  [1, 1, 1, 0]])
PRED = np.array([[5, 5, 5, 1],
                 [1, 7, 1, 0],
                 [1, 1, 7, 5]])
# By hand (rows truth, columns prediction):
#   void:    (0,0)=1, (0,5)=1
#   flat:    (1,1)=3, (1,7)=1
#   sky:     (5,5)=3, (5,1)=1
#   vehicle: (7,7)=1, (7,1)=1


def test_confusion_matrix_by_hand():
    cm = M.confusion_matrix(TRUTH, PRED)
    expected = np.zeros((8, 8), np.int64)
    expected[0, 0] = expected[0, 5] = 1
    expected[1, 1], expected[1, 7] = 3, 1
    expected[5, 5], expected[5, 1] = 3, 1
    expected[7, 7], expected[7, 1] = 1, 1
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)


def test_iou_per_class_by_hand_with_absent_categories():
    iou = M.iou_per_class(M.confusion_matrix(TRUTH, PRED))
    # void: tp 1, truth 2, predicted 1 -> 1 / 2
    # flat: tp 3, truth 4, predicted 3+1+1 -> 3 / (4 + 5 - 3)
    # sky:  tp 3, truth 4, predicted 3+1   -> 3 / 5
    # vehicle: tp 1, truth 2, predicted 2  -> 1 / 3
    assert iou[0] == pytest.approx(1 / 2)
    assert iou[1] == pytest.approx(3 / 6)
    assert iou[5] == pytest.approx(3 / 5)
    assert iou[7] == pytest.approx(1 / 3)
    # construction, object, nature, human: in neither truth nor prediction -> undefined
    assert all(math.isnan(iou[c]) for c in (2, 3, 4, 6))


def test_summarize_two_conventions_by_hand():
    s = M.summarize(M.confusion_matrix(TRUTH, PRED))
    assert s["pixels"] == 12
    assert s["pixel_accuracy"] == pytest.approx(8 / 12)
    # GT void ignored: 10 non-void pixels, 7 right.
    assert s["pixel_accuracy_non_void"] == pytest.approx(7 / 10)
    assert s["mean_iou_8"] == pytest.approx((1 / 2 + 3 / 6 + 3 / 5 + 1 / 3) / 4)
    # Void GT rows dropped: sky loses the false positive at the void pixel (2,3):
    # flat 3 / (4 + 5 - 3), sky 3 / (4 + 3 - 3), vehicle 1 / 3.
    assert s["iou_non_void"]["sky"] == pytest.approx(3 / 4)
    assert s["mean_iou_7"] == pytest.approx((3 / 6 + 3 / 4 + 1 / 3) / 3)
    assert s["iou"]["nature"] is None and s["iou_non_void"]["human"] is None
    assert "void" not in s["iou_non_void"]
    assert list(s["iou"]) == list(CATEGORIES)


def test_non_void_pixel_predicted_void_is_a_miss_in_the_7_convention():
    truth = np.array([1, 1, 1, 1])
    pred = np.array([1, 1, 0, 0])
    s = M.summarize(M.confusion_matrix(truth, pred))
    assert s["iou_non_void"]["flat"] == pytest.approx(0.5)
    assert s["mean_iou_7"] == pytest.approx(0.5)
    # In the 8 convention void is a category predicted but never true: IoU 0 lowers the mean.
    assert s["mean_iou_8"] == pytest.approx(0.25)


def test_all_void_truth_has_no_7_category_mean():
    s = M.summarize(M.confusion_matrix(np.zeros(5, int), np.zeros(5, int)))
    assert s["mean_iou_7"] is None
    assert s["pixel_accuracy_non_void"] is None
    assert s["mean_iou_8"] == 1.0


@pytest.mark.parametrize("truth, pred, message", [
    (np.array([0, 8]), np.array([0, 1]), "ground truth"),
    (np.array([0, 1]), np.array([-1, 1]), "prediction"),
    (np.array([0, 1]), np.array([0, 1, 2]), "shape"),
])
def test_confusion_matrix_rejects_bad_input(truth, pred, message):
    with pytest.raises(ValueError, match=message):
        M.confusion_matrix(truth, pred)


def _random_batch(seed: int, shape=(3, 10, 12)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, shape).astype(np.int32)
    logits = rng.normal(size=shape + (8,)).astype(np.float32)
    # Make predictions mostly right so the IoUs are not all near chance.
    logits += 3.0 * np.eye(8, dtype=np.float32)[labels] * (rng.random(shape) < 0.6)[..., None]
    return labels, logits


@pytest.mark.parametrize("include_void, key", [(False, "mean_iou_7"), (True, "mean_iou_8")])
def test_keras_metric_equals_numpy_eager_over_batches(include_void, key):
    metric = M.MeanIoU(include_void=include_void)
    cm = np.zeros((8, 8), np.int64)
    for seed in range(3):
        labels, logits = _random_batch(seed)
        metric.update_state(labels, logits)
        cm += M.confusion_matrix(labels, logits.argmax(-1))
    expected = M.summarize(cm)[key]
    assert 0.3 < expected < 0.9
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    np.testing.assert_array_equal(metric.total_cm.numpy(), cm)
    metric.reset_state()
    assert float(metric.result()) == 0.0


@pytest.mark.parametrize("jit_compile", [False, True])
def test_keras_metric_equals_numpy_in_model_evaluate(jit_compile):
    labels, logits = _random_batch(11, shape=(6, 8, 8))
    # As in the trainer: any input size, tf.data batches, and (jit_compile) an XLA-compiled
    # step, which has no kernel for a bincount of data-dependent size.
    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[M.MeanIoU(), M.MeanIoU(include_void=True, name="mean_iou_8")],
                  jit_compile=jit_compile)
    dataset = tf.data.Dataset.from_tensor_slices((logits, labels)).batch(4)
    result = model.evaluate(dataset, verbose=0, return_dict=True)
    summary = M.summarize(M.confusion_matrix(labels, logits.argmax(-1)))
    assert result["mean_iou"] == pytest.approx(summary["mean_iou_7"], abs=1e-6)
    assert result["mean_iou_8"] == pytest.approx(summary["mean_iou_8"], abs=1e-6)


def test_keras_metric_under_mixed_precision_and_distribution():
    labels, logits = _random_batch(5)
    expected = M.summarize(M.confusion_matrix(labels, logits.argmax(-1)))["mean_iou_7"]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        metric = M.MeanIoU()
    assert metric.total_cm.aggregation == "sum"
    # float16 logits (mixed precision): the argmax of rounded logits may flip near-ties only.
    strategy.run(metric.update_state, args=(tf.constant(labels), tf.constant(logits, tf.float16)))
    assert float(metric.result()) == pytest.approx(expected, abs=0.02)


def test_keras_metric_skips_out_of_range_labels_and_masked_pixels():
    labels = np.array([[1, 1, 255, 5]])
    logits = np.eye(8, dtype=np.float32)[[1, 5, 5, 5]][None]
    metric = M.MeanIoU()
    metric.update_state(labels, logits, sample_weight=np.array([[1.0, 0.0, 1.0, 1.0]]))
    # Only pixels 0 and 3 count: both right.
    assert metric.total_cm.numpy().sum() == 2
    assert float(metric.result()) == pytest.approx(1.0)


def test_keras_metric_serialises_with_a_model(tmp_path):
    inputs = keras.Input((4, 4, 8))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[M.MeanIoU(include_void=True)])
    labels, logits = _random_batch(3, shape=(2, 4, 4))
    before = model.evaluate(logits, labels, verbose=0, return_dict=True)["mean_iou"]
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    after = restored.evaluate(logits, labels, verbose=0, return_dict=True)["mean_iou"]
    assert after == pytest.approx(before, abs=1e-6)
    config = M.MeanIoU.from_config(M.MeanIoU(include_void=True).get_config()).get_config()
    assert config["include_void"] is True and config["name"] == "mean_iou"
