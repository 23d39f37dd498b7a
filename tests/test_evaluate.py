"""cityseg-evaluate end to end on a tiny DATA dir: Keras file, run folder and SavedModel.

The model is a 1x1 convolution with fixed weights that maps pure colours to categories, so its
predictions are stable; the data is stored at the model's input size, and the labels disagree
with the colours on some pixels, so pixel accuracy is well below 1 and comparable across paths.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from cityseg import vocabulary as V
from training import baselines as B
from training import evaluate as E
from training import metrics as M
from training import plots

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
    model.save(run_dir / E.RUN_MODEL_FILE)
    (run_dir / E.RUN_CONFIG_FILE).write_text(json.dumps({"image_size": list(SIZE)}))
    with open(run_dir / E.RUN_HISTORY_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "val_loss", "mean_iou", "val_mean_iou", "lr", "seconds"])
        for epoch in range(3):
            writer.writerow([epoch, 1.0 / (epoch + 1), 1.2 / (epoch + 1), 0.2 * epoch,
                             0.15 * epoch, 1e-3, 2.0])
    export_dir = export_model(model, root / "models", "tiny", input_size=SIZE)

    labels = np.stack([label for _, label in scenes])
    expected_pred = np.stack([np.array([COLOURS[tuple(p)] for p in image.reshape(-1, 3)])
                              .reshape(SIZE) for image, _ in scenes])
    return {"data": data_dir, "keras": keras_file, "run": run_dir, "export": export_dir,
            "expected": M.summarize(M.confusion_matrix(labels, expected_pred)), "root": root}


def evaluate_cli(setup, model, report_dir, *extra) -> dict:
    code = E.main(["--data-dir", str(setup["data"]), "--model", str(model), "--split", "val",
                   "--report-dir", str(report_dir), "--batch-size", "2", *extra])
    assert code == 0
    return json.loads((report_dir / E.METRICS_FILE).read_text())


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
    assert E.resolve_model(setup["export"].parent).path == setup["export"]


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
    (tmp_path / E.RUN_CONFIG_FILE).write_text(json.dumps({"image_size": "64x128"}))
    assert E.run_image_size(tmp_path) == (64, 128)
    (tmp_path / E.RUN_CONFIG_FILE).write_text(json.dumps({"image_size": [32, 48]}))
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
    written = json.loads((tmp_path / "b" / E.METRICS_FILE).read_text())
    assert written["model_kind"] == B.BASELINE_NAME
    assert written["pixel_accuracy"] == pytest.approx(summary["pixel_accuracy"])
