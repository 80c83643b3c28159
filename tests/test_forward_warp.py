"""Lee et al. two-stage warping (geometry/forward_warp.py) against an analytic scene:
a fronto-parallel background plane and a box moving in front of it, with integer-pixel
image motions so that the expected frames are exact copies of texture pixels."""
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf import geometry as g
from coopnet_tf import losses

H, W = 32, 64
F = 40.0
K_NP = np.array([[F, 0.0, 32.0], [0.0, F, 16.0], [0.0, 0.0, 1.0]])
Z_PLANE, Z_BOX = 20.0, 8.0
EGO_T = np.array([1.0, 0.0, 0.0])          # T_target_to_source = translation: X_s = X_t + t
BOX_R = np.array([-0.2, 0.2, 0.0])         # residual of the box (m, target camera)
# Image motions target -> source (pixels): plane f tx / Z = 2; box f (t + r) / Z = (4, 1);
# the box seen under the ego-motion alone moves f tx / Z_box = 5.
PLANE_DX = 2
BOX_DX, BOX_DY = 4, 1
BOX_EGO_DX = 5
BOX_T = (20, 31, 10, 19)                   # box in the target: x0, x1, y0, y1 (inclusive)


def _translation(t):
    T = np.eye(4)
    T[:3, 3] = t
    return T


def _scene(seed=0):
    """Source/target images and depths, rendered from textures with numpy."""
    rng = np.random.default_rng(seed)
    plane_tex = rng.uniform(size=(H, W, 3))          # plane colour at SOURCE pixel (u, v)
    box_tex = rng.uniform(size=(BOX_T[3] - BOX_T[2] + 1, BOX_T[1] - BOX_T[0] + 1, 3))
    x0, x1, y0, y1 = BOX_T
    src_box = np.zeros((H, W), bool)
    src_box[y0 + BOX_DY:y1 + BOX_DY + 1, x0 + BOX_DX:x1 + BOX_DX + 1] = True
    source = plane_tex.copy()
    source[src_box] = box_tex.reshape(-1, 3)
    source_depth = np.where(src_box, Z_BOX, Z_PLANE)

    tgt_box = np.zeros((H, W), bool)
    tgt_box[y0:y1 + 1, x0:x1 + 1] = True
    target = np.zeros((H, W, 3))
    visible = np.zeros((H, W), bool)                 # target pixel seen in the source
    for v in range(H):
        for u in range(W):
            if tgt_box[v, u]:
                target[v, u] = box_tex[v - y0, u - x0]
                visible[v, u] = True
            elif u + PLANE_DX < W:
                target[v, u] = plane_tex[v, u + PLANE_DX]
                visible[v, u] = not src_box[v, u + PLANE_DX]
            else:
                target[v, u] = rng.uniform(size=3)   # plane part outside the source view
    target_depth = np.where(tgt_box, Z_BOX, Z_PLANE)
    residual = np.where(tgt_box[..., None], BOX_R, 0.0)
    return dict(source=source, source_depth=source_depth, target=target, target_depth=target_depth,
                residual=residual, visible=visible, src_box=src_box, tgt_box=tgt_box)


def _b(x, channels=True):
    x = np.asarray(x, np.float32)[None]
    return tf.constant(x[..., None] if not channels else x)


def test_two_stage_warp_reproduces_target_with_moving_box():
    s = _scene()
    T = tf.constant(_translation(EGO_T)[None], tf.float32)
    K = tf.constant(K_NP[None], tf.float32)
    warped, in_bounds, flow = g.total_motion_warp(
        _b(s["source"]), _b(s["target_depth"], False), T, _b(s["residual"]), K)
    vis = s["visible"]
    assert vis.sum() > 0.6 * H * W and s["tgt_box"][vis].sum() == s["tgt_box"].sum()
    np.testing.assert_allclose(warped.numpy()[0][vis], s["target"][vis], atol=1e-4)
    assert np.all(in_bounds.numpy()[0, ..., 0][vis] == 1)
    expected_flow = np.where(s["tgt_box"][..., None], [BOX_DX, BOX_DY], [PLANE_DX, 0])
    np.testing.assert_allclose(flow.numpy()[0], expected_flow, atol=1e-4)
    # Without the residual field the box is not reproduced (the test can fail).
    rigid, _, _ = g.total_motion_warp(
        _b(s["source"]), _b(s["target_depth"], False), T, tf.zeros([1, H, W, 3]), K)
    assert np.abs(rigid.numpy()[0][s["tgt_box"]] - s["target"][s["tgt_box"]]).max() > 0.3
    # Zero residual is exactly the rigid warp of warp.py.
    ref, _, _ = g.rigid_warp(_b(s["source"]), _b(s["target_depth"], False), T, K)
    np.testing.assert_allclose(rigid.numpy(), ref.numpy(), atol=1e-6)


