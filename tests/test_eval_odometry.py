"""Odometry metrics (coopnet_tf.eval.odometry): KITTI devkit t_err / r_err, Zhou ATE,
alignment, synthetic drifts, real KITTI GT poses, and the CLI (incl. --predict)."""
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from coopnet_tf.eval import odometry as odo

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _rot_y(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _pose(r, t):
    p = np.eye(4)
    p[:3, :3] = r
    p[:3, 3] = t
    return p


def _straight(n=1000, step=1.0):
    return np.stack([_pose(np.eye(3), [0.0, 0.0, step * k]) for k in range(n)])


def _devkit_bruteforce(gt, pred, lengths=(100, 200, 300, 400, 500, 600, 700, 800), step=10):
    """Literal loops of the KITTI devkit (evaluate_odometry.cpp), full matrix inverses."""
    dist = [0.0]
    for i in range(1, len(gt)):
        dist.append(dist[-1] + np.linalg.norm(gt[i, :3, 3] - gt[i - 1, :3, 3]))
    t_errs, r_errs = [], []
    for first in range(0, len(gt), step):
        for length in lengths:
            last = -1
            for i in range(first, len(dist)):
                if dist[i] > dist[first] + length:
                    last = i
                    break
            if last == -1:
                continue
            d_gt = np.linalg.inv(gt[first]) @ gt[last]
            d_pred = np.linalg.inv(pred[first]) @ pred[last]
            e = np.linalg.inv(d_pred) @ d_gt
            a = 0.5 * (e[0, 0] + e[1, 1] + e[2, 2] - 1.0)
            r_errs.append(math.acos(max(min(a, 1.0), -1.0)) / length)
            t_errs.append(np.linalg.norm(e[:3, 3]) / length)
    return 100.0 * np.mean(t_errs), np.mean(r_errs) / math.pi * 180.0 * 100.0


def test_one_percent_scale_error_gives_one_percent():
    gt = _straight()
    pred = gt.copy()
    pred[:, :3, 3] *= 1.01
    res, _, _ = odo.evaluate_odometry(gt, pred, align="none")
    # Straight line, 1 m steps: the segment ends at the first frame beyond L, i.e. the chord
    # is L + 1 m, so t = 0.01 (L + 1) / L for every segment that fits.
    expect = [0.01 * (length + 1) / length for length in range(100, 900, 100)
              for first in range(0, 1000, 10) if first + length + 1 < 1000]
    assert res["t_err"] == pytest.approx(100 * np.mean(expect), rel=1e-9)
    assert res["t_err"] == pytest.approx(1.0, abs=0.01)
    assert res["r_err"] == pytest.approx(0.0, abs=1e-9)
    # 7-DoF (and scale) alignment remove a pure scale error.
    for mode in ("7dof", "scale"):
        res, _, _ = odo.evaluate_odometry(gt, pred, align=mode)
        assert res["t_err"] == pytest.approx(0.0, abs=1e-9)


def test_rotation_drift_gives_expected_r_err():
    gt = _straight()
    delta = 1e-4                                   # rad of heading drift per frame (per metre)
    pred = np.stack([_pose(_rot_y(delta * k), gt[k, :3, 3]) for k in range(len(gt))])
    res, _, _ = odo.evaluate_odometry(gt, pred, align="none")
    expect = [delta * (length + 1) / length for length in range(100, 900, 100)
              for first in range(0, 1000, 10) if first + length + 1 < 1000]
    assert res["r_err"] == pytest.approx(np.mean(expect) * 180 / math.pi * 100, rel=1e-6)
    assert res["r_err"] == pytest.approx(delta * 180 / math.pi * 100, rel=0.01)   # 0.573 deg/100m


def test_similarity_transformed_gt_is_aligned_by_7dof():
    rng = np.random.default_rng(0)
    gt = _straight(400)
    for k in range(len(gt)):   # a gently curving path
        gt[k] = _pose(_rot_y(0.002 * k), [30 * math.sin(0.002 * k), 0.1 * math.sin(0.05 * k), k * 1.0])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    r = q * np.sign(np.linalg.det(q))
    s, t = 0.37, np.array([5.0, -2.0, 11.0])
    pred = np.stack([_pose(r @ g[:3, :3], s * r @ g[:3, 3] + t) for g in gt])
    res, aligned, gt0 = odo.evaluate_odometry(gt, pred, align="7dof")
    assert res["t_err"] == pytest.approx(0.0, abs=1e-8)
    assert res["r_err"] == pytest.approx(0.0, abs=1e-5)
    assert res["align_scale"] == pytest.approx(1 / s, rel=1e-9)
    np.testing.assert_allclose(aligned[:, :3, 3], gt0[:, :3, 3], atol=1e-8)
    assert res["ate_mean"] == pytest.approx(0.0, abs=1e-9)   # ATE is scale/frame invariant
    res, _, _ = odo.evaluate_odometry(gt, pred, align="none")
    assert res["t_err"] > 50.0
    res, _, _ = odo.evaluate_odometry(gt, pred, align="6dof")    # keeps the 0.37 scale
    assert res["t_err"] == pytest.approx(63.0, abs=1.0)


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 50))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    r = q * np.sign(np.linalg.det(q))
    y = 2.5 * r @ x + np.array([[1.0], [2.0], [3.0]])
    r_est, t_est, s_est = odo.umeyama_alignment(x, y)
    np.testing.assert_allclose(r_est, r, atol=1e-10)
    np.testing.assert_allclose(t_est, [1.0, 2.0, 3.0], atol=1e-10)
    assert s_est == pytest.approx(2.5)


