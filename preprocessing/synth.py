"""Synthetic Cityscapes street scenes, written in the exact raw Cityscapes layout.

    cityseg-synth OUT_ROOT --cities 2 --images-per-city 3 --size 256x512,288x512 --seed 0

Real Cityscapes cannot be downloaded here, so this command draws street scenes seen from a car
(sky, road and sidewalks in perspective, facades, trees, poles and signs, people, riders and
vehicles, in painter's order) and writes them where the real data set keeps its files:

    OUT_ROOT/leftImg8bit/{split}/{city}/{id}_leftImg8bit.png      RGB, 8-bit
    OUT_ROOT/gtFine/{split}/{city}/{id}_gtFine_labelIds.png       1 channel, official label ids

The scenes are built so that segmenting them needs context: colours overlap across categories
(grey road, grey facades and grey poles; cars and clothes in any colour, sky-blue and green
included; overcast skies as grey as buildings), while shape, position and texture stay informative.

Every image is a pure function of (seed, split, city, index) and the size list: asking for more
cities, more images or other splits never changes an image already made. Files this command
generates are overwritten; nothing else under OUT_ROOT is touched.
"""
from __future__ import annotations

import argparse
import colorsys
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from cityseg.cli import CliError, HelpFormatter, parse_size, run_cli, setup_logging
from cityseg.images import DEFAULT_MAX_PIXELS
from cityseg.vocabulary import (
    LABEL_BY_NAME, SPLITS, ImageId, check_split, image_path, label_path,
)

log = logging.getLogger(__name__)

# Real Cityscapes city names per split, so generated trees look like the real one.
CITY_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt",
              "hamburg", "hanover", "jena", "krefeld", "monchengladbach", "strasbourg",
              "stuttgart", "tubingen", "ulm", "weimar", "zurich"),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich"),
}
# Cityscapes annotates the 20th frame of each 30-frame snippet, hence ids like aachen_000000_000019.
ANNOTATED_FRAME = 19
MAX_IMAGES_PER_CITY = 1_000_000  # the sequence number has six digits
MIN_SIZE = (64, 128)  # below this the thinnest objects (poles, people far away) vanish
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((256, 512), (288, 512))

# Label ids come from the shared table, never from literal numbers.
EGO_VEHICLE = LABEL_BY_NAME["ego vehicle"].id
OUT_OF_ROI = LABEL_BY_NAME["out of roi"].id
STATIC = LABEL_BY_NAME["static"].id
ROAD = LABEL_BY_NAME["road"].id
SIDEWALK = LABEL_BY_NAME["sidewalk"].id
PARKING = LABEL_BY_NAME["parking"].id
BUILDING = LABEL_BY_NAME["building"].id
WALL = LABEL_BY_NAME["wall"].id
FENCE = LABEL_BY_NAME["fence"].id
POLE = LABEL_BY_NAME["pole"].id
TRAFFIC_LIGHT = LABEL_BY_NAME["traffic light"].id
TRAFFIC_SIGN = LABEL_BY_NAME["traffic sign"].id
VEGETATION = LABEL_BY_NAME["vegetation"].id
TERRAIN = LABEL_BY_NAME["terrain"].id
SKY = LABEL_BY_NAME["sky"].id
PERSON = LABEL_BY_NAME["person"].id
RIDER = LABEL_BY_NAME["rider"].id
CAR = LABEL_BY_NAME["car"].id
TRUCK = LABEL_BY_NAME["truck"].id
BUS = LABEL_BY_NAME["bus"].id
BICYCLE = LABEL_BY_NAME["bicycle"].id


# --- Configuration ------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthConfig:
    """One generation run. Impossible values raise ValueError at construction."""

    out_root: Path
    cities: int = 2
    images_per_city: int = 3
    splits: tuple[str, ...] = SPLITS
    sizes: tuple[tuple[int, int], ...] = ((256, 512),)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cities < 1:
            raise ValueError(f"--cities must be at least 1, not {self.cities}")
        if not 1 <= self.images_per_city <= MAX_IMAGES_PER_CITY:
            raise ValueError(f"--images-per-city must be in 1..{MAX_IMAGES_PER_CITY}, "
                             f"not {self.images_per_city}")
        if not self.splits:
            raise ValueError("--splits is empty (expected some of train,val,test)")
        for split in self.splits:
            check_split(split)
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"--splits lists a split twice: {','.join(self.splits)}")
        if not self.sizes:
            raise ValueError("--size is empty (expected HxW, e.g. 256x512)")
        for height, width in self.sizes:
            if height < MIN_SIZE[0] or width < MIN_SIZE[1]:
                raise ValueError(f"size {height}x{width} is too small "
                                 f"(at least {MIN_SIZE[0]}x{MIN_SIZE[1]})")
            if height * width > DEFAULT_MAX_PIXELS:
                raise ValueError(f"size {height}x{width} is over the {DEFAULT_MAX_PIXELS}-pixel "
                                 "budget the other stages accept")
        if self.seed < 0:
            raise ValueError(f"--seed must be non-negative, not {self.seed}")
        if self.out_root.exists() and not self.out_root.is_dir():
            raise NotADirectoryError(f"output root {self.out_root} exists and is not a folder")


def city_names(split: str, count: int) -> list[str]:
    """The first `count` city names of a split: real Cityscapes names, then `-b`, `-c`... copies.

    A city's name depends only on its position, so asking for more cities never renames the
    first ones.
    """
    names = CITY_NAMES[split]
    cities = []
    for index in range(count):
        cycle, position = divmod(index, len(names))
        cities.append(names[position] if cycle == 0 else f"{names[position]}-{_letters(cycle)}")
    return cities


def _letters(number: int) -> str:
    """1 -> 'b', 25 -> 'z', 26 -> 'ba': base 26 in letters, never a leading 'a'."""
    text = ""
    while number:
        number, digit = divmod(number, 26)
        text = chr(ord("a") + digit) + text
    return text


def image_seed(seed: int, split: str, city: str, index: int) -> int:
    """A 128-bit seed for one image, derived only from what names it."""
    key = f"cityseg-synth\0{seed}\0{split}\0{city}\0{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "little")


# --- Generation ---------------------------------------------------------------------------

