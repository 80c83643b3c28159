"""Visual odometry evaluation on KITTI (docs/decisions.md E3).

* KITTI format: one line per frame, the 3x4 camera-to-world matrix [R|t] row-major
  (12 numbers); poses are handled here as [N, 4, 4] float64.
* Relative errors (KITTI devkit / kitti-odom-eval): both trajectories are expressed
  relative to their first frame, the prediction is aligned (7-DoF Umeyama by default),
  then for every first frame (step 10) and length L in 100..800 m, the frame where the GT
  path length first exceeds L is found; `E = (P_f^-1 P_l)^-1 (G_f^-1 G_l)`;
  `r = angle(E_R) / L`, `t = |E_t| / L`, averaged over all (first, L) pairs:
  `t_err = 100 mean(t)` (%), `r_err = mean(r) 180/pi 100` (deg / 100 m).
* ATE (Zhou et al. / SfMLearner): on every complete 5-frame snippet, positions relative
  to the snippet's first frame; first positions made to coincide; scale
  `s = sum(gt . pred) / sum(pred^2)`; `ATE = sqrt(sum |s pred - gt|^2) / 5` (not an RMSE).
  Mean and std over snippets. Independent of any global alignment.

Pose convention: `T_a->b` maps points of camera a into camera b (`X_b = T X_a`);
chaining camera-to-world poses: `G_{k+1} = G_k T_{k->k+1}^-1`.
"""
import numpy as np

SEGMENT_LENGTHS = (100, 200, 300, 400, 500, 600, 700, 800)
STEP_SIZE = 10
ALIGN_MODES = ("7dof", "scale", "6dof", "scale_7dof", "none")
ATE_SNIPPET = 5


# --- I/O ---------------------------------------------------------------------------

def load_kitti_poses(path):
    """Reads a KITTI pose file.

    Returns:
      float64 [N, 4, 4] camera-to-world poses.
    """
    data = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if data.shape[1] != 12:
        raise ValueError(f"{path}: expected 12 numbers per line, got {data.shape[1]}")
    return rows_to_poses(data)


def rows_to_poses(rows):
    """[N, 12] row-major 3x4 -> [N, 4, 4]."""
    rows = np.asarray(rows, np.float64)
    poses = np.tile(np.eye(4), (rows.shape[0], 1, 1))
    poses[:, :3, :4] = rows.reshape(-1, 3, 4)
    return poses


def save_kitti_poses(path, poses):
    """Writes [N, 4, 4] (or [N, 3, 4]) poses in KITTI format (12 numbers per line)."""
    poses = np.asarray(poses, np.float64)
    np.savetxt(path, poses[:, :3, :4].reshape(-1, 12), fmt="%.9e")


# --- Trajectory helpers ----------------------------------------------------------------

def invert_poses(poses):
    """Inverse of [..., 4, 4] transforms.

    A full matrix inverse (as the devkit / kitti-odom-eval), not the rigid shortcut
    [R^T | -R^T t]: the rotations in KITTI files are printed to ~9 digits and are not exactly
    orthonormal, and the transpose would leave ~1e-4 rad of spurious rotation error after
    the arccos.
    """
    return np.linalg.inv(np.asarray(poses, np.float64))


def chain_relative_poses(relative, first=None):
    """Chains relative motions into a camera-to-world trajectory.

    Args:
      relative: [N-1, 4, 4] `T_{k->k+1}` (maps points of camera k into camera k+1),
        e.g. the pose network's `transform` output for the pair (I_k, I_{k+1}).
      first: optional [4, 4] pose of frame 0 (identity by default).

    Returns:
      [N, 4, 4] with `G_0 = first`, `G_{k+1} = G_k T_{k->k+1}^-1`.
    """
    relative = np.asarray(relative, np.float64)
    poses = np.empty((relative.shape[0] + 1, 4, 4))
    poses[0] = np.eye(4) if first is None else first
    inv = invert_poses(relative)
    for k in range(relative.shape[0]):
        poses[k + 1] = poses[k] @ inv[k]
    return poses


def relative_from_absolute(poses):
    """[N, 4, 4] camera-to-world -> [N-1, 4, 4] `T_{k->k+1} = G_{k+1}^-1 G_k`."""
    poses = np.asarray(poses, np.float64)
    return invert_poses(poses[1:]) @ poses[:-1]


def to_first_frame(poses):
    """Re-expresses a trajectory relative to its first frame: `G_0^-1 G_k`."""
    poses = np.asarray(poses, np.float64)
    return invert_poses(poses[0]) @ poses


def trajectory_distances(poses):
    """Cumulative path length [N] along the positions (dist[0] = 0)."""
    t = np.asarray(poses)[:, :3, 3]
    steps = np.linalg.norm(np.diff(t, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)])


