"""cityseg.raw: one raw pair read and checked as the Beam job and the evaluator both read it.

The per-reason rejections run through the Beam job's own entry point in test_records.py; here
what the shared reader adds: the file's bytes for the evaluator and the label format check.
"""
import io
import os
import struct
import threading
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from cityseg import raw
from cityseg import vocabulary as V


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _grey_png_4bit(values: np.ndarray) -> bytes:
    """A 4-bit greyscale PNG (what an optimiser may make of a mask with ids below 16)."""
    height, width = values.shape
    rows = b"".join(b"\x00" + bytes((a << 4) | b for a, b in zip(row[::2], row[1::2]))
                    for row in values.astype(np.uint8))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 4, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def _pair(root, image: bytes, label: bytes) -> raw.Pair:
    image_id = "aachen_000000_000019"
    pair = raw.Pair("train", image_id, "aachen", str(V.image_path("train", image_id)),
                    str(V.label_path("train", image_id)))
    for rel, data in ((pair.image, image), (pair.label, label)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return pair


def test_load_pair_returns_the_image_file_and_the_decoded_pixels(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    label = rng.integers(0, V.NUM_LABEL_IDS, (4, 6), dtype=np.uint8)
    pair = _pair(tmp_path, _png(image), _png(label))
    encoded, pixels, label_ids = raw.load_pair(str(tmp_path), pair)
    assert encoded == (tmp_path / pair.image).read_bytes()
    np.testing.assert_array_equal(pixels, image)
    np.testing.assert_array_equal(label_ids, label)


def test_a_4_bit_label_is_rejected_not_decoded_to_scaled_ids(tmp_path):
    # Decoders scale 4-bit greyscale to 0..255: id 1 would come back as 17 (pole), silently.
    values = np.array([[1, 7, 7, 1], [0, 1, 7, 0]])
    pair = _pair(tmp_path, _png(np.zeros((2, 4, 3), np.uint8)), _grey_png_4bit(values))
    assert Image.open(tmp_path / pair.label).mode == "L"
    with pytest.raises(raw.RejectedInput) as err:
        raw.load_pair(str(tmp_path), pair)
    assert err.value.reason == raw.BAD_LABEL_FORMAT and "L;4" in err.value.detail


def test_read_jsonl_skips_blank_lines_and_reads_a_missing_file_as_empty(tmp_path):
    path = tmp_path / "manifest.jsonl"
    assert raw.read_jsonl(str(path)) == []
    path.write_text('{"a": 1}\n\n{"b": 2}\n')
    assert raw.read_jsonl(str(path)) == [{"a": 1}, {"b": 2}]


def _ihdr_png(width: int, height: int) -> bytes:
    """A PNG signature, a well-formed IHDR (8-bit RGB) claiming width x height, and the start
    of an IDAT chunk as long as a PNG chunk can be (what follows is the file's tail)."""
    body = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(body)) + b"IHDR" + body
            + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + struct.pack(">I", 2**31 - 1)
            + b"IDAT")


def _reads_at_most(tmp_path, rel: str, max_pixels: int, budget_bytes: int) -> raw.RejectedInput:
    """Rejects `rel`; asserts the Python heap never grew by more than `budget_bytes` doing so."""
    tracemalloc.start()
    try:
        with pytest.raises(raw.RejectedInput) as err:
            raw.read_png(str(tmp_path), rel, max_pixels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < budget_bytes, f"{peak} bytes allocated"
    return err.value


def test_a_sparse_3_gb_file_claiming_100000x100000_is_rejected_from_its_header(tmp_path):
    path = tmp_path / "bomb_leftImg8bit.png"
    path.write_bytes(_ihdr_png(100_000, 100_000))
    os.truncate(path, 3 << 30)  # sparse: costs no disk, 3 GB to whoever reads it whole
    err = _reads_at_most(tmp_path, path.name, 16 << 20, raw.HEADER_BYTES + (1 << 20))
    assert err.reason == raw.OVER_PIXEL_BUDGET and "100000x100000" in err.detail


def test_a_file_larger_than_any_png_within_the_budget_is_not_read(tmp_path):
    path = tmp_path / "big_leftImg8bit.png"
    path.write_bytes(_png(np.zeros((32, 64, 3), np.uint8)))
    os.truncate(path, 3 << 30)
    err = _reads_at_most(tmp_path, path.name, 16 << 20, raw.HEADER_BYTES + (1 << 20))
    assert err.reason == raw.FILE_TOO_LARGE and str(3 << 30) in err.detail
    assert raw.max_file_bytes(16 << 20) < (3 << 30)


def test_a_header_longer_than_the_first_read_is_read_on(tmp_path):
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    buffer = io.BytesIO()
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "x" * (2 * raw.HEADER_BYTES))  # a chunk before IDAT
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=text)
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    data, header = raw.read_png(str(tmp_path), "a.png", 1000)
    assert data == buffer.getvalue() and (header.height, header.width) == (4, 6)


@pytest.mark.parametrize("make", ["fifo", "directory"])
def test_only_regular_files_are_read_and_a_fifo_never_blocks(tmp_path, make):
    path = tmp_path / "aachen_000000_000019_leftImg8bit.png"
    os.mkfifo(path) if make == "fifo" else path.mkdir()
    outcome = []

    def read():
        try:
            raw.read_png(str(tmp_path), path.name, 1000)
        except raw.RejectedInput as err:
            outcome.append(err)

    reader = threading.Thread(target=read, daemon=True)  # a blocked reader must not hang pytest
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert outcome[0].reason == raw.NOT_REGULAR_FILE
    assert f"a {make.replace('fifo', 'FIFO')}, not a regular file" in outcome[0].detail
