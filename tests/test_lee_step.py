"""Lee et al.'s train step (coopnet_tf/training/lee_step.py), 64x64, batch 1, eager.

* the three phases of Lee Table 1: which variables one `train_step` changes (phase 1:
  depth + ego branch, the residual-only variables untouched and the residual used is 0;
  phase 2: the depth net untouched, BatchNorm statistics included; phase 3: all), and
  which variables the objective reaches (`gradient_routing`, exact zeros);
* the two-stage warp against independent truth: a constructed scene (numpy geometry,
  smooth texture) where the exact depth, pose and residual give a photometric error ~0
  while the ego-only warp fails on the moving box; and the synthetic world's exact ground
  truth (gt_pose + gt_object_motion give its gt_flow to 1e-3 px);
* the non-finite guard, a missing box field, an unknown phase.
"""
import numpy as np
import pytest
import tensorflow as tf
import keras

import conftest

from coopnet_tf import models, specs
from coopnet_tf.data import pipeline, records
from coopnet_tf.training import lee_step, optimizers
from coopnet_tf.training.step import Phase

SIZE = 64
SEED = tf.constant([3, 7], tf.int64)
SMALL = (4, 8, 8, 16, 16)   # decoder widths: the production code, narrow


pytestmark = pytest.mark.usefixtures("fast_graphs")   # conftest.py


def build_step(weights=lee_step.LeeWeights(), dam=True):
    keras.utils.set_random_seed(1)
    depth = models.build_depth_net(height=SIZE, width=SIZE, decoder_channels=SMALL)
    motion = models.build_motion_net(height=SIZE, width=SIZE, decoder_channels=SMALL, dam=dam)
    step = lee_step.LeeTrainStep(depth, motion, optimizers.make_optimizer(),
                                 optimizers.make_optimizer(), weights=weights)
    step.build()
    return step


@pytest.fixture(scope="module")
def batch():
    """A random batch of one snippet with one real box (and one padding row) per frame."""
    rng = np.random.RandomState(0)
    frames = rng.uniform(0.0, 1.0, (1, 3, SIZE, SIZE, 3)).astype(np.float32)
    K = np.array([[[40.0, 0.0, 31.5], [0.0, 40.0, 31.5], [0.0, 0.0, 1.0]]], np.float32)
    boxes = np.zeros((1, 3, 2, 4), np.float32)
    boxes[:, :, 0] = [12.0, 20.0, 40.0, 44.0]
    mask = np.zeros((1, 3, 2), np.float32)
    mask[:, :, 0] = 1.0
    return {specs.KEY_FRAMES: tf.constant(frames), specs.KEY_FRAMES_AUG: tf.constant(frames),
            specs.KEY_INTRINSICS: tf.constant(K), specs.KEY_BOXES: tf.constant(boxes),
            specs.KEY_BOX_MASK: tf.constant(mask)}


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _changed(before, variables):
    return [not np.array_equal(a, b) for a, b in zip(before, _values(variables))]


# Share of a trained group's variables that must move in one step. Not all can: DAM's
# GCNet blocks start as the identity (last transform conv = 0), so their other 8
# variables per block get no gradient in the first steps (24 of the 55 residual-only
# variables, 24 of the ego branch's 95), and the scale 1-3 heads are unused (single-scale
# losses, Lee Sec. 4.1).
MOVED = 0.7
MOVED_RESIDUAL = 0.4


