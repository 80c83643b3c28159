"""Running quantiles of a stream, as stateful Keras layers: P² (Jain & Chlamtac 1985)
and a loop-free mergeable weighted summary.

CoopNet (paper Sec. 4.1, Fig. 4) selects pixels with quantiles of Δ and Δflow that are
estimated online with the P² algorithm during epoch k and used, frozen, during epoch k+1.
This module holds

* the P² update as pure TensorFlow functions on a vector of independent 5-marker
  estimators (``p2_initial_state``, ``p2_absorb``, ``p2_estimates``): one sequential
  ``tf.while_loop`` over the observations whose body updates every estimator at once;
* the weighted-summary update (``summary_initial_state``, ``summary_absorb``,
  ``summary_estimates``, 1-D ``summary_quantiles``): the same quantity (quantiles of the
  whole stream) from one sort per update, no loop over the observations — what keeps the
  estimation off the accelerator's critical path (docs/performance.md);
* ``RunningQuantiles``: a plain ``keras.layers.Layer`` holding the estimates (one per
  tracked probability of each tracked variable) in non-trainable variables, so that a
  ``tf.train.Checkpoint`` saves them. It subsamples the values it is given (uniformly,
  among the valid ones), gathers every replica's subsample under ``tf.distribute`` in
  replica order and applies the same update on every replica. ``P2Quantiles`` and
  ``SummaryQuantiles`` are its two estimators (``make_quantile_layer``).

``p2_quantiles(values, probs)``: the 1-D convenience API, the same ``p2_absorb`` on a
stream, every value in order, no subsampling::

    >>> from coopnet_tf.losses.quantile import p2_quantiles
    >>> x = np.random.default_rng(0).normal(size=100_000)
    >>> p2_quantiles(x, [0.35, 0.65])   # ~ [-0.385, 0.385]

P² for one probability p (docs/decisions.md C8): marker heights q[0..4], actual
positions n[0..4] (integers), desired positions n'[0..4], increments dn' =
(0, p/2, p, (1+p)/2, 1). The first five observations are kept (in the height slots) and
sorted to initialise the markers: n = (1..5), n' = (1, 1+2p, 1+4p, 3+2p, 5). For each
later observation x: update the extreme markers, increment the positions of the markers
above x, advance the desired positions, then for i = 1, 2, 3 in that order (each seeing
the previous marker's new height) move marker i by ±1 with the piecewise-parabolic
(P²) formula, falling back to linear interpolation when the parabola leaves
]q[i-1], q[i+1][. The estimate is q[2]. Before five observations the estimate is the exact
sample quantile of what has been seen (linear interpolation, ``np.quantile``'s default),
NaN before any.

Precision: the state is float64 (positions reach ~10^8 in an epoch; float32 would stop
counting at 2^24 and desired positions would drift by whole units). Nothing here runs on
TPU (no float64 there).
"""
import math
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

NUM_MARKERS = 5

# Default tracked variables: "delta" -> Δ (Eq. 8): 0.35/0.65 give V_η with η = 0.15, and
# 0.15/0.85 the tails of the default flow weighting; "delta_flow_x"/"delta_flow_y" ->
# components of Δflow (Eq. 13): 0.25/0.75 give V_ζ with ζ = 0.25.
DEFAULT_PROBABILITIES = {
    "delta": (0.15, 0.35, 0.65, 0.85),
    "delta_flow_x": (0.25, 0.75),
    "delta_flow_y": (0.25, 0.75),
}
DEFAULT_SAMPLE_SIZE = 4096


class P2State(NamedTuple):
    """State of E independent P² estimators (all float64).

    heights: `[E, 5]` marker heights; before the fifth observation slot j holds the j-th
      observation (the initial buffer).
    positions: `[E, 5]` actual marker positions n (integers stored as float64).
    desired: `[E, 5]` desired marker positions n'.
    count: `[E]` number of observations absorbed.
    """
    heights: tf.Tensor
    positions: tf.Tensor
    desired: tf.Tensor
    count: tf.Tensor


def p2_initial_state(num_estimators: int) -> P2State:
    """The empty state of `num_estimators` estimators."""
    zeros = tf.zeros([num_estimators, NUM_MARKERS], tf.float64)
    return P2State(zeros, zeros, zeros, tf.zeros([num_estimators], tf.float64))


def _desired_increments(probs):
    """`[E]` probabilities -> `[E, 5]` dn' = (0, p/2, p, (1+p)/2, 1)."""
    p = probs[:, tf.newaxis]
    return tf.concat([tf.zeros_like(p), p / 2.0, p, (1.0 + p) / 2.0, tf.ones_like(p)], axis=1)


def _initial_desired(probs):
    """`[E]` probabilities -> `[E, 5]` n' = (1, 1+2p, 1+4p, 3+2p, 5)."""
    p = probs[:, tf.newaxis]
    one = tf.ones_like(p)
    return tf.concat([one, 1.0 + 2.0 * p, 1.0 + 4.0 * p, 3.0 + 2.0 * p, 5.0 * one], axis=1)


