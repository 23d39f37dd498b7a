"""One image and its label from a raw Cityscapes tree, read and checked the same way everywhere.

The Beam job (`preprocessing/records.py`) reads every pair through `load_pair` before it writes
a record; `cityseg-evaluate` reads the manifest's pairs through it again to score an export at
the camera's own resolution. Expected problems with one input raise `RejectedInput` with a
reason from `REASONS`, which the job writes to rejected.jsonl and the evaluator counts.

File access goes through `tf.io.gfile`, so the same code reads local paths and `gs://` buckets
when the job runs on Dataflow.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from cityseg import images as image_checks
from cityseg import vocabulary as vocab

# --- Reasons an input is rejected (dead-letter `reason`, one Beam counter each) -----------
BAD_FILENAME = "bad_filename"
IMAGE_WITHOUT_LABEL = "image_without_label"
LABEL_WITHOUT_IMAGE = "label_without_image"
UNREADABLE = "unreadable_file"
EMPTY_FILE = "empty_file"
CORRUPT_PNG = "corrupt_png"
OVER_PIXEL_BUDGET = "over_pixel_budget"
SIZE_MISMATCH = "size_mismatch"
BAD_LABEL_FORMAT = "bad_label_format"
UNKNOWN_LABEL_IDS = "unknown_label_ids"
REASONS: tuple[str, ...] = (
    BAD_FILENAME, IMAGE_WITHOUT_LABEL, LABEL_WITHOUT_IMAGE, UNREADABLE, EMPTY_FILE,
    CORRUPT_PNG, OVER_PIXEL_BUDGET, SIZE_MISMATCH, BAD_LABEL_FORMAT, UNKNOWN_LABEL_IDS,
)

# A labelIds mask is 8-bit greyscale. Anything else would be silently reinterpreted by a
# decoder: RGB colour masks, 16-bit, palette, and 1/2/4-bit greyscale, whose ids every PNG
# decoder scales up to 0..255 (a 4-bit id 1 comes out as 17).
LABEL_RAW_MODE = "L"


@dataclass(frozen=True, order=True)
class Pair:
    """An image and its labelIds mask found under the raw root (paths relative to it)."""

    split: str
    image_id: str
    city: str
    image: str
    label: str


@dataclass(frozen=True, order=True)
class Reject:
    """One rejected input: the dead-letter line written to rejected.jsonl."""

    path: str
    reason: str
    detail: str
    split: str = ""
    image_id: str | None = None

    def to_json(self) -> dict:
        """The JSON object of one rejected.jsonl line."""
        return {"path": self.path, "image_id": self.image_id, "split": self.split,
                "reason": self.reason, "detail": self.detail}


class RejectedInput(Exception):
    """One input cannot become a training example; carries the dead-letter reason."""

    def __init__(self, reason: str, detail: str, path: str):
        super().__init__(f"{path}: {reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.path = path

    def to_reject(self, pair: Pair) -> Reject:
        """The dead-letter record for `pair`."""
        return Reject(self.path, self.reason, self.detail, pair.split, pair.image_id)


def read_png(input_root: str, rel: str, max_pixels: int,
             ) -> tuple[bytes, image_checks.ImageHeader]:
    """Reads a PNG and checks its header (size, pixel budget) before anything decodes it.

    Returns:
      (data, header).

    Raises:
      RejectedInput: unreadable, empty, not a PNG, broken header, or over `max_pixels`.
    """
    try:
        with tf.io.gfile.GFile(posixpath.join(input_root, rel), "rb") as handle:
            data = handle.read()
    except (OSError, tf.errors.OpError) as err:
        raise RejectedInput(UNREADABLE, one_line(err), rel) from None
    if not data:
        raise RejectedInput(EMPTY_FILE, "file is empty", rel)
    if image_checks.sniff_format(data) != "png":
        raise RejectedInput(CORRUPT_PNG, "not a PNG file", rel)
    try:
        header = image_checks.read_header(data)
    except image_checks.ImageHeaderError as err:
        raise RejectedInput(CORRUPT_PNG, str(err), rel) from None
    try:
        image_checks.check_pixel_budget(data, max_pixels)
    except image_checks.ImageHeaderError as err:
        raise RejectedInput(OVER_PIXEL_BUDGET, str(err), rel) from None
    return data, header


def load_pair(input_root: str, pair: Pair, max_pixels: int = image_checks.DEFAULT_MAX_PIXELS,
              ) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Reads, validates and decodes one pair.

    Sizes and formats are checked on the headers first, so a mismatched or oversized pair is
    rejected without decoding a pixel.

    Returns:
      (the image file's bytes, image uint8 [H, W, 3], label ids uint8 [H, W]).

    Raises:
      RejectedInput: with the reason the pair cannot be used.
    """
    image_data, image = read_png(input_root, pair.image, max_pixels)
    label_data, label = read_png(input_root, pair.label, max_pixels)
    if (label.height, label.width) != (image.height, image.width):
        raise RejectedInput(
            SIZE_MISMATCH,
            f"image is {image.height}x{image.width} but its label is "
            f"{label.height}x{label.width}", pair.image)
    if label.raw_mode != LABEL_RAW_MODE:
        raise RejectedInput(
            BAD_LABEL_FORMAT,
            f"labelIds must be an 8-bit greyscale PNG, not {label.raw_mode!r} pixels", pair.label)
    pixels = _decode(image_data, 3, pair.image)
    label_ids = _decode(label_data, 1, pair.label)[..., 0]
    return image_data, pixels, label_ids


def _decode(data: bytes, channels: int, rel: str) -> np.ndarray:
    try:
        return tf.io.decode_png(data, channels=channels, dtype=tf.uint8).numpy()
    except tf.errors.InvalidArgumentError as err:
        raise RejectedInput(CORRUPT_PNG, one_line(err.message), rel) from None


def to_category_mask(label_ids: np.ndarray, rel: str = "") -> np.ndarray:
    """Maps a labelIds mask to category ids 0..7 (cityseg.vocabulary.remap_labels).

    Raises:
      RejectedInput: `unknown_label_ids` if a value is outside the official table; such a
        mask is corrupt and is never mapped to a guess.
    """
    try:
        return vocab.remap_labels(label_ids)
    except vocab.InvalidLabelError as err:
        raise RejectedInput(UNKNOWN_LABEL_IDS, str(err), rel) from None


def read_jsonl(path: str) -> list[dict]:
    """Reads a JSON-lines file (the manifest, rejected.jsonl); a missing file is empty."""
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, "r") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def one_line(err: object) -> str:
    """An error's text on one line, at most 300 characters (a dead-letter `detail`)."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + "..."
