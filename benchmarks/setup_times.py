"""Times the README's two set-up commands, each from a fresh clone of this repository.

    python benchmarks/setup_times.py [--only demo|test]

Each command runs in its own `git clone` of HEAD, so it includes creating the virtualenv and
installing the project (pip's download cache on this machine is warm; on a machine that has
never seen the packages, add the download time). `make demo` runs with DEMO_EXIT=1, so it stops
its services once the segmentation request succeeded. Writes docs/benchmarks/setup_times.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_machine import cpu_model  # the script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "benchmarks" / "setup_times.json"
COMMANDS = {"demo": ["make", "demo"], "test": ["make", "test"]}


def time_in_fresh_clone(name: str, log_dir: Path) -> dict:
    clone = Path(tempfile.mkdtemp(prefix=f"cityseg-{name}-"))
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = {**os.environ, "DEMO_EXIT": "1"}
        log = log_dir / f"setup-{name}.log"
        start = time.perf_counter()
        with log.open("w") as handle:
            code = subprocess.call(COMMANDS[name], cwd=clone, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        lines = log.read_text().strip().splitlines()
        # pytest's summary line (framed in '='), else the log's last line.
        tail = [line.strip("= ") for line in lines if " passed" in line][-1:] or lines[-1:] or [""]
        print(f"{' '.join(COMMANDS[name])}: exit {code} in {seconds:.0f} s; last line: {tail[0]}")
        return {"command": " ".join(COMMANDS[name]), "seconds": round(seconds, 1),
                "exit_code": code, "result": ("ok" if code == 0 else f"failed ({code})")
                + (f": {tail[0]}" if name == "test" else ""), "log": str(log)}
    finally:
        shutil.rmtree(clone, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(COMMANDS), help="time one command only")
    parser.add_argument("--log-dir", type=Path, default=REPO / "out" / "setup-times")
    args = parser.parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    previous = json.loads(OUTPUT.read_text()) if OUTPUT.is_file() else {"runs": []}
    runs = {row["command"]: row for row in previous["runs"]}
    for name in ([args.only] if args.only else ["demo", "test"]):
        row = time_in_fresh_clone(name, args.log_dir)
        row.pop("log")
        runs[row["command"]] = row
    doc = {
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(),
                    "python": platform.python_version()},
        "note": "Each command in its own fresh clone, virtualenv creation and install included "
                "(pip's download cache warm); `make demo` with DEMO_EXIT=1.",
        "runs": [runs[k] for k in sorted(runs)],
    }
    OUTPUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0 if all(r["exit_code"] == 0 for r in doc["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
