"""`cityseg-proxy`: flags, one-line errors, and a real gunicorn run."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import requests

from proxy import cli


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--serving" in out and "CITYSEG_DATA_DIR" in out


@pytest.mark.parametrize("argv, message", [
    (["--raw-root", "/tmp", "--model", "m"], "--data-dir is required"),
    (["--data-dir", "/nonexistent", "--raw-root", "/tmp", "--model", "m"], "manifest not found"),
    (["--data-dir", "/tmp", "--raw-root", "/tmp", "--model", "m", "--workers", "0"],
     "--workers and --threads must be at least 1"),
    (["--data-dir", "/tmp", "--raw-root", "/tmp", "--model", "m", "--timeout", "0"],
     "--timeout must be positive"),
])
def test_bad_flags_fail_in_one_line(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cityseg-proxy: error: ") and message in err
    assert err.count("\n") == 1


def test_environment_variables_are_the_defaults(monkeypatch, dataset):
    data_dir, raw_root, _ = dataset
    monkeypatch.setenv("CITYSEG_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CITYSEG_RAW_ROOT", str(raw_root))
    monkeypatch.setenv("CITYSEG_MODEL", "tiny")
    monkeypatch.setenv("CITYSEG_PORT", "5123")
    config, _ = cli.parse_config(["--workers", "3"])
    assert (config.data_dir, config.raw_root, config.model, config.port, config.workers) == (
        str(data_dir), str(raw_root), "tiny", 5123, 3)


@pytest.mark.slow
def test_gunicorn_serves_the_api(dataset, serving, free_tcp_port):
    data_dir, raw_root, _ = dataset
    url = f"http://127.0.0.1:{free_tcp_port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "--data-dir", str(data_dir), "--raw-root",
         str(raw_root), "--serving", f"127.0.0.1:{serving.grpc_port}", "--model", "tiny",
         "--port", str(free_tcp_port), "--workers", "1", "--threads", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.communicate()[0][-2000:]
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer within 90 s"
            time.sleep(0.5)
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
        response = requests.get(f"{url}/api/v1/images/frankfurt_000000_000294/segmentation",
                                timeout=30)
        assert response.status_code == 200
        assert response.json()["model"] == {"name": "tiny", "version": 1}
        assert requests.get(f"{url}/api/v1/images/..%2f/image.png", timeout=10).status_code == 400
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output[-2000:]
    assert "gthread" in output or "Booting worker" in output
