"""Real street photos: the default recipe against its floors, several seeds, two splits.

    python benchmarks/real_photos.py --data val=DATA --data held-out=DATA2 --time-limit 20 \\
        --seeds 0,1

For every data set given (`NAME=DATA`, each a `cityseg-preprocess` output with train and val
splits) and every recipe, the commands a user would run: `cityseg-train ... --time-limit T
--seed S`, then `cityseg-evaluate` on the whole val frames (aspect kept, padded to the
stride). Recipes:

- `default`: `cityseg-train` with its default flags: what the issue's target is about;
- `seed-recipe`: the seed project's recipe (U-Net 64..1024, every frame squashed to 128x128,
  no augmentation, plain cross-entropy, constant learning rate), the same budget;
- `colour-baseline`: a per-pixel colour classifier (`training.baselines`), no training budget;
- `model-unet`, `model-pspnet`, `model-fcn8`, `model-fastscnn`, `model-fastscnn_s4`: the
  default recipe with a given architecture (with `default`, the trainer's default model, that
  is the model comparison); with
  `--latency-runs N` each architecture's exported SavedModel is also timed on a 2048x1024 PNG
  in the same run (`realtime.time_model`), so quality and latency come from one command;
- one change from the default each (`ohem`, `weighted-ce`, `weighted-ohem`, `rotation-10`,
  `no-aux`, `crop-256x352-batch-4`, `lr-0.001`, `lr-0.003`, `scale-1-2`, `ema-0.99`,
  `lovasz`), to back or
  overturn a default by measurement; `no-cache` trains without keeping decoded frames in
  memory (training throughput at scale).

The development set of this project is CamVid laid out as a Cityscapes tree
(`../shared/data/camvid-dev`, not part of the project): `val` scores frames of a sequence that
also appears in train, so a second data set holds out a whole sequence (train on camvida +
camvidc, score camvidb) to tell how the model does on a camera it has not seen.
`bash benchmarks/camvid_data.sh ../shared/data/camvid-dev data` writes both (data/camvid,
data/camvid-heldout).

Finished runs in the work folder are reused (`--retrain` to train again), so an interrupted
benchmark continues where it stopped. `--earlier FILE.json` lets a committed result of this
script stand in for a run that is not in the work folder (same data folder, recipe flags, time
limit and extra flags, else refused): the table marks those rows and names the file and its
date, so one table can hold runs of several sessions without training them again. A reused
run or an earlier row must also have trained the model and loss that the recipe trains today:
the `default` recipe follows the trainer's defaults, which move between versions. Writes
OUTPUT.json (every run) and OUTPUT.md (mean and spread over seeds, IoU per category, training
throughput).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from bench_machine import reproduce, result_header, write_result  # noqa: E402  (on sys.path)
from compare_models import _metric_fields, _num, read_json, run_step  # noqa: E402
from realtime import latency_table, street_frame, time_model  # noqa: E402
from cityseg.cli import CliError, HelpFormatter, run_cli, setup_logging  # noqa: E402
from cityseg.vocabulary import CATEGORIES, EVALUATED_CATEGORIES  # noqa: E402
from training.run_layout import METRICS_FILE, SUMMARY_FILE  # noqa: E402

log = logging.getLogger("cityseg.real_photos")

RECIPES: dict[str, list[str]] = {
    "default": [],
    "seed-recipe": ["--model", "unet", "--width", "64", "--image-size", "128x128",
                    "--no-augment", "--loss", "ce", "--learning-rate", "0.001",
                    "--lr-schedule", "constant", "--weight-decay", "0"],
    # One change from the default each, to back (or overturn) that default by measurement.
    "ohem": ["--loss", "ohem"],
    "weighted-ce": ["--loss", "weighted_ce"],
    "rotation-10": ["--rotation", "10"],
    "weighted-ohem": ["--loss", "weighted_ohem"],
    "crop-256x352-batch-4": ["--crop-size", "256x352", "--batch-size", "4"],
    # Training throughput when the decoded frames do not stay in memory (data at scale).
    "no-cache": ["--no-cache"],
    "no-aux": ["--no-aux"],
    "lr-0.001": ["--learning-rate", "0.001"],
    "lr-0.003": ["--learning-rate", "0.003"],
    # Frames never shrunk in training: thin poles and signs kept at their size or larger, and
    # no crop padded with void (a 360x480 frame at scale 0.5 fills half a 256x352 crop).
    "scale-1-2": ["--scale-range", "1,2"],
    # Validation and best.keras on a moving average of the weights (about the last 100 steps,
    # two epochs of CamVid train): steadier than the last step's weights?
    "ema-0.99": ["--ema", "0.99"],
    # A Lovász-softmax term beside the weighted OHEM (each category weighed by its IoU, as
    # the benchmark scores it, not by its pixel count): do thin poles and signs come out?
    # It is the default since lovasz.md; `weighted-ohem` is the default before it.
    "lovasz": ["--loss", "weighted_ohem+lovasz"],
    # The model comparison: the default recipe with another architecture (`default` is the
    # trainer's default model).
    **{f"model-{name}": ["--model", name]
       for name in ("unet", "pspnet", "fcn8", "fastscnn", "fastscnn_s4")},
    # unet compiled with XLA: its bare step is faster (train_step_xla.md); is its training?
    "model-unet-xla": ["--model", "unet", "--jit"],
}
BASELINE = "colour-baseline"
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks" / "real_photos"


def run_tag(recipe: str, data_name: str, seed: int) -> str:
    """The name of one run's folders (runs/TAG, reports/TAG) and logs in the work folder."""
    return f"{recipe}-{data_name}-seed{seed}"


