"""Beam job: raw Cityscapes tree -> sharded TFRecords + manifest + stats + rejects.

  cityseg-preprocess --input-root RAW --output-dir DATA [--splits train,val,test]
      [--cities a,b] [--image-size 512x1024|native] [--image-format png|jpeg]
      [--jpeg-quality 95] [--num-shards N] [--max-pixels N]
      [Beam pipeline options, e.g. --runner DataflowRunner --setup_file ./setup.py]

The per-record work lives in preprocessing/records.py; this module wires it into named Beam
stages. Determinism: each image goes to shard crc32(id) % N, each shard is written by one
worker in image-id order, so a re-run on the same input writes the same bytes to the same files.
Encoded examples are staged as one small file each and only their paths cross the shuffle, so
memory stays flat (even on the local runner, which buffers every shuffle in memory).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Iterable, Sequence

import apache_beam as beam
import tensorflow as tf
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from cityseg import cli
from cityseg import images as image_checks
from cityseg import raw
from cityseg import stats as stats_json
from cityseg import vocabulary as vocab
from preprocessing import records

PROG = "cityseg-preprocess"
METRICS_NAMESPACE = "cityseg.preprocess"
REJECTED = "rejected"
# What the CLI adds on the DirectRunner when the user chose no running mode: one worker
# thread per core. The per-image work is TensorFlow's PNG decode, resize and PNG encode, which
# release the GIL, so threads use every core without the start-up of worker processes (each
# imports TensorFlow); measured in docs/benchmarks/preprocess.json (--compare-modes).
FAST_DIRECT_FLAGS = ("--direct_running_mode=multi_threading", "--direct_num_workers=0")
# Worker processes log at INFO by default: every gRPC channel they open. Keep their own
# chatter at WARNING and this package's progress lines at INFO, unless the user chose.
QUIET_WORKER_FLAGS = ("--default_sdk_harness_log_level=WARNING",
                      '--sdk_harness_log_level_overrides={"preprocessing": "INFO"}')
PROGRESS_EVERY = 50
# Held (fcntl.flock) for the whole run on a local DATA: a second run on the same output fails
# at once instead of interleaving its files with the first's. The kernel drops the lock when
# the process ends, however it ends, so a killed run leaves no stale lock to clean up.
LOCK_FILE = ".cityseg-preprocess.lock"

EPILOG = """\
examples:
  # the default: all splits, 512x1024 records, one worker thread per core, no network
  cityseg-preprocess --input-root raw --output-dir data

  # native resolution, two cities, a fixed shard count
  cityseg-preprocess --input-root raw --output-dir data --image-size native \\
      --cities aachen,bremen --num-shards 4

  # JPEG camera images (labels stay PNG): about twice the uncached training input
  # rate, images within ~2.4/255 of the PNG records' on average at quality 95
  cityseg-preprocess --input-root raw --output-dir data-jpeg --image-format jpeg

  # on Dataflow (any Beam runner takes its standard pipeline options)
  cityseg-preprocess --input-root gs://b/raw --output-dir gs://b/data \\
      --runner DataflowRunner --project P --region europe-west1 \\
      --temp_location gs://b/tmp --setup_file ./setup.py

