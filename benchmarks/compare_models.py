"""Trains and compares unet, pspnet, fcn8 and fastscnn under one time budget each.

    python benchmarks/compare_models.py --time-limit 10 --image-size 256x512

Without `--data-dir` it first writes a synthetic Cityscapes tree (`cityseg-synth`) and runs the
Beam job (`cityseg-preprocess`) into the work folder. Then, for every model, the same commands a
user would run: `cityseg-train` with the SAME `--time-limit`, `cityseg-evaluate` on the val
split; plus the CPU inference time of one full Cityscapes frame (1024x2048) through the model,
its parameter count, and a per-pixel colour classifier (`training.baselines`) as the floor a
network must clearly beat.

Writes docs/benchmarks/model_comparison.json (everything) and model_comparison.md (the tables).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from cityseg.cli import CliError, HelpFormatter, parse_size, run_cli, setup_logging  # noqa: E402
from cityseg.vocabulary import CATEGORIES, EVALUATED_CATEGORIES  # noqa: E402
from training.run_layout import (  # noqa: E402
    BEST_MODEL_FILE, HISTORY_FILE, METRICS_FILE, SUMMARY_FILE,
)

log = logging.getLogger("cityseg.compare")

MODELS = ("unet", "pspnet", "fcn8", "fastscnn")
BASELINE = "colour-baseline"
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks" / "model_comparison"


def console_script(name: str) -> list[str]:
    """The command line of a console script, preferring the one beside this interpreter."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return [str(beside)]
    found = shutil.which(name)
    if found is None:
        raise CliError(f"{name} not found; install the project (pip install -e .)")
    return [found]


def run_step(name: str, args: Sequence[str], log_file: Path) -> float:
    """Runs one cityseg command, its output going to `log_file`; returns its wall seconds.

    Raises:
      CliError: if the command fails (the log's last lines say why).
    """
    command = console_script(name) + [str(a) for a in args]
    log.info("$ %s", shlex.join(command))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_file, "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if code != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
        raise CliError(f"{name} failed with exit code {code} (see {log_file}): "
                       + " | ".join(tail))
    return seconds


def prepare_data(args: argparse.Namespace, work: Path) -> Path:
    """The DATA folder: `--data-dir`, or synthetic scenes preprocessed into `work/data`."""
    if args.data_dir is not None:
        if not args.data_dir.is_dir():
            raise CliError(f"data dir {args.data_dir} does not exist")
        return args.data_dir
    data = work / "data"
    if (data / "stats.json").is_file() and not args.regenerate:
        log.info("reusing %s (pass --regenerate to rebuild it)", data)
        return data
    raw = work / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    val_per_city = args.synth_val_images_per_city or args.synth_images_per_city
    for split, per_city in (("train", args.synth_images_per_city), ("val", val_per_city)):
        run_step("cityseg-synth", [raw, "--cities", args.synth_cities, "--images-per-city",
                                   per_city, "--splits", split, "--seed", args.seed],
                 work / "logs" / f"synth-{split}.log")
    run_step("cityseg-preprocess", ["--input-root", raw, "--output-dir", data,
                                    "--splits", "train,val",
                                    "--image-size", "x".join(map(str, args.record_size))],
             work / "logs" / "preprocess.log")
    return data


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def min_column(history_csv: Path, column: str) -> float | None:
    """The smallest value of a history.csv column (None if absent)."""
    from training.plots import read_history

    if not history_csv.is_file():
        return None
    values = [v for v in read_history(history_csv).get(column, []) if v == v]
    return min(values) if values else None


