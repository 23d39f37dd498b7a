"""`cityseg-preprocess --image-format jpeg`: JPEG camera images in the records, labels PNG.

Real Beam runs (the DirectRunner's in-memory mode, seconds each) on a tiny synthetic street
tree, compared with the PNG run of the same input.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cityseg import vocabulary as vocab
from preprocessing import pipeline, records
from training.data import FEATURES, make_dataset

synth = pytest.importorskip("preprocessing.synth")

IN_MEMORY = ["--direct_running_mode=in_memory"]
SPLITS = ("train", "val")
RAW_SIZE = (128, 256)
SIZE = (64, 128)
# Mean absolute difference (0..255) between the JPEG and the PNG records' images of the same
# frame at the default quality 95: 3.8..4.8 measured on these 64x128 synthetic scenes, which
# hold more edges per pixel than a camera frame (docs/benchmarks/input_pipeline.json measured
# 2.44 at 512x1024). The bound leaves room for another libjpeg build, and is 2.4 % of the range.
MAX_MEAN_ABS_ERROR = 6.0


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    synth.generate(root, cities=1, images_per_city=2, splits=SPLITS, sizes=(RAW_SIZE,), seed=5)
    return root


def _argv(raw_root, out, *extra):
    return ["--input-root", str(raw_root), "--output-dir", str(out), "--splits", ",".join(SPLITS),
            "--image-size", "x".join(map(str, SIZE)), "--num-shards", "2", *extra, *IN_MEMORY]


@pytest.fixture(scope="module")
def png_run(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("png")
    pipeline.run(_argv(raw, out), save_main_session=False)
    return out


@pytest.fixture(scope="module")
def jpeg_run(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("jpeg")
    pipeline.run(_argv(raw, out, "--image-format", "jpeg"), save_main_session=False)
    return out


def _examples(out: Path, split: str) -> dict[str, dict]:
    """{image id: parsed features} of one split's shards."""
    features = {**FEATURES, vocab.FEATURE_FORMAT: tf.io.FixedLenFeature([], tf.string)}
    shards = sorted(tf.io.gfile.glob(str(out / vocab.TFRECORDS_DIR / split / "*.tfrecord")))
    examples = {}
    for record in tf.data.TFRecordDataset(shards):
        parsed = {k: v.numpy() for k, v in tf.io.parse_single_example(record, features).items()}
        examples[parsed[vocab.FEATURE_ID].decode()] = parsed
    return examples


def _all_bytes(out: Path) -> dict[str, bytes]:
    """Every shard and summary file of an output, by relative path (not the lock file)."""
    files = sorted((out / vocab.TFRECORDS_DIR).rglob("*")) + [
        out / name for name in (vocab.MANIFEST_FILE, vocab.STATS_FILE, vocab.REJECTED_FILE)]
    return {str(p.relative_to(out)): p.read_bytes() for p in files if p.is_file()}


def test_jpeg_records_hold_jpeg_images_close_to_png_and_the_same_png_labels(png_run, jpeg_run):
    for split in SPLITS:
        png, jpeg = _examples(png_run, split), _examples(jpeg_run, split)
        assert sorted(jpeg) == sorted(png) and len(jpeg) == 2
        for image_id, example in jpeg.items():
            twin = png[image_id]
            image = example[vocab.FEATURE_IMAGE]
            assert tf.io.is_jpeg(image) and example[vocab.FEATURE_FORMAT] == b"jpeg"
            assert not tf.io.is_jpeg(twin[vocab.FEATURE_IMAGE])
            assert twin[vocab.FEATURE_FORMAT] == b"png"
            # The label is the PNG run's, byte for byte: ids are never stored lossy.
            assert example[vocab.FEATURE_LABEL] == twin[vocab.FEATURE_LABEL]
            assert example[vocab.FEATURE_LABEL].startswith(b"\x89PNG")
            for key in (vocab.FEATURE_HEIGHT, vocab.FEATURE_WIDTH, vocab.FEATURE_ORIGINAL_HEIGHT,
                        vocab.FEATURE_ORIGINAL_WIDTH, vocab.FEATURE_SPLIT, vocab.FEATURE_CITY):
                assert example[key] == twin[key]
            decoded = tf.io.decode_jpeg(image, channels=3).numpy()
            reference = tf.io.decode_png(twin[vocab.FEATURE_IMAGE], channels=3).numpy()
            assert decoded.shape == reference.shape == (*SIZE, 3)
            error = np.abs(decoded.astype(np.int16) - reference).mean()
            assert 0 < error < MAX_MEAN_ABS_ERROR, error

    png_stats = json.loads((png_run / vocab.STATS_FILE).read_text())
    jpeg_stats = json.loads((jpeg_run / vocab.STATS_FILE).read_text())
    assert (png_stats["image_format"], png_stats["jpeg_quality"]) == ("png", None)
    assert (jpeg_stats["image_format"], jpeg_stats["jpeg_quality"]) == ("jpeg", 95)
    # Everything else the job writes is the PNG run's: counts, weights, manifest, rejects.
    for key in ("image_format", "jpeg_quality"):
        del png_stats[key], jpeg_stats[key]
    assert jpeg_stats == png_stats
    for name in (vocab.MANIFEST_FILE, vocab.REJECTED_FILE):
        assert (jpeg_run / name).read_bytes() == (png_run / name).read_bytes()


def test_the_quality_flag_reaches_the_records(raw, jpeg_run, tmp_path):
    out = tmp_path / "q50"
    pipeline.run(_argv(raw, out, "--image-format", "jpeg", "--jpeg-quality", "50",
                       "--splits", "val"), save_main_session=False)
    assert json.loads((out / vocab.STATS_FILE).read_text())["jpeg_quality"] == 50
    low, high = _examples(out, "val"), _examples(jpeg_run, "val")
    for image_id, example in low.items():
        assert tf.io.is_jpeg(example[vocab.FEATURE_IMAGE])
        assert len(example[vocab.FEATURE_IMAGE]) < len(high[image_id][vocab.FEATURE_IMAGE])


