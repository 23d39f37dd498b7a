"""`cityseg-serve`: a TensorFlow-Serving-compatible model server for machines without Docker.

    cityseg-serve --models-dir MODELS --grpc-port 8500 --rest-port 8501

Serves every SavedModel under MODELS/{name}/{version}/ on TF Serving's gRPC and REST APIs,
polls for new versions and swaps them in without failing requests. Accepts the common
`tensorflow_model_server` flags (--port, --rest_api_port, --model_config_file, ...), so the
same command lines and config files work for both.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

from cityseg.cli import CliError, HelpFormatter, run_cli, setup_logging
from cityseg.images import DEFAULT_MAX_PIXELS
from serving.config import (
    BatchingOptions,
    ModelConfig,
    is_url,
    model_path,
    read_batching_parameters,
    read_model_config_file,
    read_monitoring_config,
)
from serving.limits import DEFAULT_MAX_BATCH, DEFAULT_TRIM_AFTER_PIXELS, RequestLimits
from serving.protocol import DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger("cityseg.serve")

# The label value of every model name the server does not serve.
OTHER_LABEL = "other"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class ServerOptions:
    """Everything `start_server` can be told (the CLI fills it from flags)."""

    models_dir: str | None = None      # a local folder or a URL (gs://, s3://, ram://)
    model_configs: list[ModelConfig] | None = None
    grpc_port: int = 0
    rest_port: int = 0                 # None disables REST
    host: str = "127.0.0.1"
    poll_wait_s: float = 1.0           # 0: load once at start, never poll again
    batching: BatchingOptions | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    rest_timeout_s: float = 30.0
    num_threads: int = field(default_factory=lambda: max(8, 4 * (os.cpu_count() or 1)))
    monitoring_path: str | None = None
    unload_grace_s: float = 60.0
    # What the server refuses (docs/serving.md, "What the server refuses").
    limits: RequestLimits = field(default_factory=RequestLimits)
    max_concurrent_predicts: int = field(default_factory=lambda: default_concurrency())
    max_queued_predicts: int | None = None        # None: num_threads
    grpc_max_concurrent_rpcs: int | None = None   # None: 4 x num_threads
    rest_read_timeout_s: float = 30.0
    first_retry_s: float = 1.0                    # a failed load is retried after this, doubling

    def __post_init__(self):
        if self.models_dir is None and self.model_configs is None:
            raise ValueError("give --models-dir or --model_config_file")
        if self.models_dir is not None:
            self.models_dir = model_path(self.models_dir)
            if not models_dir_exists(self.models_dir):
                raise FileNotFoundError(f"models dir {self.models_dir} does not exist")
        for name, port in (("gRPC", self.grpc_port), ("REST", self.rest_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"{name} port must be 0..65535, not {port}")
        if self.poll_wait_s < 0:
            raise ValueError("poll interval must be >= 0 seconds")
        if self.max_message_bytes <= 0:
            raise ValueError("max message size must be positive")
        if self.rest_timeout_s <= 0:
            raise ValueError("REST timeout must be positive")
        if self.num_threads < 1:
            raise ValueError("thread count must be >= 1")
        if self.max_queued_predicts is None:
            self.max_queued_predicts = self.num_threads
        if self.grpc_max_concurrent_rpcs is None:
            self.grpc_max_concurrent_rpcs = 4 * self.num_threads
        if self.max_concurrent_predicts < 1 or self.max_queued_predicts < 0:
            raise ValueError("need >= 1 concurrent and >= 0 queued predicts")
        if self.grpc_max_concurrent_rpcs < 1:
            raise ValueError("gRPC concurrent RPCs must be >= 1")
        if self.rest_read_timeout_s <= 0 or self.first_retry_s <= 0:
            raise ValueError("REST read timeout and load retry interval must be positive")


def models_dir_exists(path: str) -> bool:
    """Whether a models folder exists; a URL is asked through `tf.io.gfile`.

    Local folders are checked with `os` so that a flag error answers without loading
    TensorFlow. `gs://` is built into TensorFlow; other schemes (`s3://`, `hdfs://`) come from
    `tensorflow-io`'s plugins, which register themselves when it is imported.

    Raises:
      ValueError: for a URL scheme no installed file system handles.
    """
    if not is_url(path):
        return os.path.isdir(path)
    import tensorflow as tf

    def isdir() -> bool:  # gfile.isdir answers False for an unknown scheme; exists raises
        return tf.io.gfile.exists(path) and tf.io.gfile.isdir(path)

    try:
        try:
            return isdir()
        except tf.errors.UnimplementedError:
            try:
                import tensorflow_io  # noqa: F401 - registers s3://, hdfs://, az:// with gfile
            except ImportError:
                raise ValueError(f"TensorFlow has no file system for {path.split('://')[0]}:// "
                                 f"(pip install tensorflow-io, the version for your "
                                 f"TensorFlow)") from None
            return isdir()
    except tf.errors.OpError as err:  # credentials, network: one line, not a traceback
        raise ValueError(f"cannot read models dir {path}: {' '.join(err.message.split())}") \
            from None


def default_concurrency() -> int:
    """Model calls at once: the cores, at most 4 (TensorFlow already spreads one call over the
    cores; more calls at once only share them and multiply peak memory)."""
    return max(1, min(4, os.cpu_count() or 1))


class Metrics:
    """Request counts and latency sums per API, model and status; batch sizes per model.

    prometheus_client writes the exposition (and escapes label values). The label values come
    from closed sets only: the API (`grpc`, `rest`), the status code's name, and the model name
    when the server knows that model (`other` for any name a request makes up), so a client can
    neither inject a line nor add a series per request.
    """

    def __init__(self, known_models: Callable[[], Iterable[str]]):
        self._known_models = known_models
        self.registry = CollectorRegistry(auto_describe=True)
        self._count = Counter("cityseg_serving_request_count",
                              "Predict requests by API, model and status code.",
                              ("api", "model_name", "status"), registry=self.registry)
        self._seconds = Counter("cityseg_serving_request_seconds",
                                "Time spent answering Predict requests, by API and model.",
                                ("api", "model_name"), registry=self.registry)
        self._batch_size = Histogram("cityseg_serving_batch_size",
                                     "Rows (images) per call of a signature that batching merged.",
                                     ("model_name",), buckets=BATCH_SIZE_BUCKETS,
                                     registry=self.registry)

    def observe(self, api: str, model: str, code: grpc.StatusCode, seconds: float) -> None:
        model = model if model in self._known_models() else OTHER_LABEL
        self._count.labels(api, model, code.name).inc()
        self._seconds.labels(api, model).inc(seconds)

    def observe_batch(self, model: str, rows: int) -> None:
        """Records one merged call (the model is a loaded one: its name is a known label)."""
        self._batch_size.labels(model).observe(rows)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) in the format the scraper's Accept header asks for."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class ServerHandle:
    """A running server: its ports, its registry, and `stop()`."""

    def __init__(self, options: ServerOptions):
        # Imported here, not at the top, so that `cityseg-serve --help` and flag errors answer
        # without loading TensorFlow (these modules import it); no cycle hides behind this.
        from serving.admission import WorkQueue
        from serving.grpc_service import add_services
        from serving.registry import ModelRegistry
        from serving.rest import RestApi, make_http_server

        self.options = options
        # Each needs the other: the metrics label only the registry's model names, and the
        # registry's batchers report their batch sizes to the metrics.
        self.metrics = Metrics(lambda: self.registry.names())
        self.registry = ModelRegistry(options.model_configs, models_dir=options.models_dir,
                                      batching=options.batching,
                                      unload_grace_s=options.unload_grace_s,
                                      on_batch=self.metrics.observe_batch,
                                      limits=options.limits,
                                      work=WorkQueue(options.max_concurrent_predicts,
                                                     options.max_queued_predicts),
                                      first_retry_s=options.first_retry_s)
        message_options = [("grpc.max_send_message_length", options.max_message_bytes),
                           ("grpc.max_receive_message_length", options.max_message_bytes)]
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.num_threads,
                                       thread_name_prefix="grpc"),
            options=message_options,
            # More RPCs than this at once are refused RESOURCE_EXHAUSTED by gRPC itself.
            maximum_concurrent_rpcs=options.grpc_max_concurrent_rpcs)
        add_services(self._grpc, self.registry, self.metrics)
        try:
            self.grpc_port = self._grpc.add_insecure_port(f"{_grpc_host(options.host)}:"
                                                          f"{options.grpc_port}")
        except RuntimeError:  # newer grpcio raises instead of returning 0
            self.grpc_port = 0
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC port {options.grpc_port} on {options.host}")
        self._rest_api = self._http = None
        self.rest_port = None
        if options.rest_port is not None:
            self._rest_api = RestApi(
                self.registry, timeout_s=options.rest_timeout_s,
                # base64 inflates by 4/3; leave room for the JSON around it.
                max_body_bytes=options.max_message_bytes * 4 // 3 + 1024 * 1024,
                num_threads=options.num_threads, metrics=self.metrics,
                monitoring_path=options.monitoring_path,
                read_timeout_s=options.rest_read_timeout_s)
            self._http = make_http_server(self._rest_api, options.host, options.rest_port,
                                          max_connections=options.num_threads)
            self.rest_port = self._http.server_address[1]
        self._stop = threading.Event()
        self._first_poll = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, wait_for_models: bool = True) -> "ServerHandle":
        self._grpc.start()
        log.info("gRPC on %s:%d", self.options.host, self.grpc_port)
        if self._http is not None:
            thread = threading.Thread(target=self._http.serve_forever, name="rest", daemon=True)
            thread.start()
            self._threads.append(thread)
            log.info("REST on http://%s:%d/v1/models/", self.options.host, self.rest_port)
        poller = threading.Thread(target=self._poll_loop, name="poll", daemon=True)
        poller.start()
        self._threads.append(poller)
        if wait_for_models:
            self._first_poll.wait()
        return self

    def wait_for_models(self, timeout_s: float | None = None) -> bool:
        """Blocks until the first scan of the model folders has loaded what it found."""
        return self._first_poll.wait(timeout_s)

    def poll_now(self) -> None:
        """Scans the model folders at once (tests use it instead of waiting a poll period)."""
        self.registry.poll()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.registry.poll()
            except Exception:  # noqa: BLE001 - one bad scan must not stop the poller
                log.exception("model poll failed")
            self._first_poll.set()
            if self.options.poll_wait_s == 0 or self._stop.wait(self.options.poll_wait_s):
                return

    def stop(self, grace_s: float = 5.0) -> None:
        """Stops accepting requests, lets in-flight ones finish (up to grace_s), unloads."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self._grpc.stop(grace_s).wait()
        if self._rest_api is not None:
            self._rest_api.close()
        self.registry.close()
        log.info("server stopped")

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def start_server(models_dir: str | os.PathLike | None, grpc_port: int = 0, rest_port: int = 0,
                 *, wait_for_models: bool = True, **opts) -> ServerHandle:
    """Starts cityseg-serve in this process (tests and other stages use it on free ports).

    Args:
      models_dir: folder of `{name}/{version}/` SavedModels; None with `model_configs=`.
      grpc_port: 0 picks a free port (read it back from `.grpc_port`).
      rest_port: 0 picks a free port; None disables REST.
      wait_for_models: return only after the first scan has loaded what it found.
      **opts: any other `ServerOptions` field (batching, poll_wait_s, host, ...).

    Returns:
      A handle with `.grpc_port`, `.rest_port`, `.registry` and `.stop()`.
    """
    options = ServerOptions(models_dir=models_dir, grpc_port=grpc_port, rest_port=rest_port,
                            **opts)
    return ServerHandle(options).start(wait_for_models=wait_for_models)


