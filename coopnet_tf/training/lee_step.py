"""The train step of Lee et al. (ICCV 2021): depth + unified motion net, two-stage warping,
the three phases of their Table 1 (docs/lee.md, "Training").

Per replica and step, for the target t and each source s of the snippet:

1. Depth D_t, D_s (depth net, scale 0: Lee Sec. 4.1 uses a single-scale output).
2. Ego-motion: the motion net's ego branch on the pair in temporal order gives T_t->s
   (the pose net's layout and convention: input (a, b) -> T_a->b; (I_t, I_s, D_t, D_s)
   for s = t+1, (I_s, I_t, D_s, D_t) inverted for s = t−1 — fed in one fixed order the
   from-scratch synthetic training never found the forward motion, docs/lee.md).
   Stage 1 forward-projects the source with T_s->t = (T_t->s)^-1 (Lee Eq. 1) -> (I^ego, D^ego): one ego-motion serves both stages,
   so the residual only has to explain what that ego-motion leaves (Lee's footnote 1
   estimates T_2->1 from the reversed input instead).
3. Residual field (Lee Sec. 3.1, "Stage 2"): the residual branch on (I^ego, I_t, D^ego,
   D_t) — the paper's (I^ego_2, D^ego_2, I_2, D_2) in the net's channel layout (a, b,
   D_a, D_b), a = the ego-warped source, b = the target. The stage-1 products enter
   without gradient (z-buffered splatting); the images are the networks' (colour-jittered)
   frames. Output scale 0: r [B, H, W, 3], metres in the target camera.
4. Total motion X_s = R (X_t + r) + t, inverse warp of the (clean) source with D_t
   (Lee Eq. 2, `geometry.total_motion_warp`).
5. Losses (Lee Eq. 6): L^P1 = λ_p L_p + λ_g L_g + λ_s L_s + λ_h L_h;
   L^P2 = λ_mr L_mr + λ_ms L_ms + λ_mp L_mp + λ_mc L_mc (phases 2 and 3 only).
   L_p: photometric error (Eq. 2 of CoopNet, `photometric.photometric_error`) weighted by
   SC-SfMLearner's 1 − D_diff (no gradient through the weight), per-pixel minimum over
   the sources (`photometric.min_reprojection`, Monodepth2 auto-masking optional), on
   every pixel (`photometric_term`). L_g: the mean depth inconsistency D_diff. L_s:
   edge-aware disparity smoothness. L_g and L_h are off during the warm-up
   (`Phase.burn_in`). L_h: Struct2Depth's height prior on the target's boxes. L_mr: CSAC (Lee
   Alg. 1) on the target's boxes; L_ms (Eq. 7), L_mp, L_mc on the residual field.

Phases (`Phase.stage`, from `schedule.Stages` — Lee Table 1):

* ``phase1``: depth θ and ego-motion (encoder ω, ego branch φ) train, the residual is 0
  (its branch does not run); L^P1 only.
* ``phase2``: ω, φ and the residual branch ψ train; the depth net is frozen (inference
  mode, stop-gradient); L^P1 + L^P2.
* ``phase3``: everything trains; L^P1 + L^P2.

Two optimizers (depth, motion), one objective: a `GradientTape` per trained group. The
non-finite guard is CoopTrainStep's: a step with a non-finite loss or gradient on any
replica is skipped on every replica, BatchNorm statistics are restored and a counter
incremented; under loss scaling an overflow in either group skips both optimizers (no
half step).
"""
from typing import Dict, List, NamedTuple, Optional, Tuple

import keras
import tensorflow as tf

from coopnet_tf import geometry, specs
from coopnet_tf.losses import consistency, object_motion, photometric, smoothness
from coopnet_tf.models import disp_to_depth, motion_branches
from coopnet_tf.training.step import (Phase, count_nonfinite, grouped_gradients,
                                      guarded_update, nonfinite_counters, replica_scale,
                                      replica_seed, tf_variables, to_batch_source,
                                      to_source_major)

