"""`training.determinism`: deterministic kernels AND no Grappler memory optimizer.

The memory optimizer's rewrite (multi-input gradient AddN -> arrival-order AssignAdds)
only fires when the graph's estimated peak memory exceeds 80 % of the free RAM, which a
CI-sized graph never does, so the run-level evidence is a benchmark-size measurement
(docs/synthetic_benchmark.md, "Determinism"); here: the switch reaches the config that
`tf.function`s are optimised with, and is undone.
"""
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context
from tensorflow.python.framework import config as tf_config

from coopnet_tf.training import determinism


def _function_memory_optimization() -> int:
    """The memory optimizer mode in the options the next tf.function call is run with."""
    proto = config_pb2.ConfigProto()
    proto.ParseFromString(context.context().function_call_options.config_proto_serialized)
    return proto.graph_options.rewrite_options.memory_optimization


def test_switches_kernels_and_memory_optimizer_and_restores():
    before = (bool(tf_config.is_op_determinism_enabled()), _function_memory_optimization())
    state = determinism.set_op_determinism(True)
    try:
        assert tf_config.is_op_determinism_enabled()
        assert _function_memory_optimization() == rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
        assert determinism.memory_optimization() == rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
        # a function traced now still computes (the config is valid for the runtime)
        assert float(tf.function(lambda x: tf.add_n([x, x, x]))(tf.constant(2.0))) == 6.0
    finally:
        determinism.restore(state)
    assert (bool(tf_config.is_op_determinism_enabled()), _function_memory_optimization()) == before
    assert state == determinism.DeterminismState(*before)


def test_off_turns_both_off():
    state = determinism.set_op_determinism(True)
    try:
        inner = determinism.set_op_determinism(False)
        assert inner.op_determinism and inner.memory_optimization == determinism.NO_MEMORY_OPTIMIZATION
        assert not tf_config.is_op_determinism_enabled()
        assert _function_memory_optimization() == rewriter_config_pb2.RewriterConfig.DEFAULT_MEM_OPT
    finally:
        determinism.restore(state)
