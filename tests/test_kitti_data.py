"""KITTI calibration readers, velodyne projection and Monodepth2 depth maps.

Real-data tests use ../shared/data/kitti_raw (the `shared_data` fixture skips without it);
expected values are computed here from the raw calibration text, independently of
coopnet_tf.data.kitti. The depth-map generator is compared bit for bit with a literal
transcription of Monodepth2's `kitti_utils.generate_depth_map`.
"""
import collections
import os

import numpy as np
import pytest

from coopnet_tf.data import convert, kitti

DATE = "2011_09_26"
DRIVE = "2011_09_26_drive_0000_sync"


def _raw_line(path, key):
    """Numbers of the line "<key>: ..." of a calibration file, parsed by hand."""
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return np.array([float(v) for v in line[len(key) + 1:].split()])
    raise AssertionError(f"{key} not in {path}")


def _reference_generate_depth_map(calib_dir, velo_filename, cam=2, vel_depth=False):
    """Monodepth2 kitti_utils.generate_depth_map, transcribed line by line (the oracle)."""
    def read_calib_file(path):
        float_chars = set("0123456789.e+- ")
        data = {}
        with open(path, "r") as f:
            for line in f.readlines():
                key, value = line.split(":", 1)
                value = value.strip()
                data[key] = value
                if float_chars.issuperset(value):
                    try:
                        data[key] = np.array(list(map(float, value.split(" "))))
                    except ValueError:
                        pass
        return data

    def sub2ind(matrix_size, row_sub, col_sub):
        m, n = matrix_size
        return row_sub * (n - 1) + col_sub - 1

    cam2cam = read_calib_file(os.path.join(calib_dir, "calib_cam_to_cam.txt"))
    velo2cam = read_calib_file(os.path.join(calib_dir, "calib_velo_to_cam.txt"))
    velo2cam = np.hstack((velo2cam["R"].reshape(3, 3), velo2cam["T"][..., np.newaxis]))
    velo2cam = np.vstack((velo2cam, np.array([0, 0, 0, 1.0])))
    im_shape = cam2cam["S_rect_02"][::-1].astype(np.int32)
    r_cam2rect = np.eye(4)
    r_cam2rect[:3, :3] = cam2cam["R_rect_00"].reshape(3, 3)
    p_rect = cam2cam["P_rect_0" + str(cam)].reshape(3, 4)
    p_velo2im = np.dot(np.dot(p_rect, r_cam2rect), velo2cam)
    velo = np.fromfile(velo_filename, dtype=np.float32).reshape(-1, 4)
    velo[:, 3] = 1.0
    velo = velo[velo[:, 0] >= 0, :]
    velo_pts_im = np.dot(p_velo2im, velo.T).T
    velo_pts_im[:, :2] = velo_pts_im[:, :2] / velo_pts_im[:, 2][..., np.newaxis]
    if vel_depth:
        velo_pts_im[:, 2] = velo[:, 0]
    velo_pts_im[:, 0] = np.round(velo_pts_im[:, 0]) - 1
    velo_pts_im[:, 1] = np.round(velo_pts_im[:, 1]) - 1
    val_inds = (velo_pts_im[:, 0] >= 0) & (velo_pts_im[:, 1] >= 0)
    val_inds = val_inds & (velo_pts_im[:, 0] < im_shape[1]) & (velo_pts_im[:, 1] < im_shape[0])
    velo_pts_im = velo_pts_im[val_inds, :]
    depth = np.zeros((im_shape[:2]))
    depth[velo_pts_im[:, 1].astype(int), velo_pts_im[:, 0].astype(int)] = velo_pts_im[:, 2]
    inds = sub2ind(depth.shape, velo_pts_im[:, 1], velo_pts_im[:, 0])
    dupe_inds = [item for item, count in collections.Counter(inds).items() if count > 1]
    for dd in dupe_inds:
        pts = np.where(inds == dd)[0]
        x_loc = int(velo_pts_im[pts[0], 0])
        y_loc = int(velo_pts_im[pts[0], 1])
        depth[y_loc, x_loc] = velo_pts_im[pts, 2].min()
    depth[depth < 0] = 0
    return depth


# ----------------------------------------------------------------------------- real data


