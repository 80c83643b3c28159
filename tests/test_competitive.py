"""Competitive Collaboration's energy and inference masks (coopnet_tf.losses.competitive)
against NumPy, and the moderator network M_χ (coopnet_tf.models.moderator_net)."""
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf import models
from coopnet_tf.eval import motion
from coopnet_tf.losses import competitive as cc

B, S, H, W = 2, 2, 8, 12


def _fields(seed=0):
    """Φ maps with ties and flows whose discrepancy straddles λ_c (and exact zeros)."""
    rng = np.random.RandomState(seed)
    phi_r = rng.uniform(0.0, 1.0, (B, S, H, W, 1)).astype(np.float32)
    phi_f = rng.uniform(0.0, 1.0, (B, S, H, W, 1)).astype(np.float32)
    phi_f[:, :, ::3] = phi_r[:, :, ::3]                         # ties: not "rigid wins"
    rigid = rng.normal(0.0, 5.0, (B, S, H, W, 2)).astype(np.float32)
    diff = rng.normal(0.0, 1.0, (B, S, H, W, 2)).astype(np.float32)
    diff *= rng.choice([0.0, 0.1, 0.3, 3.0], (B, S, H, W, 1)).astype(np.float32)
    return phi_r, phi_f, rigid, rigid + diff


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_consensus_target_equals_numpy(norm):
    phi_r, phi_f, rigid, flow = _fields()
    thr = 0.25
    got = cc.consensus_target(phi_r, phi_f, rigid, flow, thr, norm).numpy()
    d = rigid - flow
    dist = (np.sqrt((d ** 2).sum(-1, keepdims=True)) if norm == "l2"
            else np.abs(d).max(-1, keepdims=True))
    want = ((phi_r < phi_f) | (dist < thr)).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    # both indicators matter on these fields (else the test could not tell them apart)
    assert 0 < (phi_r < phi_f).mean() < 1 and 0 < (dist < thr).mean() < 1
    assert ((dist < thr) & ~(phi_r < phi_f)).any()


def test_energies_equal_numpy():
    phi_r, phi_f, rigid, flow = _fields(1)
    m = np.random.RandomState(2).uniform(0.01, 0.99, (B, S, H, W, 1)).astype(np.float32)
    np.testing.assert_allclose(cc.rigid_energy(phi_r, m), np.mean(m * phi_r), rtol=1e-5)
    np.testing.assert_allclose(cc.flow_energy(phi_f, m), np.mean((1 - m) * phi_f), rtol=1e-5)
    np.testing.assert_allclose(cc.mask_prior_energy(m), np.mean(-np.log(m)), rtol=1e-5)
    c = ((phi_r < phi_f) | (np.linalg.norm(rigid - flow, axis=-1, keepdims=True) < 1e-3))
    bce = -(c * np.log(m) + (1 - c) * np.log(1 - m))
    out = cc.moderator_energy(phi_r, phi_f, rigid, flow, m)
    np.testing.assert_allclose(out["consensus"], bce.mean(), rtol=1e-5)
    w = cc.ALGORITHM_1["collaboration"]
    want = (w.rigid * np.mean(m * phi_r) + w.flow * np.mean((1 - m) * phi_f)
            + w.mask * np.mean(-np.log(m)) + w.consensus * bce.mean())
    np.testing.assert_allclose(out["total"], want, rtol=1e-5)


def test_algorithm_1_weights_are_the_papers():
    assert tuple(cc.ALGORITHM_1["competition_rigid"]) == (1.0, 0.5, 0.05, 0.0)
    assert tuple(cc.ALGORITHM_1["competition_flow"]) == (0.0, 1.0, 0.005, 0.0)
    assert tuple(cc.ALGORITHM_1["collaboration"]) == (1.0, 0.5, 0.005, 0.3)
    assert tuple(cc.ALGORITHM_1["moderator_init"]) == (1.0, 0.5, 0.0, 0.0)


def test_mask_prior_pushes_masks_to_static():
    """E_M on a constant input: the gradient on the logit is negative (m rises) and a few
    SGD steps drive m monotonically towards 1."""
    logit = tf.Variable(tf.fill([1, S, 4, 4, 1], -1.0))
    history = []
    for _ in range(20):
        with tf.GradientTape() as tape:
            loss = cc.mask_prior_energy(tf.sigmoid(logit))
        grad = tape.gradient(loss, logit)
        assert np.all(grad.numpy() < 0.0)
        logit.assign_sub(50.0 * grad)
        history.append(float(tf.reduce_mean(tf.sigmoid(logit))))
    assert np.all(np.diff(history) > 0) and history[-1] > 0.95


