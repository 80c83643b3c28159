"""The CoopNet training step: one forward pass, two tapes (three with CC), their optimizers.

Per replica and step (docs/decisions.md D2, D11):

1. Forward. Depth on the target (and on the sources when L_gc is on or the flow net is
   residual); pose per source, the pair fed in temporal order and inverted for t−1
   (docs/decisions.md C3); flow F_{t→s} and F_{s→t} for both sources in ONE flow-net call
   (batch of 4·B pairs).
2. Warps, all at full resolution (Monodepth2): every depth scale's disparity is
   upsampled to H×W, converted to depth and used for the rigid warp of each source;
   every flow scale is upsampled (values × 2^s) for the flow warp. Φ_D,s and Φ_F,s per
   scale, Φ_identity once.
3. Occlusion: Wang et al. range map of the reverse flow F_{s→t} (stop-gradient),
   threshold 0.2.
4. Apportionment at scale 0: `ApportionInputs(Φ_D, Φ_F, Φ_id, rigid flow, flow,
   non-occluded)` → strategy → masks/weights (stop-gradient) reused at every scale.
   Oracle switch (`StepOptions.ground_truth_apportionment_inputs`): Φ_F and F_δ of
   these inputs come from the ground-truth flow (`ground_truth_flow_inputs`); the losses
   below still use the networks' own Φ maps.
   During burn-in the strategy is called with `use_quantiles=False` (coopnet ≡
   baseline: Monodepth2 loss for D+T, w ≡ 1 on non-occluded pixels for F), or the
   baseline strategy is used when the configured one has no quantiles; P² estimation
   runs in the last burn-in epoch.
5. Losses (one weight table, `LossWeights`):
   L_θ,α = mean_s [L_photo_D(s) + λ_s/2^s · smooth(normalised disparity)]
           + λ_gc L_gc + λ_ep L_ep(pose; flow stop-gradient) + λ_var L_var;
   L_δ   = mean_s [L_photo_F(s) + λ_s/2^s · smooth(flow) + λ_fb L_fwd,bwd(s)]
           + λ_ep L_ep(flow; pose stop-gradient).
   Flow-partner switches (docs/flow_partner.md; defaults = the above): the flow
   smoothness in pixel units (`StepOptions.flow_smoothness_units`), its own weight
   (`LossWeights.smooth_flow`), and a photometric term for F_{s→t}
   (`StepOptions.backward_flow_photometric`: the target warped into each source's grid,
   uniform weights on the source pixels visible in t, added to L_photo_F(s)).
   L_gc, L_ep, L_var are off during burn-in (docs/decisions.md D11).
6. Two `GradientTape`s with `watch_accessed_variables=False` and explicit `watch`:
   L_θ,α → depth+pose variables (Adam #1), L_δ → flow variables (Adam #2); a third one
   only when the strategy owns a network (Competitive Collaboration's moderator: its
   ``total_strategy`` → its variables, its own optimizer). The strategy's
   ``trained_groups(phase.stage)`` says which groups a phase updates (CC: competition =
   depth+pose and flow, collaboration = the moderator); only those get a tape, and the
   networks of the other groups run in inference mode.
7. Non-finite guard: if any loss or gradient is non-finite on any replica, BOTH updates
   are skipped on every replica (the flag is all-reduced), BatchNorm statistics are
   restored to their pre-step values and a counter is incremented.

Nothing here knows the distribution strategy, the step cadence or the directories;
`training/loop.py` does. The step runs inside `strategy.run` (replica context).
"""
import contextlib
from typing import Dict, List, NamedTuple, Optional, Tuple

import keras
import tensorflow as tf

from coopnet_tf import geometry, specs
from coopnet_tf.losses import apportion, consistency, photometric, smoothness
from coopnet_tf.losses.apportion import TRAINED_GROUPS
from coopnet_tf.models import disp_to_depth


class LossWeights(NamedTuple):
    """The single table of auxiliary loss weights (paper Sec. 4.4, Eq. 15).

    A weight of 0 switches the term off and skips its computation (Table 4 ablations).
    """
    gc: float = 1e-3      # λ_gc   geometric consistency (Bian et al.), L_θ,α
    fb: float = 1e-3      # λ_fb   forward-backward flow consistency, L_δ
    smooth: float = 1e-2  # λ_s    edge-aware smoothness (disparity and flow), /2^s per scale
    ep: float = 1e-3      # λ_ep   epipolar loss, in both objectives
    var: float = 1e-6     # λ_var  inverse depth variance, L_θ,α
    smooth_flow: Optional[float] = None  # flow smoothness weight; None: λ_s (the paper)

    @property
    def flow_smooth(self) -> float:
        """The weight of the flow smoothness term (λ_s unless set separately)."""
        return self.smooth if self.smooth_flow is None else self.smooth_flow


class Phase(NamedTuple):
    """Static (trace-time) switches of the step, from `training.schedule.EpochSchedule`."""
    burn_in: bool = False            # Monodepth2 / uniform-flow losses, no gc/ep/var
    update_quantiles: bool = True    # feed the P² estimators this epoch
    stage: str = ""                  # a strategy's own sub-phase (schedule.Stages); "" = none


class StepOptions(NamedTuple):
    """Static options of the step (set from gin by `loop.train_and_evaluate`)."""
    num_scales: int = 4
    min_depth: float = specs.MIN_DEPTH
    max_depth: float = specs.MAX_DEPTH
    rotation_mode: str = "axis_angle"
    occlusion_threshold: float = consistency.OCCLUSION_THRESHOLD
    gradient_clip_norm: Optional[float] = None   # global-norm clipping per optimizer
    gc_all_scales: bool = False  # L_gc at every scale (else scale 0, SC-SfMLearner default)
    burn_in_terms: Tuple[str, ...] = ()  # of ("gc", "ep", "var"): also on during burn-in
    automask: bool = True        # Monodepth2 auto-masking (identity terms) in L_θ,α
    jit_compile: bool = False    # XLA-compile the forward (networks, warps, Φ maps, aux)
    # flow smoothness on the flow in "normalised" units (x / w, y / h) or in "pixels" of
    # its scale (docs/flow_partner.md)
    flow_smoothness_units: str = "normalised"
    backward_flow_photometric: bool = False  # F_{s->t} gets its own photometric term in L_δ
    # each scale's flow warps the images area-downsampled to its own resolution (a
    # pyramid) instead of full-resolution images (docs/flow_partner.md); Φ_F of scale s is
    # then computed at scale s and nearest-upsampled for the loss. Scale 0 is unchanged.
    flow_image_pyramid: bool = False
    seed: int = 0                # per-step randomness: stateless, from (seed, step)
    # ORACLE (research switch, gin `oracle.ground_truth_apportionment_inputs`): the
    # apportionment's Φ_F and F_δ come from the ground-truth flow (batch key gt_flow);
    # the networks still train on their own Φ maps.
    ground_truth_apportionment_inputs: bool = False


