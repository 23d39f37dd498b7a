"""The gunicorn worker of `cityseg-proxy`: gevent, with gRPC on gevent's event loop.

Why gevent: a client that sends its request slowly (headers a byte at a time, a multipart body
trickled) holds whatever serves it for as long as it likes. Under gunicorn's `gthread` worker
that is a thread, and 8 such clients held all 8 threads of a worker, so nobody else was answered.
Under gevent each connection costs a greenlet, waiting costs nothing, and a worker holds up to
`worker_connections` of them (1000) while the others are answered. The read deadlines that end
such connections are set in `proxy.cli` (headers: gunicorn's keep-alive timeout, which the
gevent worker applies to reading each request's headers) and `proxy.buffering` (the body).

gRPC runs its own I/O threads unless told otherwise: `grpc.experimental.gevent.init_gevent()`
puts it on gevent's loop. gRPC's documentation asks for the call after the standard library is
monkey-patched and before any gRPC object exists, which is right after `GeventWorker.patch`, in
the worker process (the app, and with it the channel, is built later: `load_wsgi`).
"""
from __future__ import annotations

from gunicorn.workers.ggevent import GeventWorker


class GeventGrpcWorker(GeventWorker):
    """gunicorn's gevent worker that also makes gRPC cooperative."""

    def patch(self):
        super().patch()
        # Imported here, in the patched worker, not in the gunicorn master.
        from grpc.experimental import gevent as grpc_gevent

        grpc_gevent.init_gevent()
