"""Evaluation figures (matplotlib, Agg backend) and image dumps.

Colour maps come from `coopnet_tf.visualize` (magma for depth, Middlebury wheel for flow).
"""
import os
from typing import Optional

import numpy as np

from coopnet_tf import visualize


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported on first use)."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    return plt


def save_figure(fig, path, dpi: int = 120, title: Optional[str] = None,
                title_size: Optional[float] = None) -> str:
    """Lays out and writes a matplotlib figure (parent folders created), closes it."""
    if title:
        fig.suptitle(title, fontsize=title_size)
    fig.tight_layout()
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return os.fspath(path)


def save_rgb(path, image):
    """Writes a float [H, W, 3] image in [0, 1] (or uint8) as an 8-bit PNG."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = visualize.to_uint8(image)
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(image).save(path)


def plot_trajectory(path, gt, pred, title=None, labels=("ground truth", "prediction")):
    """Top view (x-z plane) of two camera-to-world trajectories.

    Args:
      path: output image file (.png / .pdf).
      gt, pred: [N, 4, 4] (or [N, 3]) poses / positions, already aligned.
      title: figure title.
    """
    plt = pyplot()
    g = np.asarray(gt)
    p = np.asarray(pred)
    g = g[:, :3, 3] if g.ndim == 3 else g
    p = p[:, :3, 3] if p.ndim == 3 else p
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(g[:, 0], g[:, 2], "k-", lw=1.5, label=labels[0])
    ax.plot(p[:, 0], p[:, 2], "-", color="tab:orange", lw=1.2, label=labels[1])
    ax.plot(g[0, 0], g[0, 2], "ks", ms=6, label="start")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("z [m]")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    if title:
        ax.set_title(title)
    save_figure(fig, path)


def plot_errors_per_length(path, per_length, title=None):
    """t_err (%) and r_err (deg/100 m) against segment length.

    Args:
      per_length: {length: {"t_err": ..., "r_err": ...}} (as `evaluate_odometry` returns).
    """
    plt = pyplot()
    per_length = {int(k): v for k, v in per_length.items()}
    lengths = sorted(per_length)
    if not lengths:
        return
    t = [per_length[k]["t_err"] for k in lengths]
    r = [per_length[k]["r_err"] for k in lengths]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(lengths, t, "o-")
    axes[0].set_xlabel("segment length [m]")
    axes[0].set_ylabel("translation error [%]")
    axes[1].plot(lengths, r, "o-", color="tab:red")
    axes[1].set_xlabel("segment length [m]")
    axes[1].set_ylabel("rotation error [deg/100 m]")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    save_figure(fig, path, title=title)


def save_depth_examples(plot_dir, pred_disps, gt_depths=None, indices=(0,), prefix="depth"):
    """Magma disparity images of a few predictions (and their sparse GT, dilated).

    Args:
      plot_dir: output directory.
      pred_disps: [N, h, w] disparities.
      gt_depths: optional sequence of [H, W] GT depths (0 = none).
      indices: which images.
    """
    os.makedirs(plot_dir, exist_ok=True)
    for i in indices:
        if i >= len(pred_disps):
            continue
        save_rgb(os.path.join(plot_dir, f"{prefix}_{i:04d}_pred.png"),
                 visualize.colorize_disparity(pred_disps[i]))
        if gt_depths is not None:
            save_rgb(os.path.join(plot_dir, f"{prefix}_{i:04d}_gt.png"),
                     visualize.colorize_depth(gt_depths[i]))


def save_flow_examples(plot_dir, items, max_flow=None):
    """Colour-wheel images of flows.

    Args:
      plot_dir: output directory.
      items: iterable of (name, flow [H, W, 2], valid [H, W] or None).
      max_flow: common saturation magnitude (default per image).
    """
    os.makedirs(plot_dir, exist_ok=True)
    for name, flow, valid in items:
        save_rgb(os.path.join(plot_dir, name),
                 visualize.flow_to_color(flow, max_flow=max_flow, valid=valid))


def save_flow_wheel_legend(path, size=129):
    """The colour wheel itself (flow = position relative to the centre) as a legend."""
    r = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack([x - r, y - r], -1)
    valid = (flow ** 2).sum(-1) <= r * r
    save_rgb(path, visualize.flow_to_color(flow, max_flow=r, valid=valid))


def save_mask_comparison(path, pred_moving, gt_moving, region=None):
    """`mask_comparison` written as a PNG."""
    save_rgb(path, mask_comparison(pred_moving, gt_moving, region))


def mask_comparison(pred_moving, gt_moving, region=None) -> np.ndarray:
    """RGB float `[H, W, 3]`: green = TP moving, red = FP, blue = FN, grey = evaluated
    static (TN), black = outside `region`."""
    p = np.asarray(pred_moving, bool)
    g = np.asarray(gt_moving, bool)
    reg = np.ones_like(g) if region is None else np.asarray(region, bool)
    img = np.zeros(g.shape + (3,), np.float32)
    img[reg & ~p & ~g] = 0.35
    img[reg & p & g] = (0.1, 0.9, 0.1)
    img[reg & p & ~g] = (0.9, 0.1, 0.1)
    img[reg & ~p & g] = (0.1, 0.3, 1.0)
    return img
