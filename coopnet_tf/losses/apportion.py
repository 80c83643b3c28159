"""Pixel apportionment between the depth+pose pair and the flow network.

CoopNet's contribution (paper Sec. 3-4, Eqs. 8-14; docs/decisions.md D1-D3, D13-D15) is *which pixels,
with which weight*, train which network. This module computes that, at scale 0 and from
stop-gradient inputs, behind one interface, so that the Table 4 rows are a choice of
strategy:

* ``baseline`` (Table 4 row 1): every pixel trains both sides. Rigid: Monodepth2
  minimum reprojection with auto-masking; flow: uniform mean over the non-occluded pixels.
* ``glnet_min`` (row 2, Eqs. 6-7): Ψ = min(Φ_D, Φ_F) per pixel and source: the rigid
  side gets the pixels with Φ_D < Φ_F (Δ < 0), the flow the others; both sums are
  normalised by ALL pixels (B·S·H·W), as Eq. 6 is — which is what lets the flow
  starve depth/pose (the instability the paper analyses).
* ``coopnet`` (rows 3+, Eqs. 10-14): depth/pose train on V = V_η ∩ V_ζ (Δ within the
  previous epoch's [q0.35, q0.65], Δflow^x and Δflow^y within their [q0.25, q0.75]),
  combined with minimum reprojection; the flow trains on every non-occluded pixel, the
  tails of Δ and the centre weighted to contribute equally ("mean of tails + mean of
  centre", Eq. 11).
* ``oracle_static`` (a research instrument, not in the paper): V = the ground-truth static
  pixels (moving in neither source), minimum reprojection over them; flow weights uniform
  on the non-occluded pixels — the upper bound of any apportionment. Needs the records'
  ground-truth moving masks (``ApportionInputs.gt_moving_mask``).

Interface (what the training step codes against):

1. ``strategy = make_strategy(name, **options)`` — inside ``strategy_scope`` of
   ``tf.distribute`` if any, because ``coopnet`` creates its quantile layer.
2. Every step: ``app = strategy(ApportionInputs(...), use_quantiles, update_quantiles)``
   with scale-0 maps; returns an ``Apportionment`` (masks/weights are stop-gradient).
3. Every scale s: ``photometric.rigid_photometric_loss(phi_rigid_s, phi_identity, app.rigid_mask,
   app.rigid_normalisation, seed)`` and ``photometric.flow_photometric_loss(phi_flow_s,
   app.flow_weight)`` (Φ maps at full resolution for every scale, Monodepth2 style; the
   scale-0 masks are reused at every scale, docs/decisions.md D2).
4. ``strategy.start_epoch()`` / ``strategy.end_epoch()`` at epoch boundaries;
   ``strategy.quantile_layer`` goes into the checkpoint; ``strategy.trainable_variables``
   (empty here) is where a strategy owning a network puts it, with its optimizer
   (``strategy.optimizer``), its loss from ``strategy.auxiliary_losses`` and its
   sub-phases (``stages``, ``trained_groups``): Competitive Collaboration's moderator,
   `losses/competitive_strategy.py`, built by the gin factory ``make_apportionment``.

Gradient routing: every mask and weight is built from ``tf.stop_gradient`` inputs, so the
rigid loss reaches depth/pose only through Φ_D and the flow loss reaches the flow net only
through Φ_F. ``tf.GradientTape.gradient`` then returns ``None`` for the other side's
variables (they are connected only through a stop-gradient); with
``unconnected_gradients=tf.UnconnectedGradients.ZERO`` it returns exact zeros.

gin-free; the training code wraps ``make_strategy`` with ``gin.external_configurable``.
Static shapes; XLA-friendly except for the ``all_gather`` of the quantile layer.
"""
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import tensorflow as tf

from coopnet_tf.losses import photometric
from coopnet_tf.losses import quantile as quantile_lib

