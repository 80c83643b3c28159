"""KITTI: calibration readers, velodyne loading, ground-truth depth maps, snippet lists.

Numpy only (no TensorFlow). Used by `tools/convert_kitti_raw.py`,
`tools/convert_kitti_odometry.py`, `tools/convert_kitti_flow.py` and
`tools/export_gt_depth.py`.

Layouts (as downloaded from cvlibs.net and unzipped):

* KITTI raw: ROOT/<date>/calib_cam_to_cam.txt, ROOT/<date>/calib_velo_to_cam.txt,
  ROOT/<date>/<date>_drive_<NNNN>_sync/image_02/data/<0000000000>.png (left colour),
  .../image_03/data/... (right colour), .../velodyne_points/data/<0000000000>.bin.
* KITTI odometry: ROOT/sequences/<XX>/image_2/<000000>.png, ROOT/sequences/<XX>/calib.txt
  (P0..P3, Tr), optional ROOT/poses/<XX>.txt (cam0-to-world 3x4 per frame, 00-10 only).

Depth maps follow Monodepth2's `kitti_utils.generate_depth_map` exactly (docs/decisions.md E1):
P_velo->img = P_rect_0c . R_rect_00 . [R|T]_velo->cam, keep velodyne x >= 0, divide by
the third coordinate, depth = velodyne x (forward distance, `vel_depth=True`), pixel =
round(coord) - 1, keep inside the S_rect_02 image, nearest depth wins on duplicates.
Monodepth2 finds duplicates with the linear index row*(W-1) + col - 1, which is not
unique: pixel (r, W-1) and pixel (r+1, 0) share an index, and then the smaller depth of
the two is written into only one of them. `duplicate_index="monodepth2"` (default)
reproduces that bit for bit, so that maps equal Monodepth2's gt_depths.npz;
`duplicate_index="unique"` uses the true index row*W + col (differences are confined to
columns 0 and W-1, outside the Garg crop used for evaluation).
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from coopnet_tf.data.convert import ConversionError, SnippetSource, check_files_exist

RAW_LAYOUT = ("ROOT/<date>/calib_cam_to_cam.txt and ROOT/<date>/<date>_drive_<NNNN>_sync/"
              "image_02|image_03/data/<10-digit frame>.png (KITTI raw, unzipped as downloaded)")
VELO_LAYOUT = ("ROOT/<date>/calib_cam_to_cam.txt, ROOT/<date>/calib_velo_to_cam.txt and "
               "ROOT/<date>/<date>_drive_<NNNN>_sync/velodyne_points/data/<10-digit frame>.bin")
ODOMETRY_LAYOUT = ("ROOT/sequences/<XX>/image_2|image_3/<6-digit frame>.png, "
                   "ROOT/sequences/<XX>/calib.txt (P0..P3), optional ROOT/poses/<XX>.txt")

CAMERAS_RAW = {"image_02": "02", "image_03": "03"}
SIDE_TO_RAW_CAMERA = {"l": "image_02", "r": "image_03"}
ODOMETRY_CAMERA_TO_P = {"image_0": "P0", "image_1": "P1", "image_2": "P2", "image_3": "P3"}

_FLOAT_CHARS = set("0123456789.e+- ")

CalibValue = Union[np.ndarray, str]


# --------------------------------------------------------------------------- calibration


def read_calib_file(path: str, layout: str = RAW_LAYOUT) -> Dict[str, CalibValue]:
    """Reads a KITTI "key: v v v" calibration file (Monodepth2's `read_calib_file`).

    Values made only of numbers become float64 arrays; others (calib_time) stay strings.

    Raises:
      ConversionError: the file is missing or has no "key: value" lines.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"missing calibration file {path}; expected layout: {layout}")
    data: Dict[str, CalibValue] = {}
    with open(path) as f:
        for line in f:
            if ":" not in line:
                continue
            key, value = line.split(":", 1)
            value = value.strip()
            data[key.strip()] = value
            if value and _FLOAT_CHARS.issuperset(value):
                try:
                    data[key.strip()] = np.array([float(v) for v in value.split()])
                except ValueError:
                    pass
    if not data:
        raise ConversionError(f"calibration file {path} has no 'key: values' lines; expected layout: {layout}")
    return data