def test_moderator_energy_reaches_only_the_mask():
    phi_r, phi_f, rigid, flow = _fields(3)
    m = tf.Variable(tf.fill([B, S, H, W, 1], 0.5))
    tensors = [tf.Variable(x) for x in (phi_r, phi_f, rigid, flow)]
    with tf.GradientTape() as tape:
        out = cc.moderator_energy(*tensors, m)
    grads = tape.gradient(out["total"], tensors + [m])
    assert all(g is None for g in grads[:4])
    # λ_C·E_C: the mask moves towards the consensus label where it is 1 / 0
    target = out["consensus_target"].numpy()
    with tf.GradientTape() as tape:
        e_c = cc.consensus_energy(target, m)
    g = tape.gradient(e_c, m).numpy()
    assert np.all(g[target > 0.5] < 0) and np.all(g[target < 0.5] > 0)


def test_cross_entropy_is_finite_at_saturation():
    p = tf.constant([0.0, 1.0, 0.5])
    h = cc.cross_entropy(tf.constant([1.0, 0.0, 1.0]), p).numpy()
    assert np.all(np.isfinite(h)) and h[2] == pytest.approx(np.log(2.0), rel=1e-6)


def test_cc_robust_error_on_identical_and_shifted_images():
    img = np.random.RandomState(4).uniform(0, 1, (1, 6, 6, 3)).astype(np.float32)
    # identical images: SSIM = 1, ρ = λ_ρ·ε
    np.testing.assert_allclose(cc.cc_robust_error(img, img), 0.003 * 0.01, rtol=1e-3)
    # constant offset c on flat images: SSIM = (2ab + C1) / (a² + b² + C1) per pixel
    a, b = np.full((1, 4, 4, 3), 0.2, np.float32), np.full((1, 4, 4, 3), 0.6, np.float32)
    c1 = 0.01 ** 2
    ssim = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)
    want = 0.003 * np.sqrt(0.4 ** 2 + 0.01 ** 2) + 0.997 * (1 - ssim)
    # (float32 variance cancellation in SSIM's σ² costs ~1e-4 relative)
    np.testing.assert_allclose(cc.cc_robust_error(a, b), want, rtol=5e-4)


@pytest.mark.parametrize("relative,combination", [(None, "product"), (0.94, "product"),
                                                  (None, "union")])
def test_inference_masks_and_composite_flow_equal_numpy(relative, combination):
    rng = np.random.RandomState(5)
    m_f = rng.uniform(0, 1, (B, H, W, 1)).astype(np.float32)
    m_b = rng.uniform(0, 1, (B, H, W, 1)).astype(np.float32)
    _, _, rigid, flow = _fields(6)
    rigid, flow = rigid[:, 1], flow[:, 1]
    thr = 0.2
    out = cc.inference_masks(m_f, m_b, rigid, flow, thr, relative=relative,
                             combination=combination)
    dist = np.linalg.norm(rigid - flow, axis=-1, keepdims=True)
    masknet = (m_f * m_b > 0.5) if combination == "product" else (1 - (1 - m_f) * (1 - m_b) > 0.5)
    if relative is None:
        consensus = dist < thr
    else:
        consensus = 1 - dist / dist.max(axis=(1, 2, 3), keepdims=True) > relative
    np.testing.assert_array_equal(out["masknet"].numpy(), masknet)
    np.testing.assert_array_equal(out["consensus"].numpy(), consensus)
    np.testing.assert_array_equal(out["joint"].numpy(), masknet | consensus)
    u = cc.composite_flow(out["joint"], rigid, flow).numpy()
    np.testing.assert_array_equal(u, np.where(masknet | consensus, rigid, flow))