def test_real_intrinsics_rescaled_to_128x416(shared_data):
    date_dir = shared_data / "kitti_raw" / DATE
    cam_file = str(date_dir / "calib_cam_to_cam.txt")
    p = _raw_line(cam_file, "P_rect_02").reshape(3, 4)
    width, height = _raw_line(cam_file, "S_rect_02")
    expected = np.array([[p[0, 0] * 416 / width, 0, p[0, 2] * 416 / width],
                         [0, p[1, 1] * 128 / height, p[1, 2] * 128 / height],
                         [0, 0, 1]])
    k, size = kitti.raw_camera_calibration(str(date_dir), "image_02")
    assert size == (375, 1242) == (int(height), int(width))
    np.testing.assert_allclose(k, p[:, :3], rtol=0, atol=0)
    k_stored, stored_size = convert.stored_intrinsics(k, size, 0.0, (128, 416))
    assert stored_size == (128, 416)
    np.testing.assert_allclose(k_stored, expected, rtol=1e-12)
    # The TF geometry helper gives the same numbers.
    from coopnet_tf import geometry
    k_tf = geometry.scale_intrinsics(k[None].astype(np.float32), 416 / width, 128 / height).numpy()[0]
    np.testing.assert_allclose(k_tf, expected, rtol=1e-6)
    # Right camera: P_rect_03.
    k3, _ = kitti.raw_camera_calibration(str(date_dir), "image_03")
    np.testing.assert_allclose(k3, _raw_line(cam_file, "P_rect_03").reshape(3, 4)[:, :3])


def test_real_lidar_projects_into_the_image(shared_data):
    date_dir = shared_data / "kitti_raw" / DATE
    cam_file = str(date_dir / "calib_cam_to_cam.txt")
    velo_file = str(date_dir / "calib_velo_to_cam.txt")
    # P_velo->img built by hand from the text.
    velo2cam = np.eye(4)
    velo2cam[:3, :3] = _raw_line(velo_file, "R").reshape(3, 3)
    velo2cam[:3, 3] = _raw_line(velo_file, "T")
    rect = np.eye(4)
    rect[:3, :3] = _raw_line(cam_file, "R_rect_00").reshape(3, 3)
    p_expected = _raw_line(cam_file, "P_rect_02").reshape(3, 4) @ rect @ velo2cam
    p, (height, width) = kitti.velo_to_image_matrix(str(date_dir), cam=2)
    np.testing.assert_allclose(p, p_expected, rtol=1e-12)
    assert (height, width) == (375, 1242)

    scan = np.fromfile(shared_data / "kitti_raw" / DATE / DRIVE / "velodyne_points" / "data" / "0000000000.bin",
                       np.float32).reshape(-1, 4)
    points = kitti.load_velodyne_points(str(shared_data / "kitti_raw" / DATE / DRIVE / "velodyne_points"
                                            / "data" / "0000000000.bin"))
    np.testing.assert_array_equal(points[:, :3], scan[:, :3])
    assert np.all(points[:, 3] == 1)
    front = points[(points[:, 0] > 1.0)]
    uvz = kitti.project_velodyne(front, p)
    cam_z = front @ (rect @ velo2cam)[2]
    inside = (cam_z > 0) & (uvz[:, 0] >= 0) & (uvz[:, 0] < width) & (uvz[:, 1] >= 0) & (uvz[:, 1] < height)
    u, v, depth = uvz[inside, 0], uvz[inside, 1], front[inside, 0]
    # Thousands of points land in the image, spread over its width and down to its bottom.
    assert inside.sum() > 10000, inside.sum()
    assert u.min() < 50 and u.max() > width - 50
    assert v.max() > height - 20
    # The scanner looks at most ~2 deg up: few points in the top quarter (sky).
    assert np.percentile(v, 5) > height / 4
    # Plausible depths: mostly 5-80 m (the LiDAR hits the road from ~5 m on).
    in_range = np.mean((depth >= 5) & (depth <= 80))
    assert in_range > 0.85, in_range
    assert 5 < np.median(depth) < 80
    # A point far ahead on the velodyne x axis lands near the principal point.
    far = kitti.project_velodyne(np.array([[1000.0, 0.0, 0.0, 1.0]]), p)[0]
    cx, cy = _raw_line(cam_file, "P_rect_02")[[2, 6]]
    assert abs(far[0] - cx) < 30 and abs(far[1] - cy) < 30, (far, cx, cy)


