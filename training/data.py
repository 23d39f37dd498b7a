"""The tf.data input pipeline: sharded TFRecords -> batches of (images, category masks).

Stages are small functions chained in `make_dataset`:

    list_shards -> interleave(TFRecordDataset) -> shuffle -> repeat -> (+ per-example seed)
      -> parse_example -> decode_example -> augment (random scale + crop, flip, colour)
      -> batch -> prefetch

or, with `cache=True`, decode and resize first (once: `resize_example`), then cache, shuffle,
repeat, augment; without augmentation or crop, `resize_example` follows `decode_example`.

Frames keep their stored size and aspect ratio unless `image_size` asks to resize them:
training takes fixed-size crops (`crop_size`), validation whole frames padded to the model's
stride (`pad_to_multiple`). Uncached frames with augmentation or a crop skip `resize_example`:
`augment` draws its window on the frame at `image_size` and resamples only that window of the
decoded pixels, once, to the output size, instead of resizing every pixel of the frame first.

Without a cache, shuffling happens on the serialized records (a few hundred KB each) before
decoding, so the shuffle buffer never holds decoded frames. Every map runs with `AUTOTUNE` parallelism.

Records are written by the Beam job (`cityseg-preprocess`, see CONTRACTS.md): PNG RGB image
(JPEG with `--image-format jpeg`), PNG one-channel category mask (0..7), both of the same stored size.
"""
from __future__ import annotations

import os

import tensorflow as tf

from cityseg import ops
from cityseg import vocabulary as V
from training import augment as augment_lib
from training import storage

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 256
_CYCLE_LENGTH = 8  # shards read at once; more only adds open files

FEATURES = {
    V.FEATURE_ID: tf.io.FixedLenFeature([], tf.string),
    V.FEATURE_CITY: tf.io.FixedLenFeature([], tf.string),
    V.FEATURE_SPLIT: tf.io.FixedLenFeature([], tf.string),
    V.FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string),
    V.FEATURE_LABEL: tf.io.FixedLenFeature([], tf.string),
    V.FEATURE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    V.FEATURE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    V.FEATURE_ORIGINAL_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    V.FEATURE_ORIGINAL_WIDTH: tf.io.FixedLenFeature([], tf.int64),
}


# --- Stages ------------------------------------------------------------------------------

def list_shards(data_dir: str | os.PathLike, split: str) -> list[str]:
    """The sorted TFRecord shard paths of one split under `DATA/tfrecords/{split}/`.

    Sorted so that file order, and with a seed the whole pipeline, is reproducible. `data_dir`
    may be any file system TensorFlow reads (`gs://`, `s3://`, ...; see `training.storage`).

    Raises:
      ValueError: for a split that is not one of `vocabulary.SPLITS`.
      FileNotFoundError: if the split has no shard.
    """
    folder = storage.join(data_dir, V.TFRECORDS_DIR, V.check_split(split))
    shards = storage.glob(storage.join(folder, V.SHARD_GLOB.format(split=split)))
    if not shards:
        raise FileNotFoundError(
            f"no TFRecord shards for split {split!r} in {folder} (run cityseg-preprocess first)")
    return shards


