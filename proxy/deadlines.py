"""Read deadlines for slow clients: a request body arrives whole, in time, or gets a 408.

A client may send its body as slowly as it likes. Under the gevent worker (`proxy.worker`) that
costs a greenlet rather than a thread, but it would still hold its connection, memory and a
slot of `worker_connections` forever. So before a view runs, the body is read whole within
`READ_TIMEOUT_S` of the headers (what nginx's request buffering does for an app behind it); a
body still incomplete then is answered 408. The headers have their own deadline: gunicorn's
keep-alive timeout, which its gevent worker applies to reading each request's headers (set by
`cityseg-proxy --read-timeout`).

The deadline is a `gevent.Timeout`, so it applies where gevent has patched the sockets, i.e.
under `cityseg-proxy`'s workers. Elsewhere (Flask's test client or development server) the
body is read without one: a blocking read on a plain socket cannot be interrupted from the
same thread.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from flask import Flask, current_app, request
from werkzeug.exceptions import RequestTimeout


def install_body_deadline(app: Flask) -> None:
    """Reads each routed request's body within `READ_TIMEOUT_S` before its view runs."""
    app.before_request(read_body_in_time)


def read_body_in_time() -> None:
    """Caches the body (`request.get_data`, from which Flask then parses forms and files).

    Raises:
      RequestTimeout: (408) if the body is not complete within `READ_TIMEOUT_S`.
      RequestEntityTooLarge: (413) from werkzeug, for a body over `MAX_CONTENT_LENGTH`.
    """
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    # A request no view will take (404, 405) is answered without reading what it sent.
    if request.routing_exception is not None or not (request.content_length or chunked):
        return
    timeout_s = float(current_app.config["READ_TIMEOUT_S"])
    with _deadline(timeout_s, RequestTimeout(f"request body not received within {timeout_s:g} s")):
        request.get_data(cache=True)


@contextlib.contextmanager
def _deadline(seconds: float, error: Exception) -> Iterator[None]:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        yield
        return
    import gevent

    with gevent.Timeout(seconds, error):
        yield