def finished(work: Path, tag: str) -> bool:
    """Whether the work folder holds that run's finished training."""
    return (work / "runs" / tag / SUMMARY_FILE).is_file()


def trained(record: dict[str, Any]) -> dict[str, Any]:
    """The model and loss of a run's config.json or of a result row: what `trained_as` names."""
    return {key: record.get(key) for key in ("model", "loss")}


def trained_as(recipe: str, args: argparse.Namespace) -> dict[str, str | None]:
    """The model and loss a run of `recipe` trains in this command: the last `--model` and
    `--loss` of its flags and the extra ones, else the trainer's defaults of today."""
    from training.config import DEFAULT_LOSS
    from training.models import DEFAULT_MODEL

    flags = [str(flag) for flag in (*RECIPES[recipe], *args.train_arg)]
    out: dict[str, str | None] = {"model": DEFAULT_MODEL, "loss": DEFAULT_LOSS}
    for i, flag in enumerate(flags):
        name, equals, value = flag.partition("=")
        key = name.removeprefix("--")
        if key != name and key in out:
            out[key] = value if equals else (flags[i + 1] if i + 1 < len(flags) else None)
    return out


def train_and_evaluate(recipe: str, data_name: str, data: Path, seed: int, work: Path,
                       args: argparse.Namespace) -> dict[str, Any]:
    """One run: train under the budget, evaluate on the whole val frames."""
    tag = run_tag(recipe, data_name, seed)
    run_dir = work / "runs" / tag
    report_dir = work / "reports" / tag
    if finished(work, tag) and not args.retrain:
        was, now = trained(read_json(run_dir / "config.json")), trained_as(recipe, args)
        if was != now:
            raise CliError(f"{run_dir} trained {was}, but {recipe} now trains {now}: pass "
                           "another --work-dir, or --retrain")
    if args.retrain or not finished(work, tag):
        shutil.rmtree(run_dir, ignore_errors=True)
        run_step("cityseg-train", ["--data-dir", data, "--output-dir", run_dir,
                                   "--time-limit", args.time_limit, "--seed", seed,
                                   *RECIPES[recipe], *args.train_arg],
                 work / "logs" / f"train-{tag}.log")
    else:
        log.info("reusing the finished run %s (pass --retrain to train again)", run_dir)
    if args.retrain or not (report_dir / METRICS_FILE).is_file():
        run_step("cityseg-evaluate", ["--data-dir", data, "--model", run_dir, "--split", "val",
                                      "--report-dir", report_dir],
                 work / "logs" / f"evaluate-{tag}.log")
    summary = read_json(run_dir / SUMMARY_FILE)
    config = read_json(run_dir / "config.json")
    return {"recipe": recipe, "data": data_name, "seed": seed, "run_dir": str(run_dir),
            "model": summary.get("model"), "crop_size": summary.get("crop_size"),
            "image_size": summary.get("image_size"), "loss": config.get("loss"),
            "epochs_done": summary.get("epochs_done"),
            "training_seconds": summary.get("training_seconds"),
            "train_images_per_second": summary.get("train_images_per_second"),
            "best_epoch": summary.get("best_epoch"),
            "best_val_mean_iou": summary.get("best_val_mean_iou"),
            **_metric_fields(read_json(report_dir / METRICS_FILE))}


