r"""Reproduces CoopNet's central claim on the synthetic world, where the ground truth is exact.

    python benchmarks/reproduce_synthetic.py                       # the default run (CPU)
    python benchmarks/reproduce_synthetic.py --seeds=0,1,2 --steps_per_epoch=300

Defaults: seed 0, 5 epochs x 90 steps at 64x192: a shared burn-in of 3 epochs, then 2
epochs per method (lr 1e-4, then 1e-5); about 30 min on a 2-core CPU per seed. The
committed results are ``--seeds=0,1`` (docs/benchmarks.md).
    python benchmarks/reproduce_synthetic.py --eval_only          # re-evaluate trained runs

Trains ``baseline`` (Table 4 row 1), ``glnet_min`` (row 2), ``coopnet`` (V = V_η ∩ V_ζ)
and ``coopnet_no_vzeta`` (V = V_η, ``use_flow_prior=False``) through the project's own
training code (`coopnet_tf.training.loop.train_and_evaluate`, configured by
``gin/synthetic.gin`` + gin bindings on ``train_and_evaluate`` / ``make_apportionment``),
on the SAME synthetic dataset (with a raised share of moving objects), with the same seeds
(data order, augmentation, per-step randomness and the networks' initialisation via
``keras.utils.set_random_seed``) and the same number of steps; each run has its own
``model_dir`` under ``--model_root`` (default ``<output_dir>/runs``, git-ignored). The
repository's ``gin/`` is copied to ``<model_root>/gin_snapshot`` when training starts and
every run parses that copy. Finished runs are not retrained (re-running with more seeds
trains only the new ones); ``--eval_only`` re-evaluates and keeps, in the JSON, how the
models were trained (``training_run``).

Shared burn-in (default ``--share_burn_in``): in the training protocol every method is
trained identically during the burn-in epochs (Monodepth2 loss for depth/pose, uniform
flow weights: ``CoopTrainStep`` uses the coopnet strategy with ``use_quantiles=False``, or
the baseline strategy for methods without quantiles, which is the same loss), and the data
order and every per-step random draw are functions of (seed, step) only. So the burn-in is
trained ONCE per seed (with the coopnet configuration, whose P² layer estimates the
quantiles during the last burn-in epoch), its checkpoint is copied into every method's
``model_dir``, and each method resumes from it with its own apportionment — the same
result as training each from scratch, at a fraction of the cost. ``--noshare_burn_in``
trains every run from scratch.

Evaluation on the held-out TEST sequences of the same world (never seen in training):

* depth: AbsRel / RMSE after per-image median scaling (standard protocol, GT range
  (1e-3, 80) m, whole image, no crop), on all, static and moving pixels; a pixel is moving
  when the GT moving mask is set for any of its sources. The subsets are pooled over
  pixels (the per-image scale is fitted on all valid pixels of the image); the standard
  per-image-averaged metrics on all pixels are reported too (``depth_standard``);
* pose: ATE of Zhou et al. on 5-frame snippets of the trajectory chained from the
  predicted T_{k->k+1} of each test sequence (``ate5``), and the per-snippet 3-frame
  scale-aligned ATE of [t-1, t, t+1] (``ate3``); means over snippets;
* flow: EPE (px) of F_{t->s} on static / moving / all pixels (pooled, both sources, GT
  flow is defined on every pixel, occluded or not);
* "pixel in V" as a static-pixel detector (per pixel and source; GT static = not moving
  for that source): precision P(static | in V), recall P(in V | static), the base rate
  P(static), the fraction of pixels in V and the leak P(in V | moving). V is computed with
  the trained networks and (``V_frozen``) the final frozen P² quantiles of the coopnet runs'
  checkpoints, and (``V_testq``, for EVERY method including baseline/glnet_min) with exact
  quantiles of Δ / Δflow estimated on the test set itself;
* Δ = Φ_D − Φ_F densities for all / static / moving pixels (GT masks, non-occluded
  pixels): the Fig. 1-style plot ``delta_density.png``.

Writes ``<output_dir>/reproduce_synthetic.json`` (every number per seed, the means and
spreads, metadata: machine, versions, command, date, load) and
``<output_dir>/reproduce_synthetic.md`` (the tables). Not part of the test suite
(``tests/test_benchmarks_smoke.py`` runs it at a tiny setting).
"""
import argparse
import dataclasses
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

METHODS = {
    "baseline": ["make_apportionment.name = 'baseline'"],
    "glnet_min": ["make_apportionment.name = 'glnet_min'"],
    "coopnet": ["make_apportionment.name = 'coopnet'",
                "make_apportionment.use_flow_prior = True"],
    "coopnet_no_vzeta": ["make_apportionment.name = 'coopnet'",
                         "make_apportionment.use_flow_prior = False"],
}
BURN_IN_METHOD = "coopnet"   # trains the shared burn-in (and estimates the P² quantiles)
DEPTH_RANGE = (1e-3, 80.0)
SUBSETS = ("all", "static", "moving")


