"""Competitive Collaboration (Ranjan et al., CVPR 2019) behind the apportionment interface.

The strategy owns the moderator M_χ (`models.build_moderator_net`, injected by the gin
factory `make_apportionment`, so that losses never import models) and its optimizer.
Every step it runs M on the stacked snippet (t−1, t, t+1) and apportions with the
stop-gradient masks m_s (1 = static w.r.t. source s):

* depth + pose: λ_R · mean(m_s · Φ_D)          (CC Eq. 8; normalisation "all")
* flow:         λ_F · mean((1 − m_s) · Φ_F)     (CC Eq. 9, on the non-occluded pixels)

with (λ_R, λ_F) = (1.0, 1.0), the weights of Algorithm 1's competition lines for R and
for F. Its ``auxiliary_losses`` are the moderator's objective (collaboration line of
Algorithm 1: λ = (1.0, 0.5, 0.005, 0.3) and λ_S = 0.005, `competitive.moderator_energy`),
with Φ and the flows stop-gradient.

Schedule (``stages``): after the burn-in (the "basic" phase: the step then uses the
baseline strategy — R and F each on every pixel, M untouched), the stages
"collaboration" (only M updated) and "competition" (only depth, pose and flow updated)
alternate every ``period`` steps or epochs (`trained_groups`). The stage is a function
of the global step, so a resumed run continues in its stage.

gin-free; `training/factories.make_apportionment` builds it.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from coopnet_tf.losses import apportion
from coopnet_tf.losses import competitive as cc

COLLABORATION = "collaboration"
COMPETITION = "competition"
PERIOD_UNITS = ("epochs", "steps")
NAMES = ("competitive_collaboration", "cc")


def _resize_bilinear(x, height, width):
    x = tf.cast(x, tf.float32)
    if x.shape[1] == height and x.shape[2] == width:
        return x
    return tf.image.resize(x, (height, width), method="bilinear")


def masks_by_source(masks):
    """`[B, H, W, S]` moderator output -> `[B, S, H, W, 1]` (the Φ maps' layout)."""
    return tf.transpose(tf.cast(masks, tf.float32), [0, 3, 1, 2])[..., None]


def snippet(frames):
    """`[B, 3, H, W, 3]` frames (t−1, t, t+1) -> `[B, H, W, 9]` moderator input."""
    return tf.concat([frames[:, i] for i in range(frames.shape[1])], axis=-1)


class CompetitiveCollaborationStrategy(apportion.ApportionmentStrategy):
    """CC's moderator as an apportionment strategy (see the module docstring).

    Args:
      moderator: the moderator network (snippet `[B, H, W, 9]` -> per-scale masks
        `[B, h, w, S]`).
      optimizer: its Keras optimizer (CC: Adam, 1e-4).
      period: length of each competition / collaboration stage.
      period_unit: "epochs" or "steps".
      flow_threshold: λ_c (px) of the consensus target (CC Eq. 12).
      flow_norm: "l2" (paper) or "linf" (authors' code) for ‖ν − u‖.
      rigid_weight: λ_R of depth + pose in the competition stage.
      flow_weight: λ_F of the flow in the competition stage.
      moderator_weights: (λ_R, λ_F, λ_M, λ_C) of the moderator's objective.
      mask_smooth_weight: λ_S of the masks' edge-aware smoothness.
      histogram_size: length of the Δ/Δflow histogram samples.
      jit_compile: unused (the moderator is a Keras model); uniform signature.
      delta_flow_eps: ε (px) of CoopNet Eq. 13 (histograms only).
    """
    name = "competitive_collaboration"

    def __init__(self, moderator: keras.Model, optimizer, period: int = 1,
                 period_unit: str = "epochs", flow_threshold: float = cc.PAPER_FLOW_THRESHOLD,
                 flow_norm: str = "l2",
                 rigid_weight: float = cc.ALGORITHM_1["competition_rigid"].rigid,
                 flow_weight: float = cc.ALGORITHM_1["competition_flow"].flow,
                 moderator_weights: Sequence[float] = tuple(cc.ALGORITHM_1[COLLABORATION]),
                 mask_smooth_weight: float = cc.PAPER_SMOOTH_WEIGHT,
                 histogram_size: int = apportion.DEFAULT_HISTOGRAM_SIZE,
                 jit_compile: bool = True, delta_flow_eps: float = apportion.DELTA_FLOW_EPS):
        super().__init__(histogram_size, jit_compile, delta_flow_eps)
        if period_unit not in PERIOD_UNITS:
            raise ValueError(f"period_unit must be one of {PERIOD_UNITS}: {period_unit!r}")
        if int(period) < 1:
            raise ValueError(f"period must be >= 1: {period}")
        if flow_norm not in cc.FLOW_NORMS:
            raise ValueError(f"flow_norm must be one of {cc.FLOW_NORMS}: {flow_norm!r}")
        self.moderator = moderator
        self._optimizer = optimizer
        self.period = int(period)
        self.period_unit = period_unit
        self.flow_threshold = float(flow_threshold)
        self.flow_norm = flow_norm
        self.rigid_weight = float(rigid_weight)
        self.flow_weight = float(flow_weight)
        self.moderator_weights = cc.PhaseWeights(*[float(w) for w in moderator_weights])
        self.mask_smooth_weight = float(mask_smooth_weight)
        self.stages = ((COLLABORATION, COMPETITION), (self.period, self.period),
                       self.period_unit, True)

    # ------------------------------------------------------------- interface ----
    @property
    def trainable_variables(self):
        return list(self.moderator.trainable_variables)

    @property
    def state_variables(self):
        return list(self.moderator.non_trainable_variables)

    @property
    def optimizer(self):
        return self._optimizer

    def trained_groups(self, stage: str = "") -> Tuple[str, ...]:
        if stage == COLLABORATION:
            return ("strategy",)
        if stage == COMPETITION:
            return ("depth_pose", "flow")
        raise ValueError(f"competitive_collaboration: unknown stage {stage!r}; "
                         f"one of {(COLLABORATION, COMPETITION)}")

    def checkpoint_items(self) -> Dict[str, Any]:
        return {"moderator_net": self.moderator, "moderator_optimizer": self._optimizer}

    def burn_in_untouched_items(self) -> Tuple[str, ...]:
        # the basic phase trains R and F only: M, its statistics and optimizer stay as built
        return ("moderator_net", "moderator_optimizer")

    def __call__(self, inputs: apportion.ApportionInputs, use_quantiles=False,
                 update_quantiles=False) -> apportion.Apportionment:
        """Runs M on ``inputs.extras["snippet"]`` (`[B, H, W, 9]`, with
        ``extras["training"]``: M in training mode) and apportions with its scale-0
        masks, stop-gradient. The per-scale masks go into ``extras["moderator_masks"]``."""
        extras = inputs.extras or {}
        if "snippet" not in extras:
            raise ValueError("competitive_collaboration needs ApportionInputs.extras"
                             "['snippet'] (the stacked frames [B, H, W, 9])")
        training = bool(extras.get("training", False))
        masks = [tf.cast(m, tf.float32) for m in self.moderator(extras["snippet"],
                                                                training=training)]
        phi_r, phi_f, rigid_flow, optical_flow, non_occ = apportion._sg_inputs(inputs)
        height, width = phi_r.shape[2], phi_r.shape[3]
        m = tf.stop_gradient(masks_by_source(_resize_bilinear(masks[0], height, width)))
        domain = tf.cast(non_occ > 0.5, tf.float32)
        rigid_mask = self.rigid_weight * m
        flow_pixel_w = self.flow_weight * (1.0 - m) * domain
        flow_loss_w = flow_pixel_w / tf.cast(tf.size(flow_pixel_w), tf.float32)
        delta = apportion.compute_delta(phi_r, phi_f)
        dflow = apportion.compute_delta_flow(rigid_flow, optical_flow, self.delta_flow_eps)
        target = cc.consensus_target(phi_r, phi_f, rigid_flow, optical_flow,
                                     self.flow_threshold, self.flow_norm)
        stats = apportion._common_stats(delta, domain > 0.5, rigid_mask, flow_pixel_w)
        stats.update({
            "cc/mask_mean": tf.reduce_mean(m),
            "cc/fraction_static": tf.reduce_mean(tf.cast(m > 0.5, tf.float32)),
            "cc/fraction_consensus_static": tf.reduce_mean(target),
            "cc/fraction_flows_agree": tf.reduce_mean(tf.cast(
                cc.flow_discrepancy(rigid_flow, optical_flow, self.flow_norm)
                < self.flow_threshold, tf.float32)),
        })
        hist = apportion._histogram_samples(
            {apportion.DELTA: delta, apportion.DELTA_FLOW_X: dflow[..., 0:1],
             apportion.DELTA_FLOW_Y: dflow[..., 1:2]}, domain > 0.5, self.histogram_size)
        return apportion.Apportionment(rigid_mask, flow_loss_w, "all", flow_pixel_w, stats,
                                       hist, extras={"moderator_masks": masks,
                                                     "consensus_target": target})

    def auxiliary_losses(self, inputs: apportion.ApportionInputs,
                         apportionment: apportion.Apportionment) -> Dict[str, tf.Tensor]:
        """The moderator's objective, averaged over its scales (each mask upsampled to
        the Φ maps' resolution): λ_R E_R + λ_F E_F + λ_M E_M + λ_C E_C + λ_S E_S(m).

        Returns ``cc_rigid``, ``cc_flow``, ``cc_mask``, ``cc_consensus``, ``cc_smooth``
        (unweighted, scale means) and ``total_strategy`` (the moderator's loss).
        """
        masks = apportionment.extras["moderator_masks"]
        image = tf.cast(inputs.extras["target"], tf.float32)
        height, width = inputs.phi_rigid.shape[2], inputs.phi_rigid.shape[3]
        sums = {k: 0.0 for k in ("rigid", "flow", "mask", "consensus", "smooth", "total")}
        for scale, mask in enumerate(masks):
            m = masks_by_source(_resize_bilinear(mask, height, width))
            energy = cc.moderator_energy(
                inputs.phi_rigid, inputs.phi_flow, inputs.rigid_flow, inputs.optical_flow, m,
                self.moderator_weights, self.flow_threshold, self.flow_norm)
            img = tf.image.resize(image, mask.shape[1:3], method="area")
            smooth = cc.mask_smoothness(mask, img)
            for key in ("rigid", "flow", "mask", "consensus"):
                sums[key] += energy[key]
            sums["smooth"] += smooth
            sums["total"] += energy["total"] + self.mask_smooth_weight * smooth
        n = float(len(masks))
        out = {f"cc_{k}": v / n for k, v in sums.items() if k != "total"}
        out["total_strategy"] = sums["total"] / n
        return out

    # ------------------------------------------------------------- inference ----
    def inference(self, frames, rigid_flow_forward, optical_flow_forward,
                  relative: Optional[float] = None) -> Dict[str, tf.Tensor]:
        """CC's inference outputs for the target frame (Eqs. 14-15).

        Args:
          frames: `[B, 3, H, W, 3]` snippet (t−1, t, t+1).
          rigid_flow_forward, optical_flow_forward: `[B, H, W, 2]` ν(e₊, d), u₊ (px).
          relative: see `competitive.inference_masks`.

        Returns:
          dict ``m_minus``, ``m_plus`` (`[B, H, W, 1]` soft), ``masknet``, ``consensus``,
          ``joint`` (m*, 1 = static) and ``composite_flow`` (u*, `[B, H, W, 2]`).
        """
        masks = tf.cast(self.moderator(snippet(frames), training=False)[0], tf.float32)
        m_minus, m_plus = masks[..., 0:1], masks[..., 1:2]
        out = cc.inference_masks(m_plus, m_minus, rigid_flow_forward, optical_flow_forward,
                                 self.flow_threshold, self.flow_norm, relative)
        out.update(m_minus=m_minus, m_plus=m_plus,
                   composite_flow=cc.composite_flow(out["joint"], rigid_flow_forward,
                                                    optical_flow_forward))
        return out
