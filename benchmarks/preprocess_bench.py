"""Speed of `cityseg-preprocess` against a plain Python loop doing the same work.

    python benchmarks/preprocess_bench.py [--images 96] [--compare-modes]
    python benchmarks/preprocess_bench.py --scaling 1,24,96,384 [--baseline-ref afae84d]

Generates N full-resolution (1024x2048) synthetic Cityscapes pairs, then times
  (a) loop: one fresh process, one pair after another: decode, remap, resize to 512x1024, PNG-encode,
      write the sharded TFRecords (the same preprocessing.records functions the job uses);
  (b) job:  the console script exactly as the README runs it (`cityseg-preprocess --input-root
      RAW --output-dir DATA`, i.e. the CLI's DirectRunner default: one worker thread per core);
  floor:    tf.io.decode_png of every image and label, timed on one core, divided by the cores
      (no preprocessing can beat decoding its input once).
With --compare-modes the job also runs with the other DirectRunner modes, which is the evidence
for the CLI's default. Writes docs/benchmarks/preprocess.json.

With --scaling N1,N2,... it generates the largest N once (the smaller trees are hard links to its
first pairs) and, for each N, runs the loop, the job and, with --baseline-ref, the job of that
revision (a `git worktree`, removed afterwards, first on PYTHONPATH), one after the other, each in a
fresh process: wall seconds and the process's peak resident memory (ru_maxrss). Writes
docs/benchmarks/job_scaling.json and .md.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_machine import cpu_model  # the script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
FULL_SIZE = (1024, 2048)


def generate(raw: Path, images: int) -> None:
    from preprocessing import synth
    cities = max(1, math.ceil(images / 16))
    per_city = math.ceil(images / cities)
    synth.generate(raw, cities=cities, images_per_city=per_city, splits=("train",),
                   sizes=(FULL_SIZE,), seed=0)


def time_loop(raw: Path, out: Path) -> float:
    """The plain single-process loop: same functions, same output files, no Beam."""
    from preprocessing import records
    start = time.perf_counter()
    pairs, _ = records.discover(str(raw), ["train"])
    num_shards = records.auto_num_shards(len(pairs))
    shards: dict[int, list[tuple[str, bytes]]] = collections.defaultdict(list)
    for pair in pairs:
        encoded = records.encode_pair(str(raw), pair, records.DEFAULT_IMAGE_SIZE)
        shards[records.shard_for(pair.image_id, num_shards)].append(
            (pair.image_id, encoded.example))
    for index in range(num_shards):
        records.write_shard(records.shard_path(str(out), "train", index, num_shards),
                            (example for _, example in sorted(shards[index])))
    return time.perf_counter() - start


def time_loop_process(raw: Path, out: Path) -> tuple[float, float]:
    """Runs the loop in a fresh interpreter, like the job: (wall seconds with start-up and
    imports, seconds of the loop itself)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--loop-only", str(raw), str(out)],
                          capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"loop failed:\n{proc.stderr[-3000:]}")
    return elapsed, float(proc.stdout.strip().splitlines()[-1])


def time_job(raw: Path, out: Path, extra: list[str]) -> float:
    script = Path(sys.executable).with_name("cityseg-preprocess")
    command = [str(script) if script.exists() else "cityseg-preprocess",
               "--input-root", str(raw), "--output-dir", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"job failed ({' '.join(command)}):\n{proc.stderr[-3000:]}")
    return elapsed


# Runs a command and prints its children's peak resident memory (KiB) on the last line: the
# job runs in one process (worker threads), so that is the job's own peak.
_MAXRSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def measure(command: list[str], env: dict, cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one command in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MAXRSS, *command], capture_output=True,
                          text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({' '.join(command)}):\n{proc.stderr[-3000:]}")
    return elapsed, int(proc.stdout.strip().splitlines()[-1]) / 1024


def subset(full: Path, out: Path, count: int) -> None:
    """A raw tree of the first `count` pairs of `full`, as hard links."""
    images = sorted((full / "leftImg8bit").rglob("*_leftImg8bit.png"))[:count]
    for image in images:
        image_id = image.name[: -len("_leftImg8bit.png")]
        label = (full / "gtFine" / image.relative_to(full / "leftImg8bit")).with_name(
            f"{image_id}_gtFine_labelIds.png")
        for source in (image, label):
            target = out / source.relative_to(full)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)


