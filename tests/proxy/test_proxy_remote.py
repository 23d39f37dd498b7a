"""The proxy on DATA and RAW that are no local folders: fsspec's in-memory `memory://`.

`memory://` goes through the same fsspec calls as `gs://` (gcsfs) and `s3://` (s3fs): a URL
resolved to a file system, `isfile`/`isdir`, `open` of the manifest, `cat_file` of an image.
The manifest and the raw tree of the `dataset` fixture are copied there; the app built on them
must answer every image id exactly as the app on the local folders does, with the prediction of
the real `cityseg-serve` and the ground truth read from memory.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import fsspec
import pytest

from cityseg import vocabulary as V
from proxy.app import create_app
from proxy.resolver import ManifestError

from conftest import DOTDOT_ID, SECRET, SYMLINK_ID, app_config

IMAGE_ID = "frankfurt_000000_000294"


@pytest.fixture
def remote(dataset):
    """(data URL, raw URL) in fsspec's memory file system, removed afterwards."""
    data_dir, raw_root, rows = dataset
    fs = fsspec.filesystem("memory")
    base = f"memory://cityseg-proxy-{uuid.uuid4().hex[:8]}"
    kept = [dict(row) for row in rows if row["image_id"] != SYMLINK_ID]  # no symlinks up there
    for row in kept:
        for key in ("image", "label"):
            if row[key] and row["image_id"] != DOTDOT_ID:
                fs.pipe(f"{base}/raw/{row[key]}", (raw_root / row[key]).read_bytes())
    # What the '..' entry points at, as it would lie beside the raw tree in the same bucket.
    fs.pipe(f"{base}/outside/secret.txt", SECRET)
    dotdot = next(row for row in kept if row["image_id"] == DOTDOT_ID)
    dotdot["image"] = dotdot["label"] = "../outside/secret.txt"
    fs.pipe(f"{base}/data/{V.MANIFEST_FILE}",
            "".join(json.dumps(row) + "\n" for row in kept).encode())
    yield f"{base}/data", f"{base}/raw", len(kept)
    fs.rm(base, recursive=True)


@pytest.fixture
def remote_client(dataset, serving, remote):
    data_url, raw_url, _ = remote
    app = create_app(app_config(dataset, f"127.0.0.1:{serving.grpc_port}",
                                DATA_DIR=data_url, RAW_ROOT=raw_url))
    yield app.test_client()
    app.extensions["cityseg_gateway"].close()


def test_an_image_id_is_answered_from_manifest_and_raw_files_in_memory(
        remote_client, client, remote, dataset):
    listing = remote_client.get("/api/v1/images?limit=1000").get_json()
    assert listing["total"] == remote[2]

    answer = remote_client.get(f"/api/v1/images/{IMAGE_ID}/segmentation")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["model"]["version"] == 1 and body["prediction"] and body["ground_truth"]
    assert body == client.get(f"/api/v1/images/{IMAGE_ID}/segmentation").get_json()

    for route in ("image.png", "ground_truth.png", "prediction.png"):
        remote_png = remote_client.get(f"/api/v1/images/{IMAGE_ID}/{route}")
        assert remote_png.status_code == 200
        assert remote_png.data == client.get(f"/api/v1/images/{IMAGE_ID}/{route}").data
    raw_root = dataset[1]
    image = remote_client.get(f"/api/v1/images/{IMAGE_ID}/image.png").data
    assert image == (raw_root / V.image_path("val", IMAGE_ID)).read_bytes()


def test_a_path_climbing_out_of_a_remote_raw_root_is_never_read(remote_client):
    for route in ("image.png", "ground_truth.png", "segmentation"):
        answer = remote_client.get(f"/api/v1/images/{DOTDOT_ID}/{route}")
        assert answer.status_code == 404 and SECRET not in answer.data


def test_a_missing_remote_file_is_404_and_a_missing_manifest_fails_at_start(
        dataset, serving, remote):
    data_url, raw_url, _ = remote
    fsspec.filesystem("memory").rm(f"{raw_url}/{V.image_path('val', IMAGE_ID)}")
    app = create_app(app_config(dataset, f"127.0.0.1:{serving.grpc_port}",
                                DATA_DIR=data_url, RAW_ROOT=raw_url))
    answer = app.test_client().get(f"/api/v1/images/{IMAGE_ID}/image.png")
    assert answer.status_code == 404 and "not available" in answer.get_json()["error"]
    app.extensions["cityseg_gateway"].close()

    with pytest.raises(ManifestError, match="manifest not found"):
        create_app(app_config(dataset, "127.0.0.1:1", DATA_DIR=f"{raw_url}/nothing",
                              RAW_ROOT=raw_url))
    with pytest.raises(ManifestError, match="raw root is not a directory"):
        create_app(app_config(dataset, "127.0.0.1:1", DATA_DIR=data_url,
                              RAW_ROOT=f"{raw_url}-missing"))


def test_a_url_whose_file_system_is_not_installed_says_what_to_install(dataset):
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401
        pytest.skip("gcsfs is installed here")
    except ImportError:
        pass
    with pytest.raises(ManifestError, match="gcsfs"):
        create_app(app_config(dataset, "127.0.0.1:1", DATA_DIR="gs://bucket/data",
                              RAW_ROOT="gs://bucket/raw"))


def test_remote_reads_import_no_tensorflow_and_local_ones_no_fsspec(app):
    """In a fresh interpreter: a local app never loads fsspec; a memory:// app loads no
    TensorFlow (the `cityseg[proxy]` install has none)."""
    script = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from proxy.app import create_app

        config = json.loads(sys.argv[1])
        image_id = "frankfurt_000000_000294"
        local = create_app(config).test_client()
        answers = {"local": local.get(f"/api/v1/images/{image_id}/image.png").status_code,
                   "fsspec_after_local": "fsspec" in sys.modules}
        import fsspec
        fs = fsspec.filesystem("memory")
        rows = [json.loads(line) for line in
                Path(config["DATA_DIR"], "manifest.jsonl").read_text().splitlines()]
        rows = [row for row in rows if row["city"] != "evil"]
        for row in rows:
            fs.pipe(f"memory://r/raw/{row['image']}",
                    Path(config["RAW_ROOT"], row["image"]).read_bytes())
        fs.pipe("memory://r/data/manifest.jsonl",
                "".join(json.dumps(row) + "\\n" for row in rows).encode())
        remote = create_app({**config, "DATA_DIR": "memory://r/data",
                             "RAW_ROOT": "memory://r/raw"}).test_client()
        answers["remote"] = remote.get(f"/api/v1/images/{image_id}/image.png").data == \\
            local.get(f"/api/v1/images/{image_id}/image.png").data
        answers["tensorflow"] = sorted(n for n in sys.modules if n.split(".")[0] in
                                       ("tensorflow", "keras", "apache_beam", "training"))
        print(json.dumps(answers))
    """)
    config = {key: app.config[key] for key in ("DATA_DIR", "RAW_ROOT", "SERVING", "MODEL")}
    result = subprocess.run([sys.executable, "-c", script, json.dumps(config)],
                            cwd=Path(__file__).resolve().parents[2], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers == {"local": 200, "fsspec_after_local": False, "remote": True,
                       "tensorflow": []}