PHASE1, PHASE2, PHASE3 = "phase1", "phase2", "phase3"
PHASES = (PHASE1, PHASE2, PHASE3)
# the variable groups each phase trains (Lee Table 1); "motion_ego" = ω + φ (the
# motion net's ego branch, DAM ego attention included), "motion" = the whole motion net
TRAINED_GROUPS = {PHASE1: ("depth", "motion_ego"), PHASE2: ("motion",),
                  PHASE3: ("depth", "motion")}
# TensorBoard image kinds of the endpoints `diagnostics` adds (summaries.write_images)
IMAGE_KINDS = {"residual_magnitude": "heat", "attention": "heat", "warped_ego": "image",
               "ego_valid": "mask", "inliers": "mask"}


class LeeWeights(NamedTuple):
    """The weights Λ^P1, Λ^P2 of Lee Eq. 6; 0 switches a term off (and skips it).

    Lee Sec. 4.1: "every objective shows stable convergence when the magnitude of each
    weighted per-pixel loss (λL) is 0.05 times the weighted photometric loss (λ_p L_p)";
    their per-dataset values are in a supplement we do not have. Defaults: λ_p = 1; λ_g
    = 0.5 and λ_s = 0.1 are SC-SfMLearner's (whose L_p, L_g Lee uses); the others are
    our first guesses at that rule, not tuned (docs/lee.md, "Training").
    """
    p: float = 1.0      # λ_p  photometric
    g: float = 0.5      # λ_g  geometric consistency
    s: float = 0.1      # λ_s  edge-aware disparity smoothness
    h: float = 0.01     # λ_h  height prior (Struct2Depth)
    mr: float = 0.05    # λ_mr CSAC motion regularisation
    ms: float = 0.1     # λ_ms motion smoothness (Eq. 7)
    mp: float = 0.05    # λ_mp motion sparsity
    mc: float = 0.05    # λ_mc motion consistency


# loss term (``losses/<term>`` in TensorBoard) -> its `LeeWeights` field
PHOTOMETRIC = "photometric"
TERM_WEIGHTS = {PHOTOMETRIC: "p", "geometric": "g", "smooth_depth": "s", "height_prior": "h",
                "csac": "mr", "motion_smooth": "ms", "motion_sparsity": "mp",
                "motion_consistency": "mc"}


class LeeOptions(NamedTuple):
    """Static options of `LeeTrainStep` (gin: `factories.lee`)."""
    csac: bool = True             # L_mr on (Lee Table 3 "CSAC" column)
    min_depth: float = specs.MIN_DEPTH
    max_depth: float = specs.MAX_DEPTH
    rotation_mode: str = "axis_angle"
    automask: bool = True         # Monodepth2 auto-masking in L_p
    csac_alpha: float = 30.0      # α of the soft inlier count (Lee Eq. 4)
    csac_beta: float = 0.2        # β
    motion_smoothness_tau: float = 0.1   # τ of Lee Eq. 7
    # L_h's H_c per `data/boxes.CLASSES` id (m); None: DEFAULT_OBJECT_HEIGHT for every box
    class_heights: Optional[Tuple[float, ...]] = None
    gradient_clip_norm: Optional[float] = None
    jit_compile: bool = False     # XLA-compile the forward
    seed: int = 0


def _stack(tensors):
    return tf.concat(tensors, 0)