def earlier_rows(files: Sequence[Path], data: dict[str, Path],
                 args: argparse.Namespace) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(recipe, data, seed) -> a committed row that may stand in for that run, from `--earlier`.

    A file's rows count only if they were made the same way: the data set's folder, the
    recipe's flags, the time limit and the extra flags all as in this command.
    """
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for file in files:
        if not file.is_file():
            raise CliError(f"--earlier {file}: no such file")
        try:
            earlier = read_json(file)
            settings = earlier["settings"]
            source = f"{file.name} ({earlier['generated']})"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CliError(f"--earlier {file}: not a result of this script ({exc})") from None
        if settings.get("time_limit_minutes") != args.time_limit \
                or list(settings.get("train_args") or []) != list(args.train_arg):
            raise CliError(f"--earlier {file}: made with --time-limit "
                           f"{settings.get('time_limit_minutes')} and train args "
                           f"{settings.get('train_args')}, not {args.time_limit} and "
                           f"{args.train_arg}")
        for row in earlier.get("rows", []):
            recipe, name, seed = row.get("recipe"), row.get("data"), row.get("seed")
            if seed is None or name not in data or recipe not in RECIPES \
                    or settings["data"].get(name) != str(data[name]) \
                    or settings["recipes"].get(recipe) != RECIPES[recipe]:
                continue
            was, now = trained(row), trained_as(recipe, args)
            if was != now:
                log.info("%s in %s trained %s, not today's %s: not taken",
                         run_tag(recipe, name, seed), file.name, was, now)
                continue
            # A row that an earlier file itself took from another keeps its first source.
            out.setdefault((recipe, name, seed), {"source": source, **row})
    return out


def baseline_row(data_name: str, data: Path, work: Path) -> dict[str, Any]:
    """The colour classifier fitted on train, scored on the whole val frames."""
    from training import baselines
    from training.evaluate import ModelSource, write_report

    started = time.monotonic()
    baseline = baselines.fit_colour_baseline(data, "train", batch_size=1)
    evaluation = baselines.evaluate_colour_baseline(baseline, data, "val", batch_size=1)
    metrics = write_report(evaluation, work / "reports" / f"{BASELINE}-{data_name}",
                           source=ModelSource(BASELINE, Path(BASELINE)), split="val",
                           data_dir=data, seconds=time.monotonic() - started)
    return {"recipe": BASELINE, "data": data_name, "seed": None, **_metric_fields(metrics)}


def latency_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every trained architecture's exported signature on one 2048x1024 PNG, in this run.

    The first seed's weights of each model, exported as `cityseg-export` does (default
    working resolution), timed by `realtime.time_model` against `tf.io.decode_png` of the same
    bytes, interleaved call by call.
    """
    from training.export import DEFAULT_MAX_LONG_SIDE

    first_runs: dict[str, Path] = {}
    for row in rows:
        if row.get("model") and row.get("run_dir") and not row.get("source"):
            first_runs.setdefault(row["model"], Path(row["run_dir"]))
    size = (1024, 2048)
    frame = street_frame(size)
    out = []
    for name, run_dir in first_runs.items():
        log.info("timing the exported %s on a %dx%d PNG (%d calls)", name, size[1], size[0],
                 args.latency_runs)
        out.append(time_model(name, frame, frame_size=size, max_long_side=DEFAULT_MAX_LONG_SIDE,
                              calls=args.latency_runs, pause=0.2, runs={name: run_dir}))
    return out


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, min and max over seeds for each (recipe, data)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["recipe"], row["data"]), []).append(row)
    out = []
    for (recipe, data), members in groups.items():
        scores = [r["mean_iou_7"] for r in members if r.get("mean_iou_7") is not None]
        iou = {c: statistics.mean(r["iou_non_void"][c] for r in members
                                  if (r.get("iou_non_void") or {}).get(c) is not None)
               for c in (CATEGORIES[i] for i in EVALUATED_CATEGORIES)
               if any((r.get("iou_non_void") or {}).get(c) is not None for r in members)}
        speeds = [r["train_images_per_second"] for r in members
                  if r.get("train_images_per_second")]
        out.append({"recipe": recipe, "data": data, "seeds": len(members),
                    "mean_iou_7": statistics.mean(scores) if scores else None,
                    "min": min(scores) if scores else None,
                    "max": max(scores) if scores else None,
                    "iou_non_void": iou, "model": members[0].get("model"),
                    "train_images_per_second": statistics.mean(speeds) if speeds else None})
    return out


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    m = result["machine"]
    title = s.get("title") or (
        "the default recipe and its floors" if "seed-recipe" in s["recipes"]
        else "every architecture under the default recipe"
        if any(r.startswith("model-") for r in s["recipes"]) else "recipes compared")
    lines = [
        "# Real street photos: " + title,
        "",
        f"Generated {result['generated']} by `{result['command']}` on {m['nproc']} CPU cores "
        f"({m['cpu_model']}), TensorFlow {m.get('tensorflow')}.",
        "",
        "- Data: " + "; ".join(f"`{k}` = {v}" for k, v in s["data"].items()) + ".",
        f"- Budget: `--time-limit {s['time_limit_minutes']:g}` minutes of `cityseg-train` per "
        "run (set-up included; the epoch running when time is up is still validated, so a "
        "slow model overshoots by its validation), seeds "
        + ", ".join(f"{k}: {v}" for k, v in s['seeds'].items())
        + "".join(f", {k}: {v}" for k, v in s.get('seeds_of_recipes', {}).items())
        + "; scored by "
        "`cityseg-evaluate` on the whole val frames at their own size (aspect kept).",
        *([f"- Extra `cityseg-train` flags on every run: `{' '.join(map(str, s['train_args']))}`"
           " (with `--epochs`, a step budget that binds before the time limit: recipes of the "
           "same step cost compared on equal training)."] if s.get("train_args") else []),
        "- Recipes: " + "; ".join(f"`{k}` = `{' '.join(v) or '(default flags)'}`"
                                  for k, v in s["recipes"].items()) + ".",
        "- mean IoU 7: Cityscapes category convention (7 categories, ground-truth void "
        "ignored). Spread: min..max over seeds.",
        "",
        "| recipe | data | model | seeds | mean IoU 7 | min..max | train images/s | "
        + " | ".join(CATEGORIES[i] for i in EVALUATED_CATEGORIES) + " |",
        "|---|---|---|---:|---:|---|---:|" + "---:|" * len(EVALUATED_CATEGORIES),
    ]
    for row in result["summary"]:
        iou = row["iou_non_void"]
        lines.append(
            f"| {row['recipe']} | {row['data']} | {row['model'] or '-'} | {row['seeds']} "
            f"| {_num(row['mean_iou_7'])} | {_num(row['min'])}..{_num(row['max'])} "
            f"| {_num(row['train_images_per_second'], 1)} | "
            + " | ".join(_num(iou.get(CATEGORIES[i])) for i in EVALUATED_CATEGORIES) + " |")
    if result.get("latency"):
        lines += ["", "Latency of each architecture's exported SavedModel (first seed's weights, "
                  "default export working resolution), measured in the same run: one "
                  "2048x1024 PNG through the signature (decode, model, mask PNG encode), "
                  f"{len(result['latency'][0]['served_ms'])} calls interleaved with "
                  "`tf.io.decode_png` of the same bytes; real-time target: p50 <= 4x decode.",
                  "", *latency_table(result["latency"], "params")]
    earlier = any(row.get("source") for row in result["rows"])
    lines += ["", "Every run" + (" (source: the run made by this command, or the committed "
                                 "result it was taken from with `--earlier`)" if earlier else "")
              + ":", "",
              "| recipe | data | seed | epochs | train images/s | best val (trainer) "
              "| mean IoU 7 (evaluate) |" + (" source |" if earlier else ""),
              "|---|---|---:|---:|---:|---:|---:|" + ("---|" if earlier else "")]
    for row in result["rows"]:
        lines.append(f"| {row['recipe']} | {row['data']} | {_num(row['seed'])} "
                     f"| {_num(row.get('epochs_done'))} "
                     f"| {_num(row.get('train_images_per_second'), 1)} "
                     f"| {_num(row.get('best_val_mean_iou'))} | {_num(row.get('mean_iou_7'))} |"
                     + (f" {row.get('source') or 'this run'} |" if earlier else ""))
    lines += reproduce(result["command"])
    return "\n".join(lines)


