"""Real time: one 2048x1024 PNG through an exported model's signature vs `tf.io.decode_png`.

    python benchmarks/realtime.py --models fastscnn_s4,fastscnn,pspnet,unet,fcn8 --max-long-side 1024

For each architecture, `training.export.export_model` writes the SavedModel exactly as
`cityseg-export` does (a trained run's weights with `--run NAME=RUN`, else freshly initialised
weights: latency does not depend on the values), the signature is loaded, and one encoded
2048x1024 frame (a `cityseg-synth` street scene at full Cityscapes resolution, saved as PNG at
zlib level 3 as the synth does, or `--image`) is sent through it: decode, shrink to the working
resolution, pad, model, argmax, resize, PNG encode, everything a client waits for. The same
bytes are decoded with `tf.io.decode_png` alone, interleaved call by call with the signature
(both see the same machine state), and the target is the ratio of the medians:

    p50(signature) <= 4 x p50(decode_png)        while working at 512x1024 or more

Writes OUTPUT.json and OUTPUT.md.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from bench_machine import reproduce, result_header, write_result  # noqa: E402  (on sys.path)
from cityseg.cli import CliError, HelpFormatter, parse_size, run_cli, setup_logging  # noqa: E402

DEFAULT_OUTPUT = REPO / "docs" / "benchmarks" / "realtime"
TARGET_RATIO = 4.0


def street_frame(size: tuple[int, int], seed: int = 0) -> bytes:
    """A synthetic street scene at `size`, PNG-encoded as cityseg-synth writes its frames."""
    import numpy as np
    from PIL import Image

    from preprocessing.synth import render_scene

    image, _ = render_scene(np.random.default_rng(seed), *size)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", compress_level=3)
    return out.getvalue()


def model_for(name: str, runs: dict[str, Path]):
    """The trained model of `--run NAME=RUN`, else a freshly initialised one."""
    from training import models

    if name in runs:
        return models.load_model(runs[name] / "best.keras"), str(runs[name])
    return models.build_model(name), "initialised"


def time_model(name: str, frame: bytes, *, frame_size: tuple[int, int],
               max_long_side: int | None, calls: int, pause: float,
               runs: dict[str, Path]) -> dict[str, Any]:
    """One model's exported signature on `frame` (a PNG of `frame_size` HxW), `calls` times,
    interleaved with `tf.io.decode_png` of the same bytes, `pause` seconds before each call.

    The model is `runs[name]`'s best.keras, else freshly initialised (`model_for`).
    """
    import tensorflow as tf

    from training.export import export_model
    from training.models import model_stride

    model, weights = model_for(name, runs)
    with tempfile.TemporaryDirectory() as models_dir:
        version = export_model(model, models_dir, name, stride=model_stride(name),
                               max_long_side=max_long_side)
        serve = tf.saved_model.load(str(version)).signatures["serving_default"]
        request = tf.constant([frame])
        encoded = tf.constant(frame)
        for _ in range(2):  # warm-up: graph tracing and allocator
            mask = serve(images=request)["masks"].numpy()[0]
        served, decoded = [], []
        for _ in range(calls):
            time.sleep(pause)  # TF's worker threads spin after a call; let them settle
            started = time.perf_counter()
            tf.io.decode_png(encoded, channels=3).numpy()
            decoded.append((time.perf_counter() - started) * 1000)
            time.sleep(pause)
            started = time.perf_counter()
            serve(images=request)["masks"].numpy()
            served.append((time.perf_counter() - started) * 1000)
    height, width = tf.io.decode_png(mask).shape[:2]
    p50, d50 = statistics.median(served), statistics.median(decoded)
    scale = min(1.0, max_long_side / max(frame_size)) if max_long_side else 1.0
    return {"model": name, "weights": weights, "params": int(model.count_params()),
            "working_resolution": [round(frame_size[0] * scale), round(frame_size[1] * scale)],
            "mask_size": [int(height), int(width)],
            "p50_ms": round(p50, 1), "p90_ms": round(sorted(served)[int(0.9 * len(served))], 1),
            "decode_png_p50_ms": round(d50, 1), "ratio": round(p50 / d50, 2),
            "meets_target": p50 / d50 <= TARGET_RATIO,
            "served_ms": [round(t, 1) for t in served], "decode_ms": [round(t, 1) for t in decoded]}


def latency_table(rows: list[dict[str, Any]], extra: str) -> list[str]:
    """Markdown rows of `time_model` results; `extra` is a second column: "weights" or
    "params"."""
    lines = [f"| model | {extra} | working resolution | p50 ms | p90 ms | decode_png p50 ms "
             "| ratio | target |",
             f"|---|{'---:' if extra == 'params' else '---'}|---|---:|---:|---:|---:|---|"]
    for row in rows:
        value = f"{row[extra]:,}" if isinstance(row[extra], int) else row[extra]
        lines.append(f"| {row['model']} | {value} "
                     f"| {'x'.join(map(str, row['working_resolution']))} | {row['p50_ms']} "
                     f"| {row['p90_ms']} | {row['decode_png_p50_ms']} | {row['ratio']} "
                     f"| {'met' if row['meets_target'] else 'missed'} |")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        "# Real time: a 2048x1024 PNG through the exported signature",
        "",
        f"Generated {result['generated']} by `{result['command']}` on {m['nproc']} CPU cores "
        f"({m['cpu_model']}), TensorFlow {m.get('tensorflow')}.",
        "",
        f"- Frame: {s['frame']} ({s['frame_bytes']:,} bytes PNG); export "
        f"`--max-long-side {s['max_long_side']}`; {s['runs']} calls each, the signature and "
        "`tf.io.decode_png` on the same bytes interleaved, a pause before every call.",
        f"- Target: p50 of the signature <= {TARGET_RATIO:g} x p50 of decode_png, working at "
        "512x1024 or more.",
        "",
        *latency_table(result["rows"], "weights"),
    ]
    lines += reproduce(result["command"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realtime", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--models", default="fastscnn_s4,fastscnn,pspnet,unet,fcn8")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN",
                        help="time this training run's best.keras for model NAME")
    parser.add_argument("--max-long-side", type=int, default=1024)
    parser.add_argument("--frame", type=parse_size, default=(1024, 2048),
                        help="HxW of the synthetic frame")
    parser.add_argument("--image", type=Path, default=None, help="a PNG to send instead")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds before each call")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging()
    runs = {}
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "best.keras").is_file():
            raise CliError(f"--run must be NAME=RUN with RUN/best.keras, not {item!r}")
        runs[name] = Path(path)
    if args.image is not None:
        if not args.image.is_file():
            raise CliError(f"--image {args.image} does not exist")
        frame = args.image.read_bytes()
        from PIL import Image
        width, height = Image.open(io.BytesIO(frame)).size
        args.frame = (height, width)
        description = str(args.image)
    else:
        frame = street_frame(args.frame)
        description = f"cityseg-synth street scene {args.frame[1]}x{args.frame[0]}"
    rows = [time_model(name, frame, frame_size=args.frame, max_long_side=args.max_long_side,
                       calls=args.runs, pause=args.pause, runs=runs)
            for name in args.models.split(",") if name]
    result = {
        **result_header("realtime.py", argv),
        "settings": {"frame": description, "frame_bytes": len(frame),
                     "max_long_side": args.max_long_side, "runs": args.runs},
        "rows": rows,
    }
    write_result(args.output, result, to_markdown(result))
    for row in rows:
        print(f"{row['model']}: p50 {row['p50_ms']} ms, decode_png {row['decode_png_p50_ms']} ms,"
              f" ratio {row['ratio']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("realtime", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