def time_inference(predict, image, runs: int) -> list[float]:
    """Milliseconds of `predict(image)` over `runs` calls after one untimed warm-up call."""
    predict(image)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        predict(image)
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def keras_inference_ms(model_path: Path, size: tuple[int, int], runs: int) -> list[float]:
    """CPU time of one [1, H, W, 3] frame through the trained Keras model (graph mode).

    The call is traced once (`tf.function`, as in the exported serving graph), then timed; the
    models take any input size divisible by their stride, so the trained weights run as is.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from training.models import load_model

    model = load_model(model_path)
    image = tf.constant(np.random.default_rng(0).random((1, *size, 3), dtype=np.float32))
    call = tf.function(lambda x: model(x, training=False))
    try:
        return time_inference(lambda x: call(x).numpy(), image, runs)
    finally:
        # Four large models one after another: free each before the next.
        del model, call
        keras.backend.clear_session()


def train_and_evaluate(name: str, data: Path, work: Path, args: argparse.Namespace
                       ) -> dict[str, Any]:
    """One model's row: train under the time budget, evaluate on val, time inference."""
    run_dir = work / "runs" / name
    report_dir = work / "reports" / name
    if args.retrain or not (run_dir / SUMMARY_FILE).is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_step("cityseg-train", [
            "--data-dir", data, "--model", name, "--output-dir", run_dir,
            "--image-size", "x".join(map(str, args.image_size)),
            "--batch-size", args.batch_size, "--epochs", args.max_epochs,
            "--time-limit", args.time_limit, "--seed", args.seed, *args.train_arg,
        ], work / "logs" / f"train-{name}.log")
    else:
        log.info("reusing the finished run %s (pass --retrain to train again)", run_dir)
    run_step("cityseg-evaluate", ["--data-dir", data, "--model", run_dir, "--split", "val",
                                  "--report-dir", report_dir, "--batch-size", args.batch_size],
             work / "logs" / f"evaluate-{name}.log")
    summary = read_json(run_dir / SUMMARY_FILE)
    metrics = read_json(report_dir / METRICS_FILE)
    row = {
        "model": name,
        "epochs_done": summary.get("epochs_done"),
        "stopped_by": summary.get("stopped_by"),
        "training_seconds": summary.get("training_seconds"),
        "best_epoch": summary.get("best_epoch"),
        "best_val_loss": min_column(run_dir / HISTORY_FILE, "val_loss"),
        "best_train_loss": min_column(run_dir / HISTORY_FILE, "loss"),
        "params": summary.get("params"),
        **_metric_fields(metrics),
        "report_dir": _relative(report_dir),
    }
    if args.inference_runs > 0:
        log.info("timing %s on one %dx%d frame (%d runs)", name, *args.inference_size,
                 args.inference_runs)
        times = keras_inference_ms(run_dir / BEST_MODEL_FILE, args.inference_size,
                                   args.inference_runs)
        row["inference_ms"] = statistics.median(times)
        row["inference_ms_runs"] = [round(t, 1) for t in times]
    return row


