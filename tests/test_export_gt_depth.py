"""tools/export_gt_depth.py on the real KITTI frames with LiDAR (frames 0-2).

The maps are checked against a brute-force projection built here from the raw
calibration text: every pixel holds the smallest velodyne-x of the points whose rounded
projection minus one lands on it.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from coopnet_tf.data import convert, kitti

REPO = pathlib.Path(__file__).resolve().parents[1]
DATE = "2011_09_26"
DRIVE = "2011_09_26_drive_0000_sync"


def _raw_line(path, key):
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return np.array([float(v) for v in line[len(key) + 1:].split()])
    raise AssertionError(f"{key} not in {path}")


def _split(tmp_path, frames):
    path = tmp_path / "test_files.txt"
    path.write_text("".join(f"{DATE}/{DRIVE} {i:010d} l\n" for i in frames))
    return str(path)


def _brute_force_map(root, frame):
    date_dir = root / DATE
    velo2cam = np.eye(4)
    velo2cam[:3, :3] = _raw_line(date_dir / "calib_velo_to_cam.txt", "R").reshape(3, 3)
    velo2cam[:3, 3] = _raw_line(date_dir / "calib_velo_to_cam.txt", "T")
    rect = np.eye(4)
    rect[:3, :3] = _raw_line(date_dir / "calib_cam_to_cam.txt", "R_rect_00").reshape(3, 3)
    p = _raw_line(date_dir / "calib_cam_to_cam.txt", "P_rect_02").reshape(3, 4) @ rect @ velo2cam
    width, height = _raw_line(date_dir / "calib_cam_to_cam.txt", "S_rect_02").astype(int)
    scan = np.fromfile(date_dir / DRIVE / "velodyne_points" / "data" / f"{frame:010d}.bin", np.float32)
    best = {}
    for x, y, z, _ in scan.reshape(-1, 4).astype(np.float64):
        if x < 0:
            continue
        h = p @ np.array([x, y, z, 1.0])
        if h[2] == 0:
            continue
        col, row = int(np.round(h[0] / h[2])) - 1, int(np.round(h[1] / h[2])) - 1
        if 0 <= col < width and 0 <= row < height:
            best[(row, col)] = min(best.get((row, col), np.inf), x)
    out = np.zeros((height, width))
    for (row, col), depth in best.items():
        out[row, col] = depth
    return out


def test_export_real_frames(shared_data, tmp_path):
    root = shared_data / "kitti_raw"
    output = tmp_path / "gt" / "gt_depths.npz"
    line = kitti.export_gt_depths(str(root), _split(tmp_path, [0, 1, 2]), str(output), show_progress=False)
    assert line.startswith("maps=3 ")
    data = np.load(output, allow_pickle=True)["data"]
    assert data.dtype == object and data.shape == (3,)
    for depth in data:
        assert depth.shape == (375, 1242) and depth.dtype == np.float32
        valid = depth[depth > 0]
        assert 5000 < valid.size < 50000, valid.size           # thousands of LiDAR pixels
        assert np.mean(valid <= 80) > 0.95 and valid.min() > 0   # depths in (0, 80] mostly
        assert depth.min() == 0
    # Interior columns equal the brute-force map exactly (columns 0 and W-1 are where the
    # reference's duplicate index may differ from a true one).
    brute = _brute_force_map(root, 0)
    np.testing.assert_allclose(data[0][:, 1:-1], brute[:, 1:-1].astype(np.float32), rtol=0, atol=0)
    unique = kitti.generate_depth_map(str(root / DATE), str(root / DATE / DRIVE / "velodyne_points" / "data"
                                                            / "0000000000.bin"), duplicate_index="unique")
    np.testing.assert_allclose(unique.astype(np.float32), brute.astype(np.float32), rtol=0, atol=0)


def test_export_missing_scan_names_the_file(shared_data, tmp_path):
    with pytest.raises(convert.ConversionError,
                       match=r"missing velodyne scan .*velodyne_points/data/0000000005\.bin; expected layout"):
        kitti.export_gt_depths(str(shared_data / "kitti_raw"), _split(tmp_path, [0, 5]), str(tmp_path / "o.npz"),
                               show_progress=False)
    assert not (tmp_path / "o.npz").exists()


def test_export_tool(shared_data, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    output = tmp_path / "gt_depths.npz"
    args = [sys.executable, str(REPO / "tools" / "export_gt_depth.py"), f"--data_path={shared_data / 'kitti_raw'}",
            f"--split_file={_split(tmp_path, [2, 0])}", f"--output={output}", "--duplicate_index=unique"]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "maps=2 " in result.stdout
    data = np.load(output, allow_pickle=True)["data"]
    assert len(data) == 2 and np.count_nonzero(data[0]) != np.count_nonzero(data[1])  # file order kept
    bad = subprocess.run(args[:3] + [f"--split_file={_split(tmp_path, [7])}", f"--output={tmp_path / 'x.npz'}"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "0000000007.bin" in bad.stderr and "expected layout" in bad.stderr
    assert not (tmp_path / "x.npz").exists()
