"""Occlusion range map, forward-backward, geometric, epipolar and variance terms."""
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf import geometry as g
from coopnet_tf import losses

H, W = 12, 16
K_NP = np.array([[18.0, 0.0, 7.6], [0.0, 17.0, 5.3], [0.0, 0.0, 1.0]])


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float64)


def _const_flow(dx, dy, b=1, h=H, w=W):
    return tf.constant(np.broadcast_to([dx, dy], (b, h, w, 2)), tf.float32)


# ---------------------------------------------------------------- range map


def _np_splat(flow):
    b, h, w, _ = flow.shape
    out = np.zeros((b, h, w, 1))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                x, y = j + flow[n, i, j, 0], i + flow[n, i, j, 1]
                x0, y0 = int(np.floor(x)), int(np.floor(y))
                for xx in (x0, x0 + 1):
                    for yy in (y0, y0 + 1):
                        wgt = (1 - abs(x - xx)) * (1 - abs(y - yy))
                        if 0 <= xx < w and 0 <= yy < h:
                            out[n, yy, xx, 0] += wgt
    return out


def test_range_map_of_pure_translation():
    # Reverse flow s->t of +2 px in x: target columns 0 and 1 receive no source pixel.
    rm = _np(losses.range_map(_const_flow(2.0, 0.0)))[0, ..., 0]
    np.testing.assert_allclose(rm[:, :2], 0.0, atol=0)
    np.testing.assert_allclose(rm[:, 2:], 1.0, atol=1e-6)
    # Fractional, diagonal: -1.5 in y (band at the bottom), +0.5 in x (band on the left).
    rm = _np(losses.range_map(_const_flow(0.5, -1.5)))[0, ..., 0]
    np.testing.assert_allclose(rm[-1, :], 0.0, atol=1e-7)   # last row uncovered
    np.testing.assert_allclose(rm[-2, 1:], 0.5, atol=1e-6)  # half a row lands there
    np.testing.assert_allclose(rm[:-2, 1:], 1.0, atol=1e-6)
    np.testing.assert_allclose(rm[:-2, 0], 0.5, atol=1e-6)
    mask = _np(losses.non_occluded_mask(_const_flow(0.5, -1.5)))[0, ..., 0]
    np.testing.assert_array_equal(mask, rm > 0.2)
    np.testing.assert_array_equal(_np(losses.non_occluded_mask(_const_flow(0.5, -1.5),
                                                               threshold=0.6))[0, ..., 0], rm > 0.6)


def test_range_map_matches_brute_force_splatting_and_has_no_gradient():
    rng = np.random.default_rng(0)
    flow = rng.normal(scale=3.0, size=(2, H, W, 2))
    flow[0, 0, 0] = [1e7, -1e7]  # far away: dropped
    out = losses.range_map(tf.constant(flow, tf.float32))
    np.testing.assert_allclose(_np(out), _np_splat(flow), atol=1e-5)
    var = tf.Variable(tf.constant(flow, tf.float32))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(losses.range_map(var))
    grad = tape.gradient(total, var)
    assert grad is None or np.all(_np(grad) == 0)


def test_range_map_identical_under_jit():
    flow = tf.random.normal([2, H, W, 2], stddev=2.0, seed=1)
    eager = losses.range_map(flow)
    jit = tf.function(losses.range_map, jit_compile=True)(flow)
    np.testing.assert_allclose(_np(jit), _np(eager), atol=1e-5)
    half = losses.range_map(tf.cast(flow, tf.float16))
    assert half.dtype == tf.float32


# --------------------------------------------------------- forward-backward


def _affine_pair(a, b, h=H, w=W):
    """Consistent flows of the affine map p -> (I + A) p + b and its inverse."""
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    p = np.stack([u, v], axis=-1)
    fw = p @ a.T + b
    inv = np.linalg.inv(np.eye(2) + a)
    bw = (p - b) @ inv.T - p
    return fw[None], bw[None], p


def test_forward_backward_residual_zero_for_consistent_flows():
    a = np.array([[0.05, -0.02], [0.03, -0.04]])
    b = np.array([0.7, -0.4])
    fw, bw, p = _affine_pair(a, b)
    res = _np(losses.forward_backward_residual(tf.constant(fw, tf.float32),
                                               tf.constant(bw, tf.float32)))[0]
    target = p + fw[0]
    inside = ((target[..., 0] >= 0) & (target[..., 0] <= W - 1) &
              (target[..., 1] >= 0) & (target[..., 1] <= H - 1))
    assert inside.sum() > 0.6 * H * W
    # The backward flow is affine, so bilinear interpolation reproduces it exactly.
    np.testing.assert_allclose(res[inside], 0.0, atol=1e-4)
    mask = tf.constant(inside[None, ..., None], tf.float32)
    loss = losses.forward_backward_loss(tf.constant(fw, tf.float32), tf.constant(bw, tf.float32),
                                        mask)
    assert float(loss) < 1e-4
    # An inconsistent backward flow: residual = the added offset.
    bad = losses.forward_backward_loss(tf.constant(fw, tf.float32),
                                       tf.constant(bw + [0.5, -0.25], tf.float32), mask)
    assert float(bad) == pytest.approx(0.75, abs=1e-3)
    # Empty mask -> 0, not NaN.
    assert float(losses.forward_backward_loss(fw, bw, tf.zeros([1, H, W, 1]))) == 0.0


# ----------------------------------------------------- geometric consistency


def _plane_depth(normal, dist, K=K_NP):
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(K).T
    return dist / (rays @ normal)


