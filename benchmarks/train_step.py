"""One training step of each network on this CPU: XLA on/off, mixed bfloat16, against FLOPs.

    python benchmarks/train_step.py --models fastscnn,pspnet,unet,fcn8 --crop 256x352 --batch 8
    python benchmarks/train_step.py --models fastscnn --variants float32 \
        --crop 256x352,352x480 --batch 4,8,16 --output docs/benchmarks/train_step_sizes

On 2 cores the images a training step processes per second decide how much a time budget
learns. For each network and variant (float32 without XLA, float32 with XLA, mixed bfloat16
without XLA: XLA on CPU rejects the mixed gradients of dropout) this compiles the training step
the trainer compiles (`cityseg-train`'s loss, AdamW, auxiliary heads), runs `--warmup` steps,
then times `--steps` steps on random tensors, for every crop size and batch size given (no
input pipeline: that is measured by `input_pipeline_bench.py`). Beside each: the network's
forward FLOPs per image (TensorFlow's profiler), the achieved training GFLOP/s (about 3x
forward FLOPs per image), and this CPU's float32 matmul GFLOP/s as the ceiling.

Writes OUTPUT.json and OUTPUT.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from bench_machine import reproduce, result_header, write_result  # noqa: E402  (on sys.path)
from cityseg.cli import CliError, HelpFormatter, parse_size, run_cli, setup_logging  # noqa: E402
from training.config import DEFAULT_LOSS  # noqa: E402

DEFAULT_OUTPUT = REPO / "docs" / "benchmarks" / "train_step"
VARIANTS = {"float32": (False, False), "float32+xla": (True, False), "bfloat16": (False, True)}


def forward_flops(name: str, size: tuple[int, int]) -> float:
    """Forward floating-point operations of one image through network `name`."""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    from training import models

    model = models.build_model(name)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, *size, 3], tf.float32))
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return float(model_analyzer.profile(concrete.graph, options=options).total_float_ops)


def matmul_gflops(n: int = 2048, runs: int = 5) -> float:
    """float32 GFLOP/s of an n x n matmul on all cores: the ceiling a network can approach."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    f = tf.function(lambda x: tf.matmul(x, x))
    f(a).numpy()
    started = time.perf_counter()
    for _ in range(runs):
        f(a).numpy()
    return 2 * n ** 3 * runs / (time.perf_counter() - started) / 1e9


def time_step(name: str, variant: str, crop: tuple[int, int], batch: int,
              args: argparse.Namespace) -> dict[str, Any]:
    import keras
    import numpy as np

    from cityseg import vocabulary as V
    from training import losses, models

    jit, bf16 = VARIANTS[variant]
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    try:
        keras.utils.set_random_seed(0)
        model = models.build_model(name)
        # The trainer's default loss; unit weights cost the same as the data's (one gather).
        loss = losses.make_loss(DEFAULT_LOSS, [1.0] * V.NUM_CATEGORIES, ignore_class=V.VOID)
        trained = models.with_aux_heads(model, name, loss) or model
        trained.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=loss, jit_compile=jit)
        rng = np.random.default_rng(0)
        images = rng.random((batch, *crop, 3), dtype=np.float32)
        labels = rng.integers(0, V.NUM_CATEGORIES, (batch, *crop)).astype("int32")
        x = (images, labels) if trained is not model else images
        for _ in range(args.warmup):
            trained.train_on_batch(x, labels)
        times = []
        for _ in range(args.steps):
            started = time.perf_counter()
            trained.train_on_batch(x, labels)
            times.append(time.perf_counter() - started)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    step = statistics.median(times)
    return {"model": name, "variant": variant, "crop": "x".join(map(str, crop)),
            "batch": batch, "step_s": round(step, 3), "images_per_s": round(batch / step, 2),
            "steps_s": [round(t, 3) for t in times]}


def to_markdown(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["machine"]
    sweep = len(s["crops"]) > 1 or len(s["batches"]) > 1
    mixed = any(row["variant"] == "bfloat16" for row in result["rows"])
    title = s.get("title") or ("crop and batch sizes" if sweep
                               else "XLA and mixed precision" if mixed else "XLA on and off")
    lines = ["# One training step on this CPU: " + title, "",
             f"Generated {result['generated']} by `{result['command']}` on {m['nproc']} CPU cores "
             f"({m['cpu_model']}), TensorFlow {m.get('tensorflow')}.", "",
             f"- Random crops as a batch, the trainer's loss ({s.get('loss', 'ohem')} + auxiliary "
             "heads) and AdamW; "
             f"median of {s['steps']} steps after {s['warmup']} warm-up steps.",
             f"- Ceiling: float32 matmul on all cores, {result['matmul_gflops']:.0f} GFLOP/s; a "
             "training step is counted as 3x the forward FLOPs.", "",
             "| model | crop | batch | forward GFLOPs/image | variant | s/step | images/s "
             "| GFLOP/s | share of ceiling |", "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['model']} | {row['crop']} | {row['batch']} "
                     f"| {row['forward_gflops']:.2f} | {row['variant']} "
                     f"| {row['step_s']} | {row['images_per_s']} | {row['gflops']:.1f} "
                     f"| {row['share_of_ceiling']:.0%} |")
    lines += reproduce(result["command"])
    return "\n".join(lines)


def _sizes(text: str) -> list[tuple[int, int]]:
    return [parse_size(part) for part in text.split(",") if part]


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, not {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_step", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--models", default="fastscnn,pspnet,unet")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--crop", type=_sizes, default=[(256, 352)],
                        help="comma-separated HxW crops")
    parser.add_argument("--batch", type=_ints, default=[8], help="comma-separated batch sizes")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--title", default=None,
                        help="the table's title after 'One training step on this CPU: ' "
                             "(default: what the table varies)")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging()
    ceiling = matmul_gflops()
    rows = []
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        raise CliError(f"unknown variants {sorted(set(variants) - set(VARIANTS))} "
                       f"(choose from {', '.join(VARIANTS)})")
    for name in args.models.split(","):
        for crop in args.crop:
            flops = forward_flops(name, crop)
            for batch in args.batch:
                for variant in variants:
                    row = time_step(name, variant, crop, batch, args)
                    row["forward_gflops"] = flops / 1e9
                    row["gflops"] = 3 * flops * row["images_per_s"] / 1e9
                    row["share_of_ceiling"] = row["gflops"] / ceiling
                    rows.append(row)
                    print(f"{name} {row['crop']} x{batch} {variant}: {row['step_s']} s/step, "
                          f"{row['images_per_s']} img/s, {row['gflops']:.1f} GFLOP/s", flush=True)
    result = {**result_header("train_step.py", argv), "matmul_gflops": ceiling,
              "settings": {"crops": ["x".join(map(str, c)) for c in args.crop],
                           "batches": args.batch, "warmup": args.warmup, "steps": args.steps,
                           "loss": DEFAULT_LOSS, "title": args.title},
              "rows": rows}
    write_result(args.output, result, to_markdown(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("train_step", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
