"""The proxy serves a segmentation without ever importing TensorFlow, Keras or Beam.

A fresh interpreter builds the app and asks the real `cityseg-serve` (the `serving` fixture, in
this process) for a segmentation, a mask PNG, an upload and /readyz, then lists what it
imported: the `cityseg[proxy]` install has none of those packages, so this is what keeps it
working. Its answer must equal the one this process's app gives.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "tensorflow_serving", "keras", "apache_beam", "tensorboard", "matplotlib",
         "training", "preprocessing")

SCRIPT = textwrap.dedent("""
    import io, json, sys
    from proxy.app import create_app

    app = create_app(json.loads(sys.argv[1]))
    client = app.test_client()
    image_id = "frankfurt_000000_000294"
    answers = {
        "readyz": client.get("/readyz").status_code,
        "segmentation": client.get(f"/api/v1/images/{image_id}/segmentation").get_json(),
        "prediction.png": client.get(f"/api/v1/images/{image_id}/prediction.png").status_code,
    }
    photo = client.get(f"/api/v1/images/{image_id}/image.png").data
    answers["upload"] = client.post("/api/v1/predict", data={"image": (io.BytesIO(photo),
                                    "frame.png")}).status_code
    app.extensions["cityseg_gateway"].close()
    answers["imported"] = sorted(name for name in sys.modules
                                 if name.split(".")[0] in json.loads(sys.argv[2]))
    print(json.dumps(answers))
""")


def test_a_segmentation_through_the_proxy_imports_no_tensorflow(app, client):
    config = {key: app.config[key] for key in ("DATA_DIR", "RAW_ROOT", "SERVING", "MODEL",
                                               "SERVING_TIMEOUT_S")}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(config), json.dumps(HEAVY)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers["readyz"] == 200
    expected = client.get("/api/v1/images/frankfurt_000000_000294/segmentation").get_json()
    assert expected["model"]["version"] == 1 and expected["prediction"]
    assert answers["segmentation"] == expected
    assert answers["prediction.png"] == 200 and answers["upload"] == 200
    assert answers["imported"] == []