DELTA = "delta"
DELTA_FLOW_X = "delta_flow_x"
DELTA_FLOW_Y = "delta_flow_y"
DELTA_FLOW_EPS = 1e-3  # px, in the denominator of Eq. 13 (docs/decisions.md D14)
DEFAULT_ETA = 0.15
DEFAULT_ZETA = 0.25
DEFAULT_TAIL_PROBABILITY = 0.15
FLOW_WEIGHTINGS = ("tails", "eq11")
FLOW_NORMALISATIONS = ("pair", "batch")   # Eq. 11's counts: per (image, source) / batch
RIGID_NORMALISATIONS = photometric.RIGID_NORMALISATIONS
TRAINED_GROUPS = ("depth_pose", "flow", "strategy")
DEFAULT_HISTOGRAM_SIZE = 4096


class ApportionInputs(NamedTuple):
    """Scale-0 inputs of an apportionment strategy, per source frame (S sources).

    phi_rigid: `[B, S, H, W, 1]` Φ(I_t, Î_s^{θ,α}) (Eq. 3), differentiable w.r.t. depth/pose.
    phi_flow: `[B, S, H, W, 1]` Φ(I_t, Î_s^δ) (Eq. 4), differentiable w.r.t. the flow net.
    phi_identity: `[B, S, H, W, 1]` Φ(I_t, I_s), un-warped (auto-masking), or None.
    rigid_flow: `[B, S, H, W, 2]` F_{θ,α} (Eq. 5), px, channel 0 = x.
    optical_flow: `[B, S, H, W, 2]` F_δ target -> source, px.
    non_occluded: `[B, S, H, W, 1]` 0/1, 1 = target pixel visible in source s (range map).
    extras: optional mapping for strategies that need more (e.g. a moderator's frames).
    gt_moving_mask: `[B, S, H, W, 1]` 0/1 ground truth, 1 = target pixel on an object moving
      between I_t and I_s (synthetic records only; ``oracle_static`` needs it), or None.
    """
    phi_rigid: tf.Tensor
    phi_flow: tf.Tensor
    phi_identity: Optional[tf.Tensor]
    rigid_flow: tf.Tensor
    optical_flow: tf.Tensor
    non_occluded: tf.Tensor
    extras: Optional[Mapping[str, Any]] = None
    gt_moving_mask: Optional[tf.Tensor] = None


class Apportionment(NamedTuple):
    """What a strategy decides for one step (all tensors stop-gradient, float32).

    rigid_mask: `[B, S, H, W, 1]` 0/1: source s's rigid reprojection error may train
      depth/pose at that pixel.
    flow_weight: `[B, S, H, W, 1]` loss weights, already normalised: the flow photometric
      loss is `sum(flow_weight * Φ_F)` (``photometric.flow_photometric_loss``).
    rigid_normalisation: "masked" (minimum reprojection over the admitted sources and the
      identity terms, averaged over pixels with at least one admitted source) or "all"
      (per-source `rigid_mask * Φ_D` averaged over all B·S·H·W entries).
    flow_pixel_weight: `[B, S, H, W, 1]` the per-pixel weight w(p) of Eq. 11 on the
      non-occluded pixels (0 elsewhere; ≡ 1 on them for uniform weighting) — for images.
    stats: name -> scalar float32, for TensorBoard.
    histograms: name -> 1-D float32 tensor of fixed length (Δ, Δflow samples).
    extras: optional mapping of a strategy's own tensors for its ``auxiliary_losses``
      (e.g. the moderator's masks, which do carry gradient to the moderator).
    """
    rigid_mask: tf.Tensor
    flow_weight: tf.Tensor
    rigid_normalisation: str
    flow_pixel_weight: tf.Tensor
    stats: Dict[str, tf.Tensor]
    histograms: Dict[str, tf.Tensor]
    extras: Optional[Mapping[str, Any]] = None


# ------------------------------------------------------------------------ math ----

def compute_delta(phi_rigid, phi_flow):
    """Δ = Φ_D − Φ_F (Eq. 8), stop-gradient. `[..., 1]` x2 -> `[..., 1]` float32.
    Positive: the flow reconstructs better."""
    return tf.stop_gradient(tf.cast(phi_rigid, tf.float32) - tf.cast(phi_flow, tf.float32))


