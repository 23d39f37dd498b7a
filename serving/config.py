"""Configuration of `cityseg-serve`, read from the same files `tensorflow_model_server` reads.

- `models.config`: a `tensorflow.serving.ModelServerConfig` text proto (from the pip package).
- `batching_parameters.txt`: a `tensorflow.serving.BatchingParameters` text proto.
- `monitoring.config`: a `tensorflow.serving.MonitoringConfig` text proto.

The pip package `tensorflow-serving-api` ships neither `session_bundle_config_pb2`
(BatchingParameters) nor `monitoring_config_pb2`, so those two messages are declared here with
the field names and numbers of TF Serving's `.proto` files and parsed with `text_format`; a file
that the real server accepts parses here, and a typo fails here as it would there.

Model paths are strings, local folders or URLs of a file system TensorFlow knows (`gs://`
built in, `s3://` with `tensorflow-io`, `ram://` in memory): `pathlib` would turn `gs://b` into
`gs:/b`. The model folders are listed through `tf.io.gfile`, as TF Serving lists them.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

# TF Serving's default Prometheus path (util/prometheus_exporter.h: kPrometheusPath).
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: TF Serving's `ServableVersionPolicy`."""

    kind: str = "latest"            # 'latest', 'all' or 'specific'
    num_versions: int = 1           # for 'latest'
    versions: tuple[int, ...] = ()  # for 'specific'

    def select(self, present: list[int]) -> list[int]:
        """The versions to serve out of those present on disk."""
        present = sorted(present)
        if self.kind == "all":
            return present
        if self.kind == "specific":
            return [v for v in present if v in self.versions]
        return present[-self.num_versions:] if present else []


