"""Loss scaling: the dynamic scale shown in TensorBoard (coopnet_tf/training/optimizers.py)
and how the step's guarded update skips overflowing groups (training/step.py)."""
import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import conftest
from coopnet_tf.training import optimizers, step


def test_loss_scale_halves_when_scaled_gradients_overflow():
    """`current_loss_scale` is None without loss scaling; with it, an overflowing update
    is skipped by Keras and the scale halves (what `train/loss_scale_<group>` shows)."""
    var = tf.Variable([1.0, 2.0])
    plain = optimizers.make_optimizer()
    plain.build([var])
    assert optimizers.current_loss_scale(plain) is None
    scaled = optimizers.make_optimizer(loss_scale=True)
    scaled.build([var])
    start = optimizers.current_loss_scale(scaled)
    assert start == 2.0 ** 15
    scaled.apply([tf.constant([np.inf, 1.0])], [var])
    assert optimizers.current_loss_scale(scaled) == start / 2
    np.testing.assert_array_equal(var.numpy(), [1.0, 2.0])       # the update was skipped
    scaled.apply([tf.constant([1.0, 1.0])], [var])
    assert optimizers.current_loss_scale(scaled) == start / 2 and var.numpy()[0] < 1.0


def _two_groups(strategy=None):
    """Two variables, each with its own LossScaleOptimizer (the depth and motion groups)."""
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        variables = [tf.Variable([1.0, 2.0]), tf.Variable([3.0, 4.0])]
        opts = [optimizers.make_optimizer(learning_rate=0.1, loss_scale=True, name=f"g{i}")
                for i in range(2)]
        for opt, var in zip(opts, variables):
            opt.build([var])
    return variables, opts


def _update(variables, opts, grads, one_objective):
    updates = [([g], [v], opt) for g, v, opt in zip(grads, variables, opts)]
    return step.guarded_update(updates, {"total": tf.constant(1.0)}, [], [], True, None,
                               lambda increment: None, one_objective=one_objective)


@pytest.mark.parametrize("one_objective", [False, True])
def test_overflow_in_one_group_skips_only_it_or_every_group(one_objective):
    """Under loss scaling, an overflow in one group's gradients skips that group's update
    and halves its scale; with ``one_objective`` (Lee et al.'s single loss) every group
    skips and halves, so that no half step is applied; finite gradients apply everywhere."""
    variables, opts = _two_groups()
    start = [v.numpy().copy() for v in variables]
    _update(variables, opts, [tf.constant([1.0, 1.0]), tf.constant([np.inf, 1.0])],
            one_objective)
    scales = [optimizers.current_loss_scale(o) for o in opts]
    np.testing.assert_array_equal(variables[1].numpy(), start[1])
    assert scales[1] == 2.0 ** 14
    if one_objective:
        np.testing.assert_array_equal(variables[0].numpy(), start[0])
        assert scales[0] == 2.0 ** 14
    else:
        assert np.all(variables[0].numpy() < start[0]) and scales[0] == 2.0 ** 15
    _update(variables, opts, [tf.constant([1.0, 1.0]), tf.constant([1.0, 1.0])],
            one_objective)
    assert all(np.all(v.numpy() < s0) for v, s0 in zip(variables, start))


def test_overflow_on_one_replica_skips_every_group_on_every_replica():
    """MirroredStrategy over two logical CPUs, ``one_objective``: replica 1's motion
    gradients overflow, replica 0's are finite; both groups skip on both replicas."""
    strategy = conftest.two_cpu_mirrored_strategy()
    variables, opts = _two_groups(strategy)

    def replica_fn():
        rid = tf.distribute.get_replica_context().replica_id_in_sync_group
        bad = tf.where(tf.equal(rid, 1), np.inf, 1.0)
        return _update(variables, opts, [tf.constant([1.0, 1.0]), tf.stack([bad, 1.0])],
                       True)

    strategy.run(replica_fn)
    for var, start in zip(variables, ([1.0, 2.0], [3.0, 4.0])):
        for value in strategy.experimental_local_results(var):
            np.testing.assert_array_equal(value.numpy(), start)
    assert [optimizers.current_loss_scale(o) for o in opts] == [2.0 ** 14] * 2


SHAPES = [(3, 3, 8, 16), (16,), (64, 32), (7,)]


def _adam_pair(optimizer_cls, steps=20, seed=0):
    """Variables after ``steps`` updates with random gradients spanning 1e-6..1e2."""
    rng = np.random.RandomState(seed)
    variables = [keras.Variable(rng.randn(*s).astype(np.float32), name=f"w{i}")
                 for i, s in enumerate(SHAPES)]
    opt = optimizer_cls(learning_rate=1e-3, name="adam_depth_pose")
    opt.build(variables)
    for _ in range(steps):
        grads = [tf.constant(rng.randn(*s).astype(np.float32) * 10.0 ** rng.uniform(-6, 2))
                 for s in SHAPES]
        opt.apply(grads, variables)
    return variables, opt


