r"""Evaluation entry point: `python -m coopnet_tf.evaluate SUBCOMMAND ...`, one of the six below.

Each subcommand prints a table, writes `--output_json` and, with `--plot_dir`, figures.
The metric math lives in `coopnet_tf/eval/` (numpy); this file only reads files, runs
SavedModels in the `--predict` / `--saved_model` modes and formats the results.

  depth     --gt_depths=gt_depths.npz --pred_disps=disps.npy [--protocol=eigen|cityscapes]
            or --saved_model=DIR --data_path=ROOT --split_file=FILE [--gt_depths=...]
            -> abs_rel sq_rel rmse rmse_log a1 a2 a3 (+ scale_ratio_median/_std)
  odometry  --gt_poses=09.txt --pred_poses=pred_09.txt [--align=7dof|scale|6dof|none]
            [--predict --saved_model=DIR --image_dir=sequences/09/image_2]
            -> t_err (%) r_err (deg/100 m) ate_mean ate_std
  flow      --gt_dir=training --pred_dir=pred [--predict --saved_model=DIR --image_dir=...]
            -> epe_noc epe_all fl_all (+ fl_noc, *_pooled)
  motion    --pred_masks=masks.npz (--gt_masks=gt.npz | --gt_dir=training [--semantic_dir])
            -> iou_mean iou_static iou_moving
  scene_flow --gt_dir=training --pred_dir=pred [--saved_model=DIR --image_dir=training/image_2
            [--motion_model=DIR | --flow_dir=FLOW_PNGS] [--calib_dir=calib_cam_to_cam]]
            -> d1_bg d1_fg d1_all d2_bg d2_fg d2_all (Lee et al. Table 4)
  object_segmentation --gt_dir=training (--pred_masks=masks.npz | --saved_model=DIR
            --motion_model=DIR [--image_dir] [--calib_dir]) [--boxes_dir=DIR [--box_classes]]
            -> iou_mean iou_pooled (CSAC inliers > 0.5 in the boxes, Lee et al. Table 5)

See docs/evaluation.md for the full commands from raw datasets.
"""
import glob
import json
import math
import os
import re
import sys
import time

from absl import app, flags, logging
import numpy as np

from coopnet_tf import files, visualize
from coopnet_tf.data import boxes as box_io
from coopnet_tf.eval import depth as depth_eval
from coopnet_tf.eval import flow as flow_eval
from coopnet_tf.eval import kitti_flow_io
from coopnet_tf.eval import motion as motion_eval
from coopnet_tf.eval import object_motion as om_eval
from coopnet_tf.eval import odometry as odom_eval
from coopnet_tf.eval import scene_flow as sf_eval
from coopnet_tf.eval.inputs import InputError, check_finite, check_png, png_header
from coopnet_tf.eval.resize import resize_bilinear, resize_nearest
from coopnet_tf.images import load_image
from coopnet_tf.run_layout import resolve_saved_model_dir

SUBCOMMANDS = ("depth", "odometry", "flow", "motion", "scene_flow", "object_segmentation")

FLAGS = flags.FLAGS

_FLAGS_DEFINED = False


def _define_flags():
    """Registers the command-line flags (only when run as a program, so that importing
    this module never collides with other absl programs' flags)."""
    global _FLAGS_DEFINED  # pylint: disable=global-statement
    if _FLAGS_DEFINED:
        return
    _FLAGS_DEFINED = True
    # Common.
    flags.DEFINE_string("output_json", None, "Write the results to this JSON file.")
    flags.DEFINE_string("plot_dir", None, "Write figures / visualisations into this directory.")
    flags.DEFINE_boolean("compare_paper", False,
                         "Print the published CoopNet numbers (TABLES.md) beside ours.")
    flags.DEFINE_string("saved_model", None,
                        "SavedModel directory (or an export dir <name>/ holding numbered versions; "
                        "the highest is used) for the predict modes.")
    flags.DEFINE_integer("height", 128, "Network input height for the predict modes.")
    flags.DEFINE_integer("width", 416, "Network input width for the predict modes.")
    flags.DEFINE_integer("batch_size", 8, "Batch size for the predict modes.")
    # Depth.
    flags.DEFINE_string("gt_depths", None, "Monodepth2-format gt_depths.npz (key `data`).")
    flags.DEFINE_string("pred_disps", None, "Predicted disparities [N,h,w] (.npy).")
    flags.DEFINE_enum("protocol", "eigen", list(depth_eval.PROTOCOLS),
                      "Depth protocol: eigen (KITTI, Garg crop), cityscapes (hood + middle crop), "
                      "full (depth range only).")
    flags.DEFINE_boolean("median_scaling", True, "Per-image median scaling.")
    flags.DEFINE_float("pred_depth_scale_factor", 1.0, "Global factor applied to predicted depth.")
    flags.DEFINE_float("min_depth", depth_eval.MIN_DEPTH, "Evaluation depth range minimum (m).")
    flags.DEFINE_float("max_depth", depth_eval.MAX_DEPTH, "Evaluation depth range maximum / cap (m).")
    flags.DEFINE_string("data_path", None, "Dataset root for --saved_model depth prediction.")
    flags.DEFINE_string("split_file", None,
                        "Test list: KITTI lines 'DATE/DRIVE FRAME l|r', or image paths relative "
                        "to --data_path (Cityscapes).")
    flags.DEFINE_string("img_ext", "png", "KITTI image extension (png or jpg).")
    flags.DEFINE_boolean("post_process", False, "Monodepth2 flip post-processing of disparities.")
    flags.DEFINE_string("save_pred_disps", None, "Save the predicted disparities to this .npy.")
    flags.DEFINE_string("save_gt_depths", None,
                        "Cityscapes: save the GT depths computed from disparity/ + camera/ here.")
    flags.DEFINE_string("cityscapes_split", "test", "Cityscapes split used when no --split_file.")
    # Odometry.
    flags.DEFINE_string("gt_poses", None, "KITTI ground-truth pose file (12 numbers per line).")
    flags.DEFINE_string("pred_poses", None, "KITTI predicted pose file (written in --predict mode).")
    flags.DEFINE_enum("align", "7dof", list(odom_eval.ALIGN_MODES), "Trajectory alignment.")
    flags.DEFINE_string("sequence", None, "Sequence name for titles / --compare_paper "
                        "(default: digits of the --gt_poses file name).")
    flags.DEFINE_boolean("predict", False, "Run --saved_model on --image_dir first.")
    flags.DEFINE_string("image_dir", None, "Images: an odometry sequence (image_2) or KITTI 2015 "
                        "image_2 with xxxxxx_10/11.png pairs.")
    # Flow.
    flags.DEFINE_string("gt_dir", None, "KITTI 2015 training dir (flow_occ/, flow_noc/, obj_map/).")
    flags.DEFINE_string("pred_dir", None, "Predicted KITTI flow PNGs (here or in pred_dir/flow).")
    flags.DEFINE_enum("flow_resize", "bilinear", ["bilinear", "nearest"],
                      "Resize of predictions to the GT size (values rescaled).")
    # Motion.
    flags.DEFINE_string("pred_masks", None, "Predicted masks .npz (key `data`, [N,h,w], "
                        "1 = moving; object_segmentation: 1 = object).")
    flags.DEFINE_string("gt_masks", None, "GT moving masks .npz (key `data`, [N,H,W], 1 = moving).")
    flags.DEFINE_string("semantic_dir", None, "KITTI 2015 semantic maps (label 26 = car): restrict "
                        "the motion IoU to car pixels as CC Table 6.")
    flags.DEFINE_string("eval_regions", None, ".npz (key `data`) of bool regions to evaluate.")
    flags.DEFINE_boolean("pred_is_static", False, "Predicted masks are 1 = static (e.g. V).")
    flags.DEFINE_float("mask_threshold", 0.5, "Moving iff predicted value > threshold; "
                       "object_segmentation: object iff CSAC inlier score (or mask) > it.")
    # Scene flow (also uses gt_dir, pred_dir, saved_model, image_dir, median_scaling,
    # pred_depth_scale_factor).
    flags.DEFINE_string("flow_dir", None, "scene_flow --saved_model: KITTI flow PNGs "
                        "(<id>_10.png, t -> t+1) of the method, used to bring the t+1 disparity "
                        "into frame t's layout for D2 (without it D2 is computed unwarped).")
    flags.DEFINE_string("motion_model", None, "scene_flow --saved_model: an object-motion "
                        "SavedModel (image_a = t, image_b = t+1 -> transform, residual) whose "
                        "3-D motion gives the t+1 disparity in frame t's layout for D2; "
                        "object_segmentation: the residual r that CSAC segments.")
    flags.DEFINE_string("calib_dir", None, "scene_flow / object_segmentation --saved_model: "
                        "KITTI 2015 calib_cam_to_cam/ (<id>.txt, P_rect_02 gives K per image).")
    flags.DEFINE_float("fx", sf_eval.KITTI_FX, "scene_flow / object_segmentation --saved_model: "
                       "focal length (px) at the original image size when there is no "
                       "--calib_dir.")
    flags.DEFINE_float("stereo_baseline", sf_eval.KITTI_BASELINE,
                       "scene_flow --saved_model: stereo baseline (m), disparity = fx b / depth.")
    # Object segmentation (also uses gt_dir, image_dir, saved_model, motion_model, calib_dir,
    # fx, pred_masks, mask_threshold).
    flags.DEFINE_string("boxes_dir", None, "object_segmentation: box files <id>_10.txt (KITTI "
                        "labels) or <id>_10.json (detector boxes), data/boxes.py; default: the "
                        "bounding boxes of the obj_map instances.")
    flags.DEFINE_list("box_classes", ["Car", "Van", "Truck"], "object_segmentation "
                      "--boxes_dir: the classes whose boxes are used (empty = all).")
    flags.DEFINE_string("save_pred_masks", None, "object_segmentation --saved_model: save the "
                        "predicted masks at the network size (.npz, key `data`, [N,h,w]).")