def generate(out_root: str | os.PathLike, *, cities: int = 2, images_per_city: int = 3,
             splits: Iterable[str] = SPLITS, sizes: Iterable[tuple[int, int]] = ((256, 512),),
             seed: int = 0, progress: Callable[[int, int], None] | None = None,
             ) -> list[tuple[str, ImageId]]:
    """Writes a synthetic Cityscapes tree and returns the (split, image id) pairs it wrote.

    Args:
      out_root: the Cityscapes root to write into (created if missing). Generated files are
        overwritten; other files are left alone.
      cities: cities per split.
      images_per_city: images per city.
      splits: some of train, val, test.
      sizes: (height, width) choices; each image picks one deterministically.
      seed: the run's seed; each image's own seed derives from (seed, split, city, index).
      progress: called as progress(done, total) after each image.

    Returns:
      (split, ImageId) for every image written, in generation order.

    Raises:
      ValueError: for impossible settings (before anything is written).
    """
    config = SynthConfig(Path(out_root), cities, images_per_city, tuple(splits),
                         tuple((int(h), int(w)) for h, w in sizes), seed)
    # Deferred so that `--help` and flag errors stay instant.
    from PIL import Image

    jobs = [(split, city, index)
            for split in config.splits
            for city in city_names(split, config.cities)
            for index in range(config.images_per_city)]
    total = len(jobs)
    log_every = max(5, min(100, total // 10))
    log.info("writing %d images (%s; sizes %s) under %s", total, ",".join(config.splits),
             ",".join(f"{h}x{w}" for h, w in config.sizes), config.out_root)
    written = []
    start = time.monotonic()
    for done, (split, city, index) in enumerate(jobs, start=1):
        image_id = ImageId(city, index, ANNOTATED_FRAME)
        rng = np.random.default_rng(image_seed(config.seed, split, city, index))
        height, width = config.sizes[int(rng.integers(len(config.sizes)))]
        image, labels = render_scene(rng, height, width)
        _write_png(Image.fromarray(image), config.out_root / image_path(split, image_id))
        _write_png(Image.fromarray(labels), config.out_root / label_path(split, image_id))
        written.append((split, image_id))
        if progress is not None:
            progress(done, total)
        if done % log_every == 0 or done == total:
            elapsed = time.monotonic() - start
            log.info("%d/%d images (%.1f images/s)", done, total, done / max(elapsed, 1e-9))
    return written


def _write_png(image, path: Path) -> None:
    # Write then rename, so an interrupted run never leaves a half-written PNG behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG", compress_level=3)
    os.replace(partial, path)


# --- The scene ----------------------------------------------------------------------------
#
# Geometry: a pinhole camera one unit (its own height, about 1.5 m) above flat ground, looking
# down the street. A ground point at depth Z (Z = 1 on the bottom row) and lateral offset X lies
# at row horizon + unit / Z and column vanish_x + X * unit / Z, where unit = height - horizon;
# an object of height h there spans h * unit / Z pixels. Everything is drawn in these units, so a
# scene looks the same at any resolution.

@dataclass
class _Window:
    """A clipped rectangle of the canvas with its pixel-centre coordinates."""

    rows: slice
    cols: slice
    yy: np.ndarray  # [h, 1] float32 row centres
    xx: np.ndarray  # [1, w] float32 column centres


class _Canvas:
    """The image being drawn (float RGB), its label ids and the scene's camera."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.height, self.width = height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.labels = np.zeros((height, width), np.uint8)
        self.horizon = height * rng.uniform(0.36, 0.47)
        self.vanish_x = width * rng.uniform(0.4, 0.6)
        self.unit = height - self.horizon
        # Noise fields at three scales, shared by every texture in the scene.
        self.grain = rng.random((height, width), dtype=np.float32)
        self.fine = _value_noise(rng, height, width, cell=max(2.0, height / 110))
        self.coarse = _value_noise(rng, height, width, cell=max(4.0, height / 10))

    def window(self, top: float, bottom: float, left: float, right: float) -> _Window | None:
        y0, y1 = max(int(np.floor(top)), 0), min(int(np.ceil(bottom)) + 1, self.height)
        x0, x1 = max(int(np.floor(left)), 0), min(int(np.ceil(right)) + 1, self.width)
        if y0 >= y1 or x0 >= x1:
            return None
        return _Window(slice(y0, y1), slice(x0, x1),
                       np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5,
                       np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5)

    def paint(self, win: _Window, mask, colour, label: int) -> None:
        """Paints `colour` ([3] or [h, w, 3]) and `label` where `mask` holds."""
        labels = self.labels[win.rows, win.cols]
        image = self.image[win.rows, win.cols]
        mask = np.broadcast_to(mask, labels.shape)
        np.copyto(image, np.asarray(colour, np.float32), where=mask[..., None])
        np.copyto(labels, np.uint8(label), where=mask)

    def textured(self, win: _Window, colour, grain: float = 0.1, fine: float = 0.0,
                 coarse: float = 0.0) -> np.ndarray:
        """`colour` modulated by the scene's noise fields over a window: [h, w, 3]."""
        factor = (1.0 + grain * (self.grain[win.rows, win.cols] - 0.5)
                  + fine * (self.fine[win.rows, win.cols] - 0.5)
                  + coarse * (self.coarse[win.rows, win.cols] - 0.5))
        return np.asarray(colour, np.float32) * factor[..., None]

    def ground(self, depth: float, offset: float) -> tuple[float, float, float]:
        """(row, column, pixels per unit) of the ground point at depth Z and lateral offset X."""
        scale = self.unit / depth
        return self.horizon + scale, self.vanish_x + offset * scale, scale


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1]: a random grid of `cell`-pixel spacing, bilinearly upsampled."""
    from PIL import Image

    grid = rng.random((int(height / cell) + 2, int(width / cell) + 2), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BILINEAR))


def render_scene(rng: np.random.Generator, height: int,
                 width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws one street scene seen from a car.

    Args:
      rng: the only source of randomness, so a seed fixes the scene.
      height: image height in pixels.
      width: image width in pixels.

    Returns:
      (image uint8 [H, W, 3], label_ids uint8 [H, W]) where label ids are official Cityscapes
      ids (0..33).
    """
    canvas = _Canvas(rng, height, width)
    street = _Street.sample(rng)
    sky_colours = _draw_sky(canvas, rng)
    _draw_ground(canvas, rng, street)
    _draw_street_end(canvas, rng, street)
    for side in (-1, 1):
        _draw_side(canvas, rng, street, side, sky_colours[1])
    sprites = _sample_sprites(rng, street, sky_colours[1])
    # Painter's order: the farthest first, so nearer objects occlude farther ones.
    for _, _, draw in sorted(sprites, key=lambda sprite: (-sprite[0], sprite[1])):
        draw(canvas)
    _light(canvas, rng, street, sky_colours[1])
    if rng.random() < 0.4:
        _draw_ego_vehicle(canvas, rng)
    noise = rng.standard_normal(canvas.image.shape, dtype=np.float32)
    canvas.image += noise * rng.uniform(1.5, 5.0)
    image = np.clip(canvas.image + 0.5, 0, 255).astype(np.uint8)
    return image, canvas.labels


@dataclass
class _Street:
    """The street's layout in ground units (lateral offsets X, depths Z)."""

    road_left: float    # road spans X in [-road_left, road_right]
    road_right: float
    sidewalk: tuple[float, float]   # widths, left then right
    verge: tuple[float, float]      # terrain strips between sidewalk and building line
    parking_side: int               # -1, 1, or 0 for no parking lane
    end: float                      # depth where the street ends (a cross facade or trees)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "_Street":
        verge = tuple(float(rng.uniform(0.4, 1.8)) if rng.random() < 0.45 else 0.0
                      for _ in range(2))
        return cls(road_left=float(rng.uniform(0.8, 3.2)), road_right=float(rng.uniform(1.2, 3.2)),
                   sidewalk=(float(rng.uniform(0.7, 2.0)), float(rng.uniform(0.7, 2.0))),
                   verge=verge, parking_side=int(rng.choice([-1, 0, 0, 1])),
                   end=float(rng.uniform(18, 60)))

    def road_edge(self, side: int) -> float:
        return self.road_right if side > 0 else self.road_left

    def sidewalk_edge(self, side: int) -> float:
        return self.road_edge(side) + self.sidewalk[side > 0]

    def building_line(self, side: int) -> float:
        return self.sidewalk_edge(side) + self.verge[side > 0]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def _grey(rng: np.random.Generator, low: float, high: float, tint: float = 6.0) -> np.ndarray:
    return np.float32(rng.uniform(low, high)) + rng.uniform(-tint, tint, 3).astype(np.float32)


def _paint_colour(rng: np.random.Generator, sky: np.ndarray) -> np.ndarray:
    """A car or clothing colour: common greys and darks, but also sky-blue, greens, anything."""
    pick = rng.random()
    if pick < 0.35:
        return _grey(rng, 20, 235)
    if pick < 0.5:
        return np.clip(sky * rng.uniform(0.75, 1.1) + rng.uniform(-12, 12, 3), 0, 255)
    if pick < 0.62:
        return _hsv(rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.8), rng.uniform(0.25, 0.7))
    return _hsv(rng.random(), rng.uniform(0.2, 0.95), rng.uniform(0.15, 0.95))


