"""Two-worker training on localhost: MultiWorkerMirroredStrategy over gRPC, TF_CONFIG per process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import base_args, write_toy_data

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 420  # two TensorFlow processes on a shared 2-core machine


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start_workers(args: list[str], tmp_path: Path) -> list[tuple[subprocess.Popen, Path]]:
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                        "task": {"type": "worker", "index": index}})}
        log = tmp_path / f"worker{index}.log"
        with log.open("w") as out:
            procs.append((subprocess.Popen([sys.executable, "-m", "training.train", *args],
                                           cwd=REPO, env=env, stdout=out,
                                           stderr=subprocess.STDOUT), log))
    return procs


def _wait(procs) -> list[int]:
    codes = []
    try:
        for proc, _ in procs:
            codes.append(proc.wait(timeout=TIMEOUT_S))
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return codes


def test_two_workers_train_and_only_the_chief_writes_the_run(tmp_path):
    data = write_toy_data(tmp_path / "data", counts={"train": 8, "val": 4})
    run = tmp_path / "run"
    # batch 2 per worker -> global batch 4; 8 images -> 2 steps per epoch on both workers.
    args = base_args(data, run, "--epochs", "1", "--batch-size", "2", "--time-limit", "10")
    procs = _start_workers(args, tmp_path)
    codes = _wait(procs)
    logs = "\n".join(log.read_text()[-3000:] for _, log in procs)
    assert codes == [0, 0], logs

    assert (run / "best.keras").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["num_workers"] == 2 and config["global_batch_size"] == 4
    assert config["steps_per_epoch"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_workers"] == 2 and summary["epochs_done"] == 1
    assert summary["stopped_by"] == "epochs"
    # The non-chief wrote into a scratch folder, removed at exit; the RUN holds one history.
    assert len((run / "history.csv").read_text().splitlines()) == 2
    assert "2 worker(s)" in procs[1][1].read_text()
