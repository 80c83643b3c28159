"""coopnet_tf.visualize: magma colour map and the Middlebury flow wheel, numpy vs TF."""
import numpy as np
import tensorflow as tf

from coopnet_tf import visualize


def test_color_wheel_layout():
    wheel = visualize.make_color_wheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_allclose(wheel[0], [1.0, 0.0, 0.0])          # red
    np.testing.assert_allclose(wheel[15], [1.0, 1.0, 0.0])         # yellow (RY = 15)
    np.testing.assert_allclose(wheel[21], [0.0, 1.0, 0.0])         # green (YG = 6)
    np.testing.assert_allclose(wheel[25], [0.0, 1.0, 1.0])         # cyan (GC = 4)
    np.testing.assert_allclose(wheel[36], [0.0, 0.0, 1.0])         # blue (CB = 11)
    np.testing.assert_allclose(wheel[49], [1.0, 0.0, 1.0])         # magenta (BM = 13)


def test_flow_to_color_hand_cases():
    flow = np.array([[[0.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [1.0, 0.0]]], np.float32)
    rgb = visualize.flow_to_color(flow)
    assert rgb.shape == (1, 4, 3)
    np.testing.assert_allclose(rgb[0, 0], [1.0, 1.0, 1.0])         # zero flow: white
    # u = -|max|: a = atan2(0, 2)/pi = 0 -> fk = 27 (between cyan-ish wheel[27], [28]).
    w = visualize.make_color_wheel()
    np.testing.assert_allclose(rgb[0, 1], w[27], atol=1e-6)
    # v = +max: a = atan2(-2, 0)/pi = -0.5 -> fk = 13.5.
    np.testing.assert_allclose(rgb[0, 2], 0.5 * (w[13] + w[14]), atol=1e-6)
    # u = +max/2: a = atan2(-0.0, -0.5)/pi = -1 -> fk = 0 (red), desaturated halfway.
    np.testing.assert_allclose(rgb[0, 3], 1.0 - 0.5 * (1.0 - w[0]), atol=1e-6)
    # Beyond max_flow: darkened by 0.75; invalid: black.
    rgb2 = visualize.flow_to_color(flow, max_flow=1.0, valid=np.array([[1, 1, 0, 1]], bool))
    np.testing.assert_allclose(rgb2[0, 1], 0.75 * w[27], atol=1e-6)
    np.testing.assert_allclose(rgb2[0, 2], 0.0)


def test_colorize_normalisation_and_shapes():
    disp = np.linspace(0.0, 1.0, 101, dtype=np.float32).reshape(1, 101)
    rgb = visualize.colorize_disparity(disp[..., None], vmax=1.0)
    lut = visualize.magma_lut()
    assert rgb.shape == (1, 101, 3)
    np.testing.assert_allclose(rgb[0, 0], lut[0])
    np.testing.assert_allclose(rgb[0, -1], lut[-1])
    # Default: 95th percentile maps to the brightest colour; everything above saturates.
    rgb = visualize.colorize_disparity(disp)
    np.testing.assert_allclose(rgb[0, 96:], np.broadcast_to(lut[-1], (5, 3)))
    # Depth: near = bright; invalid (0) = the darkest colour.
    rgb = visualize.colorize_depth(np.array([[1.0, 10.0, 0.0]], np.float32), vmax=1.0)
    np.testing.assert_allclose(rgb[0, 0], lut[-1])
    np.testing.assert_allclose(rgb[0, 2], lut[0])
    assert visualize.to_uint8(rgb).dtype == np.uint8


def test_tf_versions_match_numpy_inside_tf_function():
    rng = np.random.default_rng(0)
    disp = rng.uniform(0.01, 1.0, (2, 6, 7, 1)).astype(np.float32)
    disp[0, 0, 0, 0] = np.nan
    flow = rng.normal(0.0, 4.0, (2, 6, 7, 2)).astype(np.float32)

    @tf.function
    def colour(d, f):
        return (visualize.colorize_disparity_tf(d), visualize.colorize_depth_tf(1.0 / d),
                visualize.flow_to_color_tf(f), visualize.flow_to_color_tf(f, max_flow=2.0))

    d_tf, z_tf, f_tf, f2_tf = [t.numpy() for t in colour(tf.constant(disp), tf.constant(flow))]
    np.testing.assert_allclose(d_tf, visualize.colorize_disparity(disp), atol=1e-6)
    np.testing.assert_allclose(z_tf, visualize.colorize_depth(1.0 / disp), atol=1e-6)
    np.testing.assert_allclose(f_tf, visualize.flow_to_color(flow), atol=1e-5)
    np.testing.assert_allclose(f2_tf, visualize.flow_to_color(flow, max_flow=2.0), atol=1e-5)
    assert d_tf.shape == (2, 6, 7, 3) and f_tf.shape == (2, 6, 7, 3)
    assert d_tf.min() >= 0.0 and d_tf.max() <= 1.0