def _calib_array(calib: Dict[str, CalibValue], key: str, size: int, path: str) -> np.ndarray:
    value = calib.get(key)
    if not isinstance(value, np.ndarray) or value.size != size:
        raise ConversionError(f"calibration file {path} lacks '{key}' ({size} numbers)")
    return value


def raw_camera_calibration_file(path: str, camera: str = "image_02") -> Tuple[np.ndarray, Tuple[int, int]]:
    """K (3x3, = P_rect_0c[:, :3]) and image size (height, width) = S_rect_0c of a raw camera.

    Args:
      path: a calib_cam_to_cam.txt (KITTI raw, or KITTI 2015 calib_cam_to_cam/<id>.txt).
      camera: "image_02" (left colour) or "image_03" (right colour).
    """
    if camera not in CAMERAS_RAW:
        raise ValueError(f"camera must be one of {sorted(CAMERAS_RAW)}, got {camera!r}")
    calib = read_calib_file(path)
    c = CAMERAS_RAW[camera]
    p_rect = _calib_array(calib, f"P_rect_{c}", 12, path).reshape(3, 4)
    width, height = _calib_array(calib, f"S_rect_{c}", 2, path)
    return p_rect[:, :3].copy(), (int(round(height)), int(round(width)))


def raw_camera_calibration(date_dir: str, camera: str = "image_02") -> Tuple[np.ndarray, Tuple[int, int]]:
    """`raw_camera_calibration_file` of <date_dir>/calib_cam_to_cam.txt."""
    return raw_camera_calibration_file(os.path.join(date_dir, "calib_cam_to_cam.txt"), camera)


def read_velo_to_cam(path: str) -> np.ndarray:
    """4x4 rigid transform velodyne -> (unrectified) camera 0 from calib_velo_to_cam.txt."""
    calib = read_calib_file(path, VELO_LAYOUT)
    transform = np.eye(4)
    transform[:3, :3] = _calib_array(calib, "R", 9, path).reshape(3, 3)
    transform[:3, 3] = _calib_array(calib, "T", 3, path)
    return transform


def velo_to_image_matrix(calib_dir: str, cam: int = 2) -> Tuple[np.ndarray, Tuple[int, int]]:
    """P_velo->img = P_rect_0cam . R_rect_00 (4x4) . [R|T]_velo->cam (3x4), and the
    image size (height, width) from S_rect_02 (as Monodepth2, whatever `cam`)."""
    cam_path = os.path.join(calib_dir, "calib_cam_to_cam.txt")
    cam2cam = read_calib_file(cam_path, VELO_LAYOUT)
    velo2cam = read_velo_to_cam(os.path.join(calib_dir, "calib_velo_to_cam.txt"))
    width, height = _calib_array(cam2cam, "S_rect_02", 2, cam_path).astype(np.int32)
    r_cam2rect = np.eye(4)
    r_cam2rect[:3, :3] = _calib_array(cam2cam, "R_rect_00", 9, cam_path).reshape(3, 3)
    p_rect = _calib_array(cam2cam, f"P_rect_0{cam}", 12, cam_path).reshape(3, 4)
    return p_rect @ r_cam2rect @ velo2cam, (int(height), int(width))


def read_odometry_calib(path: str) -> Dict[str, np.ndarray]:
    """P0..P3 (3x4) and, when present, Tr (4x4 velodyne -> cam0) of an odometry calib.txt."""
    calib = read_calib_file(path, ODOMETRY_LAYOUT)
    out = {}
    for key in ("P0", "P1", "P2", "P3"):
        out[key] = _calib_array(calib, key, 12, path).reshape(3, 4)
    if isinstance(calib.get("Tr"), np.ndarray) and calib["Tr"].size == 12:
        tr = np.eye(4)
        tr[:3] = calib["Tr"].reshape(3, 4)
        out["Tr"] = tr
    return out


