"""cityseg-export round trip: train one tiny epoch, export, load the SavedModel and serve images."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg import vocabulary as V
from test_train import base_args, toy_scene, write_toy_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A RUN from one real training epoch, with an evaluation report where evaluate puts it."""
    from training import train

    root = tmp_path_factory.mktemp("export")
    data = write_toy_data(root / "data", counts={"train": 8, "val": 4})
    run = root / "run"
    assert train.main(base_args(data, run, "--epochs", "1")) == 0
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"mean_iou_7": 0.25, "split": "val"}))
    return run


def _export(capsys, *args: str) -> tuple[int, str, str]:
    from training import export

    code = export.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err.strip()


def _encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def test_export_round_trip_serves_any_size_and_format(run_dir, tmp_path, capsys):
    import tensorflow as tf

    models = tmp_path / "models"
    code, out, _ = _export(capsys, "--run-dir", str(run_dir), "--models-dir", str(models),
                           "--name", "toy")
    assert code == 0
    version_dir = Path(out)
    assert version_dir == models / "toy" / "1" and version_dir.is_dir()

    rng = np.random.default_rng(1)
    rgb, _ = toy_scene(rng, (37, 53))
    jpeg_src, _ = toy_scene(rng, (41, 29))
    inputs = {
        "png_rgb": (_encode(rgb, "PNG"), (37, 53)),
        "jpeg": (_encode(jpeg_src, "JPEG"), (41, 29)),
        "png_gray": (_encode(rng.integers(0, 256, (23, 31), dtype=np.uint8), "PNG"), (23, 31)),
        "png_rgba": (_encode(rng.integers(0, 256, (19, 45, 4), dtype=np.uint8), "PNG"),
                     (19, 45)),
    }
    loaded = tf.saved_model.load(str(version_dir))
    serve = loaded.signatures[V.SIGNATURE_NAME]
    result = serve(**{V.INPUT_KEY: tf.constant([data for data, _ in inputs.values()])})
    masks = result[V.OUTPUT_KEY].numpy()
    assert len(masks) == len(inputs)
    for (name, (_, size)), encoded in zip(inputs.items(), masks):
        mask = np.array(Image.open(io.BytesIO(encoded)))
        assert mask.dtype == np.uint8 and mask.ndim == 2, name
        assert mask.shape == size, name
        assert mask.max() < V.NUM_CATEGORIES, name

    info = json.loads((version_dir / "assets" / V.MODEL_INFO_FILE).read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert info["architecture"]["model"] == "unet" and info["architecture"]["width"] == 4
    assert info["working_resolution"] == {"max_long_side": 1024, "stride": 16,
                                          "aspect_ratio": "kept"}
    assert info["training"]["best_val_mean_iou"] == pytest.approx(summary["best_val_mean_iou"])
    assert info["training"]["weights"] == "best.keras"
    assert info["training"]["stats"]["train"]["images"] == 8
    assert info["evaluation"] == {"mean_iou_7": 0.25, "split": "val"}
    assert info["categories"] == list(V.CATEGORIES)

    warmup = version_dir / "assets.extra" / V.WARMUP_FILE
    records = list(tf.data.TFRecordDataset(str(warmup)))
    assert len(records) == 3


def test_exported_graph_matches_the_keras_model(run_dir, tmp_path, capsys):
    import keras
    import tensorflow as tf

    from training import models as _  # noqa: F401  (registers the custom layers)

    code, out, _ = _export(capsys, "--run-dir", str(run_dir), "--models-dir",
                           str(tmp_path / "m"), "--name", "toy", "--warmup-images", "0")
    assert code == 0
    assert not (Path(out) / "assets.extra").exists()
    image, _ = toy_scene(np.random.default_rng(2), (32, 64))  # already the model's input size
    model = keras.saving.load_model(run_dir / "best.keras", compile=False)
    expected = np.argmax(model(image[None].astype(np.float32) / 255.0), axis=-1)[0]
    serve = tf.saved_model.load(out).signatures[V.SIGNATURE_NAME]
    encoded = serve(**{V.INPUT_KEY: tf.constant([_encode(image, "PNG")])})[V.OUTPUT_KEY][0]
    mask = np.array(Image.open(io.BytesIO(encoded.numpy())))
    assert (mask == expected).mean() > 0.99


def test_versions_increment_and_clash(run_dir, tmp_path, capsys):
    models = tmp_path / "models"
    common = ["--run-dir", str(run_dir), "--models-dir", str(models), "--name", "toy",
              "--warmup-images", "0"]
    assert _export(capsys, *common)[1].endswith("/toy/1")
    assert _export(capsys, *common, "--version", "5")[1].endswith("/toy/5")
    assert _export(capsys, *common)[1].endswith("/toy/6")
    code, _, err = _export(capsys, *common, "--version", "5")
    assert code == 2 and err.startswith("cityseg-export: error:") and "already exists" in err
    assert len(err.splitlines()) == 1
    code, _, err = _export(capsys, *common, "--version", "0")
    assert code == 2 and "positive" in err
    assert sorted(p.name for p in (models / "toy").iterdir()) == ["1", "5", "6"]


def test_falls_back_to_the_last_checkpoint_with_a_warning(run_dir, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "best.keras").unlink()
    code, out, _ = _export(capsys, "--run-dir", str(run), "--models-dir", str(tmp_path / "m"),
                           "--name", "toy", "--warmup-images", "0")
    assert code == 0
    assert "exporting the last checkpoint" in caplog.text
    info = json.loads((Path(out) / "assets" / V.MODEL_INFO_FILE).read_text())
    assert info["training"]["weights"] == "checkpoints/latest.weights.h5"  # BackupAndRestore's


def test_not_a_run_fails_with_one_line(tmp_path, capsys):
    code, _, err = _export(capsys, "--run-dir", str(tmp_path), "--models-dir",
                           str(tmp_path / "m"), "--name", "toy")
    assert code == 2 and "is not a training run" in err and len(err.splitlines()) == 1
    (tmp_path / "config.json").write_text(json.dumps({"model": "unet", "image_size": [32, 64]}))
    code, _, err = _export(capsys, "--run-dir", str(tmp_path), "--models-dir",
                           str(tmp_path / "m"), "--name", "toy")
    assert code == 2 and "neither best.keras" in err


@pytest.mark.parametrize("name", ["unet", "pspnet", "fcn8", "fastscnn", "fastscnn_s4"])
def test_every_architecture_exports_and_serves_any_size(name, tmp_path):
    """The serving graph sees unknown heights and widths: every builder must trace there."""
    import tensorflow as tf

    from training.export import export_model
    from training.models import MODEL_BUILDERS, build_model, model_stride

    assert set(MODEL_BUILDERS) == {"unet", "pspnet", "fcn8", "fastscnn", "fastscnn_s4"}
    stride = model_stride(name)
    model = build_model(name, width=4)
    version = export_model(model, tmp_path, name, stride=stride)
    serve = tf.saved_model.load(str(version)).signatures[V.SIGNATURE_NAME]
    # The four cameras of the real world (CamVid, Cityscapes, 1080p, KITTI) and an odd size,
    # in one request.
    sizes = [(360, 480), (1024, 2048), (1080, 1920), (375, 1242), (45, 71)]
    rng = np.random.default_rng(0)
    images = [_encode(np.kron(rng.integers(0, 255, (-(-h // 16), -(-w // 16), 3), np.uint8),
                              np.ones((16, 16, 1), np.uint8))[:h, :w], "PNG") for h, w in sizes]
    masks = serve(**{V.INPUT_KEY: tf.constant(images)})[V.OUTPUT_KEY].numpy()
    for size, mask in zip(sizes, masks):
        decoded = np.asarray(Image.open(io.BytesIO(mask)))
        assert decoded.shape == size and decoded.max() < V.NUM_CATEGORIES


class _BandProbe:
    """A 'model' whose category at each pixel encodes where the pixel lies in ITS input.

    Category 1 + (7 row / H + 7 col / W) mod 7 over the model's (padded) input: if the graph
    squashed a frame, padded it wrongly or cropped it back wrongly, the bands land elsewhere.
    """

    @staticmethod
    def build():
        import keras
        import tensorflow as tf

        class BandProbe(keras.layers.Layer):
            def call(self, x):
                shape = tf.shape(x)
                rows = tf.range(shape[1]) * 7 // shape[1]
                cols = tf.range(shape[2]) * 7 // shape[2]
                category = 1 + (rows[:, None] + cols[None, :]) % 7
                logits = tf.one_hot(category, V.NUM_CATEGORIES) * 10.0
                return logits[None] + 0.0 * x[..., :1]

        inputs = keras.Input((None, None, 3))
        return keras.Model(inputs, BandProbe()(inputs))

    @staticmethod
    def expected(size, long_side, stride):
        h, w = size
        scale = min(1.0, long_side / max(h, w)) if long_side else 1.0
        hw, ww = max(1, round(h * scale)), max(1, round(w * scale))
        hp, wp = -(-hw // stride) * stride, -(-ww // stride) * stride
        u = np.minimum(((np.arange(h) + 0.5) * hw / h).astype(int), hw - 1)
        v = np.minimum(((np.arange(w) + 0.5) * ww / w).astype(int), ww - 1)
        return 1 + ((u[:, None] * 7 // hp) + (v[None, :] * 7 // wp)) % 7


@pytest.mark.parametrize("long_side", [1024, None])
def test_export_keeps_the_aspect_ratio_of_every_camera(tmp_path, long_side):
    """One request, four cameras: each frame is shrunk with its aspect ratio (long side at
    most 1024), padded to the stride, and its mask cropped and resized back to the frame."""
    import tensorflow as tf

    from training.export import export_model

    version = export_model(_BandProbe.build(), tmp_path, "probe", stride=32,
                           max_long_side=long_side)
    sizes = [(360, 480), (1024, 2048), (1080, 1920), (375, 1242)]
    frames = [_encode(np.full((h, w, 3), 90, np.uint8), "PNG") for h, w in sizes]
    serve = tf.saved_model.load(str(version)).signatures[V.SIGNATURE_NAME]
    masks = serve(**{V.INPUT_KEY: tf.constant(frames)})[V.OUTPUT_KEY].numpy()
    for size, encoded in zip(sizes, masks):
        mask = np.asarray(Image.open(io.BytesIO(encoded)))
        assert mask.shape == size
        agreement = (mask == _BandProbe.expected(size, long_side, 32)).mean()
        assert agreement > 0.99, (size, agreement)
    info = json.loads((Path(version) / "assets" / V.MODEL_INFO_FILE).read_text())
    assert info["working_resolution"]["max_long_side"] == long_side