def scaling(frames: list[int], work: Path, baseline_ref: str | None, output: Path) -> dict:
    """Job and loop, time and peak memory, at each frame count (see the module docstring)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    full = work / f"raw{max(frames)}"
    if not full.exists():
        print(f"generating {max(frames)} pairs at {FULL_SIZE[0]}x{FULL_SIZE[1]} ...", flush=True)
        generate(full, max(frames))
    runs = {"loop": ([sys.executable, __file__, "--loop-only"], None, env),
            "job": ([sys.executable, "-c", _JOB], None, env)}
    baseline = None
    if baseline_ref:
        baseline = work / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline),
                        baseline_ref], check=True, capture_output=True)
        runs["job_baseline"] = ([sys.executable, "-c", _JOB], baseline,
                                {**env, "PYTHONPATH": str(baseline)})
    rows = []
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        for count in sorted(frames):
            raw = full if count == max(frames) else work / f"raw{count}"
            if not raw.exists():
                subset(full, raw, count)
            row = {"frames": count}
            for name, (command, cwd, run_env) in runs.items():
                out = work / f"out-{name}-{count}"
                shutil.rmtree(out, ignore_errors=True)
                args = ([str(raw), str(out)] if name == "loop" else
                        ["--input-root", str(raw), "--output-dir", str(out), "--splits", "train"])
                seconds, rss = measure([*command, *args], run_env, cwd)
                row[name] = {"seconds": round(seconds, 2), "peak_rss_mib": round(rss)}
                print(f"  {count:4d} frames  {name:13s} {seconds:7.1f} s  {rss:6.0f} MiB",
                      flush=True)
            row["job_records_equal_loop_records"] = _same_records(
                work / f"out-loop-{count}", work / f"out-job-{count}")
            row["job_over_loop"] = round(row["job"]["seconds"] / row["loop"]["seconds"], 3)
            if baseline:
                row["job_baseline_over_loop"] = round(
                    row["job_baseline"]["seconds"] / row["loop"]["seconds"], 3)
            rows.append(row)
            for name in runs:
                shutil.rmtree(work / f"out-{name}-{count}", ignore_errors=True)
    finally:
        if baseline:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(baseline)], capture_output=True)
    report = {
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(),
                    "python": platform.python_version(),
                    "load_average_at_start": load_at_start,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "raw_size": list(FULL_SIZE), "output_size": [512, 1024],
        "job_command": "cityseg-preprocess --input-root RAW --output-dir DATA --splits train",
        "baseline_ref": baseline_ref,
        "rows": rows,
    }
    report["marginal"] = marginal_rates(rows, list(runs), os.cpu_count() or 1)
    by = {row["frames"]: row for row in rows}
    if 96 in by and 384 in by:
        report["peak_rss_384_over_96"] = {
            name: round(by[384][name]["peak_rss_mib"] / by[96][name]["peak_rss_mib"], 3)
            for name in runs}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text(_markdown(report, list(runs)))
    return report


def marginal_rates(rows: list[dict], names: list[str], cores: int) -> list[dict]:
    """Seconds per frame between consecutive frame counts, without the fixed start-up.

    The loop is one process on one core; the job uses every core, so its frames/s per core
    divides by the machine's cores.
    """
    out = []
    for a, b in zip(rows, rows[1:]):
        frames = b["frames"] - a["frames"]
        entry = {"frames": [a["frames"], b["frames"]]}
        for name in names:
            per_frame = (b[name]["seconds"] - a[name]["seconds"]) / frames
            used = 1 if name == "loop" else cores
            entry[name] = {"seconds_per_frame": round(per_frame, 4),
                           "frames_per_s_per_core": (round(1 / (per_frame * used), 2)
                                                     if per_frame > 0 else None)}
        out.append(entry)
    return out


def startup(runs: int, work: Path, baseline_ref: str, output: Path) -> dict:
    """The job's fixed cost: one tiny (64x128) frame, this checkout and the baseline alternated,
    `runs` times each: wall seconds and peak RSS."""
    from preprocessing import synth
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    raw = work / "tiny"
    synth.generate(raw, cities=1, images_per_city=1, splits=("train",), sizes=((64, 128),))
    baseline = work / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline),
                    baseline_ref], check=True, capture_output=True)
    trees = {"job": (None, env), "job_baseline": (baseline, {**env, "PYTHONPATH": str(baseline)})}
    samples: dict[str, list] = {name: [] for name in trees}
    try:
        for index in range(runs):
            for name, (cwd, run_env) in trees.items():
                out = work / f"out-{name}-{index}"
                seconds, rss = measure([sys.executable, "-c", _JOB, "--input-root", str(raw),
                                        "--output-dir", str(out), "--splits", "train"],
                                       run_env, cwd)
                samples[name].append({"seconds": round(seconds, 2), "peak_rss_mib": round(rss)})
                print(f"  {name:13s} {seconds:6.1f} s {rss:6.0f} MiB", flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)],
                       capture_output=True)
    report = {"machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(),
                          "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
              "frame": [64, 128], "baseline_ref": baseline_ref, "runs": samples,
              "median_seconds": {n: sorted(r["seconds"] for r in v)[len(v) // 2]
                                 for n, v in samples.items()}}
    output.write_text(json.dumps(report, indent=2) + "\n")
    return report


# The job as its console script runs it, importable from the cwd's tree (the baseline's).
_JOB = "import sys; from preprocessing.pipeline import main; sys.exit(main())"


def _markdown(report: dict, names: list[str]) -> str:
    lines = ["# cityseg-preprocess: time and peak memory against frames", "",
             f"Frames of {report['raw_size'][1]}x{report['raw_size'][0]} to "
             f"{report['output_size'][1]}x{report['output_size'][0]} records, "
             f"{report['machine']['nproc']} cores "
             f"({report['machine'].get('cpu_model', 'CPU not recorded')}; load average "
             f"{_load(report['machine'].get('load_average_at_start'))} at the start, "
             f"{_load(report['machine'].get('load_average_at_end'))} at the end). "
             "Generated by `benchmarks/preprocess_bench.py --scaling`; baseline: "
             + (f"`{report['baseline_ref']}`." if report["baseline_ref"] else "none."), "",
             "| frames | " + " | ".join(f"{n} s | {n} MiB" for n in names)
             + " | job / loop | records equal |",
             "|---:|" + "---:|---:|" * len(names) + "---:|:---:|"]
    for row in report["rows"]:
        cells = " | ".join(f"{row[n]['seconds']} | {row[n]['peak_rss_mib']}" for n in names)
        lines.append(f"| {row['frames']} | {cells} | {row['job_over_loop']} | "
                     f"{row['job_records_equal_loop_records']} |")
    if report.get("marginal"):
        lines += ["", "Without the start-up: seconds per extra frame between two frame counts, "
                  "and frames/s per core (the loop uses one core, the job all of them):", "",
                  "| frames | " + " | ".join(f"{n} s/frame | {n} frames/s/core" for n in names)
                  + " |", "|---|" + "---:|---:|" * len(names)]
        for m in report["marginal"]:
            lines.append(f"| {m['frames'][0]} -> {m['frames'][1]} | " + " | ".join(
                f"{m[n]['seconds_per_frame']} | {m[n]['frames_per_s_per_core']}"
                for n in names) + " |")
    if "peak_rss_384_over_96" in report:
        lines += ["", "Peak memory at 384 frames over 96: " + ", ".join(
            f"{n} {v}" for n, v in report["peak_rss_384_over_96"].items())]
    return "\n".join(lines) + "\n"


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "not recorded"


def time_decode_floor(raw: Path) -> float:
    """Seconds to decode every PNG of the tree once on one core."""
    import tensorflow as tf
    # One decode_png op runs on one thread, so a sequential loop measures one core.
    files = sorted(raw.rglob("*.png"))
    blobs = [(f.read_bytes(), 3 if "leftImg8bit" in f.name else 1) for f in files]
    tf.io.decode_png(blobs[0][0], channels=blobs[0][1])  # warm-up
    start = time.perf_counter()
    for data, channels in blobs:
        tf.io.decode_png(data, channels=channels)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # ~100 pairs: enough that the job's fixed start-up (interpreter, TensorFlow in each
    # worker) is not the whole story; 24 is a quick check.
    parser.add_argument("--images", type=int, default=96, help="full-resolution pairs")
    parser.add_argument("--compare-modes", action="store_true",
                        help="also time in_memory and multi_threading DirectRunner modes")
    parser.add_argument("--work-dir", default=None, help="keep data here (default: a temp dir)")
    parser.add_argument("--output", default=str(REPO / "docs/benchmarks/preprocess.json"))
    parser.add_argument("--scaling", default=None,
                        help="comma-separated frame counts: time and peak memory of job and "
                             "loop at each (writes docs/benchmarks/job_scaling.json)")
    parser.add_argument("--scaling-output", default=str(REPO / "docs/benchmarks/job_scaling.json"),
                        help="with --scaling: the JSON to write (and .md beside it)")
    parser.add_argument("--baseline-ref", default=None,
                        help="with --scaling: also run the job of this git revision")
    parser.add_argument("--startup", type=int, default=0, metavar="RUNS",
                        help="with --baseline-ref: one tiny frame RUNS times, alternating "
                             "(writes docs/benchmarks/job_startup.json)")
    parser.add_argument("--loop-only", nargs=2, metavar=("RAW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop_only:
        print(time_loop(Path(args.loop_only[0]), Path(args.loop_only[1])))
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.startup:
        work = Path(tempfile.mkdtemp(prefix="preprocess-startup-"))
        try:
            startup(args.startup, work, args.baseline_ref or "HEAD",
                    REPO / "docs/benchmarks/job_startup.json")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    if args.scaling:
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="preprocess-scaling-"))
        try:
            scaling([int(n) for n in args.scaling.split(",")], work, args.baseline_ref,
                    Path(args.scaling_output))
        finally:
            if not args.work_dir:
                shutil.rmtree(work, ignore_errors=True)
        return 0

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="preprocess-bench-"))
    raw = work / "raw"
    try:
        if not raw.exists():
            print(f"generating {args.images} pairs at {FULL_SIZE[0]}x{FULL_SIZE[1]} ...")
            generate(raw, args.images)
        images = len(list((raw / "leftImg8bit").rglob("*.png")))
        cores = os.cpu_count() or 1
        results = {}
        print("timing the plain loop ...")
        results["loop"], loop_compute = time_loop_process(raw, work / "loop")
        print(f"  {results['loop']:.1f} s ({loop_compute:.1f} s without start-up)")
        print("timing the job as the README runs it ...")
        results["job"] = time_job(raw, work / "job", [])
        print(f"  {results['job']:.1f} s")
        if args.compare_modes:
            for mode in ("in_memory", "multi_processing"):
                print(f"timing the job with --direct_running_mode={mode} ...")
                flags = [f"--direct_running_mode={mode}"]
                if mode != "in_memory":
                    flags.append("--direct_num_workers=0")
                results[f"job_{mode}"] = time_job(raw, work / f"job_{mode}", flags)
                print(f"  {results[f'job_{mode}']:.1f} s")
        decode = time_decode_floor(raw)
        same = _same_records(work / "loop", work / "job")
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    report = {
        "machine": {"nproc": cores, "cpu_model": cpu_model(), "python": platform.python_version(),
                    "note": "measured with no other job running"},
        "images": images,
        "raw_size": list(FULL_SIZE),
        "output_size": [512, 1024],
        "job_command": "cityseg-preprocess --input-root RAW --output-dir DATA",
        "seconds": {k: round(v, 2) for k, v in results.items()},
        "images_per_s": {k: round(images / v, 3) for k, v in results.items()},
        "loop_seconds_without_startup": round(loop_compute, 2),
        "floor": {"decode_seconds_one_core": round(decode, 2),
                  "seconds_on_all_cores": round(decode / cores, 2),
                  "images_per_s": round(images / (decode / cores), 3)},
        "ratios": {"loop_over_job": round(results["loop"] / results["job"], 3),
                   "job_over_floor": round(results["job"] / (decode / cores), 3)},
        "job_records_equal_loop_records": same,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _same_records(a: Path, b: Path) -> bool:
    """The loop and the job must have produced byte-identical shards."""
    def shards(root: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((root / "tfrecords" / "train").glob("*.tfrecord"))}
    return shards(a) == shards(b)


if __name__ == "__main__":
    raise SystemExit(main())