def compute_delta_flow(rigid_flow, optical_flow, eps=DELTA_FLOW_EPS):
    """Δflow = (F_{θ,α} − F_δ) / (‖F_{θ,α}‖₂ + ‖F_δ‖₂ + eps) (Eq. 13), stop-gradient.

    Args:
      rigid_flow, optical_flow: `[..., 2]` px.
      eps: px, keeps the ratio finite where both flows vanish.

    Returns:
      `[..., 2]` float32, each component in [-1, 1].
    """
    fr = tf.stop_gradient(tf.cast(rigid_flow, tf.float32))
    fo = tf.stop_gradient(tf.cast(optical_flow, tf.float32))
    norm = tf.norm(fr, axis=-1, keepdims=True) + tf.norm(fo, axis=-1, keepdims=True)
    return (fr - fo) / (norm + eps)


def interval_mask(x, low, high):
    """`low <= x <= high` as a bool tensor (closed interval; NaN anywhere -> False)."""
    return (x >= low) & (x <= high)


def group_weights(in_gamma, domain, normalisation="pair"):
    """Eq. 11 weights on `domain`, per (image, source) pair, with empty groups guarded.

    For pair (b, s) with P = domain pixels, Γ = P ∩ in_gamma, Γ̄ = P \\ Γ:
    w(p) = |P| / |Γ| on Γ, |P| / |Γ̄| on Γ̄ (an empty group has no pixel, so its weight is
    never used: the other group then has w ≡ 1), 0 outside P. The loss weights make
    `sum(loss_weight * Φ)` = mean over pairs with P ≠ ∅ of (mean_Γ Φ + mean_Γ̄ Φ), each
    mean skipped when its group is empty (docs/decisions.md D15).

    With ``normalisation="batch"`` the counts run over every pixel of the batch instead
    (one group pair: P = all domain pixels of the batch), and `sum(loss_weight * Φ)` =
    mean_Γ Φ + mean_Γ̄ Φ over the batch.

    Args:
      in_gamma: `[B, S, H, W, 1]` bool.
      domain: `[B, S, H, W, 1]` bool.
      normalisation: "pair" (per (image, source) pair) or "batch" (`FLOW_NORMALISATIONS`).

    Returns:
      (pixel_weight w(p), loss_weight), both `[B, S, H, W, 1]` float32.
    """
    if normalisation not in FLOW_NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {FLOW_NORMALISATIONS}: "
                         f"{normalisation!r}")
    dom = tf.cast(domain, tf.float32)
    g = tf.cast(in_gamma, tf.float32) * dom
    gb = dom - g
    axes = [2, 3, 4] if normalisation == "pair" else [0, 1, 2, 3, 4]
    n_p = tf.reduce_sum(dom, axis=axes, keepdims=True)
    n_g = tf.reduce_sum(g, axis=axes, keepdims=True)
    n_gb = tf.reduce_sum(gb, axis=axes, keepdims=True)
    pixel_w = g * tf.math.divide_no_nan(n_p, n_g) + gb * tf.math.divide_no_nan(n_p, n_gb)
    num_pairs = tf.reduce_sum(tf.cast(n_p > 0, tf.float32))
    loss_w = tf.math.divide_no_nan(
        g * tf.math.divide_no_nan(1.0, n_g) + gb * tf.math.divide_no_nan(1.0, n_gb), num_pairs)
    return pixel_w, loss_w


def uniform_weights(domain):
    """w ≡ 1 on `domain`: loss weights give the mean over pairs of the per-pair mean over
    `domain` (pairs with an empty domain skipped). Returns (pixel_weight, loss_weight)."""
    return group_weights(tf.zeros_like(tf.cast(domain, tf.bool)), domain)


def _f32(x):
    return tf.cast(x, tf.float32)


def _as_bool(flag):
    return flag if isinstance(flag, bool) else tf.cast(flag, tf.bool)


def _fraction(mask, over=None):
    m = _f32(mask)
    if over is None:
        return tf.reduce_mean(m)
    o = _f32(over)
    return tf.math.divide_no_nan(tf.reduce_sum(m * o), tf.reduce_sum(o))


