"""DATA, RUN, MODELS and REPORT on a non-local file system: TensorFlow's in-memory `ram://`.

`ram://` goes through the same `tf.io.gfile` code path as `gs://` and `s3://` (a URL scheme
resolved by TensorFlow's file system registry), so records -> cityseg-train -> cityseg-export
-> cityseg-evaluate run here end to end without any local file of ours; only Keras' and
matplotlib's own temporary files touch the disk. Every test uses its own `ram://` folder: the
file system lives as long as the process.
"""
from __future__ import annotations

import json
import uuid

import pytest
import tensorflow as tf

from cityseg import vocabulary as V
from cityseg.stats import load_stats
from training import evaluate, export, plots, storage, train
from training import run_layout as layout

from test_train import base_args, write_toy_data

gfile = tf.io.gfile


@pytest.fixture
def ram():
    """A fresh `ram://` folder (left in memory: a few small files, gone with the process)."""
    root = f"ram://cityseg-{uuid.uuid4().hex[:8]}"
    gfile.makedirs(root)
    return root


@pytest.fixture
def remote_data(ram):
    return write_toy_data(f"{ram}/data", counts={"train": 8, "val": 4})


def test_storage_keeps_urls_whole(ram):
    assert storage.join("gs://bucket/data", "tfrecords", "train") == "gs://bucket/data/tfrecords/train"
    assert storage.parent("gs://bucket/models/m/3") == "gs://bucket/models/m"
    assert storage.basename("gs://bucket/models/m/3/") == "3"
    assert storage.is_remote("s3://b/x") and not storage.is_remote("/tmp/x")
    storage.write_json_atomic(f"{ram}/a/b.json", {"x": 1})
    assert json.loads(storage.read_text(f"{ram}/a/b.json")) == {"x": 1}
    assert storage.isfile(f"{ram}/a/b.json") and storage.isdir(f"{ram}/a")


def test_copy_tree_copies_the_named_file_last(tmp_path, ram, monkeypatch):
    (tmp_path / "variables").mkdir()
    for name in ("saved_model.pb", "variables/v.index", "fingerprint.pb"):
        (tmp_path / name).write_text(name)
    copied = []
    real_copy = gfile.copy
    monkeypatch.setattr(gfile, "copy", lambda a, b, overwrite: (copied.append(b),
                                                                real_copy(a, b, overwrite)))
    storage.copy_tree(str(tmp_path), f"{ram}/v", last=("saved_model.pb",))
    assert copied[-1] == f"{ram}/v/saved_model.pb" and len(copied) == 3
    assert storage.read_text(f"{ram}/v/variables/v.index") == "variables/v.index"


def test_stats_and_shards_are_read_from_a_url(remote_data):
    from training import data

    assert load_stats(remote_data)["train"]["images"] == 8
    assert load_stats(f"{remote_data}/nowhere", required=False) == {}
    shards = data.list_shards(remote_data, "train")
    assert shards == [f"{remote_data}/tfrecords/train/{V.shard_name('train', k, 2)}"
                      for k in range(2)]
    images, labels = next(iter(data.make_dataset(remote_data, "train", batch_size=4,
                                                 image_size=(32, 64))))
    assert images.shape == (4, 32, 64, 3) and labels.shape == (4, 32, 64)


@pytest.mark.slow
def test_train_export_evaluate_end_to_end_on_ram(remote_data, ram):
    """Records in ram:// -> one epoch (resumed to two) -> SavedModel -> metrics, all in ram://."""
    run, models, report = f"{ram}/run", f"{ram}/models", f"{ram}/report"
    assert train.main(base_args(remote_data, run, "--epochs", "1")) == 0
    for name in (layout.CONFIG_FILE, layout.BEST_MODEL_FILE, layout.HISTORY_FILE,
                 layout.SUMMARY_FILE,
                 f"{layout.CHECKPOINT_DIR}/{layout.CHECKPOINT_WEIGHTS_FILE}"):
        assert storage.isfile(f"{run}/{name}"), name
    assert gfile.glob(f"{run}/{layout.TENSORBOARD_DIR}/train/events.out.tfevents.*")
    # BackupAndRestore reads its backup from ram:// and CSVLogger appends there.
    assert train.main(["--output-dir", run, "--resume", "--epochs", "2"]) == 0
    history = plots.parse_history(storage.read_text(f"{run}/{layout.HISTORY_FILE}"))
    assert history["epoch"] == [0, 1]
    summary = json.loads(storage.read_text(f"{run}/{layout.SUMMARY_FILE}"))
    assert summary["epochs_done"] == 2 and summary["resumed_from_epoch"] == 1

    assert export.main(["--run-dir", run, "--models-dir", models, "--name", "tiny",
                        "--warmup-images", "1"]) == 0
    version = f"{models}/tiny/1"
    for name in ("saved_model.pb", f"assets/{V.MODEL_INFO_FILE}",
                 f"assets.extra/{V.WARMUP_FILE}"):
        assert storage.isfile(f"{version}/{name}"), name
    assert storage.listdir(f"{models}/tiny") == ["1"]  # no staging folder left behind
    info = json.loads(storage.read_text(f"{version}/assets/{V.MODEL_INFO_FILE}"))
    assert info["training"]["run_dir"] == run and info["training"]["data_dir"] == remote_data

    # The SavedModel loads straight from ram://, as TF Serving loads it from gs://.
    assert evaluate.main(["--data-dir", remote_data, "--model", f"{models}/tiny", "--split",
                          "val", "--report-dir", report, "--batch-size", "2"]) == 0
    metrics = json.loads(storage.read_text(f"{report}/{layout.METRICS_FILE}"))
    assert metrics["model_kind"] == evaluate.SAVED_MODEL and metrics["images"] == 4
    assert metrics["model"] == version
    for name in metrics["plots"]:
        assert storage.isfile(f"{report}/{name}"), name
    # The Keras run folder too, with its training curves read from ram://.
    assert evaluate.main(["--data-dir", remote_data, "--model", run, "--split", "val",
                          "--report-dir", f"{report}-keras", "--batch-size", "2"]) == 0
    keras_metrics = json.loads(storage.read_text(f"{report}-keras/{layout.METRICS_FILE}"))
    assert plots.HISTORY_FILE in keras_metrics["plots"]
    assert keras_metrics["pixel_accuracy"] == pytest.approx(metrics["pixel_accuracy"], abs=1e-3)