def _fill_initial_buffer(state, x, active, probs):
    """Puts each estimator's first observations into its empty buffer slots.

    Observations of an estimator are the active entries of its column of `x`, which must
    form a prefix of the column (``p2_absorb`` guarantees it). Estimator e with count c < 5
    takes the first t = min(5 - c, #active) of them into slots c..c+t-1; when it reaches 5
    observations its markers are initialised. Returns the new state and `t` (`[E]` int32),
    the number of observations consumed per estimator.
    """
    num_obs = tf.shape(x)[0]
    num_active = tf.reduce_sum(tf.cast(active, tf.int32), axis=0)  # [E]
    if x.shape[0] == 0:
        return state, num_active
    count_i = tf.cast(state.count, tf.int32)
    take = tf.clip_by_value(NUM_MARKERS - count_i, 0, NUM_MARKERS)
    take = tf.minimum(take, num_active)  # [E]
    slots = tf.range(NUM_MARKERS)[tf.newaxis, :]  # [1, 5]
    src = slots - count_i[:, tf.newaxis]  # [E, 5] index into the column
    write = (src >= 0) & (src < take[:, tf.newaxis])
    src = tf.clip_by_value(src, 0, tf.maximum(num_obs - 1, 0))
    # values[e, j] = x[src[e, j], e]
    x_t = tf.transpose(x)  # [E, N]
    values = tf.gather(x_t, src, batch_dims=1)
    heights = tf.where(write, values, state.heights)
    new_count = state.count + tf.cast(take, tf.float64)
    just_init = (state.count < NUM_MARKERS) & (new_count >= NUM_MARKERS)
    init = just_init[:, tf.newaxis]
    heights = tf.where(init, tf.sort(heights, axis=1), heights)
    positions = tf.where(
        init, tf.range(1, NUM_MARKERS + 1, dtype=tf.float64)[tf.newaxis, :], state.positions)
    desired = tf.where(init, _initial_desired(probs), state.desired)
    return P2State(heights, positions, desired, new_count), take


def _p2_loop(state, x, active, probs):
    """The sequential P² update on initialised estimators.

    Args:
      state: `P2State`; estimators with an active observation here are initialised.
      x: `[N, E]` float64 observations, column e for estimator e.
      active: `[N, E]` bool; the active entries of a column form a prefix.
      probs: `[E]` float64.

    Returns:
      The new `P2State`.
    """
    dn = tf.unstack(_desired_increments(probs), axis=1)  # 5 x [E]
    inf = tf.constant(np.inf, tf.float64)
    x_lo = tf.where(active, x, inf)  # inactive: no marker move, no new minimum
    x_hi = tf.where(active, x, -inf)  # inactive: no new maximum
    act_f = tf.cast(active, tf.float64)
    num_iters = tf.reduce_max(tf.reduce_sum(tf.cast(active, tf.int32), axis=0))
    num_iters = tf.minimum(num_iters, tf.shape(x)[0])

    q0 = tf.unstack(state.heights, axis=1)
    n0 = tf.unstack(state.positions, axis=1)
    d0 = tf.unstack(state.desired, axis=1)

    def body(i, q, n, nd):
        xl, xh, af = x_lo[i], x_hi[i], act_f[i]
        a = af > 0.0
        q = list(q)
        n = list(n)
        # B1: extremes (cell search is implicit in the increments below).
        q[0] = tf.minimum(q[0], xl)
        q[4] = tf.maximum(q[4], xh)
        # B2: n[j] += 1 for the markers above x (marker 4 always, marker 0 never).
        for j in (1, 2, 3):
            n[j] = n[j] + tf.cast(xl < q[j], tf.float64)
        n[4] = n[4] + af
        nd = [nd[j] + af * dn[j] for j in range(NUM_MARKERS)]
        # B3: adjust markers 1, 2, 3 in order.
        for j in (1, 2, 3):
            d = nd[j] - n[j]
            gap_up = n[j + 1] - n[j]
            gap_dn = n[j] - n[j - 1]
            up = (d >= 1.0) & (gap_up > 1.0)
            down = (d <= -1.0) & (gap_dn > 1.0)
            move = (up | down) & a
            s = tf.where(up, tf.constant(1.0, tf.float64), tf.constant(-1.0, tf.float64))
            parabolic = q[j] + s / (n[j + 1] - n[j - 1]) * (
                (gap_dn + s) * (q[j + 1] - q[j]) / gap_up
                + (gap_up - s) * (q[j] - q[j - 1]) / gap_dn)
            q_nb = tf.where(up, q[j + 1], q[j - 1])
            n_nb = tf.where(up, n[j + 1], n[j - 1])
            linear = q[j] + s * (q_nb - q[j]) / (n_nb - n[j])
            ok = (q[j - 1] < parabolic) & (parabolic < q[j + 1])
            q[j] = tf.where(move, tf.where(ok, parabolic, linear), q[j])
            n[j] = tf.where(move, n[j] + s, n[j])
        return i + 1, q, n, nd

    _, q, n, nd = tf.while_loop(
        lambda i, *_: i < num_iters, body, (tf.constant(0), q0, n0, d0),
        parallel_iterations=1)
    count = state.count + tf.reduce_sum(act_f, axis=0)
    return P2State(tf.stack(q, axis=1), tf.stack(n, axis=1), tf.stack(nd, axis=1), count)


def _compact_active_first(x, active):
    """Stable per-column reordering so that the active entries of each column come first."""
    order = tf.argsort(tf.cast(tf.logical_not(active), tf.int32), axis=0, stable=True)
    return (tf.gather(tf.transpose(x), tf.transpose(order), batch_dims=1),
            tf.gather(tf.transpose(active), tf.transpose(order), batch_dims=1))


