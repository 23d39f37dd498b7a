"""cityseg-evaluate end to end on a tiny DATA dir: Keras file, run folder and SavedModel.

The model is a 1x1 convolution with fixed weights that maps pure colours to categories, so its
predictions are stable; the data is stored at the model's input size, and the labels disagree
with the colours on some pixels, so pixel accuracy is well below 1 and comparable across paths.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cityseg import vocabulary as V
from training import baselines as B
from training import evaluate as E
from training import metrics as M
from training import plots
from training import run_layout as layout

SIZE = (16, 24)
# colour -> category that the fixed model predicts for it
COLOURS = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 4, (0, 0, 255): 5}


def tiny_model():
    """A 1x1 conv: black -> void, red -> flat, green -> nature, blue -> sky, by wide margins."""
    import keras

    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(V.NUM_CATEGORIES, 1, name="colour_to_category")
    outputs = conv(inputs)
    kernel = np.zeros((1, 1, 3, V.NUM_CATEGORIES), np.float32)
    bias = np.full(V.NUM_CATEGORIES, -1.0, np.float32)
    kernel[0, 0, :, 0] = -1.0
    bias[0] = 0.5
    for channel, category in ((0, 1), (1, 4), (2, 5)):
        kernel[0, 0, channel, category] = 2.0
        bias[category] = 0.0
    conv.set_weights([kernel, bias])
    return keras.Model(inputs, outputs)


def make_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random block image of pure colours and its labels, 20% of them replaced at random."""
    colours = np.array(list(COLOURS), np.uint8)
    categories = np.array(list(COLOURS.values()), np.uint8)
    blocks = rng.integers(0, len(colours), (SIZE[0] // 4, SIZE[1] // 4))
    blocks = np.kron(blocks, np.ones((4, 4), np.int64))
    image = colours[blocks]
    label = categories[blocks]
    noisy = rng.random(SIZE) < 0.2
    label[noisy] = rng.integers(0, V.NUM_CATEGORIES, int(noisy.sum()))
    return image, label


def write_split(data_dir, split: str, scenes) -> None:
    folder = data_dir / V.TFRECORDS_DIR / split
    folder.mkdir(parents=True)
    path = folder / V.shard_name(split, 0, 1)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for index, (image, label) in enumerate(scenes):
            feature = {
                V.FEATURE_ID: _bytes(f"testcity_000000_{index:06d}".encode()),
                V.FEATURE_CITY: _bytes(b"testcity"),
                V.FEATURE_SPLIT: _bytes(split.encode()),
                V.FEATURE_IMAGE: _bytes(tf.io.encode_png(image).numpy()),
                V.FEATURE_LABEL: _bytes(tf.io.encode_png(label[..., None]).numpy()),
                V.FEATURE_HEIGHT: _int(SIZE[0]), V.FEATURE_WIDTH: _int(SIZE[1]),
                V.FEATURE_ORIGINAL_HEIGHT: _int(SIZE[0]), V.FEATURE_ORIGINAL_WIDTH: _int(SIZE[1]),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """DATA with val (5 scenes) and train (4); the model as .keras, run folder and SavedModel."""
    from training.export import export_model

    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(7)
    scenes = [make_scene(rng) for _ in range(5)]
    data_dir = root / "data"
    write_split(data_dir, "val", scenes)
    write_split(data_dir, "train", [make_scene(rng) for _ in range(4)])

    model = tiny_model()
    keras_file = root / "tiny.keras"
    model.save(keras_file)
    run_dir = root / "run"
    run_dir.mkdir()
    model.save(run_dir / layout.BEST_MODEL_FILE)
    (run_dir / layout.CONFIG_FILE).write_text(json.dumps({"image_size": list(SIZE)}))
    with open(run_dir / layout.HISTORY_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "val_loss", "mean_iou", "val_mean_iou", "lr", "seconds"])
        for epoch in range(3):
            writer.writerow([epoch, 1.0 / (epoch + 1), 1.2 / (epoch + 1), 0.2 * epoch,
                             0.15 * epoch, 1e-3, 2.0])
    export_dir = Path(export_model(model, root / "models", "tiny", stride=1))

    labels = np.stack([label for _, label in scenes])
    expected_pred = np.stack([np.array([COLOURS[tuple(p)] for p in image.reshape(-1, 3)])
                              .reshape(SIZE) for image, _ in scenes])
    return {"data": data_dir, "keras": keras_file, "run": run_dir, "export": export_dir,
            "expected": M.summarize(M.confusion_matrix(labels, expected_pred)), "root": root}


def evaluate_cli(setup, model, report_dir, *extra) -> dict:
    code = E.main(["--data-dir", str(setup["data"]), "--model", str(model), "--split", "val",
                   "--report-dir", str(report_dir), "--batch-size", "2", *extra])
    assert code == 0
    return json.loads((report_dir / layout.METRICS_FILE).read_text())


def test_keras_file_metrics_match_hand_computed(setup, tmp_path):
    metrics = evaluate_cli(setup, setup["keras"], tmp_path / "report", "--image-size", "16x24")
    expected = setup["expected"]
    assert metrics["images"] == 5
    assert metrics["model_kind"] == E.KERAS
    assert metrics["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-9)
    assert metrics["mean_iou_7"] == pytest.approx(expected["mean_iou_7"], abs=1e-9)
    assert metrics["mean_iou_8"] == pytest.approx(expected["mean_iou_8"], abs=1e-9)
    # 20% noisy labels: clearly below 1, clearly above chance.
    assert 0.7 < metrics["pixel_accuracy"] < 0.95
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (8, 8) and cm.sum() == 5 * SIZE[0] * SIZE[1]
    # Categories the model never predicts and the labels hold only by noise have IoU 0, not null.
    assert metrics["iou"]["human"] == 0.0
    for name in (plots.IOU_FILE, plots.CONFUSION_FILE, plots.OVERLAYS_FILE):
        assert (tmp_path / "report" / name).stat().st_size > 5_000
    assert not (tmp_path / "report" / plots.HISTORY_FILE).exists()


def test_saved_model_matches_keras_model(setup, tmp_path):
    """No train/serve skew: the serving signature scores what the Keras model scores."""
    keras_metrics = evaluate_cli(setup, setup["run"], tmp_path / "keras")
    served = evaluate_cli(setup, setup["export"], tmp_path / "served")
    assert served["model_kind"] == E.SAVED_MODEL
    assert served["resolution"] == "record"
    assert served["images"] == keras_metrics["images"] == 5
    assert served["pixel_accuracy"] == pytest.approx(keras_metrics["pixel_accuracy"], abs=1e-3)
    assert served["mean_iou_7"] == pytest.approx(keras_metrics["mean_iou_7"], abs=1e-3)
    # The run folder's history gives training curves.
    assert (tmp_path / "keras" / plots.HISTORY_FILE).stat().st_size > 5_000
    # MODELS/name (no version) resolves to the newest version.
    assert E.resolve_model(setup["export"].parent).path == str(setup["export"])


def test_max_images_limits_the_count(setup, tmp_path):
    metrics = evaluate_cli(setup, setup["keras"], tmp_path / "r", "--max-images", "3",
                           "--overlays", "0")
    assert metrics["images"] == 3
    assert np.array(metrics["confusion_matrix"]).sum() == 3 * SIZE[0] * SIZE[1]
    assert plots.OVERLAYS_FILE not in metrics["plots"]


@pytest.mark.parametrize("change, message", [
    ({"data": "missing-data"}, "data dir"),
    ({"model": "missing-model"}, "does not exist"),
    ({"split": "test"}, "no TFRecord shards for split 'test'"),
    ({"split": "bogus"}, "unknown split"),
])
def test_errors_are_one_line(setup, tmp_path, capsys, change, message):
    data = tmp_path / change["data"] if "data" in change else setup["data"]
    model = tmp_path / change["model"] if "model" in change else setup["keras"]
    code = E.main(["--data-dir", str(data), "--model", str(model),
                   "--split", change.get("split", "val"), "--report-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("cityseg-evaluate: error:") and message in err
    assert "\n" not in err


def test_resolve_model_rejects_unknown_layouts(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError):
        E.resolve_model(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="holds no"):
        E.resolve_model(tmp_path)


def test_run_image_size_reads_both_spellings(tmp_path):
    (tmp_path / layout.CONFIG_FILE).write_text(json.dumps({"image_size": "64x128"}))
    assert E.run_image_size(tmp_path) == (64, 128)
    (tmp_path / layout.CONFIG_FILE).write_text(json.dumps({"image_size": [32, 48]}))
    assert E.run_image_size(tmp_path) == (32, 48)


# --- The colour baseline ------------------------------------------------------------------

def test_colour_baseline_learns_majority_per_colour_bin():
    baseline = B.ColourBaseline(levels=4)
    images = np.array([[[10, 10, 10], [12, 9, 14], [200, 10, 10], [250, 250, 250]]], np.uint8)
    labels = np.array([[2, 2, 7, 5]])
    baseline.partial_fit(images, labels)
    # The same dark bin seen again mostly as flat: 3 flat against 2 construction.
    baseline.partial_fit(np.full((1, 3, 3), 5, np.uint8), np.full((1, 3), 1))
    assert baseline.bins_seen == 3
    query = np.array([[[0, 0, 0], [230, 30, 30], [255, 255, 255], [0, 255, 0]]], np.uint8)
    # Unseen green falls back to the overall majority (flat: 3 pixels).
    np.testing.assert_array_equal(baseline.predict(query), [[1, 7, 5, 1]])
    # Float images in [0, 1] land in the same bins as their uint8 originals.
    np.testing.assert_array_equal(baseline.predict(query / 255.0), baseline.predict(query))


def test_colour_baseline_rejects_bad_input():
    with pytest.raises(ValueError, match="levels"):
        B.ColourBaseline(levels=1)
    baseline = B.ColourBaseline()
    with pytest.raises(ValueError, match="not been fitted"):
        baseline.predict(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        baseline.partial_fit(np.zeros((1, 2, 3), np.uint8), np.array([[0, 9]]))


def test_colour_baseline_on_records_matches_the_colour_rule(setup, tmp_path):
    """Fitted on train, the baseline recovers colour -> category, scoring as the fixed model."""
    baseline = B.fit_colour_baseline(setup["data"], "train", batch_size=3)
    evaluation = B.evaluate_colour_baseline(baseline, setup["data"], "val", batch_size=2)
    summary = M.summarize(evaluation.cm)
    assert evaluation.images == 5
    assert summary["pixel_accuracy"] == pytest.approx(setup["expected"]["pixel_accuracy"])
    assert B.main(["--data-dir", str(setup["data"]), "--report-dir", str(tmp_path / "b")]) == 0
    written = json.loads((tmp_path / "b" / layout.METRICS_FILE).read_text())
    assert written["model_kind"] == B.BASELINE_NAME
    assert written["pixel_accuracy"] == pytest.approx(summary["pixel_accuracy"])


# --- SavedModels at the raw frames' own resolution -----------------------------------------

RAW_SIZE = (2 * SIZE[0], 2 * SIZE[1])
# label ids drawn for each colour's category (several ids per category: the remap must merge them)
LABEL_IDS = {0: (0, 1, 4), 1: (7, 8, 9), 4: (21, 22), 5: (23,)}


def make_raw_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A raw-size block image of pure colours and its Cityscapes label ids (0..33), 20% noise."""
    colours = np.array(list(COLOURS), np.uint8)
    blocks = rng.integers(0, len(colours), (RAW_SIZE[0] // 8, RAW_SIZE[1] // 8))
    blocks = np.kron(blocks, np.ones((8, 8), np.int64))
    image = colours[blocks]
    categories = np.array(list(COLOURS.values()))[blocks]
    label_ids = np.zeros(RAW_SIZE, np.uint8)
    for category, ids in LABEL_IDS.items():
        where = categories == category
        label_ids[where] = rng.choice(ids, int(where.sum()))
    noisy = rng.random(RAW_SIZE) < 0.2
    label_ids[noisy] = rng.integers(0, V.NUM_LABEL_IDS, int(noisy.sum()))
    return image, label_ids


def write_raw_tree(raw_root, split: str, scenes) -> list[dict]:
    """Writes the scenes as a Cityscapes tree; returns their manifest rows."""
    from PIL import Image

    rows = []
    for index, (image, label_ids) in enumerate(scenes):
        image_id = f"testcity_000000_{index:06d}"
        row = {"image_id": image_id, "split": split, "city": "testcity",
               "image": str(V.image_path(split, image_id)),
               "label": str(V.label_path(split, image_id)),
               "height": RAW_SIZE[0], "width": RAW_SIZE[1]}
        for rel, array in ((row["image"], image), (row["label"], label_ids)):
            (raw_root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(raw_root / rel)
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def raw_setup(setup):
    """A raw tree of 4 val frames at RAW_SIZE; DATA holds them at half size and the manifest."""
    root = setup["root"] / "raw-case"
    rng = np.random.default_rng(11)
    scenes = [make_raw_scene(rng) for _ in range(4)]
    raw_root = root / "cityscapes"
    rows = write_raw_tree(raw_root, "val", scenes)
    data_dir = root / "data"
    # Records as the Beam job would store them at a smaller --image-size (every other pixel).
    write_split(data_dir, "val", [(image[::2, ::2], V.remap_labels(ids)[::2, ::2])
                                  for image, ids in scenes])
    (data_dir / V.MANIFEST_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"data": data_dir, "raw": raw_root, "scenes": scenes, "export": setup["export"],
            "root": root}


def evaluate_raw_cli(raw_setup, report_dir, *extra, data=None) -> dict:
    code = E.main(["--data-dir", str(data or raw_setup["data"]), "--model",
                   str(raw_setup["export"]), "--split", "val", "--report-dir", str(report_dir),
                   "--batch-size", "3", "--overlays", "1", *extra])
    assert code == 0
    return json.loads((report_dir / layout.METRICS_FILE).read_text())


def test_saved_model_scored_at_raw_resolution(raw_setup, tmp_path):
    metrics = evaluate_raw_cli(raw_setup, tmp_path / "r", "--raw-root", str(raw_setup["raw"]))
    # The record pass is unchanged: 4 images at record size, top-level keys as before.
    assert metrics["resolution"] == "record" and metrics["images"] == 4
    assert np.array(metrics["confusion_matrix"]).sum() == 4 * SIZE[0] * SIZE[1]
    raw = metrics["raw"]
    assert raw["resolution"] == E.RAW_RESOLUTION
    assert raw["images"] == 4 and raw["skipped"] == 0 and raw["skipped_reasons"] == {}
    assert raw["raw_root"] == str(raw_setup["raw"])
    cm = np.array(raw["confusion_matrix"])
    # Every raw pixel scored: raw, not record, resolution.
    assert cm.shape == (8, 8) and cm.sum() == 4 * RAW_SIZE[0] * RAW_SIZE[1]
    for key in ("pixel_accuracy", "mean_iou_7", "mean_iou_8", "iou", "iou_non_void", "pixels"):
        assert key in raw
    assert raw["pixels"] == cm.sum()
    # The model follows the colours; 20% of the labels are noise: well above chance, below 1.
    assert 0.6 < raw["pixel_accuracy"] < 0.95
    assert E.RAW_IOU_FILE in metrics["plots"]
    assert (tmp_path / "r" / E.RAW_IOU_FILE).stat().st_size > 5_000


def test_raw_ground_truth_is_the_vocabulary_remap_of_the_label_ids(raw_setup, tmp_path):
    """Confusion-matrix rows (the truth) count the raw label PNGs remapped by the label table."""
    from PIL import Image

    metrics = evaluate_raw_cli(raw_setup, tmp_path / "r", "--raw-root", str(raw_setup["raw"]))
    table = np.zeros(256, np.int64)
    for label in V.LABELS:
        if label.id >= 0:
            table[label.id] = label.category_id
    expected = np.zeros(V.NUM_CATEGORIES, np.int64)
    for path in sorted((raw_setup["raw"] / V.LABEL_DIR).rglob(f"*{V.LABEL_SUFFIX}")):
        ids = np.asarray(Image.open(path))
        expected += np.bincount(table[ids].ravel(), minlength=V.NUM_CATEGORIES)
    cm = np.array(metrics["raw"]["confusion_matrix"])
    np.testing.assert_array_equal(cm.sum(axis=1), expected)
    # Ids 4 (static), 9 (parking), 22 (terrain) were drawn: merged into void, flat, nature.
    assert expected[V.CATEGORIES.index("nature")] > 0 and expected[V.VOID] > 0


def test_raw_rows_with_missing_or_invalid_files_are_skipped(raw_setup, tmp_path, caplog):
    import shutil
    from PIL import Image

    raw_root = tmp_path / "cityscapes"
    shutil.copytree(raw_setup["raw"], raw_root)
    (raw_root / V.label_path("val", "testcity_000000_000001")).unlink()
    # 255 is outside the label ids 0..33: corrupt input, never mapped to a category.
    bad = raw_root / V.label_path("val", "testcity_000000_000002")
    ids = np.asarray(Image.open(bad)).copy()
    ids[0, 0] = 255
    Image.fromarray(ids).save(bad)
    with caplog.at_level("WARNING", logger="cityseg.evaluate"):
        metrics = evaluate_raw_cli(raw_setup, tmp_path / "r", "--raw-root", str(raw_root))
    raw = metrics["raw"]
    assert raw["images"] == 2 and raw["skipped"] == 2
    assert raw["skipped_reasons"] == {E.MISSING_FILE: 1, "unknown_label_ids": 1}
    assert np.array(raw["confusion_matrix"]).sum() == 2 * RAW_SIZE[0] * RAW_SIZE[1]
    assert metrics["images"] == 4  # the record pass is not affected
    warnings = [r.getMessage() for r in caplog.records if "skipped 2" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]


def test_raw_root_defaults_to_stats_and_max_images_applies_to_both(raw_setup, tmp_path):
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(raw_setup["data"], data_dir)
    (data_dir / V.STATS_FILE).write_text(
        json.dumps({E.STATS_INPUT_ROOT_KEY: str(raw_setup["raw"])}))
    metrics = evaluate_raw_cli(raw_setup, tmp_path / "r", "--max-images", "2", data=data_dir)
    assert metrics["images"] == 2 and metrics["raw"]["images"] == 2
    assert metrics["raw"]["raw_root"] == str(raw_setup["raw"])
    assert np.array(metrics["raw"]["confusion_matrix"]).sum() == 2 * RAW_SIZE[0] * RAW_SIZE[1]
    # Without --raw-root and with nothing recorded, the raw pass is skipped, not an error.
    metrics = evaluate_raw_cli(raw_setup, tmp_path / "r2", "--max-images", "1")
    assert "raw" not in metrics and E.RAW_IOU_FILE not in metrics["plots"]


def test_missing_raw_root_is_a_one_line_error(raw_setup, tmp_path, capsys):
    code = E.main(["--data-dir", str(raw_setup["data"]), "--model", str(raw_setup["export"]),
                   "--report-dir", str(tmp_path / "r"), "--raw-root", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("cityseg-evaluate: error: --raw-root") and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_raw_root_without_manifest_is_a_one_line_error(setup, raw_setup, tmp_path, capsys):
    code = E.main(["--data-dir", str(setup["data"]), "--model", str(setup["export"]),
                   "--report-dir", str(tmp_path / "r"), "--raw-root", str(raw_setup["raw"])])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert V.MANIFEST_FILE in err and "\n" not in err
