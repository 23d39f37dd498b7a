"""Plain tests of preprocessing/records.py: one file, one pair, one shard at a time."""
from __future__ import annotations

import binascii
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cityseg import ops, raw
from cityseg import vocabulary as vocab
from cityseg.stats import class_weights
from preprocessing import records
from test_images import png_header

SPLIT = "train"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(root, rel: str, data: bytes) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


def _pair(root, image_id: str, image: np.ndarray | bytes, label: np.ndarray | bytes,
          split: str = SPLIT) -> raw.Pair:
    image_rel = str(vocab.image_path(split, image_id))
    label_rel = str(vocab.label_path(split, image_id))
    _write(root, image_rel, image if isinstance(image, bytes) else _png(image))
    _write(root, label_rel, label if isinstance(label, bytes) else _png(label))
    return raw.Pair(split, image_id, vocab.parse_image_id(image_id).city, image_rel, label_rel)


def _image(rng, h=32, w=64):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _labels(rng, h=32, w=64):
    return rng.integers(0, vocab.NUM_LABEL_IDS, (h, w), dtype=np.uint8)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# --- discovery ------------------------------------------------------------------------------

def test_pair_files_pairs_by_id_and_rejects_names_and_orphans():
    images = ["leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png",
              "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
              "leftImg8bit/train/aachen/aachen_000002_000019_leftImg8bit.png",  # no label
              "leftImg8bit/train/aachen/aachen_1_2_leftImg8bit.png",            # bad id
              "leftImg8bit/train/aachen/bremen_000000_000019_leftImg8bit.png"]  # wrong folder
    labels = ["gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
              "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png",
              "gtFine/train/aachen/aachen_000003_000019_gtFine_labelIds.png"]   # no image
    pairs, rejects = records.pair_files("train", images, labels)
    assert [p.image_id for p in pairs] == ["aachen_000000_000019", "aachen_000001_000019"]
    assert pairs[0].label == labels[0] and pairs[0].city == "aachen"
    got = {(r.path.rsplit("/", 1)[1], r.reason, r.image_id) for r in rejects}
    assert got == {
        ("aachen_000002_000019_leftImg8bit.png", raw.IMAGE_WITHOUT_LABEL,
         "aachen_000002_000019"),
        ("aachen_1_2_leftImg8bit.png", raw.BAD_FILENAME, None),
        ("bremen_000000_000019_leftImg8bit.png", raw.BAD_FILENAME, None),
        ("aachen_000003_000019_gtFine_labelIds.png", raw.LABEL_WITHOUT_IMAGE,
         "aachen_000003_000019"),
    }
    assert rejects == sorted(rejects)


def test_discover_reads_the_raw_layout_and_filters_cities(tmp_path, rng):
    _pair(tmp_path, "aachen_000000_000019", _image(rng), _labels(rng))
    _pair(tmp_path, "bremen_000000_000019", _image(rng), _labels(rng))
    _pair(tmp_path, "frankfurt_000000_000019", _image(rng), _labels(rng), split="val")
    # gtFine's other files are part of the layout, not inputs and not rejects.
    _write(tmp_path, "gtFine/train/aachen/aachen_000000_000019_gtFine_color.png", b"x")
    _write(tmp_path, "gtFine/train/aachen/aachen_000000_000019_gtFine_polygons.json", b"{}")
    pairs, rejects = records.discover(str(tmp_path), ["train", "val", "test"])
    assert [(p.split, p.image_id) for p in pairs] == [
        ("train", "aachen_000000_000019"), ("train", "bremen_000000_000019"),
        ("val", "frankfurt_000000_000019")]
    assert rejects == []
    pairs, _ = records.discover(str(tmp_path), ["train"], cities=["bremen"])
    assert [p.image_id for p in pairs] == ["bremen_000000_000019"]


# --- one pair -------------------------------------------------------------------------------