def p2_absorb(state: P2State, x, active, probs, compact: bool = True) -> P2State:
    """Feeds observations, in order, to E independent P² estimators.

    Args:
      state: `P2State` of E estimators.
      x: `[N, E]` observations (cast to float64); estimator e sees column e, in row order.
      active: `[N, E]` bool; inactive entries are skipped (not observations).
      probs: `[E]` probabilities in ]0, 1[ (float64).
      compact: reorder each column (stably) so that active entries form a prefix; pass
        False only when that already holds.

    Returns:
      The new `P2State`. Static shapes; runs under `tf.function(jit_compile=True)`.
    """
    x = tf.cast(x, tf.float64)
    active = tf.cast(active, tf.bool)
    probs = tf.cast(probs, tf.float64)
    if x.shape[0] == 0:  # static empty stream: nothing to absorb
        return state
    if compact:
        x_t, a_t = _compact_active_first(x, active)
        x, active = tf.transpose(x_t), tf.transpose(a_t)
    state, taken = _fill_initial_buffer(state, x, active, probs)
    # Shift each column up by the number of observations the buffer took.
    num_obs = tf.shape(x)[0]
    rows = tf.range(num_obs)[:, tf.newaxis] + taken[tf.newaxis, :]  # [N, E]
    in_range = rows < num_obs
    rows = tf.minimum(rows, tf.maximum(num_obs - 1, 0))
    x_shift = tf.transpose(tf.gather(tf.transpose(x), tf.transpose(rows), batch_dims=1))
    a_shift = tf.transpose(tf.gather(tf.transpose(active), tf.transpose(rows), batch_dims=1))
    a_shift = a_shift & in_range
    return _p2_loop(state, x_shift, a_shift, probs)


def p2_estimates(state: P2State, probs) -> tf.Tensor:
    """Current estimates `[E]` float64: q[2] once initialised, else the exact quantile
    (linear interpolation) of the buffered observations; NaN without observations."""
    probs = tf.cast(probs, tf.float64)
    count = state.count
    slots = tf.range(NUM_MARKERS, dtype=tf.float64)[tf.newaxis, :]
    filled = slots < count[:, tf.newaxis]
    buf = tf.sort(tf.where(filled, state.heights, tf.constant(np.inf, tf.float64)), axis=1)
    pos = probs * tf.maximum(count - 1.0, 0.0)
    lo = tf.floor(pos)
    frac = pos - lo
    lo_i = tf.cast(lo, tf.int32)
    hi_i = tf.minimum(lo_i + 1, tf.maximum(tf.cast(count, tf.int32) - 1, 0))
    lo_i = tf.minimum(lo_i, NUM_MARKERS - 1)
    hi_i = tf.minimum(hi_i, NUM_MARKERS - 1)
    v_lo = tf.gather(buf, lo_i[:, tf.newaxis], batch_dims=1)[:, 0]
    v_hi = tf.gather(buf, hi_i[:, tf.newaxis], batch_dims=1)[:, 0]
    exact = v_lo + frac * tf.where(frac > 0.0, v_hi - v_lo, tf.zeros_like(v_lo))
    nan = tf.constant(np.nan, tf.float64)
    estimate = tf.where(count >= NUM_MARKERS, state.heights[:, 2], exact)
    return tf.where(count > 0, estimate, nan)


_p2_absorb_xla = tf.function(p2_absorb, jit_compile=True, reduce_retracing=True,
                             autograph=False)
_p2_absorb_graph = tf.function(p2_absorb, jit_compile=False, reduce_retracing=True,
                               autograph=False)


def p2_absorb_fn(jit_compile: bool):
    """``p2_absorb`` wrapped in a `tf.function`, XLA-compiled or not."""
    return _p2_absorb_xla if jit_compile else _p2_absorb_graph


# ------------------------------------------------------- weighted summary ----
# A mergeable weighted summary of a stream (the alternative to P² that needs no sequential
# loop). Per variable: up to M points (value, weight), kept sorted by value, empty slots
# with weight 0 at the end. Weighted quantile function: point i sits at the cumulative
# mass c_i = (w_0 + ... + w_{i-1}) + w_i / 2 and the quantile at mass r is the linear
# interpolation of the values over the c_i (the first / last value outside). With unit
# weights this is the Hazen quantile (``np.quantile(x, p, method="hazen")``). Each update
# concatenates the new observations (weight 1), sorts, and — if more than M points have
# weight — compresses back to M points of weight W/M placed at the masses (j + 1/2) W/M,
# j = 0..M-1, which the interpolated quantile function goes through exactly: the summary
# estimates the quantiles of the whole stream (like P²), with a rank error of order 1/M,
# in a fixed number of parallel ops per update (one sort, one cumulative sum, one binary
# search) instead of one sequential iteration per observation.
DEFAULT_SUMMARY_SIZE = 8192


class SummaryState(NamedTuple):
    """Weighted summaries of V variables (float64).

    values: `[V, M]` sorted point values (0 in empty slots).
    weights: `[V, M]` point weights (> 0 for a prefix, 0 in empty slots).
    count: `[V]` number of observations absorbed (the total weight).
    """
    values: tf.Tensor
    weights: tf.Tensor
    count: tf.Tensor


def summary_initial_state(num_variables: int, size: int = DEFAULT_SUMMARY_SIZE) -> SummaryState:
    """The empty summaries of `num_variables` variables with `size` points each."""
    zeros = tf.zeros([num_variables, size], tf.float64)
    return SummaryState(zeros, zeros, tf.zeros([num_variables], tf.float64))


