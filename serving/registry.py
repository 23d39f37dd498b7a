"""The served models: which versions are loaded, and how requests reach them.

Each model folder is polled for version sub-folders (positive integers, as TF Serving expects).
A new version is loaded fully (and warmed up) before requests are routed to it; the version it
replaces stops getting new requests at that moment but stays loaded until its in-flight calls
have finished, so a swap never fails a request. States follow TF Serving's ModelVersionStatus:
START -> LOADING -> AVAILABLE -> UNLOADING -> END.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc

from serving.config import BatchingOptions, ModelConfig, models_in_dir
from serving.errors import RequestError
from serving.servable import LoadedVersion

log = logging.getLogger(__name__)


@dataclass
class VersionStatus:
    """What GetModelStatus reports for one version."""

    version: int
    state: str = "START"
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


class _Model:
    """Book-keeping for one model name."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.statuses: dict[int, VersionStatus] = {}
        self.loaded: dict[int, LoadedVersion] = {}   # AVAILABLE versions, routable


class ModelRegistry:
    """All served models; `poll()` syncs them with the disk, `use()` routes a request."""

    def __init__(self, configs: list[ModelConfig] | None = None, *,
                 models_dir: Path | None = None, batching: BatchingOptions | None = None,
                 unload_grace_s: float = 60.0,
                 on_batch: Callable[[str, int], None] | None = None):
        if configs is None and models_dir is None:
            raise ValueError("give model configs or a models dir")
        self.models_dir = models_dir
        self.batching = batching
        self.on_batch = on_batch  # (model name, rows) of every batched call
        self.unload_grace_s = unload_grace_s
        self._models: dict[str, _Model] = {c.name: _Model(c) for c in configs or []}
        self._failed: set[tuple[str, int]] = set()
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
        """Loads new versions, then retires versions the policy no longer wants."""
        with self._poll_lock:
            if self.models_dir is not None:
                self._discover_models()
            with self._lock:
                models = list(self._models.values())
            for model in models:
                self._sync(model)

    def _discover_models(self) -> None:
        try:
            found = models_in_dir(self.models_dir)
        except OSError as err:
            log.warning("cannot list %s: %s", self.models_dir, err)
            return
        with self._lock:
            for config in found:
                if config.name not in self._models:
                    log.info("found model %r in %s", config.name, config.base_path)
                    self._models[config.name] = _Model(config)

    def _sync(self, model: _Model) -> None:
        config = model.config
        # A version that failed to load is left out, so the one before it keeps serving.
        present = [v for v in _versions_on_disk(config.base_path)
                   if (config.name, v) not in self._failed]
        wanted = config.policy.select(present)
        for version in wanted:
            if version not in model.loaded:
                self._load(model, version)
        wanted = config.policy.select([v for v in present if (config.name, v) not in self._failed])
        with self._lock:
            stale = [v for v in model.loaded if v not in wanted]
        for version in stale:
            self._retire(model, version)

    def _load(self, model: _Model, version: int) -> None:
        name, path = model.config.name, model.config.base_path / str(version)
        with self._lock:
            model.statuses[version] = VersionStatus(version, "LOADING")
        started = time.monotonic()
        log.info("loading model %r version %d from %s", name, version, path)
        try:
            loaded = LoadedVersion(name, version, path, self.batching, self.on_batch)
            warmed = loaded.warm_up()
        except Exception as err:  # noqa: BLE001 - any load failure is reported, never fatal
            log.error("failed to load model %r version %d: %s", name, version, err)
            self._failed.add((name, version))
            with self._lock:
                model.statuses[version] = VersionStatus(
                    version, "END", grpc.StatusCode.UNKNOWN, " ".join(str(err).split()))
            return
        with self._lock:
            model.loaded[version] = loaded
            model.statuses[version] = VersionStatus(version, "AVAILABLE")
        log.info("loaded model %r version %d in %.1f s: signatures %s%s", name, version,
                 time.monotonic() - started, ", ".join(
                     f"{sig}({', '.join(sorted(loaded.input_specs[sig]))})"
                     for sig in sorted(loaded.signatures)),
                 f", {warmed} warm-up requests" if warmed else "")

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


def _versions_on_disk(base_path: Path) -> list[int]:
    try:
        entries = list(Path(base_path).iterdir())
    except OSError:
        return []
    return sorted(int(p.name) for p in entries
                  if p.is_dir() and p.name.isdigit() and int(p.name) > 0
                  and (p / "saved_model.pb").exists())