def test_each_phase_updates_only_its_networks(batch):
    # L_mc off here (it doubles the motion-net work); the routing test covers it.
    step = build_step(lee_step.LeeWeights(mc=0.0))
    residual_only = step.residual_only_variables
    ego = step.group_variables("motion_ego")
    depth_all = step.depth_net.weights            # trainable + BatchNorm statistics
    assert residual_only and len(ego) + len(residual_only) == len(
        step.motion_net.trainable_variables)
    assert not {id(v) for v in residual_only} & {id(v) for v in ego}

    # phase 1: depth + ego branch; the residual is exactly 0 and its variables stay put
    _, fwd = step.compute_losses(batch, Phase(stage=lee_step.PHASE1), SEED, training=False)
    assert not np.any(fwd["residual"].numpy()) and "warped_ego" not in fwd
    before = [_values(depth_all), _values(ego), _values(residual_only)]
    out = step.train_step(batch, Phase(stage=lee_step.PHASE1), SEED)
    assert float(out["train/nonfinite"]) == 0.0 and "losses/csac" not in out
    d, e, r = (_changed(b, v) for b, v in zip(before, (depth_all, ego, residual_only)))
    assert sum(d) > MOVED * len(d) and sum(e) > MOVED * len(e) and not any(r)

    # phase 2: ego + residual; every depth-net variable (statistics too) stays put
    before = [_values(depth_all), _values(ego), _values(residual_only)]
    out = step.train_step(batch, Phase(stage=lee_step.PHASE2), SEED)
    assert float(out["train/nonfinite"]) == 0.0 and "losses/csac" in out
    d, e, r = (_changed(b, v) for b, v in zip(before, (depth_all, ego, residual_only)))
    assert not any(d) and sum(e) > MOVED * len(e) and sum(r) > MOVED_RESIDUAL * len(r)
    # Lee Sec. 4.1's balance rule in TensorBoard: λ_k L_k / (λ_p L_p) per term, and the
    # total is Σ λ_k L_k (the λ of each term named here, independently of the step's table)
    w = step.weights
    lam = {"geometric": w.g, "smooth_depth": w.s, "height_prior": w.h, "csac": w.mr,
           "motion_smooth": w.ms, "motion_sparsity": w.mp}
    loss = {k: float(out[f"losses/{k}"]) for k in ["photometric", *lam]}
    assert {k.split("/")[1] for k in out if k.startswith("loss_ratio/")} == set(lam)
    for k, weight in lam.items():
        np.testing.assert_allclose(float(out[f"loss_ratio/{k}"]),
                                   weight * loss[k] / (w.p * loss["photometric"]), rtol=1e-5)
    np.testing.assert_allclose(float(out["losses/total"]), w.p * loss["photometric"] + sum(
        weight * loss[k] for k, weight in lam.items()), rtol=1e-5)
    assert int(step.depth_optimizer.iterations.numpy()) == 1
    assert int(step.motion_optimizer.iterations.numpy()) == 2

    # phase 3: everything
    before = [_values(depth_all), _values(ego), _values(residual_only)]
    step.train_step(batch, Phase(stage=lee_step.PHASE3), SEED)
    d, e, r = (_changed(b, v) for b, v in zip(before, (depth_all, ego, residual_only)))
    assert sum(d) > MOVED * len(d) and sum(e) > MOVED * len(e) and sum(r) > MOVED_RESIDUAL * len(r)


def test_gradients_reach_only_the_intended_networks(batch):
    """Phase 2 (with L_mc, so the backward pairs run too): the objective reaches the ego
    branch and the residual-only variables, and not the frozen depth net. (Phase 1's
    residual branch does not run; phase 3 trains everything: the test above.)"""
    step = build_step()
    grads = lee_step.gradient_routing(step, batch, Phase(stage=lee_step.PHASE2), SEED)
    share = {"motion_ego": MOVED, "residual": MOVED_RESIDUAL}
    for name, values in grads.items():
        nonzero = sum(bool(np.any(g.numpy())) for g in values)
        if name == "depth":
            assert nonzero == 0, "phase 2: the objective reaches the frozen depth net"
        else:
            assert nonzero > share[name] * len(values), (name, nonzero, len(values))


