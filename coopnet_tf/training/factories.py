"""gin factories of the training package: what a config file names besides the networks.

Importing this module registers every configurable a config file may name:

* ``build_depth_net``, ``build_pose_net``, ``build_flow_net`` (`coopnet_tf.models`);
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
* ``make_distribution_strategy`` (`coopnet_tf.training.distribution`).

The math (geometry, losses, apportionment classes, the step) stays gin-free.
"""
import inspect

import gin
from absl import logging

from coopnet_tf import models  # noqa: F401  (registers build_*_net)
from coopnet_tf.data import pipeline  # noqa: F401  (registers make_dataset)
from coopnet_tf.data import synthetic
from coopnet_tf.losses import apportion, competitive_strategy
from coopnet_tf.training import distribution, optimizers
from coopnet_tf.training.step import LossWeights, StepOptions

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
