"""The flow partner's switches (docs/flow_partner.md), each against an independent reference.

* flow smoothness in pixel units vs normalised units: numpy brute force of the edge-aware
  term, in the function and as wired in the step (both flow directions, every scale);
* ``lambda_s_flow``: moves L_δ by exactly (λ_s_flow − λ_s)·L_s(flow), leaves L_θ,α alone;
* the backward photometric term: zero for an exactly known F_{s->t} (a source that is the
  synthetic world's target image translated by whole pixels), and in the step it adds
  exactly its own uniformly weighted mean to L_δ;
* Eq. 11 normalised over the batch: numpy computation of the definition;
* the flow image pyramid: a half-resolution flow of whole pixels rebuilds the
  area-downsampled target exactly (numpy pooling), full resolution is the backward
  error's formula, and in the step it changes Φ_F of the coarse scales only;
* the defaults reproduce the previous behaviour (normalised units, λ_s for flow, no
  backward term, per-pair normalisation).
"""
import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf import specs
from coopnet_tf.losses import apportion, smoothness
from coopnet_tf.training import step as step_lib
from coopnet_tf.training.step import LossWeights, Phase, StepOptions
from test_train_step import BATCH, SEED, SIZE, build_step

BURN_IN = Phase(burn_in=True, update_quantiles=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return conftest.tiny_world(tmp_path_factory, SIZE, frames_per_sequence=6)


@pytest.fixture(scope="module")
def gt_batch(world):
    from coopnet_tf.data import pipeline, synthetic
    ds = pipeline.make_dataset(synthetic.file_pattern(world, "train"), batch_size=BATCH,
                               height=SIZE, width=SIZE, training=False,
                               with_ground_truth=True, deterministic=True)
    return next(iter(ds))


def _inputs(batch):
    keys = (specs.KEY_FRAMES, specs.KEY_FRAMES_AUG, specs.KEY_INTRINSICS)
    return {k: batch[k] for k in keys if k in batch}


def _np_smoothness(field, image):
    """Edge-aware first-order smoothness, written out in numpy (float64)."""
    f, im = np.asarray(field, np.float64), np.asarray(image, np.float64)
    fx = np.abs(f[:, :, 1:] - f[:, :, :-1])
    fy = np.abs(f[:, 1:] - f[:, :-1])
    ix = np.mean(np.abs(im[:, :, 1:] - im[:, :, :-1]), -1, keepdims=True)
    iy = np.mean(np.abs(im[:, 1:] - im[:, :-1]), -1, keepdims=True)
    return np.mean(fx * np.exp(-ix)) + np.mean(fy * np.exp(-iy))


def _np_pool(image, factor):
    b, h, w, c = image.shape
    return image.reshape(b, h // factor, factor, w // factor, factor, c).mean((2, 4))


def test_flow_smoothness_units_match_numpy():
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 5, (2, 8, 12, 2)).astype(np.float32)
    image = rng.uniform(0, 1, (2, 8, 12, 3)).astype(np.float32)
    pixels = float(smoothness.flow_smoothness(flow, image, normalise=False))
    normalised = float(smoothness.flow_smoothness(flow, image))   # the default
    np.testing.assert_allclose(pixels, _np_smoothness(flow, image), rtol=1e-5)
    np.testing.assert_allclose(normalised, _np_smoothness(flow / [12.0, 8.0], image), rtol=1e-5)


@pytest.mark.parametrize("units", ["normalised", "pixels"])
def test_step_flow_smoothness_units(gt_batch, units):
    """The step's per-scale flow smoothness = numpy on (F_{t->s}, F_{s->t}) with each
    direction guided by the image of its own grid, in the configured units."""
    step = build_step(options=StepOptions(flow_smoothness_units=units))
    batch = _inputs(gt_batch)
    fwd = step.forward(batch, BURN_IN, training=False)
    frames = batch[specs.KEY_FRAMES].numpy()
    target = frames[:, specs.TARGET_INDEX]
    sources = np.concatenate([frames[:, i] for i in specs.SOURCE_INDICES], 0)
    guides = np.concatenate([target] * len(specs.SOURCE_INDICES) + [sources], 0)
    for scale, value in enumerate(fwd["smooth_flow"]):
        flow = np.concatenate([fwd["flow_fw"][scale].numpy(), fwd["flow_bw"][scale].numpy()], 0)
        h, w = flow.shape[1:3]
        if units == "normalised":
            flow = flow / [w, h]
        expected = _np_smoothness(flow, _np_pool(guides, SIZE // h))
        np.testing.assert_allclose(float(value), expected, rtol=1e-4)


def test_lambda_s_flow_weights_only_the_flow_objective(gt_batch):
    batch = _inputs(gt_batch)
    default = build_step(weights=LossWeights(smooth=1e-3))
    separate = build_step(weights=LossWeights(smooth=1e-3, smooth_flow=0.5))
    same = build_step(weights=LossWeights(smooth=1e-3, smooth_flow=1e-3))
    l_def, _, _ = default.compute_losses(batch, BURN_IN, SEED, training=False)
    l_sep, _, _ = separate.compute_losses(batch, BURN_IN, SEED, training=False)
    l_same, _, _ = same.compute_losses(batch, BURN_IN, SEED, training=False)
    # None means λ_s: identical to setting it to λ_s
    for key in ("total_delta", "total_theta_alpha", "smooth_flow"):
        assert float(l_def[key]) == float(l_same[key]), key
    assert float(l_sep["total_theta_alpha"]) == float(l_def["total_theta_alpha"])
    np.testing.assert_allclose(
        float(l_sep["total_delta"]) - float(l_def["total_delta"]),
        (0.5 - 1e-3) * float(l_def["smooth_flow"]), rtol=1e-4)


def test_backward_flow_error_vanishes_for_the_exact_flow(gt_batch):
    """A source that is the target translated by an integer (dx, dy), I_s(p) = I_t(p + d),
    has F_{s->t} = d exactly (bilinear sampling is exact at integer offsets): the target
    warped into the source's grid rebuilds the source, Φ = 0 wherever the 3x3 SSIM window
    stays inside the image; warping the source instead (roles swapped) does not."""
    image = gt_batch[specs.KEY_FRAMES].numpy()[:, specs.TARGET_INDEX]   # world texture
    shifts = [(3, -2), (-5, 1)][:image.shape[0]]
    m = 6                                          # margin: shift + SSIM window
    target = image
    source = np.stack([np.roll(im, (-dy, -dx), axis=(0, 1)) for im, (dx, dy)
                       in zip(image, shifts)])     # source(p) = target(p + d) (inside)
    flow = np.zeros(image.shape[:3] + (2,), np.float32)
    for b, (dx, dy) in enumerate(shifts):
        flow[b, ..., 0], flow[b, ..., 1] = dx, dy
    phi = step_lib.backward_flow_error(target, source, flow).numpy()[..., 0]
    inner = phi[:, m:-m, m:-m]
    np.testing.assert_allclose(inner, 0.0, atol=1e-5)
    swapped = step_lib.backward_flow_error(source, target, flow).numpy()[..., 0][:, m:-m, m:-m]
    assert np.median(swapped) > 0.02
    zero = step_lib.backward_flow_error(target, source, 0 * flow).numpy()[..., 0][:, m:-m, m:-m]
    assert np.median(zero) > 0.02


def test_backward_photometric_term_in_the_step(gt_batch):
    batch = _inputs(gt_batch)
    off = build_step()
    on = build_step(options=StepOptions(backward_flow_photometric=True))
    l_off, _, f_off = off.compute_losses(batch, BURN_IN, SEED, training=False)
    l_on, _, f_on = on.compute_losses(batch, BURN_IN, SEED, training=False)
    assert "photo_delta_backward" not in l_off and "phi_flow_backward" not in f_off
    # numpy: per scale, mean over (image, source) pairs of the mean of Φ over the source
    # pixels visible in the target, then the mean over scales.
    dom = f_on["non_occluded_source"].numpy()[..., 0] > 0.5
    per_scale = []
    for phi in f_on["phi_flow_backward"]:
        phi = phi.numpy()[..., 0]
        per_scale.append(np.mean([phi[b, s][dom[b, s]].mean()
                                  for b in range(dom.shape[0]) for s in range(dom.shape[1])
                                  if dom[b, s].any()]))
    np.testing.assert_allclose(float(l_on["photo_delta_backward"]), np.mean(per_scale),
                               rtol=1e-4)
    np.testing.assert_allclose(float(l_on["total_delta"]) - float(l_off["total_delta"]),
                               np.mean(per_scale), rtol=1e-3)
    assert float(l_on["total_theta_alpha"]) == float(l_off["total_theta_alpha"])
    # the backward term's domain is the range map of F_{t->s}: source pixels seen from t
    np.testing.assert_array_equal(
        f_on["non_occluded_source"].numpy(),
        step_lib.to_batch_source(
            step_lib.consistency.non_occluded_mask(f_on["flow_fw"][0]),
            len(specs.SOURCE_INDICES)).numpy())


def test_pyramid_flow_error_is_exact_at_its_own_scale(gt_batch):
    """Target = source translated by an even (dx, dy) at full resolution: after ×2 area
    downsampling (numpy pooling) it is the pooled source translated by (dx/2, dy/2), so
    the scale-1 flow of whole pixels rebuilds it and Φ = 0 inside; the result is nearest-
    upsampled to full resolution; at full resolution the function is the plain Φ of the
    warp (``backward_flow_error`` with the roles named the other way round)."""
    image = gt_batch[specs.KEY_FRAMES].numpy()[:, specs.TARGET_INDEX]
    shifts = [(4, -2), (-2, 2)][:image.shape[0]]
    source = image
    target = np.stack([np.roll(im, (-dy, -dx), axis=(0, 1)) for im, (dx, dy)
                       in zip(image, shifts)])     # target(p) = source(p + d)
    h, w = image.shape[1] // 2, image.shape[2] // 2
    flow = np.zeros((image.shape[0], h, w, 2), np.float32)
    for b, (dx, dy) in enumerate(shifts):
        flow[b, ..., 0], flow[b, ..., 1] = dx / 2, dy / 2
    phi = step_lib.pyramid_flow_error(target, source, flow, *image.shape[1:3]).numpy()
    assert phi.shape == image.shape[:3] + (1,)
    m = 8
    np.testing.assert_allclose(phi[:, m:-m, m:-m], 0.0, atol=1e-5)
    # nearest upsampling: 2x2 blocks of one value
    np.testing.assert_array_equal(phi[:, ::2, ::2], phi[:, 1::2, 1::2])
    # the coarse Φ is the Φ of the numpy-pooled images
    zero = step_lib.pyramid_flow_error(target, source, 0 * flow, *image.shape[1:3]).numpy()
    expected = step_lib.photometric.photometric_error(
        _np_pool(target, 2).astype(np.float32), _np_pool(source, 2).astype(np.float32))
    np.testing.assert_allclose(zero[:, ::2, ::2], expected.numpy(), atol=1e-5)
    assert np.median(zero[:, m:-m, m:-m]) > 0.02
    full = np.zeros(image.shape[:3] + (2,), np.float32)
    np.testing.assert_array_equal(
        step_lib.pyramid_flow_error(target, source, full, *image.shape[1:3]).numpy(),
        step_lib.backward_flow_error(source, target, full).numpy())


def test_flow_image_pyramid_in_the_step(gt_batch):
    batch = _inputs(gt_batch)
    off = build_step()
    on = build_step(options=StepOptions(flow_image_pyramid=True))
    _, _, f_off = off.compute_losses(batch, BURN_IN, SEED, training=False)
    _, _, f_on = on.compute_losses(batch, BURN_IN, SEED, training=False)
    assert len(f_on["phi_flow"]) > 1
    # same networks (same seed), same flows; scale 0, Φ_D and the identity unchanged
    np.testing.assert_array_equal(f_on["flow_fw"][1].numpy(), f_off["flow_fw"][1].numpy())
    np.testing.assert_allclose(f_on["phi_flow"][0].numpy(), f_off["phi_flow"][0].numpy(),
                               atol=1e-6)
    for key in ("phi_identity",):
        np.testing.assert_allclose(f_on[key].numpy(), f_off[key].numpy(), atol=1e-6)
    np.testing.assert_allclose(f_on["phi_rigid"][1].numpy(), f_off["phi_rigid"][1].numpy(),
                               atol=1e-6)
    # coarse scales: Φ of that scale's flow on images of that scale
    frames = batch[specs.KEY_FRAMES].numpy()
    target = np.concatenate([frames[:, specs.TARGET_INDEX]] * len(specs.SOURCE_INDICES))
    sources = np.concatenate([frames[:, i] for i in specs.SOURCE_INDICES])
    for scale in range(1, len(f_on["phi_flow"])):
        expected = step_lib.pyramid_flow_error(target, sources, f_on["flow_fw"][scale],
                                               *frames.shape[2:4])
        np.testing.assert_allclose(
            f_on["phi_flow"][scale].numpy(),
            step_lib.to_batch_source(expected, len(specs.SOURCE_INDICES)).numpy(),
            atol=1e-5)
        assert not np.allclose(f_on["phi_flow"][scale].numpy(), f_off["phi_flow"][scale].numpy())


def test_eq11_batch_normalisation_matches_definition():
    rng = np.random.default_rng(3)
    shape = (3, 2, 6, 7, 1)
    in_gamma = rng.uniform(size=shape) < rng.uniform(0.05, 0.6, (3, 2, 1, 1, 1))
    domain = rng.uniform(size=shape) < 0.8
    domain[1, 0] = False                      # an empty pair: no effect on the batch counts
    phi = rng.uniform(size=shape)
    pixel_w, loss_w = apportion.group_weights(in_gamma, domain, "batch")
    g, gb = in_gamma & domain, ~in_gamma & domain
    n_p, n_g, n_gb = domain.sum(), g.sum(), gb.sum()
    expected_w = np.where(g, n_p / n_g, 0.0) + np.where(gb, n_p / n_gb, 0.0)
    np.testing.assert_allclose(pixel_w.numpy(), expected_w, rtol=1e-5)
    np.testing.assert_allclose(float(tf.reduce_sum(loss_w * phi)),
                               phi[g].mean() + phi[gb].mean(), rtol=1e-5)
    # Eq. 11 itself: (1/|P|) Σ_P w Φ over the batch
    np.testing.assert_allclose(float(np.sum(pixel_w.numpy() * phi)) / n_p,
                               phi[g].mean() + phi[gb].mean(), rtol=1e-5)
    # the default is per pair: mean over non-empty pairs of (mean_Γ + mean_Γ̄) of each pair
    _, loss_pair = apportion.group_weights(in_gamma, domain)
    per_pair = [phi[b, s][g[b, s]].mean() + phi[b, s][gb[b, s]].mean()
                for b in range(3) for s in range(2) if domain[b, s].any()]
    np.testing.assert_allclose(float(tf.reduce_sum(loss_pair * phi)), np.mean(per_pair),
                               rtol=1e-5)


def test_switch_values_are_checked():
    with pytest.raises(ValueError, match="flow_normalisation"):
        apportion.CoopNetStrategy(flow_normalisation="image", jit_compile=False)
    with pytest.raises(ValueError, match="normalisation"):
        apportion.group_weights(tf.zeros([1, 1, 2, 2, 1], tf.bool),
                                tf.ones([1, 1, 2, 2, 1], tf.bool), "all")
    with pytest.raises(ValueError, match="flow_smoothness_units"):
        build_step(options=StepOptions(flow_smoothness_units="metres"))


def test_defaults_are_the_previous_behaviour():
    from coopnet_tf.training import factories as configurables
    assert StepOptions().flow_smoothness_units == "normalised"
    assert not StepOptions().backward_flow_photometric
    assert not StepOptions().flow_image_pyramid
    assert configurables.loss_weights().flow_smooth == configurables.loss_weights().smooth
    assert configurables.step_options() == StepOptions()
    assert apportion.CoopNetStrategy(jit_compile=False).flow_normalisation == "pair"
