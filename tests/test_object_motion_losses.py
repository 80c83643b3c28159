"""Lee et al. object-motion losses (losses/object_motion.py) on constructed fields, with
NumPy references: CSAC (Algorithm 1, Eqs. 3-5), Otsu, L_ms, L_mp, L_mc, L_h."""
import numpy as np
import tensorflow as tf

from coopnet_tf import geometry as g
from coopnet_tf import losses
from coopnet_tf.losses import object_motion as om

H, W = 32, 64
V_FG = np.array([0.6, -0.05, 0.9])
BOX = (10.0, 6.0, 45.0, 27.0)              # x1, y1, x2, y2 (inclusive pixel centres)
OBJ = (slice(10, 24), slice(16, 38))        # rows, cols of the near object inside BOX


def _field(rng, fg_scale=None, bg_noise=0.01, fg_noise=0.003):
    """Depth: background 20-22 m, object 7-8 m; residual: V_FG (+noise) on the object,
    small noise elsewhere."""
    depth = rng.uniform(20.0, 22.0, size=(H, W))
    depth[OBJ] = rng.uniform(7.0, 8.0, size=depth[OBJ].shape)
    residual = rng.normal(0.0, bg_noise, size=(H, W, 3))
    obj = np.zeros((H, W), bool)
    obj[OBJ] = True
    scale = np.ones(obj.sum()) if fg_scale is None else fg_scale(obj.sum())
    residual[obj] = V_FG * scale[:, None] + rng.normal(0.0, fg_noise, size=(obj.sum(), 3))
    return depth, residual, obj


def _box_mask_np():
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    return (u >= BOX[0]) & (u <= BOX[2]) & (v >= BOX[1]) & (v <= BOX[3])


def _csac(depth, residual, boxes=(BOX,), box_mask=(1.0,), seed=(3, 4), **kw):
    return om.csac_loss(
        tf.constant(residual[None], tf.float32), tf.constant(depth[None, ..., None], tf.float32),
        tf.constant([boxes], tf.float32), tf.constant([box_mask], tf.float32), seed=seed, **kw)


def _penalty_np(residual, fg, bg, v_f, v_b, alpha=30.0, beta=0.2):
    """Eq. 5 in NumPy with the refined vectors given."""
    mag = np.linalg.norm(residual, axis=-1)
    sig = lambda x: 1.0 / (1.0 + np.exp(-alpha * (x - beta)))  # noqa: E731
    nf, nb = np.linalg.norm(v_f), np.linalg.norm(v_b)
    pf = sig(np.maximum(0.0, nf - mag) / max(nf, 1e-3))[fg].sum()
    pb = sig(np.maximum(0.0, mag - nb) / max(nb, 1e-3))[bg].sum()
    return (pf + pb) / (fg.sum() + bg.sum())


def test_csac_recovers_the_rigid_object_vector_and_the_otsu_foreground():
    rng = np.random.default_rng(0)
    depth, residual, obj = _field(rng)
    # Outliers on the object (a "headlight") must not move the refined vector.
    residual[12, 20:24] = [3.0, 1.0, -2.0]
    out = _csac(depth, residual)
    np.testing.assert_array_equal(out["foreground"].numpy()[0, 0] > 0, obj)
    np.testing.assert_allclose(out["refined_fg"].numpy()[0, 0], V_FG, atol=3e-3)
    assert np.linalg.norm(out["refined_bg"].numpy()[0, 0]) < 0.05
    inliers = out["inliers"].numpy()[0, 0]
    assert (inliers[obj] > 0.5).mean() > 0.95 and np.all(inliers[12, 20:24] < 0.5)
    assert np.all(inliers[~obj] == 0)
    # The loss is Eq. 5 with those refined vectors and masks.
    box = _box_mask_np()
    expected = _penalty_np(residual, obj, box & ~obj, out["refined_fg"].numpy()[0, 0],
                           out["refined_bg"].numpy()[0, 0])
    np.testing.assert_allclose(out["loss"].numpy(), expected, rtol=1e-4)


