"""2-D boxes as data (issue 17, item 1): the two file formats, records with and without
boxes through the pipeline, the box transforms against the image content they describe,
the synthetic world's boxes and residual object motion against its exact ground truth."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from coopnet_tf import specs
from coopnet_tf.data import augment, boxes, convert, pipeline, records, synthetic
from coopnet_tf.geometry.camera import flip_intrinsics

CAR, PED, CYC, MISC = (boxes.CLASS_IDS[n] for n in ("car", "pedestrian", "cyclist", "misc"))


# ------------------------------------------------------------------------- formats ----

KITTI_LABELS = """\
Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01
DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10

Car 0.88 3 -0.69 0.00 192.37 402.31 374.00 1.60 1.57 3.23 -2.70 1.74 3.68 -1.29 0.75
"""


def test_kitti_label_lines():
    got = boxes.parse_kitti_labels(KITTI_LABELS, "000000.txt")
    np.testing.assert_allclose(got, [[712.40, 143.00, 810.73, 307.92, 1.0, PED],
                                     [0.00, 192.37, 402.31, 374.00, 0.75, CAR]], rtol=1e-6)
    assert got.dtype == np.float32
    assert boxes.parse_kitti_labels("\n", "empty.txt").shape == (0, specs.BOX_FIELDS)


@pytest.mark.parametrize("text, problem", [
    ("Car 0 0 0 1 2 3\n", "000007.txt:1: a KITTI label line needs at least 8 fields"),
    ("Car 0 0 0 1 2 3 4\nCar 0 0 0 1 2 x 4\n", "000007.txt:2: not a number"),
    ("\nTruck 0 0 0 1 2 3 4\nBus 0 0 0 1 2 3 4\n", "000007.txt:3: unknown class 'Bus'"),
    ("Car 0 0 0 5 2 3 4\n", "000007.txt:1: box .* has x2 < x1"),
    ("Car 0 0 0 1 2 3 4 1 1 1 1 1 1 1 1.5\n", "000007.txt:1: score 1.5 outside"),
])
def test_kitti_label_errors_name_file_and_line(text, problem):
    with pytest.raises(boxes.BoxFormatError, match=problem):
        boxes.parse_kitti_labels(text, "000007.txt")


def test_json_boxes_both_layouts_and_pixel_origin():
    rows = [[10, 20, 30, 40, 0.9, "car"], [0, 0, 4, 4]]
    as_rows = boxes.parse_json_boxes(json.dumps({"boxes": rows}), "f.json")
    as_list = boxes.parse_json_boxes(json.dumps(rows), "f.json")
    as_dicts = boxes.parse_json_boxes(json.dumps(
        {"boxes": [{"box": [10, 20, 30, 40], "score": 0.9, "class": "Car"},
                   {"bbox": [0, 0, 4, 4]}]}), "f.json")
    # detector corner convention (pixel i spans [i, i+1)) -> ours (centres at integers)
    expected = [[9.5, 19.5, 29.5, 39.5, 0.9, CAR], [-0.5, -0.5, 3.5, 3.5, 1.0, MISC]]
    for got in (as_rows, as_list, as_dicts):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    centred = boxes.parse_json_boxes(json.dumps(
        {"pixel_origin": "center", "boxes": [[10, 20, 30, 40, 1, 5]]}), "f.json")
    np.testing.assert_allclose(centred, [[10, 20, 30, 40, 1, CYC]])
    assert boxes.parse_json_boxes("[]", "f.json").shape == (0, 6)


@pytest.mark.parametrize("text, problem", [
    ('{"boxes": [\n[1, 2, 3, 4],\n[1, 2 3, 4]]}', "f.json:3: invalid JSON"),
    ('{"detections": []}', 'f.json: a JSON object needs a "boxes" list'),
    ('[[1, 2, 3, 4], [1, 2, 3]]', "f.json: box 1: expected"),
    ('[{"box": [1, 2, 3]}]', "f.json: box 0: box must be 4 numbers"),
    ('[[1, 2, 3, 4, 0.5, "bus"]]', "f.json: box 0: unknown class 'bus'"),
    ('[[1, 2, 3, 4, 0.5, 99]]', "f.json: box 0: class id 99 outside"),
    ('[[5, 2, 3, 4]]', "f.json: box 0: box .* has x2 < x1"),
    ('{"pixel_origin": "top", "boxes": []}', "f.json: pixel_origin must be"),
])
def test_json_errors_name_file_and_entry(text, problem):
    with pytest.raises(boxes.BoxFormatError, match=problem):
        boxes.parse_json_boxes(text, "f.json")


def test_read_boxes_by_extension(tmp_path):
    (tmp_path / "a.txt").write_text(KITTI_LABELS)
    (tmp_path / "a.json").write_text('[[0, 0, 2, 2, 0.5, "Tram"]]')
    (tmp_path / "a.csv").write_text("")
    assert boxes.read_boxes(str(tmp_path / "a.txt")).shape == (2, 6)
    np.testing.assert_allclose(boxes.read_boxes(str(tmp_path / "a.json")),
                               [[-0.5, -0.5, 1.5, 1.5, 0.5, boxes.CLASS_IDS["tram"]]])
    with pytest.raises(boxes.BoxFormatError, match="a.csv: box files are .txt"):
        boxes.read_boxes(str(tmp_path / "a.csv"))


# ------------------------------------------------------------- records and pipeline ----

H, W = 24, 40


def _png(image):
    return convert.encode_image(Image.fromarray(image), "png")


def _write(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example)


def _example(frame_id, frame_boxes=None, image=None):
    image = np.zeros((H, W, 3), np.uint8) if image is None else image
    h, w = image.shape[:2]
    K = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], np.float32)
    return records.serialize_snippet([_png(image)] * 3, K, h, w, "seq", frame_id,
                                     boxes=frame_boxes)


def _batches(pattern, **kwargs):
    kwargs = dict(dict(batch_size=1, height=H, width=W, training=False, deterministic=True),
                  **kwargs)
    return [{k: v.numpy() for k, v in b.items()} for b in pipeline.make_dataset(pattern, **kwargs)]


def test_records_with_and_without_boxes_parse(tmp_path):
    frame0 = np.array([[1, 2, 5, 6, 0.3, CAR], [2, 3, 8, 9, 0.9, PED], [0, 0, 3, 3, 0.6, MISC],
                       [4, 4, 9, 9, 0.6, CYC]], np.float32)   # 4 boxes, N = 3 kept
    frame2 = np.array([[10, 11, 20, 21, 1.0, CAR]], np.float32)
    _write(tmp_path / "a.tfrecord", [_example(0, [frame0, np.zeros((0, 6)), frame2]),
                                     _example(1)])
    pattern = str(tmp_path / "a.tfrecord")
    with_boxes, without = _batches(pattern, max_boxes=3)
    # frame 0: the 3 highest scores, ties in file order; frame 1: none; frame 2: one
    np.testing.assert_allclose(with_boxes[specs.KEY_BOXES][0],
                               [frame0[[1, 2, 3], :4], np.zeros((3, 4)),
                                [frame2[0, :4], [0] * 4, [0] * 4]])
    np.testing.assert_array_equal(with_boxes[specs.KEY_BOX_MASK][0],
                                  [[1, 1, 1], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(with_boxes[specs.KEY_BOX_SCORES][0],
                               [[0.9, 0.6, 0.6], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(with_boxes[specs.KEY_BOX_CLASSES][0],
                                  [[PED, MISC, CYC], [-1] * 3, [CAR, -1, -1]])
    assert with_boxes[specs.KEY_BOX_CLASSES].dtype == np.int32
    assert with_boxes[specs.KEY_BOXES].shape == (1, specs.NUM_FRAMES, 3, 4)
    np.testing.assert_array_equal(without[specs.KEY_BOX_MASK], np.zeros((1, 3, 3)))
    np.testing.assert_array_equal(without[specs.KEY_BOXES], np.zeros((1, 3, 3, 4)))
    # max_boxes = 0 (the default): no box keys, both records parse as before
    plain = _batches(pattern)
    assert len(plain) == 2 and not set(plain[0]) & {specs.KEY_BOXES, specs.KEY_BOX_MASK}


def test_inconsistent_box_features_are_named(tmp_path):
    example = tf.train.Example.FromString(_example(0, [np.zeros((0, 6))] * 3))
    example.features.feature[specs.FEATURE_BOX_COUNT].int64_list.value[:] = [1, 0, 0]
    _write(tmp_path / "bad.tfrecord", [example.SerializeToString()])
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad.tfrecord"):
        _batches(str(tmp_path / "bad.tfrecord"), max_boxes=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no gt/object_motion.*bad.tfrecord"):
        _batches(str(tmp_path / "bad.tfrecord"), with_object_motion=True)
    with pytest.raises(ValueError, match="boxes of frame 1: x2 < x1"):
        _example(0, [np.zeros((0, 6)), [[5, 0, 4, 1, 1, 0]], np.zeros((0, 6))])


def _edges(profile):
    """Sub-pixel positions where a 0..1 profile crosses 0.5 (rising, falling)."""
    above = profile >= 0.5
    rise = np.nonzero(~above[:-1] & above[1:])[0]
    fall = np.nonzero(above[:-1] & ~above[1:])[0]
    assert len(rise) == 1 and len(fall) == 1, profile

    def cross(i):
        return i + (0.5 - profile[i]) / (profile[i + 1] - profile[i])
    return cross(rise[0]), cross(fall[0])


def _rectangle_edges(image):
    """(x1, y1, x2, y2) of a bright rectangle on black: the 0.5 crossings of its middle
    row and column (the edges of the painted area, in pixel-centre coordinates)."""
    grey = image.mean(-1)
    row, col = np.unravel_index(np.argmax(grey), grey.shape)
    (x1, x2), (y1, y2) = _edges(grey[row]), _edges(grey[:, col])
    return np.array([x1, y1, x2, y2])


@pytest.mark.parametrize("stored, out", [((24, 40), (48, 88)), ((48, 88), (24, 40))])
def test_resize_and_flip_move_boxes_with_the_image(tmp_path, stored, out):
    """The batch box equals the painted rectangle's edges measured in the batch image."""
    h, w = stored
    image = np.zeros((h, w, 3), np.uint8)
    cols, rows = (int(0.3 * w), int(0.65 * w)), (int(0.3 * h), int(0.7 * h))
    image[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = 255
    painted = [cols[0] - 0.5, rows[0] - 0.5, cols[1] + 0.5, rows[1] + 0.5, 1.0, CAR]
    outside = [-9, -9, -2, -2, 1.0, CAR]            # dropped when clipped
    np.testing.assert_allclose(_rectangle_edges(image / 255.0), painted[:4], atol=1e-6)
    _write(tmp_path / "r.tfrecord", [_example(0, [[painted, outside]] * 3, image)])
    for flip in (0.0, 1.0):
        batch = _batches(str(tmp_path / "r.tfrecord"), max_boxes=2, height=out[0],
                         width=out[1], training=True, flip_probability=flip,
                         jitter_probability=0.0, shuffle_buffer=1, repeat=1)[0]
        for f in range(specs.NUM_FRAMES):
            measured = _rectangle_edges(batch[specs.KEY_FRAMES][0, f])
            np.testing.assert_allclose(batch[specs.KEY_BOXES][0, f, 0], measured, atol=0.08)
            np.testing.assert_array_equal(batch[specs.KEY_BOX_MASK][0, f], [1, 0])
        # the NumPy transforms of the converters agree with the pipeline's
        expected = boxes.scale_boxes([painted], out[1] / w, out[0] / h)
        if flip:
            expected = boxes.flip_boxes(expected, out[1])
        np.testing.assert_allclose(batch[specs.KEY_BOXES][0, 0, :1], expected[:, :4], atol=1e-4)


def test_flip_matches_flip_intrinsics():
    """A box around a 3-D point's projection stays around it after the flip (K flipped by
    `flip_intrinsics`, points mirrored X' = F X)."""
    K = tf.constant([[30.0, 0, 17.3], [0, 30, 11.0], [0, 0, 1]])
    point = np.array([0.4, -0.2, 2.0])
    x, y = (K.numpy() @ point)[:2] / point[2]
    box = tf.constant([[[x - 1.0, y - 2.0, x + 3.0, y + 1.0]]])
    flipped = augment.flip_boxes(box, tf.ones([1, 1]), W).numpy()[0, 0]
    K_f = flip_intrinsics(K, W).numpy()
    xf, yf = (K_f @ (point * [-1, 1, 1]))[:2] / point[2]
    np.testing.assert_allclose(flipped, [xf - 3.0, yf - 2.0, xf + 1.0, yf + 1.0], atol=1e-4)


# ------------------------------------------------------------------------ converters ----

def test_converter_reads_both_formats_and_carries_boxes_through_resize(tmp_path):
    root, box_root = tmp_path / "data", tmp_path / "boxes"
    (root / "seq").mkdir(parents=True)
    (box_root / "seq").mkdir(parents=True)
    h, w = 40, 100
    frames = []
    for i in range(3):
        image = np.zeros((h, w, 3), np.uint8)
        image[10 + i:30 + i, 20:60] = 255       # rows 10+i..29+i, columns 20..59
        path = root / "seq" / f"{i:06d}.png"
        Image.fromarray(image).save(path)
        frames.append(str(path))
    # the same rectangles: KITTI labels (our pixel convention), JSON (detector corners)
    (box_root / "seq" / "000000.txt").write_text(
        "Car 0 0 0 19.5 9.5 59.5 29.5 1 1 1 1 1 1 0\nDontCare -1 -1 -10 0 0 5 5\n")
    (box_root / "seq" / "000001.json").write_text('{"boxes": [[20, 11, 60, 31, 0.8, "car"]]}')
    (box_root / "seq" / "000002.json").write_text('[{"box": [20, 12, 60, 32], "label": 0}]')
    source = convert.SnippetSource(tuple(frames), (50.0, 0, 50, 0, 50, 20, 0, 0, 1), "seq", 1)
    [item] = convert.attach_boxes([source], str(root), str(box_root))
    assert [os.path.basename(p) for p in item.box_paths] == ["000000.txt", "000001.json",
                                                             "000002.json"]
    options = convert.ImageOptions(resize=(20, 50), resample="bilinear")
    parsed = records.parse_snippet(convert.encode_snippet(item, options), max_boxes=2)
    for f in range(3):
        measured = _rectangle_edges(parsed[specs.KEY_FRAMES][f].numpy() / 255.0)
        np.testing.assert_allclose(parsed[specs.KEY_BOXES][f, 0].numpy(), measured, atol=0.08)
    np.testing.assert_allclose(parsed[specs.KEY_BOX_SCORES][:, 0], [1.0, 0.8, 1.0])
    np.testing.assert_array_equal(parsed[specs.KEY_BOX_MASK], [[1, 0]] * 3)
    # without boxes the record is the one written before boxes existed
    assert specs.FEATURE_BOX_COUNT not in tf.train.Example.FromString(
        convert.encode_snippet(source, options)).features.feature
    # a missing box file is named before anything is written
    os.remove(box_root / "seq" / "000002.json")
    with pytest.raises(convert.ConversionError, match=r"seq/000002.txt \(KITTI labels\) or"):
        convert.attach_boxes([source], str(root), str(box_root))
    (box_root / "seq" / "000002.json").write_text('[[1, 2, 3]]')
    [item] = convert.attach_boxes([source], str(root), str(box_root))
    with pytest.raises(convert.ConversionError, match="000002.json: box 0"):
        convert.encode_snippet(item, options)


# ------------------------------------------------------------------ synthetic world ----

SMALL = dict(height=32, width=96, frames_per_sequence=5, num_objects=16, moving_fraction=0.7)


@pytest.fixture(scope="module")
def sequence():
    return synthetic.render_sequence(synthetic.WorldConfig(**SMALL), "train", 0)


def test_synthetic_boxes_hold_their_objects_pixels(sequence):
    scene = sequence.scene
    checked_moving = 0
    for f, frame in enumerate(sequence.frames):
        exact = sequence.exact_boxes(f)
        seen = [b for b in range(scene.num_boxes)
                if scene.box_class[b] >= 0 and np.any(frame.prim == b)]
        assert len(exact) == len(seen) > 0
        np.testing.assert_array_equal(exact[:, 5], scene.box_class[seen])
        for box, b in zip(exact, seen):
            y, x = np.nonzero(frame.prim == b)
            assert box[0] <= x.min() and x.max() <= box[2], (f, b)
            assert box[1] <= y.min() and y.max() <= box[3], (f, b)
            checked_moving += int(scene.box_moving[b])
    assert checked_moving > 0
    # the moving mask of every snippet lies inside the target frame's boxes
    for t in sequence.target_indices():
        target_boxes = sequence.frame_boxes(t)
        y, x = np.nonzero(sequence.snippet(t)["gt_moving_mask"][0])
        inside = ((target_boxes[None, :, 0] <= x[:, None]) & (x[:, None] <= target_boxes[None, :, 2])
                  & (target_boxes[None, :, 1] <= y[:, None]) & (y[:, None] <= target_boxes[None, :, 3]))
        assert len(x) > 0 and inside.any(1).all()


def test_synthetic_box_jitter_and_miss_rate(sequence):
    config = synthetic.WorldConfig(**SMALL, box_jitter=0.1, box_miss_rate=0.5)
    detected = synthetic.render_sequence(config, "train", 0)    # same world, other options
    kept = total = 0
    growth = []
    for f in range(len(sequence.frames)):
        exact = sequence.exact_boxes(f)
        rows = detected.frame_boxes(f)
        np.testing.assert_array_equal(rows, detected.frame_boxes(f))      # seeded
        total, kept = total + len(exact), kept + len(rows)
        for row in rows:   # some exact box of its class, widened by 0..10 % per side
            size = np.tile(exact[:, 2:4] - exact[:, 0:2], 2)
            grow = np.concatenate([exact[:, :2] - row[:2], row[2:4] - exact[:, 2:4]], -1)
            ok = ((grow >= -1e-4) & (grow <= 0.1 * size + 1e-4)).all(-1) & (exact[:, 5] == row[5])
            assert ok.any(), (f, row)
            growth.append(grow[ok][0].sum())
    assert 0.25 * total < kept < 0.75 * total
    assert np.mean(growth) > 0.1
def _reprojection_flow(depth, pose, K, residual):
    """Flow of X_s = R (X_t + r) + t projected with K (float64 NumPy) and the source z."""
    depth, pose, K, residual = (np.asarray(a, np.float64) for a in (depth, pose, K, residual))
    h, w = depth.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    points = np.stack([x, y, np.ones_like(x)], -1) @ np.linalg.inv(K).T * depth[..., None]
    moved = (points + residual) @ pose[:3, :3].T + pose[:3, 3]
    proj = moved @ K.T
    return proj[..., :2] / proj[..., 2:3] - np.stack([x, y], -1), moved[..., 2]


def test_object_motion_reproduces_the_flow(sequence):
    for t in sequence.target_indices():
        snippet = sequence.snippet(t)
        for s in range(specs.NUM_SOURCES):
            r = snippet["gt_object_motion"][s]
            moving = snippet["gt_moving_mask"][s] > 0
            assert moving.any() and np.all(np.linalg.norm(r[moving], axis=-1) > 0.05)
            assert np.all(r[~moving] == 0)
            flow, z = _reprojection_flow(snippet["gt_depth"], snippet["gt_pose"][s],
                                         snippet["intrinsics"], r)
            front = z > 0.1
            assert front[moving].all()
            np.testing.assert_allclose(flow[front], snippet["gt_flow"][s][front], atol=1e-3)
            # without r the moving pixels' flow is wrong: the test can fail
            rigid, _ = _reprojection_flow(snippet["gt_depth"], snippet["gt_pose"][s],
                                          snippet["intrinsics"], 0 * r)
            assert np.abs(rigid - snippet["gt_flow"][s])[moving].max() > 0.5


def test_synthetic_records_through_the_flipping_pipeline(tmp_path):
    """Written, parsed, flipped: object motion still reproduces the (flipped) flow, and
    the boxes still hold the (flipped) moving pixels."""
    config = dict(SMALL, num_sequences=1, num_val_sequences=0, num_test_sequences=0,
                  frames_per_sequence=4, train_shards=1)
    path = synthetic.write_synthetic_dataset(str(tmp_path), progress=False, **config)
    ds = pipeline.make_dataset(synthetic.file_pattern(path, "train"), batch_size=2,
                               height=SMALL["height"], width=SMALL["width"],
                               with_ground_truth=True, with_object_motion=True, max_boxes=20,
                               flip_probability=1.0, jitter_probability=0.0, repeat=1,
                               deterministic=True)
    batch = {k: v.numpy() for k, v in next(iter(ds)).items()}
    seq = synthetic.render_sequence(synthetic.WorldConfig(**config), "train", 0)
    for i in range(2):
        target = int(batch[specs.KEY_FRAME_ID][i])
        for s in range(specs.NUM_SOURCES):
            moving = batch[specs.KEY_GT_MOVING][i, s, ..., 0] > 0
            flow, z = _reprojection_flow(batch[specs.KEY_GT_DEPTH][i, ..., 0],
                                         batch[specs.KEY_GT_POSE][i, s],
                                         batch[specs.KEY_INTRINSICS][i],
                                         batch[specs.KEY_GT_OBJECT_MOTION][i, s])
            front = z > 0.1
            assert moving.any() and front[moving].all()
            np.testing.assert_allclose(flow[front], batch[specs.KEY_GT_FLOW][i, s][front],
                                       atol=1e-3)
        # boxes of the target frame (index 1): the flipped exact boxes, holding the mask
        mask = batch[specs.KEY_BOX_MASK][i, specs.TARGET_INDEX] > 0
        got = batch[specs.KEY_BOXES][i, specs.TARGET_INDEX][mask]
        expected = boxes.flip_boxes(seq.frame_boxes(target), SMALL["width"])[:, :4]
        np.testing.assert_allclose(np.sort(got, 0), np.sort(expected, 0), atol=1e-4)
        y, x = np.nonzero(batch[specs.KEY_GT_MOVING][i, 0, ..., 0])
        inside = ((got[None, :, 0] <= x[:, None]) & (x[:, None] <= got[None, :, 2])
                  & (got[None, :, 1] <= y[:, None]) & (y[:, None] <= got[None, :, 3]))
        assert inside.any(1).all()
