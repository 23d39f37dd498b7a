"""The served models: which versions are loaded, and how requests reach them.

Each model folder is polled for version sub-folders, named as TF Serving reads them: ASCII
digits, leading zeros allowed (`00000123` is version 123), holding `saved_model.pb` or
`saved_model.pbtxt`. A new version is loaded fully (and warmed up) before requests are routed to
it; the version it replaces stops getting new requests at that moment but stays loaded until its
in-flight calls have finished, so a swap never fails a request. States follow TF Serving's
ModelVersionStatus: START -> LOADING -> AVAILABLE -> UNLOADING -> END.

Folders are listed through `tf.io.gfile`, as TF Serving lists them, so MODELS may be a local
folder or a URL (`gs://bucket/models`; see `serving.config.model_path`). What the listing says
is trusted only when it could be read: a models folder or model folder that
cannot be listed (a remount, a permission change) leaves every loaded version serving. A version
that fails to load (e.g. copied non-atomically: `saved_model.pb` before `variables/`) is retried
with back-off, and each distinct failure is logged once.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
import tensorflow as tf

from serving.admission import WorkQueue
from serving.config import BatchingOptions, ModelConfig, is_url, models_in_dir
from serving.errors import RequestError
from serving.limits import RequestLimits
from serving.servable import LoadedVersion

log = logging.getLogger(__name__)
gfile = tf.io.gfile

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# Retries of a version that failed to load: after 1 s, then twice as long each time, up to this.
MAX_RETRY_S = 60.0


@dataclass
class VersionStatus:
    """What GetModelStatus reports for one version."""

    version: int
    state: str = "START"
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


def _holds_saved_model(folder: str) -> bool:
    """Whether a version folder holds `saved_model.pb` or `.pbtxt` (one listing, not a request
    per name: on an object store each is a round trip, every poll)."""
    return any(name in SAVED_MODEL_FILES for name in gfile.listdir(folder))


class _Model:
    """Book-keeping for one model name."""

    def __init__(self, config: ModelConfig, from_dir: bool = False):
        self.config = config
        self.from_dir = from_dir  # found in --models-dir (not configured): gone when it is gone
        self.statuses: dict[int, VersionStatus] = {}
        self.loaded: dict[int, LoadedVersion] = {}   # AVAILABLE versions, routable


@dataclass
class _Failure:
    """A version that failed to load: when to try again, and what it said last."""

    message: str
    attempts: int = 1
    retry_at: float = 0.0


class ModelRegistry:
    """All served models; `poll()` syncs them with the disk, `use()` routes a request."""

    def __init__(self, configs: list[ModelConfig] | None = None, *,
                 models_dir: str | None = None, batching: BatchingOptions | None = None,
                 unload_grace_s: float = 60.0,
                 on_batch: Callable[[str, int], None] | None = None,
                 limits: RequestLimits = RequestLimits(), work: WorkQueue | None = None,
                 first_retry_s: float = 1.0):
        if configs is None and models_dir is None:
            raise ValueError("give model configs or a models dir")
        self.models_dir = models_dir
        self.batching = batching
        self.on_batch = on_batch  # (model name, rows) of every batched call
        self.unload_grace_s = unload_grace_s
        self.limits = limits
        self.work = work
        self.first_retry_s = first_retry_s
        self._models: dict[str, _Model] = {c.name: _Model(c) for c in configs or []}
        self._failed: dict[tuple[str, int], _Failure] = {}
        self._unreadable: set[str] = set()   # folders whose listing failed at the last poll
        self._ignored: set[str] = set()      # folders named like no version, logged once
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()

    # --- routing ------------------------------------------------------------------------

    @contextmanager
    def use(self, name: str, version: int | None = None,
            label: str | None = None) -> Iterator[LoadedVersion]:
        """Yields the version a request asks for, kept loaded until the request is done.

        Raises:
          RequestError: NOT_FOUND for an unknown model, version or label; UNAVAILABLE when the
            model is known but the version asked for (or any version) is not loaded yet.
        """
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: model {name!r} is not served")
            if label:
                if label not in model.config.labels:
                    raise RequestError(grpc.StatusCode.NOT_FOUND,
                                       f"Unrecognized servable version label: {label}")
                version = model.config.labels[label]
            if version is None:
                if not model.loaded:
                    raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                       f"model {name!r} has no version loaded yet")
                loaded = model.loaded[max(model.loaded)]
            else:
                loaded = model.loaded.get(int(version))
                if loaded is None:
                    status = model.statuses.get(int(version))
                    if status is not None and status.state in ("START", "LOADING"):
                        raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                           f"model {name!r} version {version} is still loading")
                    raise RequestError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: "
                                       f"Specific({name}, {version})")
            loaded.acquire()
        try:
            yield loaded
        finally:
            loaded.release()

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Version statuses for GetModelStatus, newest last.

        Raises:
          RequestError: NOT_FOUND for an unknown model or version.
        """
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            statuses = [model.statuses[v] for v in sorted(model.statuses)]
            if version is not None:
                statuses = [s for s in statuses if s.version == int(version)]
                if not statuses:
                    raise RequestError(grpc.StatusCode.NOT_FOUND,
                                       f"Could not find version {version} of model {name}")
            return [VersionStatus(s.version, s.state, s.error_code, s.error_message)
                    for s in statuses]

    def label_version(self, name: str, label: str) -> int:
        with self._lock:
            model = self._models.get(name)
            if model is None or label not in model.config.labels:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Unrecognized servable version label: {label}")
            return model.config.labels[label]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def available(self) -> dict[str, list[int]]:
        with self._lock:
            return {name: sorted(m.loaded) for name, m in self._models.items()}

    # --- loading ------------------------------------------------------------------------

    def poll(self) -> None:
        """Loads new versions, then retires versions the policy no longer wants.

        A folder that cannot be listed changes nothing; one model's trouble never stops the
        others from being polled.
        """
        with self._poll_lock:
            present_models = self._discover_models() if self.models_dir is not None else None
            with self._lock:
                models = list(self._models.values())
            for model in models:
                if model.from_dir and present_models is not None \
                        and model.config.name not in present_models:
                    self._sync(model, {})  # its folder is gone from a listing that worked
                    continue
                versions = self._versions_on_disk(model.config.base_path)
                if versions is not None:
                    self._sync(model, versions)

    def _discover_models(self) -> set[str] | None:
        """Adds new model folders; returns the names listed, or None if the listing failed."""
        try:
            found = models_in_dir(self.models_dir)
        except (OSError, tf.errors.OpError) as err:
            self._warn_unreadable(self.models_dir, err)
            return None
        self._unreadable.discard(str(self.models_dir))
        with self._lock:
            for config in found:
                if config.name not in self._models:
                    log.info("found model %r in %s", config.name, config.base_path)
                    self._models[config.name] = _Model(config, from_dir=True)
        return {config.name for config in found}

    def _versions_on_disk(self, base_path: str) -> dict[int, str] | None:
        """{version: folder} under a model folder; None if it cannot be listed.

        Version folders are named with ASCII digits as TF Serving reads them (`00000123` is 123);
        a name that only looks numeric to Python (`³`, `١`) is ignored and logged once. Where
        two folders name one version, the first in sorted order is taken.
        """
        try:
            # Object stores list sub-folders with a trailing '/'.
            names = sorted(name.rstrip("/") for name in gfile.listdir(base_path))
            versions: dict[int, str] = {}
            for name in names:
                path = os.path.join(base_path, name)
                if name.startswith(".") or not gfile.isdir(path):
                    continue
                if not (name.isascii() and name.isdigit()):
                    if name.isdigit() and path not in self._ignored:
                        self._ignored.add(path)
                        log.warning("ignoring %s: version folders are named with ASCII digits",
                                    path)
                    continue
                version = int(name)
                if version > 0 and version not in versions and _holds_saved_model(path):
                    versions[version] = path
        except (OSError, tf.errors.OpError) as err:
            self._warn_unreadable(base_path, err)
            return None
        self._unreadable.discard(str(base_path))
        return versions

    def _warn_unreadable(self, path: str, err: Exception) -> None:
        if str(path) not in self._unreadable:
            self._unreadable.add(str(path))
            reason = getattr(err, "strerror", None) or getattr(err, "message", None) or err
            log.warning("cannot list %s (%s); serving what is loaded until it can be read",
                        path, reason)

    def _sync(self, model: _Model, on_disk: dict[int, str]) -> None:
        config = model.config
        now = time.monotonic()
        # A version that failed to load is left out until its retry is due, so the one before
        # it keeps serving meanwhile.
        failed = {v: f for (name, v), f in self._failed.items() if name == config.name}
        due = [v for v in on_disk if v not in failed or failed[v].retry_at <= now]
        for version in config.policy.select(due):
            if version not in model.loaded:
                self._load(model, version, on_disk[version])
        loadable = [v for v in on_disk if (config.name, v) not in self._failed]  # after loads
        wanted = config.policy.select(loadable)
        with self._lock:
            stale = [v for v in model.loaded if v not in wanted]
        for version in stale:
            self._retire(model, version)
        for key in [k for k in self._failed if k[0] == config.name and k[1] not in on_disk]:
            del self._failed[key]  # the folder went away: a new one starts afresh

    def _load(self, model: _Model, version: int, path: str) -> None:
        name = model.config.name
        with self._lock:
            model.statuses[version] = VersionStatus(version, "LOADING")
        started = time.monotonic()
        failure = self._failed.get((name, version))
        if failure is None:
            log.info("loading model %r version %d from %s", name, version, path)
        try:
            loaded = LoadedVersion(name, version, path, self.batching, self.on_batch,
                                   limits=self.limits, work=self.work)
            warmed = loaded.warm_up()
        except Exception as err:  # noqa: BLE001 - any load failure is reported, never fatal
            self._failed_to_load(model, version, path, " ".join(str(err).split()))
            return
        self._failed.pop((name, version), None)
        with self._lock:
            model.loaded[version] = loaded
            model.statuses[version] = VersionStatus(version, "AVAILABLE")
        log.info("loaded model %r version %d in %.1f s%s: signatures %s%s", name, version,
                 time.monotonic() - started,
                 f" (attempt {failure.attempts + 1})" if failure else "", ", ".join(
                     f"{sig}({', '.join(sorted(loaded.input_specs[sig]))})"
                     for sig in sorted(loaded.signatures)),
                 f", {warmed} warm-up requests" if warmed else "")

    def _failed_to_load(self, model: _Model, version: int, path: str, message: str) -> None:
        name = model.config.name
        failure = self._failed.get((name, version))
        if failure is None:
            failure = self._failed[name, version] = _Failure(message)
        else:
            failure.attempts += 1
        delay = min(MAX_RETRY_S, self.first_retry_s * 2 ** (failure.attempts - 1))
        failure.retry_at = time.monotonic() + delay
        if failure.attempts == 1 or message != failure.message:
            log.error("failed to load model %r version %d from %s: %s (retrying with back-off "
                      "up to every %.0f s; the same error again is not logged)",
                      name, version, path, message, MAX_RETRY_S)
        failure.message = message
        # The status goes to any client of GetModelStatus: it names the version, not where the
        # server keeps its files (the full message, path included, is in the log above).
        base = os.fspath(model.config.base_path)
        public = message if is_url(base) else message.replace(str(Path(base).resolve()),
                                                              f"<{name}>")
        public = public.replace(base, f"<{name}>")
        with self._lock:
            model.statuses[version] = VersionStatus(version, "END", grpc.StatusCode.UNKNOWN,
                                                    public)

    def _retire(self, model: _Model, version: int) -> None:
        with self._lock:
            loaded = model.loaded.pop(version, None)
            if loaded is None:
                return
            model.statuses[version] = VersionStatus(version, "UNLOADING")
        # New requests no longer see this version; let the in-flight ones finish first.
        threading.Thread(target=self._finish_unload, args=(model, loaded),
                         name=f"unload-{model.config.name}-{version}", daemon=True).start()

    def _finish_unload(self, model: _Model, loaded: LoadedVersion) -> None:
        if not loaded.wait_idle(self.unload_grace_s):
            log.warning("model %r version %d still busy after %.0f s; unloading anyway",
                        loaded.name, loaded.version, self.unload_grace_s)
        loaded.close()
        with self._lock:
            model.statuses[loaded.version] = VersionStatus(loaded.version, "END")
        log.info("unloaded model %r version %d", loaded.name, loaded.version)

    def close(self) -> None:
        """Unloads everything (after in-flight requests finish)."""
        with self._lock:
            pairs = [(m, v) for m in self._models.values() for v in list(m.loaded)]
        for model, version in pairs:
            with self._lock:
                loaded = model.loaded.pop(version, None)
            if loaded is not None:
                loaded.wait_idle(self.unload_grace_s)
                loaded.close()
