"""Image-header checks shared by every stage that accepts images from outside.

Reading width and height from the header before decoding is what stops decompression bombs:
a 100 kB PNG can claim 50,000 x 50,000 pixels and take gigabytes once decoded. Pillow reads the
header lazily (`Image.open` parses the chunks or markers up to the pixel data and decodes
nothing), so this module only adds the pixel budget and one error type.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

# A full Cityscapes frame is 2048 x 1024 = 2.1 Mpx; 8x that leaves room for other cameras.
DEFAULT_MAX_PIXELS = 16 * 1024 * 1024

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# The lazy readers `PIL.Image.open` itself would pick for each format. Called directly, because
# `Image.open` also applies Pillow's own decompression-bomb limit (a warning above 89 Mpx, an
# error above 179 Mpx) before the size reaches our budget, and hides every parse error behind
# "cannot identify image file".
_READERS = {"png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.JpegImageFile}


class ImageHeaderError(ValueError):
    """The bytes are not a PNG or JPEG whose size can be read, or the size is over budget."""


@dataclass(frozen=True)
class ImageHeader:
    """What a PNG or JPEG header says, read without decoding a pixel.

    `mode` is Pillow's mode of the decoded image ("RGB", "L", "P", ...); `raw_mode` how the
    file stores the pixels ("L" is 8-bit greyscale, "L;4" 4-bit greyscale that decoders scale
    up to 0..255, "I;16B" 16-bit).
    """

    format: str
    height: int
    width: int
    mode: str
    raw_mode: str


def sniff_format(data: bytes) -> str | None:
    """Returns 'png', 'jpeg' or None from the first bytes."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return None


def read_header(data: bytes) -> ImageHeader:
    """Reads format, size and mode of a PNG or JPEG, without decoding pixels.

    The header must be whole: a PNG up to its first IDAT chunk, with valid chunk checksums, a
    JPEG up to its start of scan. Pillow refuses a zero width or height as unreadable.

    Raises:
      ImageHeaderError: for empty, truncated, corrupt or unsupported data.
    """
    if not data:
        raise ImageHeaderError("empty file")
    kind = sniff_format(data)
    if kind is None:
        raise ImageHeaderError("not a PNG or JPEG image")
    try:
        image = _READERS[kind](io.BytesIO(data))
    except (SyntaxError, OSError, ValueError) as err:
        # Pillow's parsers report a short or broken header as SyntaxError or OSError.
        raise ImageHeaderError(f"truncated or corrupt {kind.upper()} header ({err})") from None
    tile_args = image.tile[0].args if image.tile else image.mode
    raw_mode = tile_args if isinstance(tile_args, str) else tile_args[0]
    return ImageHeader(kind, image.height, image.width, image.mode, raw_mode)


def image_size(data: bytes) -> tuple[int, int]:
    """Returns (height, width) read from a PNG or JPEG header, without decoding pixels.

    Raises:
      ImageHeaderError: for empty, truncated, corrupt or unsupported data.
    """
    header = read_header(data)
    return header.height, header.width


def check_pixel_budget(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Returns (height, width) of an image whose header is valid and within `max_pixels`.

    Raises:
      ImageHeaderError: for an unreadable header (a zero size is one) or more than `max_pixels`.
    """
    height, width = image_size(data)
    if height * width > max_pixels:
        raise ImageHeaderError(
            f"image is {height}x{width} = {height * width} pixels, over the budget of "
            f"{max_pixels} pixels")
    return height, width


def encode_png(array: np.ndarray) -> bytes:
    """Encodes a uint8 [H, W] category mask or [H, W, 3] RGB image as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def palette_png(categories: np.ndarray) -> bytes:
    """A category mask [H, W] drawn in the category palette, as an RGB PNG."""
    from cityseg.vocabulary import colorize

    return encode_png(colorize(categories))
