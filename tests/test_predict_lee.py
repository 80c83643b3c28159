"""`predict --model_dir` on a Lee et al. run (train_and_evaluate.method = 'lee').

A run directory is made without training: gin/lee_synthetic.gin at 64x128, the project's
factories, perturbed weights (so the residual field is not ~0), a checkpoint and the
config the way the loop writes them. The predictor must restore the depth and motion
nets, write the depth and object-motion PNGs, and its ``*_object_motion.npy`` must equal
the two stages of `lee_step.predict_motion` run here on the restored networks, with the
intrinsics built by hand from the normalised ones.
"""
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf import export, models, predict, run_layout
from coopnet_tf import train as train_main
from coopnet_tf.training import lee_step

import conftest

HEIGHT, WIDTH = 64, 128
INTRINSICS = (0.6, 1.9, 0.45, 0.55)


@pytest.fixture
def lee_run(tmp_path):
    gin.clear_config()
    train_main.parse_gin(["lee_synthetic.gin"], [
        f"HEIGHT = {HEIGHT}", f"WIDTH = {WIDTH}",
        "build_depth_net.decoder_channels = (4, 8, 8, 16, 16)",
        "build_motion_net.decoder_channels = (4, 8, 8, 16, 16)", *conftest.TINY_ENCODERS])
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, run_layout.OPERATIVE_CONFIG), "w") as f:
        f.write(gin.config_str())
    tf.keras.utils.set_random_seed(3)
    depth_net = models.build_depth_net(height=HEIGHT, width=WIDTH)
    motion_net = models.build_motion_net(height=HEIGHT, width=WIDTH)
    rng = np.random.default_rng(0)
    for v in motion_net.trainable_variables:
        v.assign(v + rng.normal(0.0, 0.05, v.shape).astype(np.float32))
    ckpt = tf.train.Checkpoint(depth_net=depth_net, motion_net=motion_net,
                               global_step=tf.Variable(7, dtype=tf.int64))
    tf.train.CheckpointManager(ckpt, os.path.join(model_dir, run_layout.CHECKPOINT_SUBDIR),
                               max_to_keep=1).save(checkpoint_number=7)
    gin.clear_config()
    return model_dir


def _images(tmp_path, n=3):
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    paths = []
    for i in range(n):
        img = 0.5 + 0.4 * np.sin((x + 3 * i) / 5.0)[..., None] * np.cos(y / 4.0)[..., None] \
            * rng.uniform(0.5, 1.0, 3)
        path = str(tmp_path / f"frame{i}.png")
        predict.save_png(path, img.astype(np.float32))
        paths.append(path)
    return paths


def test_predict_model_dir_of_a_lee_run(lee_run, tmp_path):
    assert export.run_method(lee_run) == "lee"
    predictor = predict.Predictor.from_model_dir(lee_run)
    assert (predictor.height, predictor.width) == (HEIGHT, WIDTH)
    assert predictor.flow_fn is None and predictor.motion_fn is None
    images = _images(tmp_path, n=2)
    written = predict.predict_files(predictor, images, str(tmp_path / "out"), INTRINSICS)
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["frame0_depth.png", "frame0_object_motion.png", "frame1_depth.png"]

    depth_net, motion_net, info = export.restore_lee_networks(lee_run)
    assert info["step"] == 7
    ego_net, residual_net = models.motion_branches(motion_net)
    fx, fy, cx, cy = INTRINSICS
    K = tf.constant([[[fx * WIDTH, 0, cx * WIDTH], [0, fy * HEIGHT, cy * HEIGHT], [0, 0, 1]]],
                    tf.float32)
    arrays = [predict.load_image(p, HEIGHT, WIDTH, resample="bilinear")[0][None] for p in images]
    for i in range(1):
        a, b = (tf.constant(x, tf.float32) for x in (arrays[i], arrays[i + 1]))
        depth_a, depth_b = (models.disp_to_depth(depth_net(x, training=False)[0])[1] for x in (a, b))
        want = lee_step.predict_motion(ego_net, residual_net, a, b, depth_a, depth_b, K,
                                       info["rotation_mode"], with_residual=True)["residual"]
        got = np.load(str(tmp_path / "out" / f"frame{i}_object_motion.npy"))
        assert got.shape == (HEIGHT, WIDTH, 3)
        assert float(np.max(np.abs(want.numpy()))) > 1e-4        # a non-trivial field
        # the serving tf.function vs these eager calls: float32 rounding, which stage 1's
        # hard z-buffer can turn into a larger difference at a rare occlusion edge
        close = np.isclose(got, want.numpy()[0], rtol=1e-3, atol=1e-4)
        assert close.mean() > 0.999, f"{np.sum(~close)} of {close.size} values differ"
        assert float(np.max(np.abs(got - want.numpy()[0]))) < 0.05 * float(np.max(np.abs(got)))