def read_records(shards: list[str], *, shuffle: bool = False, seed: int | None = None,
                 deterministic: bool = True,
                 input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Serialized examples read from several shards at once (parallel interleave).

    With an `input_context`, only this input pipeline's share: whole files when there are
    enough, otherwise every N-th record (cheap: nothing is decoded yet).
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    index = input_context.input_pipeline_id if input_context else 0
    by_file = len(shards) >= pipelines
    # Sharding records (not files) needs the same record order in every pipeline.
    deterministic = deterministic or not by_file
    files = tf.data.Dataset.from_tensor_slices(shards)
    if pipelines > 1 and by_file:
        files = files.shard(pipelines, index)
    if shuffle and by_file:
        files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(_CYCLE_LENGTH, len(shards)),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    if not by_file:
        records = records.shard(pipelines, index)
    return records


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized `tf.train.Example` into the contract's features."""
    return tf.io.parse_single_example(serialized, FEATURES)


def decode_example(features: dict[str, tf.Tensor],
                   image_size: tuple[int, int] | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes image and label: (image uint8 [h, w, 3], label uint8 [H, W] category ids).

    The label is always PNG (lossless category ids). The image is PNG (the contract's format)
    or JPEG: a JPEG whose stored size is at least twice `image_size` is decoded at 1/2 or 1/4
    of its size in the DCT domain (libjpeg's scaled decoding: each output pixel the mean of
    a 2x2 or 4x4 block, what the area resize that follows would compute), which skips most of
    the decoding work; `resize_example` (or `augment`'s crop) then brings it to `image_size`.
    PNG has no such shortcut: it is decoded whole.
    """
    encoded = features[V.FEATURE_IMAGE]
    label = tf.io.decode_png(features[V.FEATURE_LABEL], channels=1, dtype=tf.uint8)[..., 0]

    def png():
        return tf.io.decode_png(encoded, channels=3, dtype=tf.uint8)

    def jpeg(ratio: int):
        return lambda: tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)

    if image_size is None:
        return tf.cond(tf.io.is_jpeg(encoded), jpeg(1), png), label
    stored = tf.stack([features[V.FEATURE_HEIGHT], features[V.FEATURE_WIDTH]])
    target = tf.constant(image_size, tf.int64)
    # The largest scale that keeps at least image_size pixels on both axes.
    ratio = tf.reduce_min(stored // target)
    image = tf.case([(tf.logical_not(tf.io.is_jpeg(encoded)), png),
                     (ratio >= 4, jpeg(4)), (ratio >= 2, jpeg(2))], default=jpeg(1),
                    exclusive=False)
    return image, label


def resize_example(image: tf.Tensor, label: tf.Tensor,
                   image_size: tuple[int, int] | None) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes to `image_size` (image: area/bilinear, label: nearest) and normalises.

    Returns:
      (image float32 [H, W, 3] in [0, 1], label uint8 [H, W]).
    """
    if image_size is not None:
        # A JPEG decoded at a reduced scale often has image_size already: no resize then.
        image = tf.cond(tf.reduce_all(tf.shape(image)[:2] == image_size),
                        lambda: tf.cast(image, tf.float32),
                        lambda: ops.resize_image(image, image_size))
        label = ops.resize_label(label, image_size)
        height, width = image_size
    else:
        height = width = None
    image = tf.ensure_shape(ops.normalize_image(image), [height, width, 3])
    label = tf.ensure_shape(label, [height, width])
    return image, label


def _to_uint8(image: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
    """A resized example in its compact cached form (image back to uint8)."""
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
    return {"image": image, "label": label}


def to_model_inputs(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Final dtypes: images float32 in [0, 1], labels int32 category ids."""
    return tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 1.0), tf.cast(label, tf.int32)


def dataset_options(*, deterministic: bool, sharded: bool = False,
                    autotune: bool = True) -> tf.data.Options:
    """Options making the pipeline deterministic when asked and safe to auto-shard.

    `autotune=False` turns tf.data's autotuning thread off (AUTOTUNE parallelism then stays at
    its start value, one call per core). For a pipeline whose iterator is dropped and made
    again every epoch: Keras' `fit` deletes the validation iterator at the start of each
    evaluation, and deleting one that lived through a training epoch with autotuning on
    waited with no CPU in use, 21 s of an 80 s fastscnn epoch on CamVid (TF 2.21, 2 cores).

    Auto-shard policy DATA: under `MultiWorkerMirroredStrategy.experimental_distribute_dataset`
    every worker keeps every N-th batch. FILE (or AUTO, which tries FILE) is NOT safe here: the
    augmentation seeds come from a second source (`Dataset.random`) zipped in, and FILE
    sharding of that graph silently drops half the data (checked in tests/test_data.py). DATA
    makes every worker decode all records, so for real multi-worker runs pass the
    `input_context` of `strategy.distribute_datasets_from_function` to `make_dataset`, which
    shards shard files (or records) before decoding and turns auto-sharding off (`sharded`).
    """
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = autotune
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if sharded
        else tf.data.experimental.AutoShardPolicy.DATA)
    return options


# --- The pipeline ------------------------------------------------------------------------

def make_dataset(data_dir: str | os.PathLike, split: str, *, batch_size: int,
                 image_size: tuple[int, int] | None = None, augment: bool = False,
                 shuffle: bool = False, seed: int | None = None, repeat: bool = False,
                 drop_remainder: bool = False,
                 augment_config: augment_lib.AugmentConfig | None = None,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 input_context: tf.distribute.InputContext | None = None,
                 cache: bool | str | os.PathLike = False,
                 crop_size: tuple[int, int] | None = None,
                 pad_to_multiple: int | None = None,
                 autotune: bool = True) -> tf.data.Dataset:
    """Batches of (images float32 [B, H, W, 3] in [0, 1], labels int32 [B, H, W]).

    Args:
      data_dir: the Beam job's output folder (holding `tfrecords/`).
      split: `train`, `val` or `test`.
      batch_size: examples per batch (per replica count is the trainer's business).
      image_size: (height, width) every example is resized to; None keeps the stored size,
        which only batches when all records share one size (the Beam job's `--image-size`
        makes them so; with `native` sizes use batch_size=1 or pass a size).
      augment: apply `training.augment.augment` (rotation, crop, blur, flip, colour).
      shuffle: shuffle shard order and records (buffer `shuffle_buffer`).
      seed: makes shuffling and augmentation reproducible; also makes the interleave order
        deterministic. None: fresh randomness each run, nondeterministic order (faster).
      repeat: repeat forever (for `steps_per_epoch` training).
      drop_remainder: drop the last partial batch (static batch dimension).
      augment_config: strengths of the augmentations (default: the seed's set).
      shuffle_buffer: records held by the shuffle buffer.
      input_context: from `strategy.distribute_datasets_from_function`: this pipeline reads
        only its share (whole shard files when there are at least as many shards as input
        pipelines, else every N-th record, in both cases before decoding). `batch_size` is
        then this pipeline's batch (`input_context.get_per_replica_batch_size(global)`).
      cache: keep decoded, resized examples after the first epoch (True: in memory, a path:
        in files there) so later epochs skip PNG decoding, the dominant cost; augmentation
        still draws anew each epoch. Memory: about H*W*4 bytes per example (0.5 MB at
        256x512). The first epoch must be read to its end for the cache to be kept.
      crop_size: (height, width) training crops: each frame is randomly scaled (with
        `augment`, by `augment_config.scale_range`), padded with void where smaller than the
        crop, and cut at a random place, so frames of any size and aspect batch together.
        Without `augment` only the window's place is random.
      pad_to_multiple: pad each frame at the bottom and right to a multiple of this (a model's
        stride) instead of resizing it, and batch frames of different sizes by padding them to
        the largest (image grey, label void, which the loss and metrics ignore): validation
        on whole frames, aspect ratio kept.
      autotune: tf.data autotuning (see `dataset_options`); False for validation inside
        `fit`, whose iterator Keras makes again every epoch.

    Returns:
      The `tf.data.Dataset`, prefetching, with `dataset_options` applied.

    Raises:
      ValueError: for an unknown split or an impossible batch size / image size.
      FileNotFoundError: if the split has no shard.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (height, width) > 0, not {image_size}")
    if crop_size is not None:
        crop_size = tuple(int(s) for s in crop_size)
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f"crop_size must be (height, width) > 0, not {crop_size}")
    if pad_to_multiple is not None and pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, not {pad_to_multiple}")
    config = augment_config or augment_lib.AugmentConfig()
    deterministic = seed is not None
    shards = list_shards(data_dir, split)

    def decode(serialized):
        return decode_example(parse_example(serialized), image_size)

    def decode_and_resize(serialized):
        return resize_example(*decode(serialized), image_size)

    ds = read_records(shards, shuffle=shuffle and not cache, seed=seed,
                      deterministic=deterministic, input_context=input_context)
    if cache:
        # Decode and resize once; later epochs only shuffle, augment and batch. Stored as
        # uint8 (a 256x512 example is 0.5 MB) so the whole Cityscapes train split fits in RAM;
        # the rounding moves pixels by at most 0.5/255.
        ds = ds.map(lambda serialized: _to_uint8(*decode_and_resize(serialized)),
                    num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        ds = ds.cache("" if cache is True else os.fspath(cache))

        def prepare(element):
            return ops.normalize_image(element["image"]), element["label"]

        def load(element):  # for augment, which converts only the pixels it keeps
            return element["image"], element["label"]
        frame_size = None
    else:
        prepare = decode_and_resize
        load, frame_size = decode, image_size
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    if augment or crop_size is not None:
        if not augment:
            config = augment_lib.NO_AUGMENT
        # One [2] seed per example, drawn AFTER shuffle/repeat so every epoch differs while a
        # given `seed` reproduces the whole run; each input pipeline gets its own stream.
        pipeline_seed = seed
        if seed is not None and input_context is not None:
            pipeline_seed = seed + input_context.input_pipeline_id
        seeds = tf.data.Dataset.random(seed=pipeline_seed).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds)

        # augment takes the uint8 frame (cached, or as decoded with frame_size) and resamples
        # only the window it keeps, once, straight to the crop or image_size: converting and
        # resizing the whole frame first is work the crop then throws away.
        def prepare_and_augment(element, example_seed):
            image, label = load(element)
            return to_model_inputs(*augment_lib.augment(image, label, example_seed, config,
                                                        crop_size, frame_size))

        ds = ds.map(prepare_and_augment, num_parallel_calls=AUTOTUNE,
                    deterministic=deterministic)
    else:
        ds = ds.map(lambda element: to_model_inputs(*prepare(element)),
                    num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if pad_to_multiple is not None:
        ds = ds.map(lambda image, label: ops.pad_to_multiple(image, label, pad_to_multiple),
                    num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        ds = ds.padded_batch(batch_size, drop_remainder=drop_remainder,
                             padding_values=(tf.constant(ops.PAD_IMAGE_VALUE, tf.float32),
                                             tf.constant(V.VOID, tf.int32)))
    else:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE,
                      deterministic=deterministic)
    ds = ds.prefetch(AUTOTUNE)
    return ds.with_options(dataset_options(deterministic=deterministic,
                                           sharded=input_context is not None,
                                           autotune=autotune))


def count_examples(data_dir: str | os.PathLike, split: str) -> int:
    """Number of records in a split, counted by reading the shards (no decoding).

    Prefer `cityseg.stats.load_stats(data_dir)[split]['images']` when stats.json is there;
    this is the fallback and the check.
    """
    ds = tf.data.TFRecordDataset(list_shards(data_dir, split))
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())