def _sg_inputs(inputs: ApportionInputs):
    """The stop-gradient float32 tensors the apportionment is computed from."""
    sg = lambda t: tf.stop_gradient(_f32(t))  # noqa: E731
    return (sg(inputs.phi_rigid), sg(inputs.phi_flow), sg(inputs.rigid_flow),
            sg(inputs.optical_flow), sg(inputs.non_occluded))


def _common(phi_rigid, phi_flow, rigid_flow, optical_flow, non_occluded, eps):
    delta = compute_delta(phi_rigid, phi_flow)
    dflow = compute_delta_flow(rigid_flow, optical_flow, eps)
    domain = non_occluded > 0.5
    return delta, dflow[..., 0:1], dflow[..., 1:2], domain


def _common_stats(delta, domain, rigid_mask, pixel_w):
    return {
        "apportion/fraction_rigid": _fraction(rigid_mask),
        "apportion/fraction_non_occluded": _fraction(domain),
        # P(Δ < 0): the paper's stability criterion θ_n = 1 / P(Δ_n < 0) (Sec. 3.1).
        "apportion/fraction_delta_negative": _fraction(delta < 0.0, domain),
        "apportion/delta_mean": tf.math.divide_no_nan(
            tf.reduce_sum(delta * _f32(domain)), tf.reduce_sum(_f32(domain))),
        "apportion/flow_weight_max": tf.reduce_max(pixel_w),
    }


def _baseline_core(phi_rigid, phi_flow, rigid_flow, optical_flow, non_occluded, eps,
                   hist_size):
    delta, dfx, dfy, domain = _common(phi_rigid, phi_flow, rigid_flow, optical_flow,
                                      non_occluded, eps)
    rigid_mask = tf.ones_like(delta)
    pixel_w, loss_w = uniform_weights(domain)
    stats = _common_stats(delta, domain, rigid_mask, pixel_w)
    hist = _histogram_samples({DELTA: delta, DELTA_FLOW_X: dfx, DELTA_FLOW_Y: dfy}, domain,
                              hist_size)
    return rigid_mask, loss_w, pixel_w, stats, hist


def _glnet_core(phi_rigid, phi_flow, rigid_flow, optical_flow, non_occluded, eps, hist_size):
    delta, dfx, dfy, domain = _common(phi_rigid, phi_flow, rigid_flow, optical_flow,
                                      non_occluded, eps)
    rigid_wins = delta < 0.0  # Φ_D < Φ_F: Ψ's minimum is the rigid term
    rigid_mask = _f32(rigid_wins)
    flow_mask = _f32(tf.logical_not(rigid_wins) & domain)
    loss_w = flow_mask / tf.cast(tf.size(flow_mask), tf.float32)
    stats = _common_stats(delta, domain, rigid_mask, flow_mask)
    stats["apportion/fraction_flow"] = _fraction(flow_mask)
    hist = _histogram_samples({DELTA: delta, DELTA_FLOW_X: dfx, DELTA_FLOW_Y: dfy}, domain,
                              hist_size)
    return rigid_mask, loss_w, flow_mask, stats, hist


def _coopnet_core(phi_rigid, phi_flow, rigid_flow, optical_flow, non_occluded, bounds, use,
                  eps, use_flow_prior, flow_normalisation="pair"):
    """Masks and weights of CoopNet from the frozen quantiles.

    Args:
      bounds: `[8]` float32: Δ's V_η bounds, Δflow^x and Δflow^y V_ζ bounds, Γ bounds.
      use: scalar bool; False -> V = everything, w ≡ 1 on the non-occluded pixels.
    """
    delta, dfx, dfy, domain = _common(phi_rigid, phi_flow, rigid_flow, optical_flow,
                                      non_occluded, eps)
    e_lo, e_hi, x_lo, x_hi, y_lo, y_hi, t_lo, t_hi = tf.unstack(bounds)
    v_eta = interval_mask(delta, e_lo, e_hi)
    v_zeta = interval_mask(dfx, x_lo, x_hi) & interval_mask(dfy, y_lo, y_hi)
    v = v_eta & v_zeta if use_flow_prior else v_eta
    rigid_mask = tf.where(use, _f32(v), tf.ones_like(delta))
    in_gamma = tf.logical_not(interval_mask(delta, t_lo, t_hi)) & use
    pixel_w, loss_w = group_weights(in_gamma, domain, flow_normalisation)
    stats = _common_stats(delta, domain, rigid_mask, pixel_w)
    stats.update({
        "apportion/quantiles_in_use": _f32(use),
        "apportion/fraction_V": _fraction(rigid_mask),
        "apportion/fraction_V_eta": tf.where(use, _fraction(v_eta), 1.0),
        "apportion/fraction_V_zeta": tf.where(use, _fraction(v_zeta), 1.0),
        "apportion/fraction_V_non_occluded": _fraction(rigid_mask, domain),
        "apportion/fraction_tails": _fraction(in_gamma, domain),
    })
    return delta, dfx, dfy, domain, rigid_mask, loss_w, pixel_w, stats


