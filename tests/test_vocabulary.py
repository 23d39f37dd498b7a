"""The shared vocabulary against the official Cityscapes table and the id grammar."""
import fnmatch
import re

import numpy as np
import pytest
from cityscapesscripts.helpers import labels as official

from cityseg import vocabulary as V


# --- The label table ---------------------------------------------------------------------

def test_label_table_matches_cityscapesscripts_row_by_row():
    assert len(V.LABELS) == len(official.labels)
    for ours, theirs in zip(V.LABELS, official.labels):
        assert (ours.name, ours.id, ours.train_id, ours.category, ours.category_id,
                ours.has_instances, ours.ignore_in_eval, tuple(ours.color)) == (
            theirs.name, theirs.id, theirs.trainId, theirs.category, theirs.categoryId,
            theirs.hasInstances, theirs.ignoreInEval, tuple(theirs.color)), theirs.name


def test_categories_are_the_official_category_ids():
    official_categories = {label.categoryId: label.category for label in official.labels}
    assert dict(enumerate(V.CATEGORIES)) == official_categories
    assert V.NUM_CATEGORIES == 8
    assert V.EVALUATED_CATEGORIES == (1, 2, 3, 4, 5, 6, 7)
    # Each category's palette colour is the colour of one of its official classes.
    for category_id, colour in enumerate(V.PALETTE):
        colours = {label.color for label in official.labels if label.categoryId == category_id}
        assert colour in colours, V.CATEGORIES[category_id]


def test_label_lookups():
    assert V.LABEL_BY_NAME["road"].id == 7
    assert V.LABEL_BY_NAME["sky"].category == "sky"
    assert V.NUM_LABEL_IDS == 1 + max(label.id for label in official.labels)
    assert not V.LABEL_TO_CATEGORY.flags.writeable


# --- remap_labels ------------------------------------------------------------------------

def test_remap_labels_maps_every_official_id_to_its_category():
    ids = np.arange(V.NUM_LABEL_IDS, dtype=np.uint8)
    expected = [official.id2label[i].categoryId for i in range(V.NUM_LABEL_IDS)]
    remapped = V.remap_labels(ids)
    assert remapped.dtype == np.uint8
    assert remapped.tolist() == expected


def test_remap_labels_keeps_shape_and_accepts_any_integer_dtype():
    mask = np.array([[7, 8, 23], [26, 0, 33]], dtype=np.int32)
    assert V.remap_labels(mask).tolist() == [[1, 1, 5], [7, 0, 7]]
    assert V.remap_labels(mask.astype(np.uint16)).shape == (2, 3)
    assert V.remap_labels(np.zeros((0, 4), np.uint8)).shape == (0, 4)


@pytest.mark.parametrize("bad", [34, 255, -1, 1000])
def test_remap_labels_rejects_values_outside_the_table(bad):
    mask = np.full((4, 5), 7, dtype=np.int32)
    mask[2, 3] = bad
    with pytest.raises(V.InvalidLabelError, match=re.escape(str(bad))):
        V.remap_labels(mask)


def test_invalid_label_error_is_a_value_error():
    # run_cli and the Beam dead-letter path both rely on it being a ValueError.
    assert issubclass(V.InvalidLabelError, ValueError)


def test_remap_labels_rejects_non_integer_input():
    with pytest.raises(V.InvalidLabelError):
        V.remap_labels(np.array([[7.9, 23.0]]))


def test_colorize_draws_out_of_range_values_as_void():
    rgb = V.colorize(np.array([[255, 7]]))
    assert rgb[0, 0].tolist() == list(V.PALETTE[V.VOID])
    assert rgb[0, 1].tolist() == list(V.PALETTE[7])


# --- colorize ----------------------------------------------------------------------------

def test_colorize_draws_each_category_in_its_palette_colour():
    categories = np.arange(V.NUM_CATEGORIES, dtype=np.uint8).reshape(2, 4)
    rgb = V.colorize(categories)
    assert rgb.shape == (2, 4, 3) and rgb.dtype == np.uint8
    assert [tuple(c) for c in rgb.reshape(-1, 3)] == list(V.PALETTE)


# --- Image ids ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, city, seq, frame", [
    ("frankfurt_000000_000294", "frankfurt", 0, 294),
    ("some-city_000001_000002", "some-city", 1, 2),
    ("monchengladbach_999999_000019", "monchengladbach", 999999, 19),
])
def test_parse_image_id_accepts_cityscapes_ids(text, city, seq, frame):
    image_id = V.parse_image_id(text)
    assert image_id == V.ImageId(city, seq, frame)
    assert str(image_id) == text
    assert re.fullmatch(V.IMAGE_ID_PATTERN, text)