@dataclasses.dataclass
class Config:
    output_dir: str = "benchmarks/results"
    model_root: Optional[str] = None          # default <output_dir>/runs
    methods: Sequence[str] = tuple(METHODS)
    seeds: Sequence[int] = (0,)
    height: int = 64
    width: int = 192
    num_epochs: int = 5
    steps_per_epoch: int = 90
    burn_in_epochs: int = 3
    lr_boundary_epoch: int = 4
    batch_size: int = 4
    share_burn_in: bool = True
    # the world: synthetic.gin's sizes, more objects, 3/4 of them moving (~10 % of pixels)
    num_sequences: int = 12
    num_val_sequences: int = 2
    num_test_sequences: int = 4
    frames_per_sequence: int = 40
    num_objects: int = 20
    moving_fraction: float = 0.75
    world_seed: int = 0
    cache_dir: Optional[str] = None
    gin_file: str = "synthetic.gin"
    extra_bindings: Sequence[str] = ()
    run_eagerly: bool = False
    max_test_snippets: Optional[int] = None
    eval_only: bool = False
    plot: bool = True
    output_name: str = "reproduce_synthetic"
    progress: bool = False


# ------------------------------------------------------------------------ data ----

def world_kwargs(cfg: Config) -> Dict[str, object]:
    return dict(height=cfg.height, width=cfg.width, num_sequences=cfg.num_sequences,
                num_val_sequences=cfg.num_val_sequences,
                num_test_sequences=cfg.num_test_sequences,
                frames_per_sequence=cfg.frames_per_sequence, num_objects=cfg.num_objects,
                moving_fraction=cfg.moving_fraction, seed=cfg.world_seed)


def ensure_dataset(cfg: Config) -> str:
    from coopnet_tf.data import synthetic  # pylint: disable=import-outside-toplevel
    return synthetic.ensure_synthetic_dataset(cache_dir=cfg.cache_dir, progress=cfg.progress,
                                              **world_kwargs(cfg))


# -------------------------------------------------------------------- training ----

def gin_bindings(cfg: Config, method: str, seed: int) -> List[str]:
    b = [f"ensure_synthetic_dataset.{k} = {v!r}" for k, v in world_kwargs(cfg).items()]
    if cfg.cache_dir:
        b.append(f"ensure_synthetic_dataset.cache_dir = {cfg.cache_dir!r}")
    b += [
        "ensure_synthetic_dataset.progress = False",
        f"train_and_evaluate.height = {cfg.height}",
        f"train_and_evaluate.width = {cfg.width}",
        f"train_and_evaluate.batch_size = {cfg.batch_size}",
        f"train_and_evaluate.num_epochs = {cfg.num_epochs}",
        f"train_and_evaluate.steps_per_epoch = {cfg.steps_per_epoch}",
        f"train_and_evaluate.burn_in_epochs = {cfg.burn_in_epochs}",
        f"train_and_evaluate.seed = {seed}",
        f"train_and_evaluate.checkpoint_every_steps = {cfg.steps_per_epoch}",
        "train_and_evaluate.keep_checkpoints = 1",
        "train_and_evaluate.image_every_steps = 0",
        f"make_learning_rate_schedule.boundary_epochs = ({cfg.lr_boundary_epoch},)",
    ]
    b += METHODS[method]
    b += list(cfg.extra_bindings)
    return b


def _train(cfg: Config, model_dir: str, method: str, seed: int,
           stop_at_step: Optional[int] = None) -> Dict[str, float]:
    import gin  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel

    from coopnet_tf import train as train_lib  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import loop  # pylint: disable=import-outside-toplevel

    gin.clear_config()
    keras.backend.clear_session()
    snapshot = _gin_snapshot(cfg)
    prefixes = getattr(gin.config, "_LOCATION_PREFIXES", None)
    if prefixes is not None and snapshot not in prefixes:
        prefixes.insert(0, snapshot)   # looked up before the repository's gin/
    train_lib.parse_gin([cfg.gin_file], gin_bindings(cfg, method, seed))
    keras.utils.set_random_seed(int(seed))
    kwargs = dict(model_dir=model_dir, progress=cfg.progress)
    if stop_at_step is not None:
        kwargs["stop_at_step"] = int(stop_at_step)
    if cfg.run_eagerly:
        kwargs["run_eagerly"] = True
    result = loop.train_and_evaluate(**kwargs)
    gin.clear_config()
    return result


def _previous_training(cfg: Config) -> Optional[Dict[str, object]]:
    """With --eval_only: the training info (per run) and the metadata/timing of the run
    that trained the models, from the JSON an earlier invocation wrote (kept, so that
    re-evaluating does not lose how the models were trained)."""
    import json  # pylint: disable=import-outside-toplevel
    path = os.path.join(cfg.output_dir, f"{cfg.output_name}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        old = json.load(f)
    if "training_run" in old:            # already a re-evaluation: pass it on
        training_run = old["training_run"]
    else:
        training_run = {"metadata": old.get("metadata"), "timing_seconds":
                        old.get("timing_seconds"), "config": old.get("config")}
    info = {k: v.get("training") for k, v in old.get("per_run", {}).items()}
    return {"train_info": info, "training_run": training_run}


def _gin_snapshot(cfg: Config) -> str:
    """A copy of the repository's gin/ taken once per benchmark, so that every run parses
    the same config files even if gin/ is edited while the benchmark runs."""
    root = cfg.model_root or os.path.join(cfg.output_dir, "runs")
    path = os.path.abspath(os.path.join(root, "gin_snapshot"))
    if not os.path.isdir(path):
        shutil.copytree(common.REPO_ROOT / "gin", path)
    return path


def _copy_run(src: str, dst: str) -> None:
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("summaries", "best"))