def _draw_sky(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < 0.45:  # overcast: as grey as many facades and roads
        top = _grey(rng, 120, 215, tint=4)
        horizon = np.clip(top + rng.uniform(5, 35), 0, 250)
    else:
        top = np.array([rng.uniform(30, 110), rng.uniform(90, 160), rng.uniform(170, 240)],
                       np.float32)
        horizon = np.clip(top + np.array([rng.uniform(60, 120), rng.uniform(40, 80),
                                          rng.uniform(5, 25)], np.float32), 0, 250)
    win = canvas.window(0, canvas.horizon + 1, 0, canvas.width)
    blend = np.clip(win.yy / canvas.horizon, 0, 1)[..., None]
    colour = top * (1 - blend) + horizon * blend
    clouds = canvas.coarse[win.rows, win.cols] * 0.7 + canvas.fine[win.rows, win.cols] * 0.3
    cover = np.clip((clouds - rng.uniform(0.45, 0.8)) * 4, 0, 1)[..., None]
    cloud_colour = _grey(rng, 170, 245, tint=3)
    colour = colour * (1 - cover) + cloud_colour * cover * (0.9 + 0.2 * clouds[..., None])
    canvas.paint(win, True, colour, SKY)
    return top, horizon


def _draw_ground(canvas: _Canvas, rng: np.random.Generator, street: _Street) -> None:
    """Road, parking lane, curbs, sidewalks and terrain, in perspective over the lower rows."""
    win = canvas.window(canvas.horizon, canvas.height, 0, canvas.width)
    t = np.maximum((win.yy - canvas.horizon) / canvas.unit, 1e-4)  # 1 / depth
    depth = 1.0 / t
    lateral = (win.xx - canvas.vanish_x) / (canvas.unit * t)
    away = np.abs(lateral) - np.where(lateral < 0, street.road_left, street.road_right)
    sidewalk_width = np.where(lateral < 0, *street.sidewalk)

    # Surfaces: 0 asphalt, 1 road paint, 2 parking cobbles, 3 pavement, 4 curb, 5 grass.
    surface = np.zeros(away.shape, np.uint8)
    if street.parking_side:
        surface[(np.sign(lateral) == street.parking_side) & (away > -1.0)] = 2
    centre = -street.road_left + (street.road_left + street.road_right) * rng.uniform(0.35, 0.6)
    marking = (np.abs(lateral - centre) < 0.07) & ((depth / 3.0) % 1.0 < 0.45)  # dashed centre
    marking |= np.abs(away + 0.25) < 0.05  # edge lines
    if rng.random() < 0.35:  # a zebra crossing
        near = rng.uniform(2.5, 10)
        marking |= (depth > near) & (depth < near + 1.6) & ((lateral / 0.55) % 1.0 < 0.5)
    surface[marking & (surface == 0)] = 1
    surface[away > 0] = 3
    surface[(away > 0) & (away < 0.12)] = 4
    surface[away > sidewalk_width] = 5

    if rng.random() < 0.5:
        pavement = _grey(rng, 100, 200)
    else:  # red paving stones
        pavement = _hsv(rng.uniform(0.97, 1.06), rng.uniform(0.15, 0.4), rng.uniform(0.45, 0.75))
    asphalt = _grey(rng, 70, 150, tint=5) + np.array([3, -4, 8], np.float32) * rng.random()
    base = np.stack([asphalt, _grey(rng, 190, 240, tint=3), _grey(rng, 80, 160), pavement,
                     np.minimum(pavement * 1.25, 255),
                     _hsv(rng.uniform(0.12, 0.3), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.65))])
    # How strongly each surface takes the grain, fine and coarse noise: texture tells them apart.
    weights = np.array([[0.25, 0.15, 0.25], [0.1, 0.0, 0.1], [0.35, 0.3, 0.1],
                        [0.2, 0.0, 0.2], [0.15, 0.0, 0.1], [0.45, 0.3, 0.3]], np.float32)
    w = weights[surface]
    factor = (1.0 + w[..., 0] * (canvas.grain[win.rows, win.cols] - 0.5)
              + w[..., 1] * (canvas.fine[win.rows, win.cols] - 0.5)
              + w[..., 2] * (canvas.coarse[win.rows, win.cols] - 0.5))
    # Joints between paving slabs and between cobbles.
    joints = ((np.abs(lateral) * 2.0) % 1.0 < 0.07) | ((depth * 2.0) % 1.0 < 0.07)
    factor *= np.where(joints & (surface == 3), np.float32(0.82), np.float32(1.0))
    cobble_joints = ((np.abs(lateral) * 6.0) % 1.0 < 0.15) | ((depth * 6.0) % 1.0 < 0.15)
    factor *= np.where(cobble_joints & (surface == 2), np.float32(0.75), np.float32(1.0))
    canvas.image[win.rows, win.cols] = base[surface] * factor[..., None]
    labels = np.array([ROAD, ROAD, PARKING, SIDEWALK, SIDEWALK, TERRAIN], np.uint8)
    canvas.labels[win.rows, win.cols] = labels[surface]


