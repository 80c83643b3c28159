"""Competitive Collaboration's energy and inference masks (Ranjan et al., CVPR 2019).

CC Eq. 7: E = λ_R E_R + λ_F E_F + λ_M E_M + λ_C E_C + λ_S E_S, with, per source s and
m_s = P(target pixel static w.r.t. s) from the moderator M_χ:

* E_R = Σ_s Σ_Ω m_s · ρ_R           (Eq. 8, the static-scene reconstructor: depth + pose)
* E_F = Σ_s Σ_Ω (1 − m_s) · ρ_F     (Eq. 9, the moving-region reconstructor: flow)
* E_M = Σ_s Σ_Ω H(1, m_s)           (Eq. 11, pushes pixels to the static side)
* E_C = Σ_s Σ_Ω H(C_s, m_s), C_s = 𝟙[ρ_R < ρ_F] ∨ 𝟙[‖ν(e_s, d) − u_s‖ < λ_c]   (Eq. 12)
* E_S's moderator part: edge-aware smoothness of m_s (Eq. 13).

ρ is our photometric error Φ (CoopNet Eq. 2: 0.85·(1 − SSIM)/2 + 0.15·L1, 3×3 SSIM).
CC's ρ (Eq. 10) is λ_ρ·sqrt((x − y)² + ε²) + (1 − λ_ρ)·(1 − SSIM), λ_ρ = 0.003,
ε = 0.01: `cc_robust_error` computes it when wanted. Sums over Ω and s are taken as means
over the B·S·H·W entries here (the scale every other loss of this project has); the
authors' code (anuragranj/cc, `loss_functions.py`) also averages over pixels per source.

H is the binary cross-entropy, averaged (as the authors' `binary_cross_entropy`); the
consensus target C and every Φ/flow input of E_C are stop-gradient (C is a label).

Inference (Eqs. 14-15): `inference_masks` returns CC Table 6's three masks (MaskNet,
Consensus, Joint = m*), all with 1 = static; `composite_flow` the flow u*.

Algorithm 1's weights per phase are `ALGORITHM_1`; the update rule "R and F updated,
M fixed" / "M updated, R and F fixed" is the training step's business, not this module's.
Pure TensorFlow, float32, gin-free.
"""
from typing import Dict, NamedTuple

import tensorflow as tf

from coopnet_tf.losses import photometric, smoothness

# CC Sec. 4 "Network Training": threshold of Eqs. 12 and 14, in pixels (the authors'
# training code uses 0.01 per flow component: `--THRESH`).
PAPER_FLOW_THRESHOLD = 1e-3
# CC Sec. 4: smoothness weight, SSIM balance and Charbonnier ε of Eq. 10.
PAPER_SMOOTH_WEIGHT = 0.005
PAPER_LAMBDA_RHO = 0.003
PAPER_CHARBONNIER_EPS = 0.01
# The authors' test_mask.py: Consensus = 1 − ‖ν − u‖ / max_image ‖ν − u‖ > 0.94.
AUTHORS_RELATIVE_CONSENSUS = 0.94
BCE_EPS = 1e-7
FLOW_NORMS = ("l2", "linf")
MASKNET_COMBINATIONS = ("product", "union")


class PhaseWeights(NamedTuple):
    """(λ_R, λ_F, λ_M, λ_C) of one line of CC's Algorithm 1."""
    rigid: float
    flow: float
    mask: float
    consensus: float


# CC Algorithm 1 (paper, p. 5), one entry per update line. The "basic" lines train R on
# E_R and F on E_F alone; the paper's text says F sees "all pixels" there.
ALGORITHM_1: Dict[str, PhaseWeights] = {
    "basic_rigid": PhaseWeights(1.0, 0.0, 0.0, 0.0),
    "basic_flow": PhaseWeights(0.0, 1.0, 0.0, 0.0),
    "moderator_init": PhaseWeights(1.0, 0.5, 0.0, 0.0),
    "competition_rigid": PhaseWeights(1.0, 0.5, 0.05, 0.0),
    "competition_flow": PhaseWeights(0.0, 1.0, 0.005, 0.0),
    "collaboration": PhaseWeights(1.0, 0.5, 0.005, 0.3),
}


def _f32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def cross_entropy(target, prob, eps=BCE_EPS):
    """Per-entry binary cross-entropy H(target, prob) = −t log p − (1 − t) log(1 − p).

    Args:
      target: labels in [0, 1] (broadcastable to `prob`); treated as constants.
      prob: probabilities, any shape.
      eps: `prob` is clipped to [eps, 1 − eps] (finite loss and gradient at 0 and 1).

    Returns:
      float32, the shape of `prob`.
    """
    t = tf.stop_gradient(_f32(target))
    p = tf.clip_by_value(_f32(prob), eps, 1.0 - eps)
    return -(t * tf.math.log(p) + (1.0 - t) * tf.math.log(1.0 - p))


