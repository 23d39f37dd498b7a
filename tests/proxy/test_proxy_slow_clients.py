"""Slow clients against the real `cityseg-proxy` (gunicorn) and the real model server.

Sixteen connections send the start of a request and then one byte every half second: eight
trickle their headers (`GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n` and a header line that never
ends), eight a multipart upload whose body never completes. A normal client must still be
answered promptly while they hold their connections, and the read deadlines must end them.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from polling import wait_until

LABELLED = "frankfurt_000000_000294"
NORMAL_PATHS = ("/healthz", f"/api/v1/images/{LABELLED}/segmentation", "/readyz")
SLOW_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
BOUNDARY = b"slowslowslow"
SLOW_UPLOAD = (
    b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n"
    b"Content-Length: 100000\r\n\r\n"
    b"--" + BOUNDARY + b"\r\n"
    b'Content-Disposition: form-data; name="image"; filename="frame.png"\r\n'
    b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n")
# A normal request must be answered within this, whatever the slow clients do (generous: a
# segmentation takes well under a second here; the old gthread worker never answered).
PROMPT_S = 5.0


class Tricklers:
    """Connections that each send their start at once, then one byte every `every_s` seconds.

    `open_count()` says how many the server has not closed; `answers[i]` holds what connection
    `i` received (e.g. a 408).
    """

    def __init__(self, port: int, starts: list[bytes], every_s: float = 0.5):
        self._port = port
        self._starts = starts
        self._every_s = every_s
        self._sockets: list[socket.socket] = []
        self.answers = [b""] * len(starts)
        self.closed = [False] * len(starts)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> "Tricklers":
        for start in self._starts:
            sock = socket.create_connection(("127.0.0.1", self._port), timeout=5)
            sock.sendall(start)
            sock.setblocking(False)
            self._sockets.append(sock)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self._sockets:
            sock.close()

    def open_count(self) -> int:
        return self.closed.count(False)

    def _trickle(self) -> None:
        while not self._stop.wait(self._every_s):
            for index, sock in enumerate(self._sockets):
                if self.closed[index]:
                    continue
                try:
                    data = sock.recv(65536)
                    if not data:
                        self.closed[index] = True
                        continue
                    self.answers[index] += data
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed[index] = True
                    continue
                try:
                    sock.send(b"a")
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed[index] = True


def assert_answered_promptly(url: str) -> None:
    with requests.Session() as session:
        for _ in range(3):
            for path in NORMAL_PATHS:
                started = time.monotonic()
                response = session.get(f"{url}{path}", timeout=2 * PROMPT_S)
                elapsed = time.monotonic() - started
                assert response.status_code == 200, (path, response.text[:200])
                assert elapsed < PROMPT_S, f"{path} took {elapsed:.1f} s behind slow clients"


@pytest.mark.slow
def test_sixteen_slow_clients_do_not_hold_up_a_normal_one(dataset, serving, free_tcp_port,
                                                         gunicorn_proxy):
    # The defaults of cityseg-proxy: one worker.
    with gunicorn_proxy(dataset, serving, free_tcp_port) as proxy:
        with Tricklers(free_tcp_port, [SLOW_HEADERS] * 8 + [SLOW_UPLOAD] * 8) as slow:
            time.sleep(1.5)  # every slow connection accepted and sending
            assert_answered_promptly(proxy.url)
            # They were still holding their connections all along (none was simply dropped).
            assert slow.open_count() == 16


@pytest.mark.slow
def test_read_deadlines_end_slow_headers_and_answer_slow_bodies_408(
        dataset, serving, free_tcp_port, gunicorn_proxy):
    read_timeout = 2
    with gunicorn_proxy(dataset, serving, free_tcp_port, "--read-timeout", str(read_timeout)):
        with Tricklers(free_tcp_port, [SLOW_HEADERS] * 8 + [SLOW_UPLOAD] * 8) as slow:
            wait_until(lambda: slow.open_count() == 0, 4 * read_timeout + 5, 0.5,
                       seen=lambda: f"{slow.open_count()} slow connections still open")
            answers = list(slow.answers)
    headers, uploads = answers[:8], answers[8:]
    assert headers == [b""] * 8  # cut without an answer: there was no complete request
    for answer in uploads:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"request body not received within 2 s" in answer