def _draw_street_end(canvas: _Canvas, rng: np.random.Generator, street: _Street) -> None:
    """Closes the street at its far end with a row of buildings or trees, or leaves it open."""
    row, _, scale = canvas.ground(street.end, 0.0)
    left = canvas.vanish_x - street.building_line(-1) * scale * 1.5
    right = canvas.vanish_x + street.building_line(1) * scale * 1.5
    pick = rng.random()
    if pick < 0.55:
        top = row - rng.uniform(3, 8) * scale
        win = canvas.window(top, row, left, right)
        if win is not None:
            colour = canvas.textured(win, _facade_colour(rng), grain=0.3, coarse=0.3)
            canvas.paint(win, win.yy >= top, colour, BUILDING)
    elif pick < 0.85:
        top = row - rng.uniform(2, 5) * scale
        win = canvas.window(top - 2 * scale, row, left, right)
        if win is not None:
            edge = top + 2 * scale * (canvas.coarse[win.rows, win.cols] - 0.5)
            canvas.paint(win, win.yy >= edge, _foliage(canvas, win, _leaf_colour(rng)), VEGETATION)


def _facade_colour(rng: np.random.Generator) -> np.ndarray:
    pick = rng.random()
    if pick < 0.5:
        return _grey(rng, 55, 215)
    if pick < 0.8:  # plaster: beige, ochre, pastel
        return _hsv(rng.uniform(0.0, 0.18), rng.uniform(0.1, 0.45), rng.uniform(0.5, 0.9))
    return _hsv(rng.uniform(0.97, 1.05), rng.uniform(0.4, 0.7), rng.uniform(0.35, 0.65))  # brick


def _leaf_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.8:
        return _hsv(rng.uniform(0.17, 0.38), rng.uniform(0.35, 0.85), rng.uniform(0.25, 0.6))
    return _hsv(rng.uniform(0.05, 0.14), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.7))  # autumn


def _foliage(canvas: _Canvas, win: _Window, leaf: np.ndarray) -> np.ndarray:
    # Strong fine-scale contrast: leaves in light and shade, the texture that tells trees apart.
    return canvas.textured(win, leaf, grain=0.5, fine=0.9, coarse=0.3)


def _draw_side(canvas: _Canvas, rng: np.random.Generator, street: _Street, side: int,
               sky: np.ndarray) -> None:
    """Blocks of buildings, walls, fences and hedges along one side of the street."""
    line = street.building_line(side)
    depth = float(rng.uniform(0.2, 0.6))
    while depth < street.end:
        length = float(rng.uniform(1.5, 8.0))
        kind = rng.choice(["building", "wall", "fence", "gap"], p=[0.62, 0.1, 0.12, 0.16])
        span = (depth, min(depth + length, street.end))
        if kind in ("fence", "gap") and rng.random() < 0.7:
            hedge = float(rng.uniform(1.2, 5))
            _draw_facade(canvas, rng, side, line + 0.6, span, "hedge", hedge, sky)
        if kind != "gap":
            height = {"building": rng.uniform(2.5, 9.0), "wall": rng.uniform(0.6, 2.0),
                      "fence": rng.uniform(0.7, 1.5)}[kind]
            _draw_facade(canvas, rng, side, line, span, kind, float(height), sky)
        depth = span[1] + (float(rng.uniform(0.3, 2.0)) if kind == "gap" else 0.0)


def _draw_facade(canvas: _Canvas, rng: np.random.Generator, side: int, line: float,
                 span: tuple[float, float], kind: str, height: float, sky: np.ndarray) -> None:
    """A vertical surface parallel to the street at lateral distance `line`, between two depths."""
    near, far = span
    x_near = canvas.vanish_x + side * line * canvas.unit / near
    x_far = canvas.vanish_x + side * line * canvas.unit / far
    top = canvas.horizon - canvas.unit / near * (height - 1)
    win = canvas.window(top, canvas.horizon + canvas.unit / near, min(x_near, x_far),
                        max(x_near, x_far))
    if win is None:
        return
    t = np.maximum(side * (win.xx - canvas.vanish_x) / (line * canvas.unit), 1e-4)
    depth = 1.0 / t
    up = 1.0 - (win.yy - canvas.horizon) / (canvas.unit * t)  # height above ground, in units
    mask = (up >= 0) & (up <= height) & (depth >= near) & (depth <= far)

    if kind == "hedge":
        edge = height * (1 + 0.35 * (canvas.coarse[win.rows, win.cols] - 0.5))
        mask = (up >= 0) & (up <= edge) & (depth >= near) & (depth <= far)
        mask &= canvas.fine[win.rows, win.cols] > 0.12  # gaps in the leaves
        canvas.paint(win, mask, _foliage(canvas, win, _leaf_colour(rng)), VEGETATION)
        return
    base = _facade_colour(rng)
    if kind == "fence":
        base = _grey(rng, 40, 200) if rng.random() < 0.6 else _paint_colour(rng, sky)
        pitch = rng.uniform(3, 8)
        if rng.random() < 0.5:  # bars with top and bottom rails
            solid = ((depth * pitch) % 1.0 < 0.35) | (up > height - 0.08) | (up < 0.1)
        else:  # diagonal mesh
            k = rng.uniform(3, 6)
            solid = (((depth * pitch + up * k) % 1.0 < 0.18)
                     | ((depth * pitch - up * k) % 1.0 < 0.18))
            solid |= up > height - 0.06
        canvas.paint(win, mask & solid, canvas.textured(win, base, grain=0.15), FENCE)
        return

    colour = canvas.textured(win, base, grain=0.15, fine=0.1, coarse=0.25)
    if rng.random() < 0.4:  # brick courses with staggered joints
        course = np.floor(up * 7.0)
        along = depth * 2.5 + 0.5 * (course % 2)
        joint = ((up * 7.0) % 1.0 < 0.12) | (along % 1.0 < 0.06)
        brick = ((course * 73856093 + np.floor(along) * 19349663) % 97) / 97.0
        colour = colour * np.where(joint, 1.18, 0.88 + 0.24 * brick)[..., None]
    if kind == "building":
        floor = rng.uniform(1.8, 2.4)
        pitch = rng.uniform(1.2, 2.2)
        glass = np.clip(sky * rng.uniform(0.35, 0.9) + rng.uniform(-20, 10), 0, 255)
        windows = (((up / floor) % 1.0 > 0.3) & ((up / floor) % 1.0 < 0.78)
                   & ((depth / pitch) % 1.0 > 0.2) & ((depth / pitch) % 1.0 < 0.72)
                   & (up > 1.7) & (up < height - 0.4))
        if rng.random() < 0.5:  # shop windows on the ground floor
            windows |= (up > 0.25) & (up < 1.5) & ((depth / (2 * pitch)) % 1.0 < 0.8)
        panes = canvas.textured(win, glass, grain=0.1, coarse=0.5)
        colour = np.where(windows[..., None], panes, colour)
        colour = colour * np.where(up > height - 0.2, 0.75, 1.0)[..., None]  # roof ledge
    # Facades darken towards the ground (ambient occlusion), cheap but telling.
    colour = colour * (0.8 + 0.2 * np.clip(up / 2.0, 0, 1))[..., None]
    canvas.paint(win, mask, colour, BUILDING if kind == "building" else WALL)