def train_all(cfg: Config, model_root: str) -> Dict[str, Dict[str, object]]:
    """Trains every (method, seed) run; returns per-run training info."""
    info: Dict[str, Dict[str, object]] = {}
    total_steps = cfg.num_epochs * cfg.steps_per_epoch
    burn_steps = cfg.burn_in_epochs * cfg.steps_per_epoch
    for seed in cfg.seeds:
        burn_dir = None
        burn_seconds = 0.0
        if cfg.share_burn_in and 0 < burn_steps < total_steps:
            burn_dir = os.path.join(model_root, f"seed{seed}", "_burn_in")
            start = time.time()
            if not _finished(burn_dir, burn_steps):
                print(f"[reproduce] seed {seed}: shared burn-in, {burn_steps} steps", flush=True)
                _train(cfg, burn_dir, BURN_IN_METHOD, seed, stop_at_step=burn_steps)
            burn_seconds = time.time() - start
        for method in cfg.methods:
            run_dir = os.path.join(model_root, f"seed{seed}", method)
            start = time.time()
            if not _finished(run_dir, total_steps):
                if burn_dir is not None:
                    _copy_run(burn_dir, run_dir)
                print(f"[reproduce] seed {seed}: {method}, to step {total_steps}", flush=True)
                result = _train(cfg, run_dir, method, seed)
            else:
                result = {}
            info[f"{method}/seed{seed}"] = {
                "model_dir": run_dir, "train_seconds": round(time.time() - start, 1),
                "shared_burn_in_seconds": round(burn_seconds, 1),
                "final_validation": {k: v for k, v in result.items()
                                     if isinstance(v, (int, float))}}
    return info


def _finished(model_dir: str, steps: int) -> bool:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return path is not None and path.rsplit("-", 1)[-1].isdigit() and \
        int(path.rsplit("-", 1)[-1]) >= steps


# ------------------------------------------------------------------ evaluation ----