def rigid_energy(phi_rigid, static_mask):
    """E_R (CC Eq. 8) as a mean: mean over B·S·H·W of m_s · Φ_D.

    Args:
      phi_rigid: `[B, S, H, W, 1]` Φ(I_t, rigid reconstruction from source s).
      static_mask: `[B, S, H, W, 1]` m_s in [0, 1] (pass it stop-gradient when training
        the competitors, differentiable when training the moderator).

    Returns:
      scalar float32.
    """
    return tf.reduce_mean(_f32(static_mask) * _f32(phi_rigid))


def flow_energy(phi_flow, static_mask):
    """E_F (CC Eq. 9) as a mean: mean over B·S·H·W of (1 − m_s) · Φ_F.

    Args:
      phi_flow: `[B, S, H, W, 1]` Φ(I_t, flow reconstruction from source s).
      static_mask: `[B, S, H, W, 1]` m_s.

    Returns:
      scalar float32.
    """
    return tf.reduce_mean((1.0 - _f32(static_mask)) * _f32(phi_flow))


def mask_prior_energy(static_mask):
    """E_M (CC Eq. 11): mean H(1, m_s) = mean(−log m_s). Lowered by m_s → 1 (static).

    Args:
      static_mask: `[B, S, H, W, 1]` (any shape).

    Returns:
      scalar float32.
    """
    return tf.reduce_mean(cross_entropy(tf.ones_like(_f32(static_mask)), static_mask))


def flow_discrepancy(rigid_flow, optical_flow, norm="l2"):
    """‖ν(e_s, d) − u_s‖ per pixel, stop-gradient.

    Args:
      rigid_flow: `[..., 2]` ν, the flow of depth + pose (px).
      optical_flow: `[..., 2]` u, the flow net's flow (px).
      norm: "l2" (CC Eqs. 12, 14) or "linf" (the authors' training code: both components
        must be below the threshold).

    Returns:
      `[..., 1]` float32 (px).
    """
    diff = tf.stop_gradient(_f32(rigid_flow) - _f32(optical_flow))
    if norm == "l2":
        return tf.norm(diff, axis=-1, keepdims=True)
    if norm == "linf":
        return tf.reduce_max(tf.abs(diff), axis=-1, keepdims=True)
    raise ValueError(f"norm must be one of {FLOW_NORMS}: {norm!r}")


def consensus_target(phi_rigid, phi_flow, rigid_flow, optical_flow,
                     flow_threshold=PAPER_FLOW_THRESHOLD, norm="l2"):
    """C_s = 𝟙[Φ_D < Φ_F] ∨ 𝟙[‖ν(e_s, d) − u_s‖ < λ_c] (the label of CC Eq. 12).

    Args:
      phi_rigid, phi_flow: `[B, S, H, W, 1]` ρ_R and ρ_F.
      rigid_flow, optical_flow: `[B, S, H, W, 2]` ν(e_s, d) and u_s, px.
      flow_threshold: λ_c in px.
      norm: see `flow_discrepancy`.

    Returns:
      `[B, S, H, W, 1]` float32 in {0, 1}, stop-gradient (1 = static).
    """
    rigid_wins = tf.stop_gradient(_f32(phi_rigid)) < tf.stop_gradient(_f32(phi_flow))
    agree = flow_discrepancy(rigid_flow, optical_flow, norm) < flow_threshold
    return tf.cast(rigid_wins | agree, tf.float32)


def consensus_energy(target, static_mask):
    """E_C (CC Eq. 12): mean H(C_s, m_s).

    Args:
      target: `[B, S, H, W, 1]` C_s from `consensus_target` (constant).
      static_mask: `[B, S, H, W, 1]` m_s.

    Returns:
      scalar float32.
    """
    return tf.reduce_mean(cross_entropy(target, static_mask))


def mask_smoothness(static_masks, image):
    """E_S's moderator term (CC Eq. 13): edge-aware smoothness of every m_s.

    Like CC's code (and our disparity/flow terms), first-order |∇m|·exp(−|∇I|) (L1),
    not the squared norm that Eq. 13 writes.

    Args:
      static_masks: `[B, h, w, S]` the moderator's output at one scale (channel = source).
      image: `[B, h, w, 3]` target image at that scale.

    Returns:
      scalar float32, averaged over the S masks.
    """
    return smoothness.edge_aware_smoothness(static_masks, image)


def cc_robust_error(target, reconstruction, lambda_rho=PAPER_LAMBDA_RHO,
                    eps=PAPER_CHARBONNIER_EPS):
    """CC's ρ (Eq. 10): λ_ρ·sqrt((x − y)² + ε²) + (1 − λ_ρ)·(1 − SSIM), channel mean.

    Our SSIM (3×3 box window, C1 = 0.01², C2 = 0.03², data range 1); the (1 − SSIM) term
    is not halved or clamped, as Eq. 10 writes it.

    Args:
      target, reconstruction: `[B, H, W, 3]` in [0, 1].
      lambda_rho: weight of the Charbonnier term (0.003 in the paper).
      eps: Charbonnier ε (0.01).

    Returns:
      `[B, H, W, 1]` float32.
    """
    x, y = _f32(target), _f32(reconstruction)
    charbonnier = tf.sqrt(tf.square(x - y) + eps * eps)
    dssim = 1.0 - photometric.ssim(x, y)
    per_channel = lambda_rho * charbonnier + (1.0 - lambda_rho) * dssim
    return tf.reduce_mean(per_channel, axis=-1, keepdims=True)


