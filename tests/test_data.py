"""training.data end to end from TFRecords written here with the contract's features."""
import json

import numpy as np
import pytest
import tensorflow as tf

from cityseg import vocabulary as V
from cityseg.stats import load_stats
from training import augment as augment_lib
from training import data

H, W = 32, 64


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(index, split, rng):
    """One contract record; pixel (0, 0) of the red channel holds `index` to identify it."""
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    image[0, 0, 0] = index
    label = rng.integers(0, V.NUM_CATEGORIES, (H, W), dtype=np.uint8)
    image_id = f"testcity_{index:06d}_000019"
    example = tf.train.Example(features=tf.train.Features(feature={
        V.FEATURE_ID: _bytes(image_id.encode()),
        V.FEATURE_CITY: _bytes(b"testcity"),
        V.FEATURE_SPLIT: _bytes(split.encode()),
        V.FEATURE_IMAGE: _bytes(tf.io.encode_png(image).numpy()),
        V.FEATURE_LABEL: _bytes(tf.io.encode_png(label[..., None]).numpy()),
        V.FEATURE_HEIGHT: _int(H),
        V.FEATURE_WIDTH: _int(W),
        V.FEATURE_ORIGINAL_HEIGHT: _int(4 * H),
        V.FEATURE_ORIGINAL_WIDTH: _int(4 * W),
    }))
    return example.SerializeToString(), image, label


def write_split(root, split, num_shards, per_shard, seed=0):
    """Writes DATA/tfrecords/{split}/ shards (last shard first); returns {index: (image, label)}."""
    rng = np.random.default_rng(seed)
    folder = root / V.TFRECORDS_DIR / split
    folder.mkdir(parents=True, exist_ok=True)
    originals = {}
    for shard in reversed(range(num_shards)):
        with tf.io.TFRecordWriter(str(folder / V.shard_name(split, shard, num_shards))) as writer:
            for k in range(per_shard):
                index = shard * per_shard + k
                record, image, label = make_example(index, split, rng)
                writer.write(record)
                originals[index] = (image, label)
    return originals


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    originals = write_split(root, "train", num_shards=3, per_shard=4)
    write_split(root, "val", num_shards=1, per_shard=3, seed=1)
    (root / V.STATS_FILE).write_text(json.dumps(
        {"train": {"images": 12, "category_pixels": [1] * 8}, "class_weights": [1.0] * 8}))
    return root, originals


def _indices(ds):
    """The example indices (pixel (0,0) red) in iteration order."""
    return [int(round(v * 255)) for images, _ in ds for v in images[:, 0, 0, 0].numpy()]


def test_list_shards_is_sorted_and_ignores_other_files(data_dir):
    root, _ = data_dir
    (root / V.TFRECORDS_DIR / "train" / "notes.txt").write_text("not a shard")
    shards = data.list_shards(root, "train")
    assert [s.rsplit("/", 1)[1] for s in shards] == [V.shard_name("train", i, 3) for i in range(3)]


