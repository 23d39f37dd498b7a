"""A workaround for Keras 3 `Model.fit` under `tf.distribute.MultiWorkerMirroredStrategy`.

Upstream: keras-team/keras#20585 ("Does Keras 3 work with MultiWorkerMirroredStrategy?", open,
also tensorflow/tensorflow#72388); still needed with Keras 3.15. Two places in Keras' TF trainer
fail with the collective strategy:

- the compiled state is built from the first batch by `strategy.reduce`-ing the whole
  (images, labels) tuple, which the collective strategy cannot do ("Attempt to convert a value
  (PerReplica ...)"). The build only needs shapes and dtypes, so an instance override takes
  this worker's local replica's batch;
- each step's logs (scalars) are reduced with `axis=0`, which fails on scalars; they are
  all-reduced with `axis=None` instead (the mean over workers).

Everything else in `fit` is Keras' own. This patches private Keras API
(`keras.src.backend.tensorflow.trainer`), so it lives here alone, applied only in multi-worker
processes; remove it once the upstream issue is fixed and tests/test_multiworker.py passes
without it.
"""
from __future__ import annotations

import keras
import tensorflow as tf


def patch_fit_for_multi_worker(model: keras.Model) -> None:
    """Makes `model.fit` work under MultiWorkerMirroredStrategy (see the module docstring)."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_reduce = getattr(tf_trainer.reduce_per_replica, "__wrapped__",
                              tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
                strategy):  # pylint: disable=protected-access
            return tf.nest.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original_reduce
    tf_trainer.reduce_per_replica = reduce_per_replica

    strategy = model.distribute_strategy

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)  # pylint: disable=protected-access

    model._maybe_symbolic_build = maybe_symbolic_build  # pylint: disable=protected-access
