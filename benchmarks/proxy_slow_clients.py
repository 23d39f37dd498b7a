"""A normal client's answer time while 16 slow clients hold connections to the proxy, old vs new.

    python benchmarks/proxy_slow_clients.py --baseline-ref afae84d [--requests 15]

Starts the real `cityseg-serve` on a small stand-in model (proxy_load's synthetic frames and
model), then, one after the other, `cityseg-proxy` with its defaults from a `git worktree` of
--baseline-ref (removed afterwards) and from this checkout, with the same interpreter. For each
it times a normal client's `GET /api/v1/images/{id}/segmentation`, one request at a time:
first with nothing else connected, then while 16 slow clients hold connections (8 send
`GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n` and then a header byte every half second, 8 a multipart
upload whose body comes a byte every half second). A request not answered within --timeout
counts as that long; after 3 such in a row the phase stops. Target: the loaded p50 under twice
the unloaded p50. Writes docs/benchmarks/proxy_slow_clients.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench_machine import machine_facts  # the script's folder is on sys.path
from proxy_load import (baseline_worktree, export_stand_in, free_port, model_server, stop,
                        wait_until, write_dataset)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cityseg.cli import HelpFormatter, parse_size  # noqa: E402

log = logging.getLogger("proxy_slow_clients")
OUTPUT = ROOT / "docs" / "benchmarks" / "proxy_slow_clients.json"
MODEL = "standin"
TARGET_RATIO = 2.0
GIVE_UP_AFTER = 3  # consecutive unanswered requests
SLOW_HEADER = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
SLOW_UPLOAD = (b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
               b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n')


@contextlib.contextmanager
def slow_clients(port: int, count: int, every_s: float = 0.5):
    """`count` connections (half trickling headers, half a body) held while the block runs."""
    stop = threading.Event()

    def trickle(start: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(start)
            while not stop.wait(every_s):
                try:
                    sock.sendall(b"a")
                except OSError:  # the server ended it (a read deadline)
                    return

    starts = [SLOW_HEADER] * (count // 2) + [SLOW_UPLOAD] * (count - count // 2)
    threads = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in starts]
    for thread in threads:
        thread.start()
    time.sleep(2 * every_s)  # all connected and sending
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)


def answer_times(url: str, ids: list[str], *, requests_n: int, timeout_s: float) -> dict:
    """Times `requests_n` segmentations one after the other (a fresh connection each)."""
    import requests

    times, unanswered, in_a_row = [], 0, 0
    for index in range(requests_n):
        started = time.perf_counter()
        try:
            response = requests.get(f"{url}/api/v1/images/{ids[index % len(ids)]}/segmentation",
                                    timeout=timeout_s)
            response.raise_for_status()
            in_a_row = 0
        except requests.RequestException as err:
            log.info("unanswered: %s", type(err).__name__)
            unanswered += 1
            in_a_row += 1
        times.append(min(time.perf_counter() - started, timeout_s))
        if in_a_row >= GIVE_UP_AFTER:
            break
    ms = np.asarray(times) * 1000.0
    return {"requests": len(times), "unanswered": unanswered,
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "max_ms": round(float(ms.max()), 1)}


def measure(tree: Path, *, data_dir: Path, raw_root: Path, grpc_port: int, ids: list[str],
            args, logs) -> dict:
    """Starts the proxy of `tree` with its defaults; times a normal client without and with
    the slow clients."""
    import requests

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # cwd and PYTHONPATH put `tree` first on sys.path, ahead of the editable install's finder.
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "--data-dir", str(data_dir), "--raw-root",
         str(raw_root), "--serving", f"127.0.0.1:{grpc_port}", "--model", MODEL,
         "--port", str(port)],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=logs,
        stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=10).status_code == 200,
                   f"cityseg-proxy from {tree}", 180, process)
        for image_id in ids:  # warm-up
            requests.get(f"{url}/api/v1/images/{image_id}/segmentation", timeout=60)
        unloaded = answer_times(url, ids, requests_n=args.requests, timeout_s=args.timeout)
        with slow_clients(port, args.slow_clients):
            loaded = answer_times(url, ids, requests_n=args.requests, timeout_s=args.timeout)
    finally:
        stop(process)
    ratio = loaded["p50_ms"] / unloaded["p50_ms"]
    return {"unloaded": unloaded, "with_slow_clients": loaded, "p50_ratio": round(ratio, 2),
            "meets_target": bool(ratio < TARGET_RATIO and not loaded["unanswered"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
        epilog="examples:\n  python benchmarks/proxy_slow_clients.py --baseline-ref afae84d\n"
               "  python benchmarks/proxy_slow_clients.py --baseline-ref HEAD~3 --requests 5 "
               "--output /tmp/slow.json")
    parser.add_argument("--baseline-ref", required=True, help="git revision to compare with")
    parser.add_argument("--requests", type=int, default=15, help="normal requests per phase")
    parser.add_argument("--slow-clients", type=int, default=16, help="slow connections held")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds a normal request may wait before it counts as unanswered")
    parser.add_argument("--size", type=parse_size, default=(512, 1024),
                        help="synthetic image size HxW")
    parser.add_argument("--input-size", type=parse_size, default=(256, 512),
                        help="stand-in model's input size HxW")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.requests < 1 or args.slow_clients < 1 or args.timeout <= 0:
        parser.error("--requests and --slow-clients must be >= 1, --timeout > 0")

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="proxy-slow-clients-") as tmp:
        base = Path(tmp)
        baseline = base / "baseline"
        with baseline_worktree(args.baseline_ref, baseline) as revision, \
                open(base / "services.log", "w") as logs:
            data_dir, raw_root, ids = write_dataset(base, cities=1, images_per_city=4,
                                                    size=args.size)
            export_stand_in(base / "models", MODEL, args.input_size)
            with model_server(base / "models", MODEL, logs) as grpc_port:
                results = {}
                for name, tree in (("before", baseline), ("after", ROOT)):
                    results[name] = measure(tree, data_dir=data_dir, raw_root=raw_root,
                                            grpc_port=grpc_port, ids=ids, args=args, logs=logs)
                    log.info("%s: %s", name, results[name])

    report = {
        "benchmark": "proxy_slow_clients",
        "what": "p50 answer time of one normal client's GET /api/v1/images/{id}/segmentation "
                "(one at a time), unloaded and while slow clients hold connections (half "
                "trickling headers, half a multipart body, a byte every 0.5 s); cityseg-proxy "
                "with its default flags against cityseg-serve",
        "machine": machine_facts(),
        "baseline": {"ref": args.baseline_ref, "commit": revision,
                     "worker": "gunicorn gthread, 1 worker x 8 threads"},
        "now": {"worker": "gunicorn gevent (proxy.worker.GeventGrpcWorker), 1 worker, read "
                          "timeout 15 s"},
        "config": {"slow_clients": args.slow_clients, "requests_per_phase": args.requests,
                   "unanswered_after_s": args.timeout, "image_size": list(args.size),
                   "model": f"stand-in, input {args.input_size[0]}x{args.input_size[1]}"},
        "target": f"p50 with slow clients < {TARGET_RATIO:g}x the unloaded p50",
        "results": results,
        "wall_s": round(time.monotonic() - started, 1),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    log.info("before: %.0f -> %.0f ms; after: %.0f -> %.0f ms -> %s",
             results["before"]["unloaded"]["p50_ms"],
             results["before"]["with_slow_clients"]["p50_ms"],
             results["after"]["unloaded"]["p50_ms"],
             results["after"]["with_slow_clients"]["p50_ms"], args.output)
    return 0 if results["after"]["meets_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
