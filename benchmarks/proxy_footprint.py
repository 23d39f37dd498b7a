"""The proxy's footprint: gunicorn master memory, cold start, and installed size, old vs new.

    python benchmarks/proxy_footprint.py --baseline-ref REV [--runs 3] [--proxy-venv DIR]

Starts the real `cityseg-serve` on a tiny exported model, then starts `cityseg-proxy` (gunicorn,
1 worker) from two source trees with the same interpreter, one after the other, --runs times
each, alternating: the baseline (a `git worktree` of --baseline-ref, removed afterwards) and this
checkout. For each start it records the time from process start to the first 200 on /readyz,
the gunicorn master's and worker's resident memory (VmRSS) once ready, and whether
libtensorflow is mapped into the master. With --proxy-venv (or a venv it builds with
`pip install '.[proxy]'` unless --no-install) this checkout's proxy is also started from that
TensorFlow-free install.

Installed size: the du of that venv's site-packages, and for both trees the files of the
distributions their proxy needs, summed from the full venv's RECORDs (the dependency closure of
the old install_requires, of the new core + `proxy` extra, and of `test`, everything).
Writes docs/benchmarks/proxy_footprint.json.
"""
from __future__ import annotations

import argparse
import configparser
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

from bench_machine import machine_facts  # the script's folder is on sys.path
from proxy_load import (baseline_worktree, export_stand_in, free_port, model_server, stop,
                        write_dataset)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cityseg.cli import HelpFormatter  # noqa: E402

log = logging.getLogger("proxy_footprint")
OUTPUT = ROOT / "docs" / "benchmarks" / "proxy_footprint.json"
MODEL = "tiny"
HEAVY = ("tensorflow", "keras", "apache-beam", "tensorboard", "matplotlib")


# --- memory and cold start -------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def maps_libtensorflow(pid: int) -> bool:
    return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()