_CORES = {}


def _core(fn, jit_compile):
    """`fn` wrapped once in a `tf.function` (XLA-compiled when asked)."""
    key = (fn, bool(jit_compile))
    if key not in _CORES:
        _CORES[key] = tf.function(fn, jit_compile=bool(jit_compile), autograph=False)
    return _CORES[key]


def _histogram_samples(values, valid, size, seed=(0,)):
    samples, active = quantile_lib.uniform_subsample(
        values, valid, size, tf.constant(seed, tf.int64))
    return {k: quantile_lib.fill_inactive(v, active) for k, v in samples.items()}


# ------------------------------------------------------------------ strategies ----

class ApportionmentStrategy:
    """Base class: one call per step returns an ``Apportionment``.

    Subclasses implement ``__call__``. A strategy that owns networks (Competitive
    Collaboration's moderator) returns them in ``trainable_variables`` and their loss from
    ``auxiliary_losses``; the training step gives them their own tape and optimizer.

    Args:
      histogram_size: length of the Δ/Δflow histogram samples (baseline, glnet_min).
      jit_compile: XLA-compile the per-pixel work (one nested `tf.function`).
      delta_flow_eps: ε (px) in Eq. 13's denominator.
    """
    name = "base"
    needs_ground_truth = False   # True: the inputs must carry ground truth (oracles)

    def __init__(self, histogram_size: int = DEFAULT_HISTOGRAM_SIZE, jit_compile: bool = True,
                 delta_flow_eps: float = DELTA_FLOW_EPS):
        self.histogram_size = int(histogram_size)
        self.jit_compile = bool(jit_compile)
        self.delta_flow_eps = float(delta_flow_eps)

    @property
    def quantile_layer(self) -> Optional[quantile_lib.RunningQuantiles]:
        return None

    @property
    def trainable_variables(self):
        return []

    # The strategy's own sub-phases, or None: a plain ``(names, lengths, unit, repeat)``
    # tuple that the training schedule turns into ``Phase.stage`` (training/schedule.py,
    # docs/training.md "Phases"); e.g. Competitive Collaboration's alternation.
    stages = None

    @property
    def state_variables(self):
        """Non-trainable state of the strategy's own networks (BatchNorm statistics),
        restored by the step when it skips a non-finite update."""
        return []

    @property
    def optimizer(self):
        """The optimizer of ``trainable_variables`` (None: the strategy owns no network)."""
        return None

    def trained_groups(self, stage: str = "") -> Tuple[str, ...]:
        """Which variable groups a step of sub-phase ``stage`` updates, among
        ``TRAINED_GROUPS`` ("depth_pose", "flow", "strategy")."""
        return ("depth_pose", "flow")

    def checkpoint_items(self) -> Dict[str, Any]:
        """Trackables to add to the training checkpoint."""
        layer = self.quantile_layer
        return {} if layer is None else {"quantiles": layer}

    def burn_in_untouched_items(self) -> Tuple[str, ...]:
        """Names of ``checkpoint_items`` that no burn-in step changes: a run of this
        strategy may resume from a burn-in checkpoint without them (another strategy's
        shared burn-in); they then start from their initialisation, as in a run that
        trained its own burn-in."""
        return ()

    def start_epoch(self):
        """Call at the start of every epoch (outside `strategy.run`)."""

    def end_epoch(self):
        """Call at the end of every epoch (outside `strategy.run`)."""

    def auxiliary_losses(self, inputs: ApportionInputs,
                         apportionment: Apportionment) -> Dict[str, tf.Tensor]:
        """Losses of the strategy's own networks (none here)."""
        return {}

    def __call__(self, inputs: ApportionInputs, use_quantiles=False,
                 update_quantiles=False) -> Apportionment:
        raise NotImplementedError


