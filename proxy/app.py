"""The Flask application factory: `create_app(config)` builds one proxy app.

Nothing happens at import time. The factory loads the manifest, opens (lazily) the gRPC
connection to the model server, registers the routes, the JSON error handlers and the request
metrics, and fails at once with a one-line message when the configuration is impossible.

Configuration keys (also read from `CITYSEG_*` environment variables, e.g. `CITYSEG_DATA_DIR`):

| key | meaning |
|---|---|
| `DATA_DIR` | preprocessing output holding `manifest.jsonl` |
| `RAW_ROOT` | the raw Cityscapes tree the manifest's paths are relative to |
| `SERVING` | `host:port` of the model server's gRPC API |
| `MODEL` | the served model name |
| `SERVING_TIMEOUT_S` | deadline of each call to the model server (default 10) |
| `SERVING_RETRIES` | retries of UNAVAILABLE within that deadline (default 2) |
| `MAX_CONTENT_LENGTH` | largest accepted request body in bytes (default 20 MiB) |
| `MAX_PIXELS` | largest accepted upload in pixels (default `cityseg.images.DEFAULT_MAX_PIXELS`) |
"""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from cityseg.images import DEFAULT_MAX_PIXELS
from proxy.api import bp
from proxy.errors import register_error_handlers
from proxy.gateway import ServingGateway
from proxy.resolver import Resolver
from proxy.telemetry import install_metrics

DEFAULTS: dict[str, Any] = {
    "SERVING_TIMEOUT_S": 10.0,
    "SERVING_RETRIES": 2,
    "MAX_CONTENT_LENGTH": 20 * 1024 * 1024,
    "MAX_PIXELS": DEFAULT_MAX_PIXELS,
}
REQUIRED = ("DATA_DIR", "RAW_ROOT", "SERVING", "MODEL")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Builds the proxy app.

    Args:
      config: configuration keys (see the module docstring); they override `CITYSEG_*`
        environment variables, which override the defaults.

    Returns:
      The Flask app, with `app.extensions['cityseg_resolver']` (the manifest index) and
      `app.extensions['cityseg_gateway']` (the model-server connection).

    Raises:
      ValueError: for a missing or impossible setting, or a missing or malformed manifest.
    """
    app = Flask(__name__)
    # An API answers what was asked: no 308 redirects that rewrite '//' in a path.
    app.url_map.merge_slashes = False
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("CITYSEG")
    if config:
        app.config.update(config)
    _check_config(app.config)

    app.extensions["cityseg_resolver"] = Resolver.from_data_dir(
        app.config["DATA_DIR"], app.config["RAW_ROOT"])
    app.extensions["cityseg_gateway"] = ServingGateway(
        str(app.config["SERVING"]), str(app.config["MODEL"]),
        timeout_s=float(app.config["SERVING_TIMEOUT_S"]),
        retries=int(app.config["SERVING_RETRIES"]))

    app.register_blueprint(bp)
    register_error_handlers(app)
    install_metrics(app)
    return app


def _check_config(config: Mapping[str, Any]) -> None:
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
    if int(config["MAX_PIXELS"]) <= 0:
        raise ValueError(f"max pixels must be positive, not {config['MAX_PIXELS']}")
