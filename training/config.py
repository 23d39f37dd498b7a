"""`TrainConfig`: the one declaration of a training run's settings and of `cityseg-train`'s flags.

Each field carries its flag (name, help, type) in its metadata, and `build_parser` generates
the argparse parser from the fields, so a setting is declared once: its default is the field's,
and the help shows it. Flags override the defaults; on `--resume` the run's saved config.json
gives the defaults instead (`merge_saved_config`). `validate_config` rejects impossible values
with one line before anything heavy runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from cityseg import vocabulary as V
from cityseg.cli import CliError, HelpFormatter, parse_size
from training import run_layout
from training.schedules import SCHEDULES

# Fields that fix the network; a resumed run must keep them.
ARCHITECTURE_FIELDS = ("model", "width", "aux_heads")
# Epochs when neither --epochs nor --time-limit bounds the run; with a time limit the time
# binds (the learning-rate schedule follows it) and epochs only cap it.
DEFAULT_EPOCHS = 50
EPOCHS_UNDER_TIME_LIMIT = 100_000
# The largest default crop. On a 2-core CPU the time budget, not the data, bounds what a run
# learns: a 256x352 crop costs half a 352x480 one per step (docs/benchmarks/recipe.md), so
# twice the steps in the same minutes; larger frames are cropped to this.
MAX_DEFAULT_CROP = (256, 352)
# OHEM whose kept pixels are weighted by the square roots of the median-frequency weights (on
# CamVid val it beat plain OHEM overall and lifted object and human the most,
# docs/benchmarks/recipes.md), plus a Lovász-softmax term: at 20 minutes, seeds 0-2, CamVid
# val 0.724 mean IoU against 0.726 (inside the seeds' spread), poles and signs (object) 0.20
# against 0.15; held-out 0.561 against 0.555 (docs/benchmarks/lovasz.md). Without category
# counts in stats.json, the same with plain OHEM (`ohem+lovasz`).
DEFAULT_LOSS = "weighted_ohem+lovasz"


def _parse_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, not {text!r}") from None
    return low, high


def flag(default: Any, help: str = "", *, names: Sequence[str] = (), **argparse_kwargs) -> Any:
    """A dataclass field that is also a flag of `cityseg-train`.

    Args:
      default: the field's default (shown in --help unless None).
      help: the flag's help.
      names: option strings (default: `--field-name`).
      argparse_kwargs: passed to `add_argument` (type, metavar, action, choices);
        `negation=(name, help)` adds the opposite flag of a store_true one, mutually exclusive
        with it.
    """
    metadata = {"names": tuple(names), "help": help, **argparse_kwargs}
    return field(default=default, metadata={"flag": metadata})


@dataclass
class TrainConfig:
    """Everything one training run depends on.

    `model=None`, `image_size=None`, `crop_size=None` and `epochs=None` are resolved at
    start-up (the models' default, the records' stored size, a crop from it, DEFAULT_EPOCHS);
    config.json holds the resolved values.
    """

    data_dir: str = flag("", "output of cityseg-preprocess (tfrecords/, stats.json)")
    output_dir: str = flag("", "the RUN folder (see the layout below)")
    model: str | None = flag(None, "a name in training.models.MODEL_BUILDERS: fastscnn, "
                                   "fastscnn_s4 (Fast-SCNN classifying at stride 4), pspnet, "
                                   "unet or fcn8 (default: fastscnn_s4, the most accurate on "
                                   "real photos within the real-time target: "
                                   "benchmarks/real_photos.py, realtime.py)")
    width: int | None = flag(None, "filters of the first conv (default: the model's own)",
                             type=int)
    image_size: tuple[int, int] | None = flag(
        None, "resize every frame to HxW first, squashing its aspect ratio (the seed's recipe; "
              "default: keep the records' size)", type=parse_size, metavar="HxW")
    crop_size: tuple[int, int] | None = flag(
        None, "HxW training crops, divisible by the model's stride (default: the frames' size "
              f"rounded down to the stride, at most {MAX_DEFAULT_CROP[0]}x{MAX_DEFAULT_CROP[1]})",
        type=parse_size, metavar="HxW")
    scale_range: tuple[float, float] = flag(
        (0.5, 2.0), "random scale of each frame before the crop", type=_parse_range,
        metavar="MIN,MAX")
    rotation_degrees: float = flag(0.0, "random rotation in +-DEGREES (0: none)",
                                   names=("--rotation",), type=float, metavar="DEGREES")
    batch_size: int = flag(8, "images per batch on each worker (the global batch is this "
                              "times the workers)", type=int)
    epochs: int | None = flag(None, f"default: {DEFAULT_EPOCHS}, or as many as --time-limit "
                                    "allows", type=int)
    steps_per_epoch: int | None = flag(None, "default: one pass over the train split", type=int)
    validation_steps: int | None = flag(None, "default: the whole val split", type=int)
    learning_rate: float = flag(3e-3, "peak learning rate (after warm-up)",
                                names=("--learning-rate", "--lr"), type=float)
    lr_schedule: str = flag("poly", "decay over the budget: the epochs, or --time-limit when "
                                    "it binds first", choices=SCHEDULES)
    warmup: float = flag(0.05, "fraction of the budget (steps or time) spent warming the "
                               "learning rate up", type=float, metavar="FRACTION")
    weight_decay: float = flag(1e-2, "AdamW's decoupled weight decay, not on biases and batch "
                                     "norm (0: plain Adam)", type=float)
    ema: float = flag(0.0, "keep an exponential moving average of the weights, this momentum "
                           "per step (e.g. 0.99); validation, best.keras and so the export use "
                           "the average (0: off, the trained weights)", type=float,
                      metavar="MOMENTUM")
    # Names (like --model's) are the keys of a registry that needs TensorFlow, so they are
    # checked once it is loaded (`check_registry_name`), not by argparse.
    loss: str = flag(DEFAULT_LOSS, "a key of training.losses.LOSSES (an unknown name lists "
                                   f"them; default {DEFAULT_LOSS}); ohem: online hard example "
                                   "mining cross-entropy; "
                                   "weighted_ohem: OHEM with the square roots of the "
                                   "categories' weights from DATA/stats.json (median-frequency "
                                   "balancing), which weighted_ce, focal and ce+dice use whole; "
                                   "weighted_ohem+lovasz (the default), ohem+lovasz: plus a "
                                   "Lovász-softmax term, a surrogate of each category's IoU")
    aux_heads: bool = flag(True, "no auxiliary heads (fastscnn and pspnet train with the "
                                 "papers' auxiliary losses by default)", names=("--no-aux",),
                           action="store_false")
    ignore_void: bool = flag(True, "also train the void category (default: void pixels are "
                                   "ignored: the benchmark does not score them)",
                             names=("--train-void",), action="store_false")
    augment: bool = flag(True, "no random scale/flip/colour/rotation (crops are still taken)",
                         names=("--no-augment",), action="store_false")
    cache: bool = flag(True, "decode the records in every epoch instead of keeping the "
                             "decoded, resized examples in memory (needed when they do not "
                             "fit: about H*W*4 bytes per image, 1.6 GB for Cityscapes train at "
                             "256x512)", names=("--no-cache",), action="store_false")
    mixed_precision: bool = flag(False, "mixed_float16 on GPU, mixed_bfloat16 on CPU (on a CPU "
                                        "it pays only with AMX, and for pspnet and unet: "
                                        "docs/benchmarks/train_step_amx.md)",
                                 action="store_true")
    jit_compile: bool | None = flag(
        None, "compile with XLA", names=("--jit",), action="store_true",
        negation=("--no-jit", "do not compile with XLA (default: XLA on a GPU only, where it "
                              "pays; on CPU it is the slow path)"))
    time_limit_minutes: float | None = flag(
        None, "stop cleanly once this many minutes are spent (best model kept)",
        names=("--time-limit",), type=float, metavar="MINUTES")
    seed: int | None = flag(0, "seed of shuffling, augmentation and initialisation", type=int)
    resume: bool = flag(False, "continue RUN from its last checkpoint (saved config as "
                               "defaults)", action="store_true")
    train_split: str = flag("train", "split to train on", choices=V.SPLITS)
    val_split: str = flag("val", "split to validate on", choices=V.SPLITS)
    weights: str | None = flag(None, "initial weights file (fcn8: ImageNet VGG16 no-top .h5)")
    # Not a flag: from DATA/stats.json at start-up, for the losses that use them.
    class_weights: list[float] | None = field(default=None, repr=False)


EPILOG = """\
examples:
  # the default recipe (fastscnn_s4, random scale + crop, weighted OHEM + Lovász, aux heads),
  # 20 minutes; frames of any size, the learning rate decays with the time spent
  cityseg-train --data-dir data --output-dir runs/default --time-limit 20

  # PSPNet on 512x512 crops at scales 0.75..1.5, cosine schedule
  cityseg-train --data-dir data --model pspnet --crop-size 512x512 --scale-range 0.75,1.5 \\
      --lr-schedule cosine --output-dir runs/psp --time-limit 30

  # the seed's recipe: every frame squashed to 128x128, no augmentation
  cityseg-train --data-dir data --model unet --width 64 --image-size 128x128 --no-augment \\
      --loss ce --output-dir runs/seed

  # U-Net with class-weighted cross-entropy (weights from DATA/stats.json)
  cityseg-train --data-dir data --model unet --width 32 --loss weighted_ce --output-dir runs/unet

  # continue a run (same RUN folder) for more epochs, optimizer state included
  cityseg-train --output-dir runs/unet --resume --epochs 80

  # FCN-8s from an ImageNet VGG16 no-top weights file (nothing is downloaded)
  cityseg-train --data-dir data --model fcn8 --weights vgg16_notop.h5 --output-dir runs/fcn8

  # multi-worker: the same command on every machine, each with its own TF_CONFIG
  TF_CONFIG='{"cluster":{"worker":["host1:12345","host2:12345"]},"task":{"type":"worker","index":0}}' \\
      cityseg-train --data-dir data --model pspnet --output-dir runs/psp