def predict_motion(ego_net, residual_net, target, source, depth_t, depth_s, K,
                   rotation_mode="axis_angle", with_residual=True, training=False,
                   source_earlier=None):
    """The motion net's two stages for pairs (target, source) (Lee Sec. 3.1).

    Ego branch on the pair in temporal order -> T_target->source: on (I_t, I_s, D_t, D_s)
    when the source follows the target, on (I_s, I_t, D_s, D_t) with the result inverted
    when it precedes it (``source_earlier``; the pose net's convention, docs/decisions.md
    C3: the branch always sees time running forwards, and its output for (a, b) is
    T_a->b). Stage 1 (Lee Eq. 1) forward-projects the source with T_target->source's
    inverse -> (I^ego, D^ego); the residual branch on (I^ego, I_t, D^ego, D_t), the
    stage-1 products without gradient.

    Args:
      ego_net, residual_net: `models.motion_branches` of the motion net.
      target, source: `[B, H, W, 3]` images in [0, 1].
      depth_t, depth_s: `[B, H, W, 1]` their depths.
      K: `[B, 3, 3]`.
      rotation_mode: the ego vector's parametrisation.
      with_residual: run stage 1 and the residual branch.
      training: the branches' mode.
      source_earlier: None (every source follows its target, e.g. serving's image_a ->
        image_b) or `[B]` bool: rows whose source precedes the target in time.

    Returns:
      dict of float32: ``vectors`` `[B, 6]` (the ego branch's raw output, T_a->b of the
      pair in temporal order), ``transforms`` `[B, 4, 4]` (T_target->source),
      ``attention`` (branch -> the DAM maps of ResLayers 2-4; empty without DAM); with
      the residual also ``residual`` `[B, H, W, 3]` (scale 0, m, target camera),
      ``warped_ego``, ``depth_ego``, ``ego_valid``.
    """
    first, second, depth_first, depth_second = target, source, depth_t, depth_s
    if source_earlier is not None:
        source_earlier = tf.cast(source_earlier, tf.bool)
        swap = tf.reshape(source_earlier, [-1, 1, 1, 1])
        first, second = tf.where(swap, source, target), tf.where(swap, target, source)
        depth_first = tf.where(swap, depth_s, depth_t)
        depth_second = tf.where(swap, depth_t, depth_s)
    ego = ego_net(tf.concat([first, second, depth_first, depth_second], -1),
                  training=training)
    vectors = tf.cast(ego["ego"], tf.float32)
    transforms = geometry.pose_vector_to_matrix(vectors, rotation_mode)
    if source_earlier is not None:
        transforms = tf.where(tf.reshape(source_earlier, [-1, 1, 1]),
                              geometry.invert_transform(transforms), transforms)
    out = {"vectors": vectors, "transforms": transforms, "attention": {}}
    if "attention" in ego:
        out["attention"]["ego"] = [tf.cast(a, tf.float32) for a in ego["attention"]]
    if not with_residual:
        return out
    warped_ego, depth_ego, ego_valid = geometry.forward_project(
        source, depth_s, geometry.invert_transform(transforms), K)
    res = residual_net(tf.concat([tf.stop_gradient(warped_ego), target,
                                  tf.stop_gradient(depth_ego), depth_t], -1),
                       training=training)
    out.update(residual=tf.cast(res["residual"][0], tf.float32), warped_ego=warped_ego,
               depth_ego=depth_ego, ego_valid=ego_valid)
    if "attention" in res:
        out["attention"]["residual"] = [tf.cast(a, tf.float32) for a in res["attention"]]
    return out


def photometric_term(phi, depth_diff, valid, phi_identity=None, seed=None):
    """L_p: Φ weighted by SC-SfMLearner's 1 − D_diff (no gradient through the weight),
    Monodepth2's per-pixel minimum over the sources, mean over every target pixel.

    Pixels whose projection leaves the source image or falls behind its camera keep
    their Φ (sampled with border padding) at weight 1: D_diff is not defined there. A
    mean over the valid pixels only (SC-SfMLearner's) has a degenerate minimum, 0 when
    every pixel projects out of view, which the from-scratch synthetic training reached
    (docs/lee.md, "From scratch on the synthetic world").

    Args:
      phi, depth_diff, valid: `[B, S, H, W, 1]` (stage 2's maps per source).
      phi_identity: `[B, S, H, W, 1]` Φ of the un-warped sources for auto-masking, or None.
      seed: the auto-masking tie-break seed.

    Returns:
      scalar float32.
    """
    weight = 1.0 - tf.stop_gradient(depth_diff * valid)
    loss_map, _, _ = photometric.min_reprojection(phi * weight, phi_identity, seed=seed)
    return tf.reduce_mean(loss_map)