def test_stage1_forward_projection_of_ego_motion_equals_analytic_mapping():
    """Î^ego: the source scene (box static) seen from the target camera; the box lands
    5 px left, over plane pixels that also land there (the z-buffer keeps the box)."""
    s = _scene()
    T_s_to_t = tf.constant(_translation(-EGO_T)[None], tf.float32)
    K = tf.constant(K_NP[None], tf.float32)
    image, depth, valid = g.forward_project(_b(s["source"]), _b(s["source_depth"], False), T_s_to_t, K)
    exp_img = np.zeros((H, W, 3))
    exp_depth = np.zeros((H, W))
    exp_valid = np.zeros((H, W), bool)
    for v in range(H):
        for u in range(W):
            if u + BOX_EGO_DX < W and s["src_box"][v, u + BOX_EGO_DX]:
                exp_img[v, u] = s["source"][v, u + BOX_EGO_DX]
                exp_depth[v, u] = Z_BOX
                exp_valid[v, u] = True
            elif u + PLANE_DX < W and not s["src_box"][v, u + PLANE_DX]:
                exp_img[v, u] = s["source"][v, u + PLANE_DX]
                exp_depth[v, u] = Z_PLANE
                exp_valid[v, u] = True
    collisions = 0
    for v in range(H):   # plane pixels whose landing spot the box also takes
        for u in range(W - PLANE_DX):
            collisions += bool(exp_depth[v, u] == Z_BOX and not s["src_box"][v, u + PLANE_DX])
    assert collisions > 20
    np.testing.assert_array_equal(valid.numpy()[0, ..., 0] > 0, exp_valid)
    np.testing.assert_allclose(image.numpy()[0], exp_img, atol=1e-4)
    np.testing.assert_allclose(depth.numpy()[0, ..., 0], exp_depth, rtol=1e-5, atol=1e-4)
    # Static background: Î^ego equals the target wherever the box plays no part.
    static = exp_valid & ~s["tgt_box"] & (exp_depth == Z_PLANE) & s["visible"]
    assert static.sum() > 0.5 * H * W
    np.testing.assert_allclose(image.numpy()[0][static], s["target"][static], atol=1e-4)


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_z_buffer_keeps_the_nearest_surface(direction):
    """Two source pixels (depth 10 and 5) land on one target pixel; the near one wins,
    whichever comes first in memory."""
    K = tf.constant([[[10.0, 0.0, 2.0], [0.0, 10.0, 0.0], [0.0, 0.0, 1.0]]])
    colours = np.array([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7], [0.4, 0.5, 0.6], [0.3, 0.3, 0.3]])
    # x' = u + 10 d / z; the z = 30 pixels also splat (far) onto the landing pixel.
    if direction > 0:     # u=1 (z=5) -> 3, u=2 (z=10) -> 3
        depth = np.array([30.0, 5.0, 10.0, 30.0])
        landing, near = 3, 1
    else:                 # u=1 (z=10) -> 0, u=2 (z=5) -> 0
        depth = np.array([30.0, 10.0, 5.0, 30.0])
        landing, near = 0, 2
    T = tf.constant(_translation([direction, 0.0, 0.0])[None], tf.float32)
    image, out_depth, valid = g.forward_project(tf.constant(colours[None, None], tf.float32),
                                                tf.constant(depth[None, None, :, None], tf.float32), T, K)
    np.testing.assert_allclose(image.numpy()[0, 0, landing], colours[near], atol=1e-5)
    np.testing.assert_allclose(out_depth.numpy()[0, 0, landing, 0], depth[near], rtol=1e-5)
    assert valid.numpy()[0, 0, landing, 0] == 1