class BaselineStrategy(ApportionmentStrategy):
    """Table 4 row 1: all pixels. Rigid: Monodepth2 minimum reprojection (+ auto-mask);
    flow: uniform mean over the non-occluded pixels (per image-source pair, then over
    pairs)."""
    name = "baseline"

    def __call__(self, inputs, use_quantiles=False, update_quantiles=False):
        rigid_mask, loss_w, pixel_w, stats, hist = _core(_baseline_core, self.jit_compile)(
            *_sg_inputs(inputs), eps=self.delta_flow_eps, hist_size=self.histogram_size)
        return Apportionment(rigid_mask, loss_w, "masked", pixel_w, stats, hist)


class GLNetMinStrategy(ApportionmentStrategy):
    """Table 4 row 2 (Eqs. 6-7): Ψ = min(Φ_D, Φ_F) per pixel and source.

    Depth/pose get the entries with Φ_D < Φ_F (Δ < 0), the flow the others (restricted to
    non-occluded pixels); both losses are normalised by all B·S·H·W entries (Eq. 6 sums
    over s and p), so when the flow wins more pixels the depth/pose gradient shrinks."""
    name = "glnet_min"

    def __call__(self, inputs, use_quantiles=False, update_quantiles=False):
        rigid_mask, loss_w, flow_mask, stats, hist = _core(_glnet_core, self.jit_compile)(
            *_sg_inputs(inputs), eps=self.delta_flow_eps, hist_size=self.histogram_size)
        return Apportionment(rigid_mask, loss_w, "all", flow_mask, stats, hist)


def _oracle_static_core(phi_rigid, phi_flow, rigid_flow, optical_flow, non_occluded,
                        gt_moving, eps, hist_size):
    delta, dfx, dfy, domain = _common(phi_rigid, phi_flow, rigid_flow, optical_flow,
                                      non_occluded, eps)
    # static = moving in NO source: the same mask for every source of the pixel.
    moving_any = tf.reduce_max(_f32(gt_moving), axis=1, keepdims=True) > 0.5
    rigid_mask = tf.broadcast_to(_f32(tf.logical_not(moving_any)), tf.shape(delta))
    pixel_w, loss_w = uniform_weights(domain)
    stats = _common_stats(delta, domain, rigid_mask, pixel_w)
    stats["apportion/fraction_V"] = _fraction(rigid_mask)
    hist = _histogram_samples({DELTA: delta, DELTA_FLOW_X: dfx, DELTA_FLOW_Y: dfy}, domain,
                              hist_size)
    return rigid_mask, loss_w, pixel_w, stats, hist


class OracleStaticStrategy(ApportionmentStrategy):
    """Research instrument: V = the ground-truth static pixels, flow weights uniform.

    The rigid mask of every source is 1 where the target pixel moves in NO source
    (``gt_moving_mask``), and depth/pose train with Monodepth2's minimum reprojection over
    those pixels; the flow trains on every non-occluded pixel with w ≡ 1 (as baseline).
    What a perfect static/moving apportionment could give: the upper bound of any
    strategy. Raises when the inputs carry no ground truth.
    """
    name = "oracle_static"
    needs_ground_truth = True

    def __call__(self, inputs, use_quantiles=False, update_quantiles=False):
        if inputs.gt_moving_mask is None:
            raise ValueError(
                "apportionment 'oracle_static' needs the ground-truth moving masks "
                "(ApportionInputs.gt_moving_mask, batch key "
                "'gt_moving_mask'): train on records with ground truth (the synthetic "
                "world) and make_dataset(with_ground_truth=True)")
        rigid_mask, loss_w, pixel_w, stats, hist = _core(_oracle_static_core, self.jit_compile)(
            *_sg_inputs(inputs), tf.stop_gradient(_f32(inputs.gt_moving_mask)),
            eps=self.delta_flow_eps, hist_size=self.histogram_size)
        return Apportionment(rigid_mask, loss_w, "masked", pixel_w, stats, hist)


