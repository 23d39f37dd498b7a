"""Load on the proxy: concurrent clients asking for segmentations by image id.

    python benchmarks/proxy_load.py [--clients 8 --duration 20] [--models-dir MODELS --model NAME]

Builds a synthetic Cityscapes tree (cityseg-synth's generator) and its manifest, exports a small
stand-in model unless --models-dir is given, starts the real `cityseg-serve` and the real
`cityseg-proxy` (gunicorn) as subprocesses on free ports, then runs --clients threads that each
loop `GET /api/v1/images/{id}/segmentation` over the ids for --duration seconds. Reports errors
(zero expected), requests/s and latency percentiles, and writes them with the machine's CPU
count and model to docs/benchmarks/proxy_load.json. Exits 1 if any request failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from bench_machine import cpu_model  # the script's folder is on sys.path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cityseg import vocabulary as V  # noqa: E402
from cityseg.cli import HelpFormatter, parse_size  # noqa: E402

log = logging.getLogger("proxy_load")
OUTPUT = ROOT / "docs" / "benchmarks" / "proxy_load.json"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_dataset(base: Path, *, cities: int, images_per_city: int,
                  size: tuple[int, int]) -> tuple[Path, Path, list[str]]:
    """A synthetic val split and its manifest (the proxy reads nothing else of DATA)."""
    from PIL import Image

    from preprocessing.synth import generate

    raw_root, data_dir = base / "raw", base / "data"
    written = generate(raw_root, cities=cities, images_per_city=images_per_city,
                       splits=("val",), sizes=(size,), seed=0)
    data_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    with open(data_dir / V.MANIFEST_FILE, "w") as manifest:
        for split, image_id in written:
            image_rel = V.image_path(split, image_id)
            with Image.open(raw_root / image_rel) as image:
                width, height = image.size
            manifest.write(json.dumps({
                "image_id": str(image_id), "split": split, "city": image_id.city,
                "image": str(image_rel), "label": str(V.label_path(split, image_id)),
                "height": height, "width": width}) + "\n")
            ids.append(str(image_id))
    return data_dir, raw_root, ids


def export_stand_in(models_dir: Path, name: str, input_size: tuple[int, int]) -> None:
    """A small convolutional stand-in (real graph, real resize and PNG encode on the server)."""
    import keras

    from training.export import export_model

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(V.NUM_CATEGORIES, 1)(x)
    # Back to the input size by a learned 4x upsampling: UpSampling2D cannot be traced on the
    # export's frames of any size (it asks Python whether a symbolic size is known).
    outputs = keras.layers.Conv2DTranspose(V.NUM_CATEGORIES, 4, strides=4)(x)
    # Frames are shrunk to a long side of max(input_size) in the graph, aspect kept.
    export_model(keras.Model(inputs, outputs), models_dir, name, stride=4,
                 max_long_side=max(input_size), version=1,
                 model_info={"architecture": "proxy_load stand-in"})


def wait_until(check, what: str, timeout_s: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - any failure while starting means "not yet"
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready within {timeout_s:.0f} s")


def stop(process: subprocess.Popen | None) -> None:
    """Terminates a service, and kills it if it has not left within 30 s."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@contextlib.contextmanager