def _count_at_or_below(sorted_rows, queries):
    """`[V, R]` int32: per row, how many entries of `sorted_rows` `[V, K]` are <= each of
    the sorted `queries` `[V, R]` (``tf.searchsorted(side="right")``, computed with one
    merge sort: XLA's CPU search compares every pair)."""
    k, r = tf.shape(sorted_rows)[1], tf.shape(queries)[1]
    merged = tf.concat([sorted_rows, queries], axis=1)
    order = tf.argsort(merged, axis=1, stable=True)  # ties: table entries first
    is_query = order >= k
    before = tf.cumsum(tf.cast(tf.logical_not(is_query), tf.int32), axis=1)
    # the queries appear in their own (sorted) order; pick their slots in that order.
    slot = tf.where(is_query, tf.range(k + r)[tf.newaxis, :], k + r)
    slot = tf.sort(slot, axis=1)[:, :r]
    return tf.gather(before, slot, batch_dims=1)


def _weighted_quantile(values, weights, mass):
    """Interpolated weighted quantile function (see above) of sorted rows.

    Args:
      values: `[V, K]` sorted values, the weighted points a prefix of each row.
      weights: `[V, K]` weights (> 0 on the prefix, 0 after).
      mass: `[V, R]` cumulative masses in [0, W] (W = row's total weight).

    Returns:
      `[V, R]` values; the row's first value where it has no weight at all.
    """
    k = tf.shape(values)[1]
    mid = tf.cumsum(weights, axis=1) - 0.5 * weights
    mid = tf.where(weights > 0.0, mid, tf.constant(np.inf, tf.float64))
    idx = _count_at_or_below(mid, mass)
    lo = tf.maximum(idx - 1, 0)
    hi = tf.minimum(idx, k - 1)
    hi = tf.where(tf.gather(weights, hi, batch_dims=1) > 0.0, hi, lo)
    m_lo, m_hi = tf.gather(mid, lo, batch_dims=1), tf.gather(mid, hi, batch_dims=1)
    v_lo, v_hi = tf.gather(values, lo, batch_dims=1), tf.gather(values, hi, batch_dims=1)
    gap = m_hi - m_lo
    frac = tf.where(gap > 0.0, tf.clip_by_value((mass - m_lo) / tf.where(gap > 0.0, gap, 1.0),
                                                0.0, 1.0), tf.zeros_like(gap))
    return v_lo + frac * (v_hi - v_lo)


def summary_absorb(state: SummaryState, x, active) -> SummaryState:
    """Merges observations into V weighted summaries (one sort, no loop over them).

    Args:
      state: `SummaryState` of V variables, M points each.
      x: `[N, V]` observations (cast to float64); variable v sees column v.
      active: `[N, V]` bool; inactive entries are skipped (any positions).

    Returns:
      The new `SummaryState`: the exact points while at most M have weight, else M points
      of weight W/M at the masses (j + 1/2) W/M of the merged quantile function.
    """
    x = tf.transpose(tf.cast(x, tf.float64))
    w_new = tf.transpose(tf.cast(tf.cast(active, tf.bool), tf.float64))
    size = tf.shape(state.values)[1]  # M (dynamic: the tf.function relaxes shapes)
    inf = tf.constant(np.inf, tf.float64)
    vals = tf.concat([tf.where(state.weights > 0.0, state.values, inf),
                      tf.where(w_new > 0.0, x, inf)], axis=1)
    wts = tf.concat([state.weights, w_new], axis=1)
    order = tf.argsort(vals, axis=1, stable=True)
    vals = tf.gather(vals, order, batch_dims=1)
    wts = tf.gather(wts, order, batch_dims=1)
    total = tf.reduce_sum(wts, axis=1, keepdims=True)
    fits = tf.reduce_sum(tf.cast(wts > 0.0, tf.int32), axis=1, keepdims=True) <= size
    mass = ((tf.range(size, dtype=tf.float64)[tf.newaxis, :] + 0.5)
            / tf.cast(size, tf.float64) * total)
    compressed = _weighted_quantile(vals, wts, mass)
    equal = tf.broadcast_to(total / tf.cast(size, tf.float64), tf.shape(vals[:, :size]))
    new_w = tf.where(fits, wts[:, :size], equal)
    new_v = tf.where(fits, vals[:, :size], compressed)
    new_v = tf.where(new_w > 0.0, new_v, tf.zeros_like(new_v))
    return SummaryState(new_v, new_w, state.count + tf.reduce_sum(w_new, axis=1))


def summary_estimates(state: SummaryState, probs, variable_index) -> tf.Tensor:
    """`[E]` float64 estimates: the weighted quantile at mass p·W of the summary of
    variable ``variable_index[e]`` for ``probs[e]``; NaN for a summary that saw nothing."""
    probs = tf.cast(probs, tf.float64)
    values = tf.gather(state.values, variable_index)
    weights = tf.gather(state.weights, variable_index)
    count = tf.gather(state.count, variable_index)
    total = tf.reduce_sum(weights, axis=1)
    est = _weighted_quantile(values, weights, (probs * total)[:, tf.newaxis])[:, 0]
    return tf.where(count > 0, est, tf.constant(np.nan, tf.float64))


_summary_absorb_xla = tf.function(summary_absorb, jit_compile=True,
                                  reduce_retracing=True, autograph=False)
_summary_absorb_graph = tf.function(summary_absorb, jit_compile=False,
                                    reduce_retracing=True, autograph=False)


def summary_absorb_fn(jit_compile: bool):
    """``summary_absorb`` wrapped in a `tf.function`, XLA-compiled or not."""
    return _summary_absorb_xla if jit_compile else _summary_absorb_graph