# --- Published numbers (../shared/TABLES.md) -------------------------------------------

PAPER = {
    "depth/eigen": ("CoopNet 128x416, KITTI (Table 1)",
                    dict(abs_rel=0.126, sq_rel=1.014, rmse=5.091, rmse_log=0.204,
                         a1=0.856, a2=0.954, a3=0.980)),
    "depth/cityscapes": ("CoopNet 128x416, Cityscapes (Table 1)",
                         dict(abs_rel=0.121, sq_rel=1.443, rmse=7.01, rmse_log=0.190,
                              a1=0.846, a2=0.951, a3=0.980)),
    "odometry/09": ("CoopNet seq. 09 (Table 2); ATE: CC seq. 09 (CC Table 3)",
                    dict(t_err=8.42, r_err=2.66, ate_mean=0.012, ate_std=0.007)),
    "odometry/10": ("CoopNet seq. 10 (Table 2); ATE: CC seq. 10 (CC Table 3)",
                    dict(t_err=7.29, r_err=2.14, ate_mean=0.012, ate_std=0.008)),
    "flow": ("CoopNet KITTI 2015 train (Table 3); Fl: CC (CC Table 4)",
             dict(epe_noc=5.10, epe_all=9.43, fl_all=0.2641)),
    "motion": ("CC 'Joint', KITTI 2015 car pixels (CC Table 6)",
               dict(iou_mean=0.5694, iou_static=0.5577, iou_moving=0.5811)),
    "scene_flow": ("Lee et al. DAM+CSAC, KITTI Scene Flow 2015 train (Lee Table 4)",
                   dict(d1_bg=0.286, d1_fg=0.325, d1_all=0.298, d2_bg=0.305, d2_fg=0.357,
                        d2_all=0.326)),
    "object_segmentation": ("Lee et al. 'After reg.' (CSAC), KITTI-VIS, given box prior "
                            "(Lee Table 5)", dict(iou_mean=0.813)),
}


# --- Output helpers ---------------------------------------------------------------------

def _json_safe(obj):
    """NaN/inf -> None, numpy scalars/arrays -> Python, recursively."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, result):
    """Writes `result` (strict JSON: NaN as null) atomically: a temporary file in the same
    directory is renamed over `path`, so a failure never leaves a truncated file; parent
    directories created."""
    text = json.dumps(_json_safe(result), indent=2, sort_keys=True) + "\n"
    with files.atomic_file(path) as f:
        f.write(text)


def _fmt(v, digits=4):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.{digits}f}"


def format_table(title, keys, ours, paper=None, paper_label=None, digits=4):
    """A plain-text table: one row per metric, columns ours (and paper)."""
    header = ["metric", "ours"] + (["paper"] if paper is not None else [])
    rows = [[k, _fmt(ours.get(k), digits)] + ([_fmt(paper.get(k), digits)] if paper is not None else [])
            for k in keys]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line, "  ".join(h.ljust(w) for h, w in zip(header, widths)), line]
    out += ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
            for r in rows]
    out.append(line)
    if paper is not None and paper_label:
        out.append(f"paper: {paper_label}")
    return "\n".join(out)


def _report(title, keys, result, paper_key=None):
    paper = label = None
    if FLAGS.compare_paper and paper_key in PAPER:
        label, paper = PAPER[paper_key]
        result["paper"] = {"source": label, **paper}
    elif FLAGS.compare_paper:
        print(f"(no published number for {paper_key})")
    print(format_table(title, keys, result, paper, label))
    if FLAGS.output_json:
        write_json(FLAGS.output_json, result)
        print(f"wrote {FLAGS.output_json}")
    return result


def _require(*names):
    missing = [n for n in names if getattr(FLAGS, n) in (None, "")]
    if missing:
        raise app.UsageError("missing flag(s): " + ", ".join("--" + n for n in missing))


# --- SavedModel helpers ----------------------------------------------------------------------

def load_signature(path):
    """The `serving_default` signature of a SavedModel (keeps the model alive)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    model = tf.saved_model.load(resolve_saved_model_dir(path))
    fn = model.signatures["serving_default"]
    fn._coopnet_model = model  # pylint: disable=protected-access
    return fn