def stage2_maps(target, source, depth_t, depth_s, T_target_to_source, residual, K):
    """Stage 2 of Lee et al. (Eq. 2) and the per-pixel maps of L_p and L_g.

    Args:
      target, source: `[B, H, W, 3]` frames.
      depth_t, depth_s: `[B, H, W, 1]` their depths.
      T_target_to_source: `[B, 4, 4]` ego-motion.
      residual: `[B, H, W, 3]` residual translation (m, target camera).
      K: `[B, 3, 3]`.

    Returns:
      dict of `[B, H, W, C]` float32: ``warped`` (the source inverse-warped with the total
      motion X_s = R (X_t + r) + t), ``flow`` (total, px), ``phi`` = Φ(target, warped),
      ``phi_identity`` = Φ(target, source), ``depth_diff`` (Bian et al.'s inconsistency
      of the total motion) and ``valid`` (projection in the source image, in front).
    """
    warped, _, flow = geometry.total_motion_warp(source, depth_t, T_target_to_source,
                                                 residual, K)
    phi = photometric.photometric_error(_stack([target, target]), _stack([warped, source]))
    n = phi.shape[0] // 2 if phi.shape[0] is not None else tf.shape(phi)[0] // 2
    diff, valid = consistency.geometric_consistency(depth_t, depth_s, T_target_to_source, K,
                                                    residual=residual)
    return {"warped": warped, "flow": flow, "phi": phi[:n], "phi_identity": phi[n:],
            "depth_diff": diff, "valid": valid}