# --- Alignment -----------------------------------------------------------------------

def umeyama_alignment(x, y, with_scale=True):
    """Least-squares similarity (Umeyama 1991) with `y ~ s R x + t`.

    Args:
      x: [3, N] source points (prediction).
      y: [3, N] target points (ground truth).
      with_scale: estimate s (else s = 1).

    Returns:
      (R [3, 3], t [3], s float).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    m, n = x.shape
    mx, my = x.mean(axis=1), y.mean(axis=1)
    xc, yc = x - mx[:, None], y - my[:, None]
    sigma_x = np.sum(xc ** 2) / n
    cov = yc @ xc.T / n
    u, d, vt = np.linalg.svd(cov)
    s_mat = np.eye(m)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s_mat[m - 1, m - 1] = -1.0
    r = u @ s_mat @ vt
    c = float(np.trace(np.diag(d) @ s_mat) / sigma_x) if with_scale else 1.0
    t = my - c * r @ mx
    return r, t, c


def align_trajectory(pred, gt, mode="7dof"):
    """Aligns a predicted trajectory to the ground truth (kitti-odom-eval conventions).

    Args:
      pred: [N, 4, 4] predicted camera-to-world poses.
      gt: [N, 4, 4] ground-truth poses.
      mode: "7dof" (Umeyama rotation + translation + scale, applied to the poses),
        "6dof" (Umeyama without scale), "scale_7dof" (Umeyama scale only),
        "scale" (least-squares scale of positions `s = sum(gt . pred) / sum(pred^2)`),
        "none".

    Returns:
      (aligned [N, 4, 4], info dict with "scale" and, for Umeyama modes, "rotation",
      "translation").
    """
    pred = np.array(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if mode == "none":
        return pred, {"scale": 1.0}
    if mode == "scale":
        xp, xg = pred[:, :3, 3], gt[:, :3, 3]
        s = float(np.sum(xg * xp) / max(np.sum(xp ** 2), 1e-300))
        pred[:, :3, 3] *= s
        return pred, {"scale": s}
    if mode not in ALIGN_MODES:
        raise ValueError(f"unknown alignment {mode!r}, expected one of {ALIGN_MODES}")
    r, t, s = umeyama_alignment(pred[:, :3, 3].T, gt[:, :3, 3].T, with_scale=(mode != "6dof"))
    pred[:, :3, 3] *= s
    if mode in ("7dof", "6dof"):
        a = np.eye(4)
        a[:3, :3] = r
        a[:3, 3] = t
        pred = a @ pred
    return pred, {"scale": float(s), "rotation": r.tolist(), "translation": t.tolist()}


# --- KITTI devkit relative errors --------------------------------------------------------

def rotation_angle(e):
    """Rotation angle (rad) of [..., 4, 4] or [..., 3, 3] matrices (devkit `rotation_error`)."""
    e = np.asarray(e)
    d = 0.5 * (e[..., 0, 0] + e[..., 1, 1] + e[..., 2, 2] - 1.0)
    return np.arccos(np.clip(d, -1.0, 1.0))


def sequence_errors(gt, pred, lengths=SEGMENT_LENGTHS, step_size=STEP_SIZE):
    """Per-segment errors of the KITTI odometry devkit (`calcSequenceErrors`).

    Args:
      gt, pred: [N, 4, 4] trajectories (pred already aligned).
      lengths: segment lengths in metres.
      step_size: frame step between first frames.

    Returns:
      float64 [M, 5] rows (first_frame, r_err / L [rad/m], t_err / L [m/m], L, speed).
    """
    gt = np.asarray(gt, np.float64)
    pred = np.asarray(pred, np.float64)
    dist = trajectory_distances(gt)
    rows = []
    firsts = np.arange(0, len(gt), step_size)
    for length in lengths:
        lasts = np.searchsorted(dist, dist[firsts] + length, side="right")
        ok = lasts < len(gt)
        f, l = firsts[ok], lasts[ok]
        if f.size == 0:
            continue
        d_gt = invert_poses(gt[f]) @ gt[l]
        d_pred = invert_poses(pred[f]) @ pred[l]
        err = invert_poses(d_pred) @ d_gt
        r = rotation_angle(err)
        t = np.linalg.norm(err[:, :3, 3], axis=1)
        speed = length / (0.1 * (l - f + 1.0))
        rows.append(np.stack([f, r / length, t / length, np.full(f.shape, float(length)), speed], 1))
    if not rows:
        return np.zeros((0, 5))
    out = np.concatenate(rows)
    return out[np.lexsort((out[:, 3], out[:, 0]))]


def kitti_relative_errors(gt, pred, lengths=SEGMENT_LENGTHS, step_size=STEP_SIZE):
    """t_err (%) and r_err (deg / 100 m) averaged over all (first frame, length) pairs.

    Returns:
      dict t_err, r_err, n_segments and per-length means `per_length` {L: (t %, r deg/100m)};
      NaN errors when the trajectory is shorter than the smallest length.
    """
    seg = sequence_errors(gt, pred, lengths, step_size)
    out = {"n_segments": int(len(seg))}
    if len(seg) == 0:
        out.update(t_err=float("nan"), r_err=float("nan"), per_length={})
        return out
    out["t_err"] = float(np.mean(seg[:, 2]) * 100.0)
    out["r_err"] = float(np.mean(seg[:, 1]) / np.pi * 180.0 * 100.0)
    per_length = {}
    for length in lengths:
        sel = seg[:, 3] == length
        if np.any(sel):
            per_length[int(length)] = (float(np.mean(seg[sel, 2]) * 100.0),
                                       float(np.mean(seg[sel, 1]) / np.pi * 180.0 * 100.0))
    out["per_length"] = per_length
    return out


# --- Zhou et al. ATE ----------------------------------------------------------------------

def compute_ate(gt_xyz, pred_xyz):
    """ATE of one snippet (SfMLearner `compute_ate`).

    Args:
      gt_xyz, pred_xyz: [N, 3] positions.

    Returns:
      `sqrt(sum |s (pred + offset) - gt|^2) / N` with offset making the first positions
      coincide and `s = sum(gt . pred') / sum(pred'^2)`.
    """
    gt_xyz = np.asarray(gt_xyz, np.float64)
    pred = np.asarray(pred_xyz, np.float64)
    pred = pred + (gt_xyz[0] - pred[0])[None]
    denom = np.sum(pred ** 2)
    scale = np.sum(gt_xyz * pred) / denom if denom > 0 else 0.0
    err = pred * scale - gt_xyz
    return float(np.sqrt(np.sum(err ** 2)) / gt_xyz.shape[0])


def snippet_ate(gt, pred, snippet=ATE_SNIPPET):
    """ATE over every complete snippet of `snippet` consecutive frames.

    Args:
      gt, pred: [N, 4, 4] camera-to-world poses (any global frame / scale).
      snippet: frames per snippet (5 as Zhou et al.).

    Returns:
      float64 [N - snippet + 1] per-snippet ATE (positions in each snippet's first frame).
    """
    gt = np.asarray(gt, np.float64)
    pred = np.asarray(pred, np.float64)
    n = len(gt) - snippet + 1
    ates = np.empty(max(n, 0))
    for i in range(n):
        g = (invert_poses(gt[i]) @ gt[i:i + snippet])[:, :3, 3]
        p = (invert_poses(pred[i]) @ pred[i:i + snippet])[:, :3, 3]
        ates[i] = compute_ate(g, p)
    return ates


# --- Everything -----------------------------------------------------------------------------

def evaluate_odometry(gt, pred, align="7dof", lengths=SEGMENT_LENGTHS, step_size=STEP_SIZE,
                      snippet=ATE_SNIPPET):
    """Full odometry evaluation of one sequence.

    Args:
      gt, pred: [N, 4, 4] camera-to-world trajectories (same N; KITTI files).
      align: see `align_trajectory`.

    Returns:
      (result dict with t_err, r_err, ate_mean, ate_std, n_frames, n_segments, align,
      align_scale, per_length; aligned prediction [N, 4, 4] (first-frame relative), gt
      [N, 4, 4] (first-frame relative)).
    """
    gt = np.asarray(gt, np.float64)
    pred = np.asarray(pred, np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {len(gt)} poses, prediction {len(pred)}")
    gt0 = to_first_frame(gt)
    pred0 = to_first_frame(pred)
    aligned, info = align_trajectory(pred0, gt0, align)
    rel = kitti_relative_errors(gt0, aligned, lengths, step_size)
    ates = snippet_ate(gt0, pred0, snippet)
    result = {
        "t_err": rel["t_err"],
        "r_err": rel["r_err"],
        "ate_mean": float(np.mean(ates)) if ates.size else float("nan"),
        "ate_std": float(np.std(ates)) if ates.size else float("nan"),
        "n_frames": int(len(gt)),
        "n_segments": rel["n_segments"],
        "n_snippets": int(ates.size),
        "align": align,
        "align_scale": info["scale"],
        "per_length": {str(k): {"t_err": v[0], "r_err": v[1]} for k, v in rel["per_length"].items()},
    }
    return result, aligned, gt0