def _scene():
    """A target view of a background plane (z = 8 m) with a box region (z = 4 m) that
    moves by r = (0.4, 0.1, 0.2) m between t and s, the camera by T_t->s = (R_y(2°),
    t = (0.3, 0, 0.2)); the source image is a smooth texture F, the target is F at the
    analytic source position of every target pixel (numpy: X_s = R (X_t + r) + t)."""
    h = w = SIZE
    K = np.array([[40.0, 0.0, 31.5], [0.0, 40.0, 31.5], [0.0, 0.0, 1.0]])
    depth = np.full((h, w), 8.0)
    box = np.zeros((h, w), bool)
    box[20:44, 16:40] = True
    depth[box] = 4.0
    residual = np.zeros((h, w, 3))
    residual[box] = (0.4, 0.1, 0.2)
    angle = np.deg2rad(2.0)
    R = np.array([[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0],
                  [-np.sin(angle), 0.0, np.cos(angle)]])
    t = np.array([0.3, 0.0, 0.2])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K).T
    points_s = (rays * depth[..., None] + residual) @ R.T + t
    proj = points_s @ K.T
    qx, qy = proj[..., 0] / proj[..., 2], proj[..., 1] / proj[..., 2]

    def texture(x, y):   # periods of 11-23 px: bilinear sampling is accurate
        return np.stack([0.5 + 0.4 * np.sin(2 * np.pi * x / 17.0) * np.cos(2 * np.pi * y / 23.0),
                         0.5 + 0.4 * np.sin(2 * np.pi * (x + y) / 19.0),
                         0.5 + 0.4 * np.cos(2 * np.pi * (x - 0.5 * y) / 11.0)], -1)

    source = texture(xs, ys)
    target = texture(qx, qy)
    inside = (qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    f32 = lambda x: tf.constant(np.asarray(x, np.float32)[None])  # noqa: E731
    return dict(target=f32(target), source=f32(source), depth=f32(depth[..., None]),
                T=f32(T), residual=f32(residual), K=f32(K), box=box, inside=inside)


def test_exact_motion_reconstructs_the_scene_and_ego_motion_alone_does_not():
    s = _scene()
    exact = lee_step.stage2_maps(s["target"], s["source"], s["depth"], s["depth"], s["T"],
                                 s["residual"], s["K"])
    ego = lee_step.stage2_maps(s["target"], s["source"], s["depth"], s["depth"], s["T"],
                               tf.zeros_like(s["residual"]), s["K"])
    # 3x3 SSIM window: judge pixels whose neighbourhood is inside the source
    keep = np.zeros_like(s["inside"])
    keep[1:-1, 1:-1] = s["inside"][1:-1, 1:-1] & s["inside"][:-2, 1:-1] & \
        s["inside"][2:, 1:-1] & s["inside"][1:-1, :-2] & s["inside"][1:-1, 2:]
    phi, phi_ego = exact["phi"].numpy()[0, ..., 0], ego["phi"].numpy()[0, ..., 0]
    assert keep.sum() > 0.6 * keep.size and (keep & s["box"]).sum() > 300
    assert np.percentile(phi[keep], 99) < 0.01 and phi[keep].mean() < 3e-3
    assert np.median(phi_ego[keep & s["box"]]) > 0.1       # the box moved by ~4 px
    assert np.median(phi_ego[keep & ~s["box"]]) < 0.01     # the static background is fine


def test_photometric_term_counts_pixels_that_leave_the_view():
    """L_p is the mean over every target pixel of min_s Φ_s (1 − D_diff_s valid_s): a
    pixel projecting out of view keeps its full Φ, so sending every pixel out of view
    (the degenerate minimum of a mean over valid pixels only, 0) is not free."""
    rng = np.random.RandomState(4)
    phi = rng.uniform(0.05, 1.0, (2, 2, 6, 8, 1)).astype(np.float32)
    diff = rng.uniform(0.0, 1.0, phi.shape).astype(np.float32)
    valid = (rng.uniform(size=phi.shape) > 0.4).astype(np.float32)
    expected = np.mean(np.min(phi * (1.0 - diff * valid), axis=1))
    got = lee_step.photometric_term(tf.constant(phi), tf.constant(diff), tf.constant(valid))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    nowhere = lee_step.photometric_term(tf.constant(phi), tf.constant(diff),
                                        tf.zeros_like(tf.constant(valid)))
    np.testing.assert_allclose(nowhere.numpy(), np.mean(np.min(phi, axis=1)), rtol=1e-6)
    assert nowhere.numpy() > got.numpy() > 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return conftest.tiny_world(tmp_path_factory, SIZE, frames_per_sequence=5)


def test_total_motion_of_the_synthetic_ground_truth_is_its_flow(world):
    ds = pipeline.make_dataset(records.file_pattern(world, "train"), batch_size=3,
                               height=SIZE, width=SIZE, training=False,
                               with_ground_truth=True, with_object_motion=True)
    b = next(iter(ds))
    frames, depth = b[specs.KEY_FRAMES], b[specs.KEY_GT_DEPTH]
    moving_pixels = 0
    for k, i in enumerate(specs.SOURCE_INDICES):
        moving = b[specs.KEY_GT_MOVING][:, k].numpy()[..., 0] > 0.5
        gt_flow = b[specs.KEY_GT_FLOW][:, k].numpy()
        residual = b[specs.KEY_GT_OBJECT_MOTION][:, k]
        errors = []
        for r in (residual, tf.zeros_like(residual)):   # total motion, ego-motion alone
            maps = lee_step.stage2_maps(frames[:, specs.TARGET_INDEX], frames[:, i], depth,
                                        depth, b[specs.KEY_GT_POSE][:, k], r,
                                        b[specs.KEY_INTRINSICS])
            errors.append(np.linalg.norm(maps["flow"].numpy() - gt_flow, axis=-1))
        assert errors[0].max() < 1e-3
        assert np.median(errors[1][moving]) > 0.5 and errors[1][~moving].max() < 1e-3
        moving_pixels += moving.sum()
    assert moving_pixels > 100


def test_nonfinite_batch_is_skipped(batch):
    step = build_step(lee_step.LeeWeights(mc=0.0))
    variables = step.depth_net.weights + step.motion_net.weights
    before = _values(variables)
    bad = dict(batch)
    frames = batch[specs.KEY_FRAMES].numpy().copy()
    frames[0, specs.TARGET_INDEX, 5, 5, 1] = np.nan
    bad[specs.KEY_FRAMES] = bad[specs.KEY_FRAMES_AUG] = tf.constant(frames)
    out = step.train_step(bad, Phase(stage=lee_step.PHASE1), SEED)
    assert float(out["train/nonfinite"]) == 1.0 and int(step.nonfinite_steps.numpy()) == 1
    assert not any(_changed(before, variables))
    assert int(step.depth_optimizer.iterations.numpy()) == 0


def test_boxes_are_required_and_phases_are_checked(batch):
    step = build_step()
    no_boxes = {k: v for k, v in batch.items() if k not in (specs.KEY_BOXES, specs.KEY_BOX_MASK)}
    with pytest.raises(ValueError, match="max_boxes"):
        step.compute_losses(no_boxes, Phase(stage=lee_step.PHASE1), SEED)
    with pytest.raises(ValueError, match="phase1"):
        step.compute_losses(batch, Phase(stage="competition"), SEED)


def test_warm_up_leaves_out_the_geometric_and_height_terms(batch):
    """During the warm-up (`Phase.burn_in`, `train_and_evaluate.burn_in_epochs`) L^P1 is
    L_p + L_s: L_g and L_h are not computed and boxes are not needed; afterwards both are
    back, and the photometric term is the same."""
    step = build_step()
    no_boxes = {k: v for k, v in batch.items() if k not in (specs.KEY_BOXES, specs.KEY_BOX_MASK)}
    warm, _ = step.compute_losses(no_boxes, Phase(burn_in=True, stage=lee_step.PHASE1), SEED,
                                  training=False)
    full, _ = step.compute_losses(batch, Phase(stage=lee_step.PHASE1), SEED, training=False)
    assert set(warm) == {"photometric", "smooth_depth", "total"}
    assert {"geometric", "height_prior"} <= set(full)
    np.testing.assert_allclose(warm["photometric"].numpy(), full["photometric"].numpy(),
                               rtol=1e-6)
    w = step.weights
    np.testing.assert_allclose(warm["total"].numpy(), w.p * warm["photometric"].numpy()
                               + w.s * warm["smooth_depth"].numpy(), rtol=1e-6)
