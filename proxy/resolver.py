"""Resolves image ids to the raw Cityscapes files listed in the preprocessing manifest.

The resolver is the proxy's only door to the file system, and it is built so that nothing a
client sends can choose a path:

1. an id is validated with `cityseg.vocabulary.parse_image_id` before anything else happens;
2. a valid id is only a key into the manifest index; the paths come from the manifest, never
   from the request;
3. every path is resolved (`os.path.realpath`, symlinks followed) and must still lie inside the
   raw root, so a symlink in the tree that points elsewhere is refused rather than followed.

DATA and RAW may also be URLs (`gs://bucket/data`, `s3://...`, `memory://` in the tests), read
through fsspec, whose file systems come as packages of their own (`gcsfs`, `s3fs`). Object
stores have no symlinks: there a manifest path is normalised and must not climb out of the
raw root with `..`. Local paths never go through fsspec: they are read exactly as before.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cityseg import vocabulary as V
from proxy import masks

log = logging.getLogger(__name__)


class ImageNotFound(LookupError):
    """A well-formed id that the manifest does not list (or whose file is unavailable)."""


class CorruptFile(ValueError):
    """A listed file that cannot be read as what it should be: the deployment's data is at
    fault, not the client's request (500). The message names the image id only."""


class ManifestError(ValueError):
    """The manifest is missing or malformed: a start-up failure, reported in one line."""


@dataclass(frozen=True)
class ImageRecord:
    """One manifest line: where an image and its label live, relative to the raw root."""

    image_id: str
    split: str
    city: str
    image: str
    label: str | None
    height: int
    width: int

    def summary(self) -> dict:
        """The public fields, as listed by `GET /api/v1/images`."""
        return {"image_id": self.image_id, "split": self.split, "city": self.city,
                "height": self.height, "width": self.width}


def is_url(path: str | os.PathLike) -> bool:
    """True for a file system URL (`gs://...`, `s3://...`, `memory://...`), False for a path."""
    return "://" in os.fspath(path)


def remote_file_system(url: str):
    """(fsspec file system, path inside it) for a URL.

    fsspec is imported here, not at the top: a proxy on local folders never loads it.

    Raises:
      ManifestError: when fsspec, or the package of the URL's file system (`gcsfs` for
        `gs://`, `s3fs` for `s3://`), is not installed, or the scheme is unknown.
    """
    try:
        import fsspec
    except ImportError:
        raise ManifestError(f"cannot read {url}: URLs need fsspec "
                            f"(pip install 'cityseg[proxy]')") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:  # fsspec names the package to install
        raise ManifestError(f"cannot read {url}: {err}") from None


