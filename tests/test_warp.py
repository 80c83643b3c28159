"""Rigid flow vs analytic plane homographies, bilinear sampler vs brute force, gradients,
XLA equivalence and mixed precision."""
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf import geometry as g

H, W = 24, 40
K_NP = np.array([[32.0, 0.0, 19.3], [0.0, 30.0, 11.6], [0.0, 0.0, 1.0]])


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float64)


def _rot(axis, angle):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _plane_scene(normal, dist, R, t, K=K_NP):
    """Depth of the plane n.X = d seen by the target camera and its homography flow.

    Returns target depth [H, W] and the analytic flow [H, W, 2] of
    H = K (R + t n^T / d) K^-1, all in float64 numpy, independent of the code under test.
    """
    normal = np.asarray(normal, np.float64)
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    rays = pix @ np.linalg.inv(K).T
    depth = dist / (rays @ normal)  # z-depth: rays have z = 1
    hom = K @ (R + np.outer(t, normal) / dist) @ np.linalg.inv(K)
    mapped = pix @ hom.T
    flow = mapped[..., :2] / mapped[..., 2:] - pix[..., :2]
    return depth, flow


def _transform(R, t):
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


@pytest.mark.parametrize(
    "normal, dist, R, t",
    [
        ([0.0, 0.0, 1.0], 6.0, _rot([0.1, 1.0, 0.05], 0.03), [0.25, -0.1, 0.4]),   # fronto-parallel
        ([0.3, -0.4, 0.866], 5.0, _rot([1.0, 0.2, -0.3], 0.05), [-0.3, 0.15, -0.5]),  # slanted
        ([-0.5, 0.0, 0.866], 8.0, np.eye(3), [1.0, 0.0, 0.0]),  # slanted, pure translation
    ],
)
def test_rigid_flow_equals_plane_homography(normal, dist, R, t):
    normal = np.asarray(normal) / np.linalg.norm(normal)
    depth, flow_true = _plane_scene(normal, dist, R, np.asarray(t))
    assert depth.min() > 1.0
    T = _transform(R, t)
    flow = g.rigid_flow(
        tf.constant(depth[None, ..., None], tf.float32),
        tf.constant(T[None], tf.float32),
        tf.constant(K_NP[None], tf.float32),
    )
    assert flow.shape == (1, H, W, 2) and flow.dtype == tf.float32
    assert np.abs(flow_true).max() > 1.0  # the motion is not trivial
    np.testing.assert_allclose(_np(flow)[0], flow_true, atol=1e-4)


def test_rigid_flow_identity_pose_is_zero_and_K_unbatched():
    depth = tf.random.uniform([2, H, W, 1], 1.0, 10.0, seed=1)
    flow = g.rigid_flow(depth, tf.eye(4, batch_shape=[2]), K_NP.astype(np.float32))
    np.testing.assert_allclose(_np(flow), 0.0, atol=1e-5)


# --------------------------------------------------------------- sampler


def _np_bilinear(image, coords, padding):
    """Brute-force bilinear sampling with explicit loops (pixel centres at integers)."""
    b, h, w, c = image.shape
    _, ho, wo, _ = coords.shape
    out = np.zeros((b, ho, wo, c))
    mask = np.zeros((b, ho, wo, 1))
    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                x, y = float(coords[n, i, j, 0]), float(coords[n, i, j, 1])
                mask[n, i, j, 0] = float(0 <= x <= w - 1 and 0 <= y <= h - 1)
                if padding == "border":
                    x = min(max(x, 0.0), w - 1.0)
                    y = min(max(y, 0.0), h - 1.0)
                x0, y0 = int(np.floor(x)), int(np.floor(y))
                acc = np.zeros(c)
                for xx in (x0, x0 + 1):
                    for yy in (y0, y0 + 1):
                        wgt = (1 - abs(x - xx)) * (1 - abs(y - yy))
                        if wgt == 0.0:
                            continue
                        if 0 <= xx < w and 0 <= yy < h:
                            acc += wgt * image[n, yy, xx]
                        # else: zeros padding -> contributes 0 (border never gets here
                        # with non-zero weight, because x, y were clamped)
                out[n, i, j] = acc
    return out, mask


