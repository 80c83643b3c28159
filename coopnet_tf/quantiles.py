"""Public 1-D P² API: ``p2_quantiles(values, probs)``.

Runs the same code as the ``P2Quantiles`` layer (``coopnet_tf.losses.quantile.p2_absorb``,
one independent 5-marker estimator per probability) on a 1-D stream, every value in
order, no subsampling.

Example::

    >>> import numpy as np
    >>> from coopnet_tf.quantiles import p2_quantiles
    >>> x = np.random.default_rng(0).normal(size=100_000)
    >>> p2_quantiles(x, [0.35, 0.65])   # ~ [-0.385, 0.385]
"""
from typing import Sequence

import numpy as np
import tensorflow as tf

from coopnet_tf.losses import quantile as _quantile

__all__ = ["p2_quantiles"]


def p2_quantiles(values, probs: Sequence[float], jit_compile: bool = True) -> np.ndarray:
    """P² estimates of the `probs`-quantiles of the stream `values`.

    Args:
      values: 1-D array-like, processed in order (non-finite values are observations
        too; filter them first).
      probs: probabilities in ]0, 1[.
      jit_compile: XLA-compile the sequential loop (default; much faster on CPU).

    Returns:
      float64 array `[len(probs)]`. With fewer than 5 values: the exact sample quantiles
      (``np.quantile``, linear interpolation); NaN for an empty stream.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if probs.size == 0:
        return np.zeros([0], np.float64)
    if np.any((probs <= 0.0) | (probs >= 1.0)):
        raise ValueError(f"probabilities must lie in ]0, 1[: {probs}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    e = probs.size
    if x.size == 0:
        return np.full([e], np.nan)
    xs = tf.constant(np.repeat(x[:, None], e, axis=1))
    active = tf.ones(xs.shape, tf.bool)
    state = _quantile.p2_initial_state(e)
    state = _quantile.p2_absorb_fn(jit_compile)(state, xs, active, tf.constant(probs),
                                                compact=False)
    return _quantile.p2_estimates(state, tf.constant(probs)).numpy()
