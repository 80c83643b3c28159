"""The synthetic world's ground truth, checked with plain numpy (independent of the TF geometry).

Tiny resolutions (32x96, 48x144) keep the whole file to a few seconds.
"""
import json
import os

import numpy as np
import pytest

from coopnet_tf import specs
from coopnet_tf.data import synthetic

SMALL = dict(height=32, width=96, frames_per_sequence=6, num_objects=14)


def _pixel_grid(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return x, y


def rigid_flow(depth, pose, K):
    """Numpy reprojection: flow [H, W, 2] of a static scene from depth [H, W], T [4, 4], K."""
    depth, pose, K = (np.asarray(a, np.float64) for a in (depth, pose, K))
    h, w = depth.shape
    x, y = _pixel_grid(h, w)
    points = np.stack([x, y, np.ones_like(x)], -1) @ np.linalg.inv(K).T * depth[..., None]
    moved = points @ pose[:3, :3].T + pose[:3, 3]
    proj = moved @ K.T
    return proj[..., :2] / proj[..., 2:3] - np.stack([x, y], -1), moved[..., 2]


def bilinear(image, x, y):
    """Samples image [H, W, C] at float coordinates; also returns the 4 neighbours' indices."""
    h, w = image.shape[:2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    xs = np.clip([x0, x0 + 1], 0, w - 1)
    ys = np.clip([y0, y0 + 1], 0, h - 1)
    out = (image[ys[0], xs[0]] * (1 - fx) * (1 - fy) + image[ys[0], xs[1]] * fx * (1 - fy)
           + image[ys[1], xs[0]] * (1 - fx) * fy + image[ys[1], xs[1]] * fx * fy)
    return out, xs, ys


@pytest.fixture(scope="module")
def sequence():
    config = synthetic.WorldConfig(**SMALL, moving_fraction=0.6)
    return synthetic.render_sequence(config, "train", 0)


def _static_visible(seq, snippet, source_slot, source_frame):
    """Target pixels that are static, project inside the source and are not occluded there."""
    h, w = snippet["gt_depth"].shape
    x, y = _pixel_grid(h, w)
    flow = snippet["gt_flow"][source_slot]
    xs, ys = x + flow[..., 0], y + flow[..., 1]
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    _, z_source = rigid_flow(snippet["gt_depth"], snippet["gt_pose"][source_slot],
                             snippet["intrinsics"])
    source_depth = seq.frames[source_frame].depth
    _, nx, ny = bilinear(source_depth[..., None], xs, ys)
    visible = np.ones_like(inside)
    for yy in ny:
        for xx in nx:  # all four bilinear neighbours see the same surface point's depth
            visible &= np.abs(source_depth[yy, xx] - z_source) < 0.03 * z_source
    return inside & visible & (snippet["gt_moving_mask"][source_slot] == 0)


def test_intrinsics_are_monodepth2_kitti_constants():
    K = synthetic.intrinsics(128, 416)
    np.testing.assert_allclose(K, [[0.58 * 416, 0, 208], [0, 1.92 * 128, 64], [0, 0, 1]])


def test_snippet_shapes_and_ranges(sequence):
    snippet = sequence.snippet(2)
    h, w, s = SMALL["height"], SMALL["width"], specs.NUM_SOURCES
    assert snippet["frames"].shape == (3, h, w, 3) and snippet["frames"].dtype == np.uint8
    assert snippet["gt_depth"].shape == (h, w)
    assert snippet["gt_pose"].shape == (s, 4, 4)
    assert snippet["gt_flow"].shape == (s, h, w, 2)
    assert snippet["gt_moving_mask"].shape == (s, h, w)
    depth = snippet["gt_depth"]
    assert np.all(np.isfinite(depth)) and depth.min() > 1.0 and depth.max() < 200.0
    # the camera drives forward: the target sees the t+1 camera in front (z > 0)
    assert snippet["gt_pose"][1][2, 3] < -0.5 and snippet["gt_pose"][0][2, 3] > 0.5


def test_textures_are_rich(sequence):
    """Photometric learning needs texture: contrast and gradients everywhere in the image."""
    image = sequence.frames[3].image.astype(np.float64) / 255.0
    assert image.std() > 0.08
    grey = image.mean(-1)
    gradient = np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=0)).mean()
    assert gradient > 0.02
    # colour, not grey
    assert np.abs(image - image.mean(-1, keepdims=True)).mean() > 0.02


@pytest.mark.parametrize("size", [(32, 96), (48, 144)])
def test_warping_source_with_gt_flow_reproduces_target(size):
    """Static, non-occluded target pixels: |I_t - I_s(p + flow)| < 0.02 on [0, 1] images."""
    config = synthetic.WorldConfig(height=size[0], width=size[1], frames_per_sequence=5,
                                   moving_fraction=0.5)
    seq = synthetic.render_sequence(config, "train", 1)
    h, w = size
    x, y = _pixel_grid(h, w)
    for target in seq.target_indices():
        snippet = seq.snippet(target)
        target_image = snippet["frames"][specs.TARGET_INDEX] / 255.0
        for slot, index in enumerate(specs.SOURCE_INDICES):
            source_frame = target + index - specs.TARGET_INDEX
            flow = snippet["gt_flow"][slot]
            warped, _, _ = bilinear(snippet["frames"][index] / 255.0, x + flow[..., 0],
                                    y + flow[..., 1])
            valid = _static_visible(seq, snippet, slot, source_frame)
            assert valid.mean() > 0.25
            error = np.abs(warped - target_image).mean(-1)[valid].mean()
            assert error < 0.02, (target, slot, error)