def _shifted_coords(b, h, w, dx, dy):
    return _np(g.pixel_grid(b, h, w)) + np.array([dx, dy])


@pytest.mark.parametrize("padding", ["border", "zeros"])
@pytest.mark.parametrize("shift", [(2.0, -1.0), (0.3, 0.7), (-1.25, 2.5), (0.0, 0.0)])
def test_bilinear_sample_shifts_match_brute_force(padding, shift):
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(2, 7, 9, 3))
    coords = _shifted_coords(2, 7, 9, *shift)
    out, mask = g.bilinear_sample(tf.constant(image, tf.float32), tf.constant(coords, tf.float32),
                                  padding=padding)
    ref, ref_mask = _np_bilinear(image, coords, padding)
    np.testing.assert_allclose(_np(out), ref, atol=1e-5)
    np.testing.assert_array_equal(_np(mask), ref_mask)
    if shift == (2.0, -1.0):  # integer shift: an exact copy where in bounds
        np.testing.assert_allclose(_np(out)[:, 1:, :-2], image[:, :-1, 2:], atol=1e-6)


@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_bilinear_sample_random_and_out_of_bounds_coords(padding):
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(2, 6, 8, 2))
    coords = np.stack([rng.uniform(-3.0, 10.0, size=(2, 5, 11)),
                       rng.uniform(-3.0, 8.0, size=(2, 5, 11))], axis=-1)
    # Exact edges, half-pixel outside, far away.
    coords[0, 0, :6] = [[0, 0], [7, 5], [-0.5, 2], [7.5, 2], [3, -0.5], [3, 5.5]]
    coords[0, 1, 0] = [1e6, -1e6]
    out, mask = g.bilinear_sample(tf.constant(image, tf.float32), tf.constant(coords, tf.float32),
                                  padding=padding)
    assert out.shape == (2, 5, 11, 2) and mask.shape == (2, 5, 11, 1)
    ref, ref_mask = _np_bilinear(image, coords, padding)
    np.testing.assert_allclose(_np(out), ref, atol=1e-5)
    np.testing.assert_array_equal(_np(mask), ref_mask)
    assert ref_mask[0, 0, :6, 0].tolist() == [1, 1, 0, 0, 0, 0]
    if padding == "zeros":  # half a pixel outside: half the edge value
        np.testing.assert_allclose(_np(out)[0, 0, 2], 0.5 * image[0, 2, 0], atol=1e-6)
        np.testing.assert_allclose(_np(out)[0, 1, 0], 0.0, atol=0)
    else:
        np.testing.assert_allclose(_np(out)[0, 0, 2], image[0, 2, 0], atol=1e-6)


def test_flow_warp_and_rigid_warp():
    rng = np.random.default_rng(2)
    image = tf.constant(rng.uniform(size=(1, 7, 9, 3)), tf.float32)
    flow = tf.constant(np.broadcast_to([1.0, 2.0], (1, 7, 9, 2)), tf.float32)
    warped, in_bounds = g.flow_warp(image, flow)
    np.testing.assert_allclose(_np(warped)[:, :-2, :-1], _np(image)[:, 2:, 1:], atol=1e-6)
    assert _np(in_bounds)[0, :, :, 0].sum() == 5 * 8

    depth = tf.fill([1, 7, 9, 1], 4.0)
    T = g.pose_vector_to_matrix(tf.constant([[0.0, 0.02, 0.0, 0.1, 0.0, 0.05]]))
    K = tf.constant(K_NP[None], tf.float32)
    warped, in_bounds, rflow = g.rigid_warp(image, depth, T, K)
    np.testing.assert_allclose(_np(rflow), _np(g.rigid_flow(depth, T, K)), atol=0)
    expected, expected_mask = g.bilinear_sample(image, g.pixel_grid(1, 7, 9) + rflow)
    np.testing.assert_allclose(_np(warped), _np(expected), atol=0)
    np.testing.assert_allclose(_np(in_bounds), _np(expected_mask), atol=0)