def _pose(R, t):
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def _rot_y(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _run_gc(depth_t, depth_s, T):
    return losses.geometric_consistency(
        tf.constant(depth_t[None, ..., None], tf.float32),
        tf.constant(depth_s[None, ..., None], tf.float32),
        tf.constant(T[None], tf.float32), tf.constant(K_NP[None], tf.float32))


def test_geometric_consistency_zero_for_consistent_depth_and_pose():
    # Fronto-parallel wall, camera sliding parallel to it: both depths constant.
    depth = np.full((H, W), 5.0)
    diff, valid = _run_gc(depth, depth, _pose(np.eye(3), [0.4, 0.1, 0.0]))
    assert _np(valid).sum() > 0.5 * H * W
    np.testing.assert_allclose(_np(diff), 0.0, atol=1e-6)
    assert float(losses.masked_mean(diff, valid)) < 1e-6
    # Slanted plane, general motion; the source depth is the same plane seen from s:
    # n_s = R n, d_s = d + n_s . t.
    normal = np.array([0.2, -0.3, 0.93])
    normal /= np.linalg.norm(normal)
    R, t = _rot_y(0.04), np.array([0.3, -0.1, 0.2])
    n_s = R @ normal
    depth_t = _plane_depth(normal, 6.0)
    depth_s = _plane_depth(n_s, 6.0 + n_s @ t)
    diff, valid = _run_gc(depth_t, depth_s, _pose(R, t))
    v = _np(valid)[0, ..., 0] > 0
    assert v.sum() > 0.5 * H * W and not v.all()
    # Bilinear sampling of a smooth depth map: only second-order interpolation error.
    assert _np(diff)[0, ..., 0][v].max() < 2e-4
    # Inconsistent pair: source depth 20 % too far -> diff = 0.2 / 2.2 on valid pixels.
    diff, valid = _run_gc(depth_t, 1.2 * depth_s, _pose(R, t))
    np.testing.assert_allclose(_np(diff)[0, ..., 0][v], 0.2 / 2.2, atol=2e-4)


# ----------------------------------------------------------------- epipolar


def _np_epipolar(flow, T, K):
    R, t = T[:3, :3], T[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(K).T @ tx @ R @ np.linalg.inv(K)
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    p = np.stack([u, v, np.ones_like(u)], axis=-1)
    lines = p @ F.T
    q = p + np.concatenate([flow, np.zeros_like(flow[..., :1])], axis=-1)
    return np.abs((lines * q).sum(-1)) / np.hypot(lines[..., 0], lines[..., 1])


def test_epipolar_loss_static_scene_and_perturbed_flow():
    normal = np.array([0.1, 0.2, 0.97])
    normal /= np.linalg.norm(normal)
    depth = _plane_depth(normal, 7.0)
    T = _pose(_rot_y(0.03), [0.5, 0.05, 0.3])
    Tt = tf.constant(T[None], tf.float32)
    Kt = tf.constant(K_NP[None], tf.float32)
    flow = g.rigid_flow(tf.constant(depth[None, ..., None], tf.float32), Tt, Kt)
    assert float(losses.epipolar_loss(flow, Tt, Kt)) < 1e-3
    rng = np.random.default_rng(3)
    noisy = _np(flow)[0] + rng.normal(scale=1.0, size=(H, W, 2))
    dist = losses.epipolar_distance(tf.constant(noisy[None], tf.float32), Tt, Kt)
    np.testing.assert_allclose(_np(dist)[0, ..., 0], _np_epipolar(noisy, T, K_NP),
                               atol=1e-3, rtol=1e-4)
    loss = losses.epipolar_loss(tf.constant(noisy[None], tf.float32), Tt, Kt)
    assert float(loss) > 0.3
    # Invariant to the (unknown) translation scale; masks select pixels.
    T_small = T.copy()
    T_small[:3, 3] *= 0.01
    loss_small = losses.epipolar_loss(tf.constant(noisy[None], tf.float32),
                                      tf.constant(T_small[None], tf.float32), Kt)
    assert float(loss_small) == pytest.approx(float(loss), rel=1e-3)
    mask = np.zeros((1, H, W, 1))
    mask[0, 2, 3] = 1.0
    masked = losses.epipolar_loss(tf.constant(noisy[None], tf.float32), Tt, Kt, mask=mask)
    assert float(masked) == pytest.approx(_np(dist)[0, 2, 3, 0], rel=1e-5)
    # Gradients reach both the flow and the pose, and are finite at zero translation.
    vec = tf.Variable([[0.0, 0.03, 0.0, 0.5, 0.05, 0.3]])
    fl = tf.Variable(tf.constant(noisy[None], tf.float32))
    zero_t = tf.Variable(tf.zeros([1, 6]))
    with tf.GradientTape() as tape:
        total = (losses.epipolar_loss(fl, g.pose_vector_to_matrix(vec), Kt)
                 + losses.epipolar_loss(fl, g.pose_vector_to_matrix(zero_t), Kt))
    grads = tape.gradient(total, [vec, fl, zero_t])
    assert all(np.all(np.isfinite(_np(gr))) for gr in grads)
    assert np.abs(_np(grads[0])).sum() > 0 and np.abs(_np(grads[1])).sum() > 0


# ----------------------------------------------------------------- variance


def test_variance_loss_matches_numpy():
    rng = np.random.default_rng(4)
    depth = rng.uniform(1.0, 30.0, size=(3, 5, 6, 1))
    ref = np.mean(1.0 / (depth.reshape(3, -1).var(axis=1) + 1e-6))
    np.testing.assert_allclose(float(losses.variance_loss(tf.constant(depth, tf.float32))), ref,
                               rtol=1e-5)
    const = losses.variance_loss(tf.fill([2, 4, 4, 1], 3.0))
    np.testing.assert_allclose(float(const), 1e6, rtol=1e-3)  # 1 / eps, finite
