"""Intrinsics, SE(3) pose conventions and projection, against independent numpy truth."""
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf import geometry as g

K_NP = np.array([[300.0, 0.0, 200.5], [0.0, 280.0, 60.25], [0.0, 0.0, 1.0]])


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float64)


# ----------------------------------------------------------------- intrinsics


def test_scale_crop_flip_pyramid_match_formulas():
    fx, fy, cx, cy = 300.0, 280.0, 200.5, 60.25
    K = tf.constant(K_NP[None], tf.float32)
    out = _np(g.scale_intrinsics(K, 0.5, 0.25))[0]
    np.testing.assert_allclose(out, [[150, 0, 100.25], [0, 70, 15.0625], [0, 0, 1]], atol=1e-5)
    out = _np(g.crop_intrinsics(K, 10.0, 5.0))[0]
    np.testing.assert_allclose(out, [[fx, 0, cx - 10], [0, fy, cy - 5], [0, 0, 1]], atol=1e-5)
    out = _np(g.flip_intrinsics(K, 416))[0]
    np.testing.assert_allclose(out, [[fx, 0, 415 - cx], [0, fy, cy], [0, 0, 1]], atol=1e-5)
    np.testing.assert_allclose(_np(g.flip_intrinsics(g.flip_intrinsics(K, 416), 416)), K_NP[None],
                               atol=1e-5)
    for level in range(4):
        out = _np(g.pyramid_intrinsics(K, level))[0]
        s = 2.0 ** level
        np.testing.assert_allclose(out, [[fx / s, 0, cx / s], [0, fy / s, cy / s], [0, 0, 1]],
                                   atol=1e-5)
    # Unbatched [3, 3] keeps its rank.
    assert g.scale_intrinsics(K_NP, 2.0, 2.0).shape == (3, 3)


def test_flip_intrinsics_is_consistent_with_flipping_pixels():
    # A 3-D point projects to x; in the mirrored camera (X -> -X) it projects to W-1-x.
    w = 64
    K = K_NP.copy()
    K[0, 2] = 20.3
    point = np.array([0.7, -0.2, 4.0])
    x = (K @ point)[0] / point[2]
    k_flip = _np(g.flip_intrinsics(K, w))
    mirrored = point * np.array([-1.0, 1.0, 1.0])
    x_flip = (k_flip @ mirrored)[0] / mirrored[2]
    assert x_flip == pytest.approx(w - 1 - x, abs=1e-4)


def test_invert_intrinsics_with_skew():
    K = K_NP.copy()
    K[0, 1] = 1.7
    k_inv = _np(g.invert_intrinsics(tf.constant(K[None], tf.float32)))[0]
    np.testing.assert_allclose(k_inv, np.linalg.inv(K), rtol=1e-5, atol=1e-7)


def test_pixel_grid_centres_at_integers():
    grid = _np(g.pixel_grid(2, 3, 4))
    assert grid.shape == (2, 3, 4, 2)
    assert grid[1, 2, 3].tolist() == [3.0, 2.0]  # (x, y) of row 2, column 3
    assert grid[0, 0, 0].tolist() == [0.0, 0.0]


# ------------------------------------------------------------------- poses


def _np_expm_so3(w):
    """Matrix exponential of [w]_x by its power series (independent of Rodrigues)."""
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]], dtype=np.float64)
    out = np.eye(3)
    term = np.eye(3)
    for n in range(1, 40):
        term = term @ k / n
        out = out + term
    return out


def _np_euler(rx, ry, rz):
    c, s = np.cos, np.sin
    r_x = np.array([[1, 0, 0], [0, c(rx), -s(rx)], [0, s(rx), c(rx)]])
    r_y = np.array([[c(ry), 0, s(ry)], [0, 1, 0], [-s(ry), 0, c(ry)]])
    r_z = np.array([[c(rz), -s(rz), 0], [s(rz), c(rz), 0], [0, 0, 1]])
    return r_x @ r_y @ r_z


def _random_vectors(n=16, seed=0, max_angle=3.0):
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0.0, max_angle, size=(n, 1))
    rot = axes * angles
    rot[0] = 0.0                      # identity
    rot[1] = [1e-6, -2e-6, 5e-7]      # tiny angle
    rot[2] = [0.0, np.pi - 1e-3, 0.0]  # near pi
    trans = rng.normal(size=(n, 3))
    return rot, trans


def test_axis_angle_matrix_matches_matrix_exponential_and_round_trips():
    rot, trans = _random_vectors()
    vec = np.concatenate([rot, trans], axis=1)  # Monodepth2 layout [rot, trans]
    T = _np(g.pose_vector_to_matrix(tf.constant(vec, tf.float32)))
    for i in range(len(vec)):
        np.testing.assert_allclose(T[i, :3, :3], _np_expm_so3(rot[i]), atol=2e-6)
        np.testing.assert_allclose(T[i, :3, 3], trans[i], atol=1e-6)
        np.testing.assert_allclose(T[i, 3], [0, 0, 0, 1], atol=0)
    back = _np(g.matrix_to_pose_vector(tf.constant(T, tf.float32)))
    np.testing.assert_allclose(back, vec, atol=2e-4)
    back_rot = _np(g.matrix_to_axis_angle(tf.constant(T[:, :3, :3], tf.float32)))
    np.testing.assert_allclose(back_rot, rot, atol=2e-4)