# ------------------------------------------------------------- gradients


@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_sampler_gradients_reach_coords_and_image_and_are_finite(padding):
    h, w = 6, 8
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    ramp = (2.0 * u + 3.0 * v)[None, ..., None]  # I(x, y) = 2x + 3y
    image = tf.Variable(tf.constant(ramp, tf.float32))
    grid = _np(g.pixel_grid(1, h, w))
    cases = {
        "zero_flow": grid,
        "fractional": grid * 0.5 + 0.25,
        "borders": np.reshape([[0.0, 0.0], [w - 1.0, h - 1.0], [-2.0, 3.0], [w + 3.0, h + 1.0],
                               [0.0, h - 1.0], [w - 1.0, 0.0]] * 8, (1, 6, 8, 2)),
    }
    for name, c in cases.items():
        coords = tf.Variable(tf.constant(c, tf.float32))
        with tf.GradientTape() as tape:
            out, _ = g.bilinear_sample(image, coords, padding=padding)
            loss = tf.reduce_sum(out)
        g_img, g_coords = tape.gradient(loss, [image, coords])
        assert np.all(np.isfinite(_np(g_img))) and np.all(np.isfinite(_np(g_coords))), name
        assert np.abs(_np(g_img)).sum() > 0, name
        if name != "borders":
            # Interior (and zero flow): d sample / d coords = image gradient = (2, 3).
            interior = (c[..., 0] <= w - 2) & (c[..., 1] <= h - 2)
            np.testing.assert_allclose(_np(g_coords)[interior], np.broadcast_to([2.0, 3.0], (
                interior.sum(), 2)), atol=1e-4)


def test_rigid_flow_gradients_finite_at_identity_pose_and_zero_flow():
    depth = tf.Variable(tf.random.uniform([1, 8, 10, 1], 1.0, 5.0, seed=3))
    vec = tf.Variable(tf.zeros([1, 6]))
    image = tf.random.uniform([1, 8, 10, 3], seed=4)
    K = tf.constant(K_NP[None] * [[[0.25], [0.25], [1]]], tf.float32)
    with tf.GradientTape() as tape:
        warped, _, flow = g.rigid_warp(image, depth, g.pose_vector_to_matrix(vec), K)
        loss = tf.reduce_mean(tf.abs(warped - image)) + tf.reduce_mean(flow)
    g_depth, g_vec = tape.gradient(loss, [depth, vec])
    np.testing.assert_allclose(_np(flow), 0.0, atol=1e-5)
    assert np.all(np.isfinite(_np(g_depth))) and np.all(np.isfinite(_np(g_vec)))
    assert np.abs(_np(g_vec)).sum() > 0


# ------------------------------------------------------------ XLA, dtypes


def test_rigid_flow_and_sampler_identical_under_jit():
    depth = tf.random.uniform([2, 16, 24, 1], 1.0, 20.0, seed=5)
    T = g.pose_vector_to_matrix(tf.constant([[0.01, -0.02, 0.005, 0.3, -0.1, 0.5],
                                             [0.0, 0.03, 0.0, -0.2, 0.0, -0.4]]))
    K = tf.constant(np.stack([K_NP, K_NP]) * [[[0.6], [0.6], [1]]], tf.float32)
    eager = g.rigid_flow(depth, T, K)
    jit = tf.function(g.rigid_flow, jit_compile=True)(depth, T, K)
    np.testing.assert_allclose(_np(jit), _np(eager), atol=1e-5)

    image = tf.random.uniform([2, 16, 24, 3], seed=6)
    coords = g.pixel_grid(2, 16, 24) + eager
    for padding in ("border", "zeros"):
        fn = tf.function(lambda i, c, p=padding: g.bilinear_sample(i, c, padding=p),
                         jit_compile=True)
        out_e, mask_e = g.bilinear_sample(image, coords, padding=padding)
        out_j, mask_j = fn(image, coords)
        np.testing.assert_allclose(_np(out_j), _np(out_e), atol=1e-5)
        np.testing.assert_array_equal(_np(mask_j), _np(mask_e))