Outputs: DATA/tfrecords/{split}/*.tfrecord, DATA/manifest.jsonl, DATA/stats.json,
DATA/rejected.jsonl. Exit status 2 if nothing was found or every input was rejected.
"""


@dataclass(frozen=True)
class PreprocessConfig:
    """One preprocessing run (the job's own flags; Beam's options travel separately)."""

    input_root: str
    output_dir: str
    splits: tuple[str, ...] = vocab.SPLITS
    cities: tuple[str, ...] | None = None
    image_size: tuple[int, int] | None = records.DEFAULT_IMAGE_SIZE  # None: native
    num_shards: int | None = None  # None: records.auto_num_shards per split
    max_pixels: int = image_checks.DEFAULT_MAX_PIXELS
    image_format: str = "png"  # of the camera images; labels are PNG always
    jpeg_quality: int | None = None  # None: records.DEFAULT_JPEG_QUALITY for JPEG

    def __post_init__(self):
        if not self.splits:
            raise cli.CliError("--splits is empty")
        for split in self.splits:
            try:
                vocab.check_split(split)
            except ValueError as err:
                raise cli.CliError(str(err)) from None
        if self.num_shards is not None and self.num_shards < 1:
            raise cli.CliError(f"--num-shards must be at least 1, not {self.num_shards}")
        if self.max_pixels < 1:
            raise cli.CliError(f"--max-pixels must be positive, not {self.max_pixels}")
        if self.image_format not in vocab.IMAGE_FORMATS:
            raise cli.CliError(f"--image-format must be one of "
                               f"{', '.join(vocab.IMAGE_FORMATS)}, not {self.image_format!r}")
        if self.image_format == "png" and self.jpeg_quality is not None:
            # Refused rather than ignored: PNG records would not show the quality asked for.
            raise cli.CliError("--jpeg-quality applies to --image-format jpeg only")
        if self.image_format == "jpeg":
            if self.jpeg_quality is None:
                object.__setattr__(self, "jpeg_quality", records.DEFAULT_JPEG_QUALITY)
            elif not 1 <= self.jpeg_quality <= 100:
                raise cli.CliError(f"--jpeg-quality must be 1..100, not {self.jpeg_quality}")


@dataclass(frozen=True)
class Staged:
    """An accepted pair whose serialised example waits in a staging file for its shard."""

    split: str
    image_id: str
    shard: int
    path: str
    manifest: dict
    category_pixels: tuple[int, ...]


# --- Stages -------------------------------------------------------------------------------

class EncodePairFn(beam.DoFn):
    """Pair -> Staged example (main output) or Reject (tagged `rejected`)."""

    def __init__(self, input_root: str, image_size: tuple[int, int] | None, max_pixels: int,
                 staging_dir: str, num_shards: dict[str, int], image_format: str = "png",
                 jpeg_quality: int | None = None):
        self._input_root = input_root
        self._image_size = image_size
        self._max_pixels = max_pixels
        self._image_format = image_format
        self._jpeg_quality = jpeg_quality or records.DEFAULT_JPEG_QUALITY
        self._staging_dir = staging_dir
        self._num_shards = num_shards

    def setup(self):
        self._accepted = {split: Metrics.counter(METRICS_NAMESPACE, f"accepted_{split}")
                          for split in vocab.SPLITS}
        self._rejected = {reason: Metrics.counter(METRICS_NAMESPACE, f"rejected_{reason}")
                          for reason in raw.REASONS}
        self._seen = 0

    def process(self, pair: raw.Pair):
        self._seen += 1
        if self._seen % PROGRESS_EVERY == 0:
            logging.info("worker %d: %d pairs processed", os.getpid(), self._seen)
        try:
            encoded = records.encode_pair(self._input_root, pair, self._image_size,
                                          self._max_pixels, self._image_format,
                                          self._jpeg_quality)
        except raw.RejectedInput as err:
            self._rejected[err.reason].inc()
            yield beam.pvalue.TaggedOutput(REJECTED, err.to_reject(pair))
            return
        staged = posixpath.join(self._staging_dir, pair.split, f"{pair.image_id}.example")
        records.write_atomically(staged, [encoded.example])
        self._accepted[pair.split].inc()
        yield Staged(pair.split, pair.image_id,
                     records.shard_for(pair.image_id, self._num_shards[pair.split]),
                     staged, encoded.manifest, encoded.category_pixels)


class EncodePairs(beam.PTransform):
    """Pairs -> {"encoded": Staged, "rejected": Reject}: validate, decode, remap, resize, encode."""

    def __init__(self, config: PreprocessConfig, staging_dir: str, num_shards: dict[str, int]):
        super().__init__()
        self._fn = EncodePairFn(config.input_root, config.image_size, config.max_pixels,
                                staging_dir, num_shards, config.image_format,
                                config.jpeg_quality)

    def expand(self, pairs):
        return pairs | "EncodePair" >> beam.ParDo(self._fn).with_outputs(REJECTED, main="encoded")


class WriteShardFn(beam.DoFn):
    """((split, shard), staged) -> one TFRecord file, records in image-id order."""

    def __init__(self, output_dir: str, num_shards: dict[str, int]):
        self._output_dir = output_dir
        self._num_shards = num_shards

    def setup(self):
        self._shards = Metrics.counter(METRICS_NAMESPACE, "shards_written")

    def process(self, keyed):
        (split, shard), items = keyed
        ordered = sorted(items)  # (image_id, staging path): sorting by id fixes the bytes
        path = records.shard_path(self._output_dir, split, shard, self._num_shards[split])
        count = records.write_shard(path, (_read_bytes(staged) for _, staged in ordered))
        self._shards.inc()
        yield split, shard, count


class WriteShards(beam.PTransform):
    """Staged examples -> DATA/tfrecords/{split}/{split}-SSSSS-of-NNNNN.tfrecord.

    Only (image id, staging path) crosses the shuffle, so a shard's group is a list of names.
    """

    def __init__(self, output_dir: str, num_shards: dict[str, int]):
        super().__init__()
        self._output_dir = output_dir
        self._num_shards = num_shards

    def expand(self, staged):
        return (staged
                | "KeyByShard" >> beam.Map(lambda s: ((s.split, s.shard), (s.image_id, s.path)))
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(WriteShardFn(self._output_dir, self._num_shards)))


# The three summary files, one group each in WriteSummaries.
MANIFEST, REJECTS, STATS = "manifest", "rejects", "stats"
SUMMARIES = (MANIFEST, REJECTS, STATS)


class WriteSummaries(beam.PTransform):
    """(kind, row) -> DATA/manifest.jsonl, rejected.jsonl, stats.json.

    One GroupByKey gathers each file's rows on one worker, which writes the file. A seed row
    per kind makes every file written even when it has no row (an all-rejected run still
    writes its empty manifest). It replaces one ToList/ToDict combine per file: each of those
    expands into a dozen Beam transforms, and building them was a third of the start-up of a
    small job (docs/preprocessing.md, "Start-up").
    """

    def __init__(self, config: PreprocessConfig, rejects: Sequence[raw.Reject] = ()):
        super().__init__()
        self._config = config
        self._rejects = tuple(rejects)

    def expand(self, rows):
        seeds = (rows.pipeline
                 | "SeedsAndDiscoveryRejects" >> beam.Create(
                     [(kind, None) for kind in SUMMARIES]
                     + [(REJECTS, reject) for reject in self._rejects])
                 | "CountDiscoveryRejects" >> beam.Map(_count_discovery_reject))
        return ((rows, seeds)
                | "AllRows" >> beam.Flatten()
                | "GroupByFile" >> beam.GroupByKey()
                | "WriteFile" >> beam.Map(write_summary, self._config))


def summary_rows(staged: Staged) -> list[tuple[str, object]]:
    """What an accepted image adds to the summaries: its manifest row and its pixel counts."""
    return [(MANIFEST, staged.manifest), (STATS, (staged.split, staged.category_pixels))]


def _count_discovery_reject(row: tuple[str, object]) -> tuple[str, object]:
    if row[1] is not None:
        Metrics.counter(METRICS_NAMESPACE, f"rejected_{row[1].reason}").inc()
    return row


def write_summary(group: tuple[str, Iterable], config: PreprocessConfig) -> str:
    """Writes one summary file from its (kind, rows) group (a None row is the seed)."""
    kind, values = group
    values = [v for v in values if v is not None]
    out = config.output_dir
    if kind == MANIFEST:
        return write_jsonl(values, posixpath.join(out, vocab.MANIFEST_FILE), config.splits,
                           ("split", "image_id"))
    if kind == REJECTS:
        return write_jsonl([r.to_json() for r in values],
                           posixpath.join(out, vocab.REJECTED_FILE), config.splits,
                           ("path", "reason"))
    return write_stats(split_totals(values), config)


def split_totals(rows: Iterable[tuple[str, Sequence[int]]]) -> dict[str, dict]:
    """(split, category pixels of one image) rows -> records.split_stats per split."""
    per_split = collections.defaultdict(list)
    for split, counts in rows:
        per_split[split].append(counts)
    return {split: records.split_stats(counts) for split, counts in per_split.items()}


def build_pipeline(pipeline: beam.Pipeline, config: PreprocessConfig,
                   pairs: Sequence[raw.Pair], rejects: Sequence[raw.Reject],
                   num_shards: dict[str, int], staging_dir: str) -> None:
    """Adds the job's stages to `pipeline` (discovery already ran on the launcher)."""
    encoded = (pipeline
               | "CreatePairs" >> beam.Create(list(pairs))
               | "EncodePairs" >> EncodePairs(config, staging_dir, num_shards))
    staged = encoded["encoded"]
    _ = staged | "WriteShards" >> WriteShards(config.output_dir, num_shards)
    accepted = staged | "SummaryRows" >> beam.FlatMap(summary_rows)
    rejected = encoded[REJECTED] | "RejectRows" >> beam.Map(lambda r: (REJECTS, r))
    _ = (accepted, rejected) | "Rows" >> beam.Flatten() | "WriteSummaries" >> WriteSummaries(
        config, rejects)


# --- Output files ---------------------------------------------------------------------------

def write_jsonl(rows: Iterable[dict], path: str, splits: Sequence[str],
                key_fields: Sequence[str]) -> str:
    """Writes rows merged with the earlier file's other splits, sorted, atomically."""
    merged = records.merge_jsonl(
        path, rows, splits, sort_key=lambda row: tuple(str(row.get(k)) for k in key_fields))
    records.write_atomically(path, [records.dumps_jsonl(merged)])
    return path


def write_stats(per_split: dict[str, dict], config: PreprocessConfig) -> str:
    """Writes stats.json: this run's splits (zero for a split with no image) plus the earlier
    file's other splits; class weights come from whichever train counts result."""
    path = posixpath.join(config.output_dir, vocab.STATS_FILE)
    splits = {}
    if tf.io.gfile.exists(path):
        earlier = _read_stats(path)
        splits = {name: earlier[name] for name in vocab.SPLITS if name in earlier}
    for split in config.splits:
        splits[split] = per_split.get(split, records.split_stats(()))
    document = records.stats_document(splits, config.image_size, config.image_format,
                                      config.jpeg_quality)
    records.write_atomically(path, [(json.dumps(document, indent=2, sort_keys=True) + "\n")
                                    .encode("utf-8")])
    return path


def _read_stats(path: str) -> dict:
    # Through tf.io.gfile, so that DATA may be a gs:// bucket; parsed by the one stats reader.
    with tf.io.gfile.GFile(path, "r") as handle:
        return stats_json.parse_stats(handle.read(), path)


def _read_bytes(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read()


def finalize_shards(output_dir: str, num_shards: dict[str, int]) -> list[str]:
    """After every shard of the run is written: creates the empty shards that no image hashed
    to (so the set `-of-N` is complete) and deletes the shards of an earlier run with another
    count. Only the splits of this run are touched.

    Returns:
      the removed stale paths.
    """
    removed = []
    for split, count in sorted(num_shards.items()):
        for index in range(count):
            path = records.shard_path(output_dir, split, index, count)
            if not tf.io.gfile.exists(path):
                records.write_shard(path, ())
        removed += records.remove_stale_shards(output_dir, split, count)
    return removed


# --- Command line ---------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=cli.HelpFormatter, epilog=EPILOG,
        description="Turns a raw Cityscapes tree into sharded TFRecords (Apache Beam job). "
                    "Flags not listed here are Beam pipeline options.")
    parser.add_argument("--input-root", required=True,
                        help="raw Cityscapes root holding leftImg8bit/ and gtFine/")
    parser.add_argument("--output-dir", required=True, help="DATA directory to write")
    parser.add_argument("--splits", default=",".join(vocab.SPLITS), type=_csv,
                        help="comma-separated splits")
    parser.add_argument("--cities", default=None, type=_csv,
                        help="comma-separated city folders (default: all)")
    parser.add_argument("--image-size", default="x".join(map(str, records.DEFAULT_IMAGE_SIZE)),
                        type=_image_size,
                        help="HxW of the records (half Cityscapes resolution is what the "
                             "trainers read), or 'native' to keep each image's size")
    parser.add_argument("--image-format", default="png", metavar="{png,jpeg}",
                        help="how the records store the camera images: png (lossless, the "
                             "contract's format) or jpeg (about twice the uncached training "
                             "input rate, lossy; docs/preprocessing.md). Labels are PNG always")
    parser.add_argument("--jpeg-quality", type=int, default=None, metavar="1..100",
                        help="JPEG quality of the camera images; only with --image-format "
                             f"jpeg, where None means {records.DEFAULT_JPEG_QUALITY}")
    parser.add_argument("--num-shards", type=int, default=None,
                        help=f"shards per split (default: one per {records.IMAGES_PER_SHARD} "
                             "images, at least 1)")
    parser.add_argument("--max-pixels", type=int, default=image_checks.DEFAULT_MAX_PIXELS,
                        help="reject images whose header claims more pixels (checked before "
                             "decoding)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _image_size(text: str) -> tuple[int, int] | None:
    return None if text.lower() == "native" else cli.parse_size(text)


def _is_remote(path: str) -> bool:
    return "://" in path


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """Builds the run's config; local paths become absolute so that worker processes find them."""
    def place(path: str) -> str:
        return path if _is_remote(path) else os.path.abspath(path)

    return PreprocessConfig(
        input_root=place(args.input_root), output_dir=place(args.output_dir),
        splits=args.splits, cities=args.cities or None, image_size=args.image_size,
        num_shards=args.num_shards, max_pixels=args.max_pixels, image_format=args.image_format,
        jpeg_quality=args.jpeg_quality)


def _runs_locally(flags: Sequence[str]) -> bool:
    runner = PipelineOptions(list(flags)).view_as(StandardOptions).runner
    return runner is None or runner.split(".")[-1] in ("DirectRunner", "direct")


def local_runner(options: PipelineOptions):
    """The runner of a job given no --runner: Beam's FnApiRunner, named explicitly.

    Beam's DirectRunner (what Beam picks without --runner) first tries the Prism runner on
    pipelines it supports, which downloads a binary from GitHub into ~/.apache_beam/cache and
    falls back to the FnApiRunner when that fails: a network reach the user never asked for,
    and seconds of start-up. This is the FnApiRunner set up as the DirectRunner sets it up
    (pipeline options handed to its workers), so --direct_running_mode and
    --direct_num_workers keep their meaning. `--runner DirectRunner` given explicitly is
    left to Beam.
    """
    # Imported here: only a local run needs it (and only after TensorFlow and Beam loaded).
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def beam_flags(beam_args: Sequence[str], own_flags: Iterable[str]) -> list[str]:
    """Beam's flags, plus the fast DirectRunner defaults when the user chose no running mode.

    Raises:
      CliError: for one of our flags misspelt with underscores (e.g. --num_shards), which Beam
        would otherwise swallow with only a warning.
    """
    own = {flag.lstrip("-").replace("-", "_"): flag for flag in own_flags}
    for arg in beam_args:
        name = arg.split("=", 1)[0].lstrip("-")
        if arg.startswith("--") and name in own and "--" + name != own[name]:
            raise cli.CliError(f"unrecognized argument --{name} (did you mean {own[name]}?)")
    flags = list(beam_args)
    direct = _runs_locally(flags)
    chose_mode = any(a.startswith(("--direct_running_mode", "--direct_num_workers"))
                     for a in flags)
    if direct and not chose_mode:
        flags += FAST_DIRECT_FLAGS
    if not any(a.startswith(("--default_sdk_harness_log_level",
                             "--sdk_harness_log_level_overrides")) for a in flags):
        flags += QUIET_WORKER_FLAGS
    return flags


@dataclass
class Summary:
    """What a run produced (printed at the end, returned to callers and tests)."""

    output_dir: str
    accepted: dict[str, int]
    rejected: dict[str, int]
    num_shards: dict[str, int]
    removed_stale: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        accepted = ", ".join(f"{s} {n}" for s, n in self.accepted.items())
        shards = ", ".join(f"{s} {n}" for s, n in self.num_shards.items())
        rejected = ", ".join(f"{r} {n}" for r, n in sorted(self.rejected.items())) or "none"
        return [f"{PROG}: wrote {self.output_dir}",
                f"  accepted: {accepted} (shards: {shards})",
                f"  rejected: {sum(self.rejected.values())} ({rejected}) -> "
                f"{posixpath.join(self.output_dir, vocab.REJECTED_FILE)}"]


def run(argv: Sequence[str] | None = None, save_main_session: bool = True) -> Summary:
    """Runs the job: discovery on the launcher, then the Beam pipeline, then shard clean-up.

    Returns:
      the run's Summary (also printed).

    Raises:
      CliError: no input found, or every input rejected (rejected.jsonl is written first).
    """
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    cli.setup_logging(args.verbose)
    if not args.verbose:
        # Beam narrates every stage at INFO; our own progress lines are what a user follows.
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    config = config_from_args(args)
    own_flags = [flag for action in parser._actions for flag in action.option_strings]
    options = PipelineOptions(beam_flags(beam_args, own_flags))
    options.view_as(SetupOptions).save_main_session = save_main_session
    chose_runner = options.view_as(StandardOptions).runner is not None

    if not tf.io.gfile.isdir(config.input_root):
        raise cli.CliError(f"--input-root {config.input_root} is not a directory")
    with output_lock(config.output_dir):
        return _run_locked(config, options, None if chose_runner else local_runner(options))


def _run_locked(config: PreprocessConfig, options: PipelineOptions, runner) -> Summary:
    """The run proper, while this process holds the output's lock."""
    refuse_partial_cities(config)
    pairs, rejects = records.discover(config.input_root, config.splits, config.cities)
    rejected_path = posixpath.join(config.output_dir, vocab.REJECTED_FILE)
    if not pairs and not rejects:
        write_jsonl((), rejected_path, config.splits, ("path", "reason"))
        cities = f" for cities {','.join(config.cities)}" if config.cities else ""
        raise cli.CliError(
            f"no input found under {config.input_root} for splits {','.join(config.splits)}"
            f"{cities} (expected {vocab.IMAGE_DIR}/SPLIT/CITY/*{vocab.IMAGE_SUFFIX})")
    logging.info("found %d image/label pairs and %d bad names under %s",
                 len(pairs), len(rejects), config.input_root)

    per_split = collections.Counter(pair.split for pair in pairs)
    num_shards = {split: config.num_shards or records.auto_num_shards(per_split[split])
                  for split in config.splits}
    staging_dir = posixpath.join(config.output_dir, f".staging-{uuid.uuid4().hex}")
    try:
        with beam.Pipeline(runner=runner, options=options) as pipeline:
            build_pipeline(pipeline, config, pairs, rejects, num_shards, staging_dir)
    finally:
        if tf.io.gfile.exists(staging_dir):
            tf.io.gfile.rmtree(staging_dir)
    removed = finalize_shards(config.output_dir, num_shards)
    for path in removed:
        logging.info("removed stale %s", path)

    summary = _summarise(config, num_shards, removed)
    for line in summary.lines():
        print(line)
    if not sum(summary.accepted.values()):
        raise cli.CliError(
            f"all {sum(summary.rejected.values())} inputs were rejected; reasons in "
            f"{rejected_path}")
    return summary


@contextlib.contextmanager
def output_lock(output_dir: str):
    """Holds DATA/.cityseg-preprocess.lock (fcntl.flock, exclusive) while the run writes.

    Object stores (gs://) have no such lock; there one run per output is the operator's to
    ensure (docs/preprocessing.md).

    Raises:
      CliError: another run holds the lock (one line naming it).
    """
    if _is_remote(output_dir):
        yield
        return
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise cli.CliError(
                f"another {PROG} run (pid {holder}) is writing to {output_dir}; wait for it "
                "to finish or choose another --output-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def refuse_partial_cities(config: PreprocessConfig) -> None:
    """Refuses a --cities run that would drop other cities' images of a split it re-runs.

    A split is the unit the job writes: its shards hash every image of the split, and its
    manifest rows and stats are replaced whole. So a run with --cities over an output that
    already holds other cities of the same split would silently lose them; it is refused, and
    the user re-runs the split without --cities or writes to another --output-dir.

    Raises:
      CliError: naming the split and how many images of other cities it holds.
    """
    if not config.cities:
        return
    rows = raw.read_jsonl(posixpath.join(config.output_dir, vocab.MANIFEST_FILE))
    lost = collections.Counter(row["split"] for row in rows
                               if row.get("split") in config.splits
                               and row.get("city") not in config.cities)
    if lost:
        splits = ", ".join(f"{split} ({count})" for split, count in sorted(lost.items()))
        raise cli.CliError(
            f"--cities {','.join(config.cities)} would drop the images of other cities "
            f"already in {config.output_dir} for split {splits}; re-run those splits without "
            "--cities, or choose another --output-dir")


def _summarise(config: PreprocessConfig, num_shards: dict[str, int],
               removed: list[str]) -> Summary:
    splits = _read_stats(posixpath.join(config.output_dir, vocab.STATS_FILE))
    rows = raw.read_jsonl(posixpath.join(config.output_dir, vocab.REJECTED_FILE))
    reasons = collections.Counter(row["reason"] for row in rows if row["split"] in config.splits)
    return Summary(config.output_dir,
                   {split: splits[split]["images"] for split in config.splits},
                   dict(reasons), num_shards, removed)


def _main(argv: Sequence[str] | None) -> int:
    run(argv)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `cityseg-preprocess`."""
    return cli.run_cli(PROG, _main, argv)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    raise SystemExit(main())