def test_depth_map_equals_monodepth2_reference(shared_data):
    calib_dir = str(shared_data / "kitti_raw" / DATE)
    for frame in range(3):
        velo = str(shared_data / "kitti_raw" / DATE / DRIVE / "velodyne_points" / "data" / f"{frame:010d}.bin")
        ours = kitti.generate_depth_map(calib_dir, velo, cam=2, vel_depth=True)
        reference = _reference_generate_depth_map(calib_dir, velo, cam=2, vel_depth=True)
        np.testing.assert_array_equal(ours, reference)
        assert ours.shape == (375, 1242)
        assert 5000 < np.count_nonzero(ours) < 40000
    # camera-z variant too
    ours = kitti.generate_depth_map(calib_dir, velo, cam=2, vel_depth=False)
    np.testing.assert_array_equal(ours, _reference_generate_depth_map(calib_dir, velo, 2, False))


# ----------------------------------------------------------------------------- synthetic calibration


def _write_synthetic_calibration(directory, width=8, height=6, f=4.0, cx=3.5, cy=2.5):
    """Rectified = unrectified, velodyne axes mapped to camera axes, no translation."""
    p = f"{f} 0 {cx} 0 0 {f} {cy} 0 0 0 1 0"
    with open(os.path.join(directory, "calib_cam_to_cam.txt"), "w") as out:
        out.write("calib_time: 09-Jan-2012 13:57:47\n")
        out.write(f"S_rect_02: {width} {height}\nR_rect_00: 1 0 0 0 1 0 0 0 1\nP_rect_02: {p}\n")
    with open(os.path.join(directory, "calib_velo_to_cam.txt"), "w") as out:
        out.write("calib_time: 15-Mar-2012 11:37:16\nR: 0 -1 0 0 0 -1 1 0 0\nT: 0 0 0\n")
    return f, cx, cy


def _velo_point(u, v, depth, f, cx, cy):
    """Velodyne point (x fwd, y left, z up) seen at 1-based pixel position (u, v)."""
    x_cam, y_cam = (u - cx) * depth / f, (v - cy) * depth / f
    return [depth, -x_cam, -y_cam]


def test_depth_map_conventions_and_duplicates(tmp_path):
    width, height = 8, 6
    f, cx, cy = _write_synthetic_calibration(str(tmp_path), width, height)
    # (column, row) of the map; the projection lands at (column + 1, row + 1) +- 0.3.
    spec = [
        (2, 1, 10.0, 0.3),    # single point: round(3.3) - 1 = 2
        (5, 3, 6.0, -0.2),    # duplicates at one pixel: nearest (3.0) wins
        (5, 3, 3.0, 0.1),
        (5, 3, 9.0, 0.0),
        (width - 1, 2, 7.0, 0.0),  # pixel (2, W-1) ...
        (0, 3, 4.0, 0.0),          # ... and pixel (3, 0) share Monodepth2's linear index
    ]
    points = [_velo_point(c + 1 + d, r + 1 + d, z, f, cx, cy) for c, r, z, d in spec]
    points += [[-5.0, 0.0, 0.0], _velo_point(width + 3, 2, 5.0, f, cx, cy)]  # behind; outside
    velo = np.concatenate([np.array(points), np.zeros((len(points), 1))], 1).astype(np.float32)
    velo_file = str(tmp_path / "scan.bin")
    velo.tofile(velo_file)

    quirk = kitti.generate_depth_map(str(tmp_path), velo_file, vel_depth=True)
    reference = _reference_generate_depth_map(str(tmp_path), velo_file, vel_depth=True)
    np.testing.assert_array_equal(quirk, reference)
    unique = kitti.generate_depth_map(str(tmp_path), velo_file, vel_depth=True, duplicate_index="unique")
    expected = np.zeros((height, width))
    expected[1, 2] = 10.0
    expected[3, 5] = 3.0
    expected[2, width - 1] = 7.0
    expected[3, 0] = 4.0
    np.testing.assert_allclose(unique, expected, rtol=1e-6)
    # The reference quirk: the group's minimum is written at its first point, (2, W-1).
    expected_quirk = expected.copy()
    expected_quirk[2, width - 1] = 4.0
    np.testing.assert_allclose(quirk, expected_quirk, rtol=1e-6)


