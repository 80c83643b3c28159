"""Serving signatures check their inputs; export never silently replaces a version.

The SavedModels are exported from tiny random networks and reloaded with
`tf.saved_model.load` (what TF Serving runs: the checks are graph ops inside the
signature). Before the checks, a rank-3 image aborted the process inside oneDNN, another
size returned a map of that size, 375x1242 failed inside a ConcatOp, and 0-255 floats gave
a saturated depth map without a word.
"""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf import export, models

SIZE = 64


@pytest.fixture(scope="module")
def nets():
    """Tiny stand-ins with the project networks' interfaces (depth: list of sigmoid maps;
    pose: [B, 6]; flow: list of [B, H, W, 2]), convolutions included (the oneDNN conv is
    where a rank-3 image used to abort the process); seconds to export."""
    layers = keras.layers
    keras.utils.set_random_seed(5)
    image, pair = keras.Input((SIZE, SIZE, 3)), keras.Input((SIZE, SIZE, 6))
    depth = keras.Model(image, [layers.Conv2D(1, 3, padding="same", activation="sigmoid")(image)])
    pooled = layers.GlobalAveragePooling2D()(layers.Conv2D(8, 3, strides=4)(pair))
    pose = keras.Model(pair, layers.Dense(6)(pooled))
    flow = keras.Model(pair, [layers.Conv2D(2, 3, padding="same")(pair)])
    return depth, pose, flow


@pytest.fixture(scope="module")
def signatures(nets, tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("export"))
    paths = export.export_models(export_dir, 1, SIZE, SIZE, *nets)
    loaded = {name: tf.saved_model.load(path) for name, path in paths.items()}
    return {name: m.signatures["serving_default"] for name, m in loaded.items()}, loaded


def _image(*shape, scale=1.0, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(0, scale, shape).astype(np.float32))


GOOD = (2, SIZE, SIZE, 3)
BAD_INPUTS = [
    # (case, image shape, value scale, words the error must contain)
    ("rank 3 (no batch axis)", (SIZE, SIZE, 3), 1.0, ["[B, 64, 64, 3]", "got shape", "[64 64 3]"]),
    ("another size", (1, 32, 96, 3), 1.0, ["exported size 64x64", "[1 32 96 3]"]),
    ("KITTI full size", (1, 375, 1242, 3), 1.0, ["exported size 64x64", "[1 375 1242 3]"]),
    ("grey, 1 channel", (1, SIZE, SIZE, 1), 1.0, ["[B, 64, 64, 3]", "[1 64 64 1]"]),
    ("rank 5", (1, 1, SIZE, SIZE, 3), 1.0, ["[B, 64, 64, 3]", "[1 1 64 64 3]"]),
    ("empty batch", (0, SIZE, SIZE, 3), 1.0, ["B >= 1", "[0 64 64 3]"]),
    ("0-255 values", GOOD, 255.0, ["in [0, 1]", "divided by 255"]),
]