class CoopNetStrategy(ApportionmentStrategy):
    """Table 4 rows 3+ (Eqs. 8-14) with running quantiles (weighted summary or P²) of the
    previous epoch.

    Args:
      use_flow_prior: V = V_η ∩ V_ζ (Eq. 14) if True, else V = V_η (Eq. 10).
      eta: V_η = [q(0.5−η), q(0.5+η)] of Δ (0.15 -> [q0.35, q0.65]).
      zeta: V_ζ^{x,y} = [q(0.5−ζ), q(0.5+ζ)] of Δflow^{x,y} (0.25 -> [q0.25, q0.75]).
      tail_probability: "tails" weighting: Γ = Δ outside [q(t), q(1−t)] (0.15/0.85).
      flow_weighting: "tails" (the text's reading, default) or "eq11" (Eq. 11 literally:
        Γ = Δ outside V_η, i.e. outside [q0.35, q0.65]).
      flow_normalisation: Eq. 11's |P|, |Γ|, |Γ̄| counted per (image, source) pair
        ("pair", default) or over the whole batch ("batch"); see `group_weights`.
      sample_size: quantile subsample per variable per global step.
      seed: subsampling seed.
      jit_compile: XLA-compile the per-pixel work, the subsampling and the quantile update.
      quantile_estimator: "summary" (default; `quantile.SummaryQuantiles`: the quantiles
        of the epoch's stream from one sort per step, no loop) or "p2" (the paper's P², a
        sequential loop of `sample_size` iterations per step). Why: docs/performance.md.
      summary_size: points per variable of the "summary" estimator.
      delta_flow_eps: ε (px) of Eq. 13's denominator.
      histogram_size: unused (the histograms are the P² subsample, `sample_size` values
        per global step); accepted for a uniform signature.
    """
    name = "coopnet"

    def __init__(self, use_flow_prior: bool = True, eta: float = DEFAULT_ETA,
                 zeta: float = DEFAULT_ZETA, tail_probability: float = DEFAULT_TAIL_PROBABILITY,
                 flow_weighting: str = "tails", flow_normalisation: str = "pair",
                 sample_size: int = quantile_lib.DEFAULT_SAMPLE_SIZE, seed: int = 0,
                 jit_compile: bool = True, quantile_estimator: str = "summary",
                 summary_size: int = quantile_lib.DEFAULT_SUMMARY_SIZE,
                 delta_flow_eps: float = DELTA_FLOW_EPS,
                 histogram_size: int = DEFAULT_HISTOGRAM_SIZE):
        super().__init__(histogram_size, jit_compile, delta_flow_eps)
        if flow_weighting not in FLOW_WEIGHTINGS:
            raise ValueError(f"flow_weighting must be one of {FLOW_WEIGHTINGS}: {flow_weighting!r}")
        if flow_normalisation not in FLOW_NORMALISATIONS:
            raise ValueError(f"flow_normalisation must be one of {FLOW_NORMALISATIONS}: "
                             f"{flow_normalisation!r}")
        for nm, v in (("eta", eta), ("zeta", zeta), ("tail_probability", tail_probability)):
            if not 0.0 < v < 0.5:
                raise ValueError(f"{nm} must lie in ]0, 0.5[: {v}")
        self.use_flow_prior = bool(use_flow_prior)
        self.eta = float(eta)
        self.zeta = float(zeta)
        self.tail_probability = float(tail_probability)
        self.flow_weighting = flow_weighting
        self.flow_normalisation = flow_normalisation
        self.eta_probs = (round(0.5 - self.eta, 12), round(0.5 + self.eta, 12))
        self.zeta_probs = (round(0.5 - self.zeta, 12), round(0.5 + self.zeta, 12))
        self.tail_probs = (round(self.tail_probability, 12),
                           round(1.0 - self.tail_probability, 12))
        delta_probs = set(self.eta_probs)
        if flow_weighting == "tails":
            delta_probs |= set(self.tail_probs)
        probabilities = {
            DELTA: sorted(delta_probs),
            DELTA_FLOW_X: list(self.zeta_probs),
            DELTA_FLOW_Y: list(self.zeta_probs),
        }
        self.quantile_estimator = quantile_estimator
        extra = {"summary_size": summary_size} if quantile_estimator == "summary" else {}
        self._layer = quantile_lib.make_quantile_layer(
            quantile_estimator, probabilities=probabilities, sample_size=sample_size,
            seed=seed, jit_compile=jit_compile, name=f"{quantile_estimator}_quantiles", **extra)

    @property
    def quantile_layer(self):
        return self._layer

    def start_epoch(self):
        self._layer.reset()

    def end_epoch(self):
        self._layer.freeze()

    def _bounds(self, name, probs):
        layer = self._layer
        ok = layer.current_is_valid(name, probs[0]) & layer.current_is_valid(name, probs[1])
        return [layer.current(name, probs[0]), layer.current(name, probs[1])], ok

    def __call__(self, inputs, use_quantiles=False, update_quantiles=False):
        layer = self._layer
        # Frozen (previous-epoch) quantiles; masks only when every needed one exists.
        eta_b, have = self._bounds(DELTA, self.eta_probs)
        x_b, x_ok = self._bounds(DELTA_FLOW_X, self.zeta_probs)
        y_b, y_ok = self._bounds(DELTA_FLOW_Y, self.zeta_probs)
        if self.flow_weighting == "tails":
            t_b, t_ok = self._bounds(DELTA, self.tail_probs)
            have = have & t_ok
        else:
            t_b = eta_b
        if self.use_flow_prior:
            have = have & x_ok & y_ok
        use = tf.logical_and(tf.cast(use_quantiles, tf.bool), have)
        bounds = tf.stack(eta_b + x_b + y_b + t_b)

        delta, dfx, dfy, domain, rigid_mask, loss_w, pixel_w, stats = _core(
            _coopnet_core, self.jit_compile)(
                *_sg_inputs(inputs), bounds, use, eps=self.delta_flow_eps,
                use_flow_prior=self.use_flow_prior, flow_normalisation=self.flow_normalisation)

        # P²: this step's subsample of the non-occluded values (also the histograms).
        samples, active = layer.subsample(
            {DELTA: delta, DELTA_FLOW_X: dfx, DELTA_FLOW_Y: dfy}, domain)
        # No tf.cond: the replicas' samples are always gathered (a synchronisation point
        # cannot sit in a branch) and a disabled update absorbs nothing.
        layer.update_from_samples(samples, active, enabled=_as_bool(update_quantiles))

        stats = dict(stats)
        for key, val in layer.estimates_dict("current").items():
            stats[f"quantiles/current/{key}"] = val
        for key, val in layer.estimates_dict("running").items():
            stats[f"quantiles/running/{key}"] = val
        stats["quantiles/running/count"] = tf.cast(
            tf.reduce_max(tf.convert_to_tensor(layer.count)), tf.float32)
        hist = {k: quantile_lib.fill_inactive(v, active) for k, v in samples.items()}
        return Apportionment(rigid_mask, loss_w, "masked", pixel_w, stats, hist)


STRATEGIES = {
    BaselineStrategy.name: BaselineStrategy,
    GLNetMinStrategy.name: GLNetMinStrategy,
    CoopNetStrategy.name: CoopNetStrategy,
    OracleStaticStrategy.name: OracleStaticStrategy,
}


def make_strategy(name: str = "coopnet", **options) -> ApportionmentStrategy:
    """Builds the apportionment strategy `name` ("baseline", "glnet_min", "coopnet",
    "oracle_static").

    Call it inside `tf.distribute.Strategy.scope()` when distributing (the coopnet
    strategy creates variables). `options` are the strategy's constructor arguments
    (see ``CoopNetStrategy``; baseline, glnet_min and oracle_static take `histogram_size`,
    `jit_compile`, `delta_flow_eps`).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown apportionment strategy {name!r}; one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](**options)