@pytest.mark.parametrize("text", [
    "", "../x", "../../etc/passwd", "Frankfurt_000000_000294", "frankfurt_00000_000294",
    "frankfurt_0000000_000294", "frankfurt_000000_00294", "frankfurt_000000",
    "frankfurt_000000_000294_leftImg8bit", "frankfurt_000000_000294\x00",
    "frank\x00furt_000000_000294", "%2e%2e%2f", "%2e%2e%2ffrankfurt_000000_000294",
    "frankfurt/000000_000294", "frankfurt_000000_000294/..", "-frankfurt_000000_000294",
    "frankfurt-_000000_000294", "frank--furt_000000_000294", "frankfurt_+00000_000294",
    " frankfurt_000000_000294", "frankfurt_000000_000294 ", "a" * 5000,
    "frankfurt_000000_000294" + "0" * 5000,
])
def test_parse_image_id_rejects_everything_else(text):
    with pytest.raises(V.InvalidImageIdError):
        V.parse_image_id(text)


@pytest.mark.parametrize("value", [None, 42, b"frankfurt_000000_000294"])
def test_parse_image_id_rejects_non_strings(value):
    with pytest.raises(V.InvalidImageIdError):
        V.parse_image_id(value)


def test_long_input_error_message_stays_short():
    with pytest.raises(V.InvalidImageIdError) as info:
        V.parse_image_id("x" * 50)
    assert len(str(info.value)) < 200


def test_parse_image_id_rejects_a_trailing_newline():
    with pytest.raises(V.InvalidImageIdError):
        V.parse_image_id("frankfurt_000000_000294\n")


def test_parse_image_id_rejects_non_ascii_digits():
    arabic_indic_zeros = "\u0660" * 6
    with pytest.raises(V.InvalidImageIdError):
        V.parse_image_id(f"frankfurt_{arabic_indic_zeros}_000294")


def test_image_ids_sort_by_city_then_sequence_then_frame():
    ids = [V.parse_image_id(t) for t in
           ("lindau_000000_000019", "frankfurt_000001_000019", "frankfurt_000000_000294")]
    assert [str(i) for i in sorted(ids)] == [
        "frankfurt_000000_000294", "frankfurt_000001_000019", "lindau_000000_000019"]


# --- The raw layout ----------------------------------------------------------------------

def test_image_and_label_paths_follow_the_cityscapes_layout():
    assert str(V.image_path("val", "frankfurt_000000_000294")) == (
        "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png")
    assert str(V.label_path("train", V.ImageId("aachen", 3, 19))) == (
        "gtFine/train/aachen/aachen_000003_000019_gtFine_labelIds.png")


@pytest.mark.parametrize("split", ["training", "", "../train", "Train", None])
def test_paths_reject_unknown_splits(split):
    with pytest.raises(ValueError, match="unknown split"):
        V.image_path(split, "frankfurt_000000_000294")
    with pytest.raises(ValueError, match=r"expected one of train, val, test"):
        V.check_split(split)


def test_check_split_returns_a_known_split():
    assert [V.check_split(split) for split in V.SPLITS] == list(V.SPLITS)


def test_paths_reject_invalid_ids():
    with pytest.raises(V.InvalidImageIdError):
        V.label_path("val", "../../secret")


def test_id_from_filename_round_trips_the_layout():
    image_id = V.ImageId("some-city", 12, 19)
    assert V.id_from_filename(V.image_path("test", image_id).name, V.IMAGE_SUFFIX) == image_id
    assert V.id_from_filename(V.label_path("test", image_id).name, V.LABEL_SUFFIX) == image_id
    with pytest.raises(V.InvalidImageIdError, match="does not end"):
        V.id_from_filename("some-city_000012_000019_gtFine_color.png", V.LABEL_SUFFIX)


# --- Shards and shared names -------------------------------------------------------------

def test_shard_name_format():
    assert V.shard_name("train", 0, 4) == "train-00000-of-00004.tfrecord"
    assert V.shard_name("val", 12, 128) == "val-00012-of-00128.tfrecord"
    pattern = V.SHARD_GLOB.format(split="train")
    assert fnmatch.fnmatchcase(V.shard_name("train", 3, 10), pattern)
    assert not fnmatch.fnmatchcase(V.shard_name("val", 3, 10), pattern)


def test_signature_names_are_tf_serving_defaults():
    assert (V.SIGNATURE_NAME, V.INPUT_KEY, V.OUTPUT_KEY) == ("serving_default", "images", "masks")
