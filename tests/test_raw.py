"""cityseg.raw: one raw pair read and checked as the Beam job and the evaluator both read it.

The per-reason rejections run through the Beam job's own entry point in test_records.py; here
what the shared reader adds: the file's bytes for the evaluator and the label format check.
"""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

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
