"""PNG masks in and out of the proxy, and the per-image metrics computed from them."""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from cityseg import metrics as M
from cityseg import vocabulary as V


class MaskError(ValueError):
    """Bytes that are not a single-channel PNG mask."""


def decode_mask(data: bytes) -> np.ndarray:
    """Decodes a one-channel PNG (8- or 16-bit, or palette indices) into a 2-D integer array.

    Raises:
      MaskError: if the bytes are not an image or the image has colour channels.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in ("L", "P", "I", "I;16", "I;16B"):
                raise MaskError(f"mask must have one channel, not mode {image.mode}")
            array = np.asarray(image)
    except (OSError, Image.DecompressionBombError) as err:
        raise MaskError(f"not a PNG mask: {err}") from None
    if array.ndim != 2:
        raise MaskError(f"mask must be 2-D, not shape {array.shape}")
    return array


def image_metrics(truth: np.ndarray, prediction: np.ndarray) -> dict[str, Any]:
    """The metrics of one image, from `cityseg.metrics` so they match evaluation exactly.

    `pixel_accuracy` and `mean_iou` follow the Cityscapes category benchmark (ground-truth void
    pixels ignored, mean over the 7 non-void categories); `iou` holds those 7 per-category
    IoUs (null where a category is in neither mask). The full summary of
    `cityseg.metrics.summarize` (the seed's all-pixel figures) is kept under `all_pixels`.

    Raises:
      ValueError: if the masks differ in shape or hold ids outside 0..7.
    """
    summary = M.summarize(M.confusion_matrix(truth, prediction))
    return {
        "pixel_accuracy": summary["pixel_accuracy_non_void"],
        "mean_iou": summary["mean_iou_7"],
        "iou": summary["iou_non_void"],
        "all_pixels": {
            "pixels": summary["pixels"],
            "pixel_accuracy": summary["pixel_accuracy"],
            "mean_iou": summary["mean_iou_8"],
            "iou": summary["iou"],
        },
    }


def categories() -> list[dict[str, Any]]:
    """The category legend: id, name and palette colour of each of the 8 categories."""
    return [{"id": i, "name": name, "color": "#%02x%02x%02x" % V.PALETTE[i]}
            for i, name in enumerate(V.CATEGORIES)]
