"""The train step's pose conventions, checked against the synthetic world's exact GT.

`CoopTrainStep.forward` feeds the pose net each source paired with the target in temporal
order — (I_{t-1}, I_t) and (I_t, I_{t+1}) — reads the output as T_a->b and inverts the
first, so that ``transforms[k]`` = T_target->source_k. Swapping a pair or dropping the
inversion passed every other test of the suite.

* GT in, GT out: stand-in networks return the world's GT (a depth net that outputs the
  sigmoid of the GT disparity at every scale; a pose net that outputs T_a->b for the pair
  it is given, identified by comparing its input frames with the snippet's, so it is a
  pure function of its input like a real pose net). The step's ``transforms`` must equal
  the GT poses and its ``rigid_flow`` the GT flow on static pixels, with a small Φ_D
  (``phi_rigid``), for BOTH sources.
* With a pose net that is order-sensitive and far from the identity, ``transforms`` =
  inv(P(I_{t-1}, I_t)) and P(I_t, I_{t+1}), P being the pose net on the pair in temporal
  order.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf import geometry, specs
from coopnet_tf.losses import apportion
from coopnet_tf.training.step import CoopTrainStep, LossWeights, Phase, StepOptions

SIZE = 64
BATCH = 2
NUM_SCALES = 4
OPTIONS = StepOptions()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Two snippets with ground truth, no augmentation (frames_aug = frames)."""
    from coopnet_tf.data import pipeline, synthetic
    root = conftest.tiny_world(tmp_path_factory, SIZE, frames_per_sequence=5)
    ds = pipeline.make_dataset(synthetic.file_pattern(root, "train"), batch_size=BATCH,
                               height=SIZE, width=SIZE, training=False,
                               with_ground_truth=True, deterministic=True)
    out = next(iter(ds))
    return {k: v for k, v in out.items() if k != specs.KEY_FRAMES_AUG}


def _nearest(inputs, table):
    """Index of the table entry equal to each input image ([N, H, W, C] vs [M, H, W, C])."""
    diff = tf.abs(inputs[:, None] - table[None])
    return tf.argmin(tf.reduce_mean(diff, axis=[2, 3, 4]), axis=1)


def gt_depth_net(batch):
    """Depth stand-in: the sigmoid whose `disp_to_depth` is the GT depth of the target
    frame it recognises, at every scale (area-resized)."""
    targets = tf.cast(batch[specs.KEY_FRAMES][:, specs.TARGET_INDEX], tf.float32)
    depth = tf.clip_by_value(batch[specs.KEY_GT_DEPTH], OPTIONS.min_depth, OPTIONS.max_depth)
    lo, hi = 1.0 / OPTIONS.max_depth, 1.0 / OPTIONS.min_depth
    sigmoid = (1.0 / depth - lo) / (hi - lo)                          # [B, H, W, 1]
    image = keras.Input((SIZE, SIZE, 3))
    outputs = []
    for s in range(NUM_SCALES):
        size = SIZE // 2 ** s
        table = tf.image.resize(sigmoid, [size, size], "area") if s else sigmoid
        outputs.append(keras.layers.Lambda(
            lambda x, t=table: tf.gather(t, _nearest(x, targets)),
            output_shape=(size, size, 1))(image))
    return keras.Model(image, outputs, name="gt_depth")


def _pose_vector(matrix):
    """[4, 4] -> (axis-angle, translation) in float64 (the float32 log map of
    `geometry.matrix_to_pose_vector` loses ~1e-4 rad on the 1e-3 rad rotations here)."""
    r = matrix[:3, :3]
    w = 0.5 * np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    angle = np.arctan2(np.linalg.norm(w), 0.5 * (np.trace(r) - 1.0))
    axis_angle = w * (angle / np.linalg.norm(w)) if np.linalg.norm(w) > 0 else w
    return np.concatenate([axis_angle, matrix[:3, 3]])


def gt_pose_net(batch):
    """Pose stand-in: for the pair (a, b) it recognises as two frames of one snippet, the
    GT T_a->b = G_b G_a^-1 with G_f = T_target->f (G_target = I) — what a perfect pose net
    outputs for (a, b) in this order. (Snippets of one sequence share frames, so a and b
    are looked up jointly, in the snippet that holds both.)"""
    frames = tf.cast(batch[specs.KEY_FRAMES], tf.float32)            # [B, F, H, W, 3]
    gt_pose = batch[specs.KEY_GT_POSE].numpy().astype(np.float64)     # [B, S, 4, 4]
    g = np.tile(np.eye(4), [BATCH, specs.NUM_FRAMES, 1, 1])
    for k, i in enumerate(specs.SOURCE_INDICES):
        g[:, i] = gt_pose[:, k]
    vectors = tf.constant(np.array([[[_pose_vector(g_b @ np.linalg.inv(g_a)) for g_b in g_n]
                                     for g_a in g_n] for g_n in g]), tf.float32)  # [B, F, F, 6]

    def distances(images):                                            # [N, B, F]
        return tf.reduce_mean(tf.abs(images[:, None, None] - frames[None]), axis=[3, 4, 5])

    def pose(pair):
        dist_a, dist_b = distances(pair[..., :3]), distances(pair[..., 3:])
        item = tf.argmin(tf.reduce_min(dist_a, 2) + tf.reduce_min(dist_b, 2), axis=1)
        frame_a = tf.argmin(tf.gather(dist_a, item, batch_dims=1), axis=1)
        frame_b = tf.argmin(tf.gather(dist_b, item, batch_dims=1), axis=1)
        return tf.gather_nd(vectors, tf.stack([item, frame_a, frame_b], -1))

    pair = keras.Input((SIZE, SIZE, 6))
    return keras.Model(pair, keras.layers.Lambda(pose, output_shape=(6,))(pair), name="gt_pose")