def test_rigid_reprojection_reproduces_gt_flow_on_static_pixels(sequence):
    for target in sequence.target_indices():
        snippet = sequence.snippet(target)
        for slot in range(specs.NUM_SOURCES):
            flow, _ = rigid_flow(snippet["gt_depth"], snippet["gt_pose"][slot],
                                 snippet["intrinsics"])
            static = snippet["gt_moving_mask"][slot] == 0
            assert static.mean() > 0.5
            np.testing.assert_allclose(flow[static], snippet["gt_flow"][slot][static], atol=2e-3)


def test_moving_mask_marks_exactly_where_rigid_and_gt_flow_differ():
    config = synthetic.WorldConfig(**dict(SMALL, height=48, width=144, num_objects=16),
                                   moving_fraction=1.0)
    seen_moving = 0
    for index in range(2):
        seq = synthetic.render_sequence(config, "train", index)
        for target in seq.target_indices():
            snippet = seq.snippet(target)
            for slot in range(specs.NUM_SOURCES):
                flow, _ = rigid_flow(snippet["gt_depth"], snippet["gt_pose"][slot],
                                     snippet["intrinsics"])
                differs = np.abs(flow - snippet["gt_flow"][slot]).max(-1) > 2e-3
                mask = snippet["gt_moving_mask"][slot].astype(bool)
                np.testing.assert_array_equal(mask, differs)
                seen_moving += mask.sum()
    assert seen_moving > 100  # the check was not vacuous


def test_moving_fraction_zero_gives_empty_masks():
    config = synthetic.WorldConfig(**SMALL, moving_fraction=0.0)
    seq = synthetic.render_sequence(config, "train", 0)
    assert not seq.scene.box_moving.any()
    for target in seq.target_indices():
        assert seq.snippet(target)["gt_moving_mask"].sum() == 0


def test_moving_fraction_controls_the_number_of_moving_objects():
    config = synthetic.WorldConfig(**SMALL, moving_fraction=0.5)
    scene = synthetic.build_scene(config, "train", 0)
    assert scene.box_moving.sum() == 7
    assert np.all(np.linalg.norm(scene.box_velocity[scene.box_moving], axis=-1) > 0.1)
    assert np.all(scene.box_velocity[~scene.box_moving] == 0)


def test_deterministic_from_seed():
    config = synthetic.WorldConfig(**SMALL)
    a = synthetic.render_sequence(config, "train", 0).snippet(2)
    b = synthetic.render_sequence(config, "train", 0).snippet(2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    other_seed = synthetic.render_sequence(synthetic.WorldConfig(**SMALL, seed=1), "train", 0)
    assert not np.array_equal(other_seed.snippet(2)["frames"], a["frames"])
    other_split = synthetic.render_sequence(config, "val", 0)
    assert not np.array_equal(other_split.snippet(2)["frames"], a["frames"])


def test_config_validation():
    with pytest.raises(ValueError, match="moving_fraction"):
        synthetic.WorldConfig(moving_fraction=1.5)
    with pytest.raises(ValueError, match="frames_per_sequence"):
        synthetic.WorldConfig(frames_per_sequence=2)


def test_ensure_synthetic_dataset_generates_once_and_round_trips(tmp_path):
    import tensorflow as tf

    from coopnet_tf.data import records

    config = dict(SMALL, num_sequences=2, num_val_sequences=1, num_test_sequences=1,
                  frames_per_sequence=4, train_shards=3)
    path = synthetic.ensure_synthetic_dataset(cache_dir=tmp_path, progress=False, **config)
    assert synthetic.is_complete(path)
    summary = json.loads(open(os.path.join(path, synthetic.FINISHED_MARKER)).read())
    assert summary["splits"]["train"] == {
        "sequences": 2, "snippets": 4, "shards": 3,
        "pattern": synthetic.file_pattern(path, "train")}
    files = sorted(tf.io.gfile.glob(synthetic.file_pattern(path, "train")))
    assert [os.path.basename(f) for f in files] == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # no temporaries left
    mtimes = [os.path.getmtime(f) for f in files]
    # the second call finds it and returns at once
    assert synthetic.ensure_synthetic_dataset(cache_dir=tmp_path, progress=False, **config) == path
    assert [os.path.getmtime(f) for f in files] == mtimes
    # another config gets another directory
    other = synthetic.ensure_synthetic_dataset(cache_dir=tmp_path, progress=False,
                                               **dict(config, seed=3))
    assert other != path

    # the records hold exactly the rendered snippet and its ground truth
    parsed = [records.parse_snippet(r, with_ground_truth=True)
              for r in tf.data.TFRecordDataset(files[0])]
    first = parsed[0]
    assert first[specs.KEY_SEQUENCE_ID].numpy() == b"synthetic/train/0000"
    assert int(first[specs.KEY_FRAME_ID]) == 1
    seq = synthetic.render_sequence(synthetic.WorldConfig(**config), "train", 0)
    expected = seq.snippet(1)
    np.testing.assert_array_equal(first[specs.KEY_FRAMES].numpy(), expected["frames"])
    np.testing.assert_array_equal(first[specs.KEY_GT_DEPTH].numpy()[..., 0], expected["gt_depth"])
    np.testing.assert_array_equal(first[specs.KEY_GT_POSE].numpy(), expected["gt_pose"])
    np.testing.assert_array_equal(first[specs.KEY_GT_FLOW].numpy(), expected["gt_flow"])
    np.testing.assert_array_equal(first[specs.KEY_GT_MOVING].numpy()[..., 0],
                                  expected["gt_moving_mask"])
    np.testing.assert_allclose(first[specs.KEY_INTRINSICS].numpy(),
                               synthetic.intrinsics(SMALL["height"], SMALL["width"]), rtol=1e-6)


def test_cache_dir_defaults_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COOPNET_CACHE", str(tmp_path))
    assert synthetic.default_cache_dir() == tmp_path / "synthetic"