def test_missing_split_and_unknown_split_raise_one_line_errors(data_dir):
    root, _ = data_dir
    with pytest.raises(FileNotFoundError, match="no TFRecord shards for split 'test'") as err:
        data.make_dataset(root, "test", batch_size=2)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown split 'training'"):
        data.make_dataset(root, "training", batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        data.make_dataset(root, "train", batch_size=0)


def test_stored_size_gives_exact_pixels_and_labels(data_dir):
    root, originals = data_dir
    ds = data.make_dataset(root, "train", batch_size=5, seed=0)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    for images, labels in batches:
        assert images.dtype == tf.float32 and images.shape[1:] == (H, W, 3)
        assert labels.dtype == tf.int32 and labels.shape[1:] == (H, W)
        for image, label in zip(images.numpy(), labels.numpy()):
            index = int(round(image[0, 0, 0] * 255))
            np.testing.assert_allclose(image, originals[index][0] / 255.0, atol=1e-6)
            np.testing.assert_array_equal(label, originals[index][1])
    # Without shuffling (and with a seed) the order is fixed: round-robin over sorted shards.
    assert _indices(ds) == [shard * 4 + k for k in range(4) for shard in range(3)]


def test_resized_augmented_batches_have_contract_shapes_and_ranges(data_dir):
    root, _ = data_dir
    ds = data.make_dataset(root, "train", batch_size=4, image_size=(16, 32), augment=True,
                           shuffle=True, seed=3, drop_remainder=True)
    assert ds.element_spec[0].shape.as_list() == [4, 16, 32, 3]
    assert ds.element_spec[1].shape.as_list() == [4, 16, 32]
    count = 0
    for images, labels in ds:
        count += 1
        assert images.dtype == tf.float32 and labels.dtype == tf.int32
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
        assert set(np.unique(labels.numpy())) <= set(range(V.NUM_CATEGORIES))
    assert count == 3


@pytest.mark.slow
def test_seed_makes_shuffle_and_augmentation_reproducible(data_dir):
    root, _ = data_dir

    def take(seed):
        ds = data.make_dataset(root, "train", batch_size=4, image_size=(16, 32), augment=True,
                               shuffle=True, seed=seed)
        return [(x.numpy(), y.numpy()) for x, y in ds]

    first, again, other = take(7), take(7), take(8)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_shuffle_changes_order_and_repeat_gives_new_epochs(data_dir):
    root, _ = data_dir
    ds = data.make_dataset(root, "train", batch_size=12, shuffle=True, seed=1, repeat=True)
    epochs = [sorted(_indices(ds.skip(i).take(1))) for i in range(3)]
    assert all(e == list(range(12)) for e in epochs)
    orders = [_indices(ds.skip(i).take(1)) for i in range(2)]
    assert orders[0] != list(range(12))


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, "file"])
def test_cache_matches_the_uncached_pipeline(data_dir, tmp_path, cache):
    root, _ = data_dir
    cache = str(tmp_path / "cache") if cache == "file" else cache
    plain = data.make_dataset(root, "train", batch_size=12, image_size=(16, 32), seed=0)
    cached = data.make_dataset(root, "train", batch_size=12, image_size=(16, 32), seed=0,
                               cache=cache, repeat=True)
    (x, y), = list(plain)
    for cx, cy in cached.take(2):  # the second epoch comes from the cache
        np.testing.assert_allclose(cx.numpy(), x.numpy(), atol=0.5 / 255 + 1e-6)
        np.testing.assert_array_equal(cy.numpy(), y.numpy())
    augmented = data.make_dataset(root, "train", batch_size=12, image_size=(16, 32), seed=0,
                                  cache=cache, repeat=True, augment=True, shuffle=True)
    first, second = (b[0].numpy() for b in augmented.take(2))
    assert not np.allclose(first, second)  # fresh augmentation on cached epochs


@pytest.mark.parametrize("split, pipelines", [("train", 3), ("val", 2)])
def test_input_context_gives_each_pipeline_a_disjoint_share(data_dir, split, pipelines):
    root, _ = data_dir
    total = data.count_examples(root, split)
    shares = []
    for i in range(pipelines):
        ctx = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=i)
        shares.append(_indices(data.make_dataset(root, split, batch_size=2, shuffle=True,
                                                 input_context=ctx)))
    seen = [i for share in shares for i in share]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == total  # val: 1 shard -> by record


def test_auto_shard_policy_data_keeps_every_example(data_dir):
    # tf.distribute's auto-sharding (as experimental_distribute_dataset applies it) must not
    # drop data from the zipped augmentation seeds: DATA policy, each worker every 2nd batch.
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset
    root, _ = data_dir
    ds = data.make_dataset(root, "train", batch_size=1, augment=True, shuffle=True, seed=2)
    counts = [sum(1 for _ in _AutoShardDataset(ds, 2, i)) for i in range(2)]
    assert counts == [6, 6]


