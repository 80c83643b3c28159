"""coopnet_tf/training/optimizers.py: the dynamic loss scale shown in TensorBoard."""
import numpy as np
import tensorflow as tf

from coopnet_tf.training import optimizers


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
