"""Per-record work of `cityseg-preprocess`: discover, validate, decode, remap, resize, encode.

Every function here handles one file, one pair or one shard and knows nothing about Beam, so it
is tested with plain pytest and reused as is by the Beam transforms in preprocessing/pipeline.py
and by benchmarks/preprocess_bench.py. Reading and checking one raw pair is `cityseg.raw`'s
(the evaluator reads pairs the same way); expected problems with one input raise
`raw.RejectedInput` with a reason from `raw.REASONS`, which the pipeline turns into a
dead-letter line.

File access goes through `tf.io.gfile` so that the same code reads and writes local paths and
`gs://` buckets when the job runs on Dataflow.
"""
from __future__ import annotations

import fnmatch
import json
import math
import posixpath
import uuid
import zlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from cityseg import images as image_checks
from cityseg import ops
from cityseg import vocabulary as vocab
from cityseg.raw import (
    BAD_FILENAME, DUPLICATE_IMAGE_ID, IMAGE_WITHOUT_LABEL, LABEL_WITHOUT_IMAGE, Pair, Reject, load_pair, read_jsonl,
    to_category_mask,
)
from cityseg.stats import CLASS_WEIGHTS_METHOD, split_class_weights

# Half the Cityscapes resolution (2048x1024): what the trainers read by default.
DEFAULT_IMAGE_SIZE: tuple[int, int] = (512, 1024)
# ~100 images per shard is ~80-100 MB of PNG at 512x1024, inside the 10 MB..1 GB range that
# keeps tf.data reads sequential and still gives the trainers enough files to interleave.
IMAGES_PER_SHARD = 100


@dataclass(frozen=True)
class Encoded:
    """One accepted pair: the serialised tf.train.Example plus what the summaries need."""

    split: str
    image_id: str
    example: bytes
    manifest: dict
    category_pixels: tuple[int, ...]


# --- Discovery ------------------------------------------------------------------------------

def discover(input_root: str, splits: Sequence[str], cities: Sequence[str] | None = None,
             ) -> tuple[list[Pair], list[Reject]]:
    """Lists the raw tree and pairs each camera image with its labelIds mask.

    Only names are listed (no file is opened), so this runs on the launching machine even for
    the full data set, and its count sizes the shards before the pipeline starts.

    Args:
      input_root: the Cityscapes root holding leftImg8bit/ and gtFine/.
      splits: splits to read.
      cities: if given, only these city folders.

    Every split is listed, even those not in `splits`, so that an image id found in two
    splits is caught whichever splits a run reads (see `drop_duplicate_ids`).

    Returns:
      (pairs, rejects), both sorted: rejects are the names that do not parse, the images
      or masks that have no partner, and the pairs whose id is in another split too.
    """
    pairs: list[Pair] = []
    rejects: list[Reject] = []
    ids_by_split: dict[str, set[str]] = {}
    wanted = set(cities) if cities else None
    for split in vocab.SPLITS:
        images = _list_split(input_root, vocab.IMAGE_DIR, split, wanted)
        # gtFine also holds *_color.png, *_instanceIds.png and *_polygons.json: only the
        # labelIds masks are ours to read.
        labels = [rel for rel in _list_split(input_root, vocab.LABEL_DIR, split, wanted)
                  if rel.endswith(vocab.LABEL_SUFFIX)]
        ids_by_split[split] = _ids(images, vocab.IMAGE_SUFFIX) | _ids(labels, vocab.LABEL_SUFFIX)
        if split in splits:
            split_pairs, split_rejects = pair_files(split, images, labels)
            pairs += split_pairs
            rejects += split_rejects
    pairs, duplicates = drop_duplicate_ids(pairs, ids_by_split)
    return sorted(pairs), sorted(rejects + duplicates)


def drop_duplicate_ids(pairs: Iterable[Pair], ids_by_split: dict[str, set[str]],
                       ) -> tuple[list[Pair], list[Reject]]:
    """Rejects every pair whose image id is also found in another split.

    The rule: an image id belongs to one split; one found in several is rejected in all of
    them (`duplicate_image_id`), never kept in one. Which copy is right cannot be told from the
    names, a frame in both train and val would leak into the evaluation, and the manifest (and
    the proxy that serves it) must list each id once.

    Args:
      pairs: the pairs found.
      ids_by_split: every image id named (image or mask) under each split.

    Returns:
      (the pairs kept, one reject per pair dropped).
    """
    kept, rejects = [], []
    for pair in pairs:
        others = [s for s in vocab.SPLITS
                  if s != pair.split and pair.image_id in ids_by_split.get(s, ())]
        if others:
            rejects.append(Reject(
                pair.image, DUPLICATE_IMAGE_ID,
                f"image id also under split {', '.join(others)}; an id found in several "
                "splits is rejected in all of them", pair.split, pair.image_id))
        else:
            kept.append(pair)
    return kept, rejects