def test_csac_penalty_falls_when_the_field_is_more_contrastive():
    """Fluctuating object magnitudes and object motion leaking into the box background
    are penalised (Eq. 5); a rigid object on a still background much less."""
    rng = np.random.default_rng(1)
    weak = lambda n: rng.uniform(0.3, 1.0, size=n)  # noqa: E731  fg magnitudes fluctuate
    depth, blurred, obj = _field(rng, fg_scale=weak, bg_noise=1e-4)
    background = _box_mask_np() & ~obj
    blurred[~obj] += [0.01, 0.0, 0.02]                      # the background's common motion
    leak = background & (rng.uniform(size=(H, W)) < 0.15)
    contrastive = blurred.copy()
    blurred[leak] = 0.5 * V_FG
    contrastive[obj] = V_FG
    before, after = _csac(depth, blurred), _csac(depth, contrastive)
    np.testing.assert_allclose(before["refined_bg"].numpy()[0, 0], [0.01, 0.0, 0.02], atol=1e-3)
    assert float(after["loss_fg"]) < 0.1 * float(before["loss_fg"])
    assert float(after["loss_bg"]) < 0.1 * float(before["loss_bg"])
    # Leaking pixels cost ~1 each (far above |v_b|); the rest ~sigmoid(-alpha beta).
    n_box = _box_mask_np().sum()
    quiet = (background & ~leak).sum() / (1.0 + np.exp(6.0))
    np.testing.assert_allclose(float(before["loss_bg"]), (leak.sum() + quiet) / n_box, rtol=1e-2)
    np.testing.assert_allclose(float(before["loss"]), float(before["loss_fg"] + before["loss_bg"]), rtol=1e-6)


