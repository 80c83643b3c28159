"""gin factories of the training package: what a config file names besides the networks.

Importing this module registers every configurable a config file may name:

* ``build_depth_net``, ``build_pose_net``, ``build_flow_net``, ``build_motion_net``
  (`coopnet_tf.models`);
* ``make_dataset`` (`coopnet_tf.data.pipeline`);
* ``ensure_synthetic_dataset`` (external: `coopnet_tf.data.synthetic`, generates the
  synthetic world once and returns its directory);
* ``make_apportionment`` — the apportionment strategy (``baseline``, ``glnet_min``, ``cc``,
  ``coopnet``) and its options, e.g. ``make_apportionment.name = 'glnet_min'``,
  ``make_apportionment.use_flow_prior = False``, ``make_apportionment.flow_weighting =
  'eq11'``;
* ``oracle`` — research switches that use ground truth (synthetic records only; off by
  default; a loud warning at training start when on);
* ``loss_weights`` — the auxiliary loss weights (λ_gc, λ_fb, λ_s, λ_ep, λ_var); their
  defaults are `step.LossWeights`'s;
* ``step_options`` — the step's static options; defaults are `step.StepOptions`'s;
* ``make_optimizer``, ``make_learning_rate_schedule`` (`coopnet_tf.training.optimizers`);
* ``make_distribution_strategy`` (`coopnet_tf.training.distribution`);
* ``lee`` — Lee et al.'s loss weights, switches and phase lengths (`lee_step`).

The methods. `make_method(name, config, loss_scale)` builds, inside the strategy's scope,
what `loop.Trainer` trains: networks, optimizers (with their learning-rate schedules),
the train step, the schedule's stages and the checkpoint items — of ``'coopnet'``
(`CoopNetMethod`: depth, pose and flow nets and the apportionment, Competitive
Collaboration included) or of ``'lee'`` (`LeeMethod`: depth and motion nets, the three
phases of Lee et al.'s Table 1).

The math (geometry, losses, apportionment classes, the step) stays gin-free.
"""
import inspect
import math
from typing import Dict, NamedTuple, Optional, Tuple

import gin
import numpy as np
from absl import logging

from coopnet_tf import models, summaries  # models: registers build_*_net
from coopnet_tf.data import pipeline  # noqa: F401  (registers make_dataset)
from coopnet_tf.data import boxes, synthetic
from coopnet_tf.losses import apportion, competitive_strategy, object_motion
from coopnet_tf.training import distribution, lee_step, optimizers
from coopnet_tf.training.step import CoopTrainStep, LossWeights, Phase, StepOptions

ensure_synthetic_dataset = gin.external_configurable(
    synthetic.ensure_synthetic_dataset, name="ensure_synthetic_dataset")
make_distribution_strategy = gin.external_configurable(
    distribution.make_distribution_strategy, name="make_distribution_strategy")

_WEIGHTS = LossWeights._field_defaults    # the one table of default loss weights
_OPTIONS = StepOptions._field_defaults    # the one table of default step options


@gin.configurable
def make_apportionment(name: str = "coopnet", **options) -> apportion.ApportionmentStrategy:
    """The pixel-apportionment strategy (Table 4's "photometric" column).

    Args:
      name: "baseline" (row 1: all pixels), "glnet_min" (row 2 / last row: GLNet's
        Ψ = min(Φ_D, Φ_F)), "coopnet" (rows 3+) or "competitive_collaboration" (alias
        "cc": Ranjan et al.'s moderator, `make_competitive_collaboration`).
      **options: the strategy's constructor arguments (`apportion.CoopNetStrategy`:
        use_flow_prior, eta, zeta, tail_probability, flow_weighting, sample_size, seed,
        jit_compile, quantile_estimator ('summary' | 'p2'), summary_size, delta_flow_eps).
        gin may bind any of them.

    Options the chosen strategy does not take but another strategy does (e.g. ``eta``
    bound in base.gin while an ablation config selects ``baseline``) are dropped with a
    log line, so a config can switch the strategy with one binding. An option no strategy
    takes (a typo such as ``eta_``) is an error.

    Call inside `strategy.scope()` (coopnet creates its P² layer's variables).

    Raises:
      ValueError: an unknown strategy, or an option no strategy accepts (the message names
        it and the chosen strategy's options).
    """
    if name in competitive_strategy.NAMES:
        return make_competitive_collaboration(**options)
    cls = apportion.STRATEGIES.get(name)
    if cls is not None:
        accepted = _options_of(cls)
        unknown = sorted(k for k in options if k not in _known_options())
        if unknown:
            raise ValueError(
                f"make_apportionment: unknown option(s) {unknown} for strategy {name!r}; "
                f"it accepts {sorted(accepted)}")
        dropped = sorted(k for k in options if k not in accepted)
        if dropped:
            logging.info("make_apportionment(%r): ignoring options of other strategies %s",
                         name, dropped)
        options = {k: v for k, v in options.items() if k in accepted}
    return apportion.make_strategy(name, **options)


