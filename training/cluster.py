"""Who this process is in a multi-worker run, from `TF_CONFIG` (read by TensorFlow's resolver).

`tf.distribute.cluster_resolver.TFConfigClusterResolver` parses `TF_CONFIG`, the same object
`MultiWorkerMirroredStrategy` takes, so the trainer and the strategy read one cluster. Without
`TF_CONFIG` the process is a cluster of one, its own chief.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from cityseg.cli import CliError


@dataclass(frozen=True)
class Cluster:
    """The facts the trainer needs about the cluster, and the resolver they came from."""

    num_workers: int = 1
    task_type: str | None = None
    task_id: int = 0
    has_chief: bool = False
    resolver: tf.distribute.cluster_resolver.ClusterResolver | None = None

    @property
    def is_chief(self) -> bool:
        """The chief writes the run: the `chief` task, else worker 0 (TensorFlow's rule)."""
        if self.task_type in (None, "chief"):
            return True
        return self.task_type == "worker" and self.task_id == 0 and not self.has_chief

    def strategy(self) -> tf.distribute.Strategy:
        """MultiWorkerMirroredStrategy over this cluster, or the default strategy for one worker.

        Call before any other TensorFlow op runs: the collective strategy must set up the
        runtime first.
        """
        if self.num_workers > 1:
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=self.resolver)
        return tf.distribute.get_strategy()


def resolve_cluster() -> Cluster:
    """Reads `TF_CONFIG` from the environment (absent: one worker).

    Raises:
      CliError: if TF_CONFIG is not valid cluster JSON.
    """
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    try:
        spec = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.task_type, resolver.task_id
    except (ValueError, TypeError, AttributeError) as err:
        raise CliError(f"TF_CONFIG is not valid cluster JSON: {err}") from None
    workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
    return Cluster(num_workers=max(1, workers), task_type=task_type, task_id=int(task_id or 0),
                   has_chief=bool(spec.get("chief")), resolver=resolver)
