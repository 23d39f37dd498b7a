"""Tests of the Beam job preprocessing/pipeline.py: its transforms, a full run, its CLI.

In-process runs use the DirectRunner's in-memory mode (seconds each); one slow test runs the
console script as the README does (worker processes) on a synthetic tree.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline as beam_testing
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from cityseg import raw as raw_pairs
from cityseg import vocabulary as vocab
from preprocessing import pipeline, records

IN_MEMORY = ["--direct_running_mode=in_memory"]
SIZE = (16, 32)
FEATURES = {
    vocab.FEATURE_ID: tf.io.FixedLenFeature([], tf.string),
    vocab.FEATURE_CITY: tf.io.FixedLenFeature([], tf.string),
    vocab.FEATURE_SPLIT: tf.io.FixedLenFeature([], tf.string),
    vocab.FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string),
    vocab.FEATURE_LABEL: tf.io.FixedLenFeature([], tf.string),
    vocab.FEATURE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    vocab.FEATURE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    vocab.FEATURE_ORIGINAL_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    vocab.FEATURE_ORIGINAL_WIDTH: tf.io.FixedLenFeature([], tf.int64),
}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class RawTree:
    """Writes a tiny raw Cityscapes tree; remembers the good pairs' label ids."""

    def __init__(self, root: Path, seed: int = 3):
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.labels: dict[str, np.ndarray] = {}

    def put(self, rel, data: bytes) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(rel)

    def image(self, split, image_id, data=None, h=32, w=64):
        data = _png(self.rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) if data is None else data
        return self.put(vocab.image_path(split, image_id), data)

    def label(self, split, image_id, data=None, h=32, w=64):
        if data is None:
            ids = self.rng.integers(0, vocab.NUM_LABEL_IDS, (h, w), dtype=np.uint8)
            self.labels[image_id] = ids
            data = _png(ids)
        return self.put(vocab.label_path(split, image_id), data)

    def good(self, split, image_id):
        self.image(split, image_id)
        self.label(split, image_id)


