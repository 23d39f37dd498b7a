"""File access for DATA, RUN and MODELS through TensorFlow's file systems (`tf.io.gfile`).

Every path training, evaluation and export read or write may be a local folder or a URL of a
file system TensorFlow knows: `gs://` (built in), `s3://` and `hdfs://` (with
`tensorflow-io`), `ram://` (in memory, what the tests use). Paths stay strings: `pathlib`
turns `gs://bucket` into `gs:/bucket`, so no remote path may pass through `Path`.

Object stores have no atomic rename of a folder (a rename is a copy of every object), so what
must appear whole (a SavedModel version, a JSON file) is written locally first where needed and
then copied, with the file that makes it usable last (`copy_tree(last=...)`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import tensorflow as tf

gfile = tf.io.gfile


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL (`gs://...`, `s3://...`, `ram://...`), False for a local path."""
    return "://" in os.fspath(path)


def join(path: str | os.PathLike, *parts: str) -> str:
    """Joins path parts with `/` for URLs, as `os.path.join` does locally."""
    return gfile.join(os.fspath(path), *parts)


def basename(path: str | os.PathLike) -> str:
    """The last part of a path or URL (trailing `/` ignored)."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def parent(path: str | os.PathLike) -> str:
    """The folder holding `path` (a URL's parent stays a URL)."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[0]


def exists(path: str | os.PathLike) -> bool:
    return gfile.exists(os.fspath(path))


def isdir(path: str | os.PathLike) -> bool:
    return gfile.isdir(os.fspath(path))


def isfile(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return gfile.exists(path) and not gfile.isdir(path)


def makedirs(path: str | os.PathLike) -> None:
    gfile.makedirs(os.fspath(path))


def glob(pattern: str) -> list[str]:
    """Sorted paths matching `pattern` (`*` inside one path part, as `gfile.glob`)."""
    return sorted(gfile.glob(pattern))


def listdir(path: str | os.PathLike) -> list[str]:
    """Names (not paths) inside a folder; sub-folders without their trailing `/`."""
    return sorted(name.rstrip("/") for name in gfile.listdir(os.fspath(path)))


def read_bytes(path: str | os.PathLike) -> bytes:
    with gfile.GFile(os.fspath(path), "rb") as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes a file so that a reader sees the old one or the new one, never half of one.

    Written beside `path` (`.tmp-NAME`), then renamed over it: an atomic rename locally, and
    on object stores a copy that replaces the object whole. It also replaces rather than
    rewrites: TensorFlow's `ram://` opens an existing file for writing at its end.
    """
    path = os.fspath(path)
    tmp = join(parent(path), f".tmp-{basename(path)}")
    with gfile.GFile(tmp, "w") as f:
        f.write(text)
    gfile.rename(tmp, path, overwrite=True)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """`write_text` of `data` as indented JSON with sorted keys."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def copy_tree(source: str | os.PathLike, target: str | os.PathLike, *,
              last: tuple[str, ...] = ()) -> None:
    """Copies a folder's files into `target` (created), overwriting files already there.

    Args:
      last: names (relative to `source`, `/`-separated) copied after everything else: the
        file that makes the copy usable, such as a SavedModel's `saved_model.pb`, so that a
        reader polling `target` never finds it before the files it needs.
    """
    source, target = os.fspath(source), os.fspath(target)
    files = []
    for folder, _, names in gfile.walk(source):
        rel_folder = folder[len(source):].strip("/")
        makedirs(join(target, rel_folder) if rel_folder else target)
        files.extend(f"{rel_folder}/{name}" if rel_folder else name for name in names)
    for rel in sorted(files, key=lambda rel: (rel in last, rel)):
        gfile.copy(join(source, rel), join(target, rel), overwrite=True)


@contextlib.contextmanager
def local_folder(path: str | os.PathLike) -> Iterator[str]:
    """A local folder standing for `path`, for writers that only write local files.

    Locally `path` itself (created). For a URL a temporary folder, whose files are copied to
    `path` when the block ends without an error, then removed (matplotlib's `savefig`).
    """
    path = os.fspath(path)
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="cityseg-upload-")
    try:
        yield scratch
        copy_tree(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[str]:
    """A local path holding the file or folder at `path` (downloaded when it is a URL).

    For readers that only open local files (h5py, which Keras' weight files need).
    """
    path = os.fspath(path)
    if not is_remote(path):
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="cityseg-download-")
    try:
        local = os.path.join(scratch, basename(path))
        if isdir(path):
            copy_tree(path, local)
        else:
            gfile.copy(path, local)
        yield local
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
