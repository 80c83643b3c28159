"""The tf.data pipeline on a tiny synthetic record set (32x96)."""
import os

import numpy as np
import pytest
import tensorflow as tf

import conftest

from coopnet_tf import specs
from coopnet_tf.data import augment, pipeline, records, synthetic

H, W = 32, 96
CONFIG = dict(height=H, width=W, num_sequences=2, num_val_sequences=1, num_test_sequences=0,
              frames_per_sequence=5, train_shards=2, eval_shards=1, moving_fraction=0.5)
NUM_TRAIN = 2 * (5 - 2)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return synthetic.ensure_synthetic_dataset(
        cache_dir=tmp_path_factory.mktemp("synthetic"), progress=False, **CONFIG)


@pytest.fixture(scope="module")
def train_pattern(dataset_dir):
    return synthetic.file_pattern(dataset_dir, "train")


def _by_key(batches):
    """{(sequence_id, frame_id): snippet as numpy} over all batches."""
    out = {}
    for batch in batches:
        batch = {k: v.numpy() for k, v in batch.items()}
        for i in range(len(batch[specs.KEY_FRAME_ID])):
            key = (batch[specs.KEY_SEQUENCE_ID][i], int(batch[specs.KEY_FRAME_ID][i]))
            out[key] = {k: v[i] for k, v in batch.items()}
    return out


def _one_pass(pattern, **kwargs):
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("height", H)
    kwargs.setdefault("width", W)
    ds = pipeline.make_dataset(pattern, repeat=1, deterministic=True, **kwargs)
    return _by_key(ds)


def rigid_flow(depth, pose, K):
    depth, pose, K = (np.asarray(a, np.float64) for a in (depth, pose, K))
    h, w = depth.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    points = np.stack([x, y, np.ones_like(x)], -1) @ np.linalg.inv(K).T * depth[..., None]
    proj = (points @ pose[:3, :3].T + pose[:3, 3]) @ K.T
    return proj[..., :2] / proj[..., 2:3] - np.stack([x, y], -1)


def test_shapes_dtypes_keys(train_pattern):
    ds = pipeline.make_dataset(train_pattern, batch_size=4, height=16, width=48,
                               with_ground_truth=True, deterministic=True)
    batch = next(iter(ds))
    s = specs.NUM_SOURCES
    expected = {
        specs.KEY_FRAMES: ([4, 3, 16, 48, 3], tf.float32),
        specs.KEY_FRAMES_AUG: ([4, 3, 16, 48, 3], tf.float32),
        specs.KEY_INTRINSICS: ([4, 3, 3], tf.float32),
        specs.KEY_SEQUENCE_ID: ([4], tf.string),
        specs.KEY_FRAME_ID: ([4], tf.int64),
        specs.KEY_GT_DEPTH: ([4, 16, 48, 1], tf.float32),
        specs.KEY_GT_POSE: ([4, s, 4, 4], tf.float32),
        specs.KEY_GT_FLOW: ([4, s, 16, 48, 2], tf.float32),
        specs.KEY_GT_MOVING: ([4, s, 16, 48, 1], tf.float32),
    }
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape, key
        assert batch[key].dtype == dtype, key
    # static shapes for the model (drop_remainder=True in training)
    assert ds.element_spec[specs.KEY_FRAMES].shape == [4, 3, 16, 48, 3]
    for key in (specs.KEY_FRAMES, specs.KEY_FRAMES_AUG):
        assert 0.0 <= float(tf.reduce_min(batch[key])) and float(tf.reduce_max(batch[key])) <= 1.0
    no_gt = next(iter(pipeline.make_dataset(train_pattern, 2, H, W, deterministic=True)))
    assert not any(k.startswith("gt_") for k in no_gt)


