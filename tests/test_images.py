"""Image-header reading and the pixel budget, on real PNG/JPEG bytes made here."""
import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from cityseg import images
from cityseg.images import ImageHeaderError, check_pixel_budget, image_size, sniff_format


def encode(mode: str, height: int, width: int, fmt: str, **save_args) -> bytes:
    """Real encoded bytes of a height x width image in `mode` (a cheap-to-encode pattern)."""
    rows = np.arange(height, dtype=np.uint32)[:, None]
    cols = np.arange(width, dtype=np.uint32)[None, :]
    pattern = ((rows * 7 + cols * 3) % 256).astype(np.uint8)
    image = Image.fromarray(pattern).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG claiming the size over a few bytes of pixel data (what a decompression bomb sends):
    the signature, IHDR, a tiny IDAT and IEND, all with valid checksums."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (images.PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(bytes(64))) + _chunk(b"IEND", b""))


def jpeg_header(width: int, height: int) -> bytes:
    """SOI, a JFIF APP0 segment, a baseline SOF0 claiming the size and a start of scan: the
    header a reader parses before the entropy-coded data, which here is a few bytes."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = (b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
            + bytes([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]))
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + bytes(9) + bytes(16) + b"\xff\xd9"
    return b"\xff\xd8" + app0 + sof0 + sos


# --- Real images -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "1"])
@pytest.mark.parametrize("height, width", [(1, 1), (17, 33), (480, 640), (1024, 2048)])
def test_png_size(mode, height, width):
    data = encode(mode, height, width, "PNG")
    assert sniff_format(data) == "png"
    assert image_size(data) == (height, width)
    assert check_pixel_budget(data) == (height, width)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("height, width", [(1, 1), (17, 33), (480, 640), (1024, 2048)])
@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"quality": 30, "subsampling": 2}])
def test_jpeg_size(mode, height, width, options):
    data = encode(mode, height, width, "JPEG", **options)
    assert sniff_format(data) == "jpeg"
    assert image_size(data) == (height, width)


@pytest.mark.parametrize("bit_depth, colour_type, mode, raw_mode", [
    (8, 0, "L", "L"), (4, 0, "L", "L;4"), (16, 0, "I;16", "I;16B"), (8, 2, "RGB", "RGB"),
    (8, 3, "P", "P"),
])
def test_read_header_tells_how_the_pixels_are_stored(bit_depth, colour_type, mode, raw_mode):
    # A 4-bit greyscale PNG decodes as mode L, scaled to 0..255: only its raw mode tells.
    header = images.read_header(png_header(7, 5, bit_depth=bit_depth, colour_type=colour_type))
    assert (header.format, header.height, header.width) == ("png", 5, 7)
    assert (header.mode, header.raw_mode) == (mode, raw_mode)


def test_jpeg_size_after_large_metadata_segments():
    # EXIF/ICC segments come before the frame header and may hold bytes that look like
    # markers; the reader has to skip them by their lengths.
    icc = bytes(range(256)) * 40
    data = encode("RGB", 123, 77, "JPEG", icc_profile=icc)
    fake_frames = b"\xff\xc0\x00\x11\x08\x00\x01\x00\x01" * 1000
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(fake_frames)) + fake_frames
    data = data[:2] + app1 + data[2:]
    assert image_size(data) == (123, 77)


def test_jpeg_fill_bytes_between_segments_are_skipped():
    data = encode("RGB", 40, 50, "JPEG")
    padded = data[:2] + b"\xff\xff\xff" + data[2:]
    assert image_size(padded) == (40, 50)


# --- Broken input ------------------------------------------------------------------------

def _with_bad_ihdr_checksum(data: bytes) -> bytes:
    return data[:29] + bytes(4) + data[33:]


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"GIF89a" + bytes(20), "not a PNG or JPEG"),
    (b"BM" + bytes(60), "not a PNG or JPEG"),
    (b"\x89PNG\r\n\x1a", "not a PNG or JPEG"),
    (images.PNG_SIGNATURE, "truncated or corrupt PNG header"),
    (png_header(10, 10)[:23], "truncated or corrupt PNG header"),
    (png_header(10, 10)[:33], "truncated or corrupt PNG header"),  # no IDAT: no whole header
    (images.PNG_SIGNATURE + struct.pack(">I", 13) + b"IDAT" + bytes(13),
     "truncated or corrupt PNG header"),
    (_with_bad_ihdr_checksum(png_header(10, 10)), "truncated or corrupt PNG header"),
    (b"\xff\xd8\xff", "truncated or corrupt JPEG header"),
    (b"\xff\xd8\xff\xd9", "truncated or corrupt JPEG header"),
    (b"\xff\xd8\xff\xe0\x00\x04\x00\x00" + b"\x00" * 20, "truncated or corrupt JPEG header"),
    (jpeg_header(10, 10)[:24], "truncated or corrupt JPEG header"),
])
def test_broken_headers_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageHeaderError, match=reason):
        image_size(data)
    with pytest.raises(ImageHeaderError):
        check_pixel_budget(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_every_prefix_gives_the_true_size_or_a_header_error(fmt):
    data = encode("RGB", 31, 45, fmt, **({"exif": b"Exif\x00\x00" + bytes(300)}
                                         if fmt == "JPEG" else {}))
    outcomes = set()
    for end in range(len(data) + 1):
        try:
            assert image_size(data[:end]) == (31, 45)
            outcomes.add("size")
        except ImageHeaderError:
            outcomes.add("error")
    assert outcomes == {"size", "error"}


def test_garbage_never_escapes_as_another_exception():
    rng = np.random.default_rng(0)
    prefixes = [b"", images.PNG_SIGNATURE, images.JPEG_SIGNATURE, b"\xff\xd8"]
    for index in range(3000):
        junk = rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        data = prefixes[index % len(prefixes)] + junk
        try:
            height, width = image_size(data)
        except ImageHeaderError:
            continue
        assert 0 <= height < 2 ** 32 and 0 <= width < 2 ** 32


# --- The pixel budget --------------------------------------------------------------------

@pytest.mark.parametrize("header", [png_header(50_000, 50_000), jpeg_header(50_000, 50_000)])
def test_a_decompression_bomb_is_rejected_from_its_header_without_allocating(header):
    tracemalloc.start()
    try:
        with pytest.raises(ImageHeaderError, match="over the budget"):
            check_pixel_budget(header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Decoding 50,000 x 50,000 RGB would take 7.5 GB; reading the header takes almost nothing.
    assert peak < 1_000_000
    assert image_size(header) == (50_000, 50_000)


def test_budget_is_inclusive_and_configurable():
    data = encode("RGB", 100, 200, "PNG")
    assert check_pixel_budget(data, max_pixels=20_000) == (100, 200)
    with pytest.raises(ImageHeaderError, match="20000 pixels"):
        check_pixel_budget(data, max_pixels=19_999)


def test_the_default_budget_admits_a_cityscapes_frame_and_refuses_far_more():
    assert check_pixel_budget(png_header(2048, 1024)) == (1024, 2048)
    assert check_pixel_budget(png_header(4096, 4096)) == (4096, 4096)
    with pytest.raises(ImageHeaderError):
        check_pixel_budget(png_header(4097, 4096))


@pytest.mark.parametrize("header", [png_header(0, 10), png_header(10, 0), jpeg_header(10, 0)])
def test_zero_sizes_are_rejected(header):
    # Pillow refuses a zero width or height as an unreadable header.
    with pytest.raises(ImageHeaderError, match="header"):
        check_pixel_budget(header)


def test_image_header_error_is_a_value_error():
    # run_cli turns ValueError into a one-line error; servers map it to 400.
    assert issubclass(ImageHeaderError, ValueError)