def zero_flow_net():
    pair = keras.Input((SIZE, SIZE, 6))
    outputs = [keras.layers.Lambda(
        lambda x, size=SIZE // 2 ** s: tf.zeros([tf.shape(x)[0], size, size, 2]),
        output_shape=(SIZE // 2 ** s, SIZE // 2 ** s, 2))(pair) for s in range(NUM_SCALES)]
    return keras.Model(pair, outputs, name="zero_flow")


def make_step(depth_net, pose_net):
    return CoopTrainStep(depth_net, pose_net, zero_flow_net(), keras.optimizers.Adam(),
                         keras.optimizers.Adam(), apportion.make_strategy("baseline"),
                         weights=LossWeights(gc=0.0), options=OPTIONS,
                         global_batch_size=BATCH)


def _static_in_view(batch):
    """[B, S, H, W] mask: static (GT moving mask 0), GT depth in range, and the GT flow
    lands inside the source image (a whole pixel from the border, for bilinear sampling)."""
    flow = batch[specs.KEY_GT_FLOW].numpy()                           # [B, S, H, W, 2]
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    inside = (x >= 1) & (x <= SIZE - 2) & (y >= 1) & (y <= SIZE - 2)
    static = batch[specs.KEY_GT_MOVING].numpy()[..., 0] < 0.5
    depth = batch[specs.KEY_GT_DEPTH].numpy()[:, None, ..., 0]
    valid = (depth > OPTIONS.min_depth) & (depth < OPTIONS.max_depth)
    return inside & static & valid


def test_rigid_flow_from_gt_depth_and_pose_is_the_gt_flow(batch):
    step = make_step(gt_depth_net(batch), gt_pose_net(batch))
    out = step.forward(batch, Phase(burn_in=True, update_quantiles=False), training=False)
    gt_pose = batch[specs.KEY_GT_POSE].numpy()
    gt_flow = batch[specs.KEY_GT_FLOW].numpy()
    mask = _static_in_view(batch)
    rigid = out["rigid_flow"].numpy()                                 # [B, S, H, W, 2]
    phi = out["phi_rigid"][0].numpy()[..., 0]                         # [B, S, H, W]
    phi_identity = out["phi_identity"].numpy()[..., 0]
    for k, i in enumerate(specs.SOURCE_INDICES):
        np.testing.assert_allclose(out["transforms"][k].numpy(), gt_pose[:, k], atol=1e-5,
                                   err_msg=f"T_target->source for source frame {i}")
        m = mask[:, k]
        assert m.mean() > 0.3, f"source {i}: too few static in-view pixels ({m.mean():.2f})"
        # the sources do move: a wrong convention cannot pass by a near-zero flow.
        assert np.median(np.linalg.norm(gt_flow[:, k][m], axis=-1)) > 0.5
        error = np.linalg.norm(rigid[:, k] - gt_flow[:, k], axis=-1)[m]
        assert error.max() < 1e-2, f"source {i}: rigid flow vs GT flow, max error {error.max()}"
        # Φ_D: reconstructed from the right place, the photometric error is small where the
        # pixel is visible (occluded pixels, a few percent here, are the tail), and well
        # below the un-warped source's where the pixel moves by more than a pixel.
        assert np.median(phi[:, k][m]) < 0.02, (i, np.median(phi[:, k][m]))
        moves = m & (np.linalg.norm(gt_flow[:, k], axis=-1) > 1.0)
        assert moves.sum() > 100
        assert np.median(phi[:, k][moves]) < 0.5 * np.median(phi_identity[:, k][moves]), i


def feature_pose_net():
    """A pose net that is a fixed function of its input pair, far from the identity and
    sensitive to the order: v_k = c_k + 50 mean(W_k (a - b)) for fixed random maps W_k, so
    P(b, a) is neither P(a, b) nor its inverse."""
    rng = np.random.default_rng(11)
    weights = tf.constant(rng.normal(size=(6, SIZE, SIZE, 3)).astype(np.float32))
    offset = tf.constant([0.05, -0.08, 0.03, 0.2, -0.1, 0.6], tf.float32)

    def pose(pair):
        diff = pair[..., :3] - pair[..., 3:]
        return offset + 50.0 * tf.reduce_mean(diff[:, None] * weights[None], axis=[2, 3, 4])

    pair = keras.Input((SIZE, SIZE, 6))
    return keras.Model(pair, keras.layers.Lambda(pose, output_shape=(6,))(pair), name="f_pose")


def test_transforms_follow_the_pose_net_in_temporal_order(batch):
    pose_net = feature_pose_net()
    step = make_step(gt_depth_net(batch), pose_net)
    out = step.forward(batch, Phase(burn_in=True, update_quantiles=False), training=False)
    frames = tf.cast(batch[specs.KEY_FRAMES], tf.float32)
    t = specs.TARGET_INDEX

    def p(a, b):
        vec = pose_net(tf.concat([frames[:, a], frames[:, b]], -1), training=False)
        return geometry.pose_vector_to_matrix(vec, OPTIONS.rotation_mode).numpy()

    for k, i in enumerate(specs.SOURCE_INDICES):
        if i < t:   # (I_{t-1}, I_t) -> T_{t-1}->t, inverted
            expected = np.linalg.inv(p(i, t))
            wrong = [p(i, t), np.linalg.inv(p(t, i)), p(t, i)]
        else:       # (I_t, I_{t+1}) -> T_t->t+1
            expected = p(t, i)
            wrong = [np.linalg.inv(p(t, i)), p(i, t), np.linalg.inv(p(i, t))]
        got = out["transforms"][k].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"source frame {i}")
        for alternative in wrong:   # the test can tell the conventions apart
            assert np.abs(got - alternative).max() > 1e-2