def make_competitive_collaboration(**options):
    """Competitive Collaboration's strategy with its moderator network and optimizer.

    The moderator comes from the gin factory `build_moderator_net` at dynamic input size;
    its optimizer from `make_optimizer` in the gin scope ``moderator`` (e.g.
    ``moderator/make_optimizer.learning_rate = 1e-4``). ``options`` are the arguments of
    `competitive_strategy.CompetitiveCollaborationStrategy` (period, period_unit,
    flow_threshold, flow_norm, ...); other strategies' options are dropped with a log line.
    """
    cls = competitive_strategy.CompetitiveCollaborationStrategy
    accepted = _options_of(cls)
    unknown = sorted(k for k in options if k not in _known_options())
    if unknown:
        raise ValueError(f"make_apportionment: unknown option(s) {unknown} for strategy "
                         f"'competitive_collaboration'; it accepts {sorted(accepted)}")
    dropped = sorted(k for k in options if k not in accepted)
    if dropped:
        logging.info("make_apportionment('competitive_collaboration'): ignoring options %s",
                     dropped)
    moderator = models.build_moderator_net(height=None, width=None)
    with gin.config_scope("moderator"):
        optimizer = optimizers.make_optimizer(name="adam_moderator")
    return cls(moderator, optimizer, **{k: v for k, v in options.items() if k in accepted})


def _options_of(cls) -> set:
    """Constructor options a config may bind (the networks a strategy owns are built
    here, not bound)."""
    return set(inspect.signature(cls.__init__).parameters) - {"self", "moderator",
                                                               "optimizer"}


def _known_options() -> set:
    """Options of every strategy (the built-in ones and Competitive Collaboration)."""
    classes = list(apportion.STRATEGIES.values()) + [
        competitive_strategy.CompetitiveCollaborationStrategy]
    return set().union(*(_options_of(c) for c in classes))


@gin.configurable
def loss_weights(lambda_gc: float = _WEIGHTS["gc"], lambda_fb: float = _WEIGHTS["fb"],
                 lambda_s: float = _WEIGHTS["smooth"], lambda_ep: float = _WEIGHTS["ep"],
                 lambda_var: float = _WEIGHTS["var"],
                 lambda_s_flow=_WEIGHTS["smooth_flow"]) -> LossWeights:
    """The auxiliary loss weights of Eq. 15 (paper Sec. 4.4); 0 switches a term off.

    ``lambda_s_flow``: a separate weight for the flow smoothness (None: λ_s, the paper's
    single weight; docs/flow_partner.md).
    """
    return LossWeights(gc=lambda_gc, fb=lambda_fb, smooth=lambda_s, ep=lambda_ep,
                       var=lambda_var,
                       smooth_flow=None if lambda_s_flow is None else float(lambda_s_flow))


@gin.configurable
def oracle(ground_truth_apportionment_inputs: bool = False) -> bool:
    """ORACLE research switch (docs/synthetic_benchmark.md), off by default.

    Args:
      ground_truth_apportionment_inputs: the apportionment's Δ and Δflow are computed with
        the ground-truth flow in place of the flow net's (Φ_F from the warp with the GT
        flow); every network still trains on its own Φ maps. Needs records with ground
        truth (the synthetic world). The ground-truth static mask as apportionment is the
        strategy ``make_apportionment.name = 'oracle_static'``.
    """
    return bool(ground_truth_apportionment_inputs)