def test_forward_projection_gradients_are_finite_and_reach_depth_and_pose():
    rng = np.random.default_rng(3)
    image = tf.constant(rng.uniform(size=(2, 12, 16, 3)), tf.float32)
    depth = tf.Variable(rng.uniform(4.0, 9.0, size=(2, 12, 16, 1)), dtype=tf.float32)
    vec = tf.Variable([[0.01, -0.02, 0.005, 0.13, -0.05, 0.2]] * 2, dtype=tf.float32)
    K = tf.constant([[12.0, 0.0, 7.3], [0.0, 12.0, 5.6], [0.0, 0.0, 1.0]])
    with tf.GradientTape() as tape:
        out, d_out, valid = g.forward_project(image, depth, g.pose_vector_to_matrix(vec), K)
        loss = tf.reduce_sum(out * valid) + tf.reduce_sum(d_out)
    grads = tape.gradient(loss, [depth, vec])
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).max() > 0


def test_geometric_consistency_with_residual_field_is_zero_on_visible_pixels():
    s = _scene()
    T = tf.constant(_translation(EGO_T)[None], tf.float32)
    K = tf.constant(K_NP[None], tf.float32)
    args = (_b(s["target_depth"], False), _b(s["source_depth"], False), T, K)
    diff, valid = losses.geometric_consistency(*args, residual=_b(s["residual"]))
    vis = s["visible"] & (valid.numpy()[0, ..., 0] > 0)
    assert vis.sum() > 0.6 * H * W
    assert np.abs(diff.numpy()[0, ..., 0][vis]).max() < 1e-5
    rigid_diff, _ = losses.geometric_consistency(*args)
    assert (rigid_diff.numpy()[0, ..., 0][s["tgt_box"]] > 0.4).sum() > 10


def test_total_motion_flow_applies_residual_before_ego_rotation():
    """`X_s = R (X_t + r) + t` in numpy against the flow of total_motion_warp, with a
    rotation (the moving-box scene has none)."""
    rng = np.random.default_rng(4)
    depth = rng.uniform(5.0, 15.0, size=(H, W))
    residual = rng.normal(0.0, 0.3, size=(H, W, 3))
    vec = tf.constant([[0.03, -0.05, 0.02, 0.2, -0.1, 0.5]])
    T = g.pose_vector_to_matrix(vec).numpy()[0].astype(np.float64)
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    points = depth[..., None] * (np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K_NP).T)
    moved = (points + residual) @ T[:3, :3].T + T[:3, 3]
    proj = moved @ K_NP.T
    expected = proj[..., :2] / proj[..., 2:] - np.stack([u, v], -1)
    _, _, flow = g.total_motion_warp(tf.zeros([1, H, W, 3]), _b(depth, False), T[None].astype(np.float32),
                                     _b(residual), K_NP[None].astype(np.float32))
    np.testing.assert_allclose(flow.numpy()[0], expected, atol=2e-3)


def test_two_stage_warp_under_xla_equals_eager():
    s = _scene()
    K = tf.constant(K_NP[None], tf.float32)
    T = tf.constant(_translation(EGO_T)[None], tf.float32)
    stage1 = (lambda a, b, c: g.forward_project(a, b, c, K), _b(s["source"]), _b(s["source_depth"], False),
              g.invert_transform(T))
    stage2 = (lambda a, b, c, d: g.total_motion_warp(a, b, c, d, K), _b(s["source"]),
              _b(s["target_depth"], False), T, _b(s["residual"]))
    for fn, *args in (stage1, stage2):
        for compiled, eager in zip(tf.function(fn, jit_compile=True)(*args), fn(*args)):
            np.testing.assert_allclose(compiled.numpy(), eager.numpy(), atol=1e-5)