def test_fused_adam_equals_keras_adam_to_float32_rounding():
    """Same formula as keras.optimizers.Adam, one kernel per variable: after 20 steps the
    weights agree to 2e-6 and the moments to 1e-4 relative (the kernel forms 1 − β in
    float32: 1 − 0.999f = 1.00005e-3, Keras rounds 1 − 0.999 from double: 1e-3), the
    optimizer has the same variables (checkpoint layout) and iteration count."""
    ref_vars, ref = _adam_pair(keras.optimizers.Adam)
    fused_vars, fused = _adam_pair(optimizers.FusedAdam)
    for a, b in zip(ref_vars, fused_vars):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=2e-6, atol=1e-6)
        assert not np.array_equal(a.numpy(), b.numpy() + 1e-3)      # the check can fail
    assert [v.path for v in ref.variables] == [v.path for v in fused.variables]
    for a, b in zip(ref.variables, fused.variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-12)
    assert int(fused.iterations.numpy()) == 20
    with pytest.raises(ValueError, match="amsgrad"):
        optimizers.FusedAdam(amsgrad=True)
    assert type(optimizers.make_optimizer()) is optimizers.FusedAdam
    assert type(optimizers.make_optimizer(fused=False)) is keras.optimizers.Adam


def test_fused_adam_is_one_kernel_per_variable_and_bitwise_the_kernel_loop():
    """The step's scalars are formed once per apply: a traced apply grows by the kernel and
    its three captured handles per variable (it was 17 ops with per-variable scalars), and
    the weights equal, bitwise, a plain loop of `ResourceApplyAdam` with β^t, lr, ε formed
    per variable (the formula in its simplest form)."""
    def num_ops(count):
        variables = [keras.Variable(tf.zeros([3])) for _ in range(count)]
        opt = optimizers.FusedAdam(1e-3)
        opt.build(variables)
        fn = tf.function(lambda: opt.apply([tf.ones([3])] * count, variables),
                         autograph=False)
        return len(fn.get_concrete_function().graph.get_operations())
    per_variable = (num_ops(7) - num_ops(3)) / 4
    assert per_variable <= 5, per_variable   # kernel, var/m/v handles, Keras' Identity

    fused_vars, _ = _adam_pair(optimizers.FusedAdam)
    rng = np.random.RandomState(0)
    ref_vars = [tf.Variable(rng.randn(*s).astype(np.float32)) for s in SHAPES]
    slots = [(tf.Variable(tf.zeros(s)), tf.Variable(tf.zeros(s))) for s in SHAPES]
    for t in range(1, 21):
        grads = [tf.constant(rng.randn(*s).astype(np.float32) * 10.0 ** rng.uniform(-6, 2))
                 for s in SHAPES]
        for var, (m, v), grad in zip(ref_vars, slots, grads):
            tf.raw_ops.ResourceApplyAdam(     # float32 powers, as Keras' Adam forms them
                var=var.handle, m=m.handle, v=v.handle, beta1_power=tf.pow(0.9, float(t)),
                beta2_power=tf.pow(0.999, float(t)), lr=1e-3, beta1=0.9, beta2=0.999,
                epsilon=1e-7, grad=grad)
    for ref, fused in zip(ref_vars, fused_vars):
        np.testing.assert_array_equal(fused.numpy(), ref.numpy())


def test_fused_adam_under_mirrored_strategy_equals_one_device():
    """Two logical CPUs, each replica its own gradient: every replica's copy equals one
    device's FusedAdam on the summed gradient (Keras all-reduces with SUM)."""
    strategy = conftest.two_cpu_mirrored_strategy()
    rng = np.random.RandomState(1)
    init = rng.randn(4, 3).astype(np.float32)
    per_replica = [rng.randn(4, 3).astype(np.float32) for _ in range(2)]
    with strategy.scope():
        var = keras.Variable(init)
        opt = optimizers.FusedAdam(learning_rate=1e-2)
        opt.build([var])

    def replica_fn():
        rid = tf.distribute.get_replica_context().replica_id_in_sync_group
        opt.apply([tf.gather(tf.constant(np.stack(per_replica)), rid)], [var])

    for _ in range(3):
        strategy.run(replica_fn)
    ref_var = keras.Variable(init)
    ref = optimizers.FusedAdam(learning_rate=1e-2)
    ref.build([ref_var])
    for _ in range(3):
        ref.apply([tf.constant(per_replica[0] + per_replica[1])], [ref_var])
    for value in strategy.experimental_local_results(var.value):
        np.testing.assert_array_equal(value.numpy(), ref_var.numpy())
    assert not np.array_equal(ref_var.numpy(), init)