def baseline_row(data: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The colour classifier's row, fitted on train and scored on val at the models' size."""
    import numpy as np

    from training import baselines
    from training.evaluate import ModelSource, write_report

    started = time.monotonic()
    baseline = baselines.fit_colour_baseline(data, "train", image_size=args.image_size,
                                             batch_size=args.batch_size)
    fit_seconds = time.monotonic() - started
    evaluation = baselines.evaluate_colour_baseline(baseline, data, "val",
                                                    image_size=args.image_size,
                                                    batch_size=args.batch_size, num_samples=4)
    report_dir = work / "reports" / BASELINE
    metrics = write_report(evaluation, report_dir, source=ModelSource(BASELINE, Path(BASELINE)),
                           split="val", data_dir=data, seconds=time.monotonic() - started)
    row = {
        "model": BASELINE,
        "epochs_done": None,
        "stopped_by": None,
        "training_seconds": round(fit_seconds, 3),
        "best_epoch": None,
        "best_val_loss": None,
        "best_train_loss": None,
        "params": baseline.num_bins,  # one lookup-table entry per colour bin
        **_metric_fields(metrics),
        "report_dir": _relative(report_dir),
    }
    if args.inference_runs > 0:
        frame = np.random.default_rng(0).integers(0, 256, (*args.inference_size, 3), np.uint8)
        times = time_inference(baseline.predict, frame, args.inference_runs)
        row["inference_ms"] = statistics.median(times)
        row["inference_ms_runs"] = [round(t, 1) for t in times]
    return row


def _metric_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: metrics.get(key) for key in (
        "images", "pixel_accuracy", "mean_iou_7", "mean_iou_8", "iou", "iou_non_void")}


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# --- Writing -----------------------------------------------------------------------------

def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def to_markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown tables, with the settings that produced them."""
    s = result["settings"]
    lines = [
        "# Model comparison",
        "",
        f"Generated {result['generated']} by `{result['command']}` on {result['machine']['cpus']} "
        f"CPU core(s) ({result['machine']['processor'] or result['machine']['platform']}), "
        f"TensorFlow {result['machine']['tensorflow']}.",
        "",
        f"- Data: {s['data']['description']} ({s['data']['train_images']} train / "
        f"{s['data']['val_images']} val images).",
        f"- Each network: `cityseg-train` with `--time-limit {s['time_limit_minutes']:g}` minutes "
        f"(at most {s['max_epochs']} epochs), `--image-size {s['image_size']}`, "
        f"`--batch-size {s['batch_size']}`; evaluated with `cityseg-evaluate` on val at the "
        "training size.",
        "- mean IoU 7: Cityscapes category convention (7 categories, ground-truth void "
        "ignored); mean IoU 8: the seed's convention (all 8 including void).",
        f"- Inference: median of {s['inference_runs']} timed calls (after a warm-up) on one "
        f"{s['inference_size']} frame, batch 1, this CPU, traced Keras model call; the "
        "colour baseline is a numpy table lookup. One run on this machine with no other "
        "job running; repeated runs vary by roughly 10 %.",
        f"- {BASELINE}: majority category per RGB bin (32 levels per channel) fitted on train; "
        "its 'params' are lookup-table entries and its training time is the fit.",
        "",
        "| model | epochs | stopped by | training s | best val loss | pixel acc. | mean IoU 7 "
        "| mean IoU 8 | params | inference ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {_num(row['epochs_done'])} | {_num(row['stopped_by'])} "
            f"| {_num(row['training_seconds'], 0)} | {_num(row['best_val_loss'])} "
            f"| {_num(row['pixel_accuracy'])} | {_num(row['mean_iou_7'])} "
            f"| {_num(row['mean_iou_8'])} | {_num(row['params'])} "
            f"| {_num(row.get('inference_ms'), 0)} |")
    evaluated = [CATEGORIES[c] for c in EVALUATED_CATEGORIES]
    lines += [
        "",
        "IoU per category (all pixels counted; void is scored only by mean IoU 8):",
        "",
        "| model | " + " | ".join(CATEGORIES) + " |",
        "|---|" + "---:|" * len(CATEGORIES),
    ]
    for row in result["rows"]:
        iou = row.get("iou") or {}
        lines.append(f"| {row['model']} | " + " | ".join(_num(iou.get(c)) for c in CATEGORIES)
                     + " |")
    lines += [
        "",
        "IoU per category with ground-truth void ignored (the terms of mean IoU 7):",
        "",
        "| model | " + " | ".join(evaluated) + " |",
        "|---|" + "---:|" * len(evaluated),
    ]
    for row in result["rows"]:
        iou = row.get("iou_non_void") or {}
        lines.append(f"| {row['model']} | " + " | ".join(_num(iou.get(c)) for c in evaluated)
                     + " |")
    lines += ["", "Reproduce with:", "", "```", result["command"], "```", ""]
    return "\n".join(lines)


def data_facts(data: Path, generated: bool, args: argparse.Namespace) -> dict[str, Any]:
    stats = read_json(data / "stats.json")

    def images(split: str) -> int | None:
        entry = stats.get(split) or {}
        return entry.get("images") if isinstance(entry, dict) else None

    val_per_city = args.synth_val_images_per_city or args.synth_images_per_city
    description = (f"synthetic scenes (`cityseg-synth --cities {args.synth_cities} "
                   f"--images-per-city {args.synth_images_per_city} (val: {val_per_city}) "
                   f"--seed {args.seed}`, "
                   f"records at {'x'.join(map(str, args.record_size))})"
                   if generated else f"`{_relative(data)}`")
    return {"path": _relative(data), "description": description, "train_images": images("train"),
            "val_images": images("val")}


# --- CLI -------------------------------------------------------------------------------------

EPILOG = """\
examples:
  # the committed table: synthetic data, 10 minutes per network
  python benchmarks/compare_models.py --time-limit 10 --image-size 256x512

  # a quick end-to-end check of the script itself
  python benchmarks/compare_models.py --time-limit 1 --image-size 64x128 \\
      --synth-images-per-city 4 --inference-runs 2 --work-dir out/compare-small

  # existing data, two models, no inference timing
  python benchmarks/compare_models.py --data-dir data --models unet,fastscnn --inference-runs 0
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_models", description=__doc__.split("\n")[0], epilog=EPILOG,
        formatter_class=HelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="preprocessed DATA (default: generate synthetic data in the work dir)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "out" / "compare",
                        help="runs, reports, logs and generated data go here")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated networks to train")
    parser.add_argument("--time-limit", type=float, default=10.0, metavar="MINUTES",
                        help="training budget of EACH network (cityseg-train --time-limit)")
    parser.add_argument("--max-epochs", type=int, default=1000,
                        help="epoch cap; the time limit normally stops training first")
    parser.add_argument("--image-size", type=parse_size, default=(256, 512),
                        help="HxW the networks train and are evaluated at")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-arg", action="append", default=[],
                        help="extra flag passed to every cityseg-train (repeatable), "
                             "e.g. --train-arg=--loss=ce+dice")
    parser.add_argument("--synth-cities", type=int, default=3, help="synthetic cities per split")
    parser.add_argument("--synth-images-per-city", type=int, default=20,
                        help="synthetic images per city and split")
    parser.add_argument("--synth-val-images-per-city", type=int, default=None,
                        help="synthetic val images per city (default: as for train)")
    parser.add_argument("--record-size", type=parse_size, default=(256, 512),
                        help="HxW of the generated records (cityseg-preprocess --image-size)")
    parser.add_argument("--regenerate", action="store_true",
                        help="rebuild the synthetic data even if the work dir has it")
    parser.add_argument("--retrain", action="store_true",
                        help="train again even where the work dir holds a finished run")
    parser.add_argument("--inference-size", type=parse_size, default=(1024, 2048),
                        help="HxW of the frame timed for inference")
    parser.add_argument("--inference-runs", type=int, default=5,
                        help="timed inference calls per model (0: skip timing)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="leave out the colour-classifier row")
    parser.add_argument("--markdown-only", action="store_true",
                        help="only rewrite OUTPUT.md from OUTPUT.json (no training)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="writes OUTPUT.json and OUTPUT.md")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.markdown_only:
        result = json.loads(args.output.with_suffix(".json").read_text())
        args.output.with_suffix(".md").write_text(to_markdown(result))
        log.info("rewrote %s from its JSON", args.output.with_suffix(".md"))
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise CliError(f"unknown models {unknown} (choose from {', '.join(MODELS)})")
    if args.time_limit <= 0:
        raise CliError(f"--time-limit must be positive minutes, not {args.time_limit}")
    if args.inference_runs < 0 or args.batch_size < 1 or args.max_epochs < 1:
        raise CliError("--inference-runs must be >= 0, --batch-size and --max-epochs >= 1")
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    data = prepare_data(args, work)
    rows = []
    for name in models:
        rows.append(train_and_evaluate(name, data, work, args))
        log.info("%s: %s epochs, pixel accuracy %s, mean IoU 7 %s, inference %s ms", name,
                 rows[-1]["epochs_done"], _num(rows[-1]["pixel_accuracy"]),
                 _num(rows[-1]["mean_iou_7"]), _num(rows[-1].get("inference_ms"), 0))
    if args.baseline:
        rows.append(baseline_row(data, work, args))

    import tensorflow as tf

    result = {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/compare_models.py", *argv]),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "tensorflow": tf.__version__},
        "settings": {
            "data": data_facts(data, args.data_dir is None, args),
            "time_limit_minutes": args.time_limit, "max_epochs": args.max_epochs,
            "image_size": "x".join(map(str, args.image_size)), "batch_size": args.batch_size,
            "train_args": args.train_arg, "seed": args.seed,
            "inference_size": "x".join(map(str, args.inference_size)),
            "inference_runs": args.inference_runs,
        },
        "rows": rows,
        "total_seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.output.with_suffix(".json")
    md_path = args.output.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(to_markdown(result))
    log.info("wrote %s and %s in %.0f s", json_path, md_path, result["total_seconds"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("compare_models", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
