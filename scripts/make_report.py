"""Builds docs/REPORT.md and its plots from the committed benchmark figures.

    python scripts/make_report.py

Nothing in the report is typed by hand: every number comes from a JSON file under
docs/benchmarks/, written by the benchmark command named next to it. The README's results
block (between the GENERATED markers) is rewritten from the same files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from cityseg import vocabulary as V  # noqa: E402

BENCH = REPO / "docs" / "benchmarks"
REPORT = REPO / "docs" / "REPORT.md"
PLOTS = REPO / "docs" / "report"
README = REPO / "README.md"
BEGIN, END = "<!-- BEGIN GENERATED: results -->", "<!-- END GENERATED: results -->"

REAL_PHOTOS = "python benchmarks/real_photos.py (exact flags in the section)"
TRAIN_STEP = "python benchmarks/train_step.py (exact flags in the section)"
COMMANDS = {
    "real_photos": REAL_PHOTOS,
    "realtime": "python benchmarks/realtime.py (exact flags in the section)",
    "model_comparison": "python benchmarks/compare_models.py (exact flags in the table's header)",
    "model_comparison_real": REAL_PHOTOS,
    "preprocess": "python benchmarks/preprocess_bench.py",
    "input_pipeline": "python benchmarks/input_pipeline_bench.py",
    "serving": "python benchmarks/serving_bench.py",
    "proxy_load": "python benchmarks/proxy_load.py",
    "setup_times": "python benchmarks/setup_times.py",
    "recipes": REAL_PHOTOS,
    "scale_range": REAL_PHOTOS,
    "ema": REAL_PHOTOS,
    "ema_20min": REAL_PHOTOS,
    "lovasz": REAL_PHOTOS,
    "stride4": REAL_PHOTOS,
    "budget_40min": REAL_PHOTOS,
    "learning_rate": REAL_PHOTOS,
    "train_cache": REAL_PHOTOS,
    "unet_xla": REAL_PHOTOS,
    "job_scaling": "python benchmarks/preprocess_bench.py --scaling",
    "job_scaling_quiet": "python benchmarks/preprocess_bench.py --scaling 1,24,96 "
                         "--scaling-output docs/benchmarks/job_scaling_quiet.json",
    "train_step": TRAIN_STEP,
    "train_step_sizes": TRAIN_STEP,
    "train_step_xla": TRAIN_STEP,
    "train_step_amx": TRAIN_STEP,
    "train_step_s4": TRAIN_STEP,
    "server_hardening": "python benchmarks/server_hardening.py",
    "proxy_slow_clients": "python benchmarks/proxy_slow_clients.py",
    "proxy_footprint": "python benchmarks/proxy_footprint.py",
}
# The floors the real-photo headline is read against, by their recipe in real_photos.py.
FLOORS = {"colour-baseline": "a per-pixel colour classifier",
          "seed-recipe": "the seed's recipe under the same budget"}
# Benchmarks that write their own markdown next to the JSON: the report includes it as it is.
MARKDOWN_SECTIONS = ("recipes", "learning_rate", "scale_range", "stride4", "ema", "ema_20min",
                     "lovasz", "budget_40min", "train_step", "train_step_amx", "train_step_s4",
                     "train_step_xla", "unet_xla", "train_step_sizes", "train_cache",
                     "job_scaling_quiet", "job_scaling", "server_hardening")


def load(name: str) -> dict[str, Any] | None:
    path = BENCH / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def result_text(row: dict[str, Any]) -> str:
    """A set-up run's result without pytest's `=====` framing."""
    return ", ".join(part.strip("= ") for part in row["result"].split(": ", 1))


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine_line(doc: dict[str, Any]) -> str:
    m = doc.get("machine") or {}
    parts = [f"{m.get('nproc', '?')} CPU cores"]
    if m.get("cpu_model"):
        parts.append(str(m["cpu_model"]))
    if m.get("tensorflow"):
        parts.append(f"TensorFlow {m['tensorflow']}")
    if m.get("note"):
        parts.append(str(m["note"]))
    return ", ".join(parts)


def source(name: str) -> str:
    return f"_Source: `docs/benchmarks/{name}.json`, written by `{COMMANDS[name]}`._"


# --- Sections -------------------------------------------------------------------------------

def section_setup(doc: dict[str, Any] | None) -> list[str]:
    out = ["## Set-up from a fresh clone", ""]
    if doc is None:
        return out + ["Not measured yet.", ""]
    out += ["| command | wall time | result |", "|---|---:|---|"]
    for row in doc["runs"]:
        out.append(f"| `{row['command']}` | {row['seconds'] / 60:.1f} min | {result_text(row)} |")
    out += ["", doc.get("note", ""), "", source("setup_times"), ""]
    return out


def section_models_real(doc: dict[str, Any] | None) -> list[str]:
    """Every architecture on real photos under the default recipe, with its latency."""
    out = ["## Models on real street photos: quality against latency", ""]
    if doc is None:
        return out + ["Not measured yet.", ""]
    table = (BENCH / "model_comparison_real.md").read_text().strip().splitlines()
    out += [line for line in table if not line.startswith("# ")]
    points = quality_latency_points(doc)
    if points:
        decode = float(np.median([p["latency"]["decode_png_p50_ms"] for p in points]))
        plot_quality_against_time(
            [{"label": f"{p['model']} ({p['seeds']} seed{'s' if p['seeds'] != 1 else ''})",
              "ms": p["latency"]["p50_ms"], "iou": p["mean_iou_7"], "low": p["min"],
              "high": p["max"]} for p in points],
            PLOTS / "quality_vs_latency_real.png",
            xlabel="exported model, one 2048x1024 PNG, p50 ms (2 CPU cores, log scale)",
            ylabel="mean IoU (7 categories), CamVid val",
            title=f"Real photos, {doc['settings']['time_limit_minutes']:g} min of training each",
            target=(4 * decode, "real-time target: 4x decode_png"))
        out += ["", "![mean IoU on CamVid val against the exported model's latency]"
                "(report/quality_vs_latency_real.png)", ""]
    return out + [source("model_comparison_real"), ""]


def quality_latency_points(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per architecture: mean IoU over seeds (min..max) and its exported p50."""
    latency = {row["model"]: row for row in doc.get("latency", [])}
    return [{**row, "latency": latency[row["model"]]} for row in doc["summary"]
            if row.get("model") in latency and row.get("mean_iou_7") is not None]