def read_odometry_poses(path: str) -> np.ndarray:
    """[N, 4, 4] cam0-to-world poses from a KITTI odometry poses/XX.txt (12 numbers a line)."""
    if not os.path.isfile(path):
        raise ConversionError(f"missing poses file {path}; expected layout: {ODOMETRY_LAYOUT}")
    values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if values.shape[1] != 12:
        raise ConversionError(f"poses file {path}: expected 12 numbers a line, got {values.shape[1]}")
    poses = np.tile(np.eye(4), (values.shape[0], 1, 1))
    poses[:, :3, :] = values.reshape(-1, 3, 4)
    return poses


def rectified_camera_offset(projection: np.ndarray) -> np.ndarray:
    """4x4 transform cam0 -> cam c of a rectified rig, from P_c = K_c [I | t]: t = K_c^-1 P_c[:, 3]."""
    transform = np.eye(4)
    transform[:3, 3] = np.linalg.solve(projection[:, :3], projection[:, 3])
    return transform


# --------------------------------------------------------------------------- velodyne / depth


def load_velodyne_points(path: str) -> np.ndarray:
    """[N, 4] velodyne points (x forward, y left, z up, 1) from a KITTI .bin (float32 x4)."""
    if not os.path.isfile(path):
        raise ConversionError(f"missing velodyne file {path}; expected layout: {VELO_LAYOUT}")
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise ConversionError(f"velodyne file {path} is not a multiple of 4 float32 values")
    points = raw.reshape(-1, 4)
    points[:, 3] = 1.0
    return points


def project_velodyne(points: np.ndarray, p_velo2im: np.ndarray) -> np.ndarray:
    """[N, 3] (u, v, z) of velodyne points: pixel coordinates (divided by z) and camera z.

    No rounding and no filtering; points behind the camera give meaningless (u, v).
    """
    projected = points @ p_velo2im.T
    with np.errstate(divide="ignore", invalid="ignore"):
        projected[:, :2] = projected[:, :2] / projected[:, 2:3]
    return projected


def depth_map_from_points(points: np.ndarray, p_velo2im: np.ndarray, image_size: Tuple[int, int],
                          vel_depth: bool = True, duplicate_index: str = "monodepth2") -> np.ndarray:
    """Sparse [H, W] float64 depth map of velodyne `points` [N, 4] (Monodepth2 protocol).

    Args:
      points: [N, 4] velodyne points (x, y, z, 1).
      p_velo2im: [3, 4] velodyne -> image projection.
      image_size: (height, width).
      vel_depth: depth = velodyne x (Monodepth2's Eigen export); False: camera z.
      duplicate_index: "monodepth2" (the reference's non-unique linear index, see the
        module docstring) or "unique".

    Returns:
      [H, W] depth, 0 where there is no point.
    """
    if duplicate_index not in ("monodepth2", "unique"):
        raise ValueError(f"duplicate_index must be 'monodepth2' or 'unique', got {duplicate_index!r}")
    height, width = image_size
    points = points[points[:, 0] >= 0, :]
    pts = project_velodyne(points, p_velo2im)
    if vel_depth:
        pts[:, 2] = points[:, 0]
    pts[:, 0] = np.round(pts[:, 0]) - 1
    pts[:, 1] = np.round(pts[:, 1]) - 1
    with np.errstate(invalid="ignore"):
        keep = (pts[:, 0] >= 0) & (pts[:, 1] >= 0) & (pts[:, 0] < width) & (pts[:, 1] < height)
    pts = pts[keep, :]
    rows = pts[:, 1].astype(np.int64)
    cols = pts[:, 0].astype(np.int64)
    values = pts[:, 2]
    if duplicate_index == "unique":
        depth = np.full((height, width), np.inf)
        np.minimum.at(depth, (rows, cols), values)
        depth[np.isinf(depth)] = 0.0
    else:
        depth = np.zeros((height, width))
        depth[rows, cols] = values  # as the reference: plain assignment first
        linear = rows * (width - 1) + cols - 1  # the reference's sub2ind
        _, first, inverse, counts = np.unique(linear, return_index=True, return_inverse=True,
                                              return_counts=True)
        minima = np.full(first.shape, np.inf)
        np.minimum.at(minima, inverse.ravel(), values)
        dup = counts > 1
        # The reference writes each duplicate group's minimum at the group's first point.
        depth[rows[first[dup]], cols[first[dup]]] = minima[dup]
    depth[depth < 0] = 0
    return depth


