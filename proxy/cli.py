"""`cityseg-proxy`: serves the image-id API and web page (gunicorn; Flask's server with --debug).

    cityseg-proxy --data-dir DATA --raw-root RAW --serving localhost:8500 --model unet
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Sequence

from cityseg.cli import CliError, HelpFormatter, run_cli, setup_logging

log = logging.getLogger("cityseg-proxy")

PROG = "cityseg-proxy"
# prometheus_client's switch to its multi-process mode (a folder shared by the workers).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# gunicorn kills a worker that stays silent this much longer than the gRPC deadline, so a slow
# model answers 504 through the handler instead of the worker being killed mid-request.
WORKER_TIMEOUT_MARGIN_S = 20
# gevent workers (see proxy.worker): slow clients hold greenlets, not the threads that answer.
WORKER_CLASS = "proxy.worker.GeventGrpcWorker"

EPILOG = """\
examples:
  # production: gunicorn, 2 gevent worker processes, on all interfaces
  cityseg-proxy --data-dir data --raw-root raw --serving localhost:8500 --model unet \\
      --host 0.0.0.0 --workers 2

  # development: Flask's server with the debugger and reloader
  cityseg-proxy --data-dir data --raw-root raw --serving localhost:8500 --model unet --debug

  # the same settings from the environment
  CITYSEG_DATA_DIR=data CITYSEG_RAW_ROOT=raw CITYSEG_SERVING=localhost:8500 \\
      CITYSEG_MODEL=unet cityseg-proxy

then: curl localhost:5000/api/v1/images?split=val&limit=5
      curl localhost:5000/api/v1/images/frankfurt_000000_000294/segmentation
