"""Choice of the `tf.distribute` strategy (default / mirrored / multi_worker).

Only `training/loop.py` calls this; the train step itself is strategy-agnostic (it runs
inside `strategy.run` and uses the replica context for its all-reduces).

* ``"default"``: the default strategy — one CPU or one GPU, no replication.
* ``"mirrored"``: `tf.distribute.MirroredStrategy` over every local GPU. On a machine
  without GPUs it mirrors over the *logical* CPU devices when there are at least two
  (`tf.config.set_logical_device_configuration`, as `tests/conftest.py` does), which is
  how the tests exercise the multi-replica code path on CPU.
* ``"multi_worker"``: `tf.distribute.MultiWorkerMirroredStrategy`, cluster read from the
  ``TF_CONFIG`` environment variable (one process per host; every host runs the same
  command with its own ``TF_CONFIG`` task index).
"""
from typing import Optional, Sequence

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_distribution_strategy(
    name: str = "default",
    devices: Optional[Sequence[str]] = None,
) -> tf.distribute.Strategy:
    """Creates the distribution strategy named by ``name``.

    Must be called before any other TensorFlow op for ``"multi_worker"`` (collective ops
    are configured at strategy construction).

    Args:
      name: one of ``STRATEGIES``.
      devices: optional explicit device list for ``"mirrored"`` (e.g.
        ``["/gpu:0", "/gpu:1"]``); by default every GPU, else every logical CPU device.

    Returns:
      The strategy. ``strategy.num_replicas_in_sync`` gives the replica count.

    Raises:
      ValueError: unknown name, or ``"mirrored"`` requested where only one device exists
        and no explicit list was given (silently training on one replica while the user
        asked for several would hide a configuration mistake).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            if gpus:
                devices = [d.name for d in gpus]
            else:
                cpus = tf.config.list_logical_devices("CPU")
                if len(cpus) < 2:
                    raise ValueError(
                        "distribution='mirrored' needs at least two devices; this machine has "
                        "no GPU and a single logical CPU device. Split the CPU with "
                        "tf.config.set_logical_device_configuration before TensorFlow "
                        "initialises, or use distribution='default'.")
                devices = [d.name for d in cpus]
        # NCCL only exists between GPUs; on CPU devices reduce through one device.
        cross_device_ops = None
        if not any("GPU" in d.upper() for d in devices):
            cross_device_ops = tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices=list(devices),
                                              cross_device_ops=cross_device_ops)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown distribution strategy {name!r}; expected one of {STRATEGIES}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes summaries, checkpoints and the progress bar.

    Single-host strategies always return True. For MultiWorkerMirroredStrategy the chief is
    task 0 of type "worker" (or "chief"); other workers still save checkpoints (the
    collective save needs every worker) but into a temporary directory.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().as_dict())
