"""SSIM / photometric error vs brute-force numpy, min-reprojection, smoothness, XLA."""
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf import losses


def _np(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float64)


def _reflect(i, n):
    """Reflection without edge repeat (numpy 'reflect' / tf.pad REFLECT): -1 -> 1, n -> n-2."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


def _np_ssim_dissimilarity(a, b):
    """Explicit loops: 3x3 window over the reflection-padded images, C1, C2 of data range 1."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    bsz, h, w, c = a.shape
    out = np.zeros_like(a, dtype=np.float64)
    for n in range(bsz):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    xs = [a[n, _reflect(i + di, h), _reflect(j + dj, w), k]
                          for di in (-1, 0, 1) for dj in (-1, 0, 1)]
                    ys = [b[n, _reflect(i + di, h), _reflect(j + dj, w), k]
                          for di in (-1, 0, 1) for dj in (-1, 0, 1)]
                    xs, ys = np.array(xs), np.array(ys)
                    mx, my = xs.mean(), ys.mean()
                    vx = (xs * xs).mean() - mx * mx
                    vy = (ys * ys).mean() - my * my
                    cxy = (xs * ys).mean() - mx * my
                    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / (
                        (mx * mx + my * my + c1) * (vx + vy + c2))
                    out[n, i, j, k] = min(max((1 - s) / 2, 0.0), 1.0)
    return out


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(2, 6, 7, 3))
    # b: a structured perturbation of a (so SSIM spans a range of values).
    b = np.clip(0.7 * a + 0.3 * rng.uniform(size=a.shape) + 0.05, 0, 1)
    return a, b


def test_ssim_matches_brute_force(images):
    a, b = images
    ref = _np_ssim_dissimilarity(a, b)
    out = losses.ssim_dissimilarity(tf.constant(a, tf.float32), tf.constant(b, tf.float32))
    assert out.shape == a.shape
    np.testing.assert_allclose(_np(out), ref, atol=1e-5)
    assert ref.std() > 0.01


def test_photometric_error_matches_brute_force(images):
    a, b = images
    ref = 0.85 * _np_ssim_dissimilarity(a, b).mean(-1, keepdims=True) + 0.15 * np.abs(
        a - b).mean(-1, keepdims=True)
    out = losses.photometric_error(tf.constant(a, tf.float32), tf.constant(b, tf.float32))
    assert out.shape == (2, 6, 7, 1) and out.dtype == tf.float32
    np.testing.assert_allclose(_np(out), ref, atol=1e-5)
    same = losses.photometric_error(tf.constant(a, tf.float32), tf.constant(a, tf.float32))
    np.testing.assert_allclose(_np(same), 0.0, atol=1e-5)
    # alpha = 0: pure L1.
    l1 = losses.photometric_error(tf.constant(a, tf.float32), tf.constant(b, tf.float32), alpha=0.0)
    np.testing.assert_allclose(_np(l1), np.abs(a - b).mean(-1, keepdims=True), atol=1e-6)


def test_photometric_error_half_precision_and_jit(images):
    a, b = (tf.constant(x, tf.float32) for x in images)
    ref = losses.photometric_error(a, b)
    jit = tf.function(losses.photometric_error, jit_compile=True)(a, b)
    np.testing.assert_allclose(_np(jit), _np(ref), atol=1e-5)
    half = losses.photometric_error(tf.cast(a, tf.float16), tf.cast(b, tf.float16))
    assert half.dtype == tf.float32
    np.testing.assert_allclose(_np(half), _np(ref), atol=2e-3)  # input rounding only


# --------------------------------------------------------- min reprojection


def _np_min_reprojection(rep, ident, mask):
    rep = np.where(mask > 0, rep, np.inf)
    valid = (mask > 0).any(axis=1)
    rep_min = rep.min(axis=1)
    if ident is None:
        loss, auto = rep_min, valid
    else:
        id_min = ident.min(axis=1)
        loss = np.minimum(rep_min, id_min)
        auto = (rep_min < id_min) & valid
    return np.where(valid, loss, 0.0), valid.astype(float), auto.astype(float)


def test_min_reprojection_matches_numpy_with_and_without_mask():
    rng = np.random.default_rng(1)
    rep = rng.uniform(size=(2, 2, 5, 6, 1))
    ident = rng.uniform(size=(2, 2, 5, 6, 1))
    mask = (rng.uniform(size=rep.shape) > 0.4).astype(np.float64)
    mask[0, :, 0, 0] = 0.0  # a pixel with every reprojection term excluded
    for m in (None, mask):
        for idn in (None, ident):
            out = losses.min_reprojection(tf.constant(rep, tf.float32),
                                          None if idn is None else tf.constant(idn, tf.float32),
                                          mask=None if m is None else tf.constant(m, tf.float32))
            ref = _np_min_reprojection(rep, idn, np.ones_like(rep) if m is None else m)
            for o, r in zip(out, ref):
                assert o.shape == (2, 5, 6, 1)
                np.testing.assert_allclose(_np(o), r, atol=1e-6)
    loss, valid, auto = losses.min_reprojection(rep, ident, mask=mask)
    assert _np(valid)[0, 0, 0, 0] == 0 and _np(loss)[0, 0, 0, 0] == 0 and _np(auto)[0, 0, 0, 0] == 0
    assert np.all(np.isfinite(_np(loss)))