def test_resize_rescales_intrinsics_and_ground_truth(train_pattern):
    native = _one_pass(train_pattern, training=False, with_ground_truth=True)
    half = _one_pass(train_pattern, training=False, with_ground_truth=True,
                     height=H // 2, width=W // 2)
    assert len(native) == len(half) == NUM_TRAIN
    for key, a in native.items():
        b = half[key]
        np.testing.assert_allclose(a[specs.KEY_INTRINSICS], synthetic.intrinsics(H, W), rtol=1e-6)
        np.testing.assert_allclose(b[specs.KEY_INTRINSICS], synthetic.intrinsics(H // 2, W // 2),
                                   rtol=1e-6)
        # flow: bilinear at an exact 2x reduction = mean of 2x2 blocks, values halved
        blocks = a[specs.KEY_GT_FLOW].reshape(2, H // 2, 2, W // 2, 2, 2).mean((2, 4))
        np.testing.assert_allclose(b[specs.KEY_GT_FLOW], 0.5 * blocks, rtol=1e-4, atol=1e-4)
        # depth and masks: nearest neighbour (values are a subset of the originals)
        assert np.isin(b[specs.KEY_GT_DEPTH], a[specs.KEY_GT_DEPTH]).all()
        assert set(np.unique(b[specs.KEY_GT_MOVING])) <= {0.0, 1.0}
        np.testing.assert_array_equal(b[specs.KEY_GT_POSE], a[specs.KEY_GT_POSE])


def test_eval_mode_is_clean_ordered_and_keeps_the_last_batch(train_pattern):
    ds = pipeline.make_dataset(train_pattern, batch_size=4, height=H, width=W, training=False)
    batches = list(ds)
    assert [int(b[specs.KEY_FRAMES].shape[0]) for b in batches] == [4, NUM_TRAIN - 4]
    for b in batches:
        np.testing.assert_array_equal(b[specs.KEY_FRAMES].numpy(), b[specs.KEY_FRAMES_AUG].numpy())
    again = list(pipeline.make_dataset(train_pattern, batch_size=4, height=H, width=W,
                                       training=False))
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a[specs.KEY_FRAME_ID].numpy(), b[specs.KEY_FRAME_ID].numpy())


def test_flip_updates_cx_and_mirrors_ground_truth_consistently(train_pattern):
    plain = _one_pass(train_pattern, with_ground_truth=True, flip_probability=0.0,
                      jitter_probability=0.0)
    flipped = _one_pass(train_pattern, with_ground_truth=True, flip_probability=1.0,
                        jitter_probability=0.0)
    assert plain.keys() == flipped.keys() and len(plain) == NUM_TRAIN
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    for key, a in plain.items():
        b = flipped[key]
        K_a, K_b = a[specs.KEY_INTRINSICS], b[specs.KEY_INTRINSICS]
        assert K_b[0, 2] == pytest.approx(W - 1 - K_a[0, 2])
        np.testing.assert_array_equal(np.delete(K_b.ravel(), 2), np.delete(K_a.ravel(), 2))
        np.testing.assert_array_equal(b[specs.KEY_FRAMES], a[specs.KEY_FRAMES][:, :, ::-1])
        np.testing.assert_array_equal(b[specs.KEY_FRAMES_AUG], b[specs.KEY_FRAMES])
        np.testing.assert_array_equal(b[specs.KEY_GT_DEPTH], a[specs.KEY_GT_DEPTH][:, ::-1])
        np.testing.assert_array_equal(b[specs.KEY_GT_MOVING], a[specs.KEY_GT_MOVING][:, :, ::-1])
        np.testing.assert_array_equal(b[specs.KEY_GT_FLOW],
                                      a[specs.KEY_GT_FLOW][:, :, ::-1] * [-1.0, 1.0])
        np.testing.assert_allclose(b[specs.KEY_GT_POSE], mirror @ a[specs.KEY_GT_POSE] @ mirror,
                                   atol=1e-7)
        # the flipped depth, pose and K still reproduce the flipped flow on static pixels
        for slot in range(specs.NUM_SOURCES):
            static = b[specs.KEY_GT_MOVING][slot, ..., 0] == 0
            flow = rigid_flow(b[specs.KEY_GT_DEPTH][..., 0], b[specs.KEY_GT_POSE][slot], K_b)
            np.testing.assert_allclose(flow[static], b[specs.KEY_GT_FLOW][slot][static], atol=2e-3)


def test_jitter_is_one_draw_per_snippet_applied_to_clean_frames(train_pattern):
    clean = _one_pass(train_pattern, flip_probability=0.0, jitter_probability=0.0)
    jittered = _one_pass(train_pattern, flip_probability=0.0, jitter_probability=1.0)
    changed = 0
    for key, a in clean.items():
        b = jittered[key]
        # the losses see the clean frames, untouched
        np.testing.assert_array_equal(b[specs.KEY_FRAMES], a[specs.KEY_FRAMES])
        frames, aug = b[specs.KEY_FRAMES], b[specs.KEY_FRAMES_AUG]
        changed += np.abs(aug - frames).mean() > 1e-3
        # one draw for the snippet: the same clean colour maps to the same jittered colour
        # in all three frames (the map is a function of the pixel value only)
        colours = np.round(frames.reshape(-1, 3) * 255).astype(np.int64)
        codes = colours @ [65536, 256, 1]
        frame_of = np.repeat(np.arange(3), H * W)
        out = aug.reshape(-1, 3)
        order = np.argsort(codes, kind="stable")
        codes, frame_of, out = codes[order], frame_of[order], out[order]
        same = codes[1:] == codes[:-1]
        across = same & (frame_of[1:] != frame_of[:-1])
        assert across.sum() > 50
        np.testing.assert_allclose(out[1:][across], out[:-1][across], atol=2e-6)
    assert changed == len(clean)


def test_color_jitter_matches_its_definition():
    rng = np.random.default_rng(0)
    frames = tf.constant(rng.uniform(0.1, 0.9, (3, 4, 5, 3)), tf.float32)
    params = {"brightness": tf.constant(1.1), "contrast": tf.constant(0.9),
              "saturation": tf.constant(1.2), "hue": tf.constant(0.0)}
    out = augment.color_jitter(frames, params, hue_enabled=False).numpy()
    x = np.clip(frames.numpy() * 1.1, 0, 1)
    grey = lambda v: (v * [0.299, 0.587, 0.114]).sum(-1, keepdims=True)  # noqa: E731
    mean = grey(x).mean()
    x = np.clip(mean + 0.9 * (x - mean), 0, 1)
    x = np.clip(grey(x) + 1.2 * (x - grey(x)), 0, 1)
    np.testing.assert_allclose(out, x, atol=1e-6)
    # the identity draw is the identity
    identity = {"brightness": tf.constant(1.0), "contrast": tf.constant(1.0),
                "saturation": tf.constant(1.0), "hue": tf.constant(0.0)}
    np.testing.assert_allclose(augment.color_jitter(frames, identity).numpy(), frames.numpy(),
                               atol=1e-5)
    # the hue rotation keeps luma and is undone by the opposite rotation
    m = augment.colour_matrix(tf.constant(1.0), tf.constant(0.1)).numpy()
    m_back = augment.colour_matrix(tf.constant(1.0), tf.constant(-0.1)).numpy()
    np.testing.assert_allclose(m @ [0.299, 0.587, 0.114], [0.299, 0.587, 0.114], atol=1e-5)
    np.testing.assert_allclose(m @ m_back, np.eye(3), atol=1e-5)
    assert np.abs(m - np.eye(3)).max() > 0.1


def test_deterministic_mode_is_reproducible(train_pattern):
    def first_batches(seed):
        ds = pipeline.make_dataset(train_pattern, batch_size=2, height=H, width=W, seed=seed,
                                   deterministic=True, with_ground_truth=True)
        return [{k: v.numpy() for k, v in b.items()} for b in ds.take(4)]

    a, b, c = first_batches(7), first_batches(7), first_batches(8)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x[specs.KEY_FRAMES_AUG], z[specs.KEY_FRAMES_AUG])
               for x, z in zip(a, c))
    # training repeats and reshuffles: more batches than one pass holds
    ds = pipeline.make_dataset(train_pattern, batch_size=4, height=H, width=W, deterministic=True)
    assert len(list(ds.take(5))) == 5


