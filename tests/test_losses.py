"""Losses on hand-made logits and labels: known values, masking, mixed precision, registry."""
import math

import numpy as np
import pytest
import tensorflow as tf

from cityseg import vocabulary as V
from training import losses

C = V.NUM_CATEGORIES


def _perfect_logits(labels: np.ndarray, margin: float = 30.0) -> np.ndarray:
    return (np.eye(C, dtype=np.float32)[labels] * margin).astype(np.float32)


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, C, size=(2, 4, 6)).astype(np.int32)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_perfect_logits_give_near_zero_loss(name, labels):
    loss = losses.make_loss(name, class_weights=[1.0] * C)
    value = float(loss(labels, _perfect_logits(labels)))
    assert value == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_wrong_logits_give_large_loss(name, labels):
    wrong = _perfect_logits((labels + 1) % C)
    loss = losses.make_loss(name, class_weights=[1.0] * C)
    assert float(loss(labels, wrong)) > 0.5


def test_uniform_logits_give_log_num_classes(labels):
    value = float(losses.make_loss("ce")(labels, np.zeros(labels.shape + (C,), np.float32)))
    assert value == pytest.approx(math.log(C), rel=1e-5)


def test_weighted_ce_matches_hand_computation():
    labels = np.array([[[1, 2], [2, 7]]], dtype=np.int32)  # one 2x2 image
    logits = np.zeros((1, 2, 2, C), np.float32)
    logits[0, 0, 0, 1] = 2.0   # right, confident
    logits[0, 0, 1, 5] = 1.0   # wrong
    logits[0, 1, 0, 2] = 0.5   # right, unsure
    logits[0, 1, 1, 7] = -1.0  # wrong
    weights = [0.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0, 0.5]

    def ce(row):
        z = logits[0][row]
        return -(z[labels[0][row]] - np.log(np.exp(z).sum()))

    pixels = [(0, 0), (0, 1), (1, 0), (1, 1)]
    w = [weights[labels[0][p]] for p in pixels]
    expected = sum(wi * ce(p) for wi, p in zip(w, pixels)) / sum(w)
    value = float(losses.make_loss("weighted_ce", weights)(labels, logits))
    assert value == pytest.approx(expected, rel=1e-5)
    unweighted = float(losses.make_loss("ce")(labels, logits))
    assert unweighted == pytest.approx(np.mean([ce(p) for p in pixels]), rel=1e-5)
    assert value != pytest.approx(unweighted, rel=1e-3)


def test_ignored_class_pixels_do_not_count(labels):
    logits = _perfect_logits(labels)
    void = labels == V.VOID
    assert void.any()
    # Make every void pixel badly wrong: with void ignored the loss must not notice.
    logits[void] = _perfect_logits(np.full(void.sum(), 3, np.int32))
    for name in losses.LOSSES:
        ignored = losses.make_loss(name, [1.0] * C, ignore_class=V.VOID)
        counted = losses.make_loss(name, [1.0] * C)
        assert float(ignored(labels, logits)) == pytest.approx(0.0, abs=1e-3), name
        assert float(counted(labels, logits)) > 0.01, name


def test_dice_of_identical_masks_is_zero_and_of_disjoint_masks_is_high():
    labels = np.zeros((1, 8, 8), np.int32)
    labels[0, :4] = 5
    labels[0, 4:] = 1
    same = float(losses.dice(labels, _perfect_logits(labels))[0])
    swapped = float(losses.dice(labels, _perfect_logits(np.where(labels == 5, 1, 5)))[0])
    assert same == pytest.approx(0.0, abs=1e-3)
    # Two of the eight classes are entirely wrong; the six absent ones score ~1.
    assert swapped == pytest.approx(2 / 8, abs=0.02)


def test_focal_is_below_ce_for_confident_right_pixels(labels):
    logits = _perfect_logits(labels, margin=2.0)
    ce = losses.cross_entropy(labels, logits).numpy()
    fl = losses.focal(labels, logits).numpy()
    assert np.all(fl < ce) and np.all(fl > 0)