LOSS_KEYS_THETA_ALPHA = ("photo_theta_alpha", "smooth_depth", "gc", "ep_theta_alpha", "var")
LOSS_KEYS_DELTA = ("photo_delta", "photo_delta_backward", "smooth_flow", "fwd_bwd",
                   "ep_delta")
FLOW_SMOOTHNESS_UNITS = ("normalised", "pixels")


def residual_flow_input(target, source, depth, transform, intrinsics):
    """The rigid input of a residual (ResFlowNet-style) flow net, stop-gradient.

    Args:
      target, source: `[B, H, W, 3]` images.
      depth: `[B, H, W, 1]` target depth.
      transform: `[B, 4, 4]` T_target->source.
      intrinsics: `[B, 3, 3]`.

    Returns:
      `[B, H, W, 6]`: rigidly warped source (3), rigid flow in px (2), L2 norm over
      channels of (warped − target) (1).
    """
    warped, _, flow = geometry.rigid_warp(source, depth, transform, intrinsics)
    error = tf.norm(warped - tf.cast(target, tf.float32), axis=-1, keepdims=True)
    return tf.stop_gradient(tf.concat([warped, flow, error], axis=-1))


def ground_truth_flow_inputs(batch: Dict[str, tf.Tensor]):
    """Φ_F and F_δ of the apportionment from the ground-truth flow (oracle switch).

    Φ_F,gt = Φ(I_t, flow_warp(I_s, F_gt,t→s)) (Eq. 4 with the GT flow in place of the flow
    net's), at the batch resolution, per source; stop-gradient.

    Args:
      batch: with `specs.KEY_FRAMES` and `specs.KEY_GT_FLOW` (`[B, S, H, W, 2]`, px).

    Returns:
      (phi_flow `[B, S, H, W, 1]`, flow `[B, S, H, W, 2]`), float32.

    Raises:
      ValueError: the batch has no ground-truth flow.
    """
    if specs.KEY_GT_FLOW not in batch:
        raise ValueError(
            "oracle.ground_truth_apportionment_inputs = True needs the ground-truth flow "
            f"(batch key {specs.KEY_GT_FLOW!r}): train on records with ground truth (the "
            "synthetic world) through make_dataset(with_ground_truth=True)")
    frames = tf.cast(batch[specs.KEY_FRAMES], tf.float32)
    num_src = len(specs.SOURCE_INDICES)
    target = frames[:, specs.TARGET_INDEX]
    src_stack = tf.concat([frames[:, i] for i in specs.SOURCE_INDICES], 0)
    gt_flow = tf.cast(batch[specs.KEY_GT_FLOW], tf.float32)
    warped, _ = geometry.flow_warp(src_stack, to_source_major(gt_flow))
    phi = photometric.photometric_error(tf.concat([target] * num_src, 0), warped)
    return tf.stop_gradient(to_batch_source(phi, num_src)), tf.stop_gradient(gt_flow)


def backward_flow_error(target, source, flow_bw):
    """Φ of the backward flow: the target warped into the source's grid with F_{s->t},
    `I_t(p + F_{s->t}(p))`, against the source `I_s(p)` (the photometric error of Eq. 2).

    Args:
      target, source: `[B, H, W, 3]` images.
      flow_bw: `[B, H, W, 2]` F_{s->t} in pixels of H x W, on the source's grid.

    Returns:
      `[B, H, W, 1]` float32.
    """
    warped, _ = geometry.flow_warp(target, flow_bw)
    return photometric.photometric_error(source, warped)


def pyramid_flow_error(reference, image, flow, height, width):
    """Φ(reference, image warped by flow) at the flow's own resolution (both images
    area-downsampled to it), nearest-upsampled to `height x width`.

    Args:
      reference, image: `[B, H, W, 3]` full-resolution images.
      flow: `[B, h, w, 2]` in pixels of h x w, on the reference's grid.

    Returns:
      `[B, height, width, 1]` float32; equals ``backward_flow_error(image, reference,
      flow)`` when `(h, w) == (height, width)`.
    """
    h, w = flow.shape[1], flow.shape[2]
    warped, _ = geometry.flow_warp(_downsample_image(image, h, w), flow)
    phi = photometric.photometric_error(_downsample_image(reference, h, w), warped)
    return _resize(phi, height, width, method="nearest")


def _resize(x, height, width, method="bilinear"):
    if x.shape[1] == height and x.shape[2] == width:
        return tf.cast(x, tf.float32)
    return tf.image.resize(tf.cast(x, tf.float32), (height, width), method=method)


def _downsample_image(image, height, width):
    """Area downsampling of a full-resolution image to (height, width) (integer factor:
    an average pool, which has a gradient and fuses under XLA; else `tf.image.resize`)."""
    h, w = image.shape[1], image.shape[2]
    if (h, w) == (height, width):
        return tf.cast(image, tf.float32)
    if h % height == 0 and w % width == 0 and h // height == w // width:
        k = h // height
        return tf.nn.avg_pool2d(tf.cast(image, tf.float32), k, k, "VALID")
    return tf.image.resize(tf.stop_gradient(tf.cast(image, tf.float32)), (height, width),
                           method="area")


