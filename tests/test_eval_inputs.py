"""The evaluators refuse malformed inputs with an error naming the file (and line / pixel)
instead of turning them into numbers (issue 14, defect 3)."""
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from coopnet_tf.eval import depth, flow, kitti_flow_io, odometry
from coopnet_tf.eval.inputs import InputError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(args):
    """Runs `python -m coopnet_tf.evaluate ARGS`; returns (exit code, stdout + stderr)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "coopnet_tf.evaluate"] + args, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


# --- depth ------------------------------------------------------------------------------

def _depth_files(tmp_path, disps):
    rng = np.random.default_rng(0)
    gts = np.empty(2, object)
    gts[:] = [rng.uniform(2, 50, (30, 40)).astype(np.float32) for _ in range(2)]
    np.savez(tmp_path / "gt.npz", data=gts)
    np.save(tmp_path / "d.npy", disps)
    return tmp_path / "gt.npz", tmp_path / "d.npy"


@pytest.mark.parametrize("value, problem", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                            (0.0, "zero or negative"), (-0.1, "zero or negative")])
def test_pred_disparities_must_be_finite_and_positive(tmp_path, value, problem):
    disps = np.full((2, 16, 20), 0.1, np.float32)
    disps[1, 3, 5] = value
    _, path = _depth_files(tmp_path, disps)
    with pytest.raises(InputError, match=rf"d\.npy: 1 {problem} disparity .* image 1 row 3 col 5"):
        depth.load_pred_disps(path)


def test_gt_depths_must_be_finite_and_non_negative(tmp_path):
    gts = np.empty(1, object)
    gts[0] = np.ones((4, 5), np.float32)
    gts[0][2, 1] = -3.0
    np.savez(tmp_path / "gt.npz", data=gts)
    with pytest.raises(InputError, match=r"gt\.npz \(ground-truth map 0\): 1 negative depth .* row 2 col 1"):
        depth.load_gt_depths(tmp_path / "gt.npz")


def test_library_gives_no_metric_for_an_invalid_prediction():
    gt = np.full((30, 40), 10.0, np.float32)
    for bad in (np.nan, -1.0):
        disp = np.full((16, 20), 0.1, np.float32)
        disp[4, 4] = bad
        res = depth.evaluate_depth([gt], disp[None], protocol="full")
        assert all(math.isnan(res[k]) for k in depth.METRIC_NAMES), res  # a1 too


def test_cli_rejects_negative_disparities(tmp_path):
    rng = np.random.default_rng(1)
    gt, pred = _depth_files(tmp_path, -rng.uniform(0.02, 0.3, (2, 16, 20)).astype(np.float32))
    code, out = _cli(["depth", f"--gt_depths={gt}", f"--pred_disps={pred}", "--protocol=full"])
    assert code == 1, out
    assert f"{pred}: 640 zero or negative disparity" in out
    assert "abs_rel" not in out and "Traceback" not in out


# --- flow -------------------------------------------------------------------------------

def _flow_dirs(tmp_path, noc_rows=20):
    rng = np.random.default_rng(2)
    f = rng.uniform(-5, 5, (20, 60, 2)).astype(np.float32)
    kitti_flow_io.write_flow_png(tmp_path / "gt/flow_occ/000000_10.png", f)
    kitti_flow_io.write_flow_png(tmp_path / "gt/flow_noc/000000_10.png", f[:noc_rows])
    return f


def test_flow_8bit_png_is_not_a_flow_file(tmp_path):
    _flow_dirs(tmp_path)
    (tmp_path / "pred").mkdir()
    rgb8 = np.random.default_rng(3).integers(0, 255, (20, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb8).save(tmp_path / "pred/000000_10.png")
    with pytest.raises(InputError, match=r"pred/000000_10\.png: a KITTI flow file is a 16-bit RGB "
                                         r"PNG; this file is 8-bit RGB"):
        flow.evaluate_flow_dirs(tmp_path / "gt", tmp_path / "pred")
    Image.fromarray(rgb8).save(tmp_path / "gt/flow_occ/000000_10.png")  # 8-bit GT as well
    kitti_flow_io.write_flow_png(tmp_path / "pred/000000_10.png", np.zeros((20, 60, 2)))
    with pytest.raises(InputError, match=r"flow_occ/000000_10\.png: .* 8-bit RGB"):
        flow.evaluate_flow_dirs(tmp_path / "gt", tmp_path / "pred")


def test_flow_transposed_prediction_is_refused_same_aspect_is_resized(tmp_path):
    f = _flow_dirs(tmp_path)
    kitti_flow_io.write_flow_png(tmp_path / "pred/000000_10.png", np.transpose(f, (1, 0, 2)))
    with pytest.raises(InputError, match=r"000000_10\.png is 60x20 \(HxW\) but the ground truth "
                                         r".*flow_occ/000000_10\.png is 20x60"):
        flow.evaluate_flow_dirs(tmp_path / "gt", tmp_path / "pred")
    # Half size, same aspect: resized with values halved -> doubled back; constant flow exact.
    kitti_flow_io.write_flow_png(tmp_path / "pred/000000_10.png", np.full((10, 30, 2), 1.0))
    kitti_flow_io.write_flow_png(tmp_path / "gt/flow_occ/000000_10.png", np.full((20, 60, 2), 2.0))
    os.remove(tmp_path / "gt/flow_noc/000000_10.png")
    res = flow.evaluate_flow_dirs(tmp_path / "gt", tmp_path / "pred")
    assert res["n_resized"] == 1 and res["epe_all"] == pytest.approx(0.0, abs=1e-6)


def test_flow_noc_occ_size_mismatch_names_both(tmp_path):
    f = _flow_dirs(tmp_path, noc_rows=10)
    kitti_flow_io.write_flow_png(tmp_path / "pred/000000_10.png", f)
    with pytest.raises(InputError, match=r"flow_noc/000000_10\.png is 10x60 but .*flow_occ/"
                                         r"000000_10\.png is 20x60"):
        flow.evaluate_flow_dirs(tmp_path / "gt", tmp_path / "pred")


def test_cli_flow_rejects_8bit_prediction(tmp_path):
    _flow_dirs(tmp_path)
    (tmp_path / "pred").mkdir()
    Image.fromarray(np.zeros((20, 60, 3), np.uint8)).save(tmp_path / "pred/000000_10.png")
    code, out = _cli(["flow", f"--gt_dir={tmp_path / 'gt'}", f"--pred_dir={tmp_path / 'pred'}"])
    assert code == 1, out
    assert f"{tmp_path / 'pred/000000_10.png'}: a KITTI flow file is a 16-bit RGB PNG" in out
    assert "epe_all" not in out and "Traceback" not in out


# --- odometry ---------------------------------------------------------------------------

def _pose_lines(n=20):
    rows = np.tile(np.eye(4)[:3].ravel(), (n, 1))
    rows[:, 11] = np.arange(n)
    return [" ".join(f"{v:.6e}" for v in r) for r in rows]


@pytest.mark.parametrize("line, message", [
    ("1 0 0 0 0 1 0 0 0 0 1", "expected 12 whitespace-separated numbers, got 11"),
    ("1,0,0,0,0,1,0,0,0,0,1,0", "expected 12 whitespace-separated numbers, got 1 "),
    ("1 0 0 0 0 1 0 0 0 0 1 x", "not a number"),
    ("nan 0 0 0 0 1 0 0 0 0 1 0", "NaN or infinite"),
    ("1 0 0 inf 0 1 0 0 0 0 1 0", "NaN or infinite"),
    ("0 0 0 0 0 0 0 0 0 0 0 0", "the 3x3 block is not a rotation"),
])
def test_pose_file_errors_name_file_and_line(tmp_path, line, message):
    lines = _pose_lines()
    lines[5] = line
    path = tmp_path / "pred.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"pred\.txt:6: {message}"):
        odometry.load_kitti_poses(path)


def test_cli_odometry_count_mismatch_and_bad_line(tmp_path):
    (tmp_path / "gt.txt").write_text("\n".join(_pose_lines(20)) + "\n")
    (tmp_path / "short.txt").write_text("\n".join(_pose_lines(15)) + "\n")
    code, out = _cli(["odometry", f"--gt_poses={tmp_path / 'gt.txt'}",
                      f"--pred_poses={tmp_path / 'short.txt'}"])
    assert code == 1 and f"{tmp_path / 'gt.txt'} has 20 poses but {tmp_path / 'short.txt'} has 15" in out
    bad = _pose_lines(20)
    bad[3] = bad[3].replace(" ", ",", 2)
    (tmp_path / "bad.txt").write_text("\n".join(bad) + "\n")
    code, out = _cli(["odometry", f"--gt_poses={tmp_path / 'gt.txt'}",
                      f"--pred_poses={tmp_path / 'bad.txt'}"])
    assert code == 1 and f"{tmp_path / 'bad.txt'}:4: expected 12" in out and "Traceback" not in out