class LeeTrainStep:
    """Forward + losses + the guarded update of Lee et al. (see the module docstring).

    Create it (and call `build`) inside `strategy.scope()`; the loop passes batches, the
    static `Phase` (``phase.stage`` in `PHASES`) and a `[2]` int64 stateless seed.

    Args:
      depth_net: `models.build_depth_net` model.
      motion_net: `models.build_motion_net` model.
      depth_optimizer, motion_optimizer: Keras optimizers.
      weights: `LeeWeights`.
      options: `LeeOptions`.
      global_batch_size: batch size summed over replicas.
    """

    def __init__(self, depth_net: keras.Model, motion_net: keras.Model, depth_optimizer,
                 motion_optimizer, weights: LeeWeights = LeeWeights(),
                 options: LeeOptions = LeeOptions(), global_batch_size: Optional[int] = None):
        self.depth_net, self.motion_net = depth_net, motion_net
        self.ego_net, self.residual_net = motion_branches(motion_net)
        self.depth_optimizer, self.motion_optimizer = depth_optimizer, motion_optimizer
        self.weights = LeeWeights(*weights)
        self.options = options
        self.global_batch_size = global_batch_size
        self.nonfinite_steps, self.consecutive_nonfinite_steps = nonfinite_counters()
        self._loss_scaling = isinstance(depth_optimizer, keras.optimizers.LossScaleOptimizer)
        if self._loss_scaling and options.gradient_clip_norm:
            raise ValueError("gradient_clip_norm is not supported with loss scaling "
                             "(mixed_float16): the gradients are clipped while scaled")
        self._forward_fn = (tf.function(self.forward, jit_compile=True, reduce_retracing=True,
                                          autograph=False)
                            if options.jit_compile else self.forward)

    # ------------------------------------------------------------- variables ----
    def group_variables(self, group: str) -> List[tf.Variable]:
        """Trainable variables of ``group``: "depth" (θ), "motion_ego" (ω, φ) or "motion"
        (ω, φ, ψ)."""
        if group == "depth":
            return list(self.depth_net.trainable_variables)
        if group == "motion_ego":
            return list(self.ego_net.trainable_variables)
        if group == "motion":
            return list(self.motion_net.trainable_variables)
        raise ValueError(f"unknown variable group {group!r}")

    @property
    def residual_only_variables(self) -> List[tf.Variable]:
        """ψ: the motion net's variables outside the ego branch (residual DAM + decoder)."""
        ego = {id(v) for v in self.ego_net.trainable_variables}
        return [v for v in self.motion_net.trainable_variables if id(v) not in ego]

    def _optimizer(self, group: str):
        return self.depth_optimizer if group == "depth" else self.motion_optimizer

    @staticmethod
    def groups(phase: Phase) -> Tuple[str, ...]:
        """The variable groups ``phase`` trains (Lee Table 1)."""
        if phase.stage not in TRAINED_GROUPS:
            raise ValueError(f"lee: unknown phase {phase.stage!r}; one of {PHASES} "
                             "(schedule.Stages of factories.LeeMethod)")
        return TRAINED_GROUPS[phase.stage]

    @property
    def statistics_variables(self) -> List[tf.Variable]:
        """BatchNorm moving statistics (restored when a step is skipped)."""
        return list(self.depth_net.non_trainable_variables) + list(
            self.motion_net.non_trainable_variables)

    def build(self) -> None:
        """Creates the optimizers' slots now (call inside `strategy.scope()`)."""
        self.depth_optimizer.build(self.group_variables("depth"))
        self.motion_optimizer.build(self.group_variables("motion"))

    # --------------------------------------------------------------- forward ----
    def _bidirectional(self, phase: Phase) -> bool:
        """L_mc needs the backward motion (source -> target): phases 2-3 with λ_mc > 0."""
        return phase.stage != PHASE1 and self.weights.mc > 0

    def forward(self, batch: Dict[str, tf.Tensor], phase: Phase, training: bool = True):
        """Depths, ego-motion, stage 1, residual, stage 2 and the per-pixel maps.

        The pairs (target t, source s) are stacked source-major on the batch axis
        (`[S*B, ...]`); when L_mc is on, the backward pairs (target s, source t) follow
        (`[2*S*B, ...]`) through the ego-motion, stage 1 and the residual only.

        Returns a dict of float32 tensors: ``target`` `[B, H, W, 3]`, ``disparity``,
        ``depth`` (target, scale 0), ``depth_sources`` `[S*B, H, W, 1]`, ``transforms``
        `[S*B, 4, 4]` (T_t->s), ``residual`` `[S*B, H, W, 3]` (0 in phase 1),
        ``warped_ego``, ``ego_valid`` (stage 1, phases 2-3), ``warped``, ``flow``
        (stage 2), ``phi`` / ``phi_identity`` / ``depth_diff`` / ``valid``
        `[B, S, H, W, 1]`, ``attention`` (branch -> maps of ResLayers 2-4, with DAM);
        with L_mc ``transforms_backward``, ``residual_backward``.
        """
        opts = self.options
        groups = self.groups(phase)
        train_depth = training and "depth" in groups
        frames = tf.cast(batch[specs.KEY_FRAMES], tf.float32)
        frames_aug = tf.cast(batch.get(specs.KEY_FRAMES_AUG, frames), tf.float32)
        K = tf.cast(batch[specs.KEY_INTRINSICS], tf.float32)
        b = frames.shape[0]
        num_src = len(specs.SOURCE_INDICES)
        t_idx = specs.TARGET_INDEX
        target, target_aug = frames[:, t_idx], frames_aug[:, t_idx]
        src = _stack([frames[:, i] for i in specs.SOURCE_INDICES])          # [S*B, H, W, 3]
        src_aug = _stack([frames_aug[:, i] for i in specs.SOURCE_INDICES])
        tgt_rep, tgt_aug_rep = _stack([target] * num_src), _stack([target_aug] * num_src)
        K_rep = _stack([K] * num_src)
        sb = num_src * b
        out = {"target": target, "intrinsics": K}

        # 1. depth of the target and the sources, one call (scale 0).
        disp = tf.cast(self.depth_net(_stack([target_aug, src_aug]), training=train_depth)[0],
                       tf.float32)
        if "depth" not in groups:
            disp = tf.stop_gradient(disp)   # phase 2: the depth net is frozen
        _, depth = disp_to_depth(disp, opts.min_depth, opts.max_depth)
        depth_t, depth_s = depth[:b], depth[b:]
        depth_t_rep = _stack([depth_t] * num_src)
        out.update(disparity=disp[:b], depth=depth_t, depth_sources=depth_s)

        # the pairs (target, source): forward (t, s); with L_mc also backward (s, t)
        pair_tgt, pair_src = tgt_aug_rep, src_aug
        pair_dt, pair_ds, pair_K = depth_t_rep, depth_s, K_rep
        earlier = [i < t_idx for i in specs.SOURCE_INDICES]        # source before target
        if self._bidirectional(phase):
            pair_tgt, pair_src = _stack([tgt_aug_rep, src_aug]), _stack([src_aug, tgt_aug_rep])
            pair_dt, pair_ds = _stack([depth_t_rep, depth_s]), _stack([depth_s, depth_t_rep])
            pair_K = _stack([K_rep, K_rep])
            earlier += [not e for e in earlier]
        source_earlier = tf.constant([e for e in earlier for _ in range(b)], tf.bool)

        # 2-3. ego-motion, stage 1 (Lee Eq. 1) and the residual (phases 2-3; phase 1:
        #      r = 0 and the residual branch does not run).
        motion = predict_motion(self.ego_net, self.residual_net, pair_tgt, pair_src, pair_dt,
                                pair_ds, pair_K, opts.rotation_mode,
                                with_residual=phase.stage != PHASE1, training=training,
                                source_earlier=source_earlier)
        transforms = motion["transforms"][:sb]
        out["transforms"] = transforms
        out["attention"] = {k: [a[:sb] for a in maps]
                            for k, maps in motion["attention"].items()}
        if phase.stage == PHASE1:   # (self.groups has checked the stage)
            residual = tf.zeros(tf.concat([tf.shape(depth_s)[:3], [3]], 0), tf.float32)
        else:
            residual = motion["residual"][:sb]
            out.update(warped_ego=motion["warped_ego"][:sb], ego_valid=motion["ego_valid"][:sb])
            if self._bidirectional(phase):
                out.update(transforms_backward=motion["transforms"][sb:],
                           residual_backward=motion["residual"][sb:])
        out["residual"] = residual

        # 4. stage 2 (Lee Eq. 2) on the clean frames.
        maps = stage2_maps(tgt_rep, src, depth_t_rep, depth_s, transforms, residual, K_rep)
        out.update(warped=maps["warped"], flow=maps["flow"],
                   **{k: to_batch_source(maps[k], num_src)
                      for k in ("phi", "phi_identity", "depth_diff", "valid")})
        return out

    # ---------------------------------------------------------------- losses ----
    def compute_losses(self, batch: Dict[str, tf.Tensor], phase: Phase, seed,
                       training: bool = True):
        """Every term of Lee Eq. 6 that is on in ``phase`` (unweighted) plus ``total``.

        Returns:
          (losses: name -> scalar, forward dict).
        """
        w, opts = self.weights, self.options
        self.groups(phase)                   # a known stage
        p2 = phase.stage != PHASE1           # phases 2-3: L^P1 + L^P2 (Lee Eq. 6)
        geometric_on = w.g > 0 and not phase.burn_in     # the warm-up leaves out L_g, L_h
        height_on = w.h > 0 and not phase.burn_in
        if height_on or (p2 and opts.csac and w.mr > 0):
            boxes, box_mask = self._target_boxes(batch)
        keys = (specs.KEY_FRAMES, specs.KEY_FRAMES_AUG, specs.KEY_INTRINSICS)
        fwd = self._forward_fn({k: batch[k] for k in keys if k in batch}, phase, training)
        seed = tf.cast(seed, tf.int64)
        num_src = len(specs.SOURCE_INDICES)
        valid = fwd["valid"]
        losses = {PHOTOMETRIC: photometric_term(
            fwd["phi"], fwd["depth_diff"], valid,
            fwd["phi_identity"] if opts.automask else None,
            seed=tf.random.experimental.stateless_fold_in(seed, 0))}
        if geometric_on:
            losses["geometric"] = consistency.masked_mean(fwd["depth_diff"], valid)
        if w.s > 0:
            losses["smooth_depth"] = smoothness.disparity_smoothness(fwd["disparity"],
                                                                     fwd["target"])
        if height_on:
            classes = batch.get(specs.KEY_BOX_CLASSES)
            losses["height_prior"] = object_motion.height_prior_loss(
                fwd["depth"], boxes, box_mask, fwd["intrinsics"],
                box_classes=None if classes is None else classes[:, specs.TARGET_INDEX],
                class_heights=opts.class_heights)
        if p2:
            residual = fwd["residual"]
            depth_rep = _stack([fwd["depth"]] * num_src)
            if opts.csac and w.mr > 0:
                csac = object_motion.csac_loss(
                    residual, depth_rep, _stack([boxes] * num_src), _stack([box_mask] * num_src),
                    alpha=opts.csac_alpha, beta=opts.csac_beta,
                    seed=tf.random.experimental.stateless_fold_in(seed, 1))
                losses["csac"] = csac["loss"]
                fwd["csac_inliers"] = csac["inliers"]
            if w.ms > 0:
                losses["motion_smooth"] = object_motion.motion_smoothness(
                    residual, depth_rep, tau=opts.motion_smoothness_tau)
            if w.mp > 0:
                losses["motion_sparsity"] = object_motion.motion_sparsity(residual)
            if w.mc > 0:
                losses["motion_consistency"] = object_motion.motion_consistency(
                    residual, fwd["transforms"], fwd["residual_backward"],
                    fwd["transforms_backward"], fwd["flow"], mask=to_source_major(valid))
        losses["total"] = tf.add_n([weight * losses[k]
                                    for k, weight in self.term_weights(losses).items()])
        return losses, fwd

    def term_weights(self, losses: Dict[str, tf.Tensor]) -> Dict[str, float]:
        """term name -> its λ of Lee Eq. 6, for the terms in ``losses``."""
        return {k: getattr(self.weights, field) for k, field in TERM_WEIGHTS.items()
                if k in losses}

    def loss_ratios(self, losses: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """λ_k L_k / (λ_p L_p) of every term but L_p: Lee Sec. 4.1's balance rule (each
        about 0.05), as ``loss_ratio/<term>`` in TensorBoard."""
        weights = self.term_weights(losses)
        reference = weights[PHOTOMETRIC] * losses[PHOTOMETRIC]
        return {k: tf.math.divide_no_nan(weight * losses[k], reference)
                for k, weight in weights.items() if k != PHOTOMETRIC}

    @staticmethod
    def _target_boxes(batch):
        """(boxes `[B, N, 4]`, box_mask `[B, N]`) of the target frame."""
        if specs.KEY_BOXES not in batch:
            raise ValueError(
                "Lee et al.'s L_h and CSAC need 2-D boxes: set make_dataset.max_boxes > 0 "
                "(gin/lee_*.gin), or switch them off (lee.lambda_h = 0, lee.csac = False)")
        t = specs.TARGET_INDEX
        return (tf.cast(batch[specs.KEY_BOXES][:, t], tf.float32),
                tf.cast(batch[specs.KEY_BOX_MASK][:, t], tf.float32))

    # ------------------------------------------------------------------ step ----
    def train_step(self, batch: Dict[str, tf.Tensor], phase: Phase, seed) -> Dict[str, tf.Tensor]:
        """One guarded update of the groups ``phase`` trains (call inside `strategy.run`).

        Returns:
          ``losses/<term>``, ``loss_ratio/<term>`` (`loss_ratios`) and ``train/nonfinite``,
          each scaled by local / global batch.
        """
        seed = replica_seed(seed)
        active = self.groups(phase)
        stats_vars = self.statistics_variables
        saved_stats = [tf.identity(v) for v in tf_variables(stats_vars)]
        scale = replica_scale(batch, self.global_batch_size)
        # one objective (L_total) for every group; variables it does not reach (the depth
        # net's coarser heads, the residual heads of scales > 0) are left out
        updates, (losses, _) = grouped_gradients(
            {g: (self.group_variables(g), self._optimizer(g), "total") for g in active},
            lambda: self.compute_losses(batch, phase, seed), scale, self._loss_scaling)
        ok = guarded_update(updates, losses, stats_vars, saved_stats, self._loss_scaling,
                            self.options.gradient_clip_norm, self._count_nonfinite,
                            one_objective=True)

        out = {f"losses/{k}": tf.where(ok, v, tf.zeros_like(v)) * scale
               for k, v in losses.items()}
        out.update({f"loss_ratio/{k}": tf.where(ok, v, tf.zeros_like(v)) * scale
                    for k, v in self.loss_ratios(losses).items()})
        out["train/nonfinite"] = (1.0 - tf.cast(ok, tf.float32)) * scale
        return out

    def _count_nonfinite(self, increment):
        count_nonfinite(self.nonfinite_steps, self.consecutive_nonfinite_steps, increment)

    # ----------------------------------------------------------- diagnostics ----
    def diagnostics(self, batch: Dict[str, tf.Tensor], phase: Phase, seed):
        """Forward without update (inference mode) for TensorBoard: (scalars, images,
        histograms). Images of the t+1 source: the total flow, the residual magnitude
        (m), the ego-warped source and its validity, the DAM attention maps of ResLayers
        2-4 (upsampled; both branches), CSAC's inliers (any box)."""
        losses, fwd = self.compute_losses(batch, phase, seed, training=False)
        b = fwd["depth"].shape[0]
        last = slice((len(specs.SOURCE_INDICES) - 1) * b, None)   # the t+1 source
        scaled_disp, _ = disp_to_depth(fwd["disparity"], self.options.min_depth,
                                       self.options.max_depth)
        height, width = fwd["depth"].shape[1], fwd["depth"].shape[2]
        images = {"target": fwd["target"], "depth": fwd["depth"], "disparity": scaled_disp,
                  "flow_total": fwd["flow"][last],
                  "residual_magnitude": tf.norm(fwd["residual"][last], axis=-1, keepdims=True)}
        if "warped_ego" in fwd:
            images["warped_ego"] = fwd["warped_ego"][last]
            images["ego_valid"] = fwd["ego_valid"][last]
        for branch, maps in fwd["attention"].items():
            for level, a in zip((2, 3, 4), maps):
                images[f"attention_{branch}_{level}"] = tf.image.resize(
                    a[last], (height, width), method="nearest")
        if "csac_inliers" in fwd:
            images["inliers"] = tf.reduce_max(fwd["csac_inliers"][last], axis=1)[..., None]
        histograms = {"residual_magnitude": tf.norm(fwd["residual"], axis=-1)}
        return losses, images, histograms


def gradient_routing(step: LeeTrainStep, batch, phase: Phase, seed) -> Dict[str, List]:
    """Gradients of the phase's objective w.r.t. the depth net, the motion net's ego
    branch (ω, φ) and its residual-only variables (ψ), unconnected ones as exact zeros
    (test/debug helper; updates only BatchNorm statistics)."""
    groups = {"depth": step.group_variables("depth"),
              "motion_ego": step.group_variables("motion_ego"),
              "residual": step.residual_only_variables}
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        for variables in groups.values():
            tape.watch(tf_variables(variables))
        losses, _ = step.compute_losses(batch, phase, seed)
    out = {name: tape.gradient(losses["total"], tf_variables(v),
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
           for name, v in groups.items()}
    del tape
    return out