def test_csac_gradient_only_through_eq5_penalties():
    rng = np.random.default_rng(2)
    depth, residual, obj = _field(rng, fg_scale=lambda n: rng.uniform(0.7, 1.1, size=n))
    res = tf.Variable(residual[None], dtype=tf.float32)
    dep = tf.Variable(depth[None, ..., None], dtype=tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        out = om.csac_loss(res, dep, tf.constant([[BOX]]), tf.constant([[1.0]]), seed=(5, 6))
    grad = tape.gradient(out["loss"], res).numpy()[0]
    assert tape.gradient(out["loss"], dep) is None
    mag = np.linalg.norm(residual, axis=-1)
    box = _box_mask_np()
    fg_mag = np.linalg.norm(out["refined_fg"].numpy()[0, 0])
    bg_mag = np.linalg.norm(out["refined_bg"].numpy()[0, 0])
    zero_penalty = ~box | (obj & (mag >= fg_mag)) | (box & ~obj & (mag <= bg_mag))
    assert zero_penalty.sum() > 100 and (~zero_penalty).sum() > 100
    assert np.all(grad[zero_penalty] == 0.0)
    # Weak foreground vectors are pushed to grow: the gradient points against v_q.
    weak = obj & (mag < 0.85 * fg_mag)
    assert weak.sum() > 20
    assert np.all(np.sum(grad[weak] * residual[weak], axis=-1) < 0)


def test_csac_with_empty_boxes_is_zero_with_finite_gradients():
    rng = np.random.default_rng(3)
    depth, residual, _ = _field(rng)
    res = tf.Variable(residual[None], dtype=tf.float32)
    with tf.GradientTape() as tape:
        out = om.csac_loss(res, tf.constant(depth[None, ..., None], tf.float32),
                           tf.zeros([1, 3, 4]), tf.zeros([1, 3]), seed=1)
        h_loss = om.height_prior_loss(res[..., :1] + 10.0, tf.zeros([1, 3, 4]), tf.zeros([1, 3]),
                                      tf.constant([[[40.0, 0, 32], [0, 40.0, 16], [0, 0, 1]]]))
        total = out["loss"] + h_loss
    grad = tape.gradient(total, res).numpy()
    assert float(out["loss"]) == 0.0 and float(h_loss) == 0.0
    assert np.all(np.isfinite(grad)) and np.all(grad == 0)
    assert np.all(out["foreground"].numpy() == 0) and np.all(np.isfinite(out["refined_fg"].numpy()))


def test_csac_vectorised_over_batch_and_boxes_matches_single_box_calls():
    rng = np.random.default_rng(4)
    depth, residual, _ = _field(rng)
    boxes = [BOX, (0.0, 0.0, 8.0, 5.0), (0.0, 0.0, 0.0, 0.0)]
    many = _csac(depth, residual, boxes=boxes, box_mask=(1.0, 1.0, 0.0), num_queries=4096)
    one = _csac(depth, residual, boxes=[BOX], num_queries=4096)
    np.testing.assert_allclose(many["refined_fg"].numpy()[0, 0], one["refined_fg"].numpy()[0, 0], atol=1e-6)
    np.testing.assert_array_equal(many["foreground"].numpy()[0, 0], one["foreground"].numpy()[0, 0])
    assert np.all(many["foreground"].numpy()[0, 2] == 0)


def _otsu_brute_force(values, bins):
    """Between-class variance at every bin edge, from the raw values (float64)."""
    v_min, v_max = values.min(), values.max()
    width = max(v_max - v_min, 1e-6) / bins
    best, best_low = -1.0, np.ones_like(values, bool)
    for k in range(bins - 1):
        low = values < v_min + (k + 1) * width
        if low.all() or not low.any():
            continue
        var = low.sum() * (~low).sum() * (values[low].mean() - values[~low].mean()) ** 2
        if var > best * (1 + 1e-6):
            best, best_low = var, low
    return best_low


def test_otsu_matches_numpy_brute_force():
    rng = np.random.default_rng(5)
    p, bins = 400, 32
    sets = [np.concatenate([rng.normal(8, 1, 150), rng.normal(20, 2, 250)]),
            rng.uniform(5, 50, p),
            np.concatenate([rng.gamma(2.0, 3.0, 300), rng.normal(40, 5, 100)])]
    values = np.stack(sets)[None].astype(np.float32)          # [1, 3, P]
    mask = np.ones_like(values)
    mask[0, 1, ::3] = 0.0
    low, _ = om.otsu_split(tf.constant(values), tf.constant(mask), bins=bins)
    for n in range(3):
        inside = mask[0, n] > 0
        expected = _otsu_brute_force(values[0, n][inside].astype(np.float64), bins)
        np.testing.assert_array_equal(low.numpy()[0, n][inside] > 0, expected)
        assert np.all(low.numpy()[0, n][~inside] == 0)
    # Two clear clusters: the split is exactly the near cluster.
    assert np.all(low.numpy()[0, 0][:150] == 1) and np.all(low.numpy()[0, 0][150:] == 0)


def test_motion_smoothness_zero_when_constant_and_edge_aware():
    rng = np.random.default_rng(6)
    depth = tf.constant(rng.uniform(5, 30, size=(2, H, W, 1)), tf.float32)
    const = tf.constant(np.broadcast_to([0.3, -0.1, 0.5], (2, H, W, 3)), tf.float32)
    assert float(om.motion_smoothness(const, depth)) == 0.0
    noisy = const + tf.constant(rng.normal(0, 0.1, size=(2, H, W, 3)), tf.float32)
    assert float(om.motion_smoothness(noisy, depth)) > 1e-4
    # A motion step at a depth edge costs less than the same step on flat depth (Eq. 7).
    step = np.zeros((1, H, W, 3), np.float32)
    step[:, :, W // 2:] = 1.0
    flat = np.full((1, H, W, 1), 10.0, np.float32)
    edge = flat.copy()
    edge[:, :, W // 2:] = 20.0
    at_edge = float(om.motion_smoothness(step, edge))
    on_flat = float(om.motion_smoothness(step, flat))
    mean_depth = 15.0
    expected_flat = 3 * H / (3 * H * (W - 1))   # 3 channels x H pixel pairs of unit step
    np.testing.assert_allclose(on_flat, expected_flat, rtol=1e-5)
    np.testing.assert_allclose(at_edge, expected_flat * np.exp(-2 * (10.0 / mean_depth) / 0.1), rtol=1e-3)


def test_motion_sparsity_prefers_sparse_fields_and_is_finite_at_zero():
    dense = np.full((1, 10, 10, 3), 0.1, np.float32)
    sparse = np.zeros_like(dense)
    sparse[:, :1] = 1.0                                     # same mean |T|, 10 % of pixels
    l_dense = float(om.motion_sparsity(dense))
    l_sparse = float(om.motion_sparsity(sparse))
    np.testing.assert_allclose(l_dense, 2 * 0.1 * np.sqrt(2.0), rtol=1e-5)
    np.testing.assert_allclose(l_sparse, 2 * 0.1 * (0.9 + 0.1 * np.sqrt(11.0)), rtol=1e-5)
    zero = tf.Variable(tf.zeros([1, 4, 4, 3]))
    with tf.GradientTape() as tape:
        loss = om.motion_sparsity(zero)
    assert float(loss) == 0.0 and np.all(np.isfinite(tape.gradient(loss, zero).numpy()))


def test_motion_consistency_zero_for_a_consistent_cycle():
    rng = np.random.default_rng(7)
    vec = tf.constant([[0.02, -0.03, 0.01, 0.3, -0.1, 0.8]])
    T_f = g.pose_vector_to_matrix(vec)
    T_b = g.invert_transform(T_f)
    r_f = np.broadcast_to([0.2, 0.0, -0.4], (1, H, W, 3)).astype(np.float32)
    r_b = np.broadcast_to(-(T_f.numpy()[0, :3, :3] @ r_f[0, 0, 0]), (1, H, W, 3)).astype(np.float32)
    depth = tf.constant(rng.uniform(8, 20, size=(1, H, W, 1)), tf.float32)
    K = tf.constant([[40.0, 0, 32], [0, 40.0, 16], [0, 0, 1]])
    _, in_bounds, flow = g.total_motion_warp(tf.zeros([1, H, W, 3]), depth, T_f, r_f, K)
    consistent = float(om.motion_consistency(r_f, T_f, r_b, T_b, flow, in_bounds))
    assert consistent < 1e-8
    assert float(om.motion_consistency(r_f, T_f, -r_b, T_b, flow, in_bounds)) > 0.01
    T_wrong = g.pose_vector_to_matrix(vec * [[-0.5, 1, 1, 1, 1, 1]])
    assert float(om.motion_consistency(r_f, T_f, r_b, g.invert_transform(T_wrong), flow, in_bounds)) > 0.01


def test_height_prior_zero_when_depth_matches_and_linear_otherwise():
    K = np.array([[[50.0, 0, 32], [0, 45.0, 16], [0, 0, 1]]], np.float32)
    boxes = np.array([[[10, 5, 20, 14], [30, 2, 60, 29]]], np.float32)
    heights = np.array([1.5, 3.0], np.float32)
    classes = np.array([[0, 1]])
    depth = np.full((1, H, W, 1), 30.0, np.float32)
    prior = [45.0 * 1.5 / 9.0, 45.0 * 3.0 / 27.0]
    depth[0, 5:15, 10:21] = prior[0]
    depth[0, 2:30, 30:61] = prior[1]
    args = (tf.constant(boxes), tf.constant([[1.0, 1.0]]), tf.constant(K))
    kw = dict(box_classes=tf.constant(classes), class_heights=tf.constant(heights))
    assert float(om.height_prior_loss(tf.constant(depth), *args, **kw)) < 1e-6
    shifted = depth.copy()
    shifted[0, 5:15, 10:21] += 2.0
    expected = 0.5 * 2.0 / shifted.mean()
    np.testing.assert_allclose(float(om.height_prior_loss(tf.constant(shifted), *args, **kw)), expected, rtol=1e-5)


def test_losses_reexported():
    for name in ("csac_loss", "motion_smoothness", "motion_sparsity", "motion_consistency",
                 "height_prior_loss"):
        assert getattr(losses, name) is getattr(om, name)


def test_csac_compiles_under_xla():
    """Static shapes only: runs under jit_compile (XLA draws other random numbers than
    eager for the same seed, so the check is against the exact answers, not eager)."""
    rng = np.random.default_rng(8)
    depth, residual, obj = _field(rng)
    fn = tf.function(lambda r, d, s: om.csac_loss(r, d, tf.constant([[BOX]]), tf.constant([[1.0]]),
                                                  seed=s), jit_compile=True)
    out = fn(tf.constant(residual[None], tf.float32), tf.constant(depth[None, ..., None], tf.float32),
             tf.constant([3, 4]))
    np.testing.assert_array_equal(out["foreground"].numpy()[0, 0] > 0, obj)
    np.testing.assert_allclose(out["refined_fg"].numpy()[0, 0], V_FG, atol=3e-3)
    expected = _penalty_np(residual, obj, _box_mask_np() & ~obj, out["refined_fg"].numpy()[0, 0],
                           out["refined_bg"].numpy()[0, 0])
    np.testing.assert_allclose(out["loss"].numpy(), expected, rtol=1e-4)