@gin.configurable
def step_options(num_scales: int = _OPTIONS["num_scales"],
                 min_depth: float = _OPTIONS["min_depth"],
                 max_depth: float = _OPTIONS["max_depth"],
                 rotation_mode: str = _OPTIONS["rotation_mode"],
                 occlusion_threshold: float = _OPTIONS["occlusion_threshold"],
                 gradient_clip_norm=_OPTIONS["gradient_clip_norm"],
                 gc_all_scales: bool = _OPTIONS["gc_all_scales"],
                 burn_in_terms=_OPTIONS["burn_in_terms"],
                 automask: bool = _OPTIONS["automask"],
                 flow_smoothness_units: str = _OPTIONS["flow_smoothness_units"],
                 backward_flow_photometric: bool = _OPTIONS["backward_flow_photometric"],
                 flow_image_pyramid: bool = _OPTIONS["flow_image_pyramid"]
                 ) -> StepOptions:
    """Static options of the train step other than XLA and the seed (which
    `train_and_evaluate` sets); the oracle switch comes from ``oracle``. The flow
    partner's switches (``flow_smoothness_units`` 'normalised' | 'pixels',
    ``backward_flow_photometric``, ``flow_image_pyramid``): docs/flow_partner.md."""
    return StepOptions(num_scales=num_scales, min_depth=min_depth, max_depth=max_depth,
                       rotation_mode=rotation_mode, occlusion_threshold=occlusion_threshold,
                       gradient_clip_norm=gradient_clip_norm, gc_all_scales=gc_all_scales,
                       burn_in_terms=tuple(burn_in_terms), automask=bool(automask),
                       flow_smoothness_units=flow_smoothness_units,
                       backward_flow_photometric=bool(backward_flow_photometric),
                       flow_image_pyramid=bool(flow_image_pyramid),
                       ground_truth_apportionment_inputs=oracle())


# -------------------------------------------------------------------- methods ----

METHODS = ("coopnet", "lee")


class CoopNetMethod:
    """CoopNet's networks (depth, pose, flow), its two Adams (gin scopes ``depth_pose``
    and ``flow``), the apportionment strategy and `CoopTrainStep`.

    The interface `loop.Trainer` uses (`LeeMethod` has the same): ``depth_net``, ``step``,
    ``optimizers`` (name -> (optimizer, learning-rate schedule)), ``stages``,
    ``needs_ground_truth``, ``checkpoint_items()``, ``start_epoch()``, ``end_epoch()``,
    ``keep_scalar(key)``, ``validation_phase(phase)``, ``validation_key``,
    ``image_kinds``, ``progress_keys``.

    Args:
      config: the run's `loop.TrainConfig` (height, width, steps_per_epoch, batch_size,
        jit_compile, seed are read).
      loss_scale: wrap the optimizers for dynamic loss scaling (mixed_float16).
    """
    name = "coopnet"
    validation_key = "val_photo_theta_alpha"
    progress_keys = None   # summaries.format_postfix's default

    def __init__(self, config, loss_scale: bool = False):
        self.depth_net = models.build_depth_net(height=config.height, width=config.width)
        self.pose_net = models.build_pose_net(height=config.height, width=config.width)
        self.flow_net = models.build_flow_net(height=config.height, width=config.width)
        self.optimizers = {}
        for group in ("depth_pose", "flow"):
            with gin.config_scope(group):
                self.optimizers[group] = (
                    optimizers.make_optimizer(loss_scale=loss_scale, name=f"adam_{group}"),
                    optimizers.make_learning_rate_schedule(config.steps_per_epoch))
        self.depth_pose_optimizer = self.optimizers["depth_pose"][0]
        self.flow_optimizer = self.optimizers["flow"][0]
        self.apportionment = make_apportionment()
        options = step_options()._replace(jit_compile=bool(config.jit_compile),
                                          seed=int(config.seed))
        self.step = CoopTrainStep(
            self.depth_net, self.pose_net, self.flow_net, self.depth_pose_optimizer,
            self.flow_optimizer, self.apportionment, weights=loss_weights(), options=options,
            global_batch_size=config.batch_size)
        self.stages = self.apportionment.stages
        # ORACLE switches read ground truth: the pipeline must deliver it.
        self.needs_ground_truth = bool(self.apportionment.needs_ground_truth
                                       or options.ground_truth_apportionment_inputs)
        self.image_kinds = None

    def checkpoint_items(self):
        return dict(depth_net=self.depth_net, pose_net=self.pose_net, flow_net=self.flow_net,
                    depth_pose_optimizer=self.depth_pose_optimizer,
                    flow_optimizer=self.flow_optimizer,
                    **self.apportionment.checkpoint_items())

    def burn_in_untouched_items(self):
        return self.apportionment.burn_in_untouched_items()

    def start_epoch(self) -> None:
        self.apportionment.start_epoch()

    def end_epoch(self) -> None:
        """Freezes this epoch's quantiles (used during the next one)."""
        self.apportionment.end_epoch()

    def keep_scalar(self, key: str) -> bool:
        """False for ``quantiles/current/*`` while no quantiles are frozen (burn-in)."""
        if not key.startswith("quantiles/current/"):
            return True
        layer = self.apportionment.quantile_layer
        return layer is not None and bool(np.any(layer.current_valid.numpy() > 0.5))

    def validation_phase(self, phase: Phase) -> Phase:
        """The validation loss is the burn-in's (one definition across epochs)."""
        del phase
        return Phase(burn_in=True, update_quantiles=False)


