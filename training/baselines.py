"""A per-pixel colour classifier: the floor any trained segmentation model must clearly beat.

    python -m training.baselines --data-dir DATA --report-dir REPORT [--image-size HxW]

Each pixel's RGB is quantised to `levels` steps per channel (32 -> 32768 bins); fitting counts
the categories seen in each bin on the train split, and prediction looks up the bin's majority
category (the overall majority for a colour never seen). It sees no context at all, so it shows
how far colour alone goes on the synthetic scenes: grey road versus grey building, or a red car
versus a red-clad pedestrian, are exactly where it must fail and a network must not.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from cityseg.cli import CliError, HelpFormatter, parse_size, run_cli, setup_logging
from cityseg.vocabulary import NUM_CATEGORIES

log = logging.getLogger("cityseg.baselines")

DEFAULT_LEVELS = 32
BASELINE_NAME = "colour-baseline"


class ColourBaseline:
    """Majority category per quantised RGB bin.

    Args:
      levels: quantisation steps per channel (2..256).
      num_classes: number of categories.
    """

    def __init__(self, levels: int = DEFAULT_LEVELS, num_classes: int = NUM_CATEGORIES):
        if not 2 <= levels <= 256:
            raise ValueError(f"levels must be in 2..256, not {levels}")
        self.levels = int(levels)
        self.num_classes = int(num_classes)
        self.counts = np.zeros((self.levels ** 3, self.num_classes), dtype=np.int64)
        self._table: np.ndarray | None = None

    @property
    def num_bins(self) -> int:
        return self.levels ** 3

    def bins(self, images: np.ndarray) -> np.ndarray:
        """Bin index of every pixel of uint8 images, or float images in [0, 1], [..., 3]."""
        images = np.asarray(images)
        if images.shape[-1] != 3:
            raise ValueError(f"images must end in 3 channels, not shape {images.shape}")
        if images.dtype != np.uint8:
            images = np.clip(np.rint(images.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        q = (images.astype(np.int64) * self.levels) >> 8
        return (q[..., 0] * self.levels + q[..., 1]) * self.levels + q[..., 2]

    def partial_fit(self, images: np.ndarray, labels: np.ndarray) -> "ColourBaseline":
        """Adds the (colour bin, category) counts of a batch."""
        labels = np.asarray(labels).astype(np.int64)
        bins = self.bins(images)
        if bins.shape != labels.shape:
            raise ValueError(f"images {bins.shape} and labels {labels.shape} differ in size")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels hold ids outside 0..{self.num_classes - 1}")
        flat = bins.ravel() * self.num_classes + labels.ravel()
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)
        self._table = None
        return self

    @property
    def table(self) -> np.ndarray:
        """uint8 [bins]: the category predicted for each colour bin."""
        if self._table is None:
            if not self.counts.any():
                raise ValueError("the baseline has not been fitted")
            table = self.counts.argmax(axis=1)
            unseen = self.counts.sum(axis=1) == 0
            table[unseen] = self.counts.sum(axis=0).argmax()
            self._table = table.astype(np.uint8)
        return self._table

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Category ids uint8 [..., H, W] for images [..., H, W, 3]."""
        return self.table[self.bins(images)]

    @property
    def bins_seen(self) -> int:
        return int((self.counts.sum(axis=1) > 0).sum())


def _batches(data_dir, split: str, *, batch_size: int, image_size: tuple[int, int] | None
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    from training.data import make_dataset

    for images, labels in make_dataset(data_dir, split, batch_size=batch_size,
                                       image_size=image_size):
        yield images.numpy(), labels.numpy()


def fit_colour_baseline(data_dir, split: str = "train", *, image_size=None, batch_size: int = 8,
                        max_images: int | None = None, levels: int = DEFAULT_LEVELS
                        ) -> ColourBaseline:
    """Fits the baseline on a split read through `training.data.make_dataset`."""
    baseline = ColourBaseline(levels)
    images_seen = 0
    for images, labels in _batches(data_dir, split, batch_size=batch_size, image_size=image_size):
        if max_images is not None:
            images, labels = images[:max_images - images_seen], labels[:max_images - images_seen]
        baseline.partial_fit(images, labels)
        images_seen += len(labels)
        if max_images is not None and images_seen >= max_images:
            break
    log.info("colour baseline fitted on %d %s images: %d of %d colour bins seen", images_seen,
             split, baseline.bins_seen, baseline.num_bins)
    return baseline


def evaluate_colour_baseline(baseline: ColourBaseline, data_dir, split: str = "val", *,
                             image_size=None, batch_size: int = 8, max_images: int | None = None,
                             num_samples: int = 0):
    """Confusion matrix of the baseline on a split, like `training.evaluate.evaluate_keras`."""
    from training.evaluate import accumulate

    batches = ((images, labels, baseline.predict(images)) for images, labels
               in _batches(data_dir, split, batch_size=batch_size, image_size=image_size))
    resolution = "x".join(map(str, image_size)) if image_size else "stored"
    return accumulate(batches, max_images, num_samples, resolution)


EPILOG = """\
examples:
  python -m training.baselines --data-dir data --report-dir reports/colour --image-size 256x512
  python -m training.baselines --data-dir data --report-dir reports/colour --levels 16
"""


def _main(argv: Sequence[str] | None) -> int:
    from training.evaluate import ModelSource, write_report

    parser = argparse.ArgumentParser(
        prog="cityseg-baseline", description=__doc__.split("\n")[0], epilog=EPILOG,
        formatter_class=HelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--report-dir", required=True, type=Path)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--split", default="val", help="split to evaluate")
    parser.add_argument("--image-size", type=parse_size, default=None,
                        help="HxW both splits are resized to (default: stored size)")
    parser.add_argument("--levels", type=int, default=DEFAULT_LEVELS,
                        help="quantisation steps per RGB channel")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-images", type=int, default=None,
                        help="at most this many images per split")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.data_dir.is_dir():
        raise CliError(f"data dir {args.data_dir} does not exist")
    started = time.monotonic()
    baseline = fit_colour_baseline(args.data_dir, args.train_split, image_size=args.image_size,
                                   batch_size=args.batch_size, max_images=args.max_images,
                                   levels=args.levels)
    evaluation = evaluate_colour_baseline(
        baseline, args.data_dir, args.split, image_size=args.image_size,
        batch_size=args.batch_size, max_images=args.max_images, num_samples=4)
    metrics = write_report(evaluation, args.report_dir,
                           source=ModelSource(BASELINE_NAME, Path(BASELINE_NAME)),
                           split=args.split, data_dir=args.data_dir,
                           seconds=time.monotonic() - started)
    log.info("colour baseline on %d %s images: pixel accuracy %.4f, mean IoU 7 %s",
             metrics["images"], args.split, metrics["pixel_accuracy"], metrics["mean_iou_7"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m training.baselines`."""
    return run_cli("cityseg-baseline", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