def load_manifest(path: str | os.PathLike) -> list[ImageRecord]:
    """Reads `DATA/manifest.jsonl` into records (all splits); `path` may be a URL.

    Raises:
      ManifestError: if the file is missing, a line is not JSON, a field is missing, an id or
        split is invalid, or an id appears twice.
    """
    if is_url(path):
        fs, inner = remote_file_system(os.fspath(path))
        if not fs.isfile(inner):
            raise ManifestError(f"manifest not found: {path} (run cityseg-preprocess first)")
        opened = fs.open(inner, "rt", encoding="utf-8")
    else:
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"manifest not found: {path} (run cityseg-preprocess first)")
        opened = path.open(encoding="utf-8")
    records: list[ImageRecord] = []
    seen: set[str] = set()
    with opened as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                record = ImageRecord(
                    image_id=str(V.parse_image_id(row["image_id"])),
                    split=V.check_split(row["split"]), city=row["city"], image=row["image"],
                    label=row.get("label"), height=int(row["height"]), width=int(row["width"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ManifestError(f"{path}:{number}: bad manifest line: {err}") from None
            if record.image_id in seen:
                raise ManifestError(f"{path}:{number}: image id {record.image_id} listed twice")
            seen.add(record.image_id)
            records.append(record)
    return records


class Resolver:
    """Maps image ids to manifest records and reads their files from inside the raw root."""

    def __init__(self, records: list[ImageRecord], raw_root: str | os.PathLike):
        # fsspec's file system for a URL root; None for a local one, read with `open`. (fsspec
        # drops its cached file systems in a forked process: gunicorn's workers get their own.)
        self._fs = None
        if is_url(raw_root):
            self._fs, root = remote_file_system(os.fspath(raw_root))
            if not self._fs.isdir(root):
                raise ManifestError(f"raw root is not a directory: {raw_root}")
            self.raw_root = root.rstrip("/")
        else:
            root = Path(raw_root)
            if not root.is_dir():
                raise ManifestError(f"raw root is not a directory: {root}")
            self.raw_root = os.path.realpath(root)
        # Sorted once so listings are stable pages: by split order, then id.
        order = {split: i for i, split in enumerate(V.SPLITS)}
        self._records = sorted(records, key=lambda r: (order[r.split], r.image_id))
        self._by_id = {r.image_id: r for r in self._records}
        self.cities = sorted({r.city for r in self._records})
        self.split_counts = {s: sum(r.split == s for r in self._records) for s in V.SPLITS}

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike, raw_root: str | os.PathLike) -> "Resolver":
        """Builds a resolver from `DATA/manifest.jsonl` and the raw Cityscapes root."""
        if is_url(data_dir):
            manifest = f"{os.fspath(data_dir).rstrip('/')}/{V.MANIFEST_FILE}"
        else:
            manifest = Path(data_dir) / V.MANIFEST_FILE
        return cls(load_manifest(manifest), raw_root)

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, text: str) -> ImageRecord:
        """Validates an id and returns its record.

        Raises:
          cityseg.vocabulary.InvalidImageIdError: for anything that is not an image id (400).
          ImageNotFound: for a valid id the manifest does not list (404).
        """
        image_id = str(V.parse_image_id(text))
        if image_id != text:
            # Belt and braces: the id must be exactly its canonical form (a regex `$` also
            # matches before a trailing newline).
            raise V.InvalidImageIdError(f"invalid image id {text[:40]!r}")
        record = self._by_id.get(image_id)
        if record is None:
            raise ImageNotFound(f"unknown image id {image_id}")
        return record

    def list(self, *, split: str | None = None, city: str | None = None,
             limit: int = 100, offset: int = 0) -> tuple[int, list[ImageRecord]]:
        """Returns (total matching, one page of records) filtered by split and city."""
        matching = [r for r in self._records
                    if (split is None or r.split == split) and (city is None or r.city == city)]
        return len(matching), matching[offset:offset + limit]

    def read_image(self, record: ImageRecord) -> bytes:
        """The raw camera image's bytes (PNG), exactly as stored."""
        return self._read(record.image, record.image_id)

    def read_ground_truth(self, record: ImageRecord) -> np.ndarray | None:
        """The ground truth at full resolution: the official remap of the raw labelIds mask.

        Returns:
          uint8 [H, W] category ids, or None when the manifest lists no label (test split).

        Raises:
          ImageNotFound: if the label file is missing or outside the raw root.
          CorruptFile: if the label is not a one-channel PNG or holds ids outside 0..33 (the
            decoder's message is its `__cause__`).
        """
        if not record.label:
            return None
        data = self._read(record.label, record.image_id)
        try:
            return V.remap_labels(masks.decode_mask(data))
        except (masks.MaskError, V.InvalidLabelError) as err:
            raise CorruptFile(f"ground truth of {record.image_id} is corrupt") from err

    def _read(self, relative: str, image_id: str) -> bytes:
        path = self._inside_root(relative)
        if path is None:
            # Logged with the path for the operator; the client only learns it is unavailable.
            log.warning("refused %s for %s: resolves outside the raw root", relative, image_id)
            raise ImageNotFound(f"files for image id {image_id} are not available")
        try:
            if self._fs is not None:
                return self._fs.cat_file(path)
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as err:
            log.warning("cannot read %s for %s: %s", path, image_id, err)
            raise ImageNotFound(f"files for image id {image_id} are not available") from None

    def _inside_root(self, relative: str) -> str | None:
        if os.path.isabs(relative) or "\x00" in relative:
            return None
        if self._fs is not None:  # no symlinks in an object store; '..' must stay inside
            normal = posixpath.normpath(relative)
            if normal == ".." or normal.startswith("../"):
                return None
            return f"{self.raw_root}/{normal}"
        resolved = os.path.realpath(os.path.join(self.raw_root, relative))
        if os.path.commonpath([resolved, self.raw_root]) != self.raw_root:
            return None
        return resolved