def summary_quantiles(values, probs: Sequence[float], chunk_size: int = DEFAULT_SAMPLE_SIZE,
                      size: int = DEFAULT_SUMMARY_SIZE, jit_compile: bool = True) -> np.ndarray:
    """Weighted-summary estimates of the `probs`-quantiles of the 1-D stream `values`, fed
    in chunks of `chunk_size` (as the layer feeds one step's subsample), `size` points."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if np.any((probs <= 0.0) | (probs >= 1.0)):
        raise ValueError(f"probabilities must lie in ]0, 1[: {probs}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    state = summary_initial_state(1, size)
    absorb = summary_absorb_fn(jit_compile)
    for start in range(0, x.size, chunk_size):
        chunk = x[start:start + chunk_size]
        pad = chunk_size - chunk.size
        active = np.concatenate([np.ones(chunk.size, bool), np.zeros(pad, bool)])
        chunk = np.concatenate([chunk, np.zeros(pad)])
        state = absorb(state, tf.constant(chunk[:, None]), tf.constant(active[:, None]))
    return summary_estimates(state, tf.constant(probs), tf.zeros([probs.size], tf.int32)).numpy()

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
    state = p2_initial_state(e)
    state = p2_absorb_fn(jit_compile)(state, xs, active, tf.constant(probs), compact=False)
    return p2_estimates(state, tf.constant(probs)).numpy()


def _replica_info():
    """(replica context or None, number of replicas, replica id as int32 tensor)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or tf.distribute.in_cross_replica_context():
        return None, 1, tf.constant(0, tf.int32)
    num = ctx.num_replicas_in_sync
    return ctx, num, tf.cast(ctx.replica_id_in_sync_group, tf.int32)


_M24 = (1 << 24) - 1
_ODD = (0x9E3779, 0x5BD1E9, 0x2C1B3D, 0x7FEB35)  # odd 24-bit multipliers


def _permute24(x, key):
    """A keyed bijection of [0, 2^24) (int64 in, int64 out): xor/add of the key and
    multiply-xorshift rounds, each invertible modulo 2^24. Plain integer arithmetic
    (products < 2^48), so it gives the same bits on CPU, GPU and under XLA — unlike
    ``tf.random.stateless_*``, whose XLA kernels draw different numbers."""
    x = tf.bitwise.bitwise_xor(x, key)
    x = tf.bitwise.bitwise_and(x * _ODD[0], _M24)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(12, tf.int64)))
    x = tf.bitwise.bitwise_and(x * _ODD[1] + key, _M24)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(11, tf.int64)))
    x = tf.bitwise.bitwise_and(x * _ODD[2], _M24)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(13, tf.int64)))
    x = tf.bitwise.bitwise_and(x * _ODD[3], _M24)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(12, tf.int64)))


def _fold24(x):
    x = tf.cast(x, tf.int64)
    return tf.bitwise.bitwise_and(
        tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(24, tf.int64))), _M24)


def hash_keys(size: int, seed) -> tf.Tensor:
    """`[size]` float32 random keys in [0, 1), pairwise distinct when size <= 2^24.

    Args:
      size: static number of keys.
      seed: int tensor/sequence of any length (e.g. [seed, step, replica]); each word is
        folded into the key.

    Returns:
      keys: `key[i] = π(i) / 2^24` for a seed-dependent permutation π of [0, 2^24).
    """
    words = tf.reshape(tf.cast(seed, tf.int64), [-1])
    key = tf.constant(0x3C6EF3, tf.int64)
    for j in range(words.shape[0]):
        key = _permute24(_fold24(words[j]), key)
    idx = tf.range(size, dtype=tf.int64)
    if size > (1 << 24):
        idx = _fold24(idx)  # ties become possible; still deterministic
    perm = _permute24(_permute24(idx, key), tf.bitwise.bitwise_xor(key, 0x5A5A5A))
    return tf.cast(perm, tf.float32) * (1.0 / (1 << 24))


def uniform_subsample(values: Mapping[str, tf.Tensor], valid, size: int, seed) -> Tuple[
        Dict[str, tf.Tensor], tf.Tensor]:
    """A uniform random subsample, without replacement, of the valid entries.

    All variables share the same pixel selection (they are values at the same pixels).
    Selection: the `size` largest of per-entry random keys (``hash_keys``; invalid -> -1),
    so identical on CPU, GPU and under XLA.

    Args:
      values: name -> tensor, all of one static shape (any rank).
      valid: bool/0-1 tensor of that shape, or None (all valid). Entries where any
        variable is non-finite are invalid.
      size: number of entries to draw (static).
      seed: int words (``hash_keys``).

    Returns:
      (samples: name -> `[size]` float32, active: `[size]` bool). Valid draws come first,
      in random order; when fewer than `size` entries are valid the rest are inactive
      (their values are arbitrary).
    """
    names = list(values)
    flat = {k: tf.reshape(tf.cast(values[k], tf.float32), [-1]) for k in names}
    total = flat[names[0]].shape[0]
    if total is None:
        raise ValueError("uniform_subsample needs static shapes")
    if valid is None:
        valid_flat = tf.ones([total], tf.bool)
    else:
        valid_flat = tf.reshape(tf.cast(valid, tf.bool), [-1])
    for n in names:  # a non-finite value is never an observation
        valid_flat = valid_flat & tf.math.is_finite(flat[n])
    keys = hash_keys(total, seed)
    keys = tf.where(valid_flat, keys, -tf.ones_like(keys))
    k = min(size, total)
    top, idx = tf.math.top_k(keys, k=k, sorted=True)
    active = top >= 0.0
    samples = {n: tf.gather(flat[n], idx) for n in names}
    if k < size:
        pad = size - k
        active = tf.concat([active, tf.zeros([pad], tf.bool)], 0)
        samples = {n: tf.concat([v, tf.zeros([pad], v.dtype)], 0) for n, v in samples.items()}
    return samples, active


