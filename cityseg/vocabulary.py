"""The shared vocabulary of every cityseg stage.

One module owns: the 8 categories and their palette, the official Cityscapes label table
(label id -> category id), the image-id grammar, the raw Cityscapes folder layout, the
TFRecord feature keys and the SavedModel signature/tensor names. Every other package imports
these names; none repeats them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

# --- Categories (Cityscapes `categoryId`) --------------------------------------------------

CATEGORIES: tuple[str, ...] = (
    "void", "flat", "construction", "object", "nature", "sky", "human", "vehicle",
)
NUM_CATEGORIES = len(CATEGORIES)
VOID = 0
# The Cityscapes category-level benchmark averages IoU over the 7 non-void categories.
EVALUATED_CATEGORIES: tuple[int, ...] = tuple(range(1, NUM_CATEGORIES))

# Colours of the category-level Cityscapes visualisations (the colour of each category's
# most common class), so that our masks look like the ones people know.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),        # void
    (128, 64, 128),   # flat (road)
    (70, 70, 70),     # construction (building)
    (153, 153, 153),  # object (pole)
    (107, 142, 35),   # nature (vegetation)
    (70, 130, 180),   # sky
    (220, 20, 60),    # human (person)
    (0, 0, 142),      # vehicle (car)
)


# --- Cityscapes labels (cityscapesscripts.helpers.labels) ---------------------------------

@dataclass(frozen=True)
class Label:
    """One row of the official Cityscapes label table."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    Label("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    Label("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    Label("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    Label("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    Label("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    Label("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    Label("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    Label("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    Label("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    Label("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    Label("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    Label("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    Label("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    Label("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    # Never present in a labelIds PNG (it is only drawn in the colour images).
    Label("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
)
LABEL_BY_NAME: dict[str, Label] = {label.name: label for label in LABELS}
NUM_LABEL_IDS = 34  # valid ids in a labelIds PNG: 0..33

# Lookup table for a labelIds PNG: index = label id (0..255), value = category id, or
# INVALID_LABEL for a value outside the official table (corrupt input, never mapped).
INVALID_LABEL = 255
LABEL_TO_CATEGORY = np.full(256, INVALID_LABEL, dtype=np.uint8)
for _label in LABELS:
    if _label.id >= 0:
        LABEL_TO_CATEGORY[_label.id] = _label.category_id
LABEL_TO_CATEGORY.setflags(write=False)
del _label


class InvalidLabelError(ValueError):
    """A label mask holds values outside the official Cityscapes label ids."""


def remap_labels(label_ids: np.ndarray) -> np.ndarray:
    """Maps a Cityscapes labelIds mask to category ids 0..7.

    Args:
      label_ids: integer array of label ids (any shape).

    Returns:
      uint8 array of the same shape holding category ids.

    Raises:
      InvalidLabelError: if the array is not integer or any value is not one of the ids 0..33.
    """
    ids = np.asarray(label_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise InvalidLabelError(f"label ids must be integers, not {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= NUM_LABEL_IDS):
        bad = np.unique(ids[(ids < 0) | (ids >= NUM_LABEL_IDS)])
        raise InvalidLabelError(
            f"unknown label ids {bad[:8].tolist()} (valid: 0..{NUM_LABEL_IDS - 1})")
    return LABEL_TO_CATEGORY[ids.astype(np.intp)]


def colorize(categories: np.ndarray) -> np.ndarray:
    """Returns an RGB uint8 image [H, W, 3] drawing a category mask [H, W] in the palette.

    Values outside 0..7 (such as an ignore value 255) are drawn in the void colour.
    """
    palette = np.asarray(PALETTE, dtype=np.uint8)
    categories = np.asarray(categories)
    valid = (categories >= 0) & (categories < NUM_CATEGORIES)
    return palette[np.where(valid, categories, VOID).astype(np.intp)]


# --- Image ids and the raw layout ---------------------------------------------------------

SPLITS: tuple[str, ...] = ("train", "val", "test")
# ASCII digits only: `\d` would also accept other scripts' digits, giving one image two ids.
IMAGE_ID_PATTERN = r"[a-z]+(?:-[a-z]+)*_[0-9]{6}_[0-9]{6}"
_IMAGE_ID_RE = re.compile(r"(?P<city>[a-z]+(?:-[a-z]+)*)_(?P<seq>[0-9]{6})_(?P<frame>[0-9]{6})")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
IMAGE_DIR = "leftImg8bit"
LABEL_DIR = "gtFine"
MAX_IMAGE_ID_LENGTH = 64


class InvalidImageIdError(ValueError):
    """A string is not a Cityscapes image id."""


@dataclass(frozen=True, order=True)
class ImageId:
    """A parsed Cityscapes image id `{city}_{seq:06d}_{frame:06d}`."""

    city: str
    seq: int
    frame: int

    def __str__(self) -> str:
        return f"{self.city}_{self.seq:06d}_{self.frame:06d}"


def parse_image_id(text: str) -> ImageId:
    """Parses and validates an image id before anything touches the file system.

    Raises:
      InvalidImageIdError: for anything that is not exactly `{city}_{seq:06d}_{frame:06d}`.
    """
    if not isinstance(text, str) or len(text) > MAX_IMAGE_ID_LENGTH:
        raise InvalidImageIdError("image id must be a short string like frankfurt_000000_000294")
    match = _IMAGE_ID_RE.fullmatch(text)  # fullmatch: no trailing newline slips through
    if match is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidImageIdError(
            f"invalid image id {shown!r}: expected {{city}}_{{seq:06d}}_{{frame:06d}}, "
            "e.g. frankfurt_000000_000294")
    return ImageId(match["city"], int(match["seq"]), int(match["frame"]))


def image_path(split: str, image_id: ImageId | str) -> PurePosixPath:
    """Relative path of a camera image under a Cityscapes root."""
    image_id = _as_id(image_id)
    return PurePosixPath(IMAGE_DIR, check_split(split), image_id.city, f"{image_id}{IMAGE_SUFFIX}")


def label_path(split: str, image_id: ImageId | str) -> PurePosixPath:
    """Relative path of a fine labelIds mask under a Cityscapes root."""
    image_id = _as_id(image_id)
    return PurePosixPath(LABEL_DIR, check_split(split), image_id.city, f"{image_id}{LABEL_SUFFIX}")


def id_from_filename(filename: str, suffix: str) -> ImageId:
    """Parses the image id out of a raw file name ending in `suffix`.

    Raises:
      InvalidImageIdError: if the name does not end in `suffix` or the stem is not an id.
    """
    if not filename.endswith(suffix):
        raise InvalidImageIdError(f"file name {filename!r} does not end in {suffix}")
    return parse_image_id(filename[: -len(suffix)])


def _as_id(image_id: ImageId | str) -> ImageId:
    return image_id if isinstance(image_id, ImageId) else parse_image_id(image_id)


def check_split(split: str) -> str:
    """Returns `split` if it is one of SPLITS: the one check every stage makes of a split name.

    Raises:
      ValueError: `unknown split 'x' (expected one of train, val, test)`; command lines print
        it as their one-line error (`cityseg.cli.run_cli`), the proxy as a 400.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    return split


# --- TFRecord features (preprocessing -> training) ---------------------------------------

FEATURE_ID = "image/id"
FEATURE_CITY = "image/city"
FEATURE_SPLIT = "image/split"
FEATURE_IMAGE = "image/encoded"
FEATURE_LABEL = "label/encoded"
FEATURE_HEIGHT = "image/height"
FEATURE_WIDTH = "image/width"
FEATURE_ORIGINAL_HEIGHT = "image/original_height"
FEATURE_ORIGINAL_WIDTH = "image/original_width"
# How `image/encoded` is encoded: one of IMAGE_FORMATS. PNG is the default and the contract's
# format; `cityseg-preprocess --image-format jpeg` stores JPEG (readers also tell the two apart
# by the bytes). Labels are PNG always: category ids must survive lossless.
FEATURE_FORMAT = "image/format"
IMAGE_FORMATS = ("png", "jpeg")

TFRECORDS_DIR = "tfrecords"
MANIFEST_FILE = "manifest.jsonl"
STATS_FILE = "stats.json"
REJECTED_FILE = "rejected.jsonl"


def shard_name(split: str, index: int, num_shards: int) -> str:
    """File name of one TFRecord shard, e.g. `train-00000-of-00004.tfrecord`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


SHARD_GLOB = "{split}-*-of-*.tfrecord"

# --- SavedModel signature (export -> serving -> clients) ---------------------------------

SIGNATURE_NAME = "serving_default"
INPUT_KEY = "images"
OUTPUT_KEY = "masks"
MODEL_INFO_FILE = "model_info.json"
WARMUP_FILE = "tf_serving_warmup_requests"