def test_losses_accept_float16_logits_and_channel_labels(labels):
    logits16 = tf.cast(_perfect_logits(labels, margin=3.0), tf.float16)
    for name in losses.LOSSES:
        loss = losses.make_loss(name, [1.0] * C)
        a = loss(labels[..., None], logits16)
        b = loss(labels, tf.cast(logits16, tf.float32))
        assert a.dtype == tf.float32
        assert float(a) == pytest.approx(float(b), rel=1e-4)


def test_loss_gradients_flow_and_serialise(labels):
    loss = losses.make_loss("ce+dice", [1.0] * C, ignore_class=V.VOID)
    logits = tf.Variable(tf.zeros(labels.shape + (C,)))
    with tf.GradientTape() as tape:
        value = loss(labels, logits)
    grad = tape.gradient(value, logits)
    assert float(tf.reduce_max(tf.abs(grad))) > 0
    clone = losses.SegmentationLoss.from_config(loss.get_config())
    assert float(clone(labels, logits)) == pytest.approx(float(value))


@pytest.mark.parametrize("name,weights", [
    ("nope", None), ("weighted_ce", None), ("weighted_ohem", None), ("ce", [1.0, 2.0]),
    ("weighted_ohem+lovasz", None),
])
def test_bad_loss_requests_raise(name, weights):
    with pytest.raises(ValueError):
        losses.make_loss(name, weights)


def test_ohem_keeps_only_hard_pixels_and_at_least_a_fraction():
    """Confident pixels (p > 0.7) drop out unless needed to keep min_kept_fraction."""
    labels = np.zeros((1, 1, 10), np.int32) + 1
    logits = np.zeros((1, 1, 10, 3), np.float32)
    logits[..., 1] = 10.0          # 9 confident, correct pixels
    logits[0, 0, 0] = [0, 0, 5.0]  # one hard pixel
    ce = losses.cross_entropy(labels[..., :1], logits[:, :, :1])
    got = losses.ohem_cross_entropy(labels, logits, min_kept_fraction=0.1)
    np.testing.assert_allclose(got.numpy(), ce.numpy(), rtol=1e-5)  # only the hard one
    # Nothing hard: the top 20 % by loss still train (2 of 10 pixels).
    easy = np.zeros((1, 1, 10, 3), np.float32)
    easy[..., 1] = np.linspace(3, 12, 10)
    got = losses.ohem_cross_entropy(labels, easy, min_kept_fraction=0.2)
    expected = losses.cross_entropy(labels[..., :2], easy[:, :, :2])
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5)


def test_weighted_ohem_tilts_the_kept_pixels_by_square_rooted_weights():
    """Every pixel hard: the loss is the kept pixels' CE averaged with weights sqrt(w)."""
    labels = np.array([[[0, 1, 1, 1]]], np.int32)
    logits = np.zeros((1, 1, 4, 2), np.float32)
    logits[0, 0, 0] = [0.0, 2.0]  # the rare class 0, predicted wrong
    weights = [9.0, 1.0] + [1.0] * (C - 2)
    padded = np.concatenate([logits, np.full((1, 1, 4, C - 2), -50.0, np.float32)], axis=-1)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, padded).numpy()[0, 0]
    expected = (3.0 * ce[0] + ce[1:].sum()) / (3.0 + 3.0)  # sqrt(9) = 3
    got = float(losses.make_loss("weighted_ohem", weights)(labels, padded))
    assert got == pytest.approx(expected, rel=1e-5)
    # Uniform weights: plain OHEM.
    plain = float(losses.make_loss("ohem")(labels, padded))
    assert float(losses.make_loss("weighted_ohem", [1.0] * C)(labels, padded)) == \
        pytest.approx(plain, rel=1e-6)
    assert got > plain  # the rare, wrong pixel weighs more


def test_ohem_ignores_the_ignored_class():
    labels = np.array([[[0, 0, 1, 1]]], np.int32)
    logits = np.zeros((1, 1, 4, 2), np.float32)
    logits[0, 0, :2, 1] = 9.0  # void pixels predicted very wrong: must not count
    got = losses.ohem_cross_entropy(labels, logits, ignore_class=0)
    np.testing.assert_allclose(got.numpy(), [np.log(2.0)], rtol=1e-5)


