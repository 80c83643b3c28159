"""Choice of the `tf.distribute` strategy (default / mirrored / multi_worker).

Only `training/loop.py` calls this; the train step itself is strategy-agnostic (it runs
inside `strategy.run` and uses the replica context for its all-reduces).

* ``"default"``: the default strategy — one CPU or one GPU, no replication.
* ``"mirrored"``: `tf.distribute.MirroredStrategy` over every local GPU. On a machine
  without GPUs it mirrors over the *logical* CPU devices when there are at least two;
  ``num_logical_cpus=N`` splits the first physical CPU into N logical devices first
  (gin: ``make_distribution_strategy.num_logical_cpus = 2``), which is how the
  multi-replica code path runs on a CPU-only machine.
* ``"multi_worker"``: `tf.distribute.MultiWorkerMirroredStrategy`, cluster read from the
  ``TF_CONFIG`` environment variable (one process per host; every host runs the same
  command with its own ``TF_CONFIG`` task index).
"""
from typing import Optional, Sequence

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def split_cpu(num_logical_cpus: int) -> None:
    """Splits the first physical CPU into ``num_logical_cpus`` logical devices.

    TensorFlow only allows this before its context is initialised (the first op, or the
    first device listing of logical devices). Calling it again with the same count once the
    split exists is a no-op, so a process (or a test session) that split the CPU already
    can still build the strategy.

    Raises:
      ValueError: ``num_logical_cpus`` < 1.
      RuntimeError: TensorFlow is already initialised with another number of logical CPUs
        (the message says what to change).
    """
    if num_logical_cpus < 1:
        raise ValueError(f"num_logical_cpus must be >= 1, got {num_logical_cpus}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == num_logical_cpus:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_logical_cpus)
    except RuntimeError as err:
        have = len(tf.config.list_logical_devices("CPU"))
        raise RuntimeError(
            f"cannot split the CPU into {num_logical_cpus} logical devices: TensorFlow is "
            f"already initialised (with {have} logical CPU device(s)). The split must happen "
            "before any TensorFlow op runs: set make_distribution_strategy.num_logical_cpus "
            "and let train_and_evaluate build the strategy first, and do not create tensors "
            "at import time.") from err


def make_distribution_strategy(
    name: str = "default",
    devices: Optional[Sequence[str]] = None,
    num_logical_cpus: Optional[int] = None,
) -> tf.distribute.Strategy:
    """Creates the distribution strategy named by ``name``.

    Must be called before any other TensorFlow op for ``"multi_worker"`` (collective ops
    are configured at strategy construction) and when ``num_logical_cpus`` is set.

    Args:
      name: one of ``STRATEGIES``.
      devices: optional explicit device list for ``"mirrored"`` (e.g.
        ``["/gpu:0", "/gpu:1"]``); by default every GPU, else every logical CPU device.
      num_logical_cpus: ``"mirrored"`` only: split the CPU into this many logical devices
        (`split_cpu`) and mirror over them when the machine has no GPU (one replica
        each; the global batch size is divided among them). None: no split.

    Returns:
      The strategy. ``strategy.num_replicas_in_sync`` gives the replica count.

    Raises:
      ValueError: unknown name, or ``"mirrored"`` requested where only one device exists
        and no explicit list was given (silently training on one replica while the user
        asked for several would hide a configuration mistake).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown distribution strategy {name!r}; expected one of {STRATEGIES}")
    if num_logical_cpus is not None:
        if name != "mirrored":
            raise ValueError(f"num_logical_cpus={num_logical_cpus} only applies to "
                             f"distribution='mirrored', not {name!r}")
        split_cpu(int(num_logical_cpus))
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
                        "make_distribution_strategy.num_logical_cpus = 2 (gin), or use "
                        "distribution='default'.")
                devices = [d.name for d in cpus]
        # NCCL only exists between GPUs; on CPU devices reduce through one device.
        cross_device_ops = None
        if not any("GPU" in d.upper() for d in devices):
            cross_device_ops = tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices=list(devices),
                                              cross_device_ops=cross_device_ops)
    return tf.distribute.MultiWorkerMirroredStrategy()


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