def _build_eval(model_dir: str, eager: bool = False):
    """Restores a run's networks and (when it has them) its frozen P² quantiles."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf import export  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training.step import (  # pylint: disable=import-outside-toplevel
        CoopTrainStep, LossWeights, Phase, StepOptions)

    keras.backend.clear_session()
    depth_net, pose_net, flow_net, info = export.restore_networks(model_dir)
    q = export.query_config
    options = StepOptions(min_depth=float(q("step_options.min_depth", 0.1)),
                          max_depth=float(q("step_options.max_depth", 100.0)),
                          rotation_mode=info["rotation_mode"],
                          occlusion_threshold=float(q("step_options.occlusion_threshold", 0.2)))
    eta = float(q("make_apportionment.eta", apportion.DEFAULT_ETA))
    zeta = float(q("make_apportionment.zeta", apportion.DEFAULT_ZETA))
    strategy = apportion.CoopNetStrategy(eta=eta, zeta=zeta, jit_compile=False)
    layer = strategy.quantile_layer
    tf.train.Checkpoint(quantiles=layer).restore(info["checkpoint"]).expect_partial()
    frozen = None
    if float(tf.reduce_min(tf.convert_to_tensor(layer.current_valid))) > 0.5:
        frozen = {
            "eta": [float(layer.current(apportion.DELTA, p)) for p in strategy.eta_probs],
            "zeta_x": [float(layer.current(apportion.DELTA_FLOW_X, p)) for p in strategy.zeta_probs],
            "zeta_y": [float(layer.current(apportion.DELTA_FLOW_Y, p)) for p in strategy.zeta_probs],
        }
    step = CoopTrainStep(depth_net, pose_net, flow_net, keras.optimizers.Adam(),
                         keras.optimizers.Adam(), apportion.make_strategy("baseline"),
                         weights=LossWeights(gc=0.0, fb=0.0, smooth=0.0, ep=0.0, var=0.0),
                         options=options)
    phase = Phase(burn_in=True, update_quantiles=False)
    forward = lambda batch: step.forward(batch, phase, False)  # noqa: E731
    if not eager:
        forward = tf.function(forward)
    return forward, frozen, info, (eta, zeta)


def collect_predictions(model_dir: str, test_pattern: str, height: int, width: int,
                        max_snippets: Optional[int] = None, eager: bool = False):
    """Runs the trained networks over the test split; returns numpy arrays."""
    from coopnet_tf import specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.data import pipeline  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel

    forward, frozen, info, (eta, zeta) = _build_eval(model_dir, eager)
    ds = pipeline.make_dataset(test_pattern, batch_size=8, height=height, width=width,
                               training=False, with_ground_truth=True, deterministic=True)
    keys = ("depth", "transforms", "flow", "delta", "dflow", "non_occ", "gt_depth",
            "gt_pose", "gt_flow", "moving", "seq", "frame")
    out = {k: [] for k in keys}
    seen = 0
    for batch in ds:
        fwd = forward({k: v for k, v in batch.items()
                       if k in (specs.KEY_FRAMES, specs.KEY_FRAMES_AUG, specs.KEY_INTRINSICS)})
        out["depth"].append(fwd["depths"][0].numpy()[..., 0])
        out["transforms"].append(np.stack([t.numpy() for t in fwd["transforms"]], 1))
        out["flow"].append(fwd["optical_flow"].numpy())
        out["delta"].append(apportion.compute_delta(fwd["phi_rigid"][0],
                                                    fwd["phi_flow"][0]).numpy()[..., 0])
        out["dflow"].append(apportion.compute_delta_flow(fwd["rigid_flow"],
                                                         fwd["optical_flow"]).numpy())
        out["non_occ"].append(fwd["non_occluded"].numpy()[..., 0] > 0.5)
        out["gt_depth"].append(batch[specs.KEY_GT_DEPTH].numpy()[..., 0])
        out["gt_pose"].append(batch[specs.KEY_GT_POSE].numpy())
        out["gt_flow"].append(batch[specs.KEY_GT_FLOW].numpy())
        out["moving"].append(batch[specs.KEY_GT_MOVING].numpy()[..., 0] > 0.5)
        out["seq"].append(batch[specs.KEY_SEQUENCE_ID].numpy())
        out["frame"].append(batch[specs.KEY_FRAME_ID].numpy())
        seen += int(batch[specs.KEY_FRAMES].shape[0])
        if max_snippets and seen >= max_snippets:
            break
    arrays = {k: np.concatenate(v, 0) for k, v in out.items()}
    if max_snippets:
        arrays = {k: v[:max_snippets] for k, v in arrays.items()}
    return arrays, frozen, (eta, zeta), info


def depth_metrics(gt: np.ndarray, pred: np.ndarray, moving_any: np.ndarray) -> Dict[str, object]:
    """Median-scaled depth errors pooled over the pixels of all / static / moving."""
    from coopnet_tf.eval import depth as depth_eval  # pylint: disable=import-outside-toplevel
    lo, hi = DEPTH_RANGE
    sums = {s: np.zeros(3) for s in SUBSETS}   # |d|/gt, d^2, count
    rel_std = []                                 # collapse detector: spread of the prediction
    for i in range(len(gt)):
        rel_std.append(float(np.std(pred[i]) / max(float(np.mean(pred[i])), 1e-12)))
        valid = (gt[i] > lo) & (gt[i] < hi)
        if not valid.any():
            continue
        ratio = np.median(gt[i][valid]) / np.median(pred[i][valid])
        p = np.clip(pred[i].astype(np.float64) * ratio, lo, hi)
        g = gt[i].astype(np.float64)
        for subset, m in (("all", valid), ("static", valid & ~moving_any[i]),
                          ("moving", valid & moving_any[i])):
            d = p[m] - g[m]
            sums[subset] += [np.sum(np.abs(d) / g[m]), np.sum(d * d), m.sum()]
    result = {}
    for s, (ar, sq, n) in sums.items():
        result[s] = {"abs_rel": ar / n if n else None, "rmse": math.sqrt(sq / n) if n else None,
                     "pixels": int(n)}
    std = depth_eval.evaluate_depth(list(gt), 1.0 / np.maximum(pred, 1e-6), protocol="full",
                                    min_depth=lo, max_depth=hi)
    result["standard"] = {k: std[k] for k in depth_eval.METRIC_NAMES}
    # std/mean of the predicted depth within an image, averaged over images (GT: see
    # "gt_depth_rel_std"); ~0 means the depth network collapsed to a constant map.
    result["pred_depth_rel_std"] = float(np.mean(rel_std))
    gclip = np.clip(gt, lo, hi)
    result["gt_depth_rel_std"] = float(np.mean(np.std(gclip, axis=(1, 2))
                                               / np.mean(gclip, axis=(1, 2))))
    return result


def pose_metrics(transforms: np.ndarray, gt_pose: np.ndarray, seq: np.ndarray,
                 frame: np.ndarray) -> Dict[str, object]:
    """ATE on 5-frame snippets of chained T_{k->k+1} (Zhou) and 3-frame per snippet."""
    from coopnet_tf import specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.eval import odometry  # pylint: disable=import-outside-toplevel
    nxt = specs.SOURCE_INDICES.index(specs.TARGET_INDEX + 1)
    prv = specs.SOURCE_INDICES.index(specs.TARGET_INDEX - 1)
    ate3 = []
    for t_pred, t_gt in zip(transforms, gt_pose):
        # positions of [t-1, t, t+1] in the target camera: c_s = inv(T_t->s)[:3, 3]
        pts = []
        for mats in (t_pred, t_gt):
            inv = np.linalg.inv(mats.astype(np.float64))
            p = np.stack([inv[prv][:3, 3], np.zeros(3), inv[nxt][:3, 3]])
            pts.append(p - p[0])   # relative to the snippet's first frame (as Zhou et al.)
        ate3.append(odometry.compute_ate(pts[1], pts[0]))
    ate5 = []
    for s in np.unique(seq):
        idx = np.where(seq == s)[0]
        idx = idx[np.argsort(frame[idx])]
        frames = frame[idx]
        # split into runs of consecutive target frames
        breaks = np.where(np.diff(frames) != 1)[0] + 1
        for run in np.split(idx, breaks):
            if len(run) < 4:
                continue
            gt_traj = odometry.chain_relative_poses(gt_pose[run, nxt])
            pred_traj = odometry.chain_relative_poses(transforms[run, nxt])
            ate5.extend(odometry.snippet_ate(gt_traj, pred_traj, 5).tolist())
    return {"ate5_mean": float(np.mean(ate5)) if ate5 else None,
            "ate5_std": float(np.std(ate5)) if ate5 else None, "ate5_snippets": len(ate5),
            "ate3_mean": float(np.mean(ate3)), "ate3_std": float(np.std(ate3)),
            "ate3_snippets": len(ate3)}


def flow_metrics(flow: np.ndarray, gt_flow: np.ndarray, moving: np.ndarray) -> Dict[str, object]:
    epe = np.sqrt(np.sum((flow.astype(np.float64) - gt_flow) ** 2, -1))
    return {"epe_all": float(epe.mean()),
            "epe_static": float(epe[~moving].mean()) if (~moving).any() else None,
            "epe_moving": float(epe[moving].mean()) if moving.any() else None}


def v_detector(v: np.ndarray, moving: np.ndarray) -> Dict[str, float]:
    static = ~moving
    tp = float(np.sum(v & static))
    n_v = float(v.sum())
    return {"precision_static": tp / n_v if n_v else None,
            "recall_static": tp / float(static.sum()) if static.any() else None,
            "base_rate_static": float(static.mean()),
            "fraction_in_v": float(v.mean()),
            "moving_in_v": float(np.sum(v & moving) / moving.sum()) if moving.any() else None}


def compute_v(delta, dflow, bounds_eta, bounds_x, bounds_y, use_flow_prior=True):
    v = (delta >= bounds_eta[0]) & (delta <= bounds_eta[1])
    if use_flow_prior:
        v &= (dflow[..., 0] >= bounds_x[0]) & (dflow[..., 0] <= bounds_x[1])
        v &= (dflow[..., 1] >= bounds_y[0]) & (dflow[..., 1] <= bounds_y[1])
    return v


def v_metrics(arr, frozen, eta_zeta, method: str) -> Dict[str, object]:
    eta, zeta = eta_zeta
    delta, dflow, dom, moving = arr["delta"], arr["dflow"], arr["non_occ"], arr["moving"]
    use_prior = method != "coopnet_no_vzeta"
    result = {"use_flow_prior": use_prior}
    qe = np.quantile(delta[dom], [0.5 - eta, 0.5 + eta])
    qx = np.quantile(dflow[..., 0][dom], [0.5 - zeta, 0.5 + zeta])
    qy = np.quantile(dflow[..., 1][dom], [0.5 - zeta, 0.5 + zeta])
    result["test_quantiles"] = {"eta": qe.tolist(), "zeta_x": qx.tolist(), "zeta_y": qy.tolist()}
    result["V_testq"] = v_detector(compute_v(delta, dflow, qe, qx, qy, use_prior), moving)
    result["V_eta_testq"] = v_detector(compute_v(delta, dflow, qe, qx, qy, False), moving)
    if frozen is not None and method.startswith("coopnet"):
        result["frozen_quantiles"] = frozen
        result["V_frozen"] = v_detector(compute_v(delta, dflow, frozen["eta"], frozen["zeta_x"],
                                                  frozen["zeta_y"], use_prior), moving)
    # Δ itself on the non-occluded pixels: static vs moving
    st, mv = dom & ~moving, dom & moving
    result["delta_stats"] = {
        "mean_static": float(delta[st].mean()) if st.any() else None,
        "mean_moving": float(delta[mv].mean()) if mv.any() else None,
        "p_negative_static": float((delta[st] < 0).mean()) if st.any() else None,
        "p_negative_moving": float((delta[mv] < 0).mean()) if mv.any() else None,
        "fraction_non_occluded": float(dom.mean()),
    }
    return result


def evaluate_run(model_dir: str, method: str, test_pattern: str, cfg: Config):
    arr, frozen, eta_zeta, _ = collect_predictions(model_dir, test_pattern, cfg.height,
                                                   cfg.width, cfg.max_test_snippets,
                                                   eager=cfg.run_eagerly)
    moving_any = arr["moving"].any(axis=1)
    metrics = {
        "depth": depth_metrics(arr["gt_depth"], arr["depth"], moving_any),
        "pose": pose_metrics(arr["transforms"], arr["gt_pose"], arr["seq"], arr["frame"]),
        "flow": flow_metrics(arr["flow"], arr["gt_flow"], arr["moving"]),
        "v": v_metrics(arr, frozen, eta_zeta, method),
        "test_snippets": int(len(arr["depth"])),
        "moving_pixel_fraction": float(moving_any.mean()),
    }
    # Δ samples for the plot (non-occluded pixels), subsampled
    dom = arr["non_occ"]
    rng = np.random.default_rng(0)
    samples = {}
    for name, m in (("all", dom), ("static", dom & ~arr["moving"]),
                    ("moving", dom & arr["moving"])):
        vals = arr["delta"][m]
        if len(vals) > 200_000:
            vals = rng.choice(vals, 200_000, replace=False)
        samples[name] = vals
    return metrics, samples, arr


def trivial_reference(arr) -> Dict[str, object]:
    """What a network that learned nothing scores: constant depth, identity pose, zero flow."""
    moving_any = arr["moving"].any(axis=1)
    eye = np.broadcast_to(np.eye(4, dtype=np.float32), arr["transforms"].shape)
    return {
        "depth": depth_metrics(arr["gt_depth"], np.ones_like(arr["depth"]), moving_any),
        "pose": pose_metrics(eye, arr["gt_pose"], arr["seq"], arr["frame"]),
        "flow": flow_metrics(np.zeros_like(arr["flow"]), arr["gt_flow"], arr["moving"]),
    }


# ----------------------------------------------------------------- reporting ----

TABLE_METRICS = [
    ("AbsRel all", ("depth", "all", "abs_rel")),
    ("AbsRel static", ("depth", "static", "abs_rel")),
    ("AbsRel moving", ("depth", "moving", "abs_rel")),
    ("RMSE all", ("depth", "all", "rmse")),
    ("RMSE static", ("depth", "static", "rmse")),
    ("RMSE moving", ("depth", "moving", "rmse")),
    ("depth std/mean", ("depth", "pred_depth_rel_std")),
    ("ATE-5", ("pose", "ate5_mean")),
    ("ATE-3", ("pose", "ate3_mean")),
    ("EPE static", ("flow", "epe_static")),
    ("EPE moving", ("flow", "epe_moving")),
]
V_METRICS = [
    ("V frozen: precision", ("v", "V_frozen", "precision_static")),
    ("V frozen: recall", ("v", "V_frozen", "recall_static")),
    ("V frozen: |V|/px", ("v", "V_frozen", "fraction_in_v")),
    ("V frozen: P(V|moving)", ("v", "V_frozen", "moving_in_v")),
    ("V test-q: precision", ("v", "V_testq", "precision_static")),
    ("V test-q: recall", ("v", "V_testq", "recall_static")),
    ("V test-q: P(V|moving)", ("v", "V_testq", "moving_in_v")),
    ("P(static)", ("v", "V_testq", "base_rate_static")),
    ("mean Δ static", ("v", "delta_stats", "mean_static")),
    ("mean Δ moving", ("v", "delta_stats", "mean_moving")),
]


def _get(d, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def summarise(per_run: Dict[str, Dict], methods, seeds) -> Dict[str, Dict]:
    summary = {}
    for method in methods:
        runs = [per_run.get(f"{method}/seed{s}") for s in seeds]
        runs = [r for r in runs if r is not None]
        summary[method] = {name: common.mean_spread(_get(r, path) for r in runs)
                           for name, path in TABLE_METRICS + V_METRICS}
    # paired differences against coopnet on the moving-pixel depth error
    paired = {}
    for other in ("baseline", "glnet_min"):
        for key, path in (("abs_rel_moving", ("depth", "moving", "abs_rel")),
                          ("rmse_moving", ("depth", "moving", "rmse")),
                          ("abs_rel_all", ("depth", "all", "abs_rel")),
                          ("ate5", ("pose", "ate5_mean"))):
            diffs = []
            for s in seeds:
                a = _get(per_run.get(f"coopnet/seed{s}", {}), path)
                b = _get(per_run.get(f"{other}/seed{s}", {}), path)
                if a is not None and b is not None:
                    diffs.append(a - b)
            if diffs:
                paired[f"coopnet_minus_{other}/{key}"] = {
                    "per_seed": diffs, "mean": float(np.mean(diffs)),
                    "coopnet_better_in_seeds": int(sum(d < 0 for d in diffs)),
                    "seeds": len(diffs)}
    summary["_paired"] = paired
    return summary


def tables_markdown(summary, methods, seeds) -> str:
    spread = "mean ± half-range over seeds" if len(seeds) > 1 else "one seed"
    parts = [f"Test split of the synthetic world; {spread} (seeds {list(seeds)}). "
             "AbsRel/RMSE: median-scaled, pooled over pixels of the subset. ATE in metres "
             "(5-frame: Zhou et al. on chained pairs; 3-frame: per snippet). EPE in px.\n"]
    parts.append(common.markdown_table(
        ["method"] + [n for n, _ in TABLE_METRICS],
        [[m] + [common.fmt_mean_spread(summary[m][n]) for n, _ in TABLE_METRICS]
         for m in methods]))
    parts.append("\n\n\"Pixel in V\" as a static-pixel detector (per pixel and source). "
                 "Frozen: the run's final P² quantiles (coopnet runs only); test-q: exact "
                 "quantiles of the test set (every method; V = V_η ∩ V_ζ, V_η for "
                 "coopnet_no_vzeta).\n\n")
    parts.append(common.markdown_table(
        ["method"] + [n for n, _ in V_METRICS],
        [[m] + [common.fmt_mean_spread(summary[m][n]) for n, _ in V_METRICS]
         for m in methods if V_METRICS[0][0] in summary[m]]))
    paired = summary.get("_paired", {})
    if paired:
        parts.append("\n\nPaired differences (coopnet − other, per seed; negative = coopnet "
                     "better):\n\n")
        parts.append(common.markdown_table(
            ["comparison", "per seed", "mean", "coopnet better in"],
            [[k, ", ".join(common.fmt(v) for v in d["per_seed"]), common.fmt(d["mean"]),
              f"{d['coopnet_better_in_seeds']}/{d['seeds']} seeds"] for k, d in paired.items()]))
    return "\n".join(parts) + "\n"


def plot_delta_density(path: str, samples_by_method: Dict[str, Dict[str, np.ndarray]],
                       quantiles_by_method: Dict[str, Optional[Dict]], title: str = "") -> str:
    from coopnet_tf.eval import plots  # pylint: disable=import-outside-toplevel
    plt = plots.pyplot()
    methods = list(samples_by_method)
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False)
    all_vals = np.concatenate([s["all"] for s in samples_by_method.values() if len(s["all"])])
    lo, hi = np.percentile(all_vals, [0.5, 99.5]) if len(all_vals) else (-0.5, 0.5)
    bins = np.linspace(lo, hi, 121)
    for ax, method in zip(axes[0], methods):
        s = samples_by_method[method]
        for name, colour in (("all", "k"), ("static", "tab:blue"), ("moving", "tab:red")):
            vals = s[name]
            if len(vals) == 0:
                continue
            hist, edges = np.histogram(vals, bins=bins, density=True)
            ax.plot(0.5 * (edges[1:] + edges[:-1]), hist, color=colour, lw=1.4,
                    label=f"{name} ({len(vals)})")
        q = quantiles_by_method.get(method)
        if q:
            for b in q["eta"]:
                ax.axvline(b, color="tab:green", ls="--", lw=1)
        ax.axvline(0.0, color="grey", lw=0.6)
        ax.set_yscale("log")
        ax.set_title(method)
        ax.set_xlabel("Δ = Φ_D − Φ_F")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("density (log)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------- main ----

def run(cfg: Config, argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Trains (unless eval_only), evaluates, writes JSON + markdown (+ plot). Returns the
    JSON payload."""
    start = time.time()
    meta = common.run_metadata(argv)
    model_root = cfg.model_root or os.path.join(cfg.output_dir, "runs")
    os.makedirs(cfg.output_dir, exist_ok=True)
    t0 = time.time()
    data_dir = ensure_dataset(cfg)
    data_seconds = time.time() - t0
    from coopnet_tf.data import synthetic  # pylint: disable=import-outside-toplevel
    test_pattern = synthetic.file_pattern(data_dir, "test")
    t0 = time.time()
    if not cfg.eval_only:
        snap = _gin_snapshot(dataclasses.replace(cfg, model_root=model_root))
        shutil.rmtree(snap)
        _gin_snapshot(dataclasses.replace(cfg, model_root=model_root))
    train_info = {} if cfg.eval_only else train_all(cfg, model_root)
    train_seconds = time.time() - t0
    previous = _previous_training(cfg) if cfg.eval_only else None
    if previous is not None:
        train_info = previous["train_info"]
    per_run, samples, quantiles, per_run_extra = {}, {}, {}, {}
    t0 = time.time()
    for seed in cfg.seeds:
        for method in cfg.methods:
            run_dir = os.path.join(model_root, f"seed{seed}", method)
            print(f"[reproduce] evaluating {method} seed {seed}", flush=True)
            metrics, s, arr = evaluate_run(run_dir, method, test_pattern, cfg)
            if "trivial" not in per_run_extra:
                per_run_extra["trivial"] = trivial_reference(arr)
            del arr
            metrics["training"] = train_info.get(f"{method}/seed{seed}")
            per_run[f"{method}/seed{seed}"] = metrics
            if seed == cfg.seeds[0]:
                samples[method] = s
                quantiles[method] = metrics["v"].get("frozen_quantiles")
    eval_seconds = time.time() - t0
    summary = summarise(per_run, cfg.methods, cfg.seeds)
    trivial = per_run_extra.get("trivial")
    if trivial is not None:
        summary["trivial (learned nothing)"] = {
            name: common.mean_spread([_get(trivial, path)]) for name, path in TABLE_METRICS}
    md = tables_markdown(summary, list(cfg.methods) + (["trivial (learned nothing)"]
                                                       if trivial is not None else []),
                         cfg.seeds)
    payload = {
        "benchmark": "reproduce_synthetic",
        "config": dataclasses.asdict(cfg),
        "dataset": {"path": data_dir, "world": world_kwargs(cfg),
                    "summary": synthetic.dataset_summary(data_dir)},
        "protocol": {
            "shared_burn_in": bool(cfg.share_burn_in),
            "total_steps": cfg.num_epochs * cfg.steps_per_epoch,
            "burn_in_steps": cfg.burn_in_epochs * cfg.steps_per_epoch,
            "depth": "median scaling per image, GT in (1e-3, 80) m, whole image; subsets "
                     "pooled over pixels; moving = GT moving for any source",
            "pose": "ate5: Zhou et al. 5-frame snippets of trajectories chained from the "
                    "T_{k->k+1} of consecutive test snippets; ate3: per snippet, frames "
                    "[t-1, t, t+1], scale-aligned (SfMLearner compute_ate)",
            "flow": "EPE of F_{t->s}, both sources, all pixels (occluded included)",
            "v": "V_frozen: final frozen P² quantiles of the coopnet runs; V_testq: exact "
                 "quantiles of the test set (all methods)",
        },
        "timing_seconds": {"dataset": round(data_seconds, 1), "training": round(train_seconds, 1),
                           "evaluation": round(eval_seconds, 1)},
        "per_run": per_run,
        "trivial_reference": trivial,
        "summary": summary,
    }
    if cfg.plot and samples:
        title = (f"Δ densities on the test split (seed {cfg.seeds[0]}; non-occluded pixels, "
                 "GT moving masks; dashed: frozen V_η bounds)")
        payload["plot"] = plot_delta_density(
            os.path.join(cfg.output_dir, f"{cfg.output_name}_delta_density.png"), samples,
            quantiles, title)
    if previous is not None:
        payload["training_run"] = previous["training_run"]
    payload["metadata"] = common.finish_metadata(meta, start)
    json_path = common.write_json(os.path.join(cfg.output_dir, f"{cfg.output_name}.json"),
                                  payload)
    trained_by = ""
    if previous is not None and (previous["training_run"] or {}).get("metadata"):
        tm = previous["training_run"]["metadata"]
        trained_by = (f"Models trained by: `{tm.get('command')}` ({tm.get('date_utc')}, wall "
                      f"{tm.get('wall_seconds')} s, load {tm.get('load_average_start')} -> "
                      f"{tm.get('load_average_end')})  \n")
    header = (f"# Synthetic reproduction\n\n{trained_by}Command: `{meta['command']}`  \n"
              f"Date (UTC): {meta['date_utc']}; machine: {meta['machine']['cpu']} x "
              f"{meta['machine']['cpu_count']}; TF {meta['versions']['tensorflow']}; "
              f"load {meta['load_average_start']} -> {payload['metadata']['load_average_end']}; "
              f"wall {payload['metadata']['wall_seconds']} s\n\n")
    with open(os.path.join(cfg.output_dir, f"{cfg.output_name}.md"), "w") as f:
        f.write(header + md)
    print(md)
    print(f"[reproduce] wrote {json_path}", flush=True)
    return payload


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=d.output_dir)
    p.add_argument("--model_root", default=None,
                   help="where the runs' model_dirs go (default <output_dir>/runs)")
    p.add_argument("--methods", default=",".join(d.methods),
                   help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)))
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--num_epochs", type=int, default=d.num_epochs)
    p.add_argument("--steps_per_epoch", type=int, default=d.steps_per_epoch)
    p.add_argument("--burn_in_epochs", type=int, default=d.burn_in_epochs)
    p.add_argument("--lr_boundary_epoch", type=int, default=d.lr_boundary_epoch)
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--share_burn_in", action=argparse.BooleanOptionalAction,
                   default=d.share_burn_in)
    p.add_argument("--num_sequences", type=int, default=d.num_sequences)
    p.add_argument("--num_val_sequences", type=int, default=d.num_val_sequences)
    p.add_argument("--num_test_sequences", type=int, default=d.num_test_sequences)
    p.add_argument("--frames_per_sequence", type=int, default=d.frames_per_sequence)
    p.add_argument("--num_objects", type=int, default=d.num_objects)
    p.add_argument("--moving_fraction", type=float, default=d.moving_fraction)
    p.add_argument("--world_seed", type=int, default=d.world_seed)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--gin_file", default=d.gin_file)
    p.add_argument("--gin_bindings", action="append", default=[],
                   help="extra gin bindings for every run (repeatable)")
    p.add_argument("--run_eagerly", action="store_true")
    p.add_argument("--max_test_snippets", type=int, default=None)
    p.add_argument("--eval_only", action="store_true",
                   help="evaluate the runs already under --model_root")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--output_name", default=d.output_name)
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    return Config(
        output_dir=a.output_dir, model_root=a.model_root, methods=tuple(methods),
        seeds=tuple(int(s) for s in a.seeds.split(",") if s.strip()), height=a.height,
        width=a.width, num_epochs=a.num_epochs, steps_per_epoch=a.steps_per_epoch,
        burn_in_epochs=a.burn_in_epochs, lr_boundary_epoch=a.lr_boundary_epoch,
        batch_size=a.batch_size, share_burn_in=a.share_burn_in,
        num_sequences=a.num_sequences, num_val_sequences=a.num_val_sequences,
        num_test_sequences=a.num_test_sequences, frames_per_sequence=a.frames_per_sequence,
        num_objects=a.num_objects, moving_fraction=a.moving_fraction,
        world_seed=a.world_seed, cache_dir=a.cache_dir, gin_file=a.gin_file,
        extra_bindings=tuple(a.gin_bindings), run_eagerly=a.run_eagerly,
        max_test_snippets=a.max_test_snippets, eval_only=a.eval_only, plot=a.plot,
        output_name=a.output_name, progress=a.progress)


def main(argv=None):
    cfg = parse_args(argv)
    run(cfg, argv=[sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