_LEE_WEIGHTS = lee_step.LeeWeights._field_defaults
_LEE_OPTIONS = lee_step.LeeOptions._field_defaults


class LeeSettings(NamedTuple):
    """What `lee` returns: the loss weights, the step options and the phase lengths."""
    weights: lee_step.LeeWeights
    options: lee_step.LeeOptions
    phase1_epochs: int
    phase2_epochs: int


def _class_height_table(class_heights: Optional[Dict[str, float]]) -> Optional[Tuple[float, ...]]:
    """`lee.class_heights` (class name -> H_c in m) as a tuple indexed by `boxes.CLASSES`
    ids; classes not named get `object_motion.DEFAULT_OBJECT_HEIGHT`. None stays None.

    Raises:
      ValueError: not a dict, a name not in `boxes.CLASSES` (case-insensitive) or given
        twice, or a height that is not a finite number > 0.
    """
    if class_heights is None:
        return None
    if not isinstance(class_heights, dict):
        raise ValueError("lee.class_heights must be a dict {class name: height in m}, got "
                         f"{class_heights!r}")
    table = [object_motion.DEFAULT_OBJECT_HEIGHT] * len(boxes.CLASSES)
    seen = {}
    for name, height in class_heights.items():
        key = name.strip().lower() if isinstance(name, str) else None
        if key not in boxes.CLASS_IDS:
            raise ValueError(f"lee.class_heights: unknown class {name!r}; the classes are "
                             f"{boxes.CLASSES} (case-insensitive)")
        if key in seen:
            raise ValueError(f"lee.class_heights: class {name!r} given twice "
                             f"(also as {seen[key]!r})")
        seen[key] = name
        if (isinstance(height, bool) or not isinstance(height, (int, float))
                or not math.isfinite(height) or height <= 0):
            raise ValueError(f"lee.class_heights[{name!r}]: the height must be a number of "
                             f"metres > 0, got {height!r}")
        table[boxes.CLASS_IDS[key]] = float(height)
    return tuple(table)


@gin.configurable
def lee(csac: bool = _LEE_OPTIONS["csac"],
        phase1_epochs: int = 10,
        phase2_epochs: int = 10,
        lambda_p: float = _LEE_WEIGHTS["p"], lambda_g: float = _LEE_WEIGHTS["g"],
        lambda_s: float = _LEE_WEIGHTS["s"], lambda_h: float = _LEE_WEIGHTS["h"],
        lambda_mr: float = _LEE_WEIGHTS["mr"], lambda_ms: float = _LEE_WEIGHTS["ms"],
        lambda_mp: float = _LEE_WEIGHTS["mp"], lambda_mc: float = _LEE_WEIGHTS["mc"],
        automask: bool = _LEE_OPTIONS["automask"],
        rotation_mode: str = _LEE_OPTIONS["rotation_mode"],
        csac_alpha: float = _LEE_OPTIONS["csac_alpha"],
        csac_beta: float = _LEE_OPTIONS["csac_beta"],
        motion_smoothness_tau: float = _LEE_OPTIONS["motion_smoothness_tau"],
        class_heights: Optional[Dict[str, float]] = None,
        gradient_clip_norm=_LEE_OPTIONS["gradient_clip_norm"]) -> LeeSettings:
    """Lee et al.'s settings (`train_and_evaluate.method = 'lee'`; docs/lee.md).

    Args:
      csac: L_mr (CSAC) on; False is the "without CSAC" ablation (Lee Table 3), as is
        ``lambda_mr = 0``. "Without DAM" is ``build_motion_net.dam = False``.
      phase1_epochs, phase2_epochs: lengths of Lee Table 1's phase 1 (depth + ego-motion)
        and phase 2 (ego + residual motion, depth frozen); phase 3 (all) lasts from then
        to ``train_and_evaluate.num_epochs`` (paper: 10 and 10 epochs of 1,000 snippets).
      lambda_p ... lambda_mc: the weights of Lee Eq. 6 (`lee_step.LeeWeights`, which
        documents the defaults); 0 switches a term off.
      automask: Monodepth2 auto-masking in L_p.
      rotation_mode: ego-motion parametrisation ('axis_angle' as the pose net).
      csac_alpha, csac_beta: Lee Eq. 4 (30, 0.2).
      motion_smoothness_tau: τ of Lee Eq. 7 (0.1).
      class_heights: L_h's object height H_c per class, {name of `boxes.CLASSES`
        (case-insensitive): metres}, e.g. ``{'Car': h_car, 'Pedestrian': h_ped}``; classes
        not named get `object_motion.DEFAULT_OBJECT_HEIGHT` (1.53 m). None: 1.53 m for
        every box. ``tools/kitti_class_heights.py`` computes it from KITTI labels.
      gradient_clip_norm: global-norm clipping per optimizer (None: off).
    """
    if int(phase1_epochs) < 1 or int(phase2_epochs) < 1:
        raise ValueError(f"lee.phase1_epochs and lee.phase2_epochs must be >= 1: "
                         f"{phase1_epochs}, {phase2_epochs}")
    weights = lee_step.LeeWeights(p=lambda_p, g=lambda_g, s=lambda_s, h=lambda_h,
                                  mr=lambda_mr, ms=lambda_ms, mp=lambda_mp, mc=lambda_mc)
    options = lee_step.LeeOptions(
        csac=bool(csac), automask=bool(automask), rotation_mode=rotation_mode,
        csac_alpha=float(csac_alpha), csac_beta=float(csac_beta),
        motion_smoothness_tau=float(motion_smoothness_tau),
        class_heights=_class_height_table(class_heights),
        gradient_clip_norm=gradient_clip_norm)
    return LeeSettings(weights, options, int(phase1_epochs), int(phase2_epochs))