def model_input_size(signature, input_name):
    """(height, width) to feed: the SavedModel's static input size when it has one (a
    mismatching --height/--width is overridden with a warning), else the flags."""
    shape = signature.structured_input_signature[1][input_name].shape
    h, w = (shape[1], shape[2]) if shape.rank == 4 else (None, None)
    if h is not None and w is not None:
        explicit = FLAGS["height"].present or FLAGS["width"].present
        if (h, w) != (FLAGS.height, FLAGS.width) and explicit:
            logging.warning("SavedModel input is %dx%d: using it instead of --height=%d --width=%d",
                            h, w, FLAGS.height, FLAGS.width)
        return int(h), int(w)
    return FLAGS.height, FLAGS.width


def _batches(n, batch_size):
    for s in range(0, n, batch_size):
        yield s, min(n, s + batch_size)


# --- depth ------------------------------------------------------------------------------------

def _kitti_image_path(data_path, line, img_ext):
    folder, frame, side = line.split()[:3]
    cam = {"l": "image_02", "r": "image_03"}[side]
    return os.path.join(data_path, folder, cam, "data", f"{int(frame):010d}.{img_ext}")


def _cityscapes_paths(data_path, image_rel):
    image = os.path.join(data_path, image_rel)
    disp = re.sub(r"leftImg8bit", "disparity", image_rel)
    cam = re.sub(r"leftImg8bit", "camera", image_rel)
    cam = os.path.splitext(cam)[0] + ".json"
    return image, os.path.join(data_path, disp), os.path.join(data_path, cam)


