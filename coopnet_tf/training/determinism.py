"""Run-to-run determinism of training (docs/synthetic_benchmark.md, "Determinism").

Two things make a `tf.function` training step differ between two processes on CPU:

* non-deterministic kernels — `tf.config.experimental.enable_op_determinism()` selects
  deterministic ones or raises;
* Grappler's memory optimizer, which op determinism does NOT switch off: when its static
  estimate of the graph's peak memory exceeds 80 % of the device memory it assumes (on
  CPU the RAM free at the moment the function is optimised, so it depends on the page
  cache), it rewrites every AddN of more than two inputs — the sums of a tensor's
  gradient contributions — into AssignAdds on a temporary variable, which add the inputs
  in the order they arrive at run time. Float addition is not associative, so the
  gradients then differ in the last bits between processes and the runs drift apart. In
  our step this hits the flow net (its outputs feed the photometric, smoothness and
  forward-backward terms); measured on the benchmark's 64x192 step: 79 of 88 flow-net
  gradients differed between two processes with it, 0 without it.

`set_op_determinism(True)` turns on both remedies; the memory optimizer has no public
switch in TF 2.21 (`tf.config.optimizer.set_experimental_options` does not list it), so
this module sets `RewriterConfig.memory_optimization` on the eager context's ConfigProto.
"""
from typing import NamedTuple

from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context as eager_context
from tensorflow.python.framework import config as tf_config

NO_MEMORY_OPTIMIZATION = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT


class DeterminismState(NamedTuple):
    """What `set_op_determinism` changes, to restore it afterwards."""
    op_determinism: bool
    memory_optimization: int   # a RewriterConfig.MemOptType value


def memory_optimization() -> int:
    """The Grappler memory optimizer mode functions are optimised with from now on."""
    return eager_context.context().config.graph_options.rewrite_options.memory_optimization


def _set_memory_optimization(value: int) -> None:
    ctx = eager_context.context()
    proto = config_pb2.ConfigProto()
    if ctx._config is not None:  # pylint: disable=protected-access
        proto.CopyFrom(ctx._config)  # pylint: disable=protected-access
    proto.graph_options.rewrite_options.memory_optimization = value
    ctx._config = proto  # pylint: disable=protected-access
    # functions read the config through the cached per-thread call options: drop them.
    ctx.set_optimizer_experimental_options({})


def set_op_determinism(enabled: bool) -> DeterminismState:
    """Deterministic kernels and no Grappler memory optimizer (or back); returns the
    previous state for `restore`.

    Process-wide, and read when a `tf.function` is first optimised: call it before
    tracing the training step.
    """
    before = DeterminismState(bool(tf_config.is_op_determinism_enabled()),
                              memory_optimization())
    if enabled:
        if not before.op_determinism:
            tf_config.enable_op_determinism()
        _set_memory_optimization(NO_MEMORY_OPTIMIZATION)
    else:
        if before.op_determinism:
            tf_config.disable_op_determinism()
        _set_memory_optimization(rewriter_config_pb2.RewriterConfig.DEFAULT_MEM_OPT)
    return before


def restore(state: DeterminismState) -> None:
    """Puts back what `set_op_determinism` changed."""
    if state.op_determinism != bool(tf_config.is_op_determinism_enabled()):
        (tf_config.enable_op_determinism if state.op_determinism
         else tf_config.disable_op_determinism)()
    _set_memory_optimization(state.memory_optimization)
