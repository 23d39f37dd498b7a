"""cityseg-synth: the raw Cityscapes layout, PNG formats, determinism and a non-trivial task."""
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg import vocabulary as V
from preprocessing import synth

SIZES = ((64, 128), (80, 192))
OFFICIAL_IDS = {label.id for label in V.LABELS if label.id >= 0}


def digests(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def load(path: Path) -> Image.Image:
    image = Image.open(io.BytesIO(path.read_bytes()))
    image.load()
    return image


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    calls = []
    written = synth.generate(root, cities=2, images_per_city=2, sizes=SIZES, seed=5,
                             progress=lambda done, total: calls.append((done, total)))
    return root, written, calls


# --- Layout and formats ------------------------------------------------------------------

def test_tree_has_exactly_the_cityscapes_layout(tree):
    root, written, _ = tree
    assert [split for split, _ in written] == ["train"] * 4 + ["val"] * 4 + ["test"] * 4
    expected = set()
    for split, image_id in written:
        expected |= {str(V.image_path(split, image_id)), str(V.label_path(split, image_id))}
    assert set(digests(root)) == expected  # nothing else, no leftover partial files
    for path in root.rglob("*.png"):
        top, split, city, name = path.relative_to(root).parts
        suffix = V.IMAGE_SUFFIX if top == V.IMAGE_DIR else V.LABEL_SUFFIX
        assert top in (V.IMAGE_DIR, V.LABEL_DIR)
        image_id = V.id_from_filename(name, suffix)
        assert city == image_id.city and split in V.SPLITS


def test_cities_are_real_cityscapes_names_per_split(tree):
    _, written, _ = tree
    cities = {split: sorted({i.city for s, i in written if s == split}) for split in V.SPLITS}
    assert cities == {"train": ["aachen", "bochum"], "val": ["frankfurt", "lindau"],
                      "test": ["berlin", "bielefeld"]}
    assert {str(i) for s, i in written if s == "val"} == {
        "frankfurt_000000_000019", "frankfurt_000001_000019",
        "lindau_000000_000019", "lindau_000001_000019"}


def test_images_are_rgb8_and_labels_one_channel_official_ids(tree):
    root, written, _ = tree
    for split, image_id in written:
        image = load(root / V.image_path(split, image_id))
        label = load(root / V.label_path(split, image_id))
        assert image.format == label.format == "PNG"
        assert image.mode == "RGB" and label.mode == "L"
        assert image.size == label.size
        ids = np.asarray(label)
        assert ids.dtype == np.uint8 and ids.ndim == 2
        assert set(np.unique(ids).tolist()) <= OFFICIAL_IDS
        V.remap_labels(ids)  # raises on anything outside the table


def test_mixed_sizes_are_honoured(tree):
    root, written, _ = tree
    sizes = {load(root / V.image_path(s, i)).size[::-1] for s, i in written}
    assert sizes == set(SIZES)


def test_all_eight_categories_appear(tree):
    root, written, _ = tree
    seen = set()
    for split, image_id in written:
        label_ids = np.asarray(load(root / V.label_path(split, image_id)))
        seen |= set(np.unique(V.remap_labels(label_ids)).tolist())
    assert seen == set(range(V.NUM_CATEGORIES))


def test_progress_is_reported_for_every_image(tree):
    _, written, calls = tree
    assert calls == [(done, len(written)) for done in range(1, len(written) + 1)]


# --- Determinism -------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_files(tree, tmp_path):
    root, _, _ = tree
    synth.generate(tmp_path, cities=2, images_per_city=2, sizes=SIZES, seed=5)
    assert digests(tmp_path) == digests(root)


def test_another_seed_gives_other_images(tree, tmp_path):
    root, _, _ = tree
    synth.generate(tmp_path, cities=2, images_per_city=2, sizes=SIZES, seed=6)
    ours, theirs = digests(tmp_path), digests(root)
    assert set(ours) == set(theirs)
    assert all(ours[name] != theirs[name] for name in ours)


def test_an_image_does_not_depend_on_the_other_flags(tree, tmp_path):
    root, _, _ = tree
    synth.generate(tmp_path, cities=1, images_per_city=2, splits=("val",), sizes=SIZES, seed=5)
    alone = digests(tmp_path)
    assert len(alone) == 4
    assert all(digests(root)[name] == digest for name, digest in alone.items())


def test_rerun_overwrites_its_own_files_and_leaves_others_alone(tmp_path):
    synth.generate(tmp_path, cities=1, images_per_city=1, splits=("train",), sizes=SIZES)
    before = digests(tmp_path)
    label = tmp_path / V.label_path("train", "aachen_000000_000019")
    label.write_bytes(b"damaged")
    notes = tmp_path / "leftImg8bit" / "train" / "aachen" / "notes.txt"
    notes.write_text("mine")
    other = tmp_path / V.image_path("train", "aachen_000099_000019")
    other.write_bytes(b"someone else's image")
    synth.generate(tmp_path, cities=1, images_per_city=1, splits=("train",), sizes=SIZES)
    after = digests(tmp_path)
    assert {name: after[name] for name in before} == before
    assert notes.read_text() == "mine" and other.read_bytes() == b"someone else's image"


# --- The scene ---------------------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(64, 128), (97, 211), (300, 400), (512, 1024)])
def test_render_scene_draws_at_any_size(height, width):
    image, labels = synth.render_scene(np.random.default_rng(1), height, width)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert labels.shape == (height, width) and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= OFFICIAL_IDS
    # Sky on top, ground at the bottom (unless the bonnet of our own car hides it).
    assert np.mean(labels[0] == V.LABEL_BY_NAME["sky"].id) > 0.05
    bottom = V.remap_labels(labels[int(height * 0.8)])
    assert np.mean(np.isin(bottom, [0, 1])) > 0.5
    assert image.std() > 20


def test_render_scene_is_a_function_of_the_generator():
    first = synth.render_scene(np.random.default_rng(42), 96, 192)
    again = synth.render_scene(np.random.default_rng(42), 96, 192)
    other = synth.render_scene(np.random.default_rng(43), 96, 192)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


def _colour_bins(image: np.ndarray, levels: int = 8) -> np.ndarray:
    bins = image.astype(np.int64) * levels // 256
    return (bins[..., 0] * levels + bins[..., 1]) * levels + bins[..., 2]


def _position_bins(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    rows = np.arange(height)[:, None] * 8 // height
    cols = np.arange(width)[None, :] * 4 // width
    return (_colour_bins(image) * 8 + rows) * 4 + cols


def _lookup_accuracy(train, test, features, size) -> float:
    """Pixel accuracy of 'majority category per feature bin', fit on `train`, scored on `test`."""
    counts = np.zeros((size, V.NUM_CATEGORIES), np.int64)
    for image, categories in train:
        np.add.at(counts, (features(image).ravel(), categories.ravel()), 1)
    majority = counts.argmax(axis=1)
    hits = [majority[features(image)] == categories for image, categories in test]
    return float(np.mean(np.concatenate([h.ravel() for h in hits])))


def test_colour_alone_does_not_solve_the_task_but_context_helps():
    def scenes(seeds):
        return [(image, V.remap_labels(labels)) for image, labels in
                (synth.render_scene(np.random.default_rng(s), 64, 128) for s in seeds)]

    train, test = scenes(range(16)), scenes(range(100, 108))
    colour_only = _lookup_accuracy(train, test, _colour_bins, 8 ** 3)
    with_position = _lookup_accuracy(train, test, _position_bins, 8 ** 3 * 32)
    majority = np.mean(np.concatenate([c.ravel() for _, c in test]) == 1)
    # Colour says something (better than always answering 'flat')...
    assert colour_only > majority + 0.05
    # ...but far from everything: grey roads, facades and poles, cars in any colour.
    assert colour_only < 0.8
    # Even a crude use of position beats colour alone: the scene has learnable structure.
    assert with_position > colour_only + 0.05


# --- Names -------------------------------------------------------------------------------

def test_city_names_cycle_with_suffixes_that_keep_the_grammar():
    names = synth.city_names("val", 3 * 30)
    assert names[:7] == ["frankfurt", "lindau", "munster", "frankfurt-b", "lindau-b",
                         "munster-b", "frankfurt-c"]
    assert len(set(names)) == len(names)
    assert "munster-ba" in names
    for name in names:
        assert V.parse_image_id(f"{name}_000000_000019").city == name
    # Asking for more cities never renames the first ones.
    assert synth.city_names("train", 3) == synth.city_names("train", 40)[:3]


def test_image_seed_depends_on_every_part_of_the_name():
    base = synth.image_seed(0, "train", "aachen", 0)
    assert base == synth.image_seed(0, "train", "aachen", 0)
    assert len({base, synth.image_seed(1, "train", "aachen", 0),
                synth.image_seed(0, "val", "aachen", 0), synth.image_seed(0, "train", "bochum", 0),
                synth.image_seed(0, "train", "aachen", 1)}) == 5


# --- The command line --------------------------------------------------------------------

def test_cli_writes_a_tree(tmp_path, capsys):
    out = tmp_path / "raw"
    code = synth.main([str(out), "--cities", "1", "--images-per-city", "2", "--splits",
                       "val,test", "--size", "64x128,72x144", "--seed", "3"])
    assert code == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_leftImg8bit.png")) == [
        "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png",
        "leftImg8bit/test/berlin/berlin_000001_000019_leftImg8bit.png",
        "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png",
        "leftImg8bit/val/frankfurt/frankfurt_000001_000019_leftImg8bit.png",
    ]
    assert len(list(out.rglob("*_gtFine_labelIds.png"))) == 4


@pytest.mark.parametrize("flags, reason", [
    (["--cities", "0"], "--cities must be at least 1"),
    (["--images-per-city", "0"], "--images-per-city"),
    (["--splits", "train,bogus"], "unknown split 'bogus'"),
    (["--splits", "val,val"], "twice"),
    (["--splits", ","], "--splits is empty"),
    (["--size", "abc"], "size must be HxW"),
    (["--size", "32x64"], "too small"),
    (["--size", "256x512,63x512"], "too small"),
    (["--size", "8192x8192"], "budget"),
    (["--seed", "-1"], "--seed"),
    (["--cities", "two"], "invalid int value"),
])
def test_cli_bad_flags_fail_on_one_line_and_write_nothing(tmp_path, capsys, flags, reason):
    out = tmp_path / "raw"
    assert synth.main([str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cityseg-synth: error: ")
    assert reason in err
    assert not out.exists()


def test_cli_refuses_a_file_as_output_root(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert synth.main([str(target)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        synth.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--size 1024x2048" in out
