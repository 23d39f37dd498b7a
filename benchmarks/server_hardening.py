"""cityseg-serve under large and abandoned requests: memory and a small call's latency, old vs new.

    python benchmarks/server_hardening.py [--baseline-ref afae84d] [--rounds 2]

Exports a small stand-in model (proxy_load's, working at a long side of 1024 like the default
export), then starts the real `cityseg-serve` from two source trees with the same interpreter,
one after the other: the baseline (a `git worktree` of --baseline-ref, removed afterwards) and
this checkout, the latter with glibc's allocator as is (`--trim-after-pixels 0`), with
`malloc_trim` after large requests (the default), and with jemalloc preloaded (LD_PRELOAD) when
the library is installed. For each server:

- memory: VmRSS once warm, then 4 gRPC Predicts (2 at a time) of a 49 kB all-zero 4096x4096 PNG,
  the peak (VmHWM) and VmRSS 3 s after the last answer;
- abandoned calls (old and new-default only): 8 concurrent Predicts of that PNG with a 0.2 s
  deadline, then one 64x64 call, whose latency is compared with the same call alone.

Writes docs/benchmarks/server_hardening.json and .md.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from bench_machine import reproduce, result_header, write_result  # on sys.path (script folder)
from proxy_footprint import rss_mb
from proxy_load import baseline_worktree, export_stand_in, free_port, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cityseg.cli import HelpFormatter, run_cli  # noqa: E402
from serving.client import GrpcClient, ServingError  # noqa: E402

log = logging.getLogger("server_hardening")
OUTPUT = ROOT / "docs" / "benchmarks" / "server_hardening.json"
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
MODEL = "standin"
BIG = 4096
SETTLE_S = 3.0


def zero_png(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, timeout_s: float = 120) -> None:
    """Returns once the process uses under 10 % of a core over half a second."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = cpu_s(pid)
        time.sleep(0.5)
        if cpu_s(pid) - before < 0.05:
            return
    raise RuntimeError(f"process {pid} still busy after {timeout_s:.0f} s")


def peak_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for {pid}")


class Server:
    """cityseg-serve from `tree` in a subprocess, on a free gRPC port, REST off."""

    def __init__(self, tree: Path, models_dir: Path, logs, *, flags=(), preload=None):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2",
               "CUDA_VISIBLE_DEVICES": ""}
        if preload is not None:
            env["LD_PRELOAD"] = str(preload)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--models-dir", str(models_dir),
             "--grpc-port", str(self.port), "--rest-port", "-1", *flags],
            cwd=tree, env=env, stdout=logs, stderr=subprocess.STDOUT)
        self.target = f"127.0.0.1:{self.port}"
        with GrpcClient(self.target, timeout_s=2.0) as probe:
            wait_until(lambda: any(s == "AVAILABLE" for _, s in probe.model_status(MODEL)),
                       "cityseg-serve", 180, self.process)

    def stop(self) -> None:
        stop(self.process)


def predict_s(target: str, image: bytes, timeout_s: float = 120) -> float:
    with GrpcClient(target, timeout_s=timeout_s, retries=0) as client:
        started = time.perf_counter()
        client.predict([image], model=MODEL)
        return time.perf_counter() - started


def in_threads(count: int, call) -> list:
    """`call()` from `count` threads at once; each one's result, or the ServingError it raised."""
    def one(_) -> object:
        try:
            return call()
        except ServingError as err:
            return err

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def measure_memory(server: Server, big: bytes, small: bytes) -> dict:
    pid = server.process.pid
    predict_s(server.target, small)
    wait_idle(pid)
    warm = rss_mb(pid)
    seconds = []
    for _ in range(2):  # 4 calls, 2 at a time: the cores of this machine
        seconds += in_threads(2, lambda: predict_s(server.target, big))
    time.sleep(SETTLE_S)
    after = rss_mb(pid)
    return {"warm_rss_mb": warm, "peak_mb": peak_mb(pid), "rss_after_mb": after,
            "retained_mb": round(after - warm, 1),
            "big_call_p50_s": round(statistics.median(seconds), 3)}


def measure_abandoned(server: Server, big: bytes, small: bytes, rounds: int) -> dict:
    """A small call's latency alone and right after 8 abandoned large calls, per round."""
    pid, rows = server.process.pid, []
    for _ in range(rounds):
        wait_idle(pid)  # whatever the previous round left running has finished
        alone = min(predict_s(server.target, small) for _ in range(3))
        before = cpu_s(pid)
        errors = in_threads(8, lambda: predict_s(server.target, big, timeout_s=0.2))
        after = predict_s(server.target, small)
        wait_idle(pid)
        rows.append({"alone_s": round(alone, 3), "after_abandoned_s": round(after, 3),
                     "timed_out": sum(isinstance(e, ServingError) for e in errors),
                     "server_cpu_s": round(cpu_s(pid) - before, 2)})
        log.info("  %s", rows[-1])
    return {"rounds": rows, **{key: statistics.median(r[key] for r in rows)
                               for key in ("alone_s", "after_abandoned_s", "server_cpu_s")}}