def _ids(paths: Iterable[str], suffix: str) -> set[str]:
    """The image ids of the names that parse (the others are pair_files' bad_filename)."""
    ids = set()
    for rel in paths:
        try:
            ids.add(str(_id_of(rel, suffix)))
        except vocab.InvalidImageIdError:
            continue
    return ids


def pair_files(split: str, images: Iterable[str], labels: Iterable[str],
               ) -> tuple[list[Pair], list[Reject]]:
    """Pairs image and label paths (relative to the raw root) of one split by image id.

    Returns:
      (pairs, rejects) sorted; a name whose id does not parse, or whose city is not its
      folder's, is `bad_filename`; an unmatched file is `image_without_label` or
      `label_without_image`.
    """
    rejects: list[Reject] = []
    found: list[dict[str, str]] = []
    for paths, suffix in ((images, vocab.IMAGE_SUFFIX), (labels, vocab.LABEL_SUFFIX)):
        by_id: dict[str, str] = {}
        for rel in paths:
            try:
                image_id = _id_of(rel, suffix)
            except vocab.InvalidImageIdError as err:
                rejects.append(Reject(rel, BAD_FILENAME, str(err), split))
                continue
            by_id[str(image_id)] = rel
        found.append(by_id)
    image_by_id, label_by_id = found
    pairs = []
    for image_id, image in image_by_id.items():
        label = label_by_id.get(image_id)
        if label is None:
            rejects.append(Reject(image, IMAGE_WITHOUT_LABEL,
                                  f"no {vocab.LABEL_DIR}/.../{image_id}{vocab.LABEL_SUFFIX}",
                                  split, image_id))
        else:
            city = vocab.parse_image_id(image_id).city
            pairs.append(Pair(split, image_id, city, image, label))
    for image_id in label_by_id.keys() - image_by_id.keys():
        rejects.append(Reject(label_by_id[image_id], LABEL_WITHOUT_IMAGE,
                              f"no {vocab.IMAGE_DIR}/.../{image_id}{vocab.IMAGE_SUFFIX}",
                              split, image_id))
    return sorted(pairs), sorted(rejects)


def _list_split(root: str, kind: str, split: str, cities: set[str] | None) -> list[str]:
    """Paths (relative to root) of the files in `root/kind/split/<city>/`."""
    base = posixpath.join(root, kind, split)
    if not tf.io.gfile.isdir(base):
        return []
    out = []
    for city in sorted(tf.io.gfile.listdir(base)):
        city = city.rstrip("/")
        if cities is not None and city not in cities:
            continue
        city_dir = posixpath.join(base, city)
        if not tf.io.gfile.isdir(city_dir):
            continue
        for name in sorted(tf.io.gfile.listdir(city_dir)):
            if not name.endswith("/"):
                out.append(posixpath.join(kind, split, city, name))
    return out


def _id_of(rel: str, suffix: str) -> vocab.ImageId:
    folder, name = posixpath.split(rel)
    image_id = vocab.id_from_filename(name, suffix)
    if image_id.city != posixpath.basename(folder):
        raise vocab.InvalidImageIdError(
            f"city {image_id.city!r} of {name} is not its folder {posixpath.basename(folder)!r}")
    return image_id


# --- One pair -------------------------------------------------------------------------------

def resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int] | None,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Resizes an image and its category mask to `size` (None keeps the native size).

    The image goes through cityseg.ops.resize_image (area when shrinking, bilinear when
    enlarging), rounded back to uint8; the mask through resize_label (nearest, always), so
    that records hold exactly what the training and serving graphs would compute.
    """
    if size is None or tuple(size) == image.shape[:2]:
        return image, mask
    resized = ops.resize_image(tf.convert_to_tensor(image), size)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()
    return resized, ops.resize_label(tf.convert_to_tensor(mask), size).numpy()


# zlib level for the camera images in the records. Level 1 encodes a 512x1024 photo about 5x
# faster than the default (30 ms against 160 ms here, the most expensive step of the job) for
# a file about 7 % larger; decoding speed is the same. Labels keep the default: they are flat,
# small and cheap to encode at any level.
IMAGE_PNG_COMPRESSION = 1


def encode_png(array: np.ndarray, compression: int = -1) -> bytes:
    """PNG-encodes a uint8 [H, W] or [H, W, C] array (deterministic for a given array).

    Args:
      array: the pixels.
      compression: zlib level 0..9, or -1 for zlib's default.
    """
    if array.ndim == 2:
        array = array[..., np.newaxis]
    return tf.io.encode_png(array, compression=compression).numpy()


# JPEG quality of the camera images when the records store JPEG (`--image-format jpeg`). At 95
# the images decode within 2.44 of the PNG records' pixels on average (0..255), and the
# uncached augmented training input reads 79.1 images/s against 39.9 from PNG
# (docs/benchmarks/input_pipeline.json, which runs this job with --image-format jpeg).
DEFAULT_JPEG_QUALITY = 95


def encode_jpeg(array: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """JPEG-encodes a uint8 [H, W, 3] image, deterministic for a given array and quality.

    Every option of tf.io.encode_jpeg is spelt out (baseline, not optimised, 4:2:0 chroma,
    no metadata), so that the bytes of a re-run never depend on a library default.
    """
    return tf.io.encode_jpeg(array, format="rgb", quality=quality, progressive=False,
                             optimize_size=False, chroma_downsampling=True, density_unit="in",
                             x_density=300, y_density=300, xmp_metadata="").numpy()


def encode_image(image: np.ndarray, image_format: str = "png",
                 jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """The record's camera image: PNG at IMAGE_PNG_COMPRESSION, or JPEG at `jpeg_quality`.

    Raises:
      ValueError: for a format not in vocabulary.IMAGE_FORMATS.
    """
    if image_format == "png":
        return encode_png(image, IMAGE_PNG_COMPRESSION)
    if image_format == "jpeg":
        return encode_jpeg(image, jpeg_quality)
    raise ValueError(f"image format must be one of {', '.join(vocab.IMAGE_FORMATS)}, "
                     f"not {image_format!r}")


def to_example(pair: Pair, image_encoded: bytes, label_png: bytes, size: tuple[int, int],
               original_size: tuple[int, int], image_format: str = "png") -> tf.train.Example:
    """Builds the contract's tf.train.Example for one encoded pair.

    Args:
      image_format: how `image_encoded` is encoded ("png" or "jpeg"), stored as image/format.
    """
    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    return tf.train.Example(features=tf.train.Features(feature={
        vocab.FEATURE_ID: _bytes(pair.image_id.encode()),
        vocab.FEATURE_CITY: _bytes(pair.city.encode()),
        vocab.FEATURE_SPLIT: _bytes(pair.split.encode()),
        vocab.FEATURE_IMAGE: _bytes(image_encoded),
        vocab.FEATURE_FORMAT: _bytes(image_format.encode()),
        vocab.FEATURE_LABEL: _bytes(label_png),
        vocab.FEATURE_HEIGHT: _int(size[0]),
        vocab.FEATURE_WIDTH: _int(size[1]),
        vocab.FEATURE_ORIGINAL_HEIGHT: _int(original_size[0]),
        vocab.FEATURE_ORIGINAL_WIDTH: _int(original_size[1]),
    }))


def manifest_row(pair: Pair, original_size: tuple[int, int]) -> dict:
    """One manifest.jsonl line: the raw image's id, split, city, paths and size."""
    return {"image_id": pair.image_id, "split": pair.split, "city": pair.city,
            "image": pair.image, "label": pair.label,
            "height": int(original_size[0]), "width": int(original_size[1])}


