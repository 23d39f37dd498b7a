"""The report figures render to non-trivial PNGs, also with undefined IoUs and sparse history."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cityseg.vocabulary import PALETTE
from training import metrics as M
from training import plots


def _assert_png(path, min_size=(300, 200)):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("RGB"))
    # More than a blank canvas: many distinct colours.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    return pixels


def _cm(seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 6, 2000)  # human and vehicle absent
    pred = np.where(rng.random(2000) < 0.7, truth, rng.integers(0, 6, 2000))
    return M.confusion_matrix(truth, pred)


def test_iou_bars_render_with_undefined_categories(tmp_path):
    summary = M.summarize(_cm())
    assert summary["iou"]["human"] is None
    pixels = _assert_png(plots.plot_iou(summary, tmp_path / "iou.png", title="test"))
    # The bars carry the palette: the sky colour is drawn.
    assert (pixels == np.array(PALETTE[5], np.uint8)).all(axis=-1).sum() > 100


def test_confusion_heatmap_renders_with_empty_rows(tmp_path):
    _assert_png(plots.plot_confusion(_cm(), tmp_path / "cm.png"))


def test_history_curves(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text("epoch,loss,val_loss,mean_iou,val_mean_iou,lr,seconds\n"
                        "0,1.5,1.6,0.1,0.08,0.001,3.0\n"
                        "1,1.0,1.2,0.3,0.25,0.001,3.1\n"
                        "2,0.8,,0.4,,0.0005,3.0\n")
    history = plots.read_history(csv_path)
    assert history["loss"] == [1.5, 1.0, 0.8]
    assert np.isnan(history["val_loss"][2])
    _assert_png(plots.plot_history(csv_path, tmp_path / "curves.png"))


@pytest.mark.parametrize("text", ["", "epoch,lr\n0,0.001\n"])
def test_history_without_curves_writes_nothing(tmp_path, text):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text(text)
    assert plots.plot_history(csv_path, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


def test_overlays_draw_the_palette(tmp_path):
    rng = np.random.default_rng(1)
    truth = np.kron(rng.integers(0, 8, (4, 8)), np.ones((8, 8), np.int64))
    pred = truth.copy()
    pred[:8] = 7
    image = rng.random(truth.shape + (3,)).astype(np.float32)
    samples = [(image, truth, pred, "a"), ((image * 255).astype(np.uint8), truth, truth, "b")]
    pixels = _assert_png(plots.plot_overlays(samples, tmp_path / "overlays.png", title="t"),
                         min_size=(600, 300))
    # The vehicle colour (prediction panel and legend) is drawn.
    assert (pixels == np.array(PALETTE[7], np.uint8)).all(axis=-1).sum() > 200
    assert plots.plot_overlays([], tmp_path / "none.png") is None