def test_missing_pattern_gives_a_clear_error(tmp_path):
    pattern = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match="nothing-"):
        pipeline.make_dataset(pattern, batch_size=2, height=H, width=W)


def test_png_size_probe_never_fails_on_short_frames():
    """The size probe runs beside the check that names the file, in any order: it must
    not raise on a frame too short to be a PNG (it did, and the error lost the name)."""
    png = tf.io.encode_png(tf.zeros([5, 7, 3], tf.uint8))
    heights, widths = pipeline._png_sizes(tf.stack([png, tf.constant(b"text")]))
    assert heights.numpy().tolist() == [5, 0] and widths.numpy().tolist() == [7, 0]


def test_corrupt_files_are_named(tmp_path, train_pattern):
    garbage = tmp_path / "garbage.tfrecord"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(ValueError, match="garbage.tfrecord"):
        pipeline.make_dataset(str(garbage), batch_size=2, height=H, width=W)
    # a record whose frames are not images: the error names the file
    from coopnet_tf.data import records
    not_images = tmp_path / "not_images.tfrecord"
    with tf.io.TFRecordWriter(str(not_images)) as writer:
        writer.write(records.serialize_snippet([b"text"] * 3, np.eye(3), 4, 4, "x", 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="not_images.tfrecord"):
        list(pipeline.make_dataset(str(not_images), batch_size=1, height=4, width=4,
                                   training=False))
    # ground truth requested from records without it: the error names the file
    no_gt = tmp_path / "no_gt.tfrecord"
    frame = tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8)).numpy()
    with tf.io.TFRecordWriter(str(no_gt)) as writer:
        writer.write(records.serialize_snippet([frame] * 3, np.eye(3), 4, 4, "x", 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="no ground truth.*no_gt.tfrecord"):
        list(pipeline.make_dataset(str(no_gt), batch_size=1, height=4, width=4, training=False,
                                   with_ground_truth=True))
    assert len(list(pipeline.make_dataset(str(no_gt), batch_size=1, height=4, width=4,
                                          training=False))) == 1
    # damaged inside (valid header): iteration fails; check_records names the file
    source = sorted(tf.io.gfile.glob(train_pattern))[0]
    data = bytearray(open(source, "rb").read())
    data[len(data) // 2] ^= 0xFF
    damaged = tmp_path / "damaged.tfrecord"
    damaged.write_bytes(bytes(data))
    ds = pipeline.make_dataset(str(damaged), batch_size=1, height=H, width=W, training=False)
    with pytest.raises(tf.errors.OpError):
        list(ds)
    with pytest.raises(ValueError, match="damaged.tfrecord: record"):
        records.check_records(str(damaged))
    assert sum(records.check_records(train_pattern).values()) == NUM_TRAIN


def test_distribute_datasets_from_function_shards_per_worker(train_pattern):
    strategy = conftest.two_cpu_mirrored_strategy(cross_device_ops=None)
    seen = []

    def dataset_fn(input_context):
        seen.append((input_context.num_input_pipelines, input_context.input_pipeline_id))
        return pipeline.make_dataset(train_pattern, batch_size=4, height=H, width=W,
                                     input_context=input_context, deterministic=True)

    dist = strategy.distribute_datasets_from_function(dataset_fn)
    batch = next(iter(dist))
    per_replica = strategy.experimental_local_results(batch[specs.KEY_FRAMES])
    assert [int(x.shape[0]) for x in per_replica] == [2, 2]
    assert seen and all(n == 1 for n, _ in seen)  # one pipeline per worker here

    # with several pipelines, each reads its own files
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                         num_replicas_in_sync=2)
    ids = _by_key(pipeline.make_dataset(train_pattern, 4, H, W, input_context=context,
                                        training=False))
    other = _by_key(pipeline.make_dataset(
        train_pattern, 4, H, W, training=False,
        input_context=tf.distribute.InputContext(2, 0, 2)))
    assert ids and other and not set(ids) & set(other)
    assert len(ids) + len(other) == NUM_TRAIN