def start_proxy(python: str, tree: Path, *, data_dir: Path, raw_root: Path, grpc_port: int,
                logs) -> dict:
    """Starts the proxy of `tree` with `python`; measures it once /readyz answers 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/readyz"
    # cwd and PYTHONPATH put `tree` first on sys.path, ahead of the editable install's finder.
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": ""}
    started = time.perf_counter()
    process = subprocess.Popen(
        [python, "-m", "proxy.cli", "--data-dir", str(data_dir), "--raw-root", str(raw_root),
         "--serving", f"127.0.0.1:{grpc_port}", "--model", MODEL, "--port", str(port),
         "--workers", "1"],
        cwd=tree, env=env, stdout=logs, stderr=subprocess.STDOUT)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"proxy from {tree} exited with {process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - started > 180:
                raise RuntimeError(f"proxy from {tree} not ready within 180 s")
            time.sleep(0.02)
        cold_start = time.perf_counter() - started
        time.sleep(1.0)  # let the master settle after the worker's first request
        workers = children(process.pid)
        return {"cold_start_s": round(cold_start, 2),
                "master_rss_mb": rss_mb(process.pid),
                "worker_rss_mb": [rss_mb(w) for w in workers],
                "master_maps_libtensorflow": maps_libtensorflow(process.pid)}
    finally:
        stop(process)


def which_source(python: str, tree: Path) -> str:
    """The file `proxy.app` is imported from when started like the proxy (a sanity check)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([python, "-c", "import proxy.app; print(proxy.app.__file__)"],
                          cwd=tree, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def summarize_runs(runs: list[dict]) -> dict:
    return {
        "cold_start_s": statistics.median(r["cold_start_s"] for r in runs),
        "master_rss_mb": statistics.median(r["master_rss_mb"] for r in runs),
        "worker_rss_mb": statistics.median(sum(r["worker_rss_mb"]) for r in runs),
        "master_maps_libtensorflow": any(r["master_maps_libtensorflow"] for r in runs),
        "runs": runs,
    }


# --- installed size --------------------------------------------------------------------------

def requirements_of(setup_cfg: Path, extras: tuple[str, ...]) -> list[str]:
    """install_requires plus the named extras of a setup.cfg (self-references expanded)."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = lambda text: [l.strip() for l in text.splitlines() if l.strip()]  # noqa: E731
    found = lines(parser.get("options", "install_requires"))
    table = dict(parser.items("options.extras_require")) if parser.has_section(
        "options.extras_require") else {}
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen or extra not in table:
            continue
        seen.add(extra)
        for requirement in lines(table[extra]):
            match = re.fullmatch(r"cityseg\[(.*)\]", requirement)
            if match:
                pending += [e.strip() for e in match.group(1).split(",")]
            else:
                found.append(requirement)
    return found


def _name(requirement: str) -> str:
    name = re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def closure_mb(requirements: list[str]) -> dict:
    """Installed size of the distributions `requirements` pull in, from this venv's RECORDs.

    Optional dependencies (markers with `extra ==`) are not followed: pip installs them only
    when asked.
    """
    installed = {_name(d.metadata["Name"]): d for d in metadata.distributions()}
    todo, seen = [_name(r) for r in requirements], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in installed:
            continue
        seen.add(name)
        for requirement in installed[name].requires or []:
            if "extra ==" not in requirement and "extra==" not in requirement:
                todo.append(_name(requirement))
    total = 0
    for name in seen:
        dist = installed[name]
        for file in dist.files or []:
            path = Path(dist.locate_file(file))
            if path.is_file():
                total += path.stat().st_size
    return {"distributions": len(seen), "mb": round(total / 2**20, 1),
            "heavy": sorted(n for n in seen if n in HEAVY)}


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
    return round(int(out.stdout.split()[0]) / 1024, 1)


def build_proxy_venv(path: Path) -> None:
    log.info("pip install '%s[proxy]' into a fresh venv %s", ROOT, path)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(path / "bin" / "pip"), "install", "--quiet", f"{ROOT}[proxy]"],
                   check=True)


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


# --- main ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
        epilog="examples:\n  python benchmarks/proxy_footprint.py --baseline-ref a506fdc\n"
               "  python benchmarks/proxy_footprint.py --runs 1 --proxy-venv /tmp/pv "
               "--output /tmp/footprint.json")
    parser.add_argument("--baseline-ref", required=True,
                        help="git revision of the code to compare with (today's proxy)")
    parser.add_argument("--runs", type=int, default=3, help="starts of each proxy")
    parser.add_argument("--proxy-venv", type=Path,
                        help="a venv with `pip install '.[proxy]'` (built in a temp dir if absent)")
    parser.add_argument("--no-install", action="store_true",
                        help="skip the proxy-only venv (no fresh install, no third column)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.runs < 1:
        parser.error("--runs must be >= 1")

    with tempfile.TemporaryDirectory(prefix="proxy-footprint-") as tmp:
        base = Path(tmp)
        baseline = base / "baseline"
        with baseline_worktree(args.baseline_ref, baseline) as revision, \
                open(base / "services.log", "w") as logs:
            proxy_venv = args.proxy_venv
            if proxy_venv is None and not args.no_install:
                proxy_venv = base / "proxy-venv"
                build_proxy_venv(proxy_venv)

            data_dir, raw_root, _ = write_dataset(base, cities=1, images_per_city=2,
                                                  size=(128, 256))
            models_dir = base / "models"
            export_stand_in(models_dir, MODEL, (64, 128))
            with model_server(models_dir, MODEL, logs) as grpc_port:
                variants = {"today": (sys.executable, baseline), "new": (sys.executable, ROOT)}
                if proxy_venv is not None:
                    variants["new, proxy-only install"] = (str(proxy_venv / "bin" / "python"),
                                                           ROOT)
                sources = {name: which_source(python, tree)
                           for name, (python, tree) in variants.items()}
                runs = {name: [] for name in variants}
                for index in range(args.runs):
                    for name, (python, tree) in variants.items():
                        runs[name].append(start_proxy(python, tree, data_dir=data_dir,
                                                      raw_root=raw_root, grpc_port=grpc_port,
                                                      logs=logs))
                        log.info("run %d %-24s %s", index + 1, name, runs[name][-1])
                proxies = {name: {"python": variants[name][0], "imports_from": sources[name],
                                  **summarize_runs(r)} for name, r in runs.items()}

            sizes = {
                "today, install_requires (the proxy's only option)": closure_mb(
                    requirements_of(baseline / "setup.cfg", ())),
                "new, cityseg[proxy]": closure_mb(requirements_of(ROOT / "setup.cfg", ("proxy",))),
                "new, cityseg[test] (make test: everything)": closure_mb(
                    requirements_of(ROOT / "setup.cfg", ("test",))),
            }
            if proxy_venv is not None:
                sizes["fresh venv with cityseg[proxy], du of site-packages"] = {
                    "mb": du_mb(site_packages(proxy_venv)),
                    "note": "pip and setuptools included"}
            sizes["this venv (cityseg[test]), du of site-packages"] = {
                "mb": du_mb(site_packages(Path(sys.prefix)))}

    today, new = proxies["today"], proxies["new"]
    report = {
        "benchmark": "proxy_footprint",
        "what": "cityseg-proxy (gunicorn, 1 worker) against cityseg-serve with a "
                "tiny model: process start -> first 200 on /readyz; VmRSS of the gunicorn master "
                "and its worker once ready; installed size of the proxy's dependency closure",
        "machine": machine_facts(),
        "baseline": {"ref": args.baseline_ref, "commit": revision},
        "runs_each": args.runs,
        "proxy": proxies,
        "ratios_new_over_today": {
            "cold_start": round(new["cold_start_s"] / today["cold_start_s"], 3),
            "master_rss": round(new["master_rss_mb"] / today["master_rss_mb"], 3),
            "worker_rss": round(new["worker_rss_mb"] / today["worker_rss_mb"], 3),
        },
        "installed_size": sizes,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    log.info("today: %.2f s, master %.0f MiB; new: %.2f s, master %.0f MiB -> %s",
             today["cold_start_s"], today["master_rss_mb"], new["cold_start_s"],
             new["master_rss_mb"], args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