_uniform_subsample_xla = tf.function(uniform_subsample, jit_compile=True, autograph=False)


def uniform_subsample_fn(jit_compile: bool):
    """``uniform_subsample``, XLA-compiled (one fused kernel over all pixels) or plain."""
    return _uniform_subsample_xla if jit_compile else uniform_subsample


def fill_inactive(samples: tf.Tensor, active: tf.Tensor) -> tf.Tensor:
    """`[N]` samples whose active entries form a prefix -> `[N]` with the inactive tail
    filled by repeating the active prefix cyclically (zeros if none is active). Gives a
    fixed-shape tensor for histograms that only holds observed values."""
    n = tf.shape(samples)[0]
    num = tf.reduce_sum(tf.cast(active, tf.int32))
    idx = tf.math.floormod(tf.range(n), tf.maximum(num, 1))
    return tf.where(num > 0, tf.gather(samples, idx), tf.zeros_like(samples))


class RunningQuantiles(keras.layers.Layer):
    """Running quantile estimators of several variables with running and frozen ("current")
    values; the estimator itself is a subclass's (``P2Quantiles``, ``SummaryQuantiles``).

    Configured by ``probabilities = {variable_name: [p, ...]}``: one estimate per
    (variable, p). Each ``update`` draws a uniform random subsample (without replacement)
    of the valid values of every variable, gathers every replica's subsample in replica
    order (``all_gather``), and feeds the concatenation, in order, to the estimators on
    every replica, so that all replicas hold the same state.

    Epoch protocol (paper Fig. 4, docs/decisions.md D3):
    ``reset()`` at epoch start (running estimators emptied; ``current`` kept);
    ``update(...)`` every step; ``freeze()`` at epoch end copies the running estimates to
    ``current`` (estimators that saw nothing keep their previous value), which is what
    masking uses during the next epoch.

    State (non-trainable variables, saved by ``tf.train.Checkpoint``): the estimator's
    state, ``count`` (observations absorbed), the current values ``[E]`` float32, a 0/1
    flag per estimate telling whether ``current`` was ever frozen, and the int64 step
    counter that (with ``seed``) drives the stateless random subsampling — so the layer is
    deterministic and a restored checkpoint continues identically. Variables are
    ``synchronization="on_read"``, ``aggregation="only_first_replica"``: every replica
    updates its own copy locally (no communication besides the sample gather; the copies
    stay identical because the update is identical), and reading/saving in cross-replica
    context uses the first replica's copy. Create the layer inside ``strategy.scope()``.

    Sample size: ``sample_size`` values per variable per *global* step; each replica draws
    ``ceil(sample_size / num_replicas)``.

    Args:
      probabilities: mapping variable name -> sequence of probabilities in ]0, 1[.
        Defaults to ``DEFAULT_PROBABILITIES``.
      sample_size: values per variable per global step (see above).
      seed: integer seed of the subsampling.
      jit_compile: XLA-compile the subsampling and the estimator update (each a nested
        `tf.function(jit_compile=True)`).
    """

    def __init__(self, probabilities: Optional[Mapping[str, Sequence[float]]] = None,
                 sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0,
                 jit_compile: bool = True, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if probabilities is None:
            probabilities = DEFAULT_PROBABILITIES
        self._probabilities = {str(k): [float(p) for p in v] for k, v in probabilities.items()}
        if not self._probabilities:
            raise ValueError(f"{type(self).__name__} needs at least one tracked variable")
        for name, ps in self._probabilities.items():
            if not ps or any(not 0.0 < p < 1.0 for p in ps):
                raise ValueError(f"probabilities of {name!r} must lie in ]0, 1[: {ps}")
        self.sample_size = int(sample_size)
        self.seed = int(seed)
        self.jit_compile = bool(jit_compile)
        self.variable_names = list(self._probabilities)
        self._est_var = []  # estimate -> variable index
        self._est_prob = []
        self._index = {}
        for v, name in enumerate(self.variable_names):
            for p in self._probabilities[name]:
                self._index[(name, p)] = len(self._est_prob)
                self._est_var.append(v)
                self._est_prob.append(p)
        self.num_estimators = len(self._est_prob)
        self._create_state()
        e = self.num_estimators
        self.current_values = self._var("current", [e], "float32", np.nan)
        self.current_valid = self._var("current_valid", [e], "float32")
        self.step_counter = self._var("step_counter", [], "int64", 0)
        self.built = True

    @staticmethod
    def _var(name, shape, dtype, init=0.0):
        # autocast=False: a mixed-precision policy must never read the float64 state
        # (or the float32 quantiles) as float16.
        return keras.Variable(
            np.full(shape, init, dtype=dtype), dtype=dtype, trainable=False, name=name,
            autocast=False, synchronization="on_read", aggregation="only_first_replica")

    # ------------------------------------------------------ estimator (subclass) ----
    def _create_state(self):
        """Creates the estimator's state variables (``self.count`` among them)."""
        raise NotImplementedError

    def reset(self):
        """Empties the running estimators (call at epoch start). `current` is kept."""
        raise NotImplementedError

    def running_estimates(self) -> tf.Tensor:
        """`[E]` float32 running estimates (NaN for an estimate that saw nothing)."""
        raise NotImplementedError

    def _observations(self) -> tf.Tensor:
        """`[E]` number of observations behind each running estimate."""
        raise NotImplementedError

    def _absorb(self, cols, act) -> None:
        """Feeds `[N, V]` observations (column v: variable v; `act` `[N, V]` bool)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- config ----
    @property
    def probabilities(self) -> Dict[str, list]:
        return {k: list(v) for k, v in self._probabilities.items()}

    def get_config(self):
        config = super().get_config()
        config.update(probabilities=self.probabilities, sample_size=self.sample_size,
                      seed=self.seed, jit_compile=self.jit_compile)
        return config

    def estimator_index(self, name: str, p: float) -> int:
        """Index of the estimate of variable `name` at probability `p` (tolerance 1e-9)."""
        for (n, q), i in self._index.items():
            if n == name and abs(q - float(p)) < 1e-9:
                return i
        raise KeyError(f"no estimator for {name!r} at p={p}; tracked: {self._probabilities}")

    def _probs_tensor(self):
        return tf.constant(self._est_prob, tf.float64)

    # ---------------------------------------------------------------- reading ----
    def running(self, name: str, p: float) -> tf.Tensor:
        """Scalar running estimate of variable `name` at probability `p`."""
        return self.running_estimates()[self.estimator_index(name, p)]

    def current(self, name: str, p: float) -> tf.Tensor:
        """Scalar frozen estimate (previous epoch) of `name` at `p`; NaN if never frozen."""
        return tf.convert_to_tensor(self.current_values)[self.estimator_index(name, p)]

    def current_is_valid(self, name: str, p: float) -> tf.Tensor:
        """Scalar bool: `current(name, p)` has been frozen from at least one observation."""
        return tf.convert_to_tensor(self.current_valid)[self.estimator_index(name, p)] > 0.5

    def estimates_dict(self, which: str = "current") -> Dict[str, tf.Tensor]:
        """{"<name>_q<p>": scalar float32} for all estimators; `which` in current/running."""
        vals = (self.running_estimates() if which == "running"
                else tf.convert_to_tensor(self.current_values))
        out = {}
        for (name, p), i in self._index.items():
            out[f"{name}_q{p:g}"] = vals[i]
        return out

    # ------------------------------------------------------------ epoch hooks ----
    def freeze(self):
        """Copies the running estimates to `current` (call at epoch end). Estimators that
        saw no observation keep their previous current value."""
        seen = self._observations() > 0
        run = self.running_estimates()
        self.current_values.assign(tf.where(seen, run, tf.convert_to_tensor(self.current_values)))
        self.current_valid.assign(tf.where(seen, tf.ones_like(run),
                                           tf.convert_to_tensor(self.current_valid)))

    # ----------------------------------------------------------------- update ----
    def per_replica_sample_size(self, num_replicas: Optional[int] = None) -> int:
        if num_replicas is None:
            num_replicas = _replica_info()[1]
        return int(math.ceil(self.sample_size / num_replicas))

    def subsample(self, values: Mapping[str, tf.Tensor], valid=None):
        """This replica's uniform random subsample of the valid values.

        Advances the step counter (so call it once per step on every replica).

        Args:
          values: name -> tensor (every tracked variable; all of one shape).
          valid: bool/0-1 tensor of that shape (e.g. the non-occlusion mask) or None.

        Returns:
          (samples: name -> `[m]` float32, active: `[m]` bool), m = per-replica size;
          active entries first.
        """
        missing = [n for n in self.variable_names if n not in values]
        if missing:
            raise KeyError(f"{type(self).__name__}.subsample: missing variables {missing}")
        _, num_replicas, replica_id = _replica_info()
        counter = tf.convert_to_tensor(self.step_counter)
        seed = tf.stack([tf.constant(self.seed, tf.int64), counter,
                         tf.cast(replica_id, tf.int64)])
        self.step_counter.assign(counter + 1)
        vals = {n: tf.stop_gradient(values[n]) for n in self.variable_names}
        if valid is not None:
            valid = tf.stop_gradient(tf.cast(valid, tf.bool))
        return uniform_subsample_fn(self.jit_compile)(
            vals, valid, self.per_replica_sample_size(num_replicas), seed)

    def update_from_samples(self, samples: Mapping[str, tf.Tensor], active,
                            enabled=True) -> None:
        """Gathers every replica's samples (replica order) and absorbs them.

        The gather is a cross-replica synchronisation point: under ``MirroredStrategy`` call
        this directly in the function given to ``strategy.run`` — not inside a nested
        ``tf.function``/XLA cluster or a ``tf.cond`` branch (TF cannot ``merge_call``
        there). ``enabled`` is how to switch the update off without control flow.

        Args:
          samples: name -> `[m]` this replica's samples.
          active: `[m]` bool or name -> `[m]` bool.
          enabled: Python or scalar tensor bool; False: every sample is inactive (the
            state is unchanged).
        """
        ctx, num_replicas, _ = _replica_info()
        cols = tf.stack([tf.cast(samples[n], tf.float32) for n in self.variable_names], axis=1)
        if isinstance(active, Mapping):
            act = tf.stack([tf.cast(active[n], tf.bool) for n in self.variable_names], axis=1)
        else:
            act = tf.tile(tf.cast(active, tf.bool)[:, tf.newaxis], [1, len(self.variable_names)])
        if ctx is not None and num_replicas > 1:
            cols = ctx.all_gather(cols, axis=0)
            act = tf.cast(ctx.all_gather(tf.cast(act, tf.int32), axis=0), tf.bool)
        if not (isinstance(enabled, bool) and enabled):
            act = tf.logical_and(act, tf.cast(enabled, tf.bool))
        self._absorb(cols, act)

    def update(self, values: Mapping[str, tf.Tensor], valid=None, enabled=True):
        """Subsample + gather + absorb (see ``update_from_samples``). Returns this replica's
        (samples, active)."""
        samples, active = self.subsample(values, valid)
        self.update_from_samples(samples, active, enabled)
        return samples, active

    def call(self, values, valid=None):
        """Keras entry point: ``update`` then return the running estimates `[E]`."""
        self.update(values, valid)
        return self.running_estimates()

    def compute_output_shape(self, *args, **kwargs):
        return (self.num_estimators,)


class P2Quantiles(RunningQuantiles):
    """``RunningQuantiles`` with one independent P² 5-marker estimator per (variable, p)
    (the paper's estimator). One update runs ``p2_absorb``: a sequential loop of one
    iteration per gathered sample (``sample_size`` per step).

    State: marker heights, positions, desired positions and counts (float64, ``[E, 5]`` /
    ``[E]``). ``jit_compile``: ~100x faster loop on CPU.
    """

    def _create_state(self):
        e = self.num_estimators
        self.heights = self._var("heights", [e, NUM_MARKERS], "float64")
        self.positions = self._var("positions", [e, NUM_MARKERS], "float64")
        self.desired = self._var("desired_positions", [e, NUM_MARKERS], "float64")
        self.count = self._var("count", [e], "float64")

    def state(self) -> P2State:
        return P2State(tf.convert_to_tensor(self.heights), tf.convert_to_tensor(self.positions),
                       tf.convert_to_tensor(self.desired), tf.convert_to_tensor(self.count))

    def _assign_state(self, s: P2State):
        self.heights.assign(s.heights)
        self.positions.assign(s.positions)
        self.desired.assign(s.desired)
        self.count.assign(s.count)

    def reset(self):
        self._assign_state(p2_initial_state(self.num_estimators))

    def running_estimates(self) -> tf.Tensor:
        return tf.cast(p2_estimates(self.state(), self._probs_tensor()), tf.float32)

    def _observations(self):
        return tf.convert_to_tensor(self.count)

    def _absorb(self, cols, act):
        est_var = tf.constant(self._est_var, tf.int32)
        x = tf.gather(cols, est_var, axis=1)  # [N, E]
        a = tf.gather(act, est_var, axis=1)
        self._assign_state(p2_absorb_fn(self.jit_compile)(self.state(), x, a,
                                                          self._probs_tensor()))


class SummaryQuantiles(RunningQuantiles):
    """``RunningQuantiles`` with one mergeable weighted summary of ``summary_size`` points
    per variable (all its probabilities read the same summary). One update runs
    ``summary_absorb``: a fixed number of parallel ops (sorts, cumulative sums), no loop
    over the samples.

    State: point values, point weights (float64, ``[V, M]``) and counts (``[V]``).

    Args (besides ``RunningQuantiles``'s):
      summary_size: M, points per variable (rank error of order 1/M).
    """

    def __init__(self, probabilities: Optional[Mapping[str, Sequence[float]]] = None,
                 sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0,
                 jit_compile: bool = True, summary_size: int = DEFAULT_SUMMARY_SIZE, **kwargs):
        if int(summary_size) < 2:
            raise ValueError(f"summary_size must be >= 2: {summary_size}")
        self.summary_size = int(summary_size)
        super().__init__(probabilities, sample_size, seed, jit_compile, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(summary_size=self.summary_size)
        return config

    def _create_state(self):
        v, m = len(self.variable_names), self.summary_size
        self.summary_values = self._var("summary_values", [v, m], "float64")
        self.summary_weights = self._var("summary_weights", [v, m], "float64")
        self.count = self._var("count", [v], "float64")

    def state(self) -> SummaryState:
        return SummaryState(tf.convert_to_tensor(self.summary_values),
                            tf.convert_to_tensor(self.summary_weights),
                            tf.convert_to_tensor(self.count))

    def reset(self):
        s = summary_initial_state(len(self.variable_names), self.summary_size)
        self.summary_values.assign(s.values)
        self.summary_weights.assign(s.weights)
        self.count.assign(s.count)

    def running_estimates(self) -> tf.Tensor:
        return tf.cast(summary_estimates(self.state(), self._probs_tensor(),
                                         tf.constant(self._est_var, tf.int32)), tf.float32)

    def _observations(self):
        return tf.gather(tf.convert_to_tensor(self.count), tf.constant(self._est_var, tf.int32))

    def _absorb(self, cols, act):
        s = summary_absorb_fn(self.jit_compile)(self.state(), cols, act)
        self.summary_values.assign(s.values)
        self.summary_weights.assign(s.weights)
        self.count.assign(s.count)


QUANTILE_ESTIMATORS = {"p2": P2Quantiles, "summary": SummaryQuantiles}


def make_quantile_layer(estimator: str = "p2", **kwargs) -> RunningQuantiles:
    """The running-quantile layer of `estimator` ("p2": the paper's P²; "summary": the
    loop-free weighted summary); `kwargs` are its constructor arguments."""
    if estimator not in QUANTILE_ESTIMATORS:
        raise ValueError(f"unknown quantile estimator {estimator!r}; one of "
                         f"{sorted(QUANTILE_ESTIMATORS)}")
    return QUANTILE_ESTIMATORS[estimator](**kwargs)