def test_mask_sets_iou_equals_brute_force():
    rng = np.random.RandomState(7)
    gts = [rng.rand(5, 7) > 0.7 for _ in range(3)]
    regions = [rng.rand(5, 7) > 0.3 for _ in range(3)]
    sets = {name: [rng.rand(5, 7).astype(np.float32) for _ in range(3)]
            for name in ("masknet", "consensus", "joint", "v")}
    res = motion.evaluate_mask_sets(sets, gts, regions)
    for name, preds in sets.items():
        tp = np.zeros(2)
        fp = np.zeros(2)
        fn = np.zeros(2)
        for p, g, r in zip(preds, gts, regions):
            for i in range(5):
                for j in range(7):
                    if not r[i, j]:
                        continue
                    pc = 0 if p[i, j] >= 0.5 else 1      # 1 = static mask: moving iff < 0.5
                    gc = int(g[i, j])
                    for c in (0, 1):
                        tp[c] += pc == c and gc == c
                        fp[c] += pc == c and gc != c
                        fn[c] += pc != c and gc == c
        iou = tp / (tp + fp + fn)
        assert res[name]["iou_static"] == pytest.approx(iou[0])
        assert res[name]["iou_moving"] == pytest.approx(iou[1])


# --- the moderator network -------------------------------------------------------


@pytest.fixture(scope="module")
def moderator():
    keras.utils.set_random_seed(1234)
    return models.build_moderator_net(height=64, width=96)


def test_moderator_shapes_and_range(moderator):
    assert tuple(moderator.inputs[0].shape) == (None, 64, 96, 9)
    x = np.random.RandomState(0).uniform(0, 1, (2, 64, 96, 9)).astype(np.float32)
    outs = moderator(x, training=False)
    assert len(outs) == models.NUM_SCALES
    for s, m in enumerate(outs):
        m = m.numpy()
        assert m.shape == (2, 64 >> s, 96 >> s, 2) and m.dtype == np.float32
        assert np.all(m > 0.0) and np.all(m < 1.0)
    assert moderator.get_layer("encoder").get_layer("conv1").kernel.shape == (7, 7, 9, 64)


def test_moderator_save_load_round_trip(moderator, tmp_path):
    x = np.random.RandomState(1).uniform(0, 1, (1, 64, 96, 9)).astype(np.float32)
    before = [o.numpy() for o in moderator(x, training=False)]
    path = tmp_path / "moderator.keras"
    moderator.save(path)
    after = [o.numpy() for o in keras.models.load_model(path)(x, training=False)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_moderator_factory_is_gin_configurable():
    gin.clear_config()
    try:
        gin.parse_config("build_moderator_net.num_layers = 34")
        net = models.build_moderator_net(height=64, width=64)
        assert net.get_layer("encoder").get_layer("layer1_2_conv1") is not None
    finally:
        gin.clear_config()
    with pytest.raises(ValueError, match="multiple"):
        models.build_moderator_net(height=100, width=96)


def test_predict_writes_the_motion_overlay(tmp_path):
    """predict: for each consecutive triplet, b_motion.png tints m*'s moving pixels red and
    b_motion.npy holds m*; the motion model gets the triplet and pixel intrinsics."""
    from PIL import Image
    from coopnet_tf import predict
    rng = np.random.RandomState(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"f{i}.png"
        Image.fromarray((rng.rand(8, 12, 3) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    calls = []

    def motion_fn(prev, img, nxt, k):
        calls.append((prev, img, nxt, k))
        out = np.ones(img.shape[:3] + (1,), np.float32)
        out[:, :, :4] = 0.0                                # left third moving
        return out

    pred = predict.Predictor(lambda x: np.ones(x.shape[:3] + (1,), np.float32), 8, 12,
                             motion_fn=motion_fn)
    written = predict.predict_files(pred, paths, str(tmp_path / "out"), (0.5, 1.0, 0.5, 0.5))
    names = [os.path.basename(p) for p in written]
    assert [n for n in names if "_motion" in n] == ["f1_motion.png", "f2_motion.png"]
    img = predict.load_image(paths[1], 8, 12, resample="bilinear")[0]
    np.testing.assert_array_equal(calls[0][1][0], img)
    np.testing.assert_allclose(calls[0][3][0], [[6, 0, 6], [0, 8, 4], [0, 0, 1]])
    png = np.asarray(Image.open(tmp_path / "out" / "f1_motion.png"), np.float32) / 255
    want = predict.motion_overlay(img, motion_fn(img[None], img[None], img[None], None)[0])
    np.testing.assert_allclose(png, want, atol=1 / 255 + 1e-6)
    assert np.all(png[:, :4, 0] >= 0.6 - 1 / 255)                      # tinted red
    np.testing.assert_allclose(png[:, 4:], img[:, 4:], atol=1 / 255 + 1e-6)  # untouched
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "f1_motion.npy")[:, :4], 0)