# --- Objects ------------------------------------------------------------------------------
#
# Each factory picks its object's shape and colours from the scene's generator right away (so
# the draw order cannot change what is drawn) and returns a function that paints it.

Draw = Callable[[_Canvas], None]
Sprite = tuple[float, int, Draw]


def _ellipse(win: _Window, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((win.yy - cy) / max(ry, 0.5)) ** 2 + ((win.xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _capsule(win: _Window, a: tuple[float, float], b: tuple[float, float],
             radius: float) -> np.ndarray:
    """Pixels within `radius` (at least half a pixel) of the segment a-b, points as (row, col)."""
    ay, ax = a
    dy, dx = b[0] - ay, b[1] - ax
    length2 = max(dy * dy + dx * dx, 1e-6)
    along = np.clip(((win.yy - ay) * dy + (win.xx - ax) * dx) / length2, 0, 1)
    dist2 = (win.yy - ay - along * dy) ** 2 + (win.xx - ax - along * dx) ** 2
    return dist2 <= max(radius, 0.5) ** 2


def _box(win: _Window, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    return (win.yy >= top) & (win.yy < bottom) & (win.xx >= left) & (win.xx < right)


def _trapezoid(win: _Window, top: float, bottom: float, centre: float, half_top: float,
               half_bottom: float) -> np.ndarray:
    blend = np.clip((win.yy - top) / max(bottom - top, 1e-3), 0, 1)
    half = half_top + (half_bottom - half_top) * blend
    return (win.yy >= top) & (win.yy < bottom) & (np.abs(win.xx - centre) <= np.maximum(half, 0.5))


def _sample_sprites(rng: np.random.Generator, street: _Street, sky: np.ndarray) -> list[Sprite]:
    """Places trees, poles, street furniture, people, riders and vehicles on the ground plan."""
    sprites: list[Sprite] = []

    def add(depth: float, draw: Draw) -> None:
        sprites.append((depth, len(sprites), draw))

    far = min(street.end, 40.0)
    for side in (-1, 1):
        kerb, walk = street.road_edge(side), street.sidewalk[side > 0]
        for _ in range(rng.integers(0, 7)):
            lateral = street.sidewalk_edge(side) + rng.uniform(-0.3, street.verge[side > 0] + 0.1)
            depth = float(rng.uniform(1.5, far))
            add(depth, _tree(rng, depth, side * lateral))
        # At least one pole per scene keeps every category present in small sets.
        for _ in range(rng.integers(1 if side > 0 else 0, 4)):
            depth = float(rng.uniform(1.4, far))
            add(depth, _pole(rng, depth, side * (kerb + 0.3), side))
        for _ in range(rng.integers(0, 3)):
            depth = float(rng.uniform(1.5, far))
            add(depth, _street_furniture(rng, depth, side * (kerb + rng.uniform(0.3, walk)), sky))
        for _ in range(rng.integers(1 if side < 0 else 0, 6)):
            depth = float(rng.uniform(1.3, 25.0))
            lateral = side * (kerb + rng.uniform(0.2, max(walk - 0.1, 0.3)))
            add(depth, _person(rng, depth, lateral, sky))
        if rng.random() < 0.3:
            depth = float(rng.uniform(1.6, 20.0))
            add(depth, _parked_bicycle(rng, depth, side * (kerb + rng.uniform(0.3, walk))))
    lanes = (-street.road_left + 0.7, street.road_right - 0.7)
    for index in range(rng.integers(1, 9)):
        lateral = float(rng.uniform(*lanes)) if lanes[0] < lanes[1] else 0.0
        depth = float(rng.uniform(2.5 if abs(lateral) < 0.8 else 1.5, far))
        kind = "car" if index == 0 else str(rng.choice(["car", "truck", "bus"], p=[0.8, 0.1, 0.1]))
        add(depth, _vehicle(rng, depth, lateral, kind, sky, oncoming=lateral < -0.9))
    if rng.random() < 0.3:  # people crossing the road
        depth = float(rng.uniform(2.5, 12.0))
        for _ in range(rng.integers(1, 4)):
            lateral = float(rng.uniform(-street.road_left, street.road_right))
            add(depth + float(rng.uniform(0, 0.8)), _person(rng, depth, lateral, sky))
    for _ in range(rng.integers(0, 3)):
        side = int(rng.choice([-1, 1]))
        lateral = side * (street.road_edge(side) - rng.uniform(0.3, 0.8))
        depth = float(rng.uniform(1.8, 25.0))
        add(depth, _rider(rng, depth, lateral, sky))
    return sprites


def _tree(rng: np.random.Generator, depth: float, lateral: float) -> Draw:
    trunk_height, trunk_width = rng.uniform(1.2, 2.8), rng.uniform(0.08, 0.2)
    crown_y, crown_x = rng.uniform(1.0, 2.5), rng.uniform(0.7, 1.8)
    bark = _grey(rng, 40, 110) * np.array([1.1, 1.0, 0.85], np.float32)
    leaf = _leaf_colour(rng)

    def draw(canvas: _Canvas) -> None:
        row, col, scale = canvas.ground(depth, lateral)
        centre = row - (trunk_height + crown_y * 0.6) * scale
        win = canvas.window(centre - 1.3 * crown_y * scale, row, col - 1.3 * crown_x * scale,
                            col + 1.3 * crown_x * scale)
        if win is None:
            return
        trunk = _capsule(win, (row, col), (row - trunk_height * scale, col),
                         trunk_width * scale / 2)
        canvas.paint(win, trunk, canvas.textured(win, bark, grain=0.3), VEGETATION)
        fine, coarse = canvas.fine[win.rows, win.cols], canvas.coarse[win.rows, win.cols]
        ragged = 1.0 + 0.5 * (coarse - 0.5) + 0.4 * (fine - 0.5)
        crown = (((win.yy - centre) / (crown_y * scale)) ** 2
                 + ((win.xx - col) / (crown_x * scale)) ** 2) <= ragged
        crown &= fine > 0.1  # sky shows through the gaps in the leaves
        canvas.paint(win, crown, _foliage(canvas, win, leaf), VEGETATION)

    return draw


def _pole(rng: np.random.Generator, depth: float, lateral: float, side: int) -> Draw:
    height, width = rng.uniform(2.3, 5.0), rng.uniform(0.05, 0.12)
    metal = _grey(rng, 50, 180) if rng.random() < 0.8 else _hsv(0.33, 0.4, rng.uniform(0.2, 0.4))
    attachment = rng.choice(["sign", "light", "lamp"], p=[0.45, 0.3, 0.25])
    size = rng.uniform(0.35, 0.6)
    shape = rng.choice(["circle", "triangle", "rectangle", "diamond"])
    face = _sign_colours(rng)
    lit = int(rng.integers(3))
    housing = _grey(rng, 15, 60) if rng.random() < 0.8 else _hsv(0.14, 0.8, 0.8)

    def draw(canvas: _Canvas) -> None:
        row, col, scale = canvas.ground(depth, lateral)
        top = row - height * scale
        win = canvas.window(top - size * scale, row, col - 1.5 * scale, col + 1.5 * scale)
        if win is None:
            return
        body = canvas.textured(win, metal, grain=0.15)
        canvas.paint(win, _capsule(win, (row, col), (top, col), width * scale / 2), body, POLE)
        if attachment == "lamp":  # an arm over the road, still labelled pole
            reach = col - side * 1.2 * scale
            canvas.paint(win, _capsule(win, (top, col), (top - 0.1 * scale, reach),
                                       width * scale / 3), body, POLE)
            canvas.paint(win, _ellipse(win, top - 0.05 * scale, reach, 0.06 * scale,
                                       0.2 * scale), body * 1.1, POLE)
        elif attachment == "sign":
            _paint_sign(canvas, win, top + size * scale * 0.5, col, size * scale / 2, shape, face)
        else:
            cy = top + 0.45 * scale
            box = _box(win, cy - 0.4 * scale, cy + 0.4 * scale, col - 0.14 * scale,
                       col + 0.14 * scale)
            canvas.paint(win, box, canvas.textured(win, housing, grain=0.2), TRAFFIC_LIGHT)
            for lamp, colour in enumerate(((255, 40, 30), (255, 190, 20), (40, 255, 120))):
                lamp_y = cy + (lamp - 1) * 0.25 * scale
                glow = np.float32(1.0 if lamp == lit else 0.25)
                canvas.paint(win, _ellipse(win, lamp_y, col, 0.08 * scale, 0.08 * scale),
                             np.asarray(colour, np.float32) * glow, TRAFFIC_LIGHT)

    return draw


def _sign_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(border, face) colours of a traffic sign; sometimes its grey back is what we see."""
    pick = rng.random()
    if pick < 0.2:
        back = _grey(rng, 90, 190)
        return back, back
    if pick < 0.5:
        return np.array([200, 30, 30], np.float32), _grey(rng, 215, 245, tint=2)
    if pick < 0.7:
        return _grey(rng, 215, 245, tint=2), np.array([30, 80, 190], np.float32)
    if pick < 0.85:
        return np.array([30, 30, 30], np.float32), np.array([245, 200, 20], np.float32)
    return _grey(rng, 215, 245, tint=2), _hsv(0.38, 0.8, 0.5)  # green direction signs


def _paint_sign(canvas: _Canvas, win: _Window, cy: float, cx: float, radius: float, shape: str,
                colours: tuple[np.ndarray, np.ndarray]) -> None:
    border, face = colours
    inner = radius * 0.78
    if shape == "circle":
        outer_mask, inner_mask = (_ellipse(win, cy, cx, radius, radius),
                                  _ellipse(win, cy, cx, inner, inner))
    elif shape == "triangle":
        outer_mask = _trapezoid(win, cy - radius, cy + radius * 0.8, cx, 0, radius)
        inner_mask = _trapezoid(win, cy - inner * 0.8, cy + inner * 0.7, cx, 0, inner * 0.8)
    elif shape == "diamond":
        outer_mask = np.abs(win.yy - cy) + np.abs(win.xx - cx) <= max(radius, 0.7)
        inner_mask = np.abs(win.yy - cy) + np.abs(win.xx - cx) <= inner
    else:
        outer_mask = _box(win, cy - radius * 0.7, cy + radius * 0.7, cx - radius * 1.3,
                          cx + radius * 1.3)
        inner_mask = _box(win, cy - inner * 0.7, cy + inner * 0.7, cx - inner * 1.3,
                          cx + inner * 1.3)
    canvas.paint(win, outer_mask, canvas.textured(win, border, grain=0.1), TRAFFIC_SIGN)
    canvas.paint(win, inner_mask, canvas.textured(win, face, grain=0.1), TRAFFIC_SIGN)


def _street_furniture(rng: np.random.Generator, depth: float, lateral: float,
                      sky: np.ndarray) -> Draw:
    """Bins, benches and cabinets: Cityscapes' `static` objects (void)."""
    width, height = (rng.uniform(0.3, 0.6), rng.uniform(0.5, 1.1))
    colour = _paint_colour(rng, sky)
    bench = rng.random() < 0.3

    def draw(canvas: _Canvas) -> None:
        row, col, scale = canvas.ground(depth, lateral)
        w = (width * 3 if bench else width) * scale
        win = canvas.window(row - height * scale, row, col - w, col + w)
        if win is None:
            return
        if bench:
            mask = _box(win, row - 0.5 * scale, row - 0.35 * scale, col - w, col + w)
            mask |= _box(win, row - 0.35 * scale, row, col - w, col - w + 0.08 * scale)
            mask |= _box(win, row - 0.35 * scale, row, col + w - 0.08 * scale, col + w)
        else:
            mask = _box(win, row - height * scale, row, col - w / 2, col + w / 2)
        canvas.paint(win, mask, canvas.textured(win, colour, grain=0.2, coarse=0.2), STATIC)

    return draw


def _person(rng: np.random.Generator, depth: float, lateral: float, sky: np.ndarray) -> Draw:
    height = rng.uniform(0.95, 1.3)
    shirt, trousers = _paint_colour(rng, sky), _paint_colour(rng, sky)
    skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    hair = _grey(rng, 10, 120) * np.array([1.1, 1.0, 0.9], np.float32)
    stride, swing = rng.uniform(-0.12, 0.12), rng.uniform(-0.06, 0.06)
    coat = rng.random() < 0.3
    bag = _paint_colour(rng, sky) if rng.random() < 0.3 else None

    def draw(canvas: _Canvas) -> None:
        row, col, scale = canvas.ground(depth, lateral)
        h = height * scale
        win = canvas.window(row - h, row, col - 0.35 * h, col + 0.35 * h)
        if win is None:
            return
        def at(up: float, across: float) -> tuple[float, float]:  # body fractions -> pixels
            return row - up * h, col + across * h

        legs = (_capsule(win, at(0.5, -0.05), at(0.03, -0.05 - stride), 0.045 * h)
                | _capsule(win, at(0.5, 0.05), at(0.03, 0.05 + stride), 0.045 * h))
        canvas.paint(win, legs, canvas.textured(win, trousers, grain=0.2, fine=0.2), PERSON)
        torso = _capsule(win, at(0.78, 0), at((0.3 if coat else 0.5) + 0.05, 0), 0.12 * h)
        arms = (_capsule(win, at(0.78, -0.12), at(0.45, -0.15 - swing), 0.035 * h)
                | _capsule(win, at(0.78, 0.12), at(0.45, 0.15 - swing), 0.035 * h))
        canvas.paint(win, torso | arms, canvas.textured(win, shirt, grain=0.2, fine=0.2), PERSON)
        if bag is not None:
            canvas.paint(win, _box(win, row - 0.75 * h, row - 0.45 * h, col + 0.08 * h,
                                   col + 0.22 * h), bag, PERSON)
        canvas.paint(win, _ellipse(win, row - 0.91 * h, col, 0.075 * h, 0.06 * h), skin, PERSON)
        canvas.paint(win, _ellipse(win, row - 0.95 * h, col, 0.05 * h, 0.062 * h), hair, PERSON)

    return draw


def _rider(rng: np.random.Generator, depth: float, lateral: float, sky: np.ndarray) -> Draw:
    """A cyclist seen from behind: the person is a `rider`, the bicycle a `bicycle`."""
    frame = _paint_colour(rng, sky)
    jacket, trousers = _paint_colour(rng, sky), _paint_colour(rng, sky)
    helmet = _paint_colour(rng, sky) if rng.random() < 0.6 else _grey(rng, 10, 80)

    def draw(canvas: _Canvas) -> None:
        row, col, s = canvas.ground(depth, lateral)
        win = canvas.window(row - 1.7 * s, row, col - 0.4 * s, col + 0.4 * s)
        if win is None:
            return
        def at(up: float, across: float) -> tuple[float, float]:  # ground units -> pixels
            return row - up * s, col + across * s

        bike = _ellipse(win, row - 0.33 * s, col, 0.33 * s, 0.03 * s)
        bike |= _capsule(win, at(0.33, 0), at(1.0, 0), 0.025 * s)
        bike |= _capsule(win, at(1.0, -0.25), at(1.0, 0.25), 0.02 * s)
        canvas.paint(win, bike, canvas.textured(win, frame, grain=0.2) * 0.6, BICYCLE)
        legs = (_capsule(win, at(0.9, -0.1), at(0.3, -0.09), 0.055 * s)
                | _capsule(win, at(0.9, 0.1), at(0.45, 0.09), 0.055 * s))
        canvas.paint(win, legs, canvas.textured(win, trousers, grain=0.2), RIDER)
        body = _capsule(win, at(0.95, 0), at(1.42, 0), 0.16 * s)
        body |= _capsule(win, at(1.4, -0.15), at(1.05, -0.25), 0.04 * s)
        body |= _capsule(win, at(1.4, 0.15), at(1.05, 0.25), 0.04 * s)
        canvas.paint(win, body, canvas.textured(win, jacket, grain=0.2, fine=0.2), RIDER)
        canvas.paint(win, _ellipse(win, row - 1.58 * s, col, 0.1 * s, 0.085 * s), helmet, RIDER)

    return draw


def _parked_bicycle(rng: np.random.Generator, depth: float, lateral: float) -> Draw:
    """A bicycle seen from the side: two thin rings and a frame, with the background between."""
    colour = _hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.1, 0.8))
    facing = float(rng.choice([-1, 1]))

    def draw(canvas: _Canvas) -> None:
        row, col, s = canvas.ground(depth, lateral)
        win = canvas.window(row - 1.0 * s, row, col - 0.9 * s, col + 0.9 * s)
        if win is None:
            return
        hub_y = row - 0.33 * s
        rear, front = (hub_y, col - facing * 0.5 * s), (hub_y, col + facing * 0.5 * s)
        mask = np.zeros(np.broadcast_shapes(win.yy.shape, win.xx.shape), bool)
        for hub in (rear, front):
            dist = np.sqrt((win.yy - hub[0]) ** 2 + (win.xx - hub[1]) ** 2)
            mask |= np.abs(dist - 0.3 * s) <= max(0.03 * s, 0.5)
        crank = (row - 0.33 * s, col)
        seat = (row - 0.9 * s, col - facing * 0.15 * s)
        bars = (row - 0.95 * s, col + facing * 0.35 * s)
        for a, b in ((rear, seat), (seat, bars), (crank, seat), (crank, rear), (bars, front),
                     (crank, bars)):
            mask |= _capsule(win, a, b, 0.025 * s)
        canvas.paint(win, mask, colour, BICYCLE)

    return draw


def _vehicle(rng: np.random.Generator, depth: float, lateral: float, kind: str,
             sky: np.ndarray, oncoming: bool) -> Draw:
    """A car, truck or bus seen from behind (or from the front when it comes towards us)."""
    width, height = {"car": (rng.uniform(1.1, 1.3), rng.uniform(0.9, 1.2)),
                     "truck": (rng.uniform(1.5, 1.7), rng.uniform(1.8, 2.4)),
                     "bus": (rng.uniform(1.6, 1.75), rng.uniform(1.9, 2.2))}[kind]
    if kind == "bus" and rng.random() < 0.6:
        paint = _hsv(rng.choice([0.0, 0.13, 0.6]), rng.uniform(0.5, 0.9), rng.uniform(0.6, 0.95))
    else:
        paint = _paint_colour(rng, sky)
    glass = np.clip(sky * rng.uniform(0.25, 0.85), 0, 255)
    lights = np.array([250, 245, 210] if oncoming else [220, 25, 25], np.float32)
    tyre = _grey(rng, 12, 40, tint=2)
    label = {"car": CAR, "truck": TRUCK, "bus": BUS}[kind]

    def draw(canvas: _Canvas) -> None:
        row, col, s = canvas.ground(depth, lateral)
        w, h = width * s, height * s
        win = canvas.window(row - h, row + 0.08 * s, col - 0.7 * w, col + 0.7 * w)
        if win is None:
            return
        # The shadow under the vehicle darkens the road but stays road.
        shadow = _ellipse(win, row, col, 0.06 * s, 0.65 * w)
        canvas.image[win.rows, win.cols][shadow] *= 0.45
        body_colour = canvas.textured(win, paint, grain=0.12, coarse=0.2)
        body_colour *= (1.15 - 0.3 * np.clip((win.yy - (row - h)) / h, 0, 1))[..., None]
        wheels = (_box(win, row - 0.3 * s, row, col - 0.48 * w, col - 0.3 * w)
                  | _box(win, row - 0.3 * s, row, col + 0.3 * w, col + 0.48 * w))
        canvas.paint(win, wheels, tyre, label)
        if kind == "car":
            canvas.paint(win, _box(win, row - 0.6 * h, row - 0.12 * h, col - w / 2, col + w / 2)
                         | _trapezoid(win, row - h, row - 0.6 * h, col, 0.36 * w, 0.47 * w),
                         body_colour, label)
            window = _trapezoid(win, row - 0.94 * h, row - 0.64 * h, col, 0.31 * w, 0.41 * w)
            lamp_top, lamp_bottom = row - 0.56 * h, row - 0.46 * h
        else:
            canvas.paint(win, _box(win, row - h, row - 0.12 * h, col - w / 2, col + w / 2),
                         body_colour, label)
            if kind == "bus":
                window = _box(win, row - 0.85 * h, row - 0.55 * h, col - 0.42 * w, col + 0.42 * w)
            else:  # the doors of the box body: a seam down the middle
                window = _box(win, row - 0.95 * h, row - 0.2 * h, col - 0.008 * w, col + 0.008 * w)
            lamp_top, lamp_bottom = row - 0.25 * h, row - 0.17 * h
        canvas.paint(win, window, canvas.textured(win, glass, grain=0.1, coarse=0.4), label)
        lamps = (_box(win, lamp_top, lamp_bottom, col - 0.48 * w, col - 0.34 * w)
                 | _box(win, lamp_top, lamp_bottom, col + 0.34 * w, col + 0.48 * w))
        canvas.paint(win, lamps, lights, label)
        # The licence plate is labelled as the vehicle in labelIds (its own id is -1).
        plate = _box(win, row - 0.18 * s - 0.1 * s, row - 0.18 * s, col - 0.2 * s, col + 0.2 * s)
        canvas.paint(win, plate, np.array([235, 235, 225], np.float32), label)

    return draw


# --- Light, camera, car -------------------------------------------------------------------

def _light(canvas: _Canvas, rng: np.random.Generator, street: _Street,
           haze_colour: np.ndarray) -> None:
    """Cast shadows, haze near the horizon, exposure, white balance and vignetting."""
    height, width = canvas.height, canvas.width
    image = canvas.image
    if rng.random() < 0.5:  # the shadow of one row of houses across part of the street
        win = canvas.window(canvas.horizon, height, 0, width)
        t = np.maximum((win.yy - canvas.horizon) / canvas.unit, 1e-4)
        lateral = (win.xx - canvas.vanish_x) / (canvas.unit * t)
        boundary = rng.uniform(-street.road_left, street.road_right)
        side = rng.choice([-1, 1])
        # Only the ground surfaces: a facade cut at the horizon row would give the shadow away.
        ground = np.isin(canvas.labels[win.rows, win.cols], (ROAD, SIDEWALK, PARKING, TERRAIN))
        shaded = ((lateral - boundary) * side > 0) & ground
        image[win.rows, win.cols] *= np.where(shaded, np.float32(rng.uniform(0.45, 0.7)),
                                              np.float32(1))[..., None]
    rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(width, dtype=np.float32)[None, :] + 0.5
    haze = rng.uniform(0, 0.3) * np.exp(-np.abs(rows - canvas.horizon) / (0.05 * height))
    image *= (1 - haze)[..., None]
    image += (haze[..., None] * haze_colour)
    gain = rng.uniform(0.65, 1.2) * (1 + rng.uniform(-0.3, 0.3) * (cols / width - 0.5))
    radius2 = ((rows / height - 0.5) ** 2 + (cols / width - 0.5) ** 2) * 2
    gain = gain * (1 - rng.uniform(0, 0.35) * radius2)
    balance = rng.normal(1.0, 0.04, 3).astype(np.float32)
    image *= gain.astype(np.float32)[..., None]
    image *= balance


def _draw_ego_vehicle(canvas: _Canvas, rng: np.random.Generator) -> None:
    """The bonnet of our own car (`ego vehicle`) and the dark bottom rows (`out of roi`)."""
    height, width = canvas.height, canvas.width
    rise = rng.uniform(0.07, 0.15) * height
    centre = width * rng.uniform(0.4, 0.6)
    win = canvas.window(height - rise - 1, height, 0, width)
    edge = height - rise * (1 - 0.6 * ((win.xx - centre) / (width / 2)) ** 2)
    bonnet = win.yy >= edge
    paint = _grey(rng, 15, 90) if rng.random() < 0.6 else _hsv(rng.random(), 0.5, 0.35)
    # A glossy bonnet mirrors the scene brightest near its edge.
    gloss = np.clip(1.6 - (win.yy - edge) / max(rise, 1.0), 0.7, 1.6)[..., None]
    canvas.paint(win, bonnet, canvas.textured(win, paint, grain=0.05, coarse=0.3) * gloss,
                 EGO_VEHICLE)
    border = max(1.0, 0.012 * height)
    roi = canvas.window(height - border, height, 0, width)
    canvas.paint(roi, roi.yy >= height - border, _grey(rng, 5, 25, tint=2), OUT_OF_ROI)


# --- Command line -------------------------------------------------------------------------

EPILOG = """\
examples:
  cityseg-synth raw/                                   # 2 cities x 3 images per split, small
  cityseg-synth raw/ --cities 3 --images-per-city 20 --splits train,val
  cityseg-synth raw/ --size 1024x2048                  # the real Cityscapes frame size
  cityseg-synth raw/ --size 1024x2048,512x1024,720x1280 --seed 7   # mixed cameras

Layout written (the real Cityscapes one):
  OUT_ROOT/leftImg8bit/{split}/{city}/{city}_{seq:06d}_000019_leftImg8bit.png
  OUT_ROOT/gtFine/{split}/{city}/{city}_{seq:06d}_000019_gtFine_labelIds.png
Each image depends only on (seed, split, city, index) and --size. Files it
generates are overwritten; other files under OUT_ROOT are left alone.
"""


def _parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    sizes = tuple(parse_size(part.strip()) for part in text.split(",") if part.strip())
    if not sizes:
        raise argparse.ArgumentTypeError("size list is empty (expected HxW[,HxW...])")
    return sizes


def _parse_splits(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


class _Parser(argparse.ArgumentParser):
    """Reports a bad flag as a CliError, so run_cli prints it on one line."""

    def error(self, message: str):
        raise CliError(message)


def build_parser() -> argparse.ArgumentParser:
    """The flags of `cityseg-synth`."""
    parser = _Parser(
        prog="cityseg-synth", formatter_class=HelpFormatter, epilog=EPILOG,
        description="Write synthetic street scenes in the raw Cityscapes layout "
                    "(leftImg8bit + gtFine labelIds).")
    parser.add_argument("out_root", metavar="OUT_ROOT", type=Path, help="Cityscapes root to write")
    parser.add_argument("--cities", type=int, default=2, help="cities per split")
    parser.add_argument("--images-per-city", type=int, default=3, help="images per city")
    parser.add_argument("--splits", type=_parse_splits, default=",".join(SPLITS),
                        help="comma-separated splits among train,val,test")
    parser.add_argument("--size", type=_parse_sizes,
                        default=",".join(f"{h}x{w}" for h, w in DEFAULT_SIZES),
                        help="HxW or a comma list of HxW; each image picks one deterministically")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole tree")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    written = generate(args.out_root, cities=args.cities, images_per_city=args.images_per_city,
                       splits=args.splits, sizes=args.size, seed=args.seed)
    log.info("wrote %d images under %s", len(written), args.out_root)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `cityseg-synth`."""
    return run_cli("cityseg-synth", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