# --- CLI ----------------------------------------------------------------------------------

EPILOG = """\
examples:
  cityseg-serve --models-dir models
  cityseg-serve --models-dir models --grpc-port 8500 --rest-port 8501 --enable_batching
  cityseg-serve --model_config_file docker/models.config --port 8500 --rest_api_port 8501 \\
      --batching_parameters_file docker/batching_parameters.txt \\
      --monitoring_config_file docker/monitoring.config
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityseg-serve", description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter, epilog=EPILOG)
    parser.add_argument("--models-dir", "--model_base_dir", dest="models_dir", type=model_path,
                        help="serve every model folder under this directory (a local folder "
                             "or a URL: gs://bucket/models, s3://... with tensorflow-io)")
    parser.add_argument("--model_config_file", type=Path,
                        help="ModelServerConfig text proto (names, base paths, version "
                             "policies, labels); relative base paths are relative to it")
    parser.add_argument("--model_name", help="with --model_base_path: serve one model")
    parser.add_argument("--model_base_path", type=model_path,
                        help="folder (or URL) of one model's versions")
    parser.add_argument("--grpc-port", "--port", dest="grpc_port", type=int, default=8500)
    parser.add_argument("--rest-port", "--rest_api_port", dest="rest_port", type=int,
                        default=8501, help="0 picks a free port, -1 disables REST")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind")
    parser.add_argument("--file_system_poll_wait_seconds", "--poll-seconds", type=float,
                        default=1.0, help="how often to look for new versions (0: never)")
    parser.add_argument("--enable_batching", type=_flag_bool, nargs="?", const=True,
                        default=False, help="merge concurrent requests into batched calls")
    parser.add_argument("--batching_parameters_file", type=Path,
                        help="BatchingParameters text proto (implies --enable_batching)")
    parser.add_argument("--rest_api_timeout_in_ms", type=int, default=30000)
    parser.add_argument("--grpc_max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="max gRPC send/receive message size (also bounds REST bodies)")
    parser.add_argument("--rest_api_num_threads", "--threads", dest="threads", type=int,
                        default=max(8, 4 * (os.cpu_count() or 1)))
    limits = parser.add_argument_group(
        "what the server refuses (docs/serving.md)")
    limits.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="most rows (images) in one request; more: INVALID_ARGUMENT")
    limits.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="most pixels, read from the PNG/JPEG headers, of all the images of "
                             "one request (the proxy's default); more: INVALID_ARGUMENT")
    limits.add_argument("--max-concurrent-predicts", type=int, default=default_concurrency(),
                        help="model calls at once (without batching)")
    limits.add_argument("--max-queued-predicts", type=int, default=None,
                        help="requests waiting for a turn (default: --rest_api_num_threads); "
                             "more: UNAVAILABLE. A request whose caller left while it waited "
                             "is dropped, never run")
    limits.add_argument("--grpc-max-concurrent-rpcs", type=int, default=None,
                        help="gRPC calls in the server at once (default: 4x "
                             "--rest_api_num_threads); more: RESOURCE_EXHAUSTED")
    limits.add_argument("--rest-read-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="time a REST client has to send a whole request (408 after it); "
                             "idle keep-alive connections close after it too")
    limits.add_argument("--trim-after-pixels", type=int, default=DEFAULT_TRIM_AFTER_PIXELS,
                        help="after a request with this many pixels, hand freed heap memory "
                             "back to the system (glibc malloc_trim; 0: never)")
    parser.add_argument("--monitoring_config_file", type=Path,
                        help="MonitoringConfig text proto enabling Prometheus metrics on REST")
    parser.add_argument("--allow_version_labels_for_unavailable_models", type=_flag_bool,
                        nargs="?", const=True, default=True,
                        help="accepted for tensorflow_model_server compatibility: labels may "
                             "always name versions that are not loaded yet")
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0,
                        help="accepted for compatibility; the model config is read once at "
                             "start (version folders are still polled)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _flag_bool(text: str) -> bool:
    """tensorflow_model_server's boolean flags: --flag, --flag=true, --flag=false."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    """Turns parsed flags into ServerOptions, refusing impossible combinations."""
    sources = [args.models_dir is not None, args.model_config_file is not None,
               args.model_base_path is not None]
    if sum(sources) != 1:
        raise CliError("give exactly one of --models-dir, --model_config_file or "
                       "--model_name/--model_base_path")
    configs = None
    if args.model_config_file is not None:
        configs = read_model_config_file(args.model_config_file)
        if not configs:
            raise CliError(f"{args.model_config_file} configures no models")
    elif args.model_base_path is not None:
        base = args.model_base_path
        name = args.model_name or os.path.basename(base)
        configs = [ModelConfig(name=name, base_path=base if is_url(base)
                               else os.fspath(Path(base).resolve()))]
    batching = None
    if args.batching_parameters_file is not None:
        batching = read_batching_parameters(args.batching_parameters_file)
    elif args.enable_batching:
        batching = BatchingOptions()
    monitoring = None
    if args.monitoring_config_file is not None:
        monitoring = read_monitoring_config(args.monitoring_config_file)
    return ServerOptions(
        models_dir=args.models_dir, model_configs=configs, grpc_port=args.grpc_port,
        rest_port=None if args.rest_port < 0 else args.rest_port, host=args.host,
        poll_wait_s=args.file_system_poll_wait_seconds, batching=batching,
        max_message_bytes=args.grpc_max_message_bytes,
        rest_timeout_s=args.rest_api_timeout_in_ms / 1000, num_threads=args.threads,
        monitoring_path=monitoring,
        limits=RequestLimits(args.max_batch, args.max_pixels, args.trim_after_pixels),
        max_concurrent_predicts=args.max_concurrent_predicts,
        max_queued_predicts=args.max_queued_predicts,
        grpc_max_concurrent_rpcs=args.grpc_max_concurrent_rpcs,
        rest_read_timeout_s=args.rest_read_timeout)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    options = options_from_args(args)
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        handle = ServerHandle(options)
    except OSError as err:
        raise CliError(f"cannot start: {err}") from None
    handle.start(wait_for_models=False)
    started = time.monotonic()
    while not stop.wait(0.5):
        if handle.wait_for_models(0) and started is not None:
            available = handle.registry.available()
            log.info("serving %s", ", ".join(f"{n} {v}" for n, v in available.items()) or
                     "no models yet (waiting for version folders)")
            started = None
    handle.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("cityseg-serve", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