def _upsample_flow(flow, height, width):
    """Flow of a coarser scale -> full resolution, values rescaled to full-res pixels."""
    h, w = flow.shape[1], flow.shape[2]
    if h == height and w == width:
        return tf.cast(flow, tf.float32)
    up = tf.image.resize(tf.cast(flow, tf.float32), (height, width), method="bilinear")
    return up * tf.constant([width / w, height / h], tf.float32)


def to_batch_source(x, num_sources):
    """`[S*B, ...]` stacked source-major -> `[B, S, ...]`."""
    shape = tf.shape(x)
    y = tf.reshape(x, tf.concat([[num_sources, -1], shape[1:]], 0))
    perm = [1, 0] + list(range(2, x.shape.rank + 1))
    y = tf.transpose(y, perm)
    if x.shape[0] is not None:
        y = tf.ensure_shape(y, [x.shape[0] // num_sources, num_sources] + x.shape[1:].as_list())
    return y


def to_source_major(x):
    """`[B, S, ...]` -> `[S*B, ...]` (inverse of `to_batch_source`)."""
    perm = [1, 0] + list(range(2, x.shape.rank))
    y = tf.transpose(x, perm)
    return tf.reshape(y, tf.concat([[-1], tf.shape(x)[2:]], 0))


def _downsample_mask(mask, factor):
    """Nearest downsampling of a full-resolution mask by an integer factor."""
    return mask if factor == 1 else mask[:, ::factor, ::factor]


def tf_variables(variables) -> List[tf.Variable]:
    """The `tf.Variable`s behind Keras 3 variables (what `GradientTape.watch` accepts)."""
    return [v.value if isinstance(v, keras.Variable) else v for v in variables]


def _all_finite(tensors) -> tf.Tensor:
    flags = [tf.reduce_all(tf.math.is_finite(tf.cast(t, tf.float32)))
             for t in tensors if t is not None]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def _clip(grads, clip_norm):
    if not clip_norm:
        return grads
    present = [g for g in grads if g is not None]
    clipped, _ = tf.clip_by_global_norm(present, clip_norm)
    it = iter(clipped)
    return [None if g is None else next(it) for g in grads]


def nonfinite_counters() -> Tuple[tf.Variable, tf.Variable]:
    """(skipped steps in all, skipped steps in a row: 0 after an applied step; the loop
    stops a diverged run), counted once per step on any number of replicas."""
    return tuple(tf.Variable(0, dtype=tf.int64, trainable=False, name=name,
                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                 for name in ("nonfinite_steps", "consecutive_nonfinite_steps"))


def count_nonfinite(total: tf.Variable, consecutive: tf.Variable, increment) -> None:
    """Counters of skipped steps; increment: 1 when this step was skipped, else 0."""
    total.assign_add(increment)
    consecutive.assign((tf.convert_to_tensor(consecutive) + increment) * increment)


def replica_seed(seed) -> tf.Tensor:
    """The step's stateless seed folded with this replica's id (each replica draws its own
    augmentation and P² subsample)."""
    ctx = tf.distribute.get_replica_context()
    replica_id = (tf.cast(ctx.replica_id_in_sync_group, tf.int64) if ctx
                  else tf.constant(0, tf.int64))
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), replica_id)


def replica_scale(batch: Dict[str, tf.Tensor], global_batch_size: Optional[int]) -> tf.Tensor:
    """local_batch / global_batch (1 / replicas for equal shards)."""
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    local = tf.cast(tf.shape(batch[specs.KEY_FRAMES])[0], tf.float32)
    if global_batch_size:
        return local / float(global_batch_size)
    return local / (local * replicas)


def grouped_gradients(groups, compute_losses, scale, loss_scaling: bool):
    """One `GradientTape` per trained group, each watching only its own variables.

    Args:
      groups: name -> `(variables, optimizer, loss key)`.
      compute_losses: `() -> (losses, ...)`, the forward pass, run once under all tapes.
      scale: local / global batch; each group's objective is `losses[key] * scale`
        (scaled again by its LossScaleOptimizer when `loss_scaling`).

    Returns:
      (`updates` for `guarded_update`: per group `(gradients, variables, optimizer)`,
      leaving out variables its objective does not reach; the forward's outputs).
    """
    tapes = {name: tf.GradientTape(watch_accessed_variables=False) for name in groups}
    with contextlib.ExitStack() as stack:
        for name, (variables, _, _) in groups.items():
            stack.enter_context(tapes[name]).watch(tf_variables(variables))
        outputs = compute_losses()
        objectives = {}
        for name, (_, optimizer, key) in groups.items():
            objectives[name] = outputs[0][key] * scale
            if loss_scaling:
                objectives[name] = optimizer.scale_loss(objectives[name])
    updates = []
    for name, (variables, optimizer, _) in groups.items():
        grads = tapes[name].gradient(objectives[name], tf_variables(variables))
        kept = [(g, v) for g, v in zip(grads, variables) if g is not None]
        updates.append(([g for g, _ in kept], [v for _, v in kept], optimizer))
    return updates, outputs


def guarded_update(updates, losses: Dict[str, tf.Tensor], stats_vars, saved_stats,
                   loss_scaling: bool, clip_norm: Optional[float], count,
                   one_objective: bool = False) -> tf.Tensor:
    """Applies each group's gradients unless any loss or gradient is non-finite on any
    replica (then nothing changes: the forward's BatchNorm / quantile statistics are
    restored and the step counts as skipped). The decision is identical on every replica.

    Under loss scaling each LossScaleOptimizer skips its own update when its gradients
    overflow (and halves its scale). With ``one_objective`` (the groups descend one loss,
    as in Lee et al.) an overflow in any group's gradients, on any replica, makes every
    group's gradients NaN, so that all optimizers skip together instead of applying half
    a step; CoopNet's groups have separate objectives and skip separately.

    Args:
      updates: per trained group, `(gradients, variables, optimizer)`.
      losses: name -> scalar of this step.
      stats_vars, saved_stats: variables the forward pass updated, and their values before.
      loss_scaling: the optimizers are LossScaleOptimizers (they handle inf gradients).
      clip_norm: global-norm clipping per group, or None.
      count: `count(increment)`, increment 1 when the step was skipped, else 0.
      one_objective: see above (only acts under loss scaling with several groups).

    Returns:
      bool scalar: the update was applied (an overflow skip under loss scaling is the
      LossScaleOptimizers' and does not count here; see `train/loss_scale_<group>`).
    """
    ctx = tf.distribute.get_replica_context()
    if loss_scaling and one_objective and len(updates) > 1:
        updates = _skip_all_on_overflow(updates, ctx)
    checked = list(losses.values())
    if not loss_scaling:     # a LossScaleOptimizer handles inf gradients itself
        for grads, _, _ in updates:
            checked += list(grads)
    bad_local = 1.0 - tf.cast(_all_finite(checked), tf.float32)
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad_local) if ctx else bad_local
    ok = bad < 0.5
    # local per-replica assignments; all replicas agree on `ok`, and no control flow
    # crosses a sync point.
    for var, old in zip(stats_vars, saved_stats):
        var.assign(tf.where(ok, tf.convert_to_tensor(var), old))
    clipped = [_clip(grads, clip_norm) for grads, _, _ in updates]

    def apply_fn(*group_grads):
        for (_, variables, optimizer), grads in zip(updates, group_grads):
            optimizer.apply(grads, variables)

    def cross_replica(distribution, bad_value, *group_grads):
        # A cond whose branch calls the optimizers (which merge_call) must be built in
        # cross-replica context (as keras.optimizers.LossScaleOptimizer does).
        skip = distribution.experimental_local_results(bad_value)[0] > 0.5

        def do_apply():
            distribution.extended.call_for_each_replica(apply_fn, args=tuple(group_grads))
            return tf.constant(0, tf.int64)

        count(tf.cond(skip, lambda: tf.constant(1, tf.int64), do_apply))

    if ctx is not None and not tf.__internal__.distribute.strategy_supports_no_merge_call():
        ctx.merge_call(cross_replica, args=(bad, *clipped))
    else:
        def do_apply_local():
            apply_fn(*clipped)
            return tf.constant(0, tf.int64)
        count(tf.cond(ok, do_apply_local, lambda: tf.constant(1, tf.int64)))
    return ok


