"""What one request may ask of the model server: rows per batch and pixels (TensorFlow-free).

Both are checked on what the request carries, before any image is decoded: the batch is the
first dimension of every input (as TF Serving's batching reads it), and the pixels are read from
each PNG/JPEG header (`cityseg.images`, the same reader and default budget as the proxy). The
budget counts every image of the request together, so one request can never cost more than
`max_pixels` decoded pixels however its images are split.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import grpc
import numpy as np

from cityseg import vocabulary as V
from cityseg.images import DEFAULT_MAX_PIXELS, ImageHeaderError, image_size, sniff_format
from serving.errors import RequestError

# TF Serving has no limit of its own without batching; 32 rows is 4x the batches of
# docker/batching_parameters.txt and well over what the proxy (1 image) or cityseg-predict sends.
DEFAULT_MAX_BATCH = 32
# A request with at least this many pixels (4 Mpx: twice a Cityscapes frame) hands the heap's
# free pages back to the system when it is done (docs/benchmarks/server_hardening.md).
DEFAULT_TRIM_AFTER_PIXELS = 4 * 1024 * 1024


@dataclass(frozen=True)
class RequestLimits:
    """The server's per-request limits (`cityseg-serve --max-batch/--max-pixels/...`)."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_pixels: int = DEFAULT_MAX_PIXELS
    trim_after_pixels: int = DEFAULT_TRIM_AFTER_PIXELS   # 0: never trim

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError(f"max batch must be >= 1, not {self.max_batch}")
        if self.max_pixels < 1:
            raise ValueError(f"max pixels must be >= 1, not {self.max_pixels}")
        if self.trim_after_pixels < 0:
            raise ValueError(f"trim threshold must be >= 0 pixels, not {self.trim_after_pixels}")

    def check(self, inputs: dict[str, np.ndarray]) -> int:
        """Checks a request's batch and image pixels; returns the pixels its images hold.

        Every value of the contract's image input (`images`) must be a PNG or JPEG whose header
        can be read; in other string inputs, values that are PNG or JPEG count too (a model of
        our own may name its input otherwise), and anything else is left to the model.

        Raises:
          RequestError: INVALID_ARGUMENT for a batch over `max_batch`, an unreadable image
            header, or images over `max_pixels` in all.
        """
        for key, value in inputs.items():
            if value.ndim and value.shape[0] > self.max_batch:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {key!r} holds a batch of {value.shape[0]}, over the server's "
                    f"maximum of {self.max_batch} (cityseg-serve --max-batch)")
        pixels = 0
        for key, value in inputs.items():
            if value.dtype.kind not in "OS":
                continue
            strict = key == V.INPUT_KEY
            for index, item in enumerate(value.ravel()):
                if not isinstance(item, bytes) or (not strict and sniff_format(item) is None):
                    continue
                try:
                    height, width = image_size(item)
                except ImageHeaderError as err:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"input {key!r} image {index}: {err}") from None
                pixels += height * width
                if pixels > self.max_pixels:
                    raise RequestError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input {key!r} image {index} is {height}x{width}, which brings the "
                        f"request to {pixels} pixels, over the server's budget of "
                        f"{self.max_pixels} (cityseg-serve --max-pixels)")
        return pixels


def trim_heap() -> bool:
    """Hands the C heap's free pages back to the system (glibc's `malloc_trim(0)`).

    glibc keeps some of what large requests freed in its per-thread arenas (tens of MiB after
    a few 16 Mpx images, docs/benchmarks/server_hardening.md); `malloc_trim` returns the free
    pages, in about a millisecond. Returns False where there is no glibc (musl, macOS) or
    nothing was returned.
    """
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(None)  # the symbols the process already has: libc's among them
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None
