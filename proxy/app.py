"""The Flask application factory: `create_app(config)` builds one proxy app.

Nothing happens at import time. The factory reads the settings (`proxy.settings`: the keys, also
read from `CITYSEG_*` environment variables such as `CITYSEG_DATA_DIR`), loads the manifest,
opens (lazily) the gRPC connection to the model server, registers the routes, the JSON error
handlers, the request-body deadline and the request metrics, and fails at once with a one-line
message when the configuration is impossible.
"""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from proxy.api import bp
from proxy.deadlines import install_body_deadline
from proxy.errors import register_error_handlers
from proxy.gateway import ServingGateway
from proxy.resolver import Resolver
from proxy.settings import load_settings
from proxy.telemetry import install_metrics


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Builds the proxy app.

    Args:
      config: settings (see `proxy.settings`); they override `CITYSEG_*` environment
        variables, which override the defaults.

    Returns:
      The Flask app, with `app.extensions['cityseg_resolver']` (the manifest index) and
      `app.extensions['cityseg_gateway']` (the model-server connection).

    Raises:
      ValueError: for a missing or impossible setting, or a missing or malformed manifest.
    """
    app = Flask(__name__)
    # An API answers what was asked: no 308 redirects that rewrite '//' in a path.
    app.url_map.merge_slashes = False
    app.config.update(load_settings(config))

    app.extensions["cityseg_resolver"] = Resolver.from_data_dir(
        app.config["DATA_DIR"], app.config["RAW_ROOT"])
    app.extensions["cityseg_gateway"] = ServingGateway(
        str(app.config["SERVING"]), str(app.config["MODEL"]),
        timeout_s=float(app.config["SERVING_TIMEOUT_S"]),
        retries=int(app.config["SERVING_RETRIES"]))

    app.register_blueprint(bp)
    register_error_handlers(app)
    install_metrics(app)
    # After the metrics' timer starts: the body's time and a 408 are counted too.
    install_body_deadline(app)
    return app