def to_markdown(result: dict) -> str:
    lines = ["# cityseg-serve under large and abandoned requests", "",
             f"Generated {result['generated']} by `{result['command']}` on "
             f"{result['machine']['nproc']} CPU cores ({result['machine']['cpu_model']}), "
             f"TensorFlow {result['machine'].get('tensorflow', '?')}.", "",
             f"- Model: {result['settings']['model']}.",
             f"- Large request: {result['settings']['big_png']}; 4 calls, 2 at a time; "
             f"RSS read {SETTLE_S:g} s after the last answer.",
             f"- Baseline: {result['baseline']['ref']} ({result['baseline']['commit']}).",
             f"- Load average (1 min) before and after the run: "
             f"{' / '.join(map(str, result['load_average']))} on "
             f"{result['machine']['nproc']} cores (other jobs share the machine).", "",
             "| server | RSS warm MiB | peak (VmHWM) MiB | RSS after MiB | retained MiB | "
             "large call p50 s |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in result["memory"].items():
        lines.append(f"| {name} | {row['warm_rss_mb']} | {row['peak_mb']} | "
                     f"{row['rss_after_mb']} | {row['retained_mb']} | {row['big_call_p50_s']} |")
    lines += ["", "A 64x64 call alone and right after 8 concurrent 4096x4096 calls whose callers "
              "gave up after 0.2 s (median of the rounds):", "",
              "| server | alone s | after the abandoned calls s | server CPU s for them |",
              "|---|---:|---:|---:|"]
    for name, row in result["abandoned"].items():
        lines.append(f"| {name} | {row['alone_s']} | {row['after_abandoned_s']} | "
                     f"{row['server_cpu_s']} |")
    lines += reproduce(result["command"])
    return "\n".join(lines)


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
        epilog="examples:\n  python benchmarks/server_hardening.py --baseline-ref afae84d\n"
               "  python benchmarks/server_hardening.py --rounds 1 --output /tmp/h.json")
    parser.add_argument("--baseline-ref", default="afae84d",
                        help="git revision of the server to compare with")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of abandoned calls")
    parser.add_argument("--jemalloc", type=Path, default=JEMALLOC,
                        help="jemalloc to preload for the third server (skipped if absent)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")

    big, small = zero_png(BIG), zero_png(64)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="server-hardening-") as tmp, \
            open(Path(tmp) / "servers.log", "w") as logs, \
            baseline_worktree(args.baseline_ref, Path(tmp) / "baseline") as revision:
        base = Path(tmp)
        baseline = base / "baseline"
        models_dir = base / "models"
        export_stand_in(models_dir, MODEL, (512, 1024))
        variants = {
            f"old ({args.baseline_ref})": (baseline, (), None, True),
            "new, glibc as is (--trim-after-pixels 0)": (
                ROOT, ("--trim-after-pixels", "0"), None, False),
            "new (default: malloc_trim after >= 4 Mpx)": (ROOT, (), None, True),
        }
        if args.jemalloc.is_file():
            variants["new + jemalloc (LD_PRELOAD, no trim)"] = (
                ROOT, ("--trim-after-pixels", "0"), args.jemalloc, False)
        memory, abandoned = {}, {}
        for name, (tree, flags, preload, latency) in variants.items():
            log.info("%s", name)
            server = Server(tree, models_dir, logs, flags=flags, preload=preload)
            try:
                memory[name] = measure_memory(server, big, small)
                log.info("  %s", memory[name])
                if latency:
                    abandoned[name] = measure_abandoned(server, big, small, args.rounds)
            finally:
                server.stop()

    result = {
        **result_header("server_hardening.py", list(argv or sys.argv[1:])),
        "baseline": {"ref": args.baseline_ref, "commit": revision},
        "settings": {"model": "proxy_load's stand-in conv net, export --max-long-side 1024",
                     "big_png": f"all-zero {BIG}x{BIG} RGB PNG, {len(big)} bytes",
                     "rounds": args.rounds,
                     "jemalloc": str(args.jemalloc) if args.jemalloc.is_file() else None},
        # Other jobs share the machine: its 1-minute load average before and after the run.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "memory": memory,
        "abandoned": abandoned,
    }
    write_result(args.output, result, to_markdown(result))
    for name, row in memory.items():
        print(f"{name}: peak {row['peak_mb']} MiB, after {row['rss_after_mb']} MiB "
              f"(retained {row['retained_mb']})")
    for name, row in abandoned.items():
        print(f"{name}: small call alone {row['alone_s']} s, after abandoned "
              f"{row['after_abandoned_s']} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("server_hardening", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