RUN layout: config.json, best.keras, checkpoints/, history.csv, tensorboard/, summary.json
(see the module docstring of training/run_layout.py).
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of `cityseg-train`, generated from TrainConfig's fields.

    Every default is SUPPRESS, so the parsed namespace holds exactly the flags given: the
    dataclass supplies the rest, and `--resume` knows which settings the user chose.
    """
    parser = argparse.ArgumentParser(
        prog="cityseg-train", formatter_class=HelpFormatter, epilog=EPILOG,
        description="Train a segmentation model on cityseg TFRecords (tf.data + Keras 3).",
        argument_default=argparse.SUPPRESS)
    for spec in dataclasses.fields(TrainConfig):
        options = dict(spec.metadata.get("flag") or {})
        if not options:
            continue
        names = options.pop("names") or (f"--{spec.name.replace('_', '-')}",)
        negation = options.pop("negation", None)
        if spec.default not in (None, "") and options.get("action") is None:
            options["help"] += f" (default: {_shown(spec.default)})"
        group = parser.add_mutually_exclusive_group() if negation else parser
        group.add_argument(*names, dest=spec.name, **options)
        if negation:
            group.add_argument(negation[0], dest=spec.name, action="store_false",
                               help=negation[1])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def parse_config(argv: Sequence[str] | None) -> tuple[TrainConfig, frozenset[str], bool]:
    """Flags -> (TrainConfig, names of the settings given explicitly, verbose)."""
    given = vars(build_parser().parse_args(argv))
    verbose = given.pop("verbose", False)
    return TrainConfig(**given), frozenset(given), verbose


# --- Start-up checks (cheap: no TensorFlow) ---------------------------------------------

def validate_config(cfg: TrainConfig) -> None:
    """Raises CliError (one line) for values that cannot work, before anything heavy runs."""
    if not cfg.data_dir:
        raise CliError("--data-dir is required")
    if not cfg.output_dir:
        raise CliError("--output-dir is required")
    for name in ("batch_size", "epochs", "steps_per_epoch", "validation_steps", "width"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive, not {value}")
    low, high = cfg.scale_range
    if not 0 < low <= high or not math.isfinite(high):
        raise CliError(f"--scale-range must be 0 < MIN <= MAX, not {low},{high}")
    if not 0 <= cfg.rotation_degrees <= 180:
        raise CliError(f"--rotation must be in [0, 180] degrees, not {cfg.rotation_degrees}")
    if not 0 <= cfg.warmup < 1:
        raise CliError(f"--warmup must be a fraction in [0, 1), not {cfg.warmup}")
    if not 0 <= cfg.weight_decay < 1:
        raise CliError(f"--weight-decay must be in [0, 1), not {cfg.weight_decay}")
    if not 0 <= cfg.ema < 1:
        raise CliError(f"--ema must be a momentum in [0, 1), not {cfg.ema}")
    if not cfg.learning_rate > 0 or not math.isfinite(cfg.learning_rate):
        raise CliError(f"--learning-rate must be positive, not {cfg.learning_rate}")
    if cfg.time_limit_minutes is not None and not cfg.time_limit_minutes > 0:
        raise CliError(f"--time-limit must be positive minutes, not {cfg.time_limit_minutes}")
    if cfg.lr_schedule not in SCHEDULES:
        raise CliError(f"unknown --lr-schedule {cfg.lr_schedule!r} "
                       f"(choose from {', '.join(SCHEDULES)})")
    for split in (cfg.train_split, cfg.val_split):
        V.check_split(split)
    from training import storage  # TensorFlow's file systems: DATA and RUN may be URLs

    data = cfg.data_dir
    if not storage.isdir(data):
        raise CliError(f"data dir {data} does not exist (run cityseg-preprocess first)")
    for split in (cfg.train_split, cfg.val_split):
        folder = storage.join(data, V.TFRECORDS_DIR, split)
        if not storage.glob(storage.join(folder, V.SHARD_GLOB.format(split=split))):
            raise CliError(f"no TFRecord shards for split {split!r} in {folder}")
    if cfg.weights is not None and not storage.isfile(cfg.weights):
        raise CliError(f"weights file {cfg.weights} does not exist")
    for name in ("image_size", "crop_size"):
        size = getattr(cfg, name)
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise CliError(f"--{name.replace('_', '-')} must be positive HxW, not {size}")

    run = cfg.output_dir
    has_run = storage.isdir(storage.join(run, run_layout.CHECKPOINT_DIR)) or storage.exists(
        storage.join(run, run_layout.BEST_MODEL_FILE))
    saved_config = storage.join(run, run_layout.CONFIG_FILE)
    if cfg.resume and not storage.isfile(saved_config):
        raise CliError(f"nothing to resume: {saved_config} does not exist")
    if not cfg.resume and has_run:
        raise CliError(f"{run} already holds a training run; pass --resume to continue it "
                       "or choose another --output-dir")


def validate_model(cfg: TrainConfig) -> None:
    """Checks the model name and that the crop size fits its stride (imports Keras).

    Frames themselves may have any size: validation pads them to the stride. Only the
    training crop, which is batched, must be a multiple of it.
    """
    from training import models

    check_registry_name("model", cfg.model, models.MODEL_BUILDERS)
    stride = models.model_stride(cfg.model)
    height, width = cfg.crop_size
    if height % stride or width % stride:
        raise CliError(f"crop size {height}x{width} is not divisible by {stride}, the stride "
                       f"of model {cfg.model!r}; pick e.g. "
                       f"{_round_to(height, stride)}x{_round_to(width, stride)}")


def check_registry_name(what: str, name: str | None, registry: dict[str, Any]) -> None:
    """Raises CliError unless `name` is a key of `registry` (models, losses)."""
    if name not in registry:
        raise CliError(f"unknown {what} {name!r} (choose from {', '.join(registry)})")


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def default_crop_size(frame_size: tuple[int, int], stride: int,
                      cap: tuple[int, int] = MAX_DEFAULT_CROP) -> tuple[int, int]:
    """The training crop when none is given: the frame, capped, rounded DOWN to the stride.

    Rounded down so that at scale 1 the crop holds picture everywhere (a 360x480 CamVid frame
    or a 512x1024 record gives 256x352 for a stride of 32; a 200x300 frame 192x288).
    """
    return tuple(max(stride, min(size, limit) // stride * stride)
                 for size, limit in zip(frame_size, cap))


def merge_saved_config(cfg: TrainConfig, explicit: frozenset[str]) -> TrainConfig:
    """The saved config of the run in `cfg.output_dir` with the explicit flags on top (--resume).

    Raises:
      CliError: if there is nothing to resume or a flag would change the architecture (or
        whether the optimizer keeps a weight average).
    """
    from training import storage

    path = storage.join(cfg.output_dir, run_layout.CONFIG_FILE)
    if not storage.isfile(path):
        raise CliError(f"nothing to resume: {path} does not exist")
    saved = json.loads(storage.read_text(path))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in names}
    for name in explicit:
        if name in ARCHITECTURE_FIELDS and merged.get(name) is not None:
            given = getattr(cfg, name)
            given = list(given) if isinstance(given, tuple) else given
            if given != merged[name]:
                raise CliError(f"--resume cannot change {name} ({merged[name]} -> {given})")
        if name == "ema" and bool(cfg.ema) != bool(merged.get("ema", 0.0)):
            # The average is optimizer state in the checkpoint: its momentum may change, not
            # whether it exists.
            raise CliError(f"--resume cannot turn --ema on or off ({merged.get('ema', 0.0)} "
                           f"-> {cfg.ema})")
        merged[name] = getattr(cfg, name)
    merged["resume"] = True
    for name in ("image_size", "crop_size", "scale_range"):
        if merged.get(name) is not None:
            merged[name] = tuple(merged[name])
    return TrainConfig(**merged)
