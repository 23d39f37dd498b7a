"""`cityseg-proxy`: flags, one-line errors, and a real gunicorn run."""
from __future__ import annotations

import collections
import random
import re
import string
import tempfile
from pathlib import Path

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
     "--workers and --connections must be at least 1"),
    (["--data-dir", "/tmp", "--raw-root", "/tmp", "--model", "m", "--read-timeout", "0"],
     "--read-timeout must be at least 1 s"),
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
def test_gunicorn_serves_the_api(dataset, serving, free_tcp_port, gunicorn_proxy):
    with gunicorn_proxy(dataset, serving, free_tcp_port, "--workers", "1") as proxy:
        url = proxy.url
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
        response = requests.get(f"{url}/api/v1/images/frankfurt_000000_000294/segmentation",
                                timeout=30)
        assert response.status_code == 200
        assert response.json()["model"] == {"name": "tiny", "version": 1}
        assert requests.get(f"{url}/api/v1/images/..%2f/image.png", timeout=10).status_code == 400
    assert "Booting worker" in proxy.output and "gevent worker(s)" in proxy.output


def healthz_pids(log: Path) -> collections.Counter:
    """How many `GET /healthz` each worker answered, from the access log (pid=...)."""
    return collections.Counter(re.findall(r'"GET /healthz HTTP/1.1" 200 .* pid=<(\d+)>$',
                                          log.read_text(), re.M))


@pytest.mark.slow
def test_gunicorn_metrics_add_up_both_workers(dataset, serving, free_tcp_port, tmp_path,
                                              exposition, gunicorn_proxy):
    url = f"http://127.0.0.1:{free_tcp_port}"
    log = tmp_path / "proxy.log"
    folders_before = set(Path(tempfile.gettempdir()).glob("cityseg-proxy-metrics-*"))
    with open(log, "w") as output, gunicorn_proxy(dataset, serving, free_tcp_port,
                                                  "--workers", "2", output=output):
        # Each call on a new connection; go on until the log shows that both workers answered.
        sent = 1  # the last /healthz of the start
        while len(healthz_pids(log)) < 2:
            for _ in range(10):
                assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
            sent += 10
            assert sent < 500, f"one worker answered all {sent} requests"
        rng = random.Random(25)
        for _ in range(25):  # made-up methods: one `other` series, not 25
            method = "".join(rng.choices(string.ascii_uppercase, k=10))
            assert requests.request(method, f"{url}/healthz", timeout=10).status_code == 405
        requests_total = "cityseg_proxy_requests_total"
        for _ in range(4):  # whichever worker answers the scrape shows both workers' counts
            metrics = exposition(requests.get(f"{url}/metrics", timeout=10).text)
            assert metrics.value(requests_total, method="GET", route="/healthz",
                                 status="200") == sent
            assert metrics.value(requests_total, method="other", route="unmatched",
                                 status="405") == 25
            assert metrics.label_values(requests_total, "method") <= {"GET", "other"}
        per_worker = healthz_pids(log)
    assert len(per_worker) == 2 and all(0 < n < sent for n in per_worker.values()), per_worker
    # The multi-process folder was a fresh one, and it is gone.
    assert set(Path(tempfile.gettempdir()).glob("cityseg-proxy-metrics-*")) <= folders_before
