"""SavedModel export for TF Serving, and predict.py on image files.

* the exported depth / pose / flow SavedModels reproduce the Keras models (1e-5);
* ``saved_model_cli show --all`` lists the documented `serving_default` signatures;
* `export_from_model_dir` restores a run directory (operative gin config + checkpoint);
* `predict` writes colour-mapped depth and flow PNGs.
"""
import os
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf import export, geometry, models, predict, run_layout, specs

SIZE = 64
ARCH_BINDINGS = list(conftest.TINY_ENCODERS) + [
    "build_depth_net.decoder_channels = (4, 8, 8, 16, 16)",
    "build_flow_net.decoder_channels = (4, 8, 8, 16, 16)",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A minimal training directory: operative config + one checkpoint of random nets."""
    from coopnet_tf.training import factories  # noqa: F401  (registers the configurables)
    model_dir = tmp_path_factory.mktemp("run")
    gin.clear_config()
    gin.parse_config(ARCH_BINDINGS)
    tf.keras.utils.set_random_seed(3)
    nets = [models.build_depth_net(height=SIZE, width=SIZE),
            models.build_pose_net(height=SIZE, width=SIZE),
            models.build_flow_net(height=SIZE, width=SIZE)]
    # make BatchNorm statistics non-trivial so that inference mode matters.
    for net in nets:
        for v in net.non_trainable_variables:
            v.assign(np.random.uniform(0.5, 1.5, v.shape).astype(np.float32))
    with open(os.path.join(model_dir, run_layout.OPERATIVE_CONFIG), "w") as f:
        f.write(gin.operative_config_str())
    step = tf.Variable(7, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(depth_net=nets[0], pose_net=nets[1], flow_net=nets[2],
                               global_step=step)
    tf.train.CheckpointManager(ckpt, os.path.join(model_dir, run_layout.CHECKPOINT_SUBDIR),
                               max_to_keep=1).save(checkpoint_number=7)
    gin.clear_config()
    return str(model_dir), nets


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    model_dir, _ = run_dir
    export_dir = str(tmp_path_factory.mktemp("export"))
    paths = export.export_from_model_dir(model_dir, export_dir, height=SIZE, width=SIZE)
    return export_dir, paths


def test_layout_and_versions(exported):
    export_dir, paths = exported
    for name in (specs.EXPORT_DEPTH, specs.EXPORT_POSE, specs.EXPORT_FLOW):
        # <export_dir>/<name>/<version>/ with version = the checkpoint's global step
        assert paths[name] == os.path.join(export_dir, name, "7")
        assert os.path.exists(os.path.join(paths[name], "saved_model.pb"))


def test_saved_models_match_keras(run_dir, exported):
    _, nets = run_dir
    depth_net, pose_net, flow_net = nets
    _, paths = exported
    rng = np.random.default_rng(0)
    a = tf.constant(rng.uniform(size=(2, SIZE, SIZE, 3)).astype(np.float32))
    b = tf.constant(rng.uniform(size=(2, SIZE, SIZE, 3)).astype(np.float32))

    depth_fn = tf.saved_model.load(paths["depth"]).signatures["serving_default"]
    out = depth_fn(image=a)
    disp, depth = models.disp_to_depth(depth_net(a, training=False)[0])
    np.testing.assert_allclose(out["disparity"].numpy(), disp.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["depth"].numpy(), depth.numpy(), rtol=1e-5, atol=1e-5)

    pose_fn = tf.saved_model.load(paths["pose"]).signatures["serving_default"]
    out = pose_fn(image_a=a, image_b=b)
    vec = pose_net(tf.concat([a, b], -1), training=False)
    np.testing.assert_allclose(out["pose_vector"].numpy(), vec.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["transform"].numpy(),
                               geometry.pose_vector_to_matrix(vec).numpy(), rtol=1e-5, atol=1e-5)

    flow_fn = tf.saved_model.load(paths["flow"]).signatures["serving_default"]
    out = flow_fn(image_a=a, image_b=b)
    flow = flow_net(tf.concat([a, b], -1), training=False)[0]
    assert out["flow"].shape == (2, SIZE, SIZE, 2)
    np.testing.assert_allclose(out["flow"].numpy(), flow.numpy(), rtol=1e-5, atol=1e-5)


# `saved_model_cli show --all --dir D` for each D (argv) in one interpreter: the console
# script's entry point (`saved_model_cli:main`) once per directory, one TensorFlow import
# instead of one per model (-20 s of the test's 30 s here); "@@END@@" ends each listing.
_SHOW_ALL = """
import sys
from tensorflow.python.tools import saved_model_cli
for directory in sys.argv[1:]:
    sys.argv = ["saved_model_cli", "show", "--all", "--dir", directory]
    try:
        saved_model_cli.main()
    except SystemExit as exit_:
        if exit_.code:
            raise
    print("@@END@@", flush=True)
"""


def test_saved_model_cli_lists_the_signatures(exported):
    _, paths = exported
    expected = {
        "depth": (["image"], ["depth", "disparity"]),
        "pose": (["image_a", "image_b"], ["pose_vector", "transform"]),
        "flow": (["image_a", "image_b"], ["flow"]),
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    listings = subprocess.run([sys.executable, "-c", _SHOW_ALL] + [paths[n] for n in expected],
                              check=True, capture_output=True, text=True, env=env).stdout
    listings = listings.split("@@END@@")
    assert len(listings) == len(expected) + 1 and not listings[-1].strip(), listings
    for (name, (inputs, outputs)), text in zip(expected.items(), listings):
        assert "signature_def['serving_default']" in text, text
        for key in inputs + outputs:
            assert f"['{key}'] tensor_info" in text, (name, key, text)
        assert f"(-1, {SIZE}, {SIZE}, 3)" in text
        # each listing is its own model's: the other models' outputs are absent
        for other, (_, other_outputs) in expected.items():
            if other != name:
                assert not any(f"outputs['{key}']" in text for key in other_outputs
                               if key not in outputs), (name, other, text)


def test_predict_writes_pngs(exported, tmp_path):
    from PIL import Image
    export_dir, _ = exported
    files = []
    for i in range(2):
        path = tmp_path / f"frame{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 80, 3), np.uint8)).save(path)
        files.append(str(path))
    predictor = predict.Predictor.from_saved_model(export_dir)
    written = predict.predict_files(predictor, files, str(tmp_path / "out"))
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["frame0_depth.png", "frame0_flow.png", "frame1_depth.png"]
    image = np.asarray(Image.open(tmp_path / "out" / "frame0_depth.png"))
    assert image.shape == (SIZE, SIZE, 3) and image.std() > 0


def test_restore_resolves_gin_macros_of_the_run(run_dir, tmp_path):
    """synthetic.gin binds the resolution through macros (`train_and_evaluate.height =
    %HEIGHT`); restoring a run without an explicit size must resolve them."""
    model_dir, nets = run_dir
    copy = str(tmp_path / "run")
    shutil.copytree(model_dir, copy)
    with open(os.path.join(copy, run_layout.OPERATIVE_CONFIG), "a") as f:
        f.write(f"\nHEIGHT = {SIZE}\nWIDTH = {SIZE}\n"
                "train_and_evaluate.height = %HEIGHT\ntrain_and_evaluate.width = %WIDTH\n")
    depth_net, _, _, info = export.restore_networks(copy)
    assert (info["height"], info["width"], info["step"]) == (SIZE, SIZE, 7)
    image = np.random.RandomState(0).uniform(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(depth_net(image, training=False)[0].numpy(),
                               nets[0](image, training=False)[0].numpy(), atol=1e-6)
    gin.clear_config()