def test_count_examples_agrees_with_stats(data_dir):
    root, _ = data_dir
    assert data.count_examples(root, "train") == 12 == load_stats(root)["train"]["images"]
    assert data.count_examples(root, "val") == 3


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """Records of several cameras' sizes in one split (odd sizes and a 1x1 frame included)."""
    from test_train import _example

    root = tmp_path_factory.mktemp("mixed")
    folder = root / V.TFRECORDS_DIR / "train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # The four cameras of the issue (CamVid, Cityscapes, 1080p, KITTI) and border cases.
    sizes = [(360, 480), (1024, 2048), (1, 1), (1080, 1920), (375, 1242), (19, 23)]
    with tf.io.TFRecordWriter(str(folder / V.shard_name("train", 0, 1))) as writer:
        for k, (h, w) in enumerate(sizes):
            # Smooth content (cheap to encode) with labels in blocks of 8x8 pixels.
            image = np.full((h, w, 3), 40 * (k + 1), np.uint8)
            blocks = rng.integers(1, V.NUM_CATEGORIES, (-(-h // 8), -(-w // 8)), dtype=np.uint8)
            label = np.kron(blocks, np.ones((8, 8), np.uint8))[:h, :w]
            writer.write(_example(image, label, f"cam_{k:06d}_000019", "train")
                         .SerializeToString())
    return root, sizes


@pytest.mark.parametrize("augment", [True, False])
def test_crops_batch_frames_of_any_size(mixed_sizes, augment):
    root, sizes = mixed_sizes
    ds = data.make_dataset(root, "train", batch_size=3, crop_size=(64, 96), augment=augment,
                           seed=1, drop_remainder=True)
    assert ds.element_spec[0].shape.as_list() == [3, 64, 96, 3]
    batches = list(ds)
    assert len(batches) == len(sizes) // 3
    for images, labels in batches:
        assert images.shape == (3, 64, 96, 3) and labels.shape == (3, 64, 96)
        # Frames smaller than the crop come padded with void (never seen in these labels).
        assert labels.numpy().min() >= 0 and labels.numpy().max() < V.NUM_CATEGORIES
    all_labels = np.concatenate([labels.numpy() for _, labels in batches])
    assert (all_labels == V.VOID).any()  # the 1x1 and 19x23 frames were padded


def test_whole_frames_padded_to_the_stride_batch_together(mixed_sizes):
    root, sizes = mixed_sizes
    ds = data.make_dataset(root, "train", batch_size=2, pad_to_multiple=32, seed=0)
    seen = []
    for images, labels in ds:
        h, w = labels.shape[1:]
        assert h % 32 == 0 and w % 32 == 0 and images.shape[1:3] == (h, w)
        for label in labels.numpy():
            nonvoid = np.argwhere(label != V.VOID)
            seen.append(tuple(nonvoid.max(axis=0) + 1))
    # Every frame kept its own size and aspect (its labels are all non-void).
    assert seen == sizes


def test_autotune_off_keeps_the_same_batches(mixed_sizes):
    """Validation inside fit runs without tf.data autotuning (its iterator is remade every
    epoch, and deleting an autotuned one stalled): the option is set and the batches are the
    ones the autotuned pipeline gives."""
    root, _ = mixed_sizes
    kwargs = dict(batch_size=2, seed=0, pad_to_multiple=16)
    tuned = data.make_dataset(root, "train", **kwargs)
    fixed = data.make_dataset(root, "train", autotune=False, **kwargs)
    assert tuned.options().autotune.enabled is True
    assert fixed.options().autotune.enabled is False
    for (a_img, a_lab), (b_img, b_lab) in zip(tuned, fixed, strict=True):
        np.testing.assert_array_equal(a_img.numpy(), b_img.numpy())
        np.testing.assert_array_equal(a_lab.numpy(), b_lab.numpy())


def _jpeg_record(image, label):
    """A contract record whose image is JPEG (the label stays PNG)."""
    h, w = label.shape
    return tf.train.Example(features=tf.train.Features(feature={
        V.FEATURE_IMAGE: _bytes(tf.io.encode_jpeg(image, quality=95).numpy()),
        V.FEATURE_LABEL: _bytes(tf.io.encode_png(label[..., None]).numpy()),
        V.FEATURE_HEIGHT: _int(h), V.FEATURE_WIDTH: _int(w),
    })).SerializeToString()


@pytest.mark.parametrize("image_size, ratio", [(None, 1), ((32, 64), 1), ((16, 32), 2),
                                               ((8, 16), 4), ((12, 20), 2)])
def test_jpeg_images_decode_at_the_scale_the_resize_needs(image_size, ratio):
    """A JPEG image is decoded in the DCT domain at 1/2 or 1/4 size when that still covers
    image_size, and then resized like a PNG: close to the area resize of the full image."""
    y, x = np.mgrid[0:H, 0:W]
    image = np.stack([x * 4, y * 8, (x + y) * 2], axis=-1).astype(np.uint8)  # smooth
    label = (x // 8 % V.NUM_CATEGORIES).astype(np.uint8)
    features = tf.io.parse_single_example(_jpeg_record(image, label), {
        key: data.FEATURES[key] for key in (V.FEATURE_IMAGE, V.FEATURE_LABEL, V.FEATURE_HEIGHT,
                                            V.FEATURE_WIDTH)})
    decoded, decoded_label = data.decode_example(features, image_size)
    assert decoded.shape == (H // ratio, W // ratio, 3)
    np.testing.assert_array_equal(decoded_label, label)
    if image_size is not None:
        resized, _ = data.resize_example(decoded, decoded_label, image_size)
        expected, _ = data.resize_example(tf.constant(image), tf.constant(label), image_size)
        assert np.abs(resized.numpy() - expected.numpy()).mean() < 3 / 255


# Each category its own colour, far apart, so a pixel's colour tells its category.
_PALETTE = np.array([[128, 128, 128], [230, 30, 30], [30, 230, 30], [30, 30, 230],
                     [230, 230, 30], [30, 230, 230], [230, 30, 230], [250, 250, 250]], np.uint8)


@pytest.fixture(scope="module", params=["png", "jpeg"])
def coloured_records(request, tmp_path_factory):
    """Records of 64x128 frames painted by category (blocks of 16x16), image as PNG or as a
    JPEG (which decode_example reads at 1/2 scale for a 32x64 image_size)."""
    root = tmp_path_factory.mktemp(f"coloured-{request.param}")
    folder = root / V.TFRECORDS_DIR / "train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    encode = (lambda image: tf.io.encode_jpeg(image, quality=95)) if request.param == "jpeg" \
        else tf.io.encode_png
    with tf.io.TFRecordWriter(str(folder / V.shard_name("train", 0, 1))) as writer:
        for index in range(4):
            cells = rng.integers(1, V.NUM_CATEGORIES, (4, 8), dtype=np.uint8)
            label = np.kron(cells, np.ones((16, 16), np.uint8))
            example = tf.train.Example()
            example.ParseFromString(make_example(index, "train", rng)[0])
            features = example.features.feature
            features[V.FEATURE_IMAGE].CopyFrom(_bytes(encode(_PALETTE[label]).numpy()))
            features[V.FEATURE_LABEL].CopyFrom(_bytes(tf.io.encode_png(label[..., None]).numpy()))
            features[V.FEATURE_HEIGHT].CopyFrom(_int(64))
            features[V.FEATURE_WIDTH].CopyFrom(_int(128))
            writer.write(example.SerializeToString())
    return root


@pytest.mark.parametrize("crop_size", [None, (24, 40)])
@pytest.mark.parametrize("cache", [False, True])
def test_augmented_images_and_labels_stay_aligned(coloured_records, crop_size, cache):
    """Uncached, augment resamples the decoded frame (a JPEG at half size, its label at full
    size) straight to the output; cached, the resized frame. Either way each pixel's colour
    still names its label wherever the label is not at a category edge."""
    no_colour_jitter = augment_lib.AugmentConfig(
        max_brightness_delta=0.0, contrast_range=(1.0, 1.0), saturation_range=(1.0, 1.0),
        max_hue_delta=0.0)
    ds = data.make_dataset(coloured_records, "train", batch_size=4, image_size=(32, 64),
                           augment=True, augment_config=no_colour_jitter, crop_size=crop_size,
                           cache=cache, seed=1, repeat=True)
    palette = _PALETTE.astype(np.float32) / 255.0
    for images, labels in ds.take(3):
        assert images.shape[1:3] == (crop_size or (32, 64))
        for image, label in zip(images.numpy(), labels.numpy()):
            nearest = np.argmin(((image[..., None, :] - palette) ** 2).sum(-1), axis=-1)
            # Pixels whose 3x3 neighbourhood holds one category (and is not padding).
            padded = np.pad(label, 1, mode="edge")
            shifted = [padded[1 + dy:1 + dy + label.shape[0], 1 + dx:1 + dx + label.shape[1]]
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            inside = np.all([s == label for s in shifted], axis=0) & (label != V.VOID)
            assert inside.sum() > 0.3 * label.size
            np.testing.assert_array_equal(nearest[inside], label[inside])
