"""Image-header checks shared by every stage that accepts images from outside.

Reading width and height from the header before decoding is what stops decompression bombs:
a 100 kB PNG can claim 50,000 x 50,000 pixels and take gigabytes once decoded.
"""
from __future__ import annotations

import io
import struct

import numpy as np

# A full Cityscapes frame is 2048 x 1024 = 2.1 Mpx; 8x that leaves room for other cameras.
DEFAULT_MAX_PIXELS = 16 * 1024 * 1024

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


class ImageHeaderError(ValueError):
    """The bytes are not a PNG or JPEG whose size can be read, or the size is over budget."""


def sniff_format(data: bytes) -> str | None:
    """Returns 'png', 'jpeg' or None from the first bytes."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return None


def image_size(data: bytes) -> tuple[int, int]:
    """Returns (height, width) read from a PNG or JPEG header, without decoding pixels.

    Raises:
      ImageHeaderError: for empty, truncated or unsupported data.
    """
    if not data:
        raise ImageHeaderError("empty file")
    kind = sniff_format(data)
    if kind == "png":
        return _png_size(data)
    if kind == "jpeg":
        return _jpeg_size(data)
    raise ImageHeaderError("not a PNG or JPEG image")


def check_pixel_budget(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Returns (height, width) of an image whose header is valid and within `max_pixels`.

    Raises:
      ImageHeaderError: for an unreadable header, a zero size, or more than `max_pixels`.
    """
    height, width = image_size(data)
    if height <= 0 or width <= 0:
        raise ImageHeaderError(f"image has an empty size {height}x{width}")
    if height * width > max_pixels:
        raise ImageHeaderError(
            f"image is {height}x{width} = {height * width} pixels, over the budget of "
            f"{max_pixels} pixels")
    return height, width


def encode_png(array: np.ndarray) -> bytes:
    """Encodes a uint8 [H, W] category mask or [H, W, 3] RGB image as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def palette_png(categories: np.ndarray) -> bytes:
    """A category mask [H, W] drawn in the category palette, as an RGB PNG."""
    from cityseg.vocabulary import colorize

    return encode_png(colorize(categories))


def _png_size(data: bytes) -> tuple[int, int]:
    # The IHDR chunk must come first: length(4) 'IHDR'(4) width(4) height(4).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageHeaderError("truncated PNG header")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageHeaderError("corrupt JPEG marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        # Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return height, width
        pos += 2 + length
    raise ImageHeaderError("truncated JPEG header")
