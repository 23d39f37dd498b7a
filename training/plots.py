"""The evaluation report's figures, written as PNG files with matplotlib's Agg backend.

- `plot_iou`: per-category IoU bars (all pixels, and with ground-truth void ignored).
- `plot_confusion`: the row-normalised confusion matrix (recall per true category).
- `plot_history`: training curves from a run's `history.csv` (loss and mean IoU, train vs val).
- `plot_overlays`: image / ground truth / prediction panels with the palette legend.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cityseg.vocabulary import CATEGORIES, PALETTE, colorize

IOU_FILE = "iou_per_category.png"
CONFUSION_FILE = "confusion_matrix.png"
HISTORY_FILE = "training_curves.png"
OVERLAYS_FILE = "overlays.png"


def _pyplot():
    # Agg is chosen at call time (never at import) so that importing this module changes no
    # global state; it renders without a display.
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _palette_rgb() -> list[tuple[float, float, float]]:
    return [tuple(c / 255.0 for c in rgb) for rgb in PALETTE]


def plot_iou(summary: dict[str, Any], path: str | os.PathLike, *, title: str = "") -> Path:
    """Bars of each category's IoU, from `metrics.summarize`; undefined IoUs are marked n/a.

    Args:
      summary: dict with `iou`, `iou_non_void`, `mean_iou_7`, `mean_iou_8`.
      path: the PNG to write.
      title: a heading (model name, split).
    """
    plt = _pyplot()
    x = np.arange(len(CATEGORIES))
    all_pixels = [summary["iou"].get(c) for c in CATEGORIES]
    non_void = [summary.get("iou_non_void", {}).get(c) for c in CATEGORIES]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    width = 0.4
    legend = []
    for offset, values, label, hatch in (
            (-width / 2, all_pixels, f"all pixels (mean_iou_8 {_fmt(summary['mean_iou_8'])})", ""),
            (width / 2, non_void, f"GT void ignored (mean_iou_7 {_fmt(summary['mean_iou_7'])})",
             "//")):
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(x + offset, heights, width, color=_palette_rgb(), edgecolor="black",
                      hatch=hatch)
        legend.append((label, hatch))
        for bar, value in zip(bars, values):
            ax.annotate("n/a" if value is None else f"{value:.2f}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")
    ax.set_xticks(x, CATEGORIES, rotation=20)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("IoU")
    ax.set_title(title or "IoU per category")
    # Neutral legend swatches: the bars themselves carry the palette colours.
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch=hatch, label=label)
                       for label, hatch in legend], loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, path: str | os.PathLike, *, title: str = "") -> Path:
    """Heatmap of the confusion matrix normalised per true category (rows sum to 1).

    Rows with no ground-truth pixel are left blank rather than divided by zero.
    """
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(rows > 0, cm / np.where(rows > 0, rows, 1.0), np.nan)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    image = ax.imshow(np.ma.masked_invalid(norm), cmap="Blues", vmin=0.0, vmax=1.0)
    n = len(CATEGORIES)
    for i in range(n):
        for j in range(n):
            if not math.isnan(norm[i, j]) and norm[i, j] >= 0.005:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), CATEGORIES, rotation=45, ha="right")
    ax.set_yticks(range(n), CATEGORIES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title or "Confusion matrix (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def read_history(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a local Keras CSVLogger-style `history.csv` as float lists (blank: NaN)."""
    with open(path, newline="") as f:
        return parse_history(f.read())


def parse_history(text: str) -> dict[str, list[float]]:
    """`read_history` of a history.csv's text (read from anywhere, e.g. through gfile)."""
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key is None:
                continue
            try:
                number = float(value) if value not in (None, "") else math.nan
            except ValueError:
                number = math.nan
            columns.setdefault(key.strip(), []).append(number)
    return columns


def plot_history(history_csv: str | os.PathLike, path: str | os.PathLike, *,
                 title: str = "") -> Path | None:
    """Loss and mean IoU per epoch, train against val, side by side.

    Returns:
      The PNG written, or None when the history has no epoch or neither curve.
    """
    history = read_history(history_csv)
    n = max((len(v) for v in history.values()), default=0)
    if n == 0:
        return None
    epochs = history.get("epoch") or list(range(n))
    # Keras counts epochs from 0 in CSVLogger; people count from 1.
    epochs = [e + 1 for e in epochs] if epochs and epochs[0] == 0 else epochs
    panels = [(metric, ylabel) for metric, ylabel in (("loss", "loss"), ("mean_iou", "mean IoU"))
              if metric in history or f"val_{metric}" in history]
    if not panels:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), dpi=100,
                             squeeze=False)
    for ax, (metric, ylabel) in zip(axes[0], panels):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "val", "-s")):
            if key in history:
                ax.plot(epochs, history[key], style, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "Training curves")
    return _save(fig, path)


def plot_overlays(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str]],
                  path: str | os.PathLike, *, title: str = "") -> Path | None:
    """Rows of image | ground truth | prediction, masks drawn in the palette, with a legend.

    Args:
      samples: (image [H, W, 3] uint8 or float in [0, 1], truth [H, W], prediction [H, W],
        caption) per row.
      path: the PNG to write.

    Returns:
      The PNG written, or None for no sample.
    """
    if not samples:
        return None
    plt = _pyplot()
    from matplotlib.patches import Patch

    height, width = np.asarray(samples[0][1]).shape[:2]
    panel_w = 4.0
    panel_h = max(1.2, panel_w * height / max(width, 1))
    fig, axes = plt.subplots(len(samples), 3, figsize=(3 * panel_w, len(samples) * panel_h + 1.0),
                             dpi=100, squeeze=False)
    for row, (image, truth, pred, caption) in zip(axes, samples):
        image = np.asarray(image)
        if image.dtype != np.uint8:
            image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        truth, pred = np.asarray(truth), np.asarray(pred)
        accuracy = float((truth == pred).mean()) if truth.size else math.nan
        for ax, picture, heading in (
                (row[0], image, caption),
                (row[1], colorize(truth), "ground truth"),
                (row[2], colorize(pred), f"prediction (pixel acc. {accuracy:.3f})")):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(heading, fontsize=8)
            ax.axis("off")
    handles = [Patch(facecolor=c, edgecolor="black", label=name)
               for name, c in zip(CATEGORIES, _palette_rgb())]
    fig.legend(handles=handles, loc="lower center", ncol=len(CATEGORIES), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97 if title else 1))
    return _save(fig, path, tight=False)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _save(fig, path: str | os.PathLike, tight: bool = True) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