def plot_quality_against_time(points: list[dict[str, Any]], path: Path, *, xlabel: str,
                              ylabel: str, title: str,
                              target: tuple[float, str] | None = None) -> None:
    """Mean IoU against milliseconds (log scale), one labelled point per model.

    Each point: label, ms, iou, and optionally low/high (the spread over seeds, as error
    bars). `target` draws a vertical line at (ms, caption).
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    placed: list[tuple[float, float]] = []
    for p in sorted(points, key=lambda p: -p["iou"]):
        x, y = p["ms"], p["iou"]
        spread = ([[y - p["low"]], [p["high"] - y]] if p.get("low") is not None else None)
        ax.errorbar(x, y, yerr=spread, fmt="o", ms=7, capsize=4)
        # A point that nearly coincides with one labelled before (within 30 % in time, 0.03
        # in IoU) has its label on the left, below, instead of over the other's.
        near = any(abs(py - y) < 0.03 and max(px, x) < 1.3 * min(px, x) for px, py in placed)
        ax.annotate(p["label"], (x, y), textcoords="offset points",
                    xytext=(-7, -14) if near else (7, 5), ha="right" if near else "left")
        placed.append((x, y))
    if target is not None:
        ax.axvline(target[0], color="0.4", linestyle="--", linewidth=1)
        ax.annotate(target[1], (target[0], ax.get_ylim()[0]), textcoords="offset points",
                    xytext=(4, 6), fontsize=8, color="0.3")
    ax.set_xscale("log")
    ax.margins(x=0.45, y=0.15)  # room for the labels beside the outermost points
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section_models(doc: dict[str, Any] | None) -> list[str]:
    out = ["## Models: the seed's comparison on synthetic scenes, reproduced", ""]
    if doc is None:
        return out + ["Not measured yet.", ""]
    table = (BENCH / "model_comparison.md").read_text().splitlines()
    out += [line for line in table[1:] if not line.startswith("# ")]
    rows = [r for r in doc["rows"] if r.get("iou")]
    if rows:
        plot_iou(rows, PLOTS / "iou_per_category.png")
        plot_quality_against_time(
            [{"label": r["model"], "ms": r["inference_ms"], "iou": r["mean_iou_7"]}
             for r in rows if r.get("inference_ms") is not None],
            PLOTS / "quality_vs_speed.png",
            xlabel="inference ms per 1024x2048 frame (CPU, log scale)",
            ylabel="mean IoU (7 categories)", title="Quality against speed")
        out += ["", "![IoU per category](report/iou_per_category.png)", "",
                "![mean IoU against inference time](report/quality_vs_speed.png)", ""]
    return out + [source("model_comparison"), ""]


def plot_iou(rows: list[dict[str, Any]], path: Path) -> None:
    cats = list(V.CATEGORIES[1:])
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(cats))
    for i, row in enumerate(rows):
        values = [row["iou_non_void"].get(c) or 0.0 for c in cats]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=row["model"])
    ax.set_xticks(x, cats)
    ax.set_ylabel("IoU (ground-truth void ignored)")
    ax.set_ylim(0, 1)
    ax.legend(ncol=len(rows), fontsize=8, loc="upper right")
    ax.set_title("IoU per category, validation split")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section_preprocess(doc: dict[str, Any] | None) -> list[str]:
    out = ["## Preprocessing (Beam job) against a plain Python loop", ""]
    if doc is None:
        return out + ["Not measured yet.", ""]
    s, ips, r = doc["seconds"], doc["images_per_s"], doc["ratios"]
    out += [f"{doc['images']} synthetic frames at {doc['raw_size'][0]}x{doc['raw_size'][1]}, "
            f"resized to {doc['output_size'][0]}x{doc['output_size'][1]}; {machine_line(doc)}.",
            "", "| run | seconds | images/s |", "|---|---:|---:|",
            f"| plain single-process loop | {fmt(s['loop'])} | {fmt(ips['loop'])} |",
            f"| `{doc['job_command']}` | {fmt(s['job'])} | {fmt(ips['job'])} |"]
    for key in sorted(k for k in s if k.startswith("job_")):
        label = f"job, `--direct_running_mode={key[len('job_'):]}`"
        out.append(f"| {label} | {fmt(s[key])} | {fmt(ips[key])} |")
    out += ["", f"- job speed-up over the loop: **{fmt(r['loop_over_job'])}x** "
            f"(loop seconds / job seconds)",
            f"- floor (PNG decode only, all cores): {fmt(doc['floor']['images_per_s'])} images/s",
            f"- job records byte-equal to the loop's: {doc.get('job_records_equal_loop_records')}",
            "", source("preprocess"), ""]
    return out


def section_input(doc: dict[str, Any] | None) -> list[str]:
    out = ["## Training input pipeline against the seed's loader", ""]
    if doc is None:
        return out + ["Not measured yet.", ""]
    c = doc["config"]
    out += [f"{c['images']} photos at {c['raw_size'][0]}x{c['raw_size'][1]}, records at "
            f"{c['record_size'][0]}x{c['record_size'][1]}, batches at "
            f"{c['train_size'][0]}x{c['train_size'][1]}, batch {c['batch_size']}; "
            f"{machine_line(doc)}.", "", "| loader | images/s | vs the seed's |", "|---|---:|---:|"]
    seed = doc["seed_pydataset"]["images_per_s"]
    for key in ("seed_pydataset", "make_dataset", "make_dataset_augmented",
                "make_dataset_jpeg_augmented", "make_dataset_cached",
                "make_dataset_cached_augmented"):
        if key in doc:
            row = doc[key]
            out.append(f"| {row['what']} | {fmt(row['images_per_s'])} | "
                       f"{fmt(row['images_per_s'] / seed)}x |")
    out += ["", f"Target: {fmt(doc['target_ratio'], 0)}x. {doc.get('notes', '')}", ""]
    profile = doc.get("profile")
    if profile:
        stages = [k for k in profile if isinstance(profile[k], dict)]
        out += [profile["what"][:1].upper() + profile["what"][1:] + ":", "",
                "| stage | ms per image | share |", "|---|---:|---:|"]
        out += [f"| {k} | {fmt(profile[k]['ms_per_image'])} | "
                f"{profile[k]['share'] * 100:.0f} % |" for k in stages]
        out.append("")
    out += [source("input_pipeline"), ""]
    return out


def section_serving(doc: dict[str, Any] | None) -> list[str]:
    out = ["## Serving: gRPC and REST against the SavedModel in-process", ""]
    if doc is None:
        return out + ["Not measured yet.", ""]
    lat = doc["latency"]
    base = lat["in_process"]["p50_ms"]
    out += [f"One {doc['image']['height']}x{doc['image']['width']} PNG "
            f"({fmt(doc['image']['png_bytes'])} bytes); {machine_line(doc)}.", "",
            "| path | p50 ms | p99 ms | p50 overhead |", "|---|---:|---:|---:|"]
    for key, label in (("in_process", "SavedModel in-process"), ("grpc", "gRPC Predict"),
                       ("rest", "REST :predict")):
        row = lat[key]
        overhead = "–" if key == "in_process" else f"{(row['p50_ms'] / base - 1) * 100:+.1f} %"
        out.append(f"| {label} | {fmt(row['p50_ms'], 1)} | {fmt(row['p99_ms'], 1)} | {overhead} |")
    rb = doc["response_bytes"]
    out += ["", f"Response bytes: gRPC {fmt(rb['grpc'])}, REST {fmt(rb['rest'])} "
            f"(a PNG mask, not per-pixel lists).", "",
            "| clients | batching | images/s | p50 ms | p99 ms |", "|---:|---|---:|---:|---:|"]
    for mode in ("no_batching", "batching"):
        for row in doc["throughput"].get(mode) or []:
            out.append(f"| {row['clients']} | {'on' if mode == 'batching' else 'off'} | "
                       f"{fmt(row['images_per_s'])} | {fmt(row['p50_ms'], 1)} | "
                       f"{fmt(row['p99_ms'], 1)} |")
    return out + ["", source("serving"), ""]


def section_proxy(doc: dict[str, Any] | None) -> list[str]:
    out = ["## Proxy under load", ""]
    if doc is None:
        return out + ["Not measured yet.", ""]
    c, r = doc["config"], doc["results"]
    lat = r["latency_ms"]
    out += [f"{c['clients']} concurrent clients for {fmt(c['duration_s'], 0)} s on "
            f"`GET /api/v1/images/{{id}}/segmentation` ({c['image_size'][0]}x{c['image_size'][1]} "
            f"frames, model {c['model']}); {machine_line(doc)}.", "",
            "| requests | errors | requests/s | p50 ms | p99 ms |", "|---:|---:|---:|---:|---:|",
            f"| {fmt(r['requests'])} | {fmt(r['errors'])} | {fmt(r['requests_per_s'])} | "
            f"{fmt(lat['p50'], 1)} | {fmt(lat['p99'], 1)} |", "", source("proxy_load"), ""]
    return out


def section_real_photos(doc: dict[str, Any] | None, realtime: dict[str, Any] | None
                        ) -> list[str]:
    """Real photos (CamVid dev set): the default recipe, its floors, and real time."""
    out = ["## Real street photos", ""]
    if doc is None:
        return out + ["Not measured yet.", ""]
    s = doc["settings"]
    cats = [V.CATEGORIES[c] for c in V.EVALUATED_CATEGORIES]
    out += [f"`{doc['command']}`; {machine_line(doc)}. Each run: `cityseg-train --time-limit "
            f"{fmt(s['time_limit_minutes'], 0)}` (set-up and validation included), scored by "
            "`cityseg-evaluate` on whole val frames. Spread: min..max over seeds.", "",
            "| recipe | data | model | seeds | mean IoU 7 | min..max | train img/s | "
            + " | ".join(cats) + " |", "|---|---|---|---:|---:|---|---:|" + "---:|" * len(cats)]
    for row in doc["summary"]:
        iou = row["iou_non_void"]
        out.append(f"| {row['recipe']} | {row['data']} | {row['model'] or '–'} | {row['seeds']} "
                   f"| {fmt(row['mean_iou_7'], 3)} | {fmt(row['min'], 3)}..{fmt(row['max'], 3)}"
                   f" | {fmt(row['train_images_per_second'], 1)} | "
                   + " | ".join(fmt(iou.get(c), 3) for c in cats) + " |")
    out += ["", source("real_photos"), ""]
    if realtime is not None:
        rs = realtime["settings"]
        out += ["### Real time", "",
                f"`{realtime['command']}`: {rs['frame']}, export `--max-long-side "
                f"{rs['max_long_side']}`, {rs['runs']} interleaved calls; target: p50 of the "
                "signature at most 4x `tf.io.decode_png` of the same bytes.", "",
                "| model | working resolution | p50 ms | decode_png p50 ms | ratio | target |",
                "|---|---|---:|---:|---:|---|"]
        for row in realtime["rows"]:
            out.append(f"| {row['model']} | {'x'.join(map(str, row['working_resolution']))} "
                       f"| {fmt(row['p50_ms'], 0)} | {fmt(row['decode_png_p50_ms'], 0)} "
                       f"| {fmt(row['ratio'])} | {'met' if row['meets_target'] else 'missed'} |")
        out += ["", source("realtime"), ""]
    return out


def section_markdown(name: str) -> list[str]:
    """A benchmark's own markdown, its title one level down."""
    path = BENCH / f"{name}.md"
    if not path.is_file():
        return []
    text = path.read_text().strip().splitlines()
    return ["#" + line if line.startswith("#") else line for line in text] + [
        "", f"_Source: `docs/benchmarks/{name}.json`, written by `{COMMANDS[name]}`._", ""]