def encode_pair(input_root: str, pair: Pair, image_size: tuple[int, int] | None,
                max_pixels: int = image_checks.DEFAULT_MAX_PIXELS, image_format: str = "png",
                jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> Encoded:
    """The whole per-pair work: load, validate, remap, resize, encode, serialise.

    The image is encoded as `image_format` (`encode_image`); the label is PNG always.

    Raises:
      cityseg.raw.RejectedInput: with the reason the pair cannot be used.
    """
    _, image, label_ids = load_pair(input_root, pair, max_pixels)
    original_size = image.shape[:2]
    mask = to_category_mask(label_ids, pair.label)
    image, mask = resize_pair(image, mask, image_size)
    example = to_example(pair, encode_image(image, image_format, jpeg_quality), encode_png(mask),
                         image.shape[:2], original_size, image_format)
    counts = np.bincount(mask.ravel(), minlength=vocab.NUM_CATEGORIES)
    return Encoded(
        split=pair.split, image_id=pair.image_id,
        # Deterministic serialisation orders the feature map, so reruns are byte-identical.
        example=example.SerializeToString(deterministic=True),
        manifest=manifest_row(pair, original_size),
        category_pixels=tuple(int(c) for c in counts))


# --- Shards ---------------------------------------------------------------------------------

def shard_for(image_id: str, num_shards: int) -> int:
    """The shard of an image: a stable hash of its id (crc32), never Python's salted hash()."""
    return zlib.crc32(image_id.encode("utf-8")) % num_shards


def auto_num_shards(num_images: int) -> int:
    """Default shard count of a split: one per IMAGES_PER_SHARD images, at least 1."""
    return max(1, math.ceil(num_images / IMAGES_PER_SHARD))


def shard_path(output_dir: str, split: str, index: int, num_shards: int) -> str:
    """DATA/tfrecords/{split}/{split}-00000-of-000NN.tfrecord."""
    return posixpath.join(output_dir, vocab.TFRECORDS_DIR, split,
                          vocab.shard_name(split, index, num_shards))


def write_atomically(path: str, chunks: Iterable[bytes]) -> None:
    """Writes a file under a temporary name, then renames it, so no reader sees half a file."""
    tf.io.gfile.makedirs(posixpath.dirname(path))
    tmp = _temp_name(path)
    with tf.io.gfile.GFile(tmp, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_shard(path: str, records: Iterable[bytes]) -> int:
    """Writes serialised examples, in the given order, as one TFRecord file (atomically).

    Returns:
      the number of records written.
    """
    tf.io.gfile.makedirs(posixpath.dirname(path))
    tmp = _temp_name(path)
    count = 0
    with tf.io.TFRecordWriter(tmp) as writer:
        for record in records:
            writer.write(record)
            count += 1
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return count


def _temp_name(path: str) -> str:
    # Unique per write, so that two writers of one path never share a temporary file.
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")


def remove_stale_shards(output_dir: str, split: str, num_shards: int) -> list[str]:
    """Deletes the shards of `split` that are not part of a `num_shards` set (an earlier
    run with another count) and leftover temporary files.

    Returns:
      the removed paths.
    """
    folder = posixpath.join(output_dir, vocab.TFRECORDS_DIR, split)
    if not tf.io.gfile.isdir(folder):
        return []
    keep = {vocab.shard_name(split, i, num_shards) for i in range(num_shards)}
    pattern = vocab.SHARD_GLOB.format(split=split)
    removed = []
    for name in sorted(tf.io.gfile.listdir(folder)):
        stale_shard = name not in keep and fnmatch.fnmatchcase(name, pattern)
        leftover_temp = name.startswith(".") and name.endswith(".tmp")
        if stale_shard or leftover_temp:
            tf.io.gfile.remove(posixpath.join(folder, name))
            removed.append(posixpath.join(folder, name))
    return removed


# --- Summaries ------------------------------------------------------------------------------

def split_stats(category_pixels: Iterable[Sequence[int]]) -> dict:
    """Sums image and per-category pixel counts of one split (the Beam combine adds these up).

    Args:
      category_pixels: one count vector [NUM_CATEGORIES] per accepted image.

    Returns:
      {"images", "category_pixels", "category_image_pixels"}; the last is, per category, the
      pixels of the images in which it appears (the median-frequency denominator).
    """
    stats = {"images": 0, "category_pixels": [0] * vocab.NUM_CATEGORIES,
             "category_image_pixels": [0] * vocab.NUM_CATEGORIES}
    for counts in category_pixels:
        stats["images"] += 1
        total = int(sum(counts))
        for c, count in enumerate(counts):
            stats["category_pixels"][c] += int(count)
            if count:
                stats["category_image_pixels"][c] += total
    return stats


def merge_split_stats(parts: Iterable[dict]) -> dict:
    """Adds up partial split stats."""
    out = split_stats(())
    for part in parts:
        out["images"] += part["images"]
        for key in ("category_pixels", "category_image_pixels"):
            out[key] = [a + b for a, b in zip(out[key], part[key])]
    return out


def stats_document(splits: dict[str, dict], image_size: tuple[int, int] | None,
                   image_format: str = "png", jpeg_quality: int | None = None) -> dict:
    """The stats.json document: one entry per split (the contract's layout:
    `stats[split]["images"]`, `stats[split]["category_pixels"]`) and the class weights of
    train (`cityseg.stats.class_weights`, the formula the trainer uses too).

    `image_size`, `image_format` and `jpeg_quality` (None unless JPEG) are the settings of
    the run that wrote the file, as given on its command line."""
    weights = split_class_weights(splits, "train")
    return {
        "categories": list(vocab.CATEGORIES),
        "image_size": list(image_size) if image_size else "native",
        "image_format": image_format,
        "jpeg_quality": jpeg_quality if image_format == "jpeg" else None,
        **{name: splits[name] for name in sorted(splits)},
        "class_weights": weights,
        "class_weights_method": CLASS_WEIGHTS_METHOD,
        "class_weights_split": "train",
    }


def dumps_jsonl(rows: Iterable[dict]) -> bytes:
    """JSON lines with sorted keys, one object per line (stable bytes for stable input)."""
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode("utf-8")


def merge_jsonl(path: str, rows: Iterable[dict], splits: Sequence[str], sort_key) -> list[dict]:
    """Rows of this run plus the lines of an earlier run's file for splits not re-run.

    Re-running one split (say val) must not drop train from the manifest; lines of the
    re-run splits are replaced.
    """
    kept = [row for row in read_jsonl(path) if row.get("split") not in set(splits)]
    return sorted(kept + list(rows), key=sort_key)

