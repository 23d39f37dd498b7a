"""The Docker deployment's files parse as TF Serving parses them and agree with the project.

No Docker engine runs here: these tests check the files (protos, YAML, Dockerfile commands) and
serve docker/models.config with cityseg-serve, base paths remapped to a temporary folder.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from google.protobuf import text_format

from cityseg import vocabulary as V
from serving import client as C
from serving import config as cfg

DOCKER = Path(__file__).resolve().parent.parent / "docker"
MODEL_NAMES = {"unet", "pspnet", "fcn8", "fastscnn", "fastscnn_s4"}
LABELLED = "fastscnn_s4"  # the default model: the one with stable/canary versions


def test_models_config_is_a_model_server_config():
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((DOCKER / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c for c in config.model_config_list.config}
    assert set(entries) == MODEL_NAMES
    for name, entry in entries.items():
        assert entry.base_path == f"/models/{name}"  # the export layout, mounted at /models
        assert entry.model_platform == "tensorflow"
    labelled = entries[LABELLED]
    assert dict(labelled.version_labels) == {"stable": 1, "canary": 2}
    assert list(labelled.model_version_policy.specific.versions) == [1, 2]


def test_models_config_names_the_trainable_architectures():
    from training.models import MODEL_BUILDERS

    assert MODEL_NAMES == set(MODEL_BUILDERS)


def test_batching_parameters_parse_as_batching_parameters():
    params = text_format.Parse((DOCKER / "batching_parameters.txt").read_text(),
                               cfg.batching_parameters_class()())
    assert params.max_batch_size.value == 8
    assert params.batch_timeout_micros.value == 5000
    options = cfg.read_batching_parameters(DOCKER / "batching_parameters.txt")
    assert options == cfg.BatchingOptions(max_batch_size=8, batch_timeout_micros=5000,
                                          max_enqueued_batches=32, num_batch_threads=2)


def test_batching_parameters_typos_fail_like_tf_serving(tmp_path):
    bad = tmp_path / "batching.txt"
    bad.write_text("max_batch_sise { value: 8 }\n")
    with pytest.raises(ValueError, match="max_batch_sise"):
        cfg.read_batching_parameters(bad)
    bad.write_text("max_batch_size { value: 0 }\n")
    with pytest.raises(ValueError, match="max_batch_size"):
        cfg.read_batching_parameters(bad)


def test_monitoring_config_parses_as_monitoring_config():
    config = text_format.Parse((DOCKER / "monitoring.config").read_text(),
                               cfg.monitoring_config_class()())
    assert config.prometheus_config.enable
    assert cfg.read_monitoring_config(DOCKER / "monitoring.config") == cfg.DEFAULT_PROMETHEUS_PATH


def volume_mounts(service: dict) -> dict[str, str]:
    """{container path: host path} from compose short volume syntax (host may be ${VAR:-x})."""
    mounts = {}
    for volume in service["volumes"]:
        match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(?:ro|rw))?", volume)
        assert match, volume
        mounts[match.group(2)] = match.group(1)
    return mounts


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_serves_tf_serving_with_the_config_files(compose):
    tfs = compose["services"]["tfserving"]
    assert tfs["image"].startswith("tensorflow/serving:")
    assert {"8500:8500", "8501:8501"} <= set(tfs["ports"])
    mounts = volume_mounts(tfs)
    assert "/models" in mounts
    flags = dict(f.lstrip("-").split("=", 1) for f in tfs["command"])
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        local = mounts[flags[flag]]  # every config file the server reads is mounted ...
        assert (DOCKER / local).is_file()  # ... from a file that exists here
    assert (flags["port"], flags["rest_api_port"]) == ("8500", "8501")
    assert "AVAILABLE" in " ".join(tfs["healthcheck"]["test"])


def test_compose_flags_are_accepted_by_cityseg_serve(compose, tmp_path):
    from serving.server import build_parser, options_from_args

    tfs = compose["services"]["tfserving"]
    mounts = volume_mounts(tfs)
    # Point the container paths at the files here, then parse the exact command line.
    argv = []
    for flag in tfs["command"]:
        key, _, value = flag.partition("=")
        argv.append(f"{key}={DOCKER / mounts[value]}" if value in mounts else flag)
    args, unknown = build_parser().parse_known_args(argv)
    assert unknown == []
    options = options_from_args(args)
    assert {m.name for m in options.model_configs} == MODEL_NAMES
    assert options.batching == cfg.read_batching_parameters(DOCKER / "batching_parameters.txt")
    assert options.monitoring_path == cfg.DEFAULT_PROMETHEUS_PATH
    assert (options.grpc_port, options.rest_port) == (8500, 8501)


def test_proxy_dockerfile_command_is_a_valid_proxy_command_line(compose):
    from proxy.cli import build_parser

    text = (DOCKER / "proxy.Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*?\])", text, re.S | re.M).group(1).replace("\\\n", ""))
    assert cmd[0] == "cityseg-proxy"
    args = build_parser().parse_args(cmd[1:])
    assert args.serving == "tfserving:8500" and args.model in MODEL_NAMES
    assert "tfserving" in compose["services"]  # the host name the proxy dials
    assert args.port == 5000 and compose["services"]["proxy"]["expose"] == ["5000"]
    assert "ports" not in compose["services"]["proxy"]  # clients reach it through `front`
    assert compose["services"]["proxy"]["depends_on"]["tfserving"]["condition"] == "service_healthy"


def parse_nginx(text: str) -> list:
    """nginx's configuration grammar, enough to check ours: [(name, [args], block or None)].

    Raises AssertionError for what nginx would refuse: a directive without its `;`, an
    unbalanced brace.
    """
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};]+', re.sub(r"#[^\n]*", "", text))
    stack, current, words = [], [], []
    for token in tokens:
        if token == ";":
            assert words, "a stray ';'"
            current.append((words[0], words[1:], None))
            words = []
        elif token == "{":
            assert words, "a block without a name"
            block: list = []
            current.append((words[0], words[1:], block))
            stack.append(current)
            current, words = block, []
        elif token == "}":
            assert not words, f"{words} lacks its ';'"
            assert stack, "an unbalanced '}'"
            current = stack.pop()
        else:
            words.append(token)
    assert not words and not stack, "unterminated directive or block"
    return current


def nginx_directives(block: list, name: str) -> list:
    return [(args, inner) for directive, args, inner in block if directive == name]


def nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match.group(2)]


@pytest.fixture(scope="module")
def nginx() -> list:
    return parse_nginx((DOCKER / "nginx.conf").read_text())


def test_compose_puts_nginx_in_front_of_the_proxy(compose):
    front = compose["services"]["front"]
    assert front["image"].startswith("nginx:")
    assert front["ports"] == ["5000:5000"]
    assert volume_mounts(front)["/etc/nginx/nginx.conf"] == "./nginx.conf"
    assert front["depends_on"]["proxy"]["condition"] == "service_healthy"


def test_nginx_buffers_slow_clients_before_the_proxy(nginx):
    from proxy.cli import ProxyConfig
    from proxy.settings import DEFAULTS

    (_, http), = nginx_directives(nginx, "http")
    settings = {name: args for name, args, inner in http if inner is None}
    # Every read from and write to a client has a deadline (nginx's default is 60 s each).
    for name in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert 0 < nginx_seconds(settings[name][0]) <= 30, name
    # Bodies larger than the proxy takes are refused at the front, with the proxy's limit.
    assert settings["client_max_body_size"] == [f"{DEFAULTS['MAX_CONTENT_LENGTH'] // 2**20}m"]
    (upstream_args, upstream), = nginx_directives(http, "upstream")
    assert nginx_directives(upstream, "server") == [([f"proxy:{ProxyConfig.port}"], None)]
    (_, server), = nginx_directives(http, "server")
    (_, location), = nginx_directives(server, "location")
    proxying = {name: args for name, args, inner in location if inner is None}
    assert proxying["proxy_pass"] == [f"http://{upstream_args[0]}"]
    assert proxying["proxy_request_buffering"] == ["on"] and proxying["proxy_buffering"] == ["on"]
    # nginx waits longer than the proxy's own deadline, so the client reads the proxy's 504.
    assert nginx_seconds(proxying["proxy_read_timeout"][0]) > ProxyConfig.timeout_s
    (listen,), = [args for args, _ in nginx_directives(server, "listen")]
    assert listen == "5000"


def test_nginx_accepts_its_configuration(tmp_path):
    binary = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx): the shape test still ran")
    # `proxy` resolves inside compose only; nginx -t looks the upstream up.
    config = tmp_path / "nginx.conf"
    config.write_text((DOCKER / "nginx.conf").read_text().replace("proxy:5000", "127.0.0.1:5000"))
    result = subprocess.run([binary, "-t", "-c", str(config), "-e", "/dev/stderr"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def _requirements(*extras: str) -> set[str]:
    """Project names the install needs with `extras` (self-references like cityseg[x] expanded)."""
    from setuptools.config.setupcfg import read_configuration

    options = read_configuration(DOCKER.parent / "setup.cfg")["options"]
    names, pending, seen = set(), list(extras), set()
    for requirement in options["install_requires"]:
        names.add(re.split(r"[<>=!~\[; ]", requirement)[0].lower())
    while pending:
        extra = pending.pop()
        seen.add(extra)
        for requirement in options["extras_require"][extra]:
            nested = re.fullmatch(r"cityseg\[(.*)\]", requirement)
            if nested:
                pending += [e for e in nested.group(1).split(",") if e not in seen]
            else:
                names.add(re.split(r"[<>=!~\[; ]", requirement)[0].lower())
    return names


def test_proxy_image_installs_only_the_proxy_extra():
    text = (DOCKER / "proxy.Dockerfile").read_text()
    assert re.findall(r"pip install (\S+)", text) == ["'.[proxy]'"]
    # Only the packages the proxy imports are in the image.
    assert set(re.findall(r"^COPY (\w+) \./", text, re.M)) == {"cityseg", "serving", "proxy"}
    proxy = _requirements("proxy")
    assert {"flask", "gunicorn", "gevent", "grpcio", "protobuf", "numpy", "pillow",
            "prometheus-client"} <= proxy
    assert not proxy & {"tensorflow", "tensorflow-serving-api", "keras", "apache-beam",
                        "matplotlib"}
    # ... while `make test` (.[test]) still installs everything.
    assert {"tensorflow", "tensorflow-serving-api", "keras", "apache-beam", "tensorboard",
            "matplotlib", "pytest"} | proxy <= _requirements("test")


def test_plain_compose_up_runs_the_job_then_serving_then_the_proxy(compose):
    jobs = compose["services"]["jobs"]
    assert "profiles" not in jobs  # `docker compose up` starts it without flags
    tfs_deps = compose["services"]["tfserving"]["depends_on"]
    assert tfs_deps["jobs"]["condition"] == "service_completed_successfully"
    assert volume_mounts(jobs)["/models"] == volume_mounts(compose["services"]["tfserving"])["/models"]


def jobs_commands() -> list[list[str]]:
    lines = [line for line in (DOCKER / "jobs.sh").read_text().splitlines()
             if line.startswith("cityseg-")]
    return [shlex.split(line) for line in lines]


def test_jobs_container_runs_the_four_stages_into_models():
    text = (DOCKER / "jobs.Dockerfile").read_text()
    assert "COPY docker/jobs.sh" in text
    assert re.search(r'^CMD \["bash", "/app/jobs.sh"\]', text, re.M)
    commands = jobs_commands()
    assert [c[0] for c in commands] == ["cityseg-synth", "cityseg-preprocess", "cityseg-train",
                                        "cityseg-export"]
    export = commands[-1]
    assert export[export.index("--models-dir") + 1] == "/models"  # the folder TF Serving mounts


@pytest.mark.parametrize("index", range(4), ids=["synth", "preprocess", "train", "export"])
def test_jobs_flags_are_ones_each_stage_accepts(index, capsys):
    from importlib.metadata import entry_points

    command = jobs_commands()[index]
    script = {e.name: e for e in entry_points(group="console_scripts")}[command[0]]
    with pytest.raises(SystemExit) as caught:
        script.load()(["--help"])
    assert caught.value.code == 0
    usage = capsys.readouterr().out
    for flag in (a for a in command[1:] if a.startswith("--")):
        assert flag in usage, f"{command[0]} --help lists no {flag}"


@pytest.fixture(scope="module")
def config_server(tmp_path_factory):
    """cityseg-serve on docker/models.config with /models remapped to a temporary folder."""
    import keras

    from serving.server import start_server
    from training.export import export_model

    root = tmp_path_factory.mktemp("docker-models")
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(V.NUM_CATEGORIES, 1)(inputs))
    template = export_model(model, root / ".template", "m", stride=1, version=1)
    for name in MODEL_NAMES:
        shutil.copytree(template, root / name / "1")
    shutil.copytree(template, root / LABELLED / "2")
    config = root / "models.config"
    config.write_text((DOCKER / "models.config").read_text().replace('"/models/', f'"{root}/'))
    handle = start_server(
        None, model_configs=cfg.read_model_config_file(config), poll_wait_s=0,
        batching=cfg.read_batching_parameters(DOCKER / "batching_parameters.txt"),
        monitoring_path=cfg.read_monitoring_config(DOCKER / "monitoring.config"))
    yield handle
    handle.stop()


def test_model_config_file_serves_the_same_names(config_server):
    with C.GrpcClient(f"localhost:{config_server.grpc_port}", retries=0) as client:
        statuses = {name: client.model_status(name) for name in MODEL_NAMES}
    expected = {name: [(1, "AVAILABLE")] for name in MODEL_NAMES}
    expected[LABELLED] = [(1, "AVAILABLE"), (2, "AVAILABLE")]
    assert statuses == expected


def test_version_labels_route_to_their_versions(config_server):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    image = _png()
    with grpc.insecure_channel(f"localhost:{config_server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for label, version in (("stable", 1), ("canary", 2)):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = LABELLED
            request.model_spec.version_label = label
            # The client's tensor is a wire_pb2 message: moved into TF's request as bytes.
            request.inputs[V.INPUT_KEY].ParseFromString(
                C.string_tensor([image]).SerializeToString())
            assert stub.Predict(request, timeout=30).model_spec.version.value == version
    base = f"http://localhost:{config_server.rest_port}/v1/models/{LABELLED}"
    with urllib.request.urlopen(f"{base}/labels/canary", timeout=10) as response:
        assert json.loads(response.read())["model_version_status"][0]["version"] == "2"
    # latest (no label, no version) is the newest loaded version
    with C.GrpcClient(f"localhost:{config_server.grpc_port}") as client:
        assert client.predict([image], model=LABELLED).model_version == 2


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from the server's Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://localhost:{server.rest_port}{cfg.DEFAULT_PROMETHEUS_PATH}"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_batching_merges_concurrent_requests_and_gives_each_its_own_rows(config_server):
    from concurrent.futures import ThreadPoolExecutor

    images = [_png(size) for size in (5, 9, 13, 17, 21, 25)]
    batch = frozenset({"model_name": "unet"}.items())
    with C.GrpcClient(f"localhost:{config_server.grpc_port}") as client:
        alone = [client.predict([i], model="unet").masks[0] for i in images]
        # Six callers at once, a few rounds: with batching_parameters.txt (5 ms) some requests
        # share one call of the signature. Without batching there is no merged call at all.
        merged = False
        with ThreadPoolExecutor(len(images)) as pool:
            for _ in range(20):
                results = list(pool.map(lambda i: client.predict([i], model="unet"), images))
                assert [r.masks[0] for r in results] == alone  # each request got its own rows
                samples = scrape(config_server)
                rows = samples.get(("cityseg_serving_batch_size_sum", batch), 0)
                calls = samples.get(("cityseg_serving_batch_size_count", batch), 0)
                if rows > calls:  # some call ran more than one image
                    merged = True
                    break
    assert merged, f"no merged call: {calls:g} calls of {rows:g} images"
    ok = frozenset({"api": "grpc", "model_name": "unet", "status": "OK"}.items())
    assert samples[("cityseg_serving_request_count_total", ok)] >= 2 * len(images)


def _png(size: int = 10) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.full((size, size + 3, 3), size * 7 % 256, np.uint8)).save(out, "PNG")
    return out.getvalue()