def section_slow_clients(doc: dict[str, Any] | None) -> list[str]:
    if doc is None:
        return []
    out = ["## The proxy under slow clients", "", doc["what"], "",
           "| proxy | p50 unloaded ms | p50 with slow clients ms | unanswered | ratio |",
           "|---|---:|---:|---:|---:|"]
    for name, row in doc["results"].items():
        out.append(f"| {name} | {fmt(row['unloaded']['p50_ms'], 1)} "
                   f"| {fmt(row['with_slow_clients']['p50_ms'], 1)} "
                   f"| {row['with_slow_clients']['unanswered']} of "
                   f"{row['with_slow_clients']['requests']} | {fmt(row['p50_ratio'])} |")
    return out + ["", f"Target: {doc['target']}.", "", source("proxy_slow_clients"), ""]


def readme_block(docs: dict[str, dict[str, Any] | None]) -> list[str]:
    out = [BEGIN, "", "Measured on this project's 2-core machine (details and commands in "
           "[docs/REPORT.md](docs/REPORT.md)):", ""]
    setup = docs["setup_times"]
    if setup:
        for row in setup["runs"]:
            out.append(f"- `{row['command']}` from a fresh clone: "
                       f"{row['seconds'] / 60:.1f} min ({result_text(row)}; measured "
                       f"{setup['measured_at'][:10]}, re-run benchmarks/setup_times.py for "
                       "today's suite)")
    real = docs["real_photos"]
    if real:
        for row in real["summary"]:
            if row["recipe"] == "default":
                out.append(f"- real photos (CamVid {row['data']}), `cityseg-train` defaults "
                           f"({row['model']}) for {real['settings']['time_limit_minutes']:g} "
                           f"min: mean IoU (7 categories) {row['mean_iou_7']:.3f} "
                           f"({row['seeds']} seed(s), {row['min']:.3f}..{row['max']:.3f})")
        floors = [f"{FLOORS[row['recipe']]} {row['mean_iou_7']:.3f} on {row['data']}"
                  for row in real["summary"]
                  if row["recipe"] in FLOORS and row.get("mean_iou_7") is not None]
        if floors:
            out.append("- real photos, the floors beside it: " + ", ".join(floors))
    rt = docs["realtime"]
    if rt:
        row = rt["rows"][0]
        out.append(f"- real time: {row['model']} answers a 2048x1024 PNG in {row['p50_ms']:.0f} ms "
                   f"(p50) = {row['ratio']:.2f}x `tf.io.decode_png` of the same bytes (target "
                   f"4x), working at {'x'.join(map(str, row['working_resolution']))}")
    real_models = docs["model_comparison_real"]
    if real_models:
        budget = real_models["settings"]["time_limit_minutes"]
        parts = [f"{p['model']} {p['mean_iou_7']:.3f} ({p['seeds']} seed"
                 f"{'s' if p['seeds'] != 1 else ''}) at {p['latency']['p50_ms']:.0f} ms "
                 f"({p['latency']['ratio']:.1f}x decode)"
                 for p in sorted(quality_latency_points(real_models),
                                 key=lambda p: p["latency"]["p50_ms"])]
        if parts:
            out.append(f"- every architecture on real photos (CamVid val, the default recipe "
                       f"when it ran, {real_models['generated']}, "
                       f"{budget:g} min each, mean over seeds; exported p50 on a 2048x1024 "
                       "PNG): " + ", ".join(parts)
                       + " ([plot](docs/report/quality_vs_latency_real.png))")
    models = docs["model_comparison"]
    if models:
        best = max((r for r in models["rows"] if r["model"] != "colour-baseline"),
                   key=lambda r: r["mean_iou_7"])
        base = next((r for r in models["rows"] if r["model"] == "colour-baseline"), None)
        line = (f"- synthetic scenes, best network under the same training budget: "
                f"**{best['model']}**, mean IoU (7 categories) {best['mean_iou_7']:.3f}")
        if base:
            line += f" against {base['mean_iou_7']:.3f} for a per-pixel colour classifier"
        out.append(line)
    pre = docs["preprocess"]
    if pre:
        out.append(f"- Beam preprocessing: {pre['ratios']['loop_over_job']:.2f}x the speed "
                   f"of a plain single-process loop ({pre['images']} full-resolution frames)")
    quiet = docs["job_scaling_quiet"]
    if quiet:
        out.append("- Beam job against the loop on a quiet machine (job time / loop time, target "
                   "0.6 at 24 and 0.35 at 96 frames): " + ", ".join(
                       f"{row['job_over_loop']:.2f} at {row['frames']}" for row in quiet["rows"])
                   + "; without the start-up the job does " + ", ".join(
                       f"{m['job']['frames_per_s_per_core']:.1f} frames/s per core "
                       f"({m['frames'][0]}->{m['frames'][1]})" for m in quiet["marginal"]))
    job = docs["job_scaling"]
    if job:
        by_frames = {row["frames"]: row for row in job["rows"]}
        out.append("- Beam job against the loop, 2 cores shared with other jobs (job time / loop "
                   "time): " + ", ".join(f"{row['job_over_loop']:.2f} at {n}"
                                                for n, row in sorted(by_frames.items()))
                   + f"; peak memory at 384 frames {job['peak_rss_384_over_96']['job']:.3f}x "
                     "the 96-frame peak (target 1.2)")
    inp = docs["input_pipeline"]
    if inp:
        out.append(f"- tf.data input pipeline: {inp['ratio']:.1f}x the seed's loader "
                   f"({inp.get('ratio_cached', inp['ratio']):.1f}x with the in-memory cache)"
                   if "ratio_cached" in inp else
                   f"- tf.data input pipeline: {inp['ratio']:.1f}x the seed's loader")
        if "ratio_augmented" in inp:
            out[-1] += (f"; uncached with augmentation {inp['ratio_augmented']:.1f}x "
                        + (f"from PNG records, {inp['ratio_jpeg_augmented']:.1f}x from the "
                           "job's JPEG records " if "ratio_jpeg_augmented" in inp else "")
                        + f"(target {inp.get('target_ratio', 10):g}x)")
    srv = docs["serving"]
    if srv:
        lat = srv["latency"]
        out.append(f"- gRPC serving overhead over the in-process SavedModel (p50): "
                   f"{(lat['grpc']['p50_ms'] / lat['in_process']['p50_ms'] - 1) * 100:+.1f} %")
    prx = docs["proxy_load"]
    if prx:
        r = prx["results"]
        out.append(f"- proxy, {prx['config']['clients']} clients: {r['errors']} errors in "
                   f"{r['requests']} requests, p50 {r['latency_ms']['p50']:.0f} ms, "
                   f"p99 {r['latency_ms']['p99']:.0f} ms")
    slow = docs["proxy_slow_clients"]
    if slow:
        after = slow["results"]["after"]
        out.append(f"- proxy with {slow['config']['slow_clients']} slow clients holding "
                   f"connections: p50 "
                   f"{after['p50_ratio']:.2f}x its unloaded p50 (target under 2x; before: "
                   f"{slow['results']['before']['with_slow_clients']['unanswered']} of "
                   f"{slow['results']['before']['with_slow_clients']['requests']} unanswered)")
    foot = docs["proxy_footprint"]
    if foot:
        ratios = foot["ratios_new_over_today"]
        out.append(f"- thin proxy: gunicorn master memory {ratios['master_rss']:.3f}x and cold "
                   f"start {ratios['cold_start']:.3f}x those of the TensorFlow-loading proxy "
                   f"(baseline {foot['baseline']['ref']}; target 0.25)")
    hard = docs["server_hardening"]
    if hard:
        rows = hard["abandoned"]
        new = next(v for k, v in rows.items() if k.startswith("new"))
        old = next(v for k, v in rows.items() if k.startswith("old"))
        out.append(f"- model server: a small call right after 8 abandoned 4096x4096 calls "
                   f"takes {new['after_abandoned_s']:.3f} s (alone {new['alone_s']:.4f} s; before the "
                   f"fix {old['after_abandoned_s']:.1f} s)")
    return out + ["", END]


def main() -> int:
    docs = {name: load(name) for name in COMMANDS}
    lines = ["# cityseg: measured report", "",
             "Generated by `python scripts/make_report.py` from the JSON files in "
             "`docs/benchmarks/`; each section names the command that wrote its figures. "
             "All runs are on the project's machine: 2 CPU cores, no GPU.", ""]
    lines += section_setup(docs["setup_times"])
    lines += section_real_photos(docs["real_photos"], docs["realtime"])
    lines += section_models_real(docs["model_comparison_real"])
    lines += section_models(docs["model_comparison"])
    lines += section_preprocess(docs["preprocess"])
    lines += section_input(docs["input_pipeline"])
    lines += section_serving(docs["serving"])
    lines += section_proxy(docs["proxy_load"])
    for name in MARKDOWN_SECTIONS:
        lines += section_markdown(name)
    lines += section_slow_clients(docs["proxy_slow_clients"])
    REPORT.write_text("\n".join(lines).rstrip() + "\n")

    readme = README.read_text()
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        README.write_text(head + "\n".join(readme_block(docs)) + tail)
    print(f"wrote {REPORT.relative_to(REPO)} and {PLOTS.relative_to(REPO)}/; "
          f"README results block {'updated' if BEGIN in readme else 'not found'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