@pytest.mark.parametrize("case, reason", [
    ("empty", raw.EMPTY_FILE),
    ("not_png", raw.CORRUPT_PNG),
    ("truncated", raw.CORRUPT_PNG),
    ("over_budget", raw.OVER_PIXEL_BUDGET),
    ("size_mismatch", raw.SIZE_MISMATCH),
    ("rgb_label", raw.BAD_LABEL_FORMAT),
    ("unknown_ids", raw.UNKNOWN_LABEL_IDS),
    ("missing", raw.UNREADABLE),
])
def test_encode_pair_rejects_bad_input_with_its_reason(tmp_path, rng, case, reason):
    image, labels = _png(_image(rng)), _png(_labels(rng))
    if case == "empty":
        image = b""
    elif case == "not_png":
        image = b"GIF89a" + bytes(100)
    elif case == "truncated":
        image = image[: len(image) // 2]
    elif case == "over_budget":
        # A header claiming 50,000 x 50,000 pixels over a few bytes of pixel data: must be
        # refused on the header, since decoding it is exactly what the budget prevents.
        image = png_header(50_000, 50_000)
    elif case == "size_mismatch":
        labels = _png(_labels(rng, 32, 32))
    elif case == "rgb_label":
        labels = _png(np.stack([_labels(rng)] * 3, axis=-1))
    elif case == "unknown_ids":
        bad = _labels(rng)
        bad[3, 5] = 40
        labels = _png(bad)
    pair = _pair(tmp_path, "aachen_000000_000019", image, labels)
    if case == "missing":
        (tmp_path / pair.image).unlink()
    with pytest.raises(raw.RejectedInput) as err:
        records.encode_pair(str(tmp_path), pair, (16, 32))
    assert err.value.reason == reason
    reject = err.value.to_reject(pair)
    assert reject.image_id == "aachen_000000_000019" and reject.split == SPLIT
    assert reject.path in (pair.image, pair.label) and reject.detail
    json.dumps(reject.to_json())


def test_encode_pair_writes_the_contract_example(tmp_path, rng):
    image, label_ids = _image(rng), _labels(rng)
    pair = _pair(tmp_path, "aachen_000004_000019", image, label_ids)
    encoded = records.encode_pair(str(tmp_path), pair, (16, 32))

    example = tf.train.Example.FromString(encoded.example)
    feature = example.features.feature
    assert set(feature) == {vocab.FEATURE_ID, vocab.FEATURE_CITY, vocab.FEATURE_SPLIT,
                            vocab.FEATURE_IMAGE, vocab.FEATURE_LABEL, vocab.FEATURE_HEIGHT,
                            vocab.FEATURE_WIDTH, vocab.FEATURE_ORIGINAL_HEIGHT,
                            vocab.FEATURE_ORIGINAL_WIDTH, vocab.FEATURE_FORMAT}
    assert feature[vocab.FEATURE_FORMAT].bytes_list.value == [b"png"]
    assert feature[vocab.FEATURE_ID].bytes_list.value == [b"aachen_000004_000019"]
    assert feature[vocab.FEATURE_CITY].bytes_list.value == [b"aachen"]
    assert feature[vocab.FEATURE_SPLIT].bytes_list.value == [b"train"]
    assert feature[vocab.FEATURE_HEIGHT].int64_list.value == [16]
    assert feature[vocab.FEATURE_WIDTH].int64_list.value == [32]
    assert feature[vocab.FEATURE_ORIGINAL_HEIGHT].int64_list.value == [32]
    assert feature[vocab.FEATURE_ORIGINAL_WIDTH].int64_list.value == [64]

    decoded_image = np.asarray(Image.open(io.BytesIO(feature[vocab.FEATURE_IMAGE].bytes_list.value[0])))
    label = np.asarray(Image.open(io.BytesIO(feature[vocab.FEATURE_LABEL].bytes_list.value[0])))
    assert decoded_image.shape == (16, 32, 3) and decoded_image.dtype == np.uint8
    # Exact 2x shrink: area resize is the mean of each 2x2 block, rounded.
    blocks = image.astype(np.float64).reshape(16, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(decoded_image.astype(np.int16) - np.round(blocks)).max() <= 1
    # Nearest with half-pixel centres samples source pixel floor((i + 0.5) * 2) = 2i + 1.
    expected = vocab.remap_labels(label_ids[1::2, 1::2])
    assert label.shape == (16, 32) and label.max() < vocab.NUM_CATEGORIES
    np.testing.assert_array_equal(label, expected)

    assert encoded.manifest == {"image_id": "aachen_000004_000019", "split": "train",
                                "city": "aachen", "image": pair.image, "label": pair.label,
                                "height": 32, "width": 64}
    assert list(encoded.category_pixels) == np.bincount(
        expected.ravel(), minlength=vocab.NUM_CATEGORIES).tolist()
    # Same input, same bytes: the basis of the job's determinism.
    assert records.encode_pair(str(tmp_path), pair, (16, 32)).example == encoded.example


def test_resize_pair_follows_training_ops_and_native_keeps_size(rng):
    image, mask = _image(rng, 30, 50), vocab.remap_labels(_labels(rng, 30, 50))
    same_image, same_mask = records.resize_pair(image, mask, None)
    assert same_image is image and same_mask is mask
    bigger, big_mask = records.resize_pair(image, mask, (45, 70))
    expected = tf.cast(tf.round(ops.resize_image(image, (45, 70))), tf.uint8).numpy()
    np.testing.assert_array_equal(bigger, expected)
    np.testing.assert_array_equal(big_mask, ops.resize_label(tf.constant(mask), (45, 70)).numpy())
    assert set(np.unique(big_mask)) <= set(np.unique(mask))


# --- shards ---------------------------------------------------------------------------------

def test_shard_for_is_crc32_of_the_id_not_pythons_salted_hash():
    ids = [f"aachen_{i:06d}_000019" for i in range(40)]
    shards = [records.shard_for(i, 7) for i in ids]
    # binascii is a second CRC-32 implementation: the value depends only on the id's bytes,
    # so every worker and every re-run (whatever PYTHONHASHSEED) picks the same shard.
    assert shards == [binascii.crc32(i.encode()) % 7 for i in ids]
    assert set(shards) == set(range(7))


def test_auto_num_shards():
    assert records.auto_num_shards(0) == 1
    assert records.auto_num_shards(records.IMAGES_PER_SHARD) == 1
    assert records.auto_num_shards(records.IMAGES_PER_SHARD + 1) == 2


def test_write_shard_then_remove_stale(tmp_path):
    out = str(tmp_path)
    old = [records.shard_path(out, "train", i, 3) for i in range(3)]
    for path in old:
        records.write_shard(path, [b"old"])
    new = records.shard_path(out, "train", 0, 1)
    assert records.write_shard(new, [b"a", b"b"]) == 2
    other_split = records.shard_path(out, "val", 0, 3)
    records.write_shard(other_split, [b"v"])
    (tmp_path / "tfrecords" / "train" / ".train-00000-of-00001.tfrecord.tmp").write_bytes(b"")
    (tmp_path / "tfrecords" / "train" / "notes.txt").write_text("kept")

    removed = records.remove_stale_shards(out, "train", 1)
    assert len(removed) == 4
    assert sorted(os.listdir(tmp_path / "tfrecords" / "train")) == [
        "notes.txt", "train-00000-of-00001.tfrecord"]
    assert os.path.exists(other_split)
    assert list(tf.data.TFRecordDataset(new).as_numpy_iterator()) == [b"a", b"b"]


# --- summaries ------------------------------------------------------------------------------

def test_split_stats_count_the_median_frequency_denominators():
    stats = records.split_stats([[10, 30, 0, 0, 0, 0, 0, 0], [0, 20, 20, 0, 0, 0, 0, 0]])
    assert stats["images"] == 2
    assert stats["category_pixels"] == [10, 50, 20, 0, 0, 0, 0, 0]
    assert stats["category_image_pixels"] == [40, 80, 40, 0, 0, 0, 0, 0]
    merged = records.merge_split_stats([stats, stats])
    assert merged["images"] == 4 and merged["category_pixels"][1] == 100
    # The stored weights are train's, by the formula the trainer uses (tests/test_stats.py).
    doc = records.stats_document({"train": stats, "val": records.split_stats(())}, (16, 32))
    assert doc["class_weights"] == class_weights(stats["category_pixels"],
                                                 stats["category_image_pixels"])
    assert doc["class_weights_method"] == "median_frequency"
    assert records.stats_document({"val": stats}, None)["class_weights"] is None


def test_merge_jsonl_replaces_only_the_rerun_splits(tmp_path):
    path = str(tmp_path / "manifest.jsonl")
    (tmp_path / "manifest.jsonl").write_bytes(records.dumps_jsonl(
        [{"split": "train", "image_id": "b"}, {"split": "val", "image_id": "old"}]))
    rows = records.merge_jsonl(path, [{"split": "val", "image_id": "new"}], ["val"],
                               sort_key=lambda r: (r["split"], r["image_id"]))
    assert rows == [{"split": "train", "image_id": "b"}, {"split": "val", "image_id": "new"}]
