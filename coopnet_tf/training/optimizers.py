"""gin factories for the two Adam optimizers and the piecewise learning-rate schedule.

The paper (Sec. 4.4): Adam, beta1 = 0.99 (as printed; the project default is 0.9, see the
docs/decisions.md D5), beta2 = 0.999, lr 1e-4 for 20 epochs then 1e-5, 30 epochs.
The depth+pose optimizer and the flow optimizer are built by the same factory; gin scopes
`depth_pose/` and `flow/` configure them separately, e.g.::

    make_optimizer.beta_1 = 0.9              # both
    flow/make_optimizer.beta_1 = 0.99        # flow only

The schedule is a function of the loop's single step counter (batches consumed), not of
`optimizer.iterations`, so that a skipped non-finite step, which leaves the optimizer
untouched, does not shift the schedule, and a resumed run is at the same position.
"""
from typing import Optional, Sequence

import gin
import keras
import tensorflow as tf


@gin.configurable
def make_learning_rate_schedule(
    steps_per_epoch: int,
    learning_rates: Sequence[float] = (1e-4, 1e-5),
    boundary_epochs: Sequence[int] = (20,),
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Piecewise-constant learning rate, switched at epoch boundaries.

    Args:
      steps_per_epoch: optimizer steps per epoch (converts epochs to step boundaries).
      learning_rates: one more value than ``boundary_epochs``.
      boundary_epochs: epochs after which the next value applies (paper: 20).

    Returns:
      A schedule ``lr(step)``; ``step`` is the global step (int).
    """
    if len(learning_rates) != len(boundary_epochs) + 1:
        raise ValueError("learning_rates needs exactly one more entry than boundary_epochs")
    boundaries = [int(e) * int(steps_per_epoch) for e in boundary_epochs]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=boundaries, values=[float(v) for v in learning_rates])


class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, each variable's update one fused kernel (`ResourceApplyAdam`) instead
    of ~20 element-wise ops: the same formula (m, v, then
    var -= lr·sqrt(1 − β2^t)/(1 − β1^t)·m/(sqrt(v) + ε)), the same variables and checkpoint
    layout. Not bitwise keras.optimizers.Adam: the kernel forms 1 − β in float32
    (1 − 0.999f = 1.00005e-3 where Keras uses 1e-3), so the second moment's rate differs
    by 5e-5 relative (tests/test_optimizers.py: weights within 2e-6 after 20 steps).
    The step's scalars (β^t, lr, β, ε) are formed once per `apply` and dtype, not per
    variable, so an apply is one op per variable (plus its captured handles).
    Faster wherever ops are dispatched one by one: eager steps, and kernel launches on a
    GPU (benchmarks/optimizer_time.py)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("FusedAdam: amsgrad is not supported (use keras.optimizers.Adam)")

    def _coefficients(self, dtype, learning_rate):
        """(β1^t, β2^t, lr, β1, β2, ε) in `dtype`, t = iterations + 1."""
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        return (tf.pow(beta_1, step), tf.pow(beta_2, step), tf.cast(learning_rate, dtype),
                beta_1, beta_2, tf.cast(self.epsilon, dtype))

    def _apply_fused(self, gradient, variable, coefficients):
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        beta1_power, beta2_power, lr, beta_1, beta_2, epsilon = coefficients
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(m), v=_handle(v), beta1_power=beta1_power,
            beta2_power=beta2_power, lr=lr, beta1=beta_1, beta2=beta_2, epsilon=epsilon,
            grad=tf.cast(gradient, variable.dtype))

    def update_step(self, gradient, variable, learning_rate):
        self._apply_fused(gradient, variable, self._coefficients(variable.dtype, learning_rate))

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        """Keras' TensorFlow-backend loop over (gradient, variable) pairs (cross-replica
        context), with the scalars formed once per dtype before it."""
        coefficients = {}
        for grad, var in grads_and_vars:
            dtype = var.dtype.base_dtype
            if dtype not in coefficients:
                coefficients[dtype] = self._coefficients(dtype, learning_rate)
            distribution.extended.update(var, self._update_var,
                                         args=(grad, coefficients[dtype]), group=False)

    def _update_var(self, variable, gradient, coefficients):
        """`distribution.extended.update`'s callback: the variable comes first."""
        self._apply_fused(gradient, variable, coefficients)


def _handle(variable):
    """The resource handle of a Keras variable (its tf.Variable's, on this device)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


@gin.configurable
def make_optimizer(
    learning_rate: float = 1e-4,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-8,
    loss_scale: bool = False,
    fused: bool = True,
    name: str = "adam",
) -> keras.optimizers.Optimizer:
    """Adam (`FusedAdam`) with the paper's settings (epsilon = 1e-8 as in PyTorch, the
    paper's framework).

    The learning rate is a plain variable; the training loop assigns the schedule's value
    from the global step before every step.

    Args:
      learning_rate: initial value of the learning-rate variable.
      beta_1: 0.9 by default (docs/decisions.md D5); 0.99 is the paper's printed value.
      beta_2: 0.999.
      epsilon: Adam epsilon.
      loss_scale: wrap in `keras.optimizers.LossScaleOptimizer` (dynamic loss scaling, for
        the `mixed_float16` policy; the loop turns it on automatically for that policy).
      fused: `FusedAdam` (default); False: keras.optimizers.Adam, bitwise what runs
        trained before FusedAdam used (same variables: checkpoints restore either way).
      name: optimizer name (variable names in checkpoints).
    """
    adam = FusedAdam if fused else keras.optimizers.Adam
    optimizer = adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                     epsilon=epsilon, name=name)
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name=name + "_loss_scale")
    return optimizer


def set_learning_rate(optimizer: keras.optimizers.Optimizer, value) -> None:
    """Assigns ``value`` to the optimizer's learning-rate variable (graph-safe)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    inner._learning_rate.assign(tf.cast(value, inner._learning_rate.dtype))  # pylint: disable=protected-access


def current_loss_scale(optimizer: keras.optimizers.Optimizer) -> Optional[float]:
    """The dynamic loss scale of a LossScaleOptimizer (mixed_float16), else None. Keras
    halves it and skips that optimizer's update when its scaled gradients overflow, so a
    falling scale is how such skipped updates show (`train/nonfinite_steps` counts only
    non-finite losses under loss scaling)."""
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return None
    return float(tf.convert_to_tensor(optimizer.dynamic_scale))


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> tf.Tensor:
    """The optimizer's current learning rate as a float32 tensor."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return tf.cast(tf.convert_to_tensor(inner._learning_rate), tf.float32)  # pylint: disable=protected-access
