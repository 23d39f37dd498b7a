"""cityseg-predict end to end against an in-process cityseg-serve."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from cityseg import vocabulary as V
from serving.predict import main


def write_png(path, height, width, value):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import keras

    from serving.server import start_server
    from training.export import export_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(V.NUM_CATEGORIES, 1)(inputs))
    models = tmp_path_factory.mktemp("models")
    export_model(model, models, "tiny", stride=1)
    handle = start_server(models, poll_wait_s=0)
    yield handle
    handle.stop()


def read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_writes_one_category_mask_per_image(server, tmp_path, transport):
    a = write_png(tmp_path / "a.png", 20, 30, 200)
    b = write_png(tmp_path / "b.png", 7, 9, 10)
    port = server.grpc_port if transport == "grpc" else server.rest_port
    extra = ["--rest"] if transport == "rest" else []
    out = tmp_path / "out"
    assert main(["--server", f"localhost:{port}", "--model", "tiny", str(a), str(b),
                 "-o", str(out), "--batch-size", "2", *extra]) == 0
    masks = [read(out / "a_mask.png"), read(out / "b_mask.png")]
    assert [m.shape for m in masks] == [(20, 30), (7, 9)]
    assert all(m.dtype == np.uint8 and m.max() < V.NUM_CATEGORIES for m in masks)


def test_color_writes_the_palette(server, tmp_path):
    image = write_png(tmp_path / "street.png", 12, 12, 128)
    assert main(["--server", f"localhost:{server.grpc_port}", "--model", "tiny", str(image),
                 "-o", str(tmp_path), "--color"]) == 0
    ids = main(["--server", f"localhost:{server.grpc_port}", "--model", "tiny", str(image),
                "-o", str(tmp_path)])
    assert ids == 0
    colors = read(tmp_path / "street_color.png")
    assert colors.shape == (12, 12, 3)
    np.testing.assert_array_equal(colors, V.colorize(read(tmp_path / "street_mask.png")))


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "NOT_FOUND"),
    (["--model", "tiny", "--version", "9"], "NOT_FOUND"),
    (["--model", "tiny", "--timeout", "0"], "--timeout"),
])
def test_failures_are_one_line_and_non_zero(server, tmp_path, capsys, args, message):
    image = write_png(tmp_path / "x.png", 5, 5, 0)
    code = main(["--server", f"localhost:{server.grpc_port}", *args, str(image),
                 "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].startswith("cityseg-predict: error:") and message in err[-1]


def test_undecodable_image_is_invalid_argument(server, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    assert main(["--server", f"localhost:{server.grpc_port}", "--model", "tiny", str(bad),
                 "-o", str(tmp_path)]) == 2
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert not (tmp_path / "bad_mask.png").exists()


def test_missing_image_and_unreachable_server(tmp_path, capsys):
    assert main(["--server", "localhost:1", "--model", "m", str(tmp_path / "none.png")]) == 2
    assert "no such image" in capsys.readouterr().err
    image = write_png(tmp_path / "x.png", 5, 5, 0)
    assert main(["--server", "127.0.0.1:1", "--model", "m", "--retries", "0", str(image),
                 "-o", str(tmp_path)]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    assert "examples:" in capsys.readouterr().out
