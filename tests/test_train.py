"""cityseg-train end to end on a tiny toy DATA dir: learning, time limit, resume, config errors.

`write_toy_data` and the `trained_run` fixture are shared with test_export.py and
test_multiworker.py (imported from here; tests/ is on sys.path under pytest).
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from cityseg import vocabulary as V
from training import run_layout as layout

TOY_SIZE = (32, 64)
# Each category gets its own base colour so a tiny network can learn the scenes in a few steps.
_COLOURS = {
    V.CATEGORIES.index("void"): (0, 0, 0),
    V.CATEGORIES.index("flat"): (128, 64, 128),
    V.CATEGORIES.index("construction"): (110, 110, 110),
    V.CATEGORIES.index("nature"): (60, 160, 40),
    V.CATEGORIES.index("sky"): (90, 150, 230),
    V.CATEGORIES.index("human"): (230, 30, 60),
    V.CATEGORIES.index("vehicle"): (20, 20, 160),
    V.CATEGORIES.index("object"): (230, 220, 20),
}


def toy_scene(rng: np.random.Generator, size=TOY_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A street-like scene: (RGB uint8 [H, W, 3], category ids uint8 [H, W])."""
    h, w = size
    label = np.full((h, w), V.CATEGORIES.index("sky"), np.uint8)
    horizon = int(rng.integers(h // 3, h // 2))
    label[horizon:] = V.CATEGORIES.index("flat")
    x0 = int(rng.integers(0, w // 2))
    label[h // 6:horizon, x0:x0 + w // 3] = V.CATEGORIES.index("construction")
    label[horizon - 4:horizon, :w // 6] = V.CATEGORIES.index("nature")
    cx = int(rng.integers(0, w - 16))
    label[horizon + 2:horizon + 9, cx:cx + 14] = V.CATEGORIES.index("vehicle")
    px = int(rng.integers(0, w - 3))
    label[horizon - 6:horizon + 4, px:px + 3] = V.CATEGORIES.index("human")
    label[h // 8:horizon, w - 4:w - 3] = V.CATEGORIES.index("object")
    label[h - 3:] = V.VOID  # the ego vehicle's bonnet
    palette = np.array([_COLOURS[c] for c in range(V.NUM_CATEGORIES)], np.int16)
    image = palette[label] + rng.integers(-20, 21, size=(h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


def _example(image: np.ndarray, label: np.ndarray, image_id: str, split: str):
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    h, w = label.shape
    return tf.train.Example(features=tf.train.Features(feature={
        V.FEATURE_ID: b(image_id.encode()),
        V.FEATURE_CITY: b(image_id.split("_")[0].encode()),
        V.FEATURE_SPLIT: b(split.encode()),
        V.FEATURE_IMAGE: b(tf.io.encode_png(image).numpy()),
        V.FEATURE_LABEL: b(tf.io.encode_png(label[..., None]).numpy()),
        V.FEATURE_HEIGHT: i(h), V.FEATURE_WIDTH: i(w),
        V.FEATURE_ORIGINAL_HEIGHT: i(h * 4), V.FEATURE_ORIGINAL_WIDTH: i(w * 4),
    }))


def write_toy_data(root: Path | str, counts=None, size=TOY_SIZE, num_shards: int = 2,
                   seed: int = 0) -> Path:
    """Writes a DATA dir per the contract: tfrecords/{split}/ shards and stats.json.

    Through tf.io.gfile, so `root` may also be a URL (`ram://...` in tests/test_remote_fs.py).
    """
    import tensorflow as tf

    counts = counts or {"train": 16, "val": 4}
    rng = np.random.default_rng(seed)
    stats = {}
    for split, n in counts.items():
        folder = tf.io.gfile.join(str(root), V.TFRECORDS_DIR, split)
        tf.io.gfile.makedirs(folder)
        writers = [tf.io.TFRecordWriter(
                       tf.io.gfile.join(folder, V.shard_name(split, k, num_shards)))
                   for k in range(num_shards)]
        pixels = np.zeros(V.NUM_CATEGORIES, np.int64)
        image_pixels = np.zeros(V.NUM_CATEGORIES, np.int64)
        for k in range(n):
            image, label = toy_scene(rng, size)
            counts = np.bincount(label.ravel(), minlength=V.NUM_CATEGORIES)
            pixels += counts
            image_pixels += np.where(counts > 0, label.size, 0)
            example = _example(image, label, f"toycity_{k // 100:06d}_{k % 100:06d}", split)
            writers[k % num_shards].write(example.SerializeToString())
        for writer in writers:
            writer.close()
        stats[split] = {"images": n, "category_pixels": pixels.tolist(),
                        "category_image_pixels": image_pixels.tolist()}
    with tf.io.gfile.GFile(tf.io.gfile.join(str(root), V.STATS_FILE), "w") as f:
        f.write(json.dumps(stats))
    return root


def base_args(data: Path, run: Path, *extra: str) -> list[str]:
    """Flags of a tiny, fast run (U-Net width 4 at 32x64, no XLA compile wait)."""
    return ["--data-dir", str(data), "--output-dir", str(run), "--model", "unet", "--width", "4",
            "--image-size", "32x64", "--batch-size", "4", "--no-jit", "--no-augment",
            "--learning-rate", "0.01", "--lr-schedule", "constant", *extra]


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    return write_toy_data(tmp_path_factory.mktemp("toy") / "data")


# The trained_run fixture's recipe: a poly schedule with a peak high enough to learn the toy
# scenes in 12 steps.
TRAINED_PEAK_LR, TRAINED_WARMUP = 0.03, 0.05


@pytest.fixture(scope="session")
def trained_run(toy_data, tmp_path_factory) -> Path:
    """A RUN folder from a short real training: 1 epoch, then --resume up to 3 epochs.

    Shared by several tests (train, resume, export), so the slow part runs once.
    """
    from training import train

    run = tmp_path_factory.mktemp("trained") / "run"
    assert train.main(base_args(toy_data, run, "--epochs", "1", "--lr-schedule", "poly",
                                "--learning-rate", str(TRAINED_PEAK_LR),
                                "--warmup", str(TRAINED_WARMUP))) == 0
    assert [int(r["epoch"]) for r in _history(run)] == [0]
    assert (run / layout.CHECKPOINT_DIR / layout.CHECKPOINT_WEIGHTS_FILE).is_file()
    # Only the output dir and the new epoch count: the rest comes from RUN/config.json.
    assert train.main(["--output-dir", str(run), "--resume", "--epochs", "3"]) == 0
    return run


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def _val_mean_iou(data_dir: Path, predict) -> float:
    """The trainer's validation figure (mean IoU over 7 categories) of `predict` on val."""
    from training import data, metrics

    metric = metrics.MeanIoU()
    for images, labels in data.make_dataset(data_dir, "val", batch_size=4, image_size=TOY_SIZE):
        metric.update_state(labels, predict(images, labels))
    return float(metric.result())


@pytest.mark.slow
def test_training_learns_more_than_the_majority_class_and_an_untrained_net(trained_run,
                                                                           toy_data):
    import keras
    import tensorflow as tf

    from training import models

    stats = json.loads((toy_data / V.STATS_FILE).read_text())
    majority = 1 + int(np.argmax(stats["train"]["category_pixels"][1:]))
    # Logits that always say the train split's most common category.
    majority_iou = _val_mean_iou(toy_data, lambda images, labels: tf.one_hot(
        tf.fill(tf.shape(labels), majority), V.NUM_CATEGORIES))
    keras.utils.set_random_seed(0)  # the run's own seed: the weights it started from
    untrained = models.build_model("unet", width=4)
    untrained_iou = _val_mean_iou(toy_data, lambda images, _: untrained(images, training=False))

    rows = _history(trained_run)
    best = max(float(r["val_mean_iou"]) for r in rows)
    assert best > max(majority_iou, untrained_iou) + 0.02, (best, majority_iou, untrained_iou)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


@pytest.mark.slow
def test_the_learning_rate_follows_the_poly_schedule_across_resume(trained_run):
    from training.schedules import learning_rate_at

    # `lr` is the rate of each epoch's last step (4 steps an epoch). The first run planned 1
    # epoch, the resumed one 3, and the schedule follows the plan of the run it is in.
    planned = {0: 4, 1: 12, 2: 12}
    for row in _history(trained_run):
        epoch = int(row["epoch"])
        progress = ((epoch + 1) * 4 - 1) / planned[epoch]
        expected = learning_rate_at(progress, TRAINED_PEAK_LR, "poly", warmup=TRAINED_WARMUP)
        assert float(row["lr"]) == pytest.approx(expected, rel=1e-5)
    lrs = [float(r["lr"]) for r in _history(trained_run)]
    assert lrs[2] < lrs[1] < TRAINED_PEAK_LR  # decaying within the resumed run's plan


@pytest.mark.slow
def test_training_writes_the_run_layout(trained_run):
    rows = _history(trained_run)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(float(row["seconds"]) > 0 for row in rows)
    assert (trained_run / "best.keras").is_file()
    assert any((trained_run / "tensorboard").rglob("events.out.tfevents.*"))

    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["epochs_done"] == 3 and summary["stopped_by"] == "epochs"
    best = max(rows, key=lambda r: float(r["val_mean_iou"]))
    assert summary["best_val_mean_iou"] == pytest.approx(float(best["val_mean_iou"]), abs=1e-6)
    assert summary["best_epoch"] == int(best["epoch"]) + 1
    assert summary["best_val_loss"] == pytest.approx(float(best["val_loss"]), abs=1e-6)
    assert summary["training_seconds"] == pytest.approx(
        sum(float(r["seconds"]) for r in rows), abs=0.01)
    assert summary["params"] > 0

    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"] == "unet" and config["image_size"] == [32, 64]
    assert config["steps_per_epoch"] == 4  # 16 train images / batch 4


def _best_checkpoint_score(run: Path, data_dir: Path) -> float:
    """best.keras's mean IoU on val, batched as the trainer validates."""
    import keras

    from training import data, metrics, models  # noqa: F401  (registers the custom layers)

    model = keras.saving.load_model(run / "best.keras", compile=False)
    metric = metrics.MeanIoU()
    # The trainer's order and batches (seeded = a fixed order): CPU kernels' results depend on
    # the batch a frame is in.
    for images, labels in data.make_dataset(data_dir, "val", batch_size=4, image_size=TOY_SIZE,
                                            seed=0):
        metric.update_state(labels, model(images, training=False))
    return float(metric.result())


@pytest.mark.slow
def test_best_checkpoint_is_the_best_epoch(trained_run, toy_data):
    score = _best_checkpoint_score(trained_run, toy_data)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert score == pytest.approx(summary["best_val_mean_iou"], abs=1e-4)
    assert score > 0.0


@pytest.mark.slow
def test_time_limit_stops_early_and_keeps_best(toy_data, tmp_path):
    from cityseg.stats import split_class_weights
    from training import train

    run = tmp_path / "run"
    # 0.001 min is spent after the first batch; the epoch is still validated and saved.
    assert train.main(base_args(toy_data, run, "--epochs", "50", "--time-limit", "0.001",
                                "--loss", "weighted_ce")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "time_limit"
    assert summary["epochs_done"] == 1
    assert (run / "best.keras").is_file()
    assert len(_history(run)) == 1
    # The weighted loss got the one class-weight formula, from the train split's counts.
    config = json.loads((run / "config.json").read_text())
    stats = json.loads((toy_data / V.STATS_FILE).read_text())
    assert config["class_weights"] == split_class_weights(stats, "train")


@pytest.mark.slow
def test_resume_continued_from_the_last_epoch_with_optimizer_state(trained_run):
    import keras

    from training import losses, models

    rows = _history(trained_run)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["epochs_done"] == 3 and summary["resumed_from_epoch"] == 1
    # Adam's step counter continued: 3 epochs of 4 steps (16 images, batch 4).
    model = models.build_model("unet", width=4)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=losses.make_loss("ce"))
    model.optimizer.build(model.trainable_variables)
    model.load_weights(trained_run / layout.CHECKPOINT_DIR / layout.CHECKPOINT_WEIGHTS_FILE)
    assert int(model.optimizer.iterations) == 12
    config = json.loads((trained_run / "config.json").read_text())
    assert config["resume"] is True and config["width"] == 4 and config["epochs"] == 3


@pytest.mark.slow
def test_resume_cannot_change_the_architecture(trained_run, capsys):
    from training import train

    assert train.main(["--output-dir", str(trained_run), "--resume", "--width", "8"]) == 2
    assert "cannot change width" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_cannot_add_a_weight_average(trained_run, capsys):
    from training import train

    assert train.main(["--output-dir", str(trained_run), "--resume", "--ema", "0.9"]) == 2
    assert "cannot turn --ema on or off (0.0 -> 0.9)" in capsys.readouterr().err


def test_ema_weights_are_in_the_model_only_for_the_callbacks_inside_the_window():
    import keras

    from training import callbacks as cb

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.AdamW(0.1, use_ema=True, ema_momentum=0.9),
                  loss="mse")
    seen: dict[str, list[list[np.ndarray]]] = {"before": [], "inside": [], "after": []}

    def recorder(where):
        return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen[where].append(
            [np.array(w) for w in model.get_weights()]))

    def averages():
        return [np.array(v) for v in model.optimizer._model_variables_moving_average]

    inside_averages = []
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    model.fit(x, x[:, :2] * 3.0, batch_size=8, epochs=3, verbose=0, callbacks=[
        recorder("before"),
        *cb.with_ema_weights([recorder("inside"), keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: inside_averages.append(averages()))]),
        recorder("after")])

    # Before the last epoch: the average inside (the trained weights parked in the optimizer's
    # slots meanwhile), the trained weights outside, and the two differ. Keras swaps by
    # additions (no third copy), which may round the last bit.
    for epoch in (0, 1):
        for before, inside, after, parked in zip(seen["before"][epoch], seen["inside"][epoch],
                                                 seen["after"][epoch], inside_averages[epoch]):
            np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(parked, before, rtol=1e-6, atol=1e-7)
            assert not np.allclose(inside, before, rtol=1e-3)
    # Training went on from the trained weights, not from the average.
    assert not np.allclose(seen["before"][1][0], seen["inside"][0][0])


@pytest.mark.slow
def test_with_ema_best_checkpoint_holds_the_average_that_validation_scored(toy_data, tmp_path):
    from training import train

    run, plain = tmp_path / "ema", tmp_path / "plain"
    assert train.main(base_args(toy_data, run, "--epochs", "2", "--ema", "0.5")) == 0
    assert train.main(base_args(toy_data, plain, "--epochs", "2")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert _best_checkpoint_score(run, toy_data) == pytest.approx(summary["best_val_mean_iou"],
                                                                  abs=1e-4)
    assert json.loads((run / "config.json").read_text())["ema"] == 0.5
    # The same first epoch of training (same seed, the average does not steer it), but
    # validated on other weights: the average.
    ema_epoch, plain_epoch = _history(run)[0], _history(plain)[0]
    assert float(ema_epoch["loss"]) == pytest.approx(float(plain_epoch["loss"]), rel=1e-6)
    assert float(ema_epoch["val_loss"]) != pytest.approx(float(plain_epoch["val_loss"]),
                                                         rel=1e-3)


def test_starting_over_an_existing_run_without_resume_is_refused(toy_data, tmp_path, capsys):
    from training import train

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert train.main(base_args(toy_data, run)) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [
    (["--model", "nosuchnet"], "unknown model"),
    (["--loss", "nosuchloss"], "unknown --loss 'nosuchloss' (choose from ce, ohem"),
    (["--crop-size", "30x64"], "not divisible by 16"),
    (["--scale-range", "2,1"], "--scale-range must be 0 < MIN <= MAX"),
    (["--rotation", "200"], "--rotation must be in [0, 180]"),
    (["--warmup", "1"], "--warmup must be a fraction"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--epochs", "-1"], "--epochs must be positive"),
    (["--time-limit", "0"], "--time-limit must be positive"),
    (["--ema", "1"], "--ema must be a momentum in [0, 1)"),
    (["--val-split", "test"], "no TFRecord shards for split 'test'"),
])
def test_impossible_configs_fail_with_one_line(change, message, toy_data, tmp_path, capsys):
    from training import train

    run = tmp_path / "run"
    assert train.main(base_args(toy_data, run, *change)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cityseg-train: error:") and message in err
    assert len(err.splitlines()) == 1
    assert not (run / "config.json").exists()


@pytest.mark.slow
def test_default_loss_is_weighted_ohem_lovasz_and_falls_back_without_category_counts(
        toy_data, tmp_path, capsys, caplog):
    from cityseg.stats import split_class_weights
    from training import train

    run = tmp_path / "run"
    assert train.main(base_args(toy_data, run, "--epochs", "1")) == 0
    config = json.loads((run / "config.json").read_text())
    stats = json.loads((toy_data / V.STATS_FILE).read_text())
    assert config["loss"] == "weighted_ohem+lovasz"
    assert config["class_weights"] == split_class_weights(stats, "train")
    # A stats.json written before the job counted categories: the default trains unweighted.
    old = tmp_path / "old"
    shutil.copytree(toy_data, old)
    (old / V.STATS_FILE).write_text(json.dumps(
        {k: ({"images": v["images"]} if k in V.SPLITS else v) for k, v in stats.items()}))
    with caplog.at_level(logging.WARNING, logger="cityseg.train"):
        assert train.main(base_args(old, tmp_path / "run2", "--epochs", "1")) == 0
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["loss"] == "ohem+lovasz"
    assert "training with ohem+lovasz (plain OHEM)" in caplog.text
    # Asked for by name, the weighted loss refuses, in one line, before training.
    assert train.main(base_args(old, tmp_path / "run3", "--loss", "weighted_ohem+lovasz")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--loss weighted_ohem+lovasz needs" in err[0]
    assert not (tmp_path / "run3" / "config.json").exists()


def test_missing_data_dir_and_resume_of_nothing_fail(tmp_path, capsys):
    from training import train

    assert train.main(base_args(tmp_path / "nope", tmp_path / "run")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train.main(["--output-dir", str(tmp_path / "run"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_cluster_from_tf_config(monkeypatch):
    from cityseg.cli import CliError
    from training.cluster import resolve_cluster

    spec = {"cluster": {"worker": ["localhost:1", "localhost:2"]},
            "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(spec))
    other = resolve_cluster()
    assert other.num_workers == 2 and not other.is_chief
    spec["task"]["index"] = 0
    monkeypatch.setenv("TF_CONFIG", json.dumps(spec))
    assert resolve_cluster().is_chief
    spec["cluster"]["chief"] = ["localhost:3"]
    monkeypatch.setenv("TF_CONFIG", json.dumps(spec))
    assert not resolve_cluster().is_chief and resolve_cluster().num_workers == 3
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(CliError, match="TF_CONFIG"):
        resolve_cluster()
    monkeypatch.delenv("TF_CONFIG")
    alone = resolve_cluster()
    assert alone.is_chief and alone.num_workers == 1


def test_xla_by_default_on_a_gpu_only():
    from training.config import TrainConfig
    from training.train import use_xla

    def xla(model, *, gpu=False, multi=False, **flags):
        return use_xla(TrainConfig(data_dir="d", model=model, **flags), gpu=gpu, multi=multi)

    # On CPU XLA was the trainer's slow path for every model measured; a GPU compiles them.
    assert not any(xla(m) for m in ("fastscnn", "pspnet", "unet", "fcn8"))
    assert xla("fastscnn", gpu=True)
    # The flags win; XLA never with several workers or mixed bfloat16 on CPU.
    assert xla("fastscnn", jit_compile=True) and not xla("unet", gpu=True, jit_compile=False)
    assert not xla("unet", jit_compile=True, multi=True)
    assert not xla("unet", jit_compile=True, mixed_precision=True)
    assert xla("unet", gpu=True, mixed_precision=True)


def test_flags_come_from_the_config_fields():
    import dataclasses

    from training.config import TrainConfig, build_parser, parse_config

    cfg, explicit, verbose = parse_config(["--data-dir", "d", "--lr", "0.5", "--no-jit",
                                           "--no-aux", "--crop-size", "64x96", "-v"])
    assert (cfg.learning_rate, cfg.jit_compile, cfg.aux_heads, cfg.crop_size) == (
        0.5, False, False, (64, 96))
    assert explicit == {"data_dir", "learning_rate", "jit_compile", "aux_heads", "crop_size"}
    assert verbose
    # Everything not given is the field's default, declared once.
    defaults = TrainConfig()
    assert cfg.batch_size == defaults.batch_size and cfg.scale_range == defaults.scale_range
    flags = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("flag")}
    dests = {action.dest for action in build_parser()._actions}
    assert flags <= dests and "class_weights" not in dests


def test_help_has_examples(capsys):
    from training import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--time-limit" in out and "TF_CONFIG" in out
    before = ("--data-dir --output-dir --model --width --image-size --crop-size --scale-range "
              "--rotation --batch-size --epochs --steps-per-epoch --validation-steps "
              "--learning-rate --lr --lr-schedule --warmup --weight-decay --ema --loss --no-aux "
              "--train-void --no-augment --no-cache --mixed-precision --jit --no-jit "
              "--time-limit --seed --resume --train-split --val-split --weights --verbose")
    assert all(name in out for name in before.split())
    flat = " ".join(out.split())  # argparse wraps to the terminal's width
    assert "(default: 0.5,2.0)" in flat and "(default: poly)" in flat


@pytest.mark.slow
def test_learning_rate_reaches_its_floor_when_the_time_runs_out(toy_data, tmp_path):
    """Under --time-limit the schedule follows the time, not the (never reached) epochs."""
    from training import train

    run = tmp_path / "run"
    # One step per epoch, so the learning rate is logged often and the last step falls
    # close to the end of the 45 s (set-up and tracing count too: on a loaded 2-core machine the
    # first epoch alone took 28 s, so 30 s left too few epochs to see the schedule).
    args = base_args(toy_data, run, "--epochs", "10000", "--time-limit", "0.75",
                     "--steps-per-epoch", "1", "--lr-schedule", "poly", "--warmup", "0.1")
    assert train.main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "time_limit" and summary["epochs_done"] < 10000
    lrs = [float(r["lr"]) for r in _history(run)]
    assert len(lrs) >= 3
    peak = 0.01
    assert max(lrs) > 0.3 * peak
    # The last batch began with at most a few percent of the 45 s left: near the 1 % floor.
    assert lrs[-1] < 0.1 * peak and lrs[-1] >= 0.01 * peak * 0.999
    assert summary["train_images_per_second"] > 0


@pytest.fixture(scope="module")
def camera_data(tmp_path_factory) -> Path:
    """Records of a 4:3 camera at 360x480 (CamVid's size), not divisible by 16 or 32."""
    return write_toy_data(tmp_path_factory.mktemp("cam") / "data", counts={"train": 2, "val": 1},
                          size=(360, 480), num_shards=1)


@pytest.mark.slow
@pytest.mark.parametrize("name,width", [("unet", 4), ("pspnet", 4), ("fcn8", 2),
                                        ("fastscnn", 8), ("fastscnn_s4", 8)])
def test_one_training_step_of_every_architecture_on_360x480_records(
        name, width, camera_data, tmp_path):
    """No resizing by hand: crops a multiple of the stride, validation on the whole frame."""
    from training import models, train

    run = tmp_path / "run"
    assert train.main(["--data-dir", str(camera_data), "--output-dir", str(run), "--model", name,
                       "--width", str(width), "--batch-size", "2", "--epochs", "1",
                       "--steps-per-epoch", "1", "--no-jit"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    stride = models.model_stride(name)
    crop = summary["crop_size"]
    assert crop[0] % stride == 0 and crop[1] % stride == 0 and crop[0] <= 360
    assert summary["epochs_done"] == 1
    # Validation ran on the whole 360x480 frames (padded to the stride, cropped back).
    row = _history(run)[0]
    assert row["val_mean_iou"] not in ("", "NA") and float(row["val_loss"]) > 0
    model = models.load_model(run / "best.keras")
    assert model.output.shape[-1] == V.NUM_CATEGORIES  # the inference model: no aux heads