def test_ate_by_hand():
    gt = np.array([[k, 0.0, 0.0] for k in range(5)])
    pred = np.array([[0, 0, 0], [1, 1, 0], [2, 0, 0], [3, 1, 0], [4, 0, 0]], float)
    # s = sum(gt . pred) / sum(pred^2) = 30 / 32; residuals s pred - gt:
    # (-1/16, 15/16), (-1/8, 0), (-3/16, 15/16), (-1/4, 0): sum of squares 1.875.
    assert odo.compute_ate(gt, pred) == pytest.approx(math.sqrt(1.875) / 5, rel=1e-12)
    # Offset of the first position is removed; a pure scale gives zero.
    assert odo.compute_ate(gt, 3 * gt + 7) == pytest.approx(0.0, abs=1e-12)
    # Snippets from poses: same numbers, translated / rotated globally.
    g = np.stack([_pose(np.eye(3), p) for p in gt])
    p = np.stack([_pose(_rot_y(0.3), _rot_y(0.3) @ q + [1, 2, 3]) for q in pred])
    ates = odo.snippet_ate(g, p)
    assert ates.shape == (1,)
    assert ates[0] == pytest.approx(math.sqrt(1.875) / 5, rel=1e-9)


def test_chain_and_relative_are_inverse():
    rng = np.random.default_rng(4)
    gt = np.stack([_pose(_rot_y(rng.normal(0, 0.3)), rng.normal(0, 5, 3)) for _ in range(20)])
    gt = odo.to_first_frame(gt)
    rel = odo.relative_from_absolute(gt)
    # T_{k->k+1} maps points of camera k into camera k+1: X_{k+1} = T X_k.
    x_world = np.array([1.0, 2.0, 3.0, 1.0])
    x0 = np.linalg.inv(gt[0]) @ x_world
    x1 = np.linalg.inv(gt[1]) @ x_world
    np.testing.assert_allclose(rel[0] @ x0, x1, atol=1e-10)
    np.testing.assert_allclose(odo.chain_relative_poses(rel), gt, atol=1e-9)


def test_kitti_file_round_trip(tmp_path):
    poses = np.stack([_pose(_rot_y(0.1 * k), [k, 0.5 * k, 2 * k]) for k in range(5)])
    odo.save_kitti_poses(tmp_path / "p.txt", poses)
    lines = (tmp_path / "p.txt").read_text().splitlines()
    assert len(lines) == 5 and len(lines[0].split()) == 12
    np.testing.assert_allclose(odo.load_kitti_poses(tmp_path / "p.txt"), poses, atol=1e-8)


