"""Serving overhead and throughput of cityseg-serve on full-resolution Cityscapes frames.

    python benchmarks/serving_bench.py [--models-dir MODELS --model NAME] [--requests 20]

Measures, for one 2048x1024 PNG: latency p50/p99 of the SavedModel called in-process, through
gRPC and through REST (goal: gRPC adds under 15 % at p50), the response sizes, and throughput
with 1, 4 and 8 concurrent gRPC clients with and without server-side batching. Without
--models-dir it exports a small stand-in model (a few strided convolutions) first. Writes
docs/benchmarks/serving.json with the machine it ran on.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench_machine import machine_facts  # the script's folder is on sys.path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cityseg import vocabulary as V  # noqa: E402

log = logging.getLogger("serving_bench")
OUTPUT = ROOT / "docs" / "benchmarks" / "serving.json"


def street_png(height: int = 1024, width: int = 2048, seed: int = 0) -> bytes:
    """A street-like frame: flat regions with mild sensor noise (compresses like a real one)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.float32)
    image[: height // 3] = (70, 130, 180)                 # sky
    image[height // 3: 2 * height // 3] = (70, 70, 70)    # buildings
    image[2 * height // 3:] = (128, 64, 128)              # road
    for _ in range(12):                                   # cars, trees, people
        y, x = rng.integers(0, height - 100), rng.integers(0, width - 200)
        image[y:y + rng.integers(40, 100), x:x + rng.integers(40, 200)] = rng.integers(0, 256, 3)
    image += rng.normal(0, 4, image.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def stand_in_model(models_dir: Path, input_size: tuple[int, int]) -> str:
    """Exports a small conv net as MODELS/bench/1 (the cost of a real-time model's graph)."""
    import keras

    from training.export import export_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = inputs
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    logits = keras.layers.Conv2DTranspose(V.NUM_CATEGORIES, 16, strides=8, padding="same")(x)
    export_model(keras.Model(inputs, logits), models_dir, "bench", stride=8,
                 max_long_side=max(input_size), version=1)
    return "bench"


def percentiles(samples: list[float]) -> dict:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "n": len(samples)}


# Pause before each timed call: after a call, TensorFlow's worker threads in the process that
# ran it spin for a while before sleeping, and on 2 cores that spinning (in this process after
# an in-process call, in the server after a remote one) would be billed to the next call.
SETTLE_S = 0.2


def timed(call, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        time.sleep(SETTLE_S)
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def throughput(target: str, model: str, image: bytes, clients: int, requests: int) -> dict:
    """Requests per second with `clients` threads, each with its own channel."""
    from serving.client import GrpcClient

    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker() -> None:
        with GrpcClient(target, timeout_s=300) as client:
            client.predict([image], model=model)  # connect + warm
            barrier.wait()
            for _ in range(requests):
                started = time.perf_counter()
                client.predict([image], model=model)
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": clients * requests,
            "images_per_s": round(clients * requests / elapsed, 2), **percentiles(latencies)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`cityseg-serve` in its own process, as deployed (client and server share no GIL)."""

    def __init__(self, models_dir: Path, model: str, *extra: str):
        from serving.client import RestClient, ServingError

        self.grpc_port, self.rest_port = free_port(), free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--models-dir", str(models_dir),
             "--host", "127.0.0.1", "--grpc-port", str(self.grpc_port),
             "--rest-port", str(self.rest_port), "--file_system_poll_wait_seconds", "0", *extra],
            cwd=ROOT)
        client = RestClient(f"http://127.0.0.1:{self.rest_port}", timeout_s=5)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if any(state == "AVAILABLE" for _, state in client.model_status(model)):
                    return
            except ServingError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"cityseg-serve exited with {self.process.returncode}")
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("cityseg-serve did not load the model within 300 s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, help="serve these models (default: export "
                                                        "a stand-in into a temp folder)")
    parser.add_argument("--model", help="model name under --models-dir")
    parser.add_argument("--input-size", default="256x512", help="stand-in model's input HxW")
    parser.add_argument("--requests", type=int, default=20, help="latency samples per transport")
    parser.add_argument("--throughput-requests", type=int, default=6,
                        help="requests per client in the throughput runs")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.client import GrpcClient, RestClient, string_tensor
    from serving.config import BatchingOptions

    temp = None
    if args.models_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="serving-bench-")
        models_dir = Path(temp.name)
        height, width = (int(v) for v in args.input_size.split("x"))
        model = stand_in_model(models_dir, (height, width))
    else:
        if not args.model:
            parser.error("--model is required with --models-dir")
        models_dir, model = args.models_dir, args.model

    image = street_png()
    log.info("image: 2048x1024 PNG, %d bytes", len(image))
    version_dir = max((p for p in (models_dir / model).iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name))
    signature = tf.saved_model.load(str(version_dir)).signatures[V.SIGNATURE_NAME]

    # An in-process caller also starts from bytes: making the tensor is part of its cost.
    def call_in_process():
        return signature(**{V.INPUT_KEY: tf.constant(np.array([image], dtype=object))})[
            V.OUTPUT_KEY].numpy()

    result = {"image": {"height": 1024, "width": 2048, "png_bytes": len(image)},
              "model": {"name": model, "stand_in": temp is not None,
                        "input_size": args.input_size if temp is not None else None},
              "machine": machine_facts(tensorflow=True), "latency": {}, "response_bytes": {}, "throughput": {}}

    server = ServerProcess(models_dir, model)
    try:
        target = f"127.0.0.1:{server.grpc_port}"
        with GrpcClient(target, timeout_s=300) as client:
            rest = RestClient(f"http://127.0.0.1:{server.rest_port}", timeout_s=300)
            calls = {"in_process": call_in_process,
                     "grpc": lambda: client.predict([image], model=model),
                     "rest": lambda: rest.predict([image], model=model)}
            # Interleaved, so that all three see the same load on a shared machine.
            log.info("latency: %d rounds of in-process, gRPC, REST", args.requests)
            samples = {name: timed(call, 0, warmup=2) for name, call in calls.items()}
            for _ in range(args.requests):
                for name, call in calls.items():
                    samples[name] += timed(call, 1, warmup=0)
            for name, values in samples.items():
                result["latency"][name] = percentiles(values)

        # Response sizes on the wire (message / body bytes).
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs[V.INPUT_KEY].CopyFrom(string_tensor([image]))
        with grpc.insecure_channel(target, options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20)]) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=300)
        body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{server.rest_port}/v1/models/{model}:predict", data=body,
                method="POST"), timeout=300) as answer:
            rest_bytes = len(answer.read())
        mask = response.outputs[V.OUTPUT_KEY].string_val[0]
        result["response_bytes"] = {"mask_png": len(mask), "grpc": response.ByteSize(),
                                    "rest": rest_bytes, "request_grpc": request.ByteSize(),
                                    "request_rest": len(body)}
        clients = [int(c) for c in args.clients.split(",")]
        result["throughput"]["no_batching"] = []
        for count in clients:
            log.info("throughput without batching, %d clients", count)
            result["throughput"]["no_batching"].append(
                throughput(target, model, image, count, args.throughput_requests))
    finally:
        server.stop()

    batching = BatchingOptions(max_batch_size=8, batch_timeout_micros=5000, num_batch_threads=1)
    batching_file = Path(tempfile.mkdtemp(prefix="serving-bench-")) / "batching.txt"
    batching_file.write_text(f"max_batch_size {{ value: {batching.max_batch_size} }}\n"
                             f"batch_timeout_micros {{ value: {batching.batch_timeout_micros} }}\n"
                             f"num_batch_threads {{ value: {batching.num_batch_threads} }}\n")
    server = ServerProcess(models_dir, model, "--batching_parameters_file", str(batching_file))
    try:
        target = f"127.0.0.1:{server.grpc_port}"
        result["throughput"]["batching"] = []
        result["batching_parameters"] = {"max_batch_size": 8, "batch_timeout_micros": 5000,
                                         "num_batch_threads": 1}
        for count in clients:
            log.info("throughput with batching, %d clients", count)
            result["throughput"]["batching"].append(
                throughput(target, model, image, count, args.throughput_requests))
    finally:
        server.stop()

    base = result["latency"]["in_process"]["p50_ms"]
    overhead = {k: round(result["latency"][k]["p50_ms"] / base - 1, 4) for k in ("grpc", "rest")}
    result["overhead_vs_in_process_p50"] = overhead
    result["goal"] = {"grpc_overhead_below": 0.15, "met": overhead["grpc"] < 0.15}
    result["settings"] = {"requests": args.requests, "settle_s": SETTLE_S,
                          "throughput_requests_per_client": args.throughput_requests}
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    log.info("gRPC p50 %.1f ms vs in-process %.1f ms (overhead %+.1f %%); REST %+.1f %%; -> %s",
             result["latency"]["grpc"]["p50_ms"], base, overhead["grpc"] * 100,
             overhead["rest"] * 100, args.output)
    if temp is not None:
        temp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