def test_jpeg_reruns_are_byte_identical_and_replace_png_splits_like_another_size(
        raw, png_run, jpeg_run, tmp_path):
    """A re-run with another --image-format replaces the splits it re-runs, whole, and keeps
    the others (as one with another --image-size does); stats.json records the last run's."""
    out = tmp_path / "data"
    shutil.copytree(png_run, out)
    png_bytes = _all_bytes(png_run)

    argv = _argv(raw, out, "--image-format", "jpeg")
    argv[argv.index("--splits") + 1] = "val"
    pipeline.run(argv, save_main_session=False)
    after = _all_bytes(out)
    train = [p for p in png_bytes if p.startswith(f"{vocab.TFRECORDS_DIR}/train/")]
    assert train and all(after[p] == png_bytes[p] for p in train)
    assert all(e[vocab.FEATURE_FORMAT] == b"jpeg" for e in _examples(out, "val").values())
    assert json.loads((out / vocab.STATS_FILE).read_text())["image_format"] == "jpeg"

    # Every split re-run as JPEG: the very bytes of the fresh JPEG run, summaries included.
    pipeline.run(_argv(raw, out, "--image-format", "jpeg"), save_main_session=False)
    assert _all_bytes(out) == _all_bytes(jpeg_run)
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_make_dataset_reads_jpeg_records_like_png_ones(png_run, jpeg_run):
    def whole(out):  # seed: the records in their stored order (without one, any order)
        return next(iter(make_dataset(out, "val", batch_size=2, seed=0)))

    (png_images, png_labels), (jpeg_images, jpeg_labels) = whole(png_run), whole(jpeg_run)
    np.testing.assert_array_equal(jpeg_labels.numpy(), png_labels.numpy())
    assert jpeg_images.shape == png_images.shape == (2, *SIZE, 3)
    assert np.abs(jpeg_images.numpy() - png_images.numpy()).mean() * 255 < MAX_MEAN_ABS_ERROR

    # One training batch as cityseg-train reads it: shuffled, augmented, random crops.
    images, labels = next(iter(make_dataset(jpeg_run, "train", batch_size=2, augment=True,
                                            shuffle=True, seed=0, crop_size=(32, 64))))
    assert images.shape == (2, 32, 64, 3) and images.dtype == tf.float32
    assert labels.shape == (2, 32, 64) and labels.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0


@pytest.mark.parametrize("extra, message", [
    (["--image-format", "webp"], "--image-format must be one of png, jpeg, not 'webp'"),
    (["--image-format", "jpeg", "--jpeg-quality", "0"], "--jpeg-quality must be 1..100, not 0"),
    (["--image-format", "jpeg", "--jpeg-quality", "101"],
     "--jpeg-quality must be 1..100, not 101"),
    (["--jpeg-quality", "80"], "--jpeg-quality applies to --image-format jpeg only"),
])
def test_bad_image_format_flags_exit_2_with_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "raw").mkdir()
    code = pipeline.main(_argv(tmp_path / "raw", tmp_path / "data", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"cityseg-preprocess: error: {message}"]
    assert not (tmp_path / "data").exists()


def test_help_documents_the_image_format_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # whatever width argparse wrapped to
    assert "--image-format {png,jpeg}" in text and "--jpeg-quality 1..100" in text
    assert "Labels are PNG always" in text


def test_encode_jpeg_is_deterministic_and_decodes_close():
    rng = np.random.default_rng(0)
    # A smooth image: what a camera gives, and where quality 95 is near-lossless.
    ramp = np.linspace(0, 255, 64)
    image = np.stack([np.add.outer(ramp[:32] / 2, ramp / 2)] * 3, axis=-1)
    image = np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)
    encoded = records.encode_image(image, "jpeg", 95)
    assert encoded == records.encode_jpeg(image, 95) and tf.io.is_jpeg(encoded)
    assert np.abs(tf.io.decode_jpeg(encoded).numpy().astype(np.int16) - image).mean() < 2
    assert records.encode_image(image) == records.encode_png(image, records.IMAGE_PNG_COMPRESSION)
    with pytest.raises(ValueError, match="image format must be one of png, jpeg"):
        records.encode_image(image, "webp")


def test_evaluate_sends_jpeg_records_to_the_model_as_stored_and_scores_them(jpeg_run):
    """`cityseg-evaluate` on an exported model reads the records itself (not make_dataset)."""
    from training.evaluate import evaluate_saved_model

    sent = []

    def serve(**inputs):  # the model says "flat" everywhere
        batch = inputs[vocab.INPUT_KEY].numpy()
        sent.extend(batch)
        flat = records.encode_png(np.full(SIZE, 1, np.uint8))
        return {vocab.OUTPUT_KEY: tf.constant([flat] * len(batch))}

    evaluation = evaluate_saved_model("unused", str(jpeg_run), "val", batch_size=2,
                                      num_samples=2, serve=serve)
    assert evaluation.images == 2 and len(sent) == 2 and all(map(tf.io.is_jpeg, sent))
    assert evaluation.cm.sum() == 2 * SIZE[0] * SIZE[1]
    assert evaluation.cm[:, 1].sum() == evaluation.cm.sum()  # every pixel predicted flat
    for (image, _, _, _), encoded in zip(evaluation.samples, sent):
        np.testing.assert_array_equal(image, tf.io.decode_jpeg(encoded, channels=3).numpy())