def test_half_precision_inputs_are_computed_in_float32():
    depth32 = tf.random.uniform([1, 16, 24, 1], 2.0, 8.0, seed=7)
    T = g.pose_vector_to_matrix(tf.constant([[0.0, 0.01, 0.0, 0.2, 0.0, 0.3]]))
    K = tf.constant(K_NP[None] * 10.0 * [[[1], [1], [0.1]]], tf.float32)  # cx ~ 190 px
    for dtype in (tf.float16, tf.bfloat16):
        depth = tf.cast(depth32, dtype)
        flow = g.rigid_flow(depth, tf.cast(T, dtype), K)
        assert flow.dtype == tf.float32
        ref = g.rigid_flow(tf.cast(depth, tf.float32), tf.cast(tf.cast(T, dtype), tf.float32), K)
        np.testing.assert_allclose(_np(flow), _np(ref), atol=1e-4)
    image = tf.cast(tf.random.uniform([1, 16, 24, 3], seed=8), tf.float16)
    coords = g.pixel_grid(1, 16, 24) + 0.3
    out, mask = g.bilinear_sample(image, coords)
    assert out.dtype == tf.float32 and mask.dtype == tf.float32


def test_under_mixed_float16_policy_and_jit():
    import keras

    from coopnet_tf import losses

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        conv = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")
        image = tf.random.uniform([1, 16, 24, 3], seed=9)
        disp = conv(image)
        assert disp.dtype == tf.float16  # what a network hands the losses
        T = g.pose_vector_to_matrix(tf.constant([[0.0, 0.01, 0.0, 0.2, 0.0, 0.3]], tf.float16))
        K = tf.constant(K_NP[None] * 0.6, tf.float32)

        @tf.function(jit_compile=True)
        def step(d, i):
            warped, _, flow = g.rigid_warp(i, d, T, K)
            return losses.photometric_error(i, warped), flow

        depth = 1.0 / (disp + 0.1)  # float16, as a depth head under the policy
        phi, flow = step(depth, image)
        assert phi.dtype == tf.float32 and flow.dtype == tf.float32
        ref = g.rigid_flow(tf.cast(depth, tf.float32), T, K)
        np.testing.assert_allclose(_np(flow), _np(ref), atol=1e-4)
        assert np.all(np.isfinite(_np(phi)))
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def test_non_finite_coordinates_sample_nothing_and_do_not_crash():
    """A NaN/inf coordinate (NaN batch, diverged net) is out of bounds, not an INT_MIN index."""
    image = tf.random.uniform([1, 4, 5, 2], seed=3)
    coords = tf.constant([[[[np.nan, 1.0], [1.0, np.inf], [-np.inf, 0.0], [2.0, 1.0]]]], tf.float32)
    for padding in ("border", "zeros"):
        samples, mask = g.bilinear_sample(image, coords, padding=padding)
        np.testing.assert_array_equal(mask.numpy()[0, 0, :, 0], [0.0, 0.0, 0.0, 1.0])
        np.testing.assert_allclose(samples.numpy()[0, 0, 3], image.numpy()[0, 1, 2], atol=1e-6)
    from coopnet_tf.losses import consistency
    flow = tf.fill([1, 4, 5, 2], np.nan)
    assert float(tf.reduce_sum(consistency.range_map(flow))) == 0.0