def test_euler_layout_and_round_trip():
    rng = np.random.default_rng(1)
    trans = rng.normal(size=(12, 3))
    eul = rng.uniform(-1.2, 1.2, size=(12, 3))
    vec = np.concatenate([trans, eul], axis=1)  # SfMLearner layout [trans, rot]
    T = _np(g.pose_vector_to_matrix(tf.constant(vec, tf.float32), rotation_mode="euler"))
    for i in range(len(vec)):
        np.testing.assert_allclose(T[i, :3, :3], _np_euler(*eul[i]), atol=2e-6)
        np.testing.assert_allclose(T[i, :3, 3], trans[i], atol=1e-6)
    back = _np(g.matrix_to_pose_vector(tf.constant(T, tf.float32), rotation_mode="euler"))
    np.testing.assert_allclose(back, vec, atol=1e-5)
    with pytest.raises(ValueError):
        g.pose_vector_to_matrix(tf.zeros([1, 6]), rotation_mode="quaternion")


def test_invert_and_compose_against_numpy():
    rot_a, trans_a = _random_vectors(seed=2)
    rot_b, trans_b = _random_vectors(seed=3)
    a = _np(g.pose_vector_to_matrix(tf.constant(np.c_[rot_a, trans_a], tf.float32)))
    b = _np(g.pose_vector_to_matrix(tf.constant(np.c_[rot_b, trans_b], tf.float32)))
    inv = _np(g.invert_transform(tf.constant(a, tf.float32)))
    np.testing.assert_allclose(inv, np.linalg.inv(a), atol=1e-5)
    ab = _np(g.compose_transforms(tf.constant(a, tf.float32), tf.constant(b, tf.float32)))
    np.testing.assert_allclose(ab, a @ b, atol=1e-5)
    # T_a_to_c = T_b_to_c @ T_a_to_b: a point mapped in two steps equals one step.
    point = np.array([0.3, -1.0, 5.0, 1.0])
    np.testing.assert_allclose(ab[0] @ point, a[0] @ (b[0] @ point), atol=1e-5)


def test_rotations_are_orthonormal_and_angles_correct():
    rot, _ = _random_vectors(seed=4)
    r = _np(g.axis_angle_to_matrix(tf.constant(rot, tf.float32)))
    for i in range(len(rot)):
        np.testing.assert_allclose(r[i] @ r[i].T, np.eye(3), atol=2e-6)
        assert np.linalg.det(r[i]) == pytest.approx(1.0, abs=2e-6)
    angles = _np(g.rotation_angle(tf.constant(r, tf.float32)))
    np.testing.assert_allclose(angles, np.linalg.norm(rot, axis=1), atol=2e-3)


def test_pose_gradients_finite_at_zero_rotation():
    vec = tf.Variable(tf.zeros([2, 6]))
    with tf.GradientTape() as tape:
        T = g.pose_vector_to_matrix(vec)
        loss = tf.reduce_sum(T * tf.random.stateless_normal([2, 4, 4], seed=[1, 2]))
    grad = tape.gradient(loss, vec).numpy()
    assert np.all(np.isfinite(grad))
    # At omega = 0, dR/domega = [e_i]_x: the gradient is the skew part of the upstream.
    up = tf.random.stateless_normal([2, 4, 4], seed=[1, 2]).numpy()[:, :3, :3]
    expected = np.stack([up[:, 2, 1] - up[:, 1, 2], up[:, 0, 2] - up[:, 2, 0],
                         up[:, 1, 0] - up[:, 0, 1]], axis=1)
    np.testing.assert_allclose(grad[:, :3], expected, atol=1e-5)


# ------------------------------------------------------- projection identity


def test_project_backproject_identity():
    rng = np.random.default_rng(5)
    depth = rng.uniform(0.5, 80.0, size=(2, 12, 20, 1)).astype(np.float32)
    K = np.stack([K_NP, K_NP * [[0.5], [0.5], [1]]]).astype(np.float32)
    points = g.backproject(depth, K)
    np.testing.assert_allclose(_np(points)[..., 2:], depth, rtol=1e-6)
    coords, z = g.project(points, K)
    np.testing.assert_allclose(_np(coords), _np(g.pixel_grid(2, 12, 20)), atol=1e-4)
    np.testing.assert_allclose(_np(z), depth, rtol=1e-6)
    # Independent check of one point: X = D K^-1 (u, v, 1).
    u, v = 7, 3
    expected = depth[1, v, u, 0] * np.linalg.inv(K[1].astype(np.float64)) @ [u, v, 1.0]
    np.testing.assert_allclose(_np(points)[1, v, u], expected, rtol=1e-5)


def test_project_clamps_depth():
    points = tf.constant([[[[1.0, 2.0, -5.0], [1.0, 2.0, 0.0]]]])
    coords, z = g.project(points, tf.eye(3))
    np.testing.assert_allclose(_np(z)[..., 0], [[[1e-3, 1e-3]]], rtol=1e-6)
    assert np.all(np.isfinite(_np(coords)))
    assert _np(coords)[0, 0, 0, 0] == pytest.approx(1000.0, rel=1e-5)  # no sign flip