def _every_bad_kind(tree: RawTree) -> dict[str, str]:
    """Adds one input per rejection reason; returns {reason: path relative to the root}."""
    bad = {}
    bad[raw_pairs.BAD_FILENAME] = tree.put("leftImg8bit/train/aachen/aachen_1_2_leftImg8bit.png",
                                         _png(np.zeros((32, 64, 3), np.uint8)))
    bad[raw_pairs.IMAGE_WITHOUT_LABEL] = tree.image("train", "aachen_000010_000019")
    bad[raw_pairs.LABEL_WITHOUT_IMAGE] = tree.label("train", "aachen_000011_000019")
    bad[raw_pairs.EMPTY_FILE] = tree.image("train", "aachen_000012_000019", data=b"")
    tree.label("train", "aachen_000012_000019")
    truncated = _png(tree.rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
    bad[raw_pairs.CORRUPT_PNG] = tree.image("train", "aachen_000013_000019",
                                          data=truncated[: len(truncated) // 2])
    tree.label("train", "aachen_000013_000019")
    # 64x128 = 8192 pixels, over the --max-pixels 4096 the test run sets.
    bad[raw_pairs.OVER_PIXEL_BUDGET] = tree.image("train", "aachen_000014_000019", h=64, w=128)
    tree.label("train", "aachen_000014_000019", h=64, w=128)
    bad[raw_pairs.SIZE_MISMATCH] = tree.image("train", "aachen_000015_000019")
    tree.label("train", "aachen_000015_000019", h=32, w=32)
    tree.image("val", "frankfurt_000016_000019")
    bad[raw_pairs.BAD_LABEL_FORMAT] = tree.label(
        "val", "frankfurt_000016_000019", data=_png(np.zeros((32, 64, 3), np.uint8)))
    tree.image("val", "frankfurt_000017_000019")
    unknown = np.full((32, 64), 7, np.uint8)
    unknown[5, 9] = 34
    bad[raw_pairs.UNKNOWN_LABEL_IDS] = tree.label("val", "frankfurt_000017_000019",
                                                data=_png(unknown))
    # A dangling symlink is listed like a file but cannot be read.
    link = tree.root / vocab.image_path("val", "frankfurt_000018_000019")
    link.symlink_to(tree.root / "nowhere.png")
    tree.label("val", "frankfurt_000018_000019")
    bad[raw_pairs.UNREADABLE] = str(vocab.image_path("val", "frankfurt_000018_000019"))
    # A FIFO named like an image would block a worker that opened it as a file.
    fifo = tree.root / vocab.image_path("train", "aachen_000020_000019")
    os.mkfifo(fifo)
    tree.label("train", "aachen_000020_000019")
    bad[raw_pairs.NOT_REGULAR_FILE] = str(vocab.image_path("train", "aachen_000020_000019"))
    # A valid 32x64 header, then a sparse tail: more bytes than any PNG within 4096 pixels.
    bad[raw_pairs.FILE_TOO_LARGE] = tree.image("train", "aachen_000021_000019")
    os.truncate(tree.root / bad[raw_pairs.FILE_TOO_LARGE], 8 << 20)
    tree.label("train", "aachen_000021_000019")
    # The same id in train and in test (a split the runs below do not read): rejected in train.
    bad[raw_pairs.DUPLICATE_IMAGE_ID] = tree.image("train", "aachen_000022_000019")
    tree.label("train", "aachen_000022_000019")
    tree.good("test", "aachen_000022_000019")
    assert set(bad) == set(raw_pairs.REASONS)
    return bad


GOOD = {"train": ["aachen_000000_000019", "aachen_000001_000019", "bremen_000002_000019"],
        "val": ["frankfurt_000003_000019", "munster_000004_000019"]}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    tree = RawTree(tmp_path_factory.mktemp("raw"))
    for split, ids in GOOD.items():
        for image_id in ids:
            tree.good(split, image_id)
    tree.bad = _every_bad_kind(tree)
    return tree


def _argv(raw_root, out, *extra):
    return ["--input-root", str(raw_root), "--output-dir", str(out), "--splits", "train,val",
            "--image-size", "x".join(map(str, SIZE)), "--max-pixels", "4096", *extra, *IN_MEMORY]


def _read_examples(out: Path, split: str) -> list[dict]:
    files = sorted(tf.io.gfile.glob(str(out / vocab.TFRECORDS_DIR / split / "*.tfrecord")))
    return [{k: v.numpy() for k, v in tf.io.parse_single_example(r, FEATURES).items()}
            for r in tf.data.TFRecordDataset(files)]


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes()
            for p in sorted((out / vocab.TFRECORDS_DIR).rglob("*"))
            if p.is_file()}


# --- Transforms with TestPipeline -----------------------------------------------------------

def test_encode_pairs_splits_accepted_from_dead_letters(raw, tmp_path):
    pairs, _ = records.discover(str(raw.root), ["train", "val"])
    config = pipeline.PreprocessConfig(str(raw.root), str(tmp_path), ("train", "val"),
                                       image_size=SIZE, max_pixels=4096)
    shards = {"train": 2, "val": 2}
    with beam_testing.TestPipeline(argv=IN_MEMORY) as p:
        out = (p | beam.Create(pairs)
               | "EncodePairs" >> pipeline.EncodePairs(config, str(tmp_path / "stage"), shards))
        accepted = out["encoded"] | "Ids" >> beam.Map(
            lambda s: (s.split, s.image_id, s.shard, os.path.exists(s.path)))
        assert_that(accepted, equal_to([
            (split, i, records.shard_for(i, 2), True)
            for split, ids in GOOD.items() for i in ids]), label="CheckAccepted")
        reasons = out[pipeline.REJECTED] | "Reasons" >> beam.Map(lambda r: r.reason)
        expected = [r for r in raw_pairs.REASONS if r not in (
            raw_pairs.BAD_FILENAME, raw_pairs.IMAGE_WITHOUT_LABEL, raw_pairs.LABEL_WITHOUT_IMAGE,
            raw_pairs.DUPLICATE_IMAGE_ID)]
        assert_that(reasons, equal_to(expected), label="CheckRejected")


def test_split_totals_add_up_per_split():
    rows = [("train", (1, 2, 0, 0, 0, 0, 0, 0)), ("train", (0, 3, 0, 0, 0, 0, 0, 1)),
            ("val", (4, 0, 0, 0, 0, 0, 0, 0))]
    assert pipeline.split_totals(rows) == {
        "train": {"images": 2, "category_pixels": [1, 5, 0, 0, 0, 0, 0, 1],
                  "category_image_pixels": [3, 7, 0, 0, 0, 0, 0, 4]},
        "val": {"images": 1, "category_pixels": [4, 0, 0, 0, 0, 0, 0, 0],
                "category_image_pixels": [4, 0, 0, 0, 0, 0, 0, 0]}}


def test_write_summaries_writes_every_file_even_without_rows(tmp_path):
    config = pipeline.PreprocessConfig(str(tmp_path), str(tmp_path), ("train",), image_size=SIZE)
    reject = raw_pairs.Reject("leftImg8bit/train/x.png", raw_pairs.BAD_FILENAME, "bad", "train")
    with beam_testing.TestPipeline(argv=IN_MEMORY) as p:
        written = (p | beam.Create([]).with_output_types(tuple)
                   | pipeline.WriteSummaries(config, [reject]))
        assert_that(written, equal_to([str(tmp_path / name) for name in (
            vocab.MANIFEST_FILE, vocab.REJECTED_FILE, vocab.STATS_FILE)]))
    assert (tmp_path / vocab.MANIFEST_FILE).read_text() == ""
    assert json.loads((tmp_path / vocab.REJECTED_FILE).read_text())["reason"] == "bad_filename"
    assert json.loads((tmp_path / vocab.STATS_FILE).read_text())["train"]["images"] == 0


# --- Whole runs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_run(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    summary = pipeline.run(_argv(raw.root, out, "--num-shards", "2"), save_main_session=False)
    return out, summary


def test_run_writes_records_manifest_stats_and_every_reject(raw, first_run):
    out, summary = first_run
    assert summary.accepted == {"train": 3, "val": 2}
    assert summary.rejected == {reason: 1 for reason in raw_pairs.REASONS}

    rejected = [json.loads(line) for line in (out / vocab.REJECTED_FILE).read_text().splitlines()]
    assert {r["reason"]: r["path"] for r in rejected} == raw.bad
    assert all(r["detail"] for r in rejected)
    by_reason = {r["reason"]: r for r in rejected}
    assert by_reason[raw_pairs.BAD_FILENAME]["image_id"] is None
    assert by_reason[raw_pairs.SIZE_MISMATCH]["image_id"] == "aachen_000015_000019"

    manifest = [json.loads(line) for line in (out / vocab.MANIFEST_FILE).read_text().splitlines()]
    assert [(m["split"], m["image_id"]) for m in manifest] == sorted(
        (s, i) for s, ids in GOOD.items() for i in ids)
    for row in manifest:
        assert (raw.root / row["image"]).is_file() and (raw.root / row["label"]).is_file()
        assert (row["height"], row["width"]) == (32, 64)

    stats = json.loads((out / vocab.STATS_FILE).read_text())
    for split, ids in GOOD.items():
        examples = _read_examples(out, split)
        assert sorted(e[vocab.FEATURE_ID].decode() for e in examples) == sorted(ids)
        pixels = np.zeros(vocab.NUM_CATEGORIES, np.int64)
        for example in examples:
            image_id = example[vocab.FEATURE_ID].decode()
            assert example[vocab.FEATURE_SPLIT].decode() == split
            assert example[vocab.FEATURE_CITY].decode() == image_id.split("_")[0]
            assert (example[vocab.FEATURE_HEIGHT], example[vocab.FEATURE_WIDTH]) == SIZE
            assert (example[vocab.FEATURE_ORIGINAL_HEIGHT],
                    example[vocab.FEATURE_ORIGINAL_WIDTH]) == (32, 64)
            image = tf.io.decode_png(example[vocab.FEATURE_IMAGE]).numpy()
            label = tf.io.decode_png(example[vocab.FEATURE_LABEL]).numpy()
            assert image.shape == (*SIZE, 3) and label.shape == (*SIZE, 1)
            # Nearest 2x shrink with half-pixel centres samples pixel 2i+1 of the raw mask.
            expected = vocab.remap_labels(raw.labels[image_id][1::2, 1::2])
            np.testing.assert_array_equal(label[..., 0], expected)
            pixels += np.bincount(label.ravel(), minlength=vocab.NUM_CATEGORIES)
        assert stats[split]["images"] == len(ids)
        assert stats[split]["category_pixels"] == pixels.tolist()
        assert sum(pixels) == len(ids) * SIZE[0] * SIZE[1]
    assert stats["class_weights_method"] == "median_frequency"
    assert len(stats["class_weights"]) == vocab.NUM_CATEGORIES
    # Records inside a shard are in image-id order; shards are crc32(id) % 2.
    for split in GOOD:
        for index in range(2):
            path = records.shard_path(str(out), split, index, 2)
            ids = [tf.io.parse_single_example(r, FEATURES)[vocab.FEATURE_ID].numpy().decode()
                   for r in tf.data.TFRecordDataset(path)]
            assert ids == sorted(ids)
            assert all(records.shard_for(i, 2) == index for i in ids)
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


@pytest.mark.slow
def test_rerun_is_byte_identical_and_another_shard_count_leaves_no_stale(raw, first_run,
                                                                         tmp_path):
    out, _ = first_run
    before = _shard_bytes(out)
    side_files = {name: (out / name).read_bytes()
                  for name in (vocab.MANIFEST_FILE, vocab.STATS_FILE, vocab.REJECTED_FILE)}
    fresh = tmp_path / "fresh"
    pipeline.run(_argv(raw.root, fresh, "--num-shards", "2"), save_main_session=False)
    assert _shard_bytes(fresh) == before
    assert {n: (fresh / n).read_bytes() for n in side_files} == side_files

    # Re-run into the first output with 3 shards: the 2-shard files must go.
    pipeline.run(_argv(raw.root, out, "--num-shards", "3"), save_main_session=False)
    for split in GOOD:
        assert sorted(os.listdir(out / vocab.TFRECORDS_DIR / split)) == [
            vocab.shard_name(split, i, 3) for i in range(3)]
        assert sorted(e[vocab.FEATURE_ID].decode() for e in _read_examples(out, split)) == sorted(
            GOOD[split])


@pytest.mark.slow
def test_rerunning_one_split_keeps_the_others_in_manifest_and_stats(raw, first_run, tmp_path):
    out = tmp_path / "data"
    pipeline.run(_argv(raw.root, out), save_main_session=False)
    argv = _argv(raw.root, out)
    argv[argv.index("--splits") + 1] = "val"
    summary = pipeline.run(argv, save_main_session=False)
    assert summary.accepted == {"val": 2}
    manifest = [json.loads(line) for line in (out / vocab.MANIFEST_FILE).read_text().splitlines()]
    assert sorted({m["split"] for m in manifest}) == ["train", "val"]
    stats = json.loads((out / vocab.STATS_FILE).read_text())
    assert stats["train"]["images"] == 3 and stats["class_weights"]
    rejected = (out / vocab.REJECTED_FILE).read_text()
    assert raw.bad[raw_pairs.SIZE_MISMATCH] in rejected  # a train reject, kept


# --- Systemic failures and the CLI ---------------------------------------------------------

def test_everything_rejected_exits_non_zero_and_still_writes_rejects(tmp_path, capsys):
    tree = RawTree(tmp_path / "raw")
    tree.image("train", "aachen_000000_000019", data=b"")
    tree.label("train", "aachen_000000_000019")
    tree.label("train", "aachen_000001_000019")
    out = tmp_path / "data"
    code = pipeline.main(_argv(tree.root, out, "--splits", "train"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("cityseg-preprocess: error: all 2 inputs were rejected")
    reasons = sorted(json.loads(line)["reason"]
                     for line in (out / vocab.REJECTED_FILE).read_text().splitlines())
    assert reasons == [raw_pairs.EMPTY_FILE, raw_pairs.LABEL_WITHOUT_IMAGE]


def test_no_input_exits_non_zero_with_one_line(tmp_path, capsys):
    (tmp_path / "raw" / "leftImg8bit").mkdir(parents=True)
    code = pipeline.main(_argv(tmp_path / "raw", tmp_path / "data"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("cityseg-preprocess: error: no input found under")
    assert (tmp_path / "data" / vocab.REJECTED_FILE).read_text() == ""


@pytest.mark.parametrize("extra, message", [
    (["--image-size", "0x5"], "size must be positive"),
    (["--image-size", "big"], "size must be HxW"),
    (["--num-shards", "0"], "--num-shards must be at least 1"),
    (["--splits", "train,dev"], "unknown split 'dev'"),
    (["--num_shards", "3"], "did you mean --num-shards"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "raw").mkdir()
    with pytest.raises(SystemExit) if "size" in message else _no_raise():
        code = pipeline.main(_argv(tmp_path / "raw", tmp_path / "data", *extra))
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_missing_input_root_is_one_line(tmp_path, capsys):
    assert pipeline.main(_argv(tmp_path / "absent", tmp_path / "data")) == 2
    assert "is not a directory" in capsys.readouterr().err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_fast_direct_defaults_only_when_no_mode_was_chosen():
    own = ["--num-shards", "--image-size"]
    assert set(pipeline.FAST_DIRECT_FLAGS) <= set(pipeline.beam_flags([], own))
    assert set(pipeline.FAST_DIRECT_FLAGS) <= set(
        pipeline.beam_flags(["--runner", "DirectRunner"], own))
    chosen = pipeline.beam_flags(["--direct_running_mode=in_memory"], own)
    assert not set(pipeline.FAST_DIRECT_FLAGS) & set(chosen)
    dataflow = pipeline.beam_flags(["--runner=DataflowRunner"], own)
    assert not set(pipeline.FAST_DIRECT_FLAGS) & set(dataflow)


# --- End to end, as the README runs it ------------------------------------------------------

# Loaded first by every Python process started with it on PYTHONPATH: refuses and records any
# connection or name lookup outside this machine, as on a machine with no network.
NO_NETWORK_SITECUSTOMIZE = """
import os, socket
_LOG = os.environ["NO_NETWORK_LOG"]
_LOCAL = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "", None)
_getaddrinfo, _create_connection = socket.getaddrinfo, socket.create_connection

def _refuse(host):
    with open(_LOG, "a") as log:
        log.write(f"{host}\\n")
    raise OSError(f"network unreachable (test): {host}")

def getaddrinfo(host, *args, **kwargs):
    if host not in _LOCAL:
        _refuse(host)
    return _getaddrinfo(host, *args, **kwargs)

def create_connection(address, *args, **kwargs):
    if address[0] not in _LOCAL:
        _refuse(address[0])
    return _create_connection(address, *args, **kwargs)

socket.getaddrinfo, socket.create_connection = getaddrinfo, create_connection
"""


@pytest.mark.slow
def test_synth_then_console_script_offline_then_read_back(tmp_path):
    """As the README runs it, on a machine without network: no download is tried (Beam's
    DirectRunner would fetch the Prism runner into ~/.apache_beam/cache/prism first)."""
    synth = pytest.importorskip("preprocessing.synth")
    raw = tmp_path / "raw"
    written = synth.generate(raw, cities=1, images_per_city=2, splits=("train", "val"),
                             sizes=((64, 128),), seed=1)
    out = tmp_path / "data"
    site, home, log = tmp_path / "site", tmp_path / "home", tmp_path / "network.log"
    site.mkdir()
    home.mkdir()
    (site / "sitecustomize.py").write_text(NO_NETWORK_SITECUSTOMIZE)
    script = Path(sys.executable).with_name("cityseg-preprocess")
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from preprocessing.pipeline import main; "
        "sys.exit(main())"]
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "HOME": str(home),
           "NO_NETWORK_LOG": str(log), "HTTP_PROXY": closed, "HTTPS_PROXY": closed,
           "http_proxy": closed, "https_proxy": closed,
           # Beam's local workers talk gRPC over loopback, which gRPC would also send through
           # the (closed) proxy: loopback is no network.
           "no_proxy": "localhost,127.0.0.1", "NO_PROXY": "localhost,127.0.0.1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    # As the README runs it: the CLI's default (one worker thread per core).
    proc = subprocess.run(
        [*command, "--input-root", str(raw), "--output-dir", str(out), "--splits", "train,val",
         "--image-size", "32x64", "-v"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not log.exists(), log.read_text()
    assert not (home / ".apache_beam").exists()
    assert "prism" not in proc.stderr.lower()
    assert f"wrote {out}" in proc.stdout and "accepted: train 2, val 2" in proc.stdout
    for split in ("train", "val"):
        examples = _read_examples(out, split)
        assert sorted(e[vocab.FEATURE_ID].decode() for e in examples) == sorted(
            str(i) for s, i in written if s == split)
        for example in examples:
            image_id = example[vocab.FEATURE_ID].decode()
            raw_ids = np.asarray(Image.open(raw / vocab.label_path(split, image_id)))
            label = tf.io.decode_png(example[vocab.FEATURE_LABEL]).numpy()[..., 0]
            np.testing.assert_array_equal(label, vocab.remap_labels(raw_ids[1::2, 1::2]))
    assert (out / vocab.REJECTED_FILE).read_text() == ""


def test_the_local_default_is_the_fn_api_runner_not_the_direct_runner():
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    runner = pipeline.local_runner(PipelineOptions(["--direct_running_mode=in_memory"]))
    assert isinstance(runner, fn_runner.FnApiRunner)


# --- Duplicates, partial re-runs, concurrent runs -------------------------------------------

def test_an_id_in_two_splits_is_rejected_in_both_and_the_proxy_reads_the_manifest(tmp_path):
    tree = RawTree(tmp_path / "raw")
    tree.good("train", "aachen_000000_000019")
    tree.good("train", "aachen_000001_000019")
    tree.good("val", "aachen_000001_000019")  # the same frame filed under val as well
    tree.good("val", "frankfurt_000002_000019")
    out = tmp_path / "data"
    summary = pipeline.run(_argv(tree.root, out), save_main_session=False)
    assert summary.accepted == {"train": 1, "val": 1}
    assert summary.rejected == {raw_pairs.DUPLICATE_IMAGE_ID: 2}
    rejected = [json.loads(line) for line in (out / vocab.REJECTED_FILE).read_text().splitlines()]
    assert [(r["split"], r["image_id"], r["reason"]) for r in rejected] == [
        ("train", "aachen_000001_000019", "duplicate_image_id"),
        ("val", "aachen_000001_000019", "duplicate_image_id")]
    assert "also under split val" in rejected[0]["detail"]
    manifest = [json.loads(line) for line in (out / vocab.MANIFEST_FILE).read_text().splitlines()]
    assert [m["image_id"] for m in manifest] == ["aachen_000000_000019",
                                                 "frankfurt_000002_000019"]
    resolver = pytest.importorskip("proxy.resolver")
    assert [r.image_id for r in resolver.load_manifest(out / vocab.MANIFEST_FILE)] == [
        "aachen_000000_000019", "frankfurt_000002_000019"]


def test_a_second_run_on_the_same_output_fails_at_once_with_one_line(raw, tmp_path, capsys):
    out = tmp_path / "data"
    with pipeline.output_lock(str(out)):  # a run in progress
        code = pipeline.main(_argv(raw.root, out))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (f"cityseg-preprocess: error: another cityseg-preprocess run "
                      f"(pid {os.getpid()}) is writing to {out}; wait for it to finish or "
                      "choose another --output-dir")
    assert not (out / vocab.MANIFEST_FILE).exists()


def test_the_lock_is_released_when_a_run_ends_or_its_process_dies(tmp_path):
    out = tmp_path / "data"
    with pipeline.output_lock(str(out)):
        pass
    with pipeline.output_lock(str(out)):  # taken again: released by the first
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from preprocessing import pipeline\n"
         f"with pipeline.output_lock({str(out)!r}):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(pipeline.cli.CliError, match=f"pid {holder.pid}"):
            with pipeline.output_lock(str(out)):
                pass
    finally:
        holder.kill()
        holder.wait()
    with pipeline.output_lock(str(out)):  # a killed run leaves no stale lock
        pass


def test_cities_over_an_output_holding_other_cities_of_the_split_is_refused(raw, tmp_path,
                                                                            capsys):
    out = tmp_path / "data"
    pipeline.run(_argv(raw.root, out, "--cities", "aachen"), save_main_session=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # The same cities again: allowed (it replaces exactly what it wrote).
    pipeline.run(_argv(raw.root, out, "--cities", "aachen"), save_main_session=False)
    code = pipeline.main(_argv(raw.root, out, "--cities", "bremen"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("cityseg-preprocess: error: --cities bremen would drop the images "
                              "of other cities already in")
    assert "for split train (2)" in err[-1]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
