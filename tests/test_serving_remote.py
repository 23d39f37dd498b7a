"""cityseg-serve on MODELS that is no local folder: TensorFlow's in-memory `ram://` file system.

`ram://` is resolved by TensorFlow's file system registry like `gs://` and `s3://`, so the
server lists version folders, reads SavedModels and warm-up files through the same `tf.io.gfile`
calls it makes on a bucket. Each test copies the exported tiny model into a `ram://` folder of
its own (the file system lives as long as the process), starts the real server on it and talks
to it over gRPC.
"""
from __future__ import annotations

import os
import uuid

import pytest
import tensorflow as tf

from serving import client as C
from serving import config as cfg
from test_serving_server import png, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
gfile = tf.io.gfile


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A local MODELS with tiny versions 1 and 2 (different weights), to copy from."""
    from training.export import export_model

    root = tmp_path_factory.mktemp("models")
    export_model(tiny_model(), root, "tiny", stride=1, version=1)
    export_model(tiny_model(1), root, "tiny", stride=1, version=2)
    return root


@pytest.fixture
def ram():
    root = f"ram://cityseg-serving-{uuid.uuid4().hex[:8]}"
    gfile.makedirs(root)
    return root


def upload(local: os.PathLike, url: str) -> None:
    """Copies a local folder into `url` file by file, `saved_model.pb` last (no atomic rename
    of a folder on an object store: the server must not see the version before its files)."""
    files = []
    for folder, _, names in os.walk(local):
        files += [os.path.relpath(os.path.join(folder, n), local) for n in names]
    for rel in sorted(files, key=lambda rel: (rel == "saved_model.pb", rel)):
        gfile.makedirs(os.path.dirname(f"{url}/{rel}"))
        gfile.copy(os.path.join(local, rel), f"{url}/{rel}", overwrite=True)


@pytest.fixture
def serve():
    from serving.server import start_server

    started = []

    def start(models_dir, **options):
        started.append(start_server(models_dir, poll_wait_s=0, **options))
        return started[-1]

    yield start
    for handle in started:
        handle.stop(grace_s=0)


def statuses(server, model: str) -> list[tuple[int, str]]:
    return [(s.version, s.state) for s in server.registry.status(model)]


def test_a_model_in_ram_is_served_and_a_new_version_is_loaded_through_gfile(
        exported, ram, serve):
    upload(exported / "tiny" / "1", f"{ram}/tiny/1")
    server = serve(ram)
    assert statuses(server, "tiny") == [(1, "AVAILABLE")]
    image = png(24, 40)
    with C.GrpcClient(f"localhost:{server.grpc_port}", timeout_s=30, retries=0) as client:
        first = client.predict([image], model="tiny")
        assert first.model_version == 1 and len(first.masks) == 1

        gfile.makedirs(f"{ram}/tiny/2")  # an empty folder, then a partial copy: not a version
        gfile.copy(str(exported / "tiny" / "2" / "fingerprint.pb"), f"{ram}/tiny/2/fingerprint.pb")
        server.poll_now()
        assert statuses(server, "tiny") == [(1, "AVAILABLE")]

        upload(exported / "tiny" / "2", f"{ram}/tiny/2")
        server.poll_now()
        assert statuses(server, "tiny") == [(1, "END"), (2, "AVAILABLE")]
        second = client.predict([image], model="tiny")
        assert second.model_version == 2
        assert second.masks != first.masks  # the other weights: version 2 really answered


def test_a_new_model_folder_in_ram_is_found_while_serving(exported, ram, serve):
    upload(exported / "tiny" / "1", f"{ram}/tiny/1")
    server = serve(ram)
    upload(exported / "tiny" / "2", f"{ram}/other/7")
    server.poll_now()
    assert server.registry.available() == {"other": [7], "tiny": [1]}


def test_a_version_that_fails_to_load_from_ram_keeps_the_old_one_and_hides_the_url(
        exported, ram, serve):
    upload(exported / "tiny" / "1", f"{ram}/tiny/1")
    server = serve(ram, first_retry_s=60)
    gfile.makedirs(f"{ram}/tiny/3")
    with gfile.GFile(f"{ram}/tiny/3/saved_model.pb", "wb") as broken:
        broken.write(b"not a SavedModel")
    server.poll_now()
    assert statuses(server, "tiny") == [(1, "AVAILABLE"), (3, "END")]
    failed = server.registry.status("tiny", 3)[0]
    assert failed.error_message and ram not in failed.error_message


def test_the_cli_and_model_config_keep_urls_whole(ram, tmp_path):
    from serving.server import build_parser, options_from_args

    args = build_parser().parse_args(["--models-dir", f"{ram}/"])
    assert options_from_args(args).models_dir == ram  # not 'ram:/...' as pathlib writes it
    args = build_parser().parse_args(["--model_base_path", "gs://bucket/models/unet/"])
    configs = options_from_args(args).model_configs
    assert [(c.name, c.base_path) for c in configs] == [("unet", "gs://bucket/models/unet")]

    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "unet" base_path: "gs://b/m/unet" '
                      'model_platform: "tensorflow" } config { name: "local" '
                      'base_path: "here/local" } }')
    paths = {c.name: c.base_path for c in cfg.read_model_config_file(config)}
    assert paths == {"unet": "gs://b/m/unet", "local": str(tmp_path / "here" / "local")}


def test_a_models_url_that_does_not_exist_or_has_no_file_system_is_a_one_line_error(ram):
    from serving.server import main

    assert main(["--models-dir", f"{ram}/missing"]) != 0
    with pytest.raises(ValueError, match="no file system for nosuchfs://"):
        from serving.server import models_dir_exists

        models_dir_exists("nosuchfs://bucket/models")
