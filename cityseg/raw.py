"""One image and its label from a raw Cityscapes tree, read and checked the same way everywhere.

The Beam job (`preprocessing/records.py`) reads every pair through `load_pair` before it writes
a record; `cityseg-evaluate` reads the manifest's pairs through it again to score an export at
the camera's own resolution. Expected problems with one input raise `RejectedInput` with a
reason from `REASONS`, which the job writes to rejected.jsonl and the evaluator counts.

File access goes through `tf.io.gfile`, so the same code reads local paths and `gs://` buckets
when the job runs on Dataflow.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterator

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
NOT_REGULAR_FILE = "not_regular_file"
FILE_TOO_LARGE = "file_too_large"
DUPLICATE_IMAGE_ID = "duplicate_image_id"
REASONS: tuple[str, ...] = (
    BAD_FILENAME, IMAGE_WITHOUT_LABEL, LABEL_WITHOUT_IMAGE, UNREADABLE, EMPTY_FILE,
    CORRUPT_PNG, OVER_PIXEL_BUDGET, SIZE_MISMATCH, BAD_LABEL_FORMAT, UNKNOWN_LABEL_IDS,
    NOT_REGULAR_FILE, FILE_TOO_LARGE, DUPLICATE_IMAGE_ID,
)

# How much of a file is read to check its header before the rest is read: a PNG's chunks up
# to the first IDAT (signature, IHDR, usually a few small ancillary chunks) fit in far less.
# A header that needs more (a large colour profile) is read whole, within the size cap below.
HEADER_BYTES = 64 * 1024

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


def max_file_bytes(max_pixels: int) -> int:
    """The largest PNG file the pixel budget admits: 8 bytes a pixel (16-bit RGBA) stored
    uncompressed, one more for row filters and zlib's block overhead, plus 1 MiB of ancillary
    chunks. A Cityscapes frame (2 Mpx, ~2 MB) is far below it at the default budget."""
    return 9 * max_pixels + (1 << 20)


def read_png(input_root: str, rel: str, max_pixels: int,
             ) -> tuple[bytes, image_checks.ImageHeader]:
    """Reads a PNG, checking what it is from its first bytes before reading the rest.

    Only a regular file is opened for reading (a FIFO or a device would block a worker or
    never end); its size and the header in its first HEADER_BYTES are checked (PNG, pixel
    budget, size within `max_file_bytes`) before the file is read whole, so a huge or
    hostile file costs a few kilobytes.

    Returns:
      (data, header).

    Raises:
      RejectedInput: unreadable, not a regular file, empty, not a PNG, broken header, over
        `max_pixels`, or larger than any PNG within the budget.
    """
    limit = max_file_bytes(max_pixels)
    try:
        with _open_regular_file(posixpath.join(input_root, rel)) as (handle, size):
            if size == 0:
                raise RejectedInput(EMPTY_FILE, "file is empty", rel)
            data = handle.read(min(size, HEADER_BYTES))
            if image_checks.sniff_format(data) != "png":
                raise RejectedInput(CORRUPT_PNG, "not a PNG file", rel)
            header = _png_header(data, size, handle, rel)
            if header is None:  # the header goes on past HEADER_BYTES: it was read whole
                data = _read_rest(data, size, handle, limit, rel)
                header = _png_header(data, size, None, rel)
            try:
                image_checks.check_pixel_budget(data, max_pixels)
            except image_checks.ImageHeaderError as err:
                raise RejectedInput(OVER_PIXEL_BUDGET, str(err), rel) from None
            data = _read_rest(data, size, handle, limit, rel)
    except _NotRegularFile as err:
        raise RejectedInput(NOT_REGULAR_FILE, str(err), rel) from None
    except (OSError, tf.errors.OpError) as err:
        raise RejectedInput(UNREADABLE, one_line(err), rel) from None
    return data, header


class _NotRegularFile(Exception):
    """The path names a FIFO, socket, device or directory."""


def _png_header(data: bytes, size: int, handle: BinaryIO | None, rel: str,
                ) -> image_checks.ImageHeader | None:
    """The header read from `data`; None if it was cut short by HEADER_BYTES (the caller
    then reads on); CORRUPT_PNG if it is broken."""
    try:
        return image_checks.read_header(data)
    except image_checks.ImageHeaderError as err:
        if handle is not None and len(data) < size:
            return None
        raise RejectedInput(CORRUPT_PNG, str(err), rel) from None


def _read_rest(head: bytes, size: int, handle: BinaryIO, limit: int, rel: str) -> bytes:
    """`head` plus the rest of the file, refusing more than `limit` bytes in all (the file
    may also have grown since it was measured)."""
    if size > limit:
        raise RejectedInput(
            FILE_TOO_LARGE, f"file is {size} bytes, more than the {limit} bytes a PNG within "
            "the pixel budget can take", rel)
    rest = handle.read(limit - len(head) + 1)
    if len(head) + len(rest) > limit:
        raise RejectedInput(FILE_TOO_LARGE, f"file grew past {limit} bytes while read", rel)
    return head + rest


@contextlib.contextmanager
def _open_regular_file(path: str) -> Iterator[tuple[BinaryIO, int]]:
    """Opens a file for reading only if it is a regular file; yields (handle, size).

    Local paths are opened non-blocking and checked with fstat on the open descriptor (no race
    between the check and the read: opening a FIFO this way returns at once). Other file
    systems (gs://) hold objects only, measured with tf.io.gfile.stat.

    Raises:
      _NotRegularFile: for a FIFO, socket, device or directory.
      OSError, tf.errors.OpError: the file cannot be opened.
    """
    if "://" in path:
        info = tf.io.gfile.stat(path)
        if info.is_directory:
            raise _NotRegularFile("a directory, not a file")
        with tf.io.gfile.GFile(path, "rb") as handle:
            yield handle, info.length
        return
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            mode = info.st_mode
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a device or special file")
            raise _NotRegularFile(f"{kind}, not a regular file")
        handle = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield _ReadFully(handle), info.st_size


class _ReadFully:
    """An unbuffered file whose read(n) returns n bytes unless the file ends first."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle

    def read(self, size: int) -> bytes:
        chunks = []
        while size > 0:
            chunk = self._handle.read(min(size, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


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