def test_calibration_errors_name_the_file(tmp_path):
    with pytest.raises(convert.ConversionError, match=r"missing calibration file .*calib_cam_to_cam\.txt.*layout"):
        kitti.raw_camera_calibration(str(tmp_path), "image_02")
    (tmp_path / "calib_cam_to_cam.txt").write_text("calib_time: x\nP_rect_02: 1 2 3\n")
    with pytest.raises(convert.ConversionError, match=r"calib_cam_to_cam\.txt lacks 'P_rect_02'"):
        kitti.raw_camera_calibration(str(tmp_path), "image_02")
    with pytest.raises(convert.ConversionError, match=r"missing velodyne file .*nope\.bin"):
        kitti.load_velodyne_points(str(tmp_path / "nope.bin"))


def test_split_file_reading(tmp_path):
    split = tmp_path / "s.txt"
    split.write_text("2011_09_26/2011_09_26_drive_0022_sync 473 r\n\n2011_09_29/2011_09_29_drive_0026_sync 1 l\n"
                     "2011_09_26/2011_09_26_drive_0002_sync 0000000069\n")
    assert kitti.read_split_file(str(split)) == [
        ("2011_09_26/2011_09_26_drive_0022_sync", 473, "r"),
        ("2011_09_29/2011_09_29_drive_0026_sync", 1, "l"),
        ("2011_09_26/2011_09_26_drive_0002_sync", 69, "l")]
    split.write_text("2011_09_26/2011_09_26_drive_0022_sync x r\n")
    with pytest.raises(convert.ConversionError, match="line 1"):
        kitti.read_split_file(str(split))


def test_odometry_calib_and_relative_pose(tmp_path):
    k = np.array([[700.0, 0, 600], [0, 700, 180], [0, 0, 1]])
    baseline_offset = np.array([0.06, -0.001, 0.002])  # cam0 -> cam2 translation
    p2 = np.hstack([k, (k @ baseline_offset)[:, None]])
    lines = [f"P{i}: " + " ".join(f"{v:.12e}" for v in (p2 if i == 2 else np.hstack([k, np.zeros((3, 1))])).ravel())
             for i in range(4)]
    lines.append("Tr: " + " ".join(["1", "0", "0", "0", "0", "1", "0", "0", "0", "0", "1", "0"]))
    (tmp_path / "calib.txt").write_text("\n".join(lines) + "\n")
    calib = kitti.read_odometry_calib(str(tmp_path / "calib.txt"))
    np.testing.assert_allclose(calib["P2"], p2)
    offset = kitti.rectified_camera_offset(calib["P2"])
    np.testing.assert_allclose(offset[:3, 3], baseline_offset, atol=1e-12)

    # Two cam0-to-world poses; check T_target->source by projecting a world point.
    rng = np.random.default_rng(0)
    def pose(angle, t):
        c, s = np.cos(angle), np.sin(angle)
        g = np.eye(4)
        g[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
        g[:3, 3] = t
        return g
    g_t, g_s = pose(0.05, [0.1, 0.0, 1.0]), pose(0.08, [0.15, 0.01, 2.1])
    t_ts = kitti.relative_pose(g_t, g_s, offset)
    for _ in range(5):
        world = np.append(rng.uniform([-5, -2, 8], [5, 2, 30]), 1.0)
        in_t = p2 @ np.linalg.inv(g_t) @ world   # pixel of the world point in cam2 at t (P2 from cam0)
        in_s = p2 @ np.linalg.inv(g_s) @ world
        # back-project the target pixel with its cam2 depth, move with T, project with K.
        x_t = np.linalg.solve(k, in_t)            # cam2 coordinates at t (z = depth)
        x_s = (t_ts @ np.append(x_t, 1.0))[:3]
        np.testing.assert_allclose((k @ x_s)[:2] / x_s[2], in_s[:2] / in_s[2], atol=1e-8)