@pytest.mark.parametrize("case,shape,scale,words", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_depth_signature_rejects_bad_images(signatures, case, shape, scale, words):
    sigs, _ = signatures
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        sigs["depth"](image=_image(*shape, scale=scale))
    text = str(err.value)
    assert "image:" in text, (case, text)
    for word in words:
        assert word in text, (case, word, text)


@pytest.mark.parametrize("name", ["pose", "flow"])
def test_pair_signatures_name_the_bad_input(signatures, name):
    sigs, _ = signatures
    good = _image(*GOOD)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_b: expected .*\[1 32 32 3\]"):
        sigs[name](image_a=good, image_b=_image(1, 32, 32, 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_a: expected finite RGB"):
        bad = good.numpy()
        bad[0, 3, 4, 1] = np.nan
        sigs[name](image_a=tf.constant(bad), image_b=good)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same batch size B"):
        sigs[name](image_a=good, image_b=_image(1, SIZE, SIZE, 3))


def test_good_inputs_pass_and_match_the_networks(nets, signatures):
    """The checks gate nothing valid: outputs equal the Keras networks (and values at the
    edge of the tolerance are accepted)."""
    depth_net, pose_net, flow_net = nets
    sigs, _ = signatures
    a = _image(*GOOD, seed=1)
    b = tf.clip_by_value(_image(*GOOD, seed=2) * 1.01 - 0.005, -export.VALUE_RANGE_TOLERANCE,
                         1.0 + export.VALUE_RANGE_TOLERANCE)
    disp, _ = models.disp_to_depth(depth_net(a, training=False)[0])
    np.testing.assert_allclose(sigs["depth"](image=a)["disparity"].numpy(), disp.numpy(),
                               rtol=1e-5, atol=1e-6)
    vec = pose_net(tf.concat([a, b], -1), training=False)
    np.testing.assert_allclose(sigs["pose"](image_a=a, image_b=b)["pose_vector"].numpy(),
                               vec.numpy(), rtol=1e-5, atol=1e-6)
    flow = flow_net(tf.concat([a, b], -1), training=False)[0]
    np.testing.assert_allclose(sigs["flow"](image_a=a, image_b=b)["flow"].numpy(),
                               flow.numpy(), rtol=1e-5, atol=1e-5)


def test_wrong_dtype_is_named(signatures):
    sigs, _ = signatures
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor"):
        sigs["depth"](image=tf.zeros(GOOD, tf.float64))
    # a uint8 array is cast by the Python wrapper; its 0-255 values are then rejected.
    with pytest.raises(tf.errors.InvalidArgumentError, match="in \\[0, 1\\]"):
        sigs["depth"](image=np.full(GOOD, 200, np.uint8))


def test_intrinsics_are_checked():
    """The residual flow signature's ``intrinsics`` input: shape [B, 3, 3], same B, finite."""
    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3]), tf.TensorSpec([None, 3, 3])])
    def fn(image, intrinsics):
        out = export.validate_inputs({"image_a": image}, 8, 8, intrinsics)
        return out["image_a"], out["intrinsics"]

    image, k = tf.zeros([2, 8, 8, 3]), tf.eye(3, batch_shape=[2])
    np.testing.assert_array_equal(fn(image, k)[1].numpy(), k.numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="intrinsics: expected \\[B, 3, 3\\]"):
        fn.python_function(image, tf.eye(4, batch_shape=[2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same batch size"):
        fn(image, tf.eye(3, batch_shape=[3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="intrinsics: expected finite"):
        fn(image, k * np.inf)


# ------------------------------------------------------------------- versions ---

def _saved_variables(path):
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    return {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(
        os.path.join(path, "variables", "variables")) if n.endswith("VARIABLE_VALUE")}


def test_export_refuses_to_replace_a_version_unless_overwrite(nets, tmp_path):
    depth_net = nets[0]
    root = str(tmp_path / "exports")
    first = export.export_models(root, 3, SIZE, SIZE, depth_net, names=["depth"])["depth"]
    before = _saved_variables(first)
    other = keras.models.clone_model(depth_net)   # another run's weights (re-initialised)
    with pytest.raises(FileExistsError, match=f"{first} already exists.*--overwrite"):
        export.export_models(root, 3, SIZE, SIZE, other, names=["depth"])
    after = _saved_variables(first)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    # a free version is written; the existing one stays
    export.export_models(root, 4, SIZE, SIZE, other, names=["depth"])
    assert sorted(os.listdir(os.path.join(root, "depth"))) == ["3", "4"]
    # --overwrite replaces it: the new weights, no temporary left behind
    export.export_models(root, 3, SIZE, SIZE, other, names=["depth"], overwrite=True)
    replaced = _saved_variables(first)
    assert any(not np.array_equal(before[n], replaced[n]) for n in before)
    assert sorted(os.listdir(os.path.join(root, "depth"))) == ["3", "4"]


def test_refusal_happens_before_anything_is_written(nets, tmp_path):
    """depth/5 exists, pose/5 does not: exporting both refuses and writes no pose/5."""
    root = str(tmp_path / "exports")
    export.export_models(root, 5, SIZE, SIZE, nets[0], names=["depth"])
    with pytest.raises(FileExistsError, match="depth/5 already exists"):
        export.export_models(root, 5, SIZE, SIZE, nets[0], nets[1], names=["depth", "pose"])
    assert not os.path.exists(os.path.join(root, "pose"))


def test_a_failed_save_leaves_no_version(nets, tmp_path, monkeypatch):
    """Atomic write: a save that dies midway leaves the version directory absent (the
    partial SavedModel sits in a `.tmp-*` sibling that TF Serving ignores)."""
    root = str(tmp_path / "exports")
    real_save = tf.saved_model.save

    def dying_save(module, path, signatures=None):
        real_save(module, path, signatures=signatures)
        os.remove(os.path.join(path, "saved_model.pb"))
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tf.saved_model, "save", dying_save)
    with pytest.raises(OSError, match="simulated"):
        export.export_models(root, 2, SIZE, SIZE, nets[0], names=["depth"])
    entries = os.listdir(os.path.join(root, "depth"))
    assert "2" not in entries and all(e.startswith(".tmp-2-") for e in entries)