def moderator_energy(phi_rigid, phi_flow, rigid_flow, optical_flow, static_mask,
                     weights: PhaseWeights = ALGORITHM_1["collaboration"],
                     flow_threshold=PAPER_FLOW_THRESHOLD, norm="l2"):
    """The moderator's objective at one scale: λ_R E_R + λ_F E_F + λ_M E_M + λ_C E_C.

    Φ and the flows are stop-gradient here, so its gradient reaches only m_s (CC's
    collaboration step: "M updated, R and F fixed"); add λ_S·`mask_smoothness` yourself.

    Args:
      phi_rigid, phi_flow: `[B, S, H, W, 1]`.
      rigid_flow, optical_flow: `[B, S, H, W, 2]` px.
      static_mask: `[B, S, H, W, 1]` m_s (differentiable).
      weights: `PhaseWeights` (Algorithm 1: "collaboration" or "moderator_init").
      flow_threshold, norm: of the consensus target.

    Returns:
      dict with ``rigid``, ``flow``, ``mask``, ``consensus`` (unweighted energies),
      ``consensus_target`` (`[B, S, H, W, 1]`) and ``total`` (weighted sum).
    """
    phi_r = tf.stop_gradient(_f32(phi_rigid))
    phi_f = tf.stop_gradient(_f32(phi_flow))
    target = consensus_target(phi_r, phi_f, rigid_flow, optical_flow, flow_threshold, norm)
    terms = {
        "rigid": rigid_energy(phi_r, static_mask),
        "flow": flow_energy(phi_f, static_mask),
        "mask": mask_prior_energy(static_mask),
        "consensus": consensus_energy(target, static_mask),
    }
    total = (weights.rigid * terms["rigid"] + weights.flow * terms["flow"]
             + weights.mask * terms["mask"] + weights.consensus * terms["consensus"])
    return dict(terms, consensus_target=target, total=total)


# ------------------------------------------------------------------- inference ----

def inference_masks(mask_forward, mask_backward, rigid_flow_forward, optical_flow_forward,
                    flow_threshold=PAPER_FLOW_THRESHOLD, norm="l2", relative=None,
                    combination="product"):
    """CC Table 6's masks, 1 = static: MaskNet, Consensus and Joint m* (Eq. 14).

    m* = 𝟙[m₊·m₋ > 0.5] ∨ 𝟙[‖ν(e₊, d) − u₊‖ < λ_c].

    Args:
      mask_forward, mask_backward: `[B, H, W, 1]` m₊ (w.r.t. t+1) and m₋ (w.r.t. t−1).
      rigid_flow_forward, optical_flow_forward: `[B, H, W, 2]` ν(e₊, d) and u₊, px.
      flow_threshold: λ_c in px (absolute test).
      norm: "l2" or "linf" (`flow_discrepancy`).
      relative: None (Eq. 14's absolute threshold) or τ in (0, 1): Consensus is
        1 − ‖ν − u‖ / max_image ‖ν − u‖ > τ, the authors' evaluation (test_mask.py,
        τ = 0.94).
      combination: "product" (Eq. 14: m₊·m₋ > 0.5) or "union" (the authors' code:
        1 − (1 − m₊)(1 − m₋) > 0.5).

    Returns:
      dict ``masknet``, ``consensus``, ``joint``: `[B, H, W, 1]` float32 in {0, 1}.
    """
    m_f, m_b = _f32(mask_forward), _f32(mask_backward)
    if combination == "product":
        masknet = m_f * m_b > 0.5
    elif combination == "union":
        masknet = 1.0 - (1.0 - m_f) * (1.0 - m_b) > 0.5
    else:
        raise ValueError(f"combination must be one of {MASKNET_COMBINATIONS}: {combination!r}")
    dist = flow_discrepancy(rigid_flow_forward, optical_flow_forward, norm)
    if relative is None:
        consensus = dist < flow_threshold
    else:
        peak = tf.reduce_max(dist, axis=[1, 2, 3], keepdims=True)
        consensus = 1.0 - tf.math.divide_no_nan(dist, peak) > relative
    as_f = lambda b: tf.cast(b, tf.float32)  # noqa: E731
    return {"masknet": as_f(masknet), "consensus": as_f(consensus),
            "joint": as_f(masknet | consensus)}


def composite_flow(joint_mask, rigid_flow_forward, optical_flow_forward):
    """u* = 𝟙[m* > 0.5]·ν(e₊, d) + 𝟙[m* ≤ 0.5]·u₊ (CC Eq. 15).

    Args:
      joint_mask: `[B, H, W, 1]` m* (1 = static).
      rigid_flow_forward, optical_flow_forward: `[B, H, W, 2]` px.

    Returns:
      `[B, H, W, 2]` float32.
    """
    static = _f32(joint_mask) > 0.5
    return tf.where(static, _f32(rigid_flow_forward), _f32(optical_flow_forward))