def test_min_reprojection_tie_noise_and_gradients():
    rep = tf.Variable(tf.fill([1, 2, 4, 4, 1], 0.5))
    ident = tf.fill([1, 2, 4, 4, 1], 0.5)  # exact ties everywhere
    _, _, auto = losses.min_reprojection(rep, ident)
    assert _np(auto).sum() == 0  # ties go to the identity term
    a1 = losses.min_reprojection(rep, ident, seed=7)[2]
    a2 = losses.min_reprojection(rep, ident, seed=tf.constant([7, 0]))[2]
    np.testing.assert_array_equal(_np(a1), _np(a2))  # deterministic given the seed
    assert 0 < _np(a1).sum() < 16  # noise breaks the ties both ways

    # Layout [B=1, S=2, H=1, W=2, 1]: source 0 = (px0, px1), source 1 = (px0, px1).
    rep = tf.Variable(tf.constant(np.array([0.2, 0.9, 0.01, 0.1]).reshape(1, 2, 1, 2, 1),
                                  tf.float32))
    ident = tf.constant(np.array([0.5, 0.5, 0.05, 0.5]).reshape(1, 2, 1, 2, 1), tf.float32)
    mask = tf.constant(np.array([1, 1, 0, 1]).reshape(1, 2, 1, 2, 1), tf.float32)
    with tf.GradientTape() as tape:
        loss, valid, auto = losses.min_reprojection(rep, ident, mask=mask)
        total = tf.reduce_sum(loss)
    grad = _np(tape.gradient(total, rep)).reshape(-1)
    # px0: source 1 (0.01) is masked out, source 0 (0.2) loses to identity 0.05 -> no
    # gradient. px1: source 1 (0.1) beats source 0 (0.9) and identity (0.5).
    np.testing.assert_allclose(grad, [0, 0, 0, 1])
    np.testing.assert_allclose(_np(auto).reshape(-1), [0, 1])
    np.testing.assert_allclose(_np(valid).reshape(-1), [1, 1])
    np.testing.assert_allclose(_np(loss).reshape(-1), [0.05, 0.1], atol=1e-7)
    # Without the mask, source 1's 0.01 wins px0.
    loss, _, auto = losses.min_reprojection(rep, ident)
    np.testing.assert_allclose(_np(loss).reshape(-1), [0.01, 0.1], atol=1e-7)


def test_min_reprojection_identical_under_jit():
    rng = np.random.default_rng(2)
    rep = tf.constant(rng.uniform(size=(2, 2, 8, 8, 1)), tf.float32)
    ident = tf.constant(rng.uniform(size=(2, 2, 8, 8, 1)), tf.float32)
    mask = tf.constant((rng.uniform(size=(2, 2, 8, 8, 1)) > 0.3), tf.float32)
    fn = lambda r, i, m: losses.min_reprojection(r, i, mask=m, seed=3)  # noqa: E731
    eager = fn(rep, ident, mask)
    jit = tf.function(fn, jit_compile=True)(rep, ident, mask)
    for e, j in zip(eager, jit):
        np.testing.assert_allclose(_np(j), _np(e), atol=1e-5)


# ------------------------------------------------------------- smoothness


def _np_smoothness(field, image):
    dfx = np.abs(np.diff(field, axis=2))
    dfy = np.abs(np.diff(field, axis=1))
    dix = np.abs(np.diff(image, axis=2)).mean(-1, keepdims=True)
    diy = np.abs(np.diff(image, axis=1)).mean(-1, keepdims=True)
    return (dfx * np.exp(-dix)).mean() + (dfy * np.exp(-diy)).mean()


def test_smoothness_matches_numpy_and_is_scale_invariant_on_disparity():
    rng = np.random.default_rng(3)
    disp = rng.uniform(0.1, 1.0, size=(2, 6, 8, 1))
    image = rng.uniform(size=(2, 6, 8, 3))
    norm = disp / (disp.mean(axis=(1, 2), keepdims=True) + 1e-7)
    out = losses.disparity_smoothness(tf.constant(disp, tf.float32), tf.constant(image, tf.float32))
    assert out.shape == ()
    np.testing.assert_allclose(float(out), _np_smoothness(norm, image), rtol=1e-5)
    scaled = losses.disparity_smoothness(tf.constant(5 * disp, tf.float32),
                                         tf.constant(image, tf.float32))
    np.testing.assert_allclose(float(scaled), float(out), rtol=1e-5)

    flow = rng.normal(size=(2, 6, 8, 2)) * 3
    out = losses.flow_smoothness(tf.constant(flow, tf.float32), tf.constant(image, tf.float32))
    np.testing.assert_allclose(float(out), _np_smoothness(flow / [8.0, 6.0], image), rtol=1e-5)
    raw = losses.edge_aware_smoothness(tf.constant(flow, tf.float32), tf.constant(image, tf.float32))
    np.testing.assert_allclose(float(raw), _np_smoothness(flow, image), rtol=1e-5)
    const = losses.edge_aware_smoothness(tf.ones([1, 4, 4, 2]), tf.constant(image[:1, :4, :4]))
    assert float(const) == 0.0