def _skip_all_on_overflow(updates, ctx):
    """Every group's gradients + NaN when any group's (still scaled) gradients are
    non-finite on any replica, else unchanged."""
    grads = [g for group_grads, _, _ in updates for g in group_grads]
    overflow_local = 1.0 - tf.cast(_all_finite(grads), tf.float32)
    overflow = ctx.all_reduce(tf.distribute.ReduceOp.SUM, overflow_local) if ctx \
        else overflow_local
    poison = tf.where(overflow > 0.5, float("nan"), 0.0)
    return [([g + tf.cast(poison, g.dtype) for g in group_grads], variables, optimizer)
            for group_grads, variables, optimizer in updates]


class CoopTrainStep:
    """Forward + losses + the two-tape update of CoopNet, for use inside `strategy.run`.

    Create it (and call `build`) inside `strategy.scope()`; the loop passes it batches,
    the static `Phase` of the epoch and a `[2]` int64 stateless seed.

    Args:
      depth_net, pose_net, flow_net: Keras models (`coopnet_tf.models` factories).
      depth_pose_optimizer, flow_optimizer: Keras optimizers (LossScaleOptimizer under
        mixed_float16).
      apportionment: an `apportion.ApportionmentStrategy` (the configured one).
      weights: `LossWeights`.
      options: `StepOptions`.
      global_batch_size: batch size summed over replicas (per-replica losses are scaled
        by local_batch / global_batch before the gradient all-reduce SUM).
    """

    def __init__(self, depth_net: keras.Model, pose_net: keras.Model, flow_net: keras.Model,
                 depth_pose_optimizer, flow_optimizer,
                 apportionment: apportion.ApportionmentStrategy,
                 weights: LossWeights = LossWeights(), options: StepOptions = StepOptions(),
                 global_batch_size: Optional[int] = None):
        self.depth_net, self.pose_net, self.flow_net = depth_net, pose_net, flow_net
        self.depth_pose_optimizer = depth_pose_optimizer
        self.flow_optimizer = flow_optimizer
        self.apportionment = apportionment
        self.burn_in_apportionment = (
            apportionment if apportionment.quantile_layer is not None
            else apportion.make_strategy("baseline"))
        self.weights = LossWeights(*weights)
        self.options = options
        self.global_batch_size = global_batch_size
        self.residual_flow = len(flow_net.inputs) > 1
        self.strategy_optimizer = apportionment.optimizer
        self.nonfinite_steps, self.consecutive_nonfinite_steps = nonfinite_counters()
        self._loss_scaling = isinstance(depth_pose_optimizer, keras.optimizers.LossScaleOptimizer)
        if self._loss_scaling and apportionment.trainable_variables and not isinstance(
                self.strategy_optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError(f"{apportionment.name}: its optimizer needs loss scaling too "
                             "under mixed_float16")
        if self._loss_scaling and options.gradient_clip_norm:
            raise ValueError("gradient_clip_norm is not supported with loss scaling "
                             "(mixed_float16): the gradients are clipped while scaled")
        self._forward_fn = (tf.function(self.forward, jit_compile=True, reduce_retracing=True,
                                          autograph=False)
                            if options.jit_compile else self.forward)
        if options.flow_smoothness_units not in FLOW_SMOOTHNESS_UNITS:
            raise ValueError(f"flow_smoothness_units must be one of {FLOW_SMOOTHNESS_UNITS}: "
                             f"{options.flow_smoothness_units!r}")

    def _term_on(self, term: str, phase: Phase) -> bool:
        """L_gc / L_ep / L_var: on after the burn-in, and during it only when listed in
        `StepOptions.burn_in_terms` (docs/decisions.md D11: off)."""
        return not phase.burn_in or term in self.options.burn_in_terms

    # ------------------------------------------------------------- variables ----
    @property
    def depth_pose_variables(self) -> List[tf.Variable]:
        return list(self.depth_net.trainable_variables) + list(self.pose_net.trainable_variables)

    @property
    def flow_variables(self) -> List[tf.Variable]:
        return list(self.flow_net.trainable_variables)

    @property
    def strategy_variables(self) -> List[tf.Variable]:
        """Variables of the strategy's own networks (CC's moderator; usually none)."""
        return list(self.apportionment.trainable_variables)

    def _groups(self, phase: Phase) -> Tuple[str, ...]:
        """The variable groups this phase updates (burn-in: depth+pose and flow)."""
        strategy = self.burn_in_apportionment if phase.burn_in else self.apportionment
        return strategy.trained_groups(phase.stage)

    @property
    def statistics_variables(self) -> List[tf.Variable]:
        """State the forward pass updates before the loss is known: BatchNorm moving
        statistics and the P² estimators (restored when a step is skipped)."""
        out = []
        for net in (self.depth_net, self.pose_net, self.flow_net):
            out.extend(net.non_trainable_variables)
        layer = self.apportionment.quantile_layer
        if layer is not None:
            out.extend(layer.non_trainable_variables)
        out.extend(self.apportionment.state_variables)
        return out

    def build(self) -> None:
        """Creates the optimizers' slots now (call inside `strategy.scope()`)."""
        self.depth_pose_optimizer.build(self.depth_pose_variables)
        self.flow_optimizer.build(self.flow_variables)
        if self.strategy_variables:
            self.strategy_optimizer.build(self.strategy_variables)

    # --------------------------------------------------------------- forward ----
    def forward(self, batch: Dict[str, tf.Tensor], phase: Phase, training: bool = True):
        """Networks, warps, Φ maps and the mask-independent auxiliary terms.

        The per-(scale, source) work is batched: one rigid warp, one flow warp and one
        photometric-error call cover every scale and source (stacked on the batch axis,
        scale-major, then source, then image), which keeps the graph small (fast tracing)
        and the kernels large.

        Returns a dict of float32 tensors: ``disparities`` / ``depths`` (per scale, target),
        ``transforms`` (per source, T_target->source), ``phi_rigid`` / ``phi_flow`` (per
        scale, `[B, S, H, W, 1]`), ``phi_identity``, ``rigid_flow``, ``optical_flow``,
        ``non_occluded`` (scale 0, `[B, S, H, W, C]`), the per-scale auxiliary terms
        ``smooth_depth``, ``smooth_flow``, ``fwd_bwd`` and, when on, ``gc``, ``var``.
        """
        opts, w = self.options, self.weights
        frames = tf.cast(batch[specs.KEY_FRAMES], tf.float32)          # [B, 3, H, W, 3]
        frames_aug = tf.cast(batch.get(specs.KEY_FRAMES_AUG, frames), tf.float32)
        K = tf.cast(batch[specs.KEY_INTRINSICS], tf.float32)           # [B, 3, 3]
        b, height, width = frames.shape[0], frames.shape[2], frames.shape[3]
        if b is None:
            b = tf.shape(frames)[0]
        t_idx = specs.TARGET_INDEX
        target, target_aug = frames[:, t_idx], frames_aug[:, t_idx]
        sources = [frames[:, i] for i in specs.SOURCE_INDICES]
        sources_aug = [frames_aug[:, i] for i in specs.SOURCE_INDICES]
        num_src = len(sources)
        use_gc = w.gc > 0 and self._term_on("gc", phase)
        need_source_depth = use_gc or self.residual_flow
        src_stack = tf.concat(sources, 0)                  # [S*B, H, W, 3], source-major
        tgt_rep = tf.concat([target] * num_src, 0)         # [S*B, H, W, 3]
        K_rep = tf.concat([K] * num_src, 0)                # [S*B, 3, 3]
        out = {"intrinsics": K, "target": target}

        # 1a. depth (target, + sources in the same call when needed).
        depth_in = tf.concat([target_aug] + sources_aug, 0) if need_source_depth else target_aug
        disps = [tf.cast(d, tf.float32) for d in self.depth_net(depth_in, training=training)]
        disps = disps[:opts.num_scales]
        num_scales = len(disps)
        # full-resolution depth of every scale (Monodepth2: upsample the disparity); the
        # sources' only at the scales that use them (L_gc, the residual flow input).
        src_scales = (num_scales if use_gc and opts.gc_all_scales
                      else 1 if need_source_depth else 0)
        depths_all = [disp_to_depth(_resize(d if k < src_scales else d[:b], height, width),
                                    opts.min_depth, opts.max_depth)[1]
                      for k, d in enumerate(disps)]
        depths = [d[:b] for d in depths_all]
        out["disparities"] = [d[:b] for d in disps]
        out["depths"] = depths

        # 1b. pose: (I_{t-1}, I_t) -> inverted; (I_t, I_{t+1}) -> direct (docs/decisions.md C3).
        pairs = [tf.concat([src, target_aug] if i < t_idx else [target_aug, src], -1)
                 for i, src in zip(specs.SOURCE_INDICES, sources_aug)]
        vectors = tf.cast(self.pose_net(tf.concat(pairs, 0), training=training), tf.float32)
        transforms = []
        for k, i in enumerate(specs.SOURCE_INDICES):
            mat = geometry.pose_vector_to_matrix(vectors[k * b:(k + 1) * b], opts.rotation_mode)
            transforms.append(geometry.invert_transform(mat) if i < t_idx else mat)
        out["transforms"] = transforms
        t_stack = tf.concat(transforms, 0)                 # [S*B, 4, 4]

        # 1c. flow: [t->s for s] + [s->t for s] in one call (2*S*B pairs).
        fw_pairs = [tf.concat([target_aug, s], -1) for s in sources_aug]
        bw_pairs = [tf.concat([s, target_aug], -1) for s in sources_aug]
        flow_in = tf.concat(fw_pairs + bw_pairs, 0)
        if self.residual_flow:
            src_depth0 = depths_all[0][b:]                 # [S*B] source depths, scale 0
            rigid_fw = residual_flow_input(tgt_rep, src_stack, tf.concat([depths[0]] * num_src, 0),
                                           t_stack, K_rep)
            rigid_bw = residual_flow_input(src_stack, tgt_rep, src_depth0,
                                           geometry.invert_transform(t_stack), K_rep)
            flows = self.flow_net([flow_in, tf.concat([rigid_fw, rigid_bw], 0)], training=training)
        else:
            flows = self.flow_net(flow_in, training=training)
        flows = [tf.cast(f, tf.float32) for f in flows][:num_scales]
        sb = num_src * b
        flow_fw = [f[:sb] for f in flows]                  # per scale [S*B, h, w, 2]
        flow_bw = [f[sb:] for f in flows]
        out["flow_fw"], out["flow_bw"] = flow_fw, flow_bw

        # 3. occlusion (stop-gradient): target pixels visible in s (from F_{s->t}) and
        #    source pixels visible in t (from F_{t->s}), one splatting call.
        non_occ = tf.stop_gradient(consistency.non_occluded_mask(
            tf.concat([flow_bw[0], flow_fw[0]], 0), opts.occlusion_threshold))
        non_occ_t = non_occ[:sb]
        non_occ_s = non_occ[sb:]   # source pixels visible in t (backward photometric term)
        out["non_occluded"] = to_batch_source(non_occ_t, num_src)

        # 2. warps and Φ maps at full resolution, every (scale, source) in one call each.
        rigid_warped, _, rigid_flows = geometry.rigid_warp(
            tf.concat([src_stack] * num_scales, 0),
            tf.concat([tf.concat([d] * num_src, 0) for d in depths], 0),
            tf.concat([t_stack] * num_scales, 0), tf.concat([K_rep] * num_scales, 0))
        n = num_scales * sb
        if opts.flow_image_pyramid:
            phi = photometric.photometric_error(
                tf.concat([tgt_rep] * (num_scales + 1), 0),
                tf.concat([rigid_warped, src_stack], 0))
            phi_flow = [pyramid_flow_error(tgt_rep, src_stack, f, height, width)
                        for f in flow_fw]
            phi_identity = phi[n:]
        else:
            flow_warped, _ = geometry.flow_warp(
                tf.concat([src_stack] * num_scales, 0),
                tf.concat([_upsample_flow(f, height, width) for f in flow_fw], 0))
            phi = photometric.photometric_error(
                tf.concat([tgt_rep] * (2 * num_scales + 1), 0),
                tf.concat([rigid_warped, flow_warped, src_stack], 0))
            phi_flow = [phi[n + k * sb:n + (k + 1) * sb] for k in range(num_scales)]
            phi_identity = phi[2 * n:]
        out["phi_rigid"] = [to_batch_source(phi[k * sb:(k + 1) * sb], num_src)
                            for k in range(num_scales)]
        out["phi_flow"] = [to_batch_source(p, num_src) for p in phi_flow]
        out["phi_identity"] = to_batch_source(phi_identity, num_src)
        out["rigid_flow"] = to_batch_source(rigid_flows[:sb], num_src)
        out["optical_flow"] = to_batch_source(flow_fw[0], num_src)
        if opts.backward_flow_photometric:
            # the target warped into each source's grid with F_{s->t}, compared with the
            # source; its domain: source pixels visible in t (range map of F_{t->s}).
            if opts.flow_image_pyramid:
                phi_bw = [pyramid_flow_error(src_stack, tgt_rep, f, height, width)
                          for f in flow_bw]
            else:
                phi_bw = backward_flow_error(
                    tf.concat([tgt_rep] * num_scales, 0), tf.concat([src_stack] * num_scales, 0),
                    tf.concat([_upsample_flow(f, height, width) for f in flow_bw], 0))
                phi_bw = [phi_bw[k * sb:(k + 1) * sb] for k in range(num_scales)]
            out["phi_flow_backward"] = [to_batch_source(p, num_src) for p in phi_bw]
            out["non_occluded_source"] = to_batch_source(non_occ_s, num_src)

        # 5a. mask-independent auxiliary terms, per scale (weights applied later).
        smooth_d, smooth_f, fb = [], [], []
        for scale in range(num_scales):
            h, wd = disps[scale].shape[1], disps[scale].shape[2]
            if w.smooth > 0:
                tgt_s = _downsample_image(target, h, wd)
                smooth_d.append(smoothness.disparity_smoothness(out["disparities"][scale], tgt_s))
            if w.flow_smooth > 0:
                tgt_s = _downsample_image(target, h, wd)
                src_s = _downsample_image(src_stack, h, wd)
                # both flow directions, each guided by the image of its own grid.
                smooth_f.append(smoothness.flow_smoothness(
                    flows[scale], tf.concat([tf.concat([tgt_s] * num_src, 0), src_s], 0),
                    normalise=opts.flow_smoothness_units == "normalised"))
            if w.fb > 0:
                factor = width // wd
                fb.append(consistency.forward_backward_loss(
                    flows[scale], tf.concat([flow_bw[scale], flow_fw[scale]], 0),
                    _downsample_mask(non_occ, factor)))
        out["smooth_depth"], out["smooth_flow"], out["fwd_bwd"] = smooth_d, smooth_f, fb

        if use_gc:
            # (t -> s) and (s -> t) for every scale and source, one call.
            d_a, d_b, t_ab = [], [], []
            t_inv = geometry.invert_transform(t_stack)
            for scale in range(num_scales if opts.gc_all_scales else 1):
                d_t = tf.concat([depths[scale]] * num_src, 0)
                d_s = depths_all[scale][b:]
                d_a += [d_t, d_s]
                d_b += [d_s, d_t]
                t_ab += [t_stack, t_inv]
            diff, valid = consistency.geometric_consistency(
                tf.concat(d_a, 0), tf.concat(d_b, 0), tf.concat(t_ab, 0),
                tf.concat([K_rep] * len(d_a), 0))
            out["gc"] = consistency.masked_mean(diff, valid)
        if w.var > 0 and self._term_on("var", phase):
            out["var"] = consistency.variance_loss(depths[0])
        return out

    # ---------------------------------------------------------------- losses ----
    def compute_losses(self, batch: Dict[str, tf.Tensor], phase: Phase, seed,
                       training: bool = True, update_quantiles: Optional[bool] = None):
        """All loss terms of both objectives.

        Args:
          batch: a (per-replica) batch dict with the `specs.KEY_*` keys.
          phase: static `Phase`.
          seed: `[2]` int stateless seed of this step (and replica).
          training: networks in training mode.
          update_quantiles: overrides `phase.update_quantiles` (diagnostics pass False).

        Returns:
          (losses, apportionment, forward): `losses` maps names to scalars: the unweighted
          terms of `LOSS_KEYS_THETA_ALPHA` / `LOSS_KEYS_DELTA` that are on, plus
          ``total_theta_alpha`` and ``total_delta`` (the two objectives);
          `apportionment` is the strategy's `Apportionment`; `forward` the forward dict.
        """
        w, opts = self.weights, self.options
        inputs_keys = (specs.KEY_FRAMES, specs.KEY_FRAMES_AUG, specs.KEY_INTRINSICS)
        groups = self._groups(phase)
        # Networks that this phase does not train run in inference mode (their BatchNorm
        # statistics stay put: CC's "R and F fixed" / "M fixed").
        competitors_train = training and ("depth_pose" in groups or "flow" in groups)
        fwd = self._forward_fn({k: batch[k] for k in inputs_keys if k in batch}, phase,
                               competitors_train)
        update = phase.update_quantiles if update_quantiles is None else update_quantiles
        strategy = self.burn_in_apportionment if phase.burn_in else self.apportionment
        extras = None
        if strategy.trainable_variables:
            # a strategy with its own network (CC's moderator) sees the stacked snippet
            # the networks see, and runs in training mode only when it is being trained.
            frames_aug = batch.get(specs.KEY_FRAMES_AUG, batch[specs.KEY_FRAMES])
            extras = {"snippet": tf.concat([tf.cast(frames_aug[:, i], tf.float32)
                                            for i in range(frames_aug.shape[1])], -1),
                      "target": fwd["target"],
                      "training": bool(training and "strategy" in groups)}
        phi_flow, optical_flow = fwd["phi_flow"][0], fwd["optical_flow"]
        if opts.ground_truth_apportionment_inputs:   # oracle: Δ, Δflow from the GT flow
            phi_flow, optical_flow = ground_truth_flow_inputs(batch)
        inputs = apportion.ApportionInputs(
            phi_rigid=fwd["phi_rigid"][0], phi_flow=phi_flow,
            phi_identity=fwd["phi_identity"], rigid_flow=fwd["rigid_flow"],
            optical_flow=optical_flow, non_occluded=fwd["non_occluded"],
            gt_moving_mask=batch.get(specs.KEY_GT_MOVING), extras=extras)
        app = strategy(inputs, use_quantiles=not phase.burn_in,
                       update_quantiles=bool(update and strategy.quantile_layer is not None))

        seed = tf.cast(seed, tf.int64)
        num_scales = len(fwd["phi_rigid"])
        photo_d, photo_f, photo_f_bw, total_d_scales, total_f_scales = [], [], [], [], []
        if "phi_flow_backward" in fwd:   # uniform weights on the visible source pixels
            _, weight_bw = apportion.uniform_weights(fwd["non_occluded_source"] > 0.5)
        for scale in range(num_scales):
            scale_seed = tf.random.experimental.stateless_fold_in(seed, scale)
            ld = photometric.rigid_photometric_loss(
                fwd["phi_rigid"][scale], fwd["phi_identity"] if opts.automask else None,
                app.rigid_mask,
                app.rigid_normalisation, seed=scale_seed)
            lf = photometric.flow_photometric_loss(fwd["phi_flow"][scale], app.flow_weight)
            photo_d.append(ld)
            photo_f.append(lf)
            td, tf_ = ld, lf
            if "phi_flow_backward" in fwd:
                photo_f_bw.append(photometric.flow_photometric_loss(
                    fwd["phi_flow_backward"][scale], weight_bw))
                tf_ = tf_ + photo_f_bw[-1]
            if w.smooth > 0:
                td = td + w.smooth / (2 ** scale) * fwd["smooth_depth"][scale]
            if w.flow_smooth > 0:
                tf_ = tf_ + w.flow_smooth / (2 ** scale) * fwd["smooth_flow"][scale]
            if w.fb > 0:
                tf_ = tf_ + w.fb * fwd["fwd_bwd"][scale]
            total_d_scales.append(td)
            total_f_scales.append(tf_)

        losses = {
            "photo_theta_alpha": tf.add_n(photo_d) / num_scales,
            "photo_delta": tf.add_n(photo_f) / num_scales,
        }
        total_d = tf.add_n(total_d_scales) / num_scales
        total_f = tf.add_n(total_f_scales) / num_scales
        if photo_f_bw:
            losses["photo_delta_backward"] = tf.add_n(photo_f_bw) / num_scales
        if w.smooth > 0:
            losses["smooth_depth"] = tf.add_n(
                [s / 2 ** i for i, s in enumerate(fwd["smooth_depth"])]) / num_scales
        if w.flow_smooth > 0:
            losses["smooth_flow"] = tf.add_n(
                [s / 2 ** i for i, s in enumerate(fwd["smooth_flow"])]) / num_scales
        if w.fb > 0:
            losses["fwd_bwd"] = tf.add_n(fwd["fwd_bwd"]) / num_scales
        if "gc" in fwd:
            losses["gc"] = fwd["gc"]
            total_d = total_d + w.gc * fwd["gc"]
        if "var" in fwd:
            losses["var"] = fwd["var"]
            total_d = total_d + w.var * fwd["var"]
        if w.ep > 0 and self._term_on("ep", phase):
            # L_ep on the pixels of V that are visible (V = all pixels for baseline);
            # L_θ,α sees it with the flow stop-gradient, L_δ with the pose stop-gradient.
            num_src = len(fwd["transforms"])
            K = tf.concat([fwd["intrinsics"]] * num_src, 0)
            t_stack = tf.concat(fwd["transforms"], 0)
            mask = to_source_major(app.rigid_mask * fwd["non_occluded"])
            flow = to_source_major(fwd["optical_flow"])
            losses["ep_theta_alpha"] = consistency.epipolar_loss(
                tf.stop_gradient(flow), t_stack, K, mask)
            losses["ep_delta"] = consistency.epipolar_loss(
                flow, tf.stop_gradient(t_stack), K, mask)
            total_d = total_d + w.ep * losses["ep_theta_alpha"]
            total_f = total_f + w.ep * losses["ep_delta"]
        losses["total_theta_alpha"] = total_d
        losses["total_delta"] = total_f
        if "strategy" in groups:
            # the strategy's own objective (CC: the moderator's); must hold total_strategy.
            losses.update(strategy.auxiliary_losses(inputs, app))
        return losses, app, fwd

    # ------------------------------------------------------------------ step ----
    def train_step(self, batch: Dict[str, tf.Tensor], phase: Phase, seed) -> Dict[str, tf.Tensor]:
        """One guarded update of both objectives (call inside `strategy.run`).

        Returns:
          name -> scalar, each already scaled by local_batch / global_batch, so that a SUM
          over replicas gives the global mean: ``losses/<term>``, ``apportion/...``,
          ``quantiles/...`` and ``train/nonfinite`` (1 if this step was skipped).
        """
        seed = replica_seed(seed)
        groups = self._groups(phase)
        # (variables, optimizer, loss key) of the groups this phase updates: depth+pose and
        # flow always have a tape; a strategy's own network (CC's moderator) gets a third
        # tape and its own optimizer (CC: the competitors and the moderator alternate).
        spec = {"depth_pose": (self.depth_pose_variables, self.depth_pose_optimizer,
                               "total_theta_alpha"),
                "flow": (self.flow_variables, self.flow_optimizer, "total_delta"),
                "strategy": (self.strategy_variables, self.strategy_optimizer,
                             "total_strategy")}
        active = [name for name in TRAINED_GROUPS if name in groups and spec[name][0]]
        stats_vars = self.statistics_variables
        saved_stats = [tf.identity(v) for v in tf_variables(stats_vars)]
        scale = replica_scale(batch, self.global_batch_size)
        updates, (losses, app, _) = grouped_gradients(
            {name: spec[name] for name in active},
            lambda: self.compute_losses(batch, phase, seed), scale, self._loss_scaling)
        ok = guarded_update(updates, losses, stats_vars, saved_stats, self._loss_scaling,
                            self.options.gradient_clip_norm, self._count_nonfinite)

        out = {}
        for key, value in losses.items():
            out[f"losses/{key}"] = tf.where(ok, value, tf.zeros_like(value)) * scale
        for key, value in app.stats.items():
            value = tf.cast(value, tf.float32)
            out[key] = tf.where(tf.math.is_finite(value), value, tf.zeros_like(value)) * scale
        out["train/nonfinite"] = (1.0 - tf.cast(ok, tf.float32)) * scale
        return out

    def _count_nonfinite(self, increment):
        count_nonfinite(self.nonfinite_steps, self.consecutive_nonfinite_steps, increment)

    # ----------------------------------------------------------- diagnostics ----
    def diagnostics(self, batch: Dict[str, tf.Tensor], phase: Phase, seed):
        """Forward without update (inference-mode networks) for TensorBoard images and
        histograms. Leaves every variable unchanged (the P² subsampling counter is
        restored). Returns (scalars, images, histograms) dicts of tensors."""
        layer = self.apportionment.quantile_layer
        saved_counter = tf.identity(layer.step_counter) if layer is not None else None
        losses, app, fwd = self.compute_losses(batch, phase, seed, training=False,
                                               update_quantiles=False)
        if layer is not None:
            layer.step_counter.assign(saved_counter)
        last = len(specs.SOURCE_INDICES) - 1   # the t+1 source
        _, depth0 = fwd["disparities"][0], fwd["depths"][0]
        scaled_disp, _ = disp_to_depth(fwd["disparities"][0], self.options.min_depth,
                                       self.options.max_depth)
        images = {
            "target": fwd["target"],
            "depth": depth0,
            "disparity": scaled_disp,
            "flow": fwd["optical_flow"][:, last],
            "rigid_flow": fwd["rigid_flow"][:, last],
            "v_mask": app.rigid_mask[:, last],
            "non_occluded": fwd["non_occluded"][:, last],
            "flow_weight": app.flow_pixel_weight[:, last],
        }
        if app.extras and "moderator_masks" in app.extras:
            # CC: the moderator's m_s w.r.t. t+1 (1 = static) and its consensus target
            images["moderator_mask"] = app.extras["moderator_masks"][0][..., last:last + 1]
            images["consensus_target"] = app.extras["consensus_target"][:, last]
        if specs.KEY_GT_MOVING in batch:
            images["gt_moving_mask"] = tf.cast(batch[specs.KEY_GT_MOVING][:, last], tf.float32)
        histograms = dict(app.histograms)
        return losses, images, histograms


def gradient_routing(step: CoopTrainStep, batch, phase: Phase, seed) -> Dict[str, List]:
    """Gradients of each objective w.r.t. BOTH variable groups (test/debug helper).

    Returns dict with ``delta_wrt_depth_pose``, ``theta_alpha_wrt_flow``,
    ``theta_alpha_wrt_depth_pose``, ``delta_wrt_flow``: lists of gradients with
    unconnected gradients as exact zeros. Routing is correct when the first two are all
    exactly zero. Does not update anything except BatchNorm statistics and the P² counter.
    """
    dp_vars, f_vars = step.depth_pose_variables, step.flow_variables
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(tf_variables(dp_vars + f_vars))
        losses, _, _ = step.compute_losses(batch, phase, seed, update_quantiles=False)
    zero = tf.UnconnectedGradients.ZERO
    dp_vars, f_vars = tf_variables(dp_vars), tf_variables(f_vars)
    out = {
        "delta_wrt_depth_pose": tape.gradient(losses["total_delta"], dp_vars, unconnected_gradients=zero),
        "theta_alpha_wrt_flow": tape.gradient(losses["total_theta_alpha"], f_vars, unconnected_gradients=zero),
        "theta_alpha_wrt_depth_pose": tape.gradient(losses["total_theta_alpha"], dp_vars, unconnected_gradients=zero),
        "delta_wrt_flow": tape.gradient(losses["total_delta"], f_vars, unconnected_gradients=zero),
    }
    del tape
    return out