def generate_depth_map(calib_dir: str, velo_filename: str, cam: int = 2, vel_depth: bool = True,
                       duplicate_index: str = "monodepth2") -> np.ndarray:
    """Monodepth2's `generate_depth_map`: [H, W] float64 GT depth of one velodyne scan.

    Args:
      calib_dir: ROOT/<date> with calib_cam_to_cam.txt and calib_velo_to_cam.txt.
      velo_filename: the scan (.bin).
      cam: 2 (left colour) or 3; the image size is always S_rect_02, as in Monodepth2.
      vel_depth: True for the Eigen export (depth = velodyne x).
      duplicate_index: see `depth_map_from_points`.
    """
    p_velo2im, size = velo_to_image_matrix(calib_dir, cam)
    return depth_map_from_points(load_velodyne_points(velo_filename), p_velo2im, size,
                                 vel_depth, duplicate_index)


# --------------------------------------------------------------------------- split files


def read_split_file(path: str) -> List[Tuple[str, int, str]]:
    """Lines "2011_09_26/2011_09_26_drive_0022_sync 473 r" -> [(folder, frame, side)].

    The side ("l"/"r") is optional and defaults to "l"; blank lines are ignored.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"missing split file {path}; expected lines like "
                              "'2011_09_26/2011_09_26_drive_0022_sync 473 r'")
    entries = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (2, 3) or not re.fullmatch(r"-?\d+", parts[1]) or (
                    len(parts) == 3 and parts[2] not in ("l", "r")):
                raise ConversionError(
                    f"split file {path}, line {number}: {line.strip()!r}; expected "
                    "'<folder> <frame index> <l|r>' e.g. '2011_09_26/2011_09_26_drive_0022_sync 473 r'")
            entries.append((parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "l"))
    return entries


def raw_frame_path(data_path: str, folder: str, camera: str, index: int, img_ext: str = "png") -> str:
    return os.path.join(data_path, folder, camera, "data", f"{index:010d}.{img_ext}")


def raw_velodyne_path(data_path: str, folder: str, index: int) -> str:
    return os.path.join(data_path, folder, "velodyne_points", "data", f"{index:010d}.bin")


def _raw_drive_frames(data_path: str, folder: str, camera: str, img_ext: str) -> List[int]:
    directory = os.path.join(data_path, folder, camera, "data")
    if not os.path.isdir(directory):
        return []
    frames = []
    for name in os.listdir(directory):
        stem, ext = os.path.splitext(name)
        if ext == "." + img_ext and stem.isdigit():
            frames.append(int(stem))
    return sorted(frames)


def raw_snippets(data_path: str, split_file: Optional[str] = None,
                 cameras: Sequence[str] = ("image_02", "image_03"), img_ext: str = "png",
                 frame_step: int = 1) -> List[SnippetSource]:
    """Snippets (t-1, t, t+1) of KITTI raw, with K = P_rect_0c[:, :3] of each drive's date.

    Args:
      data_path: KITTI raw root (see RAW_LAYOUT).
      split_file: lines "<date>/<drive> <frame> <l|r>", one snippet per line in file
        order (side l -> image_02, r -> image_03); None: every frame that has both
        neighbours, of every drive under data_path, for each camera in `cameras`.
      cameras: used when split_file is None.
      img_ext: "png" (as downloaded) or "jpg" (Monodepth2's converted copy).
      frame_step: distance in frames between the target and each source.

    Raises:
      ConversionError: missing calibration or frames (naming the file), empty split.
    """
    if not os.path.isdir(data_path):
        raise ConversionError(f"KITTI raw root {data_path} is not a directory; expected layout: {RAW_LAYOUT}")
    if split_file:
        entries = [(folder, index, SIDE_TO_RAW_CAMERA[side])
                   for folder, index, side in read_split_file(split_file)]
    else:
        entries = []
        for date in sorted(os.listdir(data_path)):
            date_dir = os.path.join(data_path, date)
            if not os.path.isdir(date_dir):
                continue
            for drive in sorted(os.listdir(date_dir)):
                if not os.path.isdir(os.path.join(date_dir, drive)):
                    continue
                folder = f"{date}/{drive}"
                for camera in cameras:
                    frames = _raw_drive_frames(data_path, folder, camera, img_ext)
                    present = set(frames)
                    entries += [(folder, i, camera) for i in frames
                                if i - frame_step in present and i + frame_step in present]
        if not entries:
            raise ConversionError(f"no drives with frames found under {data_path}; expected layout: {RAW_LAYOUT}")
    calibrations: Dict[Tuple[str, str], Tuple[np.ndarray, Tuple[int, int]]] = {}
    snippets = []
    for folder, index, camera in entries:
        date = folder.split("/")[0]
        key = (date, camera)
        if key not in calibrations:
            calibrations[key] = raw_camera_calibration(os.path.join(data_path, date), camera)
        k, size = calibrations[key]
        paths = tuple(raw_frame_path(data_path, folder, camera, index + d, img_ext)
                      for d in (-frame_step, 0, frame_step))
        check_files_exist(paths, "image", RAW_LAYOUT)
        drive = folder.split("/")[-1]
        snippets.append(SnippetSource(
            frame_paths=paths, intrinsics=tuple(float(v) for v in k.ravel()),
            sequence_id=f"{drive}/{camera}", frame_id=index, expected_size=size, layout=RAW_LAYOUT))
    return snippets


def odometry_snippets(data_path: str, sequences: Sequence[str] = tuple(f"{i:02d}" for i in range(9)),
                      camera: str = "image_2", img_ext: str = "png",
                      with_poses: bool = True, frame_step: int = 1) -> List[SnippetSource]:
    """Snippets (t-1, t, t+1) of KITTI odometry sequences; K = P<c>[:, :3] of calib.txt.

    Args:
      data_path: odometry root (see ODOMETRY_LAYOUT).
      sequences: "00".."21"; every frame with both neighbours becomes a target.
      camera: "image_2" (left colour) or "image_3".
      img_ext: image extension.
      with_poses: when ROOT/poses/<XX>.txt exists, store T_target->source (4x4, of this
        camera: cam0 poses conjugated by the rectified offset of P<c>) as gt/pose.
      frame_step: distance in frames between the target and each source.
    """
    seq_root = os.path.join(data_path, "sequences")
    if not os.path.isdir(seq_root):
        raise ConversionError(f"missing directory {seq_root}; expected layout: {ODOMETRY_LAYOUT}")
    if camera not in ODOMETRY_CAMERA_TO_P:
        raise ValueError(f"camera must be one of {sorted(ODOMETRY_CAMERA_TO_P)}, got {camera!r}")
    entries = []
    for seq in sequences:
        seq = f"{int(seq):02d}"
        directory = os.path.join(seq_root, seq, camera)
        if not os.path.isdir(directory):
            raise ConversionError(f"missing directory {directory}; expected layout: {ODOMETRY_LAYOUT}")
        frames = sorted(int(os.path.splitext(n)[0]) for n in os.listdir(directory)
                        if n.endswith("." + img_ext) and os.path.splitext(n)[0].isdigit())
        present = set(frames)
        entries += [(seq, i, camera) for i in frames
                    if i - frame_step in present and i + frame_step in present]
    cache: Dict[Tuple[str, str], Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]] = {}
    snippets = []
    for seq, index, cam in entries:
        if (seq, cam) not in cache:
            projection = read_odometry_calib(os.path.join(seq_root, seq, "calib.txt"))[ODOMETRY_CAMERA_TO_P[cam]]
            pose_path = os.path.join(data_path, "poses", f"{seq}.txt")
            poses = read_odometry_poses(pose_path) if with_poses and os.path.isfile(pose_path) else None
            cache[(seq, cam)] = (projection[:, :3].copy(), poses, rectified_camera_offset(projection))
        k, poses, offset = cache[(seq, cam)]
        paths = tuple(os.path.join(seq_root, seq, cam, f"{index + d:06d}.{img_ext}")
                      for d in (-frame_step, 0, frame_step))
        check_files_exist(paths, "image", ODOMETRY_LAYOUT)
        gt_pose = None
        if poses is not None:
            if index + frame_step >= len(poses) or index - frame_step < 0:
                raise ConversionError(f"poses file {os.path.join(data_path, 'poses', seq + '.txt')} has "
                                      f"{len(poses)} lines, frame {index + frame_step} needed")
            gt_pose = tuple(float(v) for v in np.stack([
                relative_pose(poses[index], poses[index + d], offset) for d in (-frame_step, frame_step)]).ravel())
        snippets.append(SnippetSource(
            frame_paths=paths, intrinsics=tuple(float(v) for v in k.ravel()),
            sequence_id=f"{seq}/{cam}", frame_id=index, layout=ODOMETRY_LAYOUT, gt_pose=gt_pose))
    return snippets


def relative_pose(pose_target: np.ndarray, pose_source: np.ndarray,
                  cam0_to_cam: Optional[np.ndarray] = None) -> np.ndarray:
    """T_target->source (maps points of the target camera into the source camera).

    Args:
      pose_target, pose_source: 4x4 cam0-to-world (KITTI odometry poses).
      cam0_to_cam: 4x4 cam0 -> this camera (`rectified_camera_offset(P_c)`).
    """
    cam0_to_cam = np.eye(4) if cam0_to_cam is None else cam0_to_cam
    cam_to_cam0 = np.linalg.inv(cam0_to_cam)
    return cam0_to_cam @ np.linalg.inv(pose_source) @ pose_target @ cam_to_cam0


# --------------------------------------------------------------------------- GT export


def export_gt_depths(data_path: str, split_file: str, output: str, duplicate_index: str = "monodepth2",
                     vel_depth: bool = True, show_progress: bool = True) -> str:
    """Writes Monodepth2-style ground truth: npz key `data`, one float32 map per split line.

    Args:
      data_path: KITTI raw root with velodyne_points (see VELO_LAYOUT).
      split_file: lines "<date>/<drive> <frame> <side>" (side ignored: camera 2, as Monodepth2).
      output: .npz path (parent directories created; written atomically).
      duplicate_index, vel_depth: see `depth_map_from_points`.
      show_progress: tqdm bar.

    Returns:
      A summary line "maps=N valid_pixels_mean=V seconds=S output=PATH".

    Raises:
      ConversionError: missing split file, calibration or velodyne scan (named).
    """
    import time

    from tqdm import tqdm

    start = time.time()
    entries = read_split_file(split_file)
    if not entries:
        raise ConversionError(f"split file {split_file} has no lines")
    check_files_exist([raw_velodyne_path(data_path, folder, index) for folder, index, _ in entries],
                      "velodyne scan", VELO_LAYOUT)
    matrices: Dict[str, Tuple[np.ndarray, Tuple[int, int]]] = {}
    maps = np.empty(len(entries), dtype=object)
    for i, (folder, index, _) in enumerate(tqdm(entries, unit="map", disable=not show_progress,
                                                 desc="gt depth", dynamic_ncols=True)):
        date = folder.split("/")[0]
        if date not in matrices:
            matrices[date] = velo_to_image_matrix(os.path.join(data_path, date), cam=2)
        p_velo2im, size = matrices[date]
        points = load_velodyne_points(raw_velodyne_path(data_path, folder, index))
        maps[i] = depth_map_from_points(points, p_velo2im, size, vel_depth, duplicate_index).astype(np.float32)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    tmp = output + ".tmp.npz"
    try:
        np.savez_compressed(tmp, data=maps)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    valid = np.mean([np.count_nonzero(m) for m in maps])
    return f"maps={len(maps)} valid_pixels_mean={valid:.0f} seconds={time.time() - start:.1f} output={output}"