def test_real_gt_poses_against_themselves_and_perturbed(shared_data):
    gt = odo.load_kitti_poses(shared_data / "kitti_odom" / "poses" / "04.txt")
    res, _, _ = odo.evaluate_odometry(gt, gt)
    assert res["t_err"] == pytest.approx(0.0, abs=1e-6)
    assert res["r_err"] == pytest.approx(0.0, abs=1e-4)
    assert res["ate_mean"] == pytest.approx(0.0, abs=1e-9)
    assert res["n_segments"] > 0
    # 2 % scale error on every motion: t_err ~ 2 % without alignment (04 is nearly straight,
    # chord ~ path length), removed by 7-DoF alignment.
    rel = odo.relative_from_absolute(gt)
    scaled = rel.copy()
    scaled[:, :3, 3] *= 1.02
    pred = odo.chain_relative_poses(scaled, gt[0])
    res, _, _ = odo.evaluate_odometry(gt, pred, align="none")
    assert res["t_err"] == pytest.approx(2.0, abs=0.05)
    assert res["r_err"] == pytest.approx(0.0, abs=1e-3)
    res, _, _ = odo.evaluate_odometry(gt, pred, align="7dof")
    assert res["t_err"] < 0.05
    # Random noise on every motion: equal to a literal devkit implementation.
    rng = np.random.default_rng(7)
    noisy = np.stack([r @ _pose(_rot_y(rng.normal(0, 2e-3)), rng.normal(0, 0.02, 3)) for r in rel])
    pred = odo.chain_relative_poses(noisy, gt[0])
    for mode in ("none", "7dof"):
        res, aligned, gt0 = odo.evaluate_odometry(gt, pred, align=mode)
        t_ref, r_ref = _devkit_bruteforce(gt0, aligned)
        assert res["t_err"] == pytest.approx(t_ref, rel=1e-9)
        assert res["r_err"] == pytest.approx(r_ref, rel=1e-9)
        assert res["r_err"] > 0.1


def test_cli_odometry(tmp_path, shared_data):
    gt = shared_data / "kitti_odom" / "poses" / "04.txt"
    poses = odo.load_kitti_poses(gt)
    rel = odo.relative_from_absolute(poses)
    rel[:, :3, 3] *= 0.5
    odo.save_kitti_poses(tmp_path / "pred.txt", odo.chain_relative_poses(rel))
    out = _run(["-m", "coopnet_tf.evaluate", "odometry", f"--gt_poses={gt}",
                f"--pred_poses={tmp_path / 'pred.txt'}", f"--output_json={tmp_path / 'r.json'}",
                f"--plot_dir={tmp_path / 'plots'}", "--compare_paper", "--sequence=09"])
    res = json.loads((tmp_path / "r.json").read_text())
    for k in ("t_err", "r_err", "ate_mean", "ate_std"):
        assert isinstance(res[k], float)
    assert res["t_err"] < 0.05 and res["align"] == "7dof"
    assert "8.42" in out                                   # paper, seq. 09
    assert (tmp_path / "plots" / "seq09_trajectory.png").stat().st_size > 1000


def _save_pose_model(path):
    """A SavedModel with the EXPORT_POSE signature: constant T_a->b = 1 m forward motion."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    class Pose(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 16, 32, 3], tf.float32, name="image_a"),
                                      tf.TensorSpec([None, 16, 32, 3], tf.float32, name="image_b")])
        def serve(self, image_a, image_b):
            b = tf.shape(image_a)[0]
            t = tf.constant([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -1.0], [0, 0, 0, 1]], tf.float32)
            vec = tf.constant([[0, 0, 0, 0, 0, -1.0]]) + 0.0 * tf.reduce_mean(image_b - image_a)
            return {"pose_vector": tf.tile(vec, [b, 1]), "transform": tf.tile(t[None], [b, 1, 1])}

    m = Pose()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})


def test_predict_trajectory_with_saved_model(tmp_path):
    """The --predict path: SavedModel (EXPORT_POSE signature) -> chained KITTI trajectory."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from coopnet_tf import evaluate  # no flags are registered on import

    (tmp_path / "img").mkdir()
    for k in range(6):
        Image.fromarray(np.full((20, 40, 3), 20 * k, np.uint8)).save(tmp_path / "img" / f"{k:06d}.png")
    _save_pose_model(tmp_path / "pose" / "1")
    signature = evaluate.load_signature(str(tmp_path / "pose"))     # export layout <name>/<version>
    poses = evaluate.predict_trajectory(signature, evaluate.list_images(str(tmp_path / "img")),
                                        16, 32, batch_size=4)
    assert poses.shape == (6, 4, 4)
    # Points move 1 m towards the camera each frame: the camera drives +1 m along z.
    np.testing.assert_allclose(poses[:, :3, 3], [[0, 0, k] for k in range(6)], atol=1e-6)
    odo.save_kitti_poses(tmp_path / "pred.txt", poses)
    np.testing.assert_allclose(odo.load_kitti_poses(tmp_path / "pred.txt"), poses, atol=1e-8)