def test_lovasz_of_crisp_predictions_is_one_minus_the_mean_iou_of_present_categories():
    # On crisp probabilities the Lovász extension equals the Jaccard loss it extends.
    labels = np.array([[[1, 1, 1, 2], [2, 7, 7, 0]]], dtype=np.int32)
    predicted = np.array([[[1, 1, 2, 2], [2, 7, 6, 0]]], dtype=np.int32)
    ious = []
    for c in {1, 2, 7}:  # present in the label, void (0) ignored; 6 only predicted
        truth, guess = labels[0] == c, predicted[0] == c
        ious.append((truth & guess).sum() / (truth | guess).sum())
    value = losses.lovasz_softmax(labels, _perfect_logits(predicted), ignore_class=V.VOID)
    assert float(value[0]) == pytest.approx(1.0 - np.mean(ious), abs=1e-5)


def test_lovasz_weighs_a_small_categorys_pixels_above_a_large_ones():
    # 1 pixel of category 5 among 47 of category 1, all scored uniformly: the lone pixel
    # decides its category's whole IoU, so it gets a larger share of the gradient.
    labels = np.ones((1, 6, 8), np.int32)
    labels[0, 0, 0] = 5
    labels[0, 5, 7] = V.VOID
    logits = tf.Variable(tf.zeros(labels.shape + (C,)))
    with tf.GradientTape() as tape:
        value = losses.lovasz_softmax(labels, logits, ignore_class=V.VOID)
    grad = tf.norm(tape.gradient(value, logits), axis=-1).numpy()[0]
    assert np.isfinite(grad).all()
    assert grad[0, 0] > 5 * grad[3, 3] > 0
    assert grad[5, 7] == 0  # the ignored pixel


def test_weighted_ohem_lovasz_is_the_sum_of_its_terms(labels):
    weights = [float(w) for w in np.linspace(0.5, 3.0, C)]
    logits = tf.random.stateless_normal(labels.shape + (C,), seed=[1, 2])
    both = losses.make_loss("weighted_ohem+lovasz", weights, ignore_class=V.VOID)(labels, logits)
    ohem = losses.make_loss("weighted_ohem", weights, ignore_class=V.VOID)(labels, logits)
    lovasz = losses.lovasz_softmax(labels, logits, ignore_class=V.VOID, stride=2)
    assert float(both) == pytest.approx(float(ohem) + float(tf.reduce_mean(lovasz)), rel=1e-5)


def test_ohem_lovasz_is_the_default_without_weights(labels):
    """The trainer's fallback on data without category counts: plain OHEM plus the term."""
    logits = tf.random.stateless_normal(labels.shape + (C,), seed=[5, 6])
    both = losses.make_loss("ohem+lovasz", ignore_class=V.VOID)(labels, logits)
    ohem = losses.make_loss("ohem", ignore_class=V.VOID)(labels, logits)
    lovasz = losses.lovasz_softmax(labels, logits, ignore_class=V.VOID, stride=2)
    assert float(both) == pytest.approx(float(ohem) + float(tf.reduce_mean(lovasz)), rel=1e-5)
    assert losses.UNWEIGHTED_FORM["weighted_ohem+lovasz"] == "ohem+lovasz"
    assert all(name in losses.LOSSES and name not in losses.WEIGHTS_REQUIRED
               for name in losses.UNWEIGHTED_FORM.values())


def test_lovasz_with_a_stride_scores_the_subsampled_pixels(labels):
    logits = tf.random.stateless_normal(labels.shape + (C,), seed=[3, 4])
    strided = losses.lovasz_softmax(labels, logits, ignore_class=V.VOID, stride=2)
    subsampled = losses.lovasz_softmax(labels[:, ::2, ::2], logits[:, ::2, ::2],
                                       ignore_class=V.VOID)
    whole = losses.lovasz_softmax(labels, logits, ignore_class=V.VOID)
    np.testing.assert_allclose(strided.numpy(), subsampled.numpy(), rtol=1e-6)
    assert not np.allclose(strided.numpy(), whole.numpy())
