"""`DATA/stats.json`: its one reader and the one class-weight formula.

The Beam job counts, per split, the images, the pixels of each category and, per category, the
pixels of the images in which it appears (`preprocessing.records.split_stats`), and stores the
class weights of train beside them; the trainer derives its weights from the same counts with
the same function, so the two can never disagree.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cityseg import vocabulary as V

CLASS_WEIGHTS_METHOD = "median_frequency"


def class_weights(category_pixels: Sequence[int],
                  category_image_pixels: Sequence[int]) -> list[float]:
    """Median-frequency balancing (SegNet; Eigen & Fergus 2015), one weight per category.

    freq(c) = pixels of c / pixels of the images in which c is present, and
    weight(c) = median(freq over the evaluated categories present) / freq(c): the median
    category weighs 1, rare ones (human, object) more, dominant ones (flat, sky) less.

    Void is left out of the median, because the benchmark does not score it and the loss
    ignores it by default (`--train-void` aside): counting it would shift every other weight.
    It still gets its own median / freq(void), which only matters when void is trained. A
    category absent from the counts gets 0 (there is nothing to learn from it).

    Args:
      category_pixels: NUM_CATEGORIES pixel counts.
      category_image_pixels: NUM_CATEGORIES counts of the pixels of the images containing
        each category.

    Returns:
      NUM_CATEGORIES weights rounded to 6 decimals; all 0 when no evaluated category is present.
    """
    pixels = np.asarray(category_pixels, dtype=np.float64)
    image_pixels = np.asarray(category_image_pixels, dtype=np.float64)
    if pixels.shape != (V.NUM_CATEGORIES,) or image_pixels.shape != (V.NUM_CATEGORIES,):
        raise ValueError(f"class weights need {V.NUM_CATEGORIES} counts per category, not "
                         f"{pixels.shape} and {image_pixels.shape}")
    present = (pixels > 0) & (image_pixels > 0)
    evaluated = np.zeros(V.NUM_CATEGORIES, dtype=bool)
    evaluated[list(V.EVALUATED_CATEGORIES)] = True
    freq = np.zeros_like(pixels)
    freq[present] = pixels[present] / image_pixels[present]
    if not (present & evaluated).any():
        return [0.0] * V.NUM_CATEGORIES
    median = float(np.median(freq[present & evaluated]))
    weights = np.zeros_like(pixels)
    weights[present] = median / freq[present]
    return [round(float(w), 6) for w in weights]


def split_class_weights(stats: dict[str, Any], split: str = "train") -> list[float] | None:
    """`class_weights` of one split's counts in a stats.json document.

    Returns:
      The weights, or None when the split has no image or stats.json lacks its counts (one
      written before the job counted `category_image_pixels`).
    """
    counts = stats.get(split)
    if not isinstance(counts, dict) or not counts.get("images"):
        return None
    pixels, image_pixels = counts.get("category_pixels"), counts.get("category_image_pixels")
    if pixels is None or image_pixels is None:
        return None
    return class_weights(pixels, image_pixels)


def parse_stats(text: str, where: str | os.PathLike) -> dict[str, Any]:
    """The stats.json document in `text` (read from `where`, named in errors).

    Raises:
      ValueError: if it is not a JSON object.
    """
    try:
        stats = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from None
    if not isinstance(stats, dict):
        raise ValueError(f"{where} must hold a JSON object")
    return stats


def load_stats(data_dir: str | os.PathLike, *, required: bool = True) -> dict[str, Any]:
    """The Beam job's `DATA/stats.json` (per split counts, class weights).

    Args:
      data_dir: the preprocessing output folder: a local path, or a URL of a file system
        TensorFlow reads (`gs://`, `s3://`, ...), which needs TensorFlow installed; this core
        module imports it only then.
      required: when False, a missing file reads as {}.

    Raises:
      FileNotFoundError: if the file is missing and `required`.
      ValueError: if it is not a JSON object.
    """
    text, where = _read_text(data_dir, V.STATS_FILE)
    if text is None:
        if not required:
            return {}
        raise FileNotFoundError(f"no {V.STATS_FILE} in {data_dir} (run cityseg-preprocess first)")
    return parse_stats(text, where)


def _read_text(folder: str | os.PathLike, name: str) -> tuple[str | None, str]:
    """(The text of `folder/name` or None if it is missing, the path read)."""
    folder = os.fspath(folder)
    if "://" not in folder:
        path = Path(folder) / name
        return (path.read_text() if path.is_file() else None), str(path)
    from tensorflow.io import gfile  # a URL: only TensorFlow's file systems read it

    path = gfile.join(folder, name)
    if not gfile.exists(path) or gfile.isdir(path):
        return None, path
    with gfile.GFile(path, "r") as f:
        return f.read(), path