@dataclass(frozen=True)
class ModelConfig:
    """One served model: its name, folder of versions, policy and version labels."""

    name: str
    base_path: str   # a local folder or a URL (`gs://bucket/models/unet`), see `model_path`
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchingOptions:
    """The BatchingParameters fields the server uses (TF Serving's defaults where unset)."""

    max_batch_size: int = 8
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 64
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, not {self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must be >= 0")
        if self.num_batch_threads < 1:
            raise ValueError("num_batch_threads must be >= 1")
        if self.max_enqueued_batches < 1:
            raise ValueError("max_enqueued_batches must be >= 1")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError("allowed_batch_sizes must increase and end with max_batch_size")


# --- Protos missing from the pip package ----------------------------------------------------

@functools.cache
def _serving_config_messages() -> dict[str, type]:
    """Builds BatchingParameters / MonitoringConfig classes in a private descriptor pool."""
    from google.protobuf import wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    proto = descriptor_pb2.FileDescriptorProto(
        name="cityseg/serving_config_subset.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    F = descriptor_pb2.FieldDescriptorProto
    optional, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    def add(message, name, number, type_, label=optional, type_name=None):
        field_proto = message.field.add(name=name, number=number, type=type_, label=label)
        if type_name:
            field_proto.type_name = type_name

    # tensorflow_serving/servables/tensorflow/session_bundle_config.proto
    batching = proto.message_type.add(name="BatchingParameters")
    for name, number in (("max_batch_size", 1), ("batch_timeout_micros", 2),
                         ("max_enqueued_batches", 3), ("num_batch_threads", 4)):
        add(batching, name, number, F.TYPE_MESSAGE, type_name=".google.protobuf.Int64Value")
    add(batching, "thread_pool_name", 5, F.TYPE_MESSAGE,
        type_name=".google.protobuf.StringValue")
    add(batching, "allowed_batch_sizes", 6, F.TYPE_INT64, repeated)
    add(batching, "pad_variable_length_inputs", 7, F.TYPE_BOOL)

    # tensorflow_serving/config/monitoring_config.proto
    prometheus = proto.message_type.add(name="PrometheusConfig")
    add(prometheus, "enable", 1, F.TYPE_BOOL)
    add(prometheus, "path", 2, F.TYPE_STRING)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    add(monitoring, "prometheus_config", 1, F.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig")

    pool.Add(proto)
    return {name: message_factory.GetMessageClass(
                pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in ("BatchingParameters", "PrometheusConfig", "MonitoringConfig")}


def batching_parameters_class() -> type:
    """The `tensorflow.serving.BatchingParameters` message class."""
    return _serving_config_messages()["BatchingParameters"]


def monitoring_config_class() -> type:
    """The `tensorflow.serving.MonitoringConfig` message class."""
    return _serving_config_messages()["MonitoringConfig"]


def _parse_text(path: str | os.PathLike, message):
    text = Path(path).read_text()
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise ValueError(f"{path}: {err}") from None


def read_batching_parameters(path: str | os.PathLike) -> BatchingOptions:
    """Parses a batching parameters file (`--batching_parameters_file`).

    Raises:
      ValueError: for a parse error or impossible values.
    """
    params = _parse_text(path, batching_parameters_class()())
    defaults = BatchingOptions()

    def value(name: str) -> int:
        return getattr(params, name).value if params.HasField(name) else getattr(defaults, name)

    return BatchingOptions(
        max_batch_size=value("max_batch_size"),
        batch_timeout_micros=value("batch_timeout_micros"),
        max_enqueued_batches=value("max_enqueued_batches"),
        num_batch_threads=value("num_batch_threads"),
        allowed_batch_sizes=tuple(params.allowed_batch_sizes))


def read_monitoring_config(path: str | os.PathLike) -> str | None:
    """Returns the Prometheus path from a `--monitoring_config_file`, or None if disabled."""
    config = _parse_text(path, monitoring_config_class()())
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH


def read_model_config_file(path: str | os.PathLike) -> list[ModelConfig]:
    """Parses a `--model_config_file` (ModelServerConfig text proto) into model configs.

    Relative base paths are taken relative to the config file, which makes a checked-in config
    usable from any working directory.

    Raises:
      ValueError: for a parse error, a custom_model_config, duplicate names or bad versions.
    """
    from tensorflow_serving.config import model_server_config_pb2

    config = _parse_text(path, model_server_config_pb2.ModelServerConfig())
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: only model_config_list is supported")
    models = []
    for entry in config.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ValueError(f"{path}: every config needs a name and a base_path")
        platform = entry.model_platform or "tensorflow"
        if platform != "tensorflow":
            raise ValueError(f"{path}: model {entry.name!r}: unsupported platform {platform!r}")
        base = model_path(entry.base_path)
        if not is_url(base) and not os.path.isabs(base):
            base = os.fspath(Path(path).resolve().parent / base)
        models.append(ModelConfig(
            name=entry.name, base_path=base,
            policy=_policy(entry.model_version_policy),
            labels={label: int(version) for label, version in entry.version_labels.items()}))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate model names in {names}")
    for model in models:
        for label, version in model.labels.items():
            if version <= 0:
                raise ValueError(f"{path}: label {label!r} of {model.name!r} must name a "
                                 f"positive version")
    return models


def _policy(proto) -> VersionPolicy:
    kind = proto.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        versions = tuple(int(v) for v in proto.specific.versions)
        if not versions:
            raise ValueError("model_version_policy.specific needs at least one version")
        return VersionPolicy("specific", versions=versions)
    if kind == "latest" and proto.latest.num_versions:
        return VersionPolicy("latest", num_versions=int(proto.latest.num_versions))
    return VersionPolicy()


def is_url(path: str | os.PathLike) -> bool:
    """True for a file system URL (`gs://...`, `s3://...`, `ram://...`), False for a local path."""
    return "://" in os.fspath(path)


def model_path(text: str | os.PathLike) -> str:
    """A models or model folder as the server keeps it: a URL as given (less a trailing `/`),
    a local path as `pathlib` writes it. Also the type of the CLI's path flags."""
    text = os.fspath(text)
    return text.rstrip("/") if is_url(text) else os.fspath(Path(text))


def models_in_dir(models_dir: str | os.PathLike) -> list[ModelConfig]:
    """One latest-version config per sub-folder of `models_dir` (hidden folders skipped).

    Raises:
      OSError or tf.errors.OpError: when the folder cannot be listed.
    """
    import tensorflow as tf  # not at the top: `cityseg-serve --help` answers without it

    root = model_path(models_dir)
    # Object stores list sub-folders with a trailing '/'.
    names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(root))
    folders = [os.path.join(root, name) for name in names if not name.startswith(".")]
    return [ModelConfig(name=os.path.basename(folder), base_path=folder)
            for folder in folders if tf.io.gfile.isdir(folder)]
