"""The proxy's settings: defaults, `CITYSEG_*` environment variables and the checks on them.

Apart from the app so that `cityseg-proxy` can check its settings and the manifest in the
gunicorn master without building an app, which would import prometheus_client there before
its multi-process folder is set (see `proxy.cli`).

| key | meaning |
|---|---|
| `DATA_DIR` | preprocessing output holding `manifest.jsonl` (a folder, or a URL: `proxy.resolver`) |
| `RAW_ROOT` | the raw Cityscapes tree the manifest's paths are relative to (a folder or a URL) |
| `SERVING` | `host:port` of the model server's gRPC API |
| `MODEL` | the served model name |
| `SERVING_TIMEOUT_S` | deadline of each call to the model server (default 10) |
| `SERVING_RETRIES` | retries of UNAVAILABLE within that deadline (default 2) |
| `MAX_CONTENT_LENGTH` | largest accepted request body in bytes (default 20 MiB) |
| `MAX_PIXELS` | largest accepted upload in pixels (default `cityseg.images.DEFAULT_MAX_PIXELS`) |
| `READ_TIMEOUT_S` | seconds a request body has to arrive after its headers (15; `proxy.deadlines`) |
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from flask import Config

from cityseg.images import DEFAULT_MAX_PIXELS

DEFAULTS: dict[str, Any] = {
    "SERVING_TIMEOUT_S": 10.0,
    "SERVING_RETRIES": 2,
    "MAX_CONTENT_LENGTH": 20 * 1024 * 1024,
    "MAX_PIXELS": DEFAULT_MAX_PIXELS,
    "READ_TIMEOUT_S": 15,
}
REQUIRED = ("DATA_DIR", "RAW_ROOT", "SERVING", "MODEL")


def load_settings(config: Mapping[str, Any] | None = None) -> Config:
    """The settings: `config` over `CITYSEG_*` environment variables over the defaults.

    Raises:
      ValueError: for a missing or impossible setting.
    """
    settings = Config(os.getcwd())
    settings.from_mapping(DEFAULTS)
    settings.from_prefixed_env("CITYSEG")
    if config:
        settings.update(config)
    _check(settings)
    return settings


def _check(config: Mapping[str, Any]) -> None:
    missing = [key for key in REQUIRED if not config.get(key)]
    if missing:
        raise ValueError(f"missing proxy setting(s): {', '.join(missing)} "
                         f"(or CITYSEG_{missing[0]} in the environment)")
    serving = str(config["SERVING"])
    host, _, port = serving.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"serving address must be HOST:PORT, not {serving!r}")
    if float(config["SERVING_TIMEOUT_S"]) <= 0:
        raise ValueError(f"serving timeout must be positive, not {config['SERVING_TIMEOUT_S']}")
    if int(config["SERVING_RETRIES"]) < 0:
        raise ValueError(f"serving retries must be >= 0, not {config['SERVING_RETRIES']}")
    if float(config["READ_TIMEOUT_S"]) <= 0:
        raise ValueError(f"read timeout must be positive, not {config['READ_TIMEOUT_S']}")
    if int(config["MAX_PIXELS"]) <= 0:
        raise ValueError(f"max pixels must be positive, not {config['MAX_PIXELS']}")
