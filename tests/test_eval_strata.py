"""`coopnet_tf.eval.strata` against brute-force loops and exact constructions."""
import math

import numpy as np

from coopnet_tf.eval import odometry, strata


def _brute_static_scaled(gt, pred, moving, lo=1e-3, hi=80.0):
    """Pixel by pixel, with Python scalars (independent of the vectorised code)."""
    rows = {"static": [], "moving": []}
    for i in range(gt.shape[0]):
        st_g, st_p = [], []
        for y in range(gt.shape[1]):
            for x in range(gt.shape[2]):
                g = float(gt[i, y, x])
                if lo < g < hi and not moving[i, y, x]:
                    st_g.append(g)
                    st_p.append(float(pred[i, y, x]))
        if not st_g:
            continue
        s = float(np.median(st_g)) / float(np.median(st_p))
        for y in range(gt.shape[1]):
            for x in range(gt.shape[2]):
                g = float(gt[i, y, x])
                if lo < g < hi:
                    p = min(max(float(pred[i, y, x]) * s, lo), hi)
                    rows["moving" if moving[i, y, x] else "static"].append((p, g))
    out = {}
    for name, pairs in rows.items():
        out[name] = {
            "abs_rel": sum(abs(p - g) / g for p, g in pairs) / len(pairs),
            "log_rmse": math.sqrt(sum((math.log(p) - math.log(g)) ** 2 for p, g in pairs)
                                  / len(pairs)),
            "a1": sum(max(p / g, g / p) < 1.25 for p, g in pairs) / len(pairs),
            "pixels": len(pairs)}
    out["moving_bias"] = float(np.median([p / g for p, g in rows["moving"]]))
    return out


def test_static_scaled_depth_matches_brute_force():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 90.0, (3, 6, 7))            # some beyond 80 m: invalid
    pred = gt * rng.uniform(0.5, 1.5, gt.shape) * np.array([2.0, 0.1, 7.0])[:, None, None]
    moving = rng.uniform(size=gt.shape) < 0.3
    got = strata.static_scaled_depth(gt, pred, moving)
    want = _brute_static_scaled(gt, pred, moving)
    for name in ("static", "moving"):
        for key in ("abs_rel", "log_rmse", "a1"):
            assert math.isclose(got[name][key], want[name][key], rel_tol=1e-9), (name, key)
        assert got[name]["pixels"] == want[name]["pixels"]
    assert math.isclose(got["moving_bias"], want["moving_bias"], rel_tol=1e-12)


def test_scale_comes_from_static_pixels_only():
    # perfect static depth up to a per-image scale, moving objects predicted at half
    # their depth: static errors vanish, the bias reads 0.5 exactly.
    gt = np.full((2, 4, 4), 10.0)
    moving = np.zeros_like(gt, bool)
    moving[:, :2] = True
    pred = gt * np.array([3.0, 0.2])[:, None, None]
    pred[moving] *= 0.5
    got = strata.static_scaled_depth(gt, pred, moving)
    assert got["static"]["abs_rel"] == 0.0 and got["static"]["a1"] == 1.0
    assert math.isclose(got["moving_bias"], 0.5)
    assert math.isclose(got["moving"]["abs_rel"], 0.5)
    np.testing.assert_allclose(strata.static_depth_scales(gt, pred, moving), [1 / 3, 5.0],
                               rtol=1e-12)
    # an image without static pixels is skipped (scale NaN), none at all gives None
    none = strata.static_scaled_depth(gt, pred, np.ones_like(moving))
    assert none["images"] == 0 and none["moving_bias"] is None
    assert np.isnan(strata.static_depth_scales(gt, pred, np.ones_like(moving))).all()


def _random_pose(rng, scale=1.0):
    a = rng.normal(size=3) * 0.1
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    th = np.linalg.norm(a)
    r = np.eye(3) + math.sin(th) / th * k + (1 - math.cos(th)) / th ** 2 * k @ k
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = r, rng.normal(size=3) * scale
    return t


def test_chained_ate_is_zero_up_to_a_similarity_and_sees_an_error():
    rng = np.random.default_rng(1)
    rel = np.stack([_random_pose(rng) for _ in range(8)])
    # the same motion at another scale: chained positions differ by a similarity only
    scaled = rel.copy()
    scaled[:, :3, 3] *= 3.7
    assert strata.chained_trajectory_ate(rel, scaled) < 1e-9
    # one wrong step: positions from it on are offset; the aligned RMSE is positive and
    # at most the unaligned RMSE (alignment can only reduce it)
    wrong = rel.copy()
    wrong[4, :3, 3] += [0.5, 0.0, 0.0]
    ate = strata.chained_trajectory_ate(rel, wrong)
    g = odometry.chain_relative_poses(rel)[:, :3, 3]
    p = odometry.chain_relative_poses(wrong)[:, :3, 3]
    assert 0.0 < ate <= math.sqrt(np.mean(np.sum((g - p) ** 2, 1))) + 1e-12
    # no predicted motion: the GT positions' RMS distance to their centroid, not NaN
    still = np.broadcast_to(np.eye(4), rel.shape)
    want = math.sqrt(np.mean(np.sum((g - g.mean(0)) ** 2, 1)))
    assert math.isclose(strata.chained_trajectory_ate(rel, still), want, rel_tol=1e-12)


def test_paired_interval():
    got = strata.paired_interval([1.0, 2.0, 4.0], [0.0, 0.0, 1.0])
    diffs = [1.0, 2.0, 3.0]
    half = 4.302652729749462 * 1.0 / math.sqrt(3)     # t_{0.975, 2}; sample std = 1
    assert got["per_seed"] == diffs and got["n"] == 3 and got["mean"] == 2.0
    assert math.isclose(got["low"], 2.0 - half) and math.isclose(got["high"], 2.0 + half)
    assert got["excludes_zero"] is False              # 2 - 2.48 < 0
    tight = strata.paired_interval([1.0, 1.1, 0.9], [0.0, 0.0, 0.0])
    assert tight["excludes_zero"] is True
    one = strata.paired_interval([1.0, None], [0.5, 2.0])
    assert one["n"] == 1 and one["low"] is None and one["excludes_zero"] is None