"""


@dataclass(frozen=True)
class ProxyConfig:
    """Everything one proxy run needs; impossible values raise at start-up."""

    data_dir: str
    raw_root: str
    serving: str
    model: str
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    connections: int = 1000
    timeout_s: float = 10.0
    read_timeout_s: int = 15
    max_pixels: int | None = None
    debug: bool = False

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise CliError(f"--port must be 0..65535, not {self.port}")
        if self.workers < 1 or self.connections < 1:
            raise CliError("--workers and --connections must be at least 1")
        if self.timeout_s <= 0:
            raise CliError(f"--timeout must be positive, not {self.timeout_s}")
        if self.read_timeout_s < 1:
            raise CliError(f"--read-timeout must be at least 1 s, not {self.read_timeout_s}")

    def app_config(self) -> dict:
        """The `create_app` configuration for these settings."""
        config = {"DATA_DIR": self.data_dir, "RAW_ROOT": self.raw_root,
                  "SERVING": self.serving, "MODEL": self.model,
                  "SERVING_TIMEOUT_S": self.timeout_s, "READ_TIMEOUT_S": self.read_timeout_s}
        if self.max_pixels is not None:
            config["MAX_PIXELS"] = self.max_pixels
        return config


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog=PROG, description="The image-id API for the decision system, and its web page.",
        epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--data-dir", default=env("CITYSEG_DATA_DIR"),
                        help="preprocessing output with manifest.jsonl, a folder or a URL "
                             "(gs:// with gcsfs, s3:// with s3fs) (env CITYSEG_DATA_DIR)")
    parser.add_argument("--raw-root", default=env("CITYSEG_RAW_ROOT"),
                        help="raw Cityscapes tree the manifest points into, a folder or a URL "
                             "(env CITYSEG_RAW_ROOT)")
    parser.add_argument("--serving", default=env("CITYSEG_SERVING", "localhost:8500"),
                        help="model server gRPC address HOST:PORT (env CITYSEG_SERVING)")
    parser.add_argument("--model", default=env("CITYSEG_MODEL"),
                        help="served model name (env CITYSEG_MODEL)")
    parser.add_argument("--host", default=env("CITYSEG_HOST", "127.0.0.1"),
                        help="interface to listen on (env CITYSEG_HOST)")
    parser.add_argument("--port", type=int, default=int(env("CITYSEG_PORT", "5000")),
                        help="HTTP port (env CITYSEG_PORT)")
    parser.add_argument("--workers", type=int, default=int(env("CITYSEG_WORKERS", "1")),
                        help="gunicorn worker processes (env CITYSEG_WORKERS)")
    parser.add_argument("--connections", type=int,
                        default=int(env("CITYSEG_CONNECTIONS", "1000")),
                        help="most client connections one worker holds at once, slow ones "
                             "included (env CITYSEG_CONNECTIONS)")
    parser.add_argument("--timeout", type=float, dest="timeout_s",
                        default=float(env("CITYSEG_TIMEOUT", "10")),
                        help="deadline of each model-server call in seconds; gunicorn's worker "
                             f"timeout is this + {WORKER_TIMEOUT_MARGIN_S} (env CITYSEG_TIMEOUT)")
    parser.add_argument("--read-timeout", type=int, dest="read_timeout_s",
                        default=int(env("CITYSEG_READ_TIMEOUT", "15")),
                        help="seconds a client has to send a request's headers (from its "
                             "connection or its previous answer), and again its body; also "
                             "how long an idle keep-alive connection stays open "
                             "(env CITYSEG_READ_TIMEOUT)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="largest upload in pixels (default: 16 Mpx)")
    parser.add_argument("--debug", action="store_true",
                        help="Flask's development server with debugger and reloader")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def parse_config(argv: Sequence[str] | None) -> tuple[ProxyConfig, bool]:
    """Parses flags (environment variables as defaults) into a config and the verbose flag."""
    args = build_parser().parse_args(argv)
    for flag in ("data_dir", "raw_root", "model"):
        if not getattr(args, flag):
            option = "--" + flag.replace("_", "-")
            raise CliError(f"{option} is required (or CITYSEG_{flag.upper()})")
    verbose = args.verbose
    fields = {k: v for k, v in vars(args).items() if k != "verbose"}
    return ProxyConfig(**fields), verbose


def _main(argv: Sequence[str] | None) -> int:
    config, verbose = parse_config(argv)
    setup_logging(verbose)
    _check(config)
    if config.debug:
        from proxy.app import create_app

        log.info("development server on http://%s:%d/", config.host, config.port)
        create_app(config.app_config()).run(host=config.host, port=config.port, debug=True,
                                            threaded=True)
        return 0
    # prometheus_client picks its multi-process mode when it is first imported, so its folder
    # is set before anything imports it in this master process, whose imports the workers
    # inherit. A fresh folder: old files would add old counts.
    previous = os.environ.get(MULTIPROC_ENV)
    master = os.getpid()
    os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="cityseg-proxy-metrics-")
    try:
        run_gunicorn(config)
    finally:
        # gunicorn's workers are forks of this process and leave through this frame too
        # (SystemExit): only the master removes the folder.
        if os.getpid() == master:
            shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)
            if previous is None:
                del os.environ[MULTIPROC_ENV]
            else:
                os.environ[MULTIPROC_ENV] = previous
    return 0


def _check(config: ProxyConfig) -> None:
    """Checks the settings and reads the manifest once here, so that a mistake fails now, in
    one line, rather than in every gunicorn worker (without building an app: see _main)."""
    from proxy.resolver import Resolver
    from proxy.settings import load_settings

    settings = load_settings(config.app_config())
    resolver = Resolver.from_data_dir(settings["DATA_DIR"], settings["RAW_ROOT"])
    log.info("serving %d image ids; model %s at %s", len(resolver), config.model, config.serving)


def _worker_exited(server, worker) -> None:
    """gunicorn's child_exit hook: prometheus_client's book-keeping for a dead worker."""
    # Not at the top of the module: prometheus_client must be imported after _main has set
    # MULTIPROC_ENV (see there).
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def run_gunicorn(config: ProxyConfig) -> None:
    """Runs the app under gunicorn: `workers` gevent processes of `connections` each.

    `PROMETHEUS_MULTIPROC_DIR` must name an empty folder before this process imports
    prometheus_client (`_main` makes a fresh one), so that `/metrics` adds up all workers.
    """
    from gunicorn.app.base import BaseApplication

    class ProxyApplication(BaseApplication):
        def load_config(self):
            options = {
                "bind": f"{config.host}:{config.port}",
                "workers": config.workers,
                "worker_class": WORKER_CLASS,
                "worker_connections": config.connections,
                # The gevent worker reads each request's headers under this deadline (and
                # closes a connection idle for as long); proxy.deadlines bounds the body.
                "keepalive": config.read_timeout_s,
                "timeout": int(config.timeout_s) + WORKER_TIMEOUT_MARGIN_S,
                "graceful_timeout": 10,
                "accesslog": "-",
                # gunicorn's default line with the worker's pid: which process answered.
                "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s '
                                     '"%(f)s" "%(a)s" pid=%(p)s',
                "errorlog": "-",
                "proc_name": PROG,
                # Each worker builds its own app after the fork: gRPC channels must not be
                # shared across fork.
                "preload_app": False,
                "child_exit": _worker_exited,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            from proxy.app import create_app

            return create_app(config.app_config())

    log.info("gunicorn on http://%s:%d/ (%d gevent worker(s) x %d connections, read timeout "
             "%d s)", config.host, config.port, config.workers, config.connections,
             config.read_timeout_s)
    ProxyApplication().run()


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