def model_server(models_dir: Path, model: str, logs) -> Iterator[int]:
    """The real `cityseg-serve` on `models_dir` once `model` is AVAILABLE; yields its gRPC port."""
    from serving.client import GrpcClient

    grpc_port, rest_port = free_port(), free_port()
    serve = subprocess.Popen(
        [str(BIN / "cityseg-serve"), "--models-dir", str(models_dir), "--grpc-port",
         str(grpc_port), "--rest-port", str(rest_port)],
        cwd=ROOT, stdout=logs, stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    try:
        with GrpcClient(f"127.0.0.1:{grpc_port}", timeout_s=2.0) as probe:
            wait_until(lambda: any(s == "AVAILABLE" for _, s in probe.model_status(model)),
                       "cityseg-serve", 180, serve)
        yield grpc_port
    finally:
        stop(serve)


@contextlib.contextmanager
def baseline_worktree(ref: str, path: Path) -> Iterator[str]:
    """A `git worktree` of `ref` at `path` while the block runs; yields its short commit."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref],
                   check=True, capture_output=True)
    try:
        yield subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                       check=False)


def run_load(url: str, ids: list[str], *, clients: int, duration_s: float) -> dict:
    """`clients` threads loop over the ids for `duration_s`; returns latencies and errors."""
    import requests

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def client(index: int) -> None:
        with requests.Session() as session:
            step = index
            while time.monotonic() < stop_at:
                image_id = ids[step % len(ids)]
                step += 1
                started = time.perf_counter()
                try:
                    response = session.get(f"{url}/api/v1/images/{image_id}/segmentation",
                                           timeout=60)
                    ok = response.status_code == 200 and response.json()["prediction"]
                    problem = None if ok else f"{response.status_code} {response.text[:120]}"
                except requests.RequestException as err:
                    problem = f"{type(err).__name__}: {err}"
                elapsed = time.perf_counter() - started
                with lock:
                    if problem is None:
                        latencies.append(elapsed)
                    else:
                        errors.append(problem)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    ms = np.asarray(latencies) * 1000.0
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1) if ms.size else None,
            "p90": round(float(np.percentile(ms, 90)), 1) if ms.size else None,
            "p99": round(float(np.percentile(ms, 99)), 1) if ms.size else None,
            "max": round(float(ms.max()), 1) if ms.size else None,
            "mean": round(float(ms.mean()), 1) if ms.size else None,
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
        epilog="examples:\n  python benchmarks/proxy_load.py\n"
               "  python benchmarks/proxy_load.py --clients 8 --duration 5 --size 256x512 "
               "--output /tmp/load.json")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--size", type=parse_size, default=(512, 1024),
                        help="synthetic image size HxW (full Cityscapes: 1024x2048)")
    parser.add_argument("--cities", type=int, default=2)
    parser.add_argument("--images-per-city", type=int, default=4)
    parser.add_argument("--models-dir", type=Path, help="serve these models instead of a stand-in")
    parser.add_argument("--model", default="standin", help="model name to ask for")
    parser.add_argument("--input-size", type=parse_size, default=(256, 512),
                        help="stand-in model's input size HxW")
    parser.add_argument("--workers", type=int, default=1, help="proxy gunicorn workers")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be >= 1 and --duration > 0")

    import requests

    with tempfile.TemporaryDirectory(prefix="proxy-load-") as tmp:
        base = Path(tmp)
        log.info("writing %d synthetic %dx%d images", args.cities * args.images_per_city,
                 *args.size)
        data_dir, raw_root, ids = write_dataset(
            base, cities=args.cities, images_per_city=args.images_per_city, size=args.size)
        models_dir = args.models_dir
        if models_dir is None:
            models_dir = base / "models"
            log.info("exporting the stand-in model")
            export_stand_in(models_dir, args.model, args.input_size)

        http_port = free_port()
        with open(base / "services.log", "w") as logs, \
                model_server(models_dir, args.model, logs) as grpc_port:
            proxy = subprocess.Popen(
                [str(BIN / "cityseg-proxy"), "--data-dir", str(data_dir), "--raw-root",
                 str(raw_root), "--serving", f"127.0.0.1:{grpc_port}", "--model", args.model,
                 "--port", str(http_port), "--workers", str(args.workers)],
                stdout=logs, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{http_port}"
                wait_until(lambda: requests.get(f"{url}/readyz", timeout=2).status_code == 200,
                           "cityseg-proxy", 180, proxy)
                for image_id in ids:  # warm-up: every id once, every worker's first call
                    requests.get(f"{url}/api/v1/images/{image_id}/segmentation", timeout=60)
                log.info("load: %d clients for %.0f s over %d ids", args.clients, args.duration,
                         len(ids))
                results = run_load(url, ids, clients=args.clients, duration_s=args.duration)
            finally:
                stop(proxy)

    report = {
        "benchmark": "proxy_load",
        "what": "GET /api/v1/images/{id}/segmentation (raw PNG read, gRPC Predict, label "
                "remap, metrics, base64 PNGs) through gunicorn -> cityseg-serve",
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "config": {"clients": args.clients, "duration_s": args.duration,
                   "images": len(ids), "image_size": list(args.size),
                   "model": args.model if args.models_dir else
                   f"{args.model} (stand-in, input {args.input_size[0]}x{args.input_size[1]})",
                   "proxy_workers": args.workers},
        "results": results,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%d requests, %d errors, %.1f req/s, p50 %s ms, p99 %s ms -> %s",
             results["requests"], results["errors"], results["requests_per_s"],
             results["latency_ms"]["p50"], results["latency_ms"]["p99"], args.output)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