EPILOG = """\
examples:
  # the committed figures (CamVid dev set as two DATA folders, see the module docstring)
  python benchmarks/real_photos.py --data val=data/camvid --data held-out=data/camvid-heldout \\
      --time-limit 20 --seeds 0,1 --work-dir out/real

  # the model comparison: every architecture, default recipe, quality and latency
  python benchmarks/real_photos.py --data val=data/camvid \
      --recipes default,model-unet,model-pspnet,model-fcn8 --time-limit 10 --seeds 0,1 \
      --latency-runs 11 --no-baseline --work-dir out/models \
      --output docs/benchmarks/model_comparison_real

  # only the default recipe, one seed, 5 minutes
  python benchmarks/real_photos.py --data val=data/camvid --recipes default --seeds 0 \\
      --time-limit 5 --no-baseline
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="real_photos", description=__doc__.split("\n")[0], epilog=EPILOG,
        formatter_class=HelpFormatter)
    parser.add_argument("--data", action="append", required=True, metavar="NAME=DATA",
                        help="a preprocessed data set with train and val (repeatable)")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"comma-separated, from {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--seeds-of", action="append", default=[], metavar="NAME=S,S",
                        help="other seeds for one data set, one recipe or one RECIPE@DATA "
                             "(repeatable; the most specific wins; no seeds: not run)")
    parser.add_argument("--time-limit", type=float, default=20.0, metavar="MINUTES")
    parser.add_argument("--train-arg", action="append", default=[],
                        help="extra flag for every cityseg-train (repeatable)")
    parser.add_argument("--latency-runs", type=int, default=0, metavar="N",
                        help="also time every architecture's exported model on a 2048x1024 "
                             "PNG, N calls (0: not timed)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--earlier", action="append", default=[], type=Path,
                        metavar="FILE.json",
                        help="a committed result of this script whose runs stand in for runs "
                             "not in the work folder (made the same way; repeatable, the "
                             "first file that has a run wins)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "out" / "real")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--title", default=None,
                        help="what the comparison is, after \"Real street photos: \" "
                             "(default: from the recipes)")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging()
    data: dict[str, Path] = {}
    for item in args.data:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_dir():
            raise CliError(f"--data must be NAME=DATA with an existing folder, not {item!r}")
        data[name] = Path(path).resolve()
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        raise CliError(f"unknown recipes {unknown} (choose from {', '.join(RECIPES)})")
    def parse_seeds(text: str) -> list[int]:
        try:
            return [int(s) for s in text.split(",") if s]
        except ValueError:
            raise CliError(f"seeds must be comma-separated integers, not {text!r}") from None

    seeds = parse_seeds(args.seeds)
    seeds_of = {name: parse_seeds(text) for name, _, text in
                (item.partition("=") for item in args.seeds_of)}
    pairs = {f"{r}@{d}" for r in recipes for d in data}
    if set(seeds_of) - set(data) - set(recipes) - pairs:
        raise CliError(f"--seeds-of names neither a data set, a chosen recipe nor RECIPE@DATA: "
                       f"{sorted(set(seeds_of) - set(data) - set(recipes) - pairs)}")

    def seeds_for(recipe: str, name: str) -> list[int]:
        return seeds_of.get(f"{recipe}@{name}",
                            seeds_of.get(recipe, seeds_of.get(name, seeds)))

    if args.latency_runs < 0:
        raise CliError(f"--latency-runs must be >= 0, not {args.latency_runs}")
    work = args.work_dir.resolve()
    committed = earlier_rows(args.earlier, data, args)
    rows = []
    for name, path in data.items():
        for recipe in recipes:
            for seed in seeds_for(recipe, name):
                tag = run_tag(recipe, name, seed)
                if (recipe, name, seed) in committed and not args.retrain \
                        and not finished(work, tag):
                    rows.append(committed[(recipe, name, seed)])
                    log.info("%s: taken from %s", tag, rows[-1]["source"])
                else:
                    rows.append(train_and_evaluate(recipe, name, path, seed, work, args))
                log.info("%s on %s, seed %d: mean IoU 7 %s", recipe, name, seed,
                         _num(rows[-1].get("mean_iou_7")))
        if args.baseline:
            rows.append(baseline_row(name, path, work))
    result = {
        **result_header("real_photos.py", argv),
        "settings": {"data": {k: str(v) for k, v in data.items()},
                     "time_limit_minutes": args.time_limit,
                     "seeds": {name: seeds_of.get(name, seeds) for name in data},
                     "seeds_of_recipes": {r: seeds_of[r] for r in [*recipes, *sorted(pairs)]
                                          if r in seeds_of},
                     "recipes": {r: RECIPES[r] for r in recipes},
                     "train_args": args.train_arg, "title": args.title},
        "rows": rows,
        "summary": aggregate(rows),
        "latency": latency_rows(rows, args) if args.latency_runs > 0 else [],
    }
    write_result(args.output, result, to_markdown(result))
    log.info("wrote %s.json and .md", args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("real_photos", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