def _depth_image_list():
    _require("data_path")
    if FLAGS.split_file:
        with open(FLAGS.split_file, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    elif FLAGS.protocol == "cityscapes":
        pattern = os.path.join(FLAGS.data_path, "leftImg8bit", FLAGS.cityscapes_split, "*",
                               "*_leftImg8bit.png")
        lines = sorted(os.path.relpath(p, FLAGS.data_path) for p in glob.glob(pattern))
        if not lines:
            raise FileNotFoundError(f"no images match {pattern}")
    else:
        raise app.UsageError("--split_file is required for KITTI prediction")
    if len(lines[0].split()) >= 3:
        return [_kitti_image_path(FLAGS.data_path, ln, FLAGS.img_ext) for ln in lines], lines
    return [os.path.join(FLAGS.data_path, ln) for ln in lines], lines


def predict_disparities(signature, image_paths, height, width, batch_size,
                        post_process=False, crop_bottom=0.0):
    """Runs a depth SavedModel (EXPORT_DEPTH) on images -> [N, height, width] disparities."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    out = []
    for s, e in _batches(len(image_paths), batch_size):
        batch = np.stack([load_image(p, height, width, crop_bottom)[0] for p in image_paths[s:e]])
        disp = signature(image=tf.constant(batch))["disparity"].numpy()[..., 0]
        if post_process:
            disp_f = signature(image=tf.constant(batch[:, :, ::-1]))["disparity"].numpy()[..., 0]
            disp = depth_eval.post_process_disparity(disp, disp_f)
        out.append(disp.astype(np.float32))
        logging.info("depth prediction %d/%d", e, len(image_paths))
    return np.concatenate(out, 0)


def cityscapes_gt_depths(lines):
    """Cityscapes GT depth maps (full 1024x2048 frames) from disparity/ and camera/."""
    gts = []
    for ln in lines:
        _, disp_path, cam_path = _cityscapes_paths(FLAGS.data_path, ln)
        fx, baseline = depth_eval.read_cityscapes_camera(cam_path)
        check_png(disp_path, 16, "grey", "Cityscapes disparity file")
        raw = kitti_flow_io.read_png_uint16(disp_path)[..., 0]
        gts.append(depth_eval.cityscapes_disparity_to_depth(raw, fx, baseline))
    return gts


def run_depth():
    """`depth` subcommand."""
    gt_depths = None
    if FLAGS.saved_model:
        paths, lines = _depth_image_list()
        crop = 1.0 - depth_eval.CITYSCAPES_HOOD_KEEP if FLAGS.protocol == "cityscapes" else 0.0
        signature = load_signature(FLAGS.saved_model)
        height, width = model_input_size(signature, "image")
        pred_disps = predict_disparities(signature, paths, height, width, FLAGS.batch_size,
                                         FLAGS.post_process, crop)
        check_finite(pred_disps, "disparity", f"output of SavedModel {FLAGS.saved_model} (image i "
                     f"= line i of {FLAGS.split_file or 'the sorted image list'})", positive=True)
        if FLAGS.save_pred_disps:
            np.save(FLAGS.save_pred_disps, pred_disps)
            print(f"wrote {FLAGS.save_pred_disps} {pred_disps.shape}")
        if FLAGS.gt_depths:
            gt_depths = depth_eval.load_gt_depths(FLAGS.gt_depths)
        elif FLAGS.protocol == "cityscapes":
            gt_depths = cityscapes_gt_depths(lines)
            if FLAGS.save_gt_depths:
                arr = np.empty(len(gt_depths), object)
                arr[:] = gt_depths
                np.savez_compressed(FLAGS.save_gt_depths, data=arr)
        else:
            print("no --gt_depths: predictions written, nothing to evaluate")
            return None
    else:
        _require("gt_depths", "pred_disps")
        gt_depths = depth_eval.load_gt_depths(FLAGS.gt_depths)
        pred_disps = depth_eval.load_pred_disps(FLAGS.pred_disps)
    if len(pred_disps) != len(gt_depths):
        raise InputError(f"{len(pred_disps)} predicted disparities "
                         f"({FLAGS.pred_disps or FLAGS.saved_model}) for {len(gt_depths)} "
                         f"ground-truth maps ({FLAGS.gt_depths or 'Cityscapes disparity/'})")
    result = depth_eval.evaluate_depth(
        gt_depths, pred_disps, protocol=FLAGS.protocol, median_scaling=FLAGS.median_scaling,
        pred_depth_scale_factor=FLAGS.pred_depth_scale_factor, min_depth=FLAGS.min_depth,
        max_depth=FLAGS.max_depth)
    if FLAGS.median_scaling:
        print(f"scaling ratios | median: {result['scale_ratio_median']:.3f} | "
              f"std (ratio/median): {result['scale_ratio_std']:.3f} | "
              f"mean: {result['scale_ratio_mean']:.3f}")
    if FLAGS.plot_dir:
        from coopnet_tf.eval import plots  # pylint: disable=import-outside-toplevel
        idx = sorted(set(np.linspace(0, len(pred_disps) - 1, min(5, len(pred_disps))).astype(int)))
        plots.save_depth_examples(FLAGS.plot_dir, pred_disps, gt_depths, idx)
    return _report(f"depth ({FLAGS.protocol}, {result['n_images']} images)",
                   depth_eval.METRIC_NAMES, result, f"depth/{FLAGS.protocol}")


# --- odometry --------------------------------------------------------------------------------

def list_images(image_dir, pattern=None):
    """Sorted image files (png/jpg) of a directory."""
    exts = (".png", ".jpg", ".jpeg")
    paths = sorted(p for p in glob.glob(os.path.join(image_dir, pattern or "*"))
                   if p.lower().endswith(exts))
    if not paths:
        raise FileNotFoundError(f"no images in {image_dir}")
    return paths


def predict_trajectory(signature, image_paths, height, width, batch_size):
    """Runs a pose SavedModel (EXPORT_POSE) on consecutive pairs and chains the motions.

    Returns:
      [N, 4, 4] camera-to-world poses, G_0 = I, G_{k+1} = G_k T_{k->k+1}^-1.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    images = [load_image(p, height, width)[0] for p in image_paths]
    rel = []
    for s, e in _batches(len(images) - 1, batch_size):
        a = np.stack(images[s:e])
        b = np.stack(images[s + 1:e + 1])
        out = signature(image_a=tf.constant(a), image_b=tf.constant(b))
        rel.append(out["transform"].numpy().astype(np.float64))
        logging.info("pose prediction %d/%d", e, len(images) - 1)
    return odom_eval.chain_relative_poses(np.concatenate(rel, 0))


def _sequence_name():
    if FLAGS.sequence:
        return FLAGS.sequence
    if FLAGS.gt_poses:
        m = re.search(r"(\d+)", os.path.basename(FLAGS.gt_poses))
        if m:
            return f"{int(m.group(1)):02d}"
    return None


def run_odometry():
    """`odometry` subcommand."""
    if FLAGS.predict:
        _require("saved_model", "image_dir", "pred_poses")
        signature = load_signature(FLAGS.saved_model)
        height, width = model_input_size(signature, "image_a")
        poses = predict_trajectory(signature, list_images(FLAGS.image_dir), height, width,
                                   FLAGS.batch_size)
        parent = os.path.dirname(FLAGS.pred_poses)
        if parent:
            os.makedirs(parent, exist_ok=True)
        odom_eval.save_kitti_poses(FLAGS.pred_poses, poses)
        print(f"wrote {FLAGS.pred_poses} ({len(poses)} poses)")
        if not FLAGS.gt_poses:
            return None
    _require("gt_poses", "pred_poses")
    gt = odom_eval.load_kitti_poses(FLAGS.gt_poses)
    pred = odom_eval.load_kitti_poses(FLAGS.pred_poses)
    if len(gt) != len(pred):
        raise InputError(f"{FLAGS.gt_poses} has {len(gt)} poses but {FLAGS.pred_poses} has "
                         f"{len(pred)}: one pose per frame in both")
    result, aligned, gt0 = odom_eval.evaluate_odometry(gt, pred, align=FLAGS.align)
    seq = _sequence_name()
    result["sequence"] = seq
    if FLAGS.plot_dir:
        from coopnet_tf.eval import plots  # pylint: disable=import-outside-toplevel
        name = f"seq{seq}" if seq else "trajectory"
        plots.plot_trajectory(os.path.join(FLAGS.plot_dir, f"{name}_trajectory.png"), gt0, aligned,
                              title=f"{name} (align {FLAGS.align}): t_err {result['t_err']:.2f} %, "
                                    f"r_err {result['r_err']:.2f} deg/100m")
        plots.plot_errors_per_length(os.path.join(FLAGS.plot_dir, f"{name}_errors.png"),
                                     result["per_length"], title=name)
    return _report(f"odometry (sequence {seq or '-'}, align {FLAGS.align}, {result['n_frames']} frames)",
                   ("t_err", "r_err", "ate_mean", "ate_std"), result, f"odometry/{seq}")


# --- flow -------------------------------------------------------------------------------------

def predict_flow_dir(signature, image_dir, pred_dir, names, height, width, batch_size):
    """Runs a flow SavedModel (EXPORT_FLOW) on `xxxxxx_10.png -> xxxxxx_11.png` pairs and
    writes KITTI flow PNGs at the original image size (values rescaled)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    os.makedirs(pred_dir, exist_ok=True)
    for s, e in _batches(len(names), batch_size):
        a, b, sizes = [], [], []
        for name in names[s:e]:
            ia, size = load_image(os.path.join(image_dir, name), height, width)
            ib, _ = load_image(os.path.join(image_dir, name.replace("_10.", "_11.")), height, width)
            a.append(ia)
            b.append(ib)
            sizes.append(size)
        flows = signature(image_a=tf.constant(np.stack(a)), image_b=tf.constant(np.stack(b)))["flow"]
        for name, flow, (h, w) in zip(names[s:e], flows.numpy(), sizes):
            full = flow_eval.resize_flow(flow, h, w, method="bilinear")
            kitti_flow_io.write_flow_png(os.path.join(pred_dir, name), full)
        logging.info("flow prediction %d/%d", e, len(names))


def run_flow():
    """`flow` subcommand."""
    if FLAGS.predict:
        _require("saved_model", "image_dir", "pred_dir")
        if FLAGS.gt_dir:
            names = flow_eval.list_gt_names(FLAGS.gt_dir)
        else:
            names = [os.path.basename(p) for p in list_images(FLAGS.image_dir, "*_10.*")]
        signature = load_signature(FLAGS.saved_model)
        height, width = model_input_size(signature, "image_a")
        predict_flow_dir(signature, FLAGS.image_dir, FLAGS.pred_dir, names, height, width,
                         FLAGS.batch_size)
        print(f"wrote {len(names)} flow PNGs to {FLAGS.pred_dir}")
        if not FLAGS.gt_dir:
            return None
    _require("gt_dir", "pred_dir")
    result = flow_eval.evaluate_flow_dirs(FLAGS.gt_dir, FLAGS.pred_dir, FLAGS.flow_resize,
                                          return_per_image=True)
    if result["n_resized"]:
        print(f"{result['n_resized']} of {len(result['per_image'])} predictions resized to the "
              f"ground-truth size ({FLAGS.flow_resize}, values rescaled)")
    if FLAGS.plot_dir:
        from coopnet_tf.eval import plots  # pylint: disable=import-outside-toplevel
        items = []
        for entry in result["per_image"][:10]:
            name = entry["name"]
            gt, valid = kitti_flow_io.read_flow_png(os.path.join(FLAGS.gt_dir, "flow_occ", name))
            pred, _ = kitti_flow_io.read_flow_png(flow_eval.find_prediction(FLAGS.pred_dir, name))
            if pred.shape[:2] != gt.shape[:2]:
                pred = flow_eval.resize_flow(pred, gt.shape[0], gt.shape[1], FLAGS.flow_resize)
            max_flow = float(np.max(np.linalg.norm(gt[valid], axis=-1))) if valid.any() else None
            stem = os.path.splitext(name)[0]
            items.append((f"{stem}_pred.png", pred, None, max_flow))
            items.append((f"{stem}_gt.png", gt, valid, max_flow))
        for fname, f, v, m in items:
            plots.save_flow_examples(FLAGS.plot_dir, [(fname, f, v)], max_flow=m)
        plots.save_flow_wheel_legend(os.path.join(FLAGS.plot_dir, "color_wheel.png"))
    return _report(f"flow (KITTI 2015, {result['n_images']} images; EPE px, Fl fraction, "
                   f"per-image means)",
                   ("epe_noc", "epe_all", "fl_all", "fl_noc", "epe_all_pooled", "fl_all_pooled"),
                   result, "flow")


# --- motion -----------------------------------------------------------------------------------

def _load_npz_data(path):
    with np.load(path, allow_pickle=True) as f:
        key = "data" if "data" in f else list(f.keys())[0]
        return list(f[key])


def run_motion():
    """`motion` subcommand."""
    _require("pred_masks")
    preds = _load_npz_data(FLAGS.pred_masks)
    regions = None
    names = None
    if FLAGS.gt_masks:
        gts = _load_npz_data(FLAGS.gt_masks)
    elif FLAGS.gt_dir:
        obj_dir = os.path.join(FLAGS.gt_dir, "obj_map")
        names = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(obj_dir, "*_10.png")))]
        if not names:
            names = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(obj_dir, "*.png")))]
        if not names:
            raise FileNotFoundError(f"no obj_map PNGs in {obj_dir}")
        gts = [kitti_flow_io.read_label_png(os.path.join(obj_dir, n)) for n in names]
    else:
        raise app.UsageError("motion needs --gt_masks or --gt_dir")
    if FLAGS.semantic_dir:
        if names is None:
            raise app.UsageError("--semantic_dir needs --gt_dir (file names)")
        regions = [motion_eval.car_region(
            kitti_flow_io.read_label_png(os.path.join(FLAGS.semantic_dir, n))) for n in names]
    elif FLAGS.eval_regions:
        regions = _load_npz_data(FLAGS.eval_regions)
    result = motion_eval.evaluate_motion(preds, gts, regions, FLAGS.mask_threshold,
                                         FLAGS.pred_is_static)
    result["region"] = "car pixels" if FLAGS.semantic_dir else (
        "given regions" if FLAGS.eval_regions else "all pixels")
    if FLAGS.plot_dir:
        from coopnet_tf.eval import plots  # pylint: disable=import-outside-toplevel
        for i in range(min(5, len(gts))):
            g = np.asarray(gts[i])
            g = g[..., 0] if g.ndim == 3 else g
            p = motion_eval.prepare_prediction(preds[i], g.shape[0], g.shape[1],
                                               FLAGS.mask_threshold, FLAGS.pred_is_static)
            plots.save_mask_comparison(os.path.join(FLAGS.plot_dir, f"mask_{i:04d}.png"), p, g > 0,
                                       None if regions is None else regions[i])
    return _report(f"motion segmentation IoU ({result['n_images']} images, {result['region']})",
                   ("iou_mean", "iou_static", "iou_moving"), result, "motion")


# --- scene flow (Lee et al. Table 4) -----------------------------------------------------

def kitti2015_intrinsics(calib_dir, name, size, default_fx):
    """K (3x3, original image size) of KITTI 2015 image `name` (`NNNNNN_10.png`): P_rect_02
    of `calib_dir/NNNNNN.txt` (data_scene_flow_calib's calib_cam_to_cam/); without
    `calib_dir`, fx = fy = `default_fx` and the principal point at the centre of `size`
    ((height, width))."""
    if not calib_dir:
        h, w = size
        return np.array([[default_fx, 0.0, (w - 1) / 2.0], [0.0, default_fx, (h - 1) / 2.0],
                         [0.0, 0.0, 1.0]])
    from coopnet_tf.data import kitti  # pylint: disable=import-outside-toplevel
    from coopnet_tf.data.convert import ConversionError  # pylint: disable=import-outside-toplevel
    path = os.path.join(calib_dir, name.split("_")[0] + ".txt")
    try:
        K, calib_size = kitti.raw_camera_calibration_file(path, "image_02")
    except ConversionError as err:
        raise InputError(str(err)) from err
    if tuple(calib_size) != tuple(size):
        raise InputError(f"{path}: S_rect_02 is {calib_size[0]}x{calib_size[1]} (HxW) but image "
                         f"{name} is {size[0]}x{size[1]}")
    return K


def _motion_input_size(motion_signature, height, width):
    """(height, width) of an object-motion SavedModel: its static input size, else the given."""
    shape = motion_signature.structured_input_signature[1]["image_a"].shape
    mh, mw = (shape[1], shape[2]) if shape.rank == 4 else (None, None)
    return (int(mh), int(mw)) if mh and mw else (height, width)


def _object_motion(motion_signature, image_a_path, image_b_path, height, width, K):
    """(transform [4, 4] T_a->b, residual [h, w, 3]) of an EXPORT_OBJECT_MOTION SavedModel.

    `K` [3, 3] of the original image size goes, scaled to (height, width) (fx, cx by
    width / W; fy, cy by height / H), to the model's `intrinsics` input (Lee's export has
    one: stage 1's forward projection); a signature without that input gets none.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    a, (h_full, w_full) = load_image(image_a_path, height, width)
    b, _ = load_image(image_b_path, height, width)
    inputs = {"image_a": tf.constant(a[None]), "image_b": tf.constant(b[None])}
    if "intrinsics" in motion_signature.structured_input_signature[1]:
        scaled = np.diag([width / w_full, height / h_full, 1.0]) @ np.asarray(K, np.float64)
        inputs["intrinsics"] = tf.constant(scaled[None], tf.float32)
    out = motion_signature(**inputs)
    return out["transform"].numpy()[0].astype(np.float64), out["residual"].numpy()[0]


def predict_scene_flow_dir(signature, image_dir, pred_dir, names, height, width, batch_size,
                           gt_dir=None, flow_dir=None, motion_signature=None, calib_dir=None,
                           fx=sf_eval.KITTI_FX, baseline=sf_eval.KITTI_BASELINE,
                           median_scaling=True, pred_depth_scale_factor=1.0):
    """Runs a depth SavedModel (EXPORT_DEPTH) on `<id>_10.png` (t) and `<id>_11.png` (t+1)
    and writes devkit disparity PNGs `pred_dir/disp_0/` and `pred_dir/disp_1/`.

    Per image: inverse depth resized bilinearly to the original size, disparity =
    fx · baseline / depth; with `median_scaling` both frames are multiplied by the one
    scale `median(gt) / median(pred)` of frame t on the valid pixels of
    `gt_dir/disp_occ_0/` (fx · baseline then cancels), else depth is multiplied by
    `pred_depth_scale_factor`. disp_1 must be in frame t's layout (the devkit's D2):
    * `motion_signature` (an object-motion SavedModel, inputs image_a = t, image_b = t+1,
      outputs `transform` T_t->t+1 and `residual` r): disp_1 = fx b / Z of
      `R (X_t + r) + t`, X_t from the frame-t depth (`scene_flow.disparity_after_motion`;
      the t+1 depth map is not used);
    * else `flow_dir` (the method's KITTI flow PNGs t -> t+1): the t+1 disparity resampled
      along the flow (`scene_flow.warp_to_first_frame`);
    * else disp_1 stays in frame t+1's layout (not the devkit's D2; docs/evaluation.md).

    Returns:
      dict name -> {"scale", "fx"} per image.
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel
    if median_scaling and not gt_dir:
        raise app.UsageError("median scaling needs --gt_dir (disp_occ_0); or --nomedian_scaling")
    if flow_dir and motion_signature is not None:
        raise app.UsageError("give --flow_dir or --motion_model for D2, not both")
    for d in (image_dir, flow_dir, calib_dir):
        if d and not os.path.isdir(d):
            raise FileNotFoundError(f"directory {d} not found")
    paths = []
    for name in names:
        for t_name in (name, name.replace("_10.", "_11.")):
            path = os.path.join(image_dir, t_name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"missing image {path} (frame pair of {name})")
            paths.append(path)
    inv_depth = predict_disparities(signature, paths, height, width, batch_size)
    check_finite(inv_depth, "inverse depth", "output of the depth SavedModel (images ordered "
                 "<id>_10, <id>_11 per sorted pair)", positive=True)
    info = {}
    for i, name in enumerate(names):
        with Image.open(paths[2 * i]) as im:
            w_full, h_full = im.size
        K = kitti2015_intrinsics(calib_dir, name, (h_full, w_full), fx)
        fxb = float(K[0, 0]) * baseline
        inv = [resize_bilinear(inv_depth[2 * i + k], h_full, w_full).astype(np.float64)
               for k in (0, 1)]
        disp = [fxb * inv[0], fxb * inv[1]]
        if motion_signature is not None:
            mh, mw = _motion_input_size(motion_signature, height, width)
            transform, residual = _object_motion(motion_signature, paths[2 * i],
                                                 paths[2 * i + 1], mh, mw, K)
            residual = resize_bilinear(residual, h_full, w_full)
            disp[1] = sf_eval.disparity_after_motion(1.0 / inv[0], transform, residual, K, fxb)
        elif flow_dir:
            flow_path = os.path.join(flow_dir, name)
            if not os.path.isfile(flow_path):
                raise FileNotFoundError(f"missing flow {flow_path} (--flow_dir, for D2 of {name})")
            flow, _ = kitti_flow_io.read_flow_png(flow_path)
            if flow.shape[:2] != (h_full, w_full):
                raise InputError(f"{flow_path} is {flow.shape[0]}x{flow.shape[1]} but image "
                                 f"{paths[2 * i]} is {h_full}x{w_full}")
            disp[1] = sf_eval.warp_to_first_frame(disp[1], flow)
        if median_scaling:
            gt_path = os.path.join(gt_dir, sf_eval.LAYOUT["d1"][0], name)
            gt, _ = kitti_flow_io.read_disp_png(gt_path)
            if gt.shape != (h_full, w_full):
                raise InputError(f"{gt_path} is {gt.shape[0]}x{gt.shape[1]} but image "
                                 f"{paths[2 * i]} is {h_full}x{w_full}")
            scale = sf_eval.median_scale(disp[0], gt)
            if not math.isfinite(scale):
                raise InputError(f"{gt_path}: no valid ground-truth pixel for the median scaling")
        else:
            scale = 1.0 / pred_depth_scale_factor
        for k, sub in enumerate(("disp_0", "disp_1")):
            kitti_flow_io.write_disp_png(os.path.join(pred_dir, sub, name), disp[k] * scale)
        info[name] = {"scale": scale, "fx": float(K[0, 0])}
        logging.info("scene-flow disparities %d/%d", i + 1, len(names))
    return info


def _scene_flow_names():
    if FLAGS.gt_dir:
        return sf_eval.list_gt_names(FLAGS.gt_dir)
    return [os.path.basename(p) for p in list_images(FLAGS.image_dir, "*_10.png")]


def _d2_layout():
    if FLAGS.motion_model:
        return (f"disparity at t+1 of frame t's points from the frame-t depth and the 3-D "
                f"motion (R (X + r) + t) of {FLAGS.motion_model}")
    if FLAGS.flow_dir:
        return f"t+1 disparity warped into frame t along the flow of {FLAGS.flow_dir}"
    return ("NOT the devkit's D2: no --motion_model or --flow_dir, so the t+1 disparity stays in "
            "frame t+1's layout and pixel p of it is compared with the GT of pixel p of frame t")


def run_scene_flow():
    """`scene_flow` subcommand: D1 / D2 (Lee Table 4), optionally predicting first."""
    meta = {}
    if FLAGS.saved_model:
        _require("image_dir", "pred_dir")
        names = _scene_flow_names()
        signature = load_signature(FLAGS.saved_model)
        height, width = model_input_size(signature, "image")
        motion = load_signature(FLAGS.motion_model) if FLAGS.motion_model else None
        info = predict_scene_flow_dir(
            signature, FLAGS.image_dir, FLAGS.pred_dir, names, height, width, FLAGS.batch_size,
            gt_dir=FLAGS.gt_dir, flow_dir=FLAGS.flow_dir, motion_signature=motion,
            calib_dir=FLAGS.calib_dir, fx=FLAGS.fx, baseline=FLAGS.stereo_baseline,
            median_scaling=FLAGS.median_scaling,
            pred_depth_scale_factor=FLAGS.pred_depth_scale_factor)
        print(f"wrote {len(names)} disparity pairs to {FLAGS.pred_dir}/disp_0, disp_1")
        meta = {
            "saved_model": FLAGS.saved_model,
            "disparity": f"fx * {FLAGS.stereo_baseline:g} m / depth, K from "
                         + (f"{FLAGS.calib_dir} (P_rect_02)" if FLAGS.calib_dir else
                            f"--fx={FLAGS.fx:g}, principal point at the image centre"),
            "scale_alignment": (
                "per-image median(GT disp_occ_0) / median(predicted disparity at t) on valid GT "
                "pixels, applied to both frames of the pair" if FLAGS.median_scaling else
                f"none (depth x {FLAGS.pred_depth_scale_factor:g})"),
            "scale_per_image": {n: v["scale"] for n, v in info.items()},
            "d2_layout": _d2_layout(),
        }
        if not (FLAGS.flow_dir or FLAGS.motion_model):
            logging.warning("scene_flow: %s", meta["d2_layout"])
        if not FLAGS.gt_dir:
            return None
    _require("gt_dir", "pred_dir")
    result = sf_eval.evaluate_scene_flow_dirs(FLAGS.gt_dir, FLAGS.pred_dir)
    result.update(meta)
    if FLAGS.plot_dir:
        from coopnet_tf.eval import plots  # pylint: disable=import-outside-toplevel
        name = result["per_image"][0]["name"]
        stem = os.path.splitext(name)[0]
        for metric, (gt_sub, pred_sub) in sf_eval.LAYOUT.items():
            gt, _ = kitti_flow_io.read_disp_png(os.path.join(FLAGS.gt_dir, gt_sub, name))
            pred, _ = kitti_flow_io.read_disp_png(os.path.join(FLAGS.pred_dir, pred_sub, name))
            plots.save_rgb(os.path.join(FLAGS.plot_dir, f"{stem}_{metric}_error.png"),
                           sf_eval.error_image(pred, gt))
            plots.save_rgb(os.path.join(FLAGS.plot_dir, f"{stem}_{pred_sub}.png"),
                           visualize.colorize_disparity(pred))
    return _report(f"scene flow disparity (KITTI 2015, {result['n_images']} images; outlier "
                   f"fractions pooled over pixels)", sf_eval.METRIC_NAMES, result, "scene_flow")


# --- object segmentation (Lee et al. Table 5) --------------------------------------------

def _box_class_ids(names):
    """`CLASSES` ids of the --box_classes names; None (every class) for an empty list."""
    if not names:
        return None
    try:
        return [box_io.class_id(n, "--box_classes") for n in names]
    except box_io.BoxFormatError as err:
        raise app.UsageError(str(err)) from err


def segmentation_boxes(boxes_dir, name, class_ids, size):
    """Boxes `[n, 4]` (x1, y1, x2, y2; pixels of the image, `size` = (height, width)) of
    KITTI 2015 image `name` from `boxes_dir/<id>_10.txt` (KITTI labels) or `.json`
    (`data/boxes.read_boxes`): only the classes `class_ids` (None = all), clipped to the
    image (boxes outside it dropped)."""
    stem = os.path.splitext(name)[0]
    found = [p for p in (os.path.join(boxes_dir, stem + ext) for ext in (".txt", ".json"))
             if os.path.isfile(p)]
    if not found:
        raise InputError(f"missing box file {os.path.join(boxes_dir, stem)}.txt or .json "
                         f"(--boxes_dir, the boxes of {name})")
    if len(found) > 1:
        raise InputError(f"{found[0]} and {found[1]}: two box files for {name}; keep one")
    try:
        rows = box_io.read_boxes(found[0])
    except box_io.BoxFormatError as err:
        raise InputError(str(err)) from err
    if class_ids is not None:
        rows = rows[np.isin(rows[:, 5].astype(np.int64), class_ids)]
    return box_io.clip_boxes(rows, *size)[:, :4]


def predict_object_masks(signature, motion_signature, image_paths, boxes, height, width,
                         batch_size, intrinsics, threshold=om_eval.CSAC_THRESHOLD):
    """CSAC object masks of image pairs from a Lee run's SavedModels (Lee Table 5).

    Per pair (t, t+1): depth at t from the depth model (EXPORT_DEPTH, input `height` x
    `width`), the residual r of t -> t+1 from the object-motion model (EXPORT_OBJECT_MOTION,
    at its own input size; the depth is resized bilinearly to it when they differ), the
    boxes scaled to that size (`data/boxes.scale_boxes`), then
    `eval.object_motion.csac_object_mask` (seed (0, i) for pair i).

    Args:
      image_paths: list of (path_t, path_t+1).
      boxes: list of `[n_i, 4]` boxes in pixels of the original images.
      intrinsics: list of K `[3, 3]` of the original images.

    Returns:
      bool `[N, h, w]` at the object-motion model's input size.
    """
    from PIL import Image  # pylint: disable=import-outside-toplevel
    inv_depth = predict_disparities(signature, [a for a, _ in image_paths], height, width,
                                    batch_size)
    check_finite(inv_depth, "inverse depth", "output of the depth SavedModel", positive=True)
    mh, mw = _motion_input_size(motion_signature, height, width)
    masks = []
    for i, ((path_a, path_b), rows, K) in enumerate(zip(image_paths, boxes, intrinsics)):
        with Image.open(path_a) as im:
            w_full, h_full = im.size
        _, residual = _object_motion(motion_signature, path_a, path_b, mh, mw, K)
        inv = inv_depth[i] if inv_depth.shape[1:] == (mh, mw) else resize_bilinear(
            inv_depth[i], mh, mw)
        scaled = box_io.scale_boxes(np.pad(np.asarray(rows, np.float32).reshape(-1, 4),
                                           ((0, 0), (0, 2))), mw / w_full, mh / h_full)[:, :4]
        masks.append(om_eval.csac_object_mask(
            residual[None], 1.0 / inv[None], scaled[None], np.ones((1, len(scaled))),
            threshold, seed=(0, i))[0])
        logging.info("CSAC object masks %d/%d", i + 1, len(image_paths))
    return np.stack(masks)


def _write_masks_npz(path, masks):
    """`masks` as `.npz` (key `data`), written atomically like `write_json`."""
    with files.atomic_file(path, "wb") as f:
        np.savez_compressed(f, data=masks)


def _predict_segmentation(names, gts, obj_dir):
    """--saved_model mode of `object_segmentation`: (masks [N, h, w], JSON fields)."""
    image_dir = FLAGS.image_dir or os.path.join(FLAGS.gt_dir, "image_2")
    class_ids = _box_class_ids(FLAGS.box_classes) if FLAGS.boxes_dir else None
    pairs, boxes, intrinsics = [], [], []
    for name, gt in zip(names, gts):
        pair = [os.path.join(image_dir, n) for n in (name, name.replace("_10.", "_11."))]
        for path in pair:
            if not os.path.isfile(path):
                raise InputError(f"missing image {path} (frame pair of {obj_dir}/{name})")
            height, width = png_header(path)[:2]
            if (height, width) != gt.shape:
                raise InputError(f"{path} is {height}x{width} but {obj_dir}/{name} is "
                                 f"{gt.shape[0]}x{gt.shape[1]}")
        pairs.append(tuple(pair))
        boxes.append(segmentation_boxes(FLAGS.boxes_dir, name, class_ids, gt.shape)
                     if FLAGS.boxes_dir else om_eval.instance_boxes(gt))
        intrinsics.append(kitti2015_intrinsics(FLAGS.calib_dir, name, gt.shape, FLAGS.fx))
    signature = load_signature(FLAGS.saved_model)
    height, width = model_input_size(signature, "image")
    motion = load_signature(FLAGS.motion_model)
    masks = predict_object_masks(signature, motion, pairs, boxes, height, width,
                                 FLAGS.batch_size, intrinsics, FLAGS.mask_threshold)
    if FLAGS.save_pred_masks:
        _write_masks_npz(FLAGS.save_pred_masks, masks.astype(np.uint8))
        print(f"wrote {len(masks)} masks to {FLAGS.save_pred_masks}")
    source = (f"--boxes_dir={FLAGS.boxes_dir}, classes "
              f"{','.join(FLAGS.box_classes) if class_ids else 'all'}" if FLAGS.boxes_dir else
              "GT instances: the bounding box of each obj_map instance")
    return masks, {
        "box_source": source, "saved_model": FLAGS.saved_model,
        "motion_model": FLAGS.motion_model, "network_size": list(masks.shape[1:]),
        "intrinsics": (f"{FLAGS.calib_dir} (P_rect_02)" if FLAGS.calib_dir else
                       f"--fx={FLAGS.fx:g}, principal point at the image centre")
                      + ", scaled to the network size",
        "csac_seed": "(0, i) for image i", "n_boxes": [int(len(b)) for b in boxes]}


def run_object_segmentation():
    """`object_segmentation` subcommand: IoU of CSAC's inlier masks with obj_map > 0 (Lee
    Table 5), from --pred_masks or predicted with --saved_model and --motion_model."""
    _require("gt_dir")
    if bool(FLAGS.pred_masks) == bool(FLAGS.saved_model):
        raise app.UsageError("object_segmentation needs --pred_masks or --saved_model "
                             "(with --motion_model), not both")
    if FLAGS.pred_masks and (FLAGS.boxes_dir or FLAGS.save_pred_masks):
        raise app.UsageError("--boxes_dir and --save_pred_masks go with --saved_model")
    obj_dir = os.path.join(FLAGS.gt_dir, "obj_map")
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(obj_dir, "*_10.png")))
    if not names:
        raise InputError(f"{obj_dir}: no object maps <id>_10.png (KITTI 2015 obj_map/)")
    gts = [kitti_flow_io.read_label_png(os.path.join(obj_dir, n)) for n in names]
    if FLAGS.saved_model:
        _require("motion_model")
        masks, meta = _predict_segmentation(names, gts, obj_dir)
    else:
        masks = _load_npz_data(FLAGS.pred_masks)
        if len(masks) != len(names):
            raise InputError(f"{FLAGS.pred_masks}: {len(masks)} masks for the {len(names)} "
                             f"object maps of {obj_dir}")
        meta = {"box_source": "unknown: precomputed masks", "pred_masks": FLAGS.pred_masks}
    preds = []
    for i, (mask, gt) in enumerate(zip(masks, gts)):
        mask = np.asarray(mask, np.float32)
        if mask.ndim != 2:
            raise InputError(f"{FLAGS.pred_masks or 'predicted masks'}: mask {i} has shape "
                             f"{mask.shape}; expected [h, w]")
        preds.append(resize_nearest(mask, *gt.shape) > FLAGS.mask_threshold)
    result = om_eval.segmentation_iou(preds, [g > 0 for g in gts])
    result["per_image"] = [{"name": n, "iou": v} for n, v in zip(names, result["per_image"])]
    result.update(meta, threshold=FLAGS.mask_threshold,
                  gt="obj_map > 0 (every pixel of the image is evaluated)",
                  resize="masks resized to the GT size by nearest neighbour")
    if FLAGS.plot_dir:
        from coopnet_tf.eval import plots  # pylint: disable=import-outside-toplevel
        for name, pred, gt in list(zip(names, preds, gts))[:5]:
            plots.save_mask_comparison(os.path.join(
                FLAGS.plot_dir, f"{os.path.splitext(name)[0]}_segmentation.png"), pred, gt > 0)
    return _report(f"object segmentation IoU, CSAC inliers > {FLAGS.mask_threshold:g} "
                   f"(KITTI 2015 obj_map, {result['n_images']} images; boxes: "
                   f"{result['box_source']})", ("iou_mean", "iou_pooled", "n_images"), result,
                   "object_segmentation")


RUNNERS = {"depth": run_depth, "odometry": run_odometry, "flow": run_flow, "motion": run_motion,
           "scene_flow": run_scene_flow, "object_segmentation": run_object_segmentation}


def main(argv):
    if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
        raise app.UsageError(
            f"usage: python -m coopnet_tf.evaluate {{{','.join(SUBCOMMANDS)}}} --flags "
            f"(got {argv[1:]})")
    start = time.time()
    try:
        RUNNERS[argv[1]]()
    except (InputError, FileNotFoundError) as err:
        sys.exit(f"evaluate {argv[1]}: error: {err}")
    logging.info("%s evaluation done in %.1f s", argv[1], time.time() - start)


def run(argv=None):
    """Console entry: defines the flags, then runs the absl app."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    app.run(main, argv=argv if argv is not None else sys.argv)


if __name__ == "__main__":
    run()