class LeeMethod:
    """Lee et al. (ICCV 2021): the depth net and the unified motion net
    (`models.build_motion_net`), two Adams (gin scopes ``depth`` and ``motion``),
    `lee_step.LeeTrainStep` and the three phases of their Table 1 as schedule stages.
    Same interface as `CoopNetMethod`.
    """
    name = "lee"
    validation_key = "val_photometric"
    progress_keys = ("total", "photometric")

    def __init__(self, config, loss_scale: bool = False):
        self.depth_net = models.build_depth_net(height=config.height, width=config.width)
        self.motion_net = models.build_motion_net(height=config.height, width=config.width)
        self.optimizers = {}
        for group in ("depth", "motion"):
            with gin.config_scope(group):
                self.optimizers[group] = (
                    optimizers.make_optimizer(loss_scale=loss_scale, name=f"adam_{group}"),
                    optimizers.make_learning_rate_schedule(config.steps_per_epoch))
        self.depth_optimizer = self.optimizers["depth"][0]
        self.motion_optimizer = self.optimizers["motion"][0]
        settings = lee()
        if config.burn_in_epochs > settings.phase1_epochs:
            raise ValueError(
                f"lee: the warm-up (train_and_evaluate.burn_in_epochs = "
                f"{config.burn_in_epochs}) leaves L_g and L_h out of phase 1 only; it cannot "
                f"be longer than lee.phase1_epochs = {settings.phase1_epochs}")
        options = settings.options._replace(jit_compile=bool(config.jit_compile),
                                            seed=int(config.seed))
        self.step = lee_step.LeeTrainStep(
            self.depth_net, self.motion_net, self.depth_optimizer, self.motion_optimizer,
            weights=settings.weights, options=options, global_batch_size=config.batch_size)
        # phase 3 lasts to the end (a non-repeating schedule keeps its last stage)
        self.stages = (lee_step.PHASES, (settings.phase1_epochs, settings.phase2_epochs, 1),
                       "epochs", False)
        self.needs_ground_truth = False
        self.image_kinds = dict(summaries.IMAGE_KINDS, **lee_step.IMAGE_KINDS)

    def checkpoint_items(self):
        return dict(depth_net=self.depth_net, motion_net=self.motion_net,
                    depth_optimizer=self.depth_optimizer,
                    motion_optimizer=self.motion_optimizer)

    @staticmethod
    def burn_in_untouched_items():
        return ()   # Lee et al. train from scratch: no shared burn-in

    def start_epoch(self) -> None:
        """Nothing per epoch (the phase comes from the schedule)."""

    def end_epoch(self) -> None:
        """Nothing per epoch."""

    @staticmethod
    def keep_scalar(key: str) -> bool:
        del key
        return True

    @staticmethod
    def validation_phase(phase: Phase) -> Phase:
        """The validation loss is that of the current phase (comparable within a phase)."""
        return phase


def make_method(name: str, config, loss_scale: bool = False):
    """The method ``name`` (one of `METHODS`) of a run; call inside ``strategy.scope()``."""
    if name == "coopnet":
        return CoopNetMethod(config, loss_scale)
    if name == "lee":
        return LeeMethod(config, loss_scale)
    raise ValueError(f"train_and_evaluate.method must be one of {METHODS}: {name!r}")
