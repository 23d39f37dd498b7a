"""cityseg.stats: the one class-weight formula and the one stats.json reader."""
import json

import pytest

from cityseg import stats
from cityseg import vocabulary as V

VOID, FLAT, CONSTRUCTION, HUMAN = (V.CATEGORIES.index(n)
                                   for n in ("void", "flat", "construction", "human"))


def _counts(**by_name):
    """8 counts from {category name: count}, the rest 0."""
    return [by_name.get(name, 0) for name in V.CATEGORIES]


def test_median_frequency_divides_by_the_pixels_of_the_images_holding_each_category():
    # Two 40-pixel images: one of void 10 + flat 30, one of flat 20 + construction 20.
    pixels = _counts(void=10, flat=50, construction=20)
    image_pixels = _counts(void=40, flat=80, construction=40)
    # freq: void 10/40, flat 50/80 = .625, construction 20/40 = .5. The median is over the
    # evaluated categories present only (flat, construction): .5625.
    weights = stats.class_weights(pixels, image_pixels)
    assert weights[FLAT] == pytest.approx(0.5625 / 0.625)
    assert weights[CONSTRUCTION] == pytest.approx(0.5625 / 0.5)
    # Void has its own weight (used only when void is trained) but does not move the median.
    assert weights[VOID] == pytest.approx(0.5625 / 0.25)
    assert weights[HUMAN] == 0.0  # absent: nothing to learn from it


def test_a_rare_category_that_fills_its_images_is_not_overweighted():
    # Global frequencies would call human 100x rarer than flat; per image it fills as much.
    pixels = _counts(flat=10_000, human=100, sky=1_000)
    image_pixels = _counts(flat=20_000, human=200, sky=20_000)
    weights = stats.class_weights(pixels, image_pixels)
    assert weights[HUMAN] == pytest.approx(weights[FLAT])
    assert weights[V.CATEGORIES.index("sky")] > weights[FLAT]


def test_no_evaluated_category_gives_zero_weights_and_bad_lengths_raise():
    assert stats.class_weights(_counts(void=5), _counts(void=5)) == [0.0] * V.NUM_CATEGORIES
    with pytest.raises(ValueError, match="8 counts"):
        stats.class_weights([1, 2], [1, 2])


def test_split_class_weights_reads_a_stats_document():
    train = {"images": 2, "category_pixels": _counts(flat=3, sky=1),
             "category_image_pixels": _counts(flat=4, sky=4)}
    document = {"train": train, "val": {"images": 0}}
    assert stats.split_class_weights(document) == stats.class_weights(
        train["category_pixels"], train["category_image_pixels"])
    assert stats.split_class_weights(document, "val") is None
    assert stats.split_class_weights({"train": {"images": 2, "category_pixels": [1] * 8}}) is None


def test_load_stats(tmp_path):
    with pytest.raises(FileNotFoundError, match="stats.json"):
        stats.load_stats(tmp_path)
    assert stats.load_stats(tmp_path, required=False) == {}
    (tmp_path / V.STATS_FILE).write_text(json.dumps({"train": {"images": 3}}))
    assert stats.load_stats(tmp_path)["train"]["images"] == 3
    (tmp_path / V.STATS_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        stats.load_stats(tmp_path)
    (tmp_path / V.STATS_FILE).write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        stats.load_stats(tmp_path)
