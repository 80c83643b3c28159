"""Photometric error Phi (paper Eq. 2), Monodepth2 minimum reprojection, and the masked
photometric losses that apply an apportionment's masks/weights (Eqs. 6, 10, 11).

docs/decisions.md C4. All maps are per pixel and NOT reduced: the CoopNet apportionment
(Δ = Phi_D - Phi_F, quantiles, masks) needs the per-pixel values.

Precision: inputs are cast to float32 on entry. SSIM needs it: `sigma^2 = E[x^2] - E[x]^2`
cancels catastrophically in float16 (C2 = 9e-4 is below float16's resolution near 1).
Outputs are float32. Static shapes only; runs under `tf.function(jit_compile=True)`.
"""
import tensorflow as tf

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
DEFAULT_ALPHA = 0.85
TIE_BREAK_NOISE = 1e-5


def _f32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _box3(x):
    """3x3 mean filter, stride 1, after 1-pixel reflection padding (same size out)."""
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    return tf.nn.avg_pool2d(padded, ksize=3, strides=1, padding="VALID")


def ssim(a, b):
    """Per-pixel, per-channel SSIM with a 3x3 box window (Monodepth2 / SC-SfMLearner).

    `mu` = 3x3 box mean after reflection padding of 1 pixel; `sigma_x^2 = box(x^2) - mu_x^2`,
    `sigma_xy = box(xy) - mu_x mu_y`; `C1 = 0.01^2`, `C2 = 0.03^2` (data range 1);
    `SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))`.

    Args:
      a, b: `[B, H, W, C]` images in [0, 1], `H, W >= 2`.

    Returns:
      `[B, H, W, C]` float32 SSIM (not clamped).
    """
    a = _f32(a)
    b = _f32(b)
    mu_a = _box3(a)
    mu_b = _box3(b)
    sigma_a = _box3(a * a) - mu_a * mu_a
    sigma_b = _box3(b * b) - mu_b * mu_b
    sigma_ab = _box3(a * b) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + SSIM_C1) * (2.0 * sigma_ab + SSIM_C2)
    den = (mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (sigma_a + sigma_b + SSIM_C2)
    return num / den


def ssim_dissimilarity(a, b):
    """`clamp((1 - SSIM(a, b)) / 2, 0, 1)` per pixel and channel (Monodepth2's SSIM module).

    Args:
      a, b: `[B, H, W, C]`.

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    return tf.clip_by_value(0.5 * (1.0 - ssim(a, b)), 0.0, 1.0)


def l1_error(a, b):
    """Per-pixel L1 averaged over channels: `[B, H, W, C]` x2 -> `[B, H, W, 1]` float32."""
    return tf.reduce_mean(tf.abs(_f32(a) - _f32(b)), axis=-1, keepdims=True)


def photometric_error(a, b, alpha=DEFAULT_ALPHA):
    """Photometric error Phi (paper Eq. 2), per pixel, averaged over colour channels.

    `Phi(a, b) = alpha (1 - SSIM(a, b)) / 2 + (1 - alpha) |a - b|` with the SSIM term
    clamped to [0, 1] as in Monodepth2; both terms are averaged over channels.

    Args:
      a, b: `[B, H, W, 3]` images in [0, 1] (target and reconstruction).
      alpha: SSIM weight, 0.85.

    Returns:
      `[B, H, W, 1]` float32 map (not reduced).
    """
    ssim_term = tf.reduce_mean(ssim_dissimilarity(a, b), axis=-1, keepdims=True)
    return alpha * ssim_term + (1.0 - alpha) * l1_error(a, b)


def _seed_pair(seed):
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.zeros_like(seed)])
    return seed


def min_reprojection(reprojection_errors, identity_errors=None, mask=None, seed=None):
    """Monodepth2 per-pixel minimum reprojection with auto-masking (docs/decisions.md C4).

    Per pixel, the minimum over `{identity_errors[s]} ∪ {reprojection_errors[s]}`. Where an
    identity (un-warped) term wins, the pixel keeps the identity value, which carries no
    gradient to the networks: that is Monodepth2's auto-masking. Ties go to the identity
    term (as `argmin` over `[identity..., reprojection...]` does in Monodepth2).

    Args:
      reprojection_errors: `[B, S, H, W, 1]` Phi(I_t, warped I_s) per source s.
      identity_errors: `[B, S, H, W, 1]` Phi(I_t, I_s) per source, or None (no
        auto-masking: the plain per-pixel minimum over sources).
      mask: optional `[B, S, H, W, 1]`; where `mask == 0` that source's reprojection error
        is excluded (treated as +inf). Pixels where every reprojection term is excluded
        are not valid (CoopNet's V selection, docs/decisions.md D13).
      seed: None (no noise) or an int / int tensor of shape [] or [2]: adds
        `N(0, 1) * 1e-5` to the identity errors to break ties (Monodepth2), drawn with
        `tf.random.stateless_normal` so it is reproducible and XLA-friendly. Pass a
        per-step seed during training.

    Returns:
      `(loss_map[B, H, W, 1], valid[B, H, W, 1], automask[B, H, W, 1])`, float32:
      `loss_map` is the per-pixel minimum (0 where not valid, so
      `sum(loss_map) / sum(valid)` is the masked mean; with `mask=None` every pixel is
      valid and the Monodepth2 loss is `mean(loss_map)`); `valid` is 1 where at least one
      reprojection term is admitted; `automask` is 1 where a warped (reprojection) term
      won, i.e. strictly below every identity term (= `valid` when identity is None).
    """
    rep = _f32(reprojection_errors)
    if mask is not None:
        keep = _f32(mask) > 0.0
        rep = tf.where(keep, rep, tf.fill(tf.shape(rep), float("inf")))
        valid = tf.reduce_any(keep, axis=1)
    else:
        valid = tf.ones_like(rep[:, 0], dtype=tf.bool)
    rep_min = tf.reduce_min(rep, axis=1)

    if identity_errors is not None:
        ident = _f32(identity_errors)
        if seed is not None:
            # Fixed algorithm: "auto_select" differs between eager kernels and XLA.
            noise = tf.random.stateless_normal(
                tf.shape(ident), seed=_seed_pair(seed), alg="philox")
            ident = ident + TIE_BREAK_NOISE * noise
        id_min = tf.reduce_min(ident, axis=1)
        automask = (rep_min < id_min) & valid
        loss = tf.minimum(rep_min, id_min)
    else:
        automask = valid
        loss = rep_min
    # Invalid pixels may hold +inf; replace by 0 (tf.where blocks their gradient).
    loss = tf.where(valid, loss, tf.zeros_like(loss))
    return loss, tf.cast(valid, tf.float32), tf.cast(automask, tf.float32)


# ------------------------------------------------ masked photometric losses (Eq. 10, 11) ----

RIGID_NORMALISATIONS = ("masked", "all")


def rigid_photometric_maps(phi_rigid, phi_identity, rigid_mask, seed=None):
    """Masked Monodepth2 minimum reprojection (docs/decisions.md D13).

    Per pixel, the minimum over the identity errors of every source (always compete) and
    the rigid errors of the sources whose mask is 1.

    Args:
      phi_rigid: `[B, S, H, W, 1]` (any scale's full-resolution Φ_D).
      phi_identity: `[B, S, H, W, 1]` or None (no auto-masking).
      rigid_mask: `[B, S, H, W, 1]` 0/1 (stop-gradient).
      seed: tie-break noise seed for the identity terms (``min_reprojection``).

    Returns:
      (loss_map `[B, H, W, 1]` (0 where no source is admitted), valid `[B, H, W, 1]`,
      automask `[B, H, W, 1]` 1 where a rigid term won).
    """
    return min_reprojection(
        phi_rigid, phi_identity, mask=tf.stop_gradient(rigid_mask), seed=seed)


def rigid_photometric_loss(phi_rigid, phi_identity, rigid_mask, normalisation="masked",
                           seed=None):
    """The depth/pose photometric loss L_θ,α of one scale (Eq. 10, means not sums).

    Args:
      phi_rigid: `[B, S, H, W, 1]` Φ_D of this scale, at full resolution.
      phi_identity: `[B, S, H, W, 1]` or None; used by "masked" only.
      rigid_mask: `[B, S, H, W, 1]` 0/1 from the apportionment (stop-gradient here too).
      normalisation: "masked": minimum reprojection with identity terms, mean over the
        pixels where at least one source is admitted (coopnet; baseline with an all-ones
        mask = plain Monodepth2). "all": `sum(rigid_mask * Φ_D) / (B·S·H·W)`, no minimum
        over sources, no identity terms (GLNet, Eq. 6).
      seed: tie-break noise seed ("masked" only).

    Returns:
      scalar float32.
    """
    if normalisation == "masked":
        loss_map, valid, _ = rigid_photometric_maps(phi_rigid, phi_identity, rigid_mask, seed)
        return tf.math.divide_no_nan(tf.reduce_sum(loss_map), tf.reduce_sum(valid))
    if normalisation == "all":
        mask = tf.stop_gradient(tf.cast(rigid_mask, tf.float32))
        return tf.reduce_mean(mask * tf.cast(phi_rigid, tf.float32))
    raise ValueError(f"normalisation must be one of {RIGID_NORMALISATIONS}: {normalisation!r}")


def flow_photometric_loss(phi_flow, flow_weight):
    """The flow photometric loss L_δ of one scale: `sum(flow_weight * Φ_F)`.

    Args:
      phi_flow: `[B, S, H, W, 1]` Φ_F of this scale, at full resolution.
      flow_weight: `[B, S, H, W, 1]` normalised loss weights from the apportionment.

    Returns:
      scalar float32.
    """
    w = tf.stop_gradient(tf.cast(flow_weight, tf.float32))
    return tf.reduce_sum(w * tf.cast(phi_flow, tf.float32))
