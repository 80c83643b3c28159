"""Per-class object heights of Lee et al.'s L_h (Struct2Depth's height prior), issue 17.

* `height_prior_loss` with two classes of different heights: 0 where each box's depth is
  f_y H_c / h_box, a NumPy brute force otherwise (and not the single-height value);
* `lee.class_heights` (gin): names case-insensitive, defaults, clear errors; the binding
  reaches `LeeTrainStep` (its `height_prior` loss is the NumPy closed form of its depth);
* gin/lee_synthetic.gin's heights are the synthetic world's per-class means;
* tools/kitti_class_heights.py on constructed label files: NumPy statistics, a gin line
  that gin parses back, errors naming file and line.
"""
import pathlib
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf import models, specs
from coopnet_tf import train as train_main
from coopnet_tf.data import boxes as boxes_lib
from coopnet_tf.data import synthetic
from coopnet_tf.losses import object_motion as om
from coopnet_tf.training import factories, lee_step, optimizers
from coopnet_tf.training.step import Phase

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import kitti_class_heights  # noqa: E402  pylint: disable=wrong-import-position

H, W = 32, 64
CAR, PED = boxes_lib.CLASS_IDS["car"], boxes_lib.CLASS_IDS["pedestrian"]


def _table(**heights):
    """Heights per class id: the named ones, 1.53 m elsewhere."""
    table = [om.DEFAULT_OBJECT_HEIGHT] * len(boxes_lib.CLASSES)
    for name, h in heights.items():
        table[boxes_lib.CLASS_IDS[name]] = h
    return table


def _height_prior_np(depth, boxes, mask, classes, fy, table, min_box_height=4.0):
    """L_h by brute force: per real box of height >= 4 px, |mean depth over the pixel
    centres inside (x1 <= x <= x2, y1 <= y <= y2) - f_y H_c / h_box| / mean(D); mean over
    boxes of the batch."""
    per_box = []
    for b in range(depth.shape[0]):
        for (x1, y1, x2, y2), m, c in zip(boxes[b], mask[b], classes[b]):
            if m < 0.5 or y2 - y1 < min_box_height:
                continue
            ys, xs = np.mgrid[0:depth.shape[1], 0:depth.shape[2]]
            inside = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
            prior = fy[b] * table[c] / (y2 - y1)
            per_box.append(abs(depth[b][inside].mean() - prior) / depth[b].mean())
    return float(np.mean(per_box))


def _two_class_scene():
    """Two images (f_y 45 and 60): a car box, a pedestrian box, a 3-px box (skipped) and a
    padding row (class -1)."""
    boxes = np.array([[[10, 5, 20, 14], [30, 2, 40, 29], [50, 3, 55, 6], [0, 0, 0, 0]],
                      [[5, 10, 25, 25], [40, 0, 46, 20], [1, 1, 3, 3], [0, 0, 0, 0]]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], np.float32)
    classes = np.array([[CAR, PED, CAR, -1], [CAR, PED, PED, -1]], np.int32)
    fy = np.array([45.0, 60.0], np.float32)
    K = np.tile(np.eye(3, dtype=np.float32), (2, 1, 1))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2] = 50.0, fy, 32.0, 16.0
    return boxes, mask, classes, fy, K


def test_height_prior_with_two_class_heights_is_zero_at_the_prior_and_the_closed_form_otherwise():
    boxes, mask, classes, fy, K = _two_class_scene()
    table = _table(car=1.5, pedestrian=1.8)
    depth = np.full((2, H, W, 1), 30.0, np.float32)
    for b in range(2):
        for (x1, y1, x2, y2), c in zip(boxes[b][:2], classes[b][:2]):
            depth[b, int(y1):int(y2) + 1, int(x1):int(x2) + 1] = fy[b] * table[c] / (y2 - y1)

    def loss(d, heights):
        return float(om.height_prior_loss(tf.constant(d), tf.constant(boxes), tf.constant(mask),
                                          tf.constant(K), box_classes=tf.constant(classes),
                                          class_heights=tf.constant(heights, tf.float32)))

    assert loss(depth, table) < 1e-6
    single = _height_prior_np(depth[..., 0], boxes, mask, classes, fy, _table())
    assert single > 0.01                           # one height does not fit both boxes
    np.testing.assert_allclose(
        float(om.height_prior_loss(tf.constant(depth), tf.constant(boxes), tf.constant(mask),
                                   tf.constant(K))), single, rtol=1e-5)
    rng = np.random.default_rng(0)
    noisy = depth * rng.uniform(0.7, 1.3, depth.shape).astype(np.float32)
    expected = _height_prior_np(noisy[..., 0], boxes, mask, classes, fy, table)
    np.testing.assert_allclose(loss(noisy, table), expected, rtol=1e-5)
    single_noisy = _height_prior_np(noisy[..., 0], boxes, mask, classes, fy, _table())
    assert single_noisy > 3.0 * expected
    with pytest.raises(ValueError, match="box_classes"):
        om.height_prior_loss(tf.constant(depth), tf.constant(boxes), tf.constant(mask),
                             tf.constant(K), class_heights=tf.constant(table))


def test_lee_class_heights_names_defaults_and_errors():
    assert factories.lee().options.class_heights is None
    table = factories.lee(class_heights={"car": 1.4, "PEDESTRIAN": 1.7, "Truck": 3.25}
                          ).options.class_heights
    assert table == tuple(_table(car=1.4, pedestrian=1.7, truck=3.25))
    gin.parse_config("lee.class_heights = {'Cyclist': 1.75}")
    assert factories.lee().options.class_heights == tuple(_table(cyclist=1.75))
    gin.clear_config()
    with pytest.raises(ValueError, match="'Bus'"):
        factories.lee(class_heights={"Car": 1.5, "Bus": 3.0})
    with pytest.raises(ValueError, match="twice"):
        factories.lee(class_heights={"Car": 1.5, "car": 1.6})
    for bad in (0.0, -1.0, float("nan"), "1.5"):
        with pytest.raises(ValueError, match="Car"):
            factories.lee(class_heights={"Car": bad})
    with pytest.raises(ValueError, match="dict"):
        factories.lee(class_heights=[1.5])


@pytest.mark.usefixtures("fast_graphs")
def test_gin_class_heights_reach_the_lee_step():
    """The target frame's boxes and classes (the other frames' differ) give the step's
    `height_prior` the closed form of its own depth with the bound heights."""
    gin.parse_config("lee.class_heights = {'Car': 1.2, 'pedestrian': 2.4}")
    settings = factories.lee()
    gin.clear_config()
    keras.utils.set_random_seed(1)
    small = (4, 8, 8, 16, 16)
    size = 64                                   # the encoders' smallest input
    step = lee_step.LeeTrainStep(
        models.build_depth_net(height=size, width=size, decoder_channels=small),
        models.build_motion_net(height=size, width=size, decoder_channels=small),
        optimizers.make_optimizer(), optimizers.make_optimizer(), weights=settings.weights,
        options=settings.options)
    boxes, mask, classes, _, K = _two_class_scene()
    swapped = np.where(classes == CAR, PED, np.where(classes == PED, CAR, classes))
    target = [f == specs.TARGET_INDEX for f in range(specs.NUM_FRAMES)]
    frames_boxes = np.stack([boxes if t else boxes + [1, 2, 1, 2] for t in target], 1)
    frames_mask = np.stack([mask] * specs.NUM_FRAMES, 1)
    frames_classes = np.stack([classes if t else swapped for t in target], 1)
    frames = np.random.default_rng(0).uniform(0, 1, (2, specs.NUM_FRAMES, size, size, 3))
    batch = {specs.KEY_FRAMES: tf.constant(frames, tf.float32),
             specs.KEY_INTRINSICS: tf.constant(K), specs.KEY_BOXES: tf.constant(frames_boxes),
             specs.KEY_BOX_MASK: tf.constant(frames_mask),
             specs.KEY_BOX_CLASSES: tf.constant(frames_classes)}
    losses, fwd = step.compute_losses(batch, Phase(stage=lee_step.PHASE1),
                                      tf.constant([1, 2], tf.int64), training=False)
    depth = fwd["depth"].numpy()[..., 0]
    fy = K[:, 1, 1]
    table = _table(car=1.2, pedestrian=2.4)
    expected = _height_prior_np(depth, boxes, mask, classes, fy, table)
    np.testing.assert_allclose(float(losses["height_prior"]), expected, rtol=1e-5)
    single = _height_prior_np(depth, boxes, mask, classes, fy, _table())
    assert abs(expected - single) > 1e-3 * expected


def _world_config():
    """The `WorldConfig` that `ensure_synthetic_dataset` gets from the parsed gin files
    (the image size aside: gin macros, and the scenes do not depend on it)."""
    fields = {}
    for name in synthetic.WorldConfig.__dataclass_fields__:
        if name in ("height", "width"):
            continue
        try:
            fields[name] = gin.query_parameter(f"ensure_synthetic_dataset.{name}")
        except ValueError:
            pass
    return synthetic.WorldConfig(**fields)


def test_lee_synthetic_heights_are_the_worlds_per_class_means():
    """Heights vary within a class in the world (uniform half-heights), so the binding is
    the mean object height (2 x half-extent in y) per class over the training scenes."""
    train_main.parse_gin(["lee_synthetic.gin"], [])
    bound = factories.lee().options.class_heights
    config = _world_config()
    gin.clear_config()
    heights = {}
    for i in range(config.num_sequences):
        scene = synthetic.build_scene(config, "train", i)
        for cls, half in zip(scene.box_class, scene.box_half[:, 1]):
            if cls >= 0:
                heights.setdefault(int(cls), []).append(2.0 * half)
    assert bound is not None and len(heights) >= 2
    for cls, name in enumerate(boxes_lib.CLASSES):
        want = np.mean(heights[cls]) if cls in heights else om.DEFAULT_OBJECT_HEIGHT
        assert abs(bound[cls] - want) <= 5e-4 + 1e-9, (name, bound[cls], want)


# ------------------------------------------------------------ the KITTI tool ----
def _label(cls, h, score=None):
    line = f"{cls} 0.00 0 -1.57 100.0 150.0 200.0 250.0 {h} 1.60 3.90 1.0 1.7 20.0 -1.5"
    return line if score is None else f"{line} {score}"


def test_tool_statistics_and_gin_line(tmp_path):
    rng = np.random.default_rng(3)
    want = {"Car": rng.uniform(1.3, 1.8, 7), "Pedestrian": rng.uniform(1.5, 1.95, 4),
            "Truck": rng.uniform(2.8, 3.6, 2)}
    lines = [(name, h) for name, hs in want.items() for h in hs]
    order = rng.permutation(len(lines))
    files = [order[:5], order[5:9], order[9:]]
    for k, idx in enumerate(files):
        text = [_label(lines[i][0], f"{lines[i][1]:.6f}") for i in idx]
        text.insert(1, "DontCare -1 -1 -10 500.0 180.0 530.0 200.0 -1 -1 -1 -1000 -1000 -1000 -10")
        text.append("")
        (tmp_path / f"{k:06d}.txt").write_text("\n".join(text))
    (tmp_path / "notes.md").write_text("not a label file")
    stats = kitti_class_heights.class_statistics(str(tmp_path))
    assert list(stats) == ["Car", "Truck", "Pedestrian"]          # boxes.CLASSES order
    for name, hs in want.items():
        hs = np.round(hs, 6)
        count, mean, std = stats[name]
        assert count == len(hs)
        np.testing.assert_allclose([mean, std], [hs.mean(), hs.std()], rtol=1e-9)
    gin.parse_config(kitti_class_heights.gin_line(stats))
    parsed = gin.query_parameter("lee.class_heights")
    assert sorted(parsed) == sorted(want)
    for name, hs in want.items():
        assert abs(parsed[name] - np.round(hs, 6).mean()) <= 5e-4 + 1e-12
    assert factories.lee().options.class_heights[boxes_lib.CLASS_IDS["truck"]] == parsed["Truck"]


def test_tool_cli_writes_the_gin_file_and_names_bad_lines(tmp_path):
    labels = tmp_path / "label_2"
    labels.mkdir()
    (labels / "000000.txt").write_text(_label("Car", 1.5) + "\n" + _label("Van", 2.0, 0.9) + "\n")
    out = tmp_path / "heights.gin"
    tool = [sys.executable, str(REPO / "tools" / "kitti_class_heights.py"),
            f"--label_dir={labels}", "--noprogress"]
    proc = subprocess.run(tool + [f"--output={out}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "lee.class_heights = {'Car': 1.500, 'Van': 2.000}\n"
    assert "lee.class_heights" in proc.stdout and "Van" in proc.stdout
    for bad, message in ((_label("Car", "abc"), "not a number"),
                         (_label("Car", -1), "not a height"),
                         (_label("Bus", 3.0), "unknown class"),
                         (_label("Car", 1.5).rsplit(" ", 3)[0], "15 fields")):
        (labels / "000001.txt").write_text("\n" + bad + "\n")
        with pytest.raises(boxes_lib.BoxFormatError, match=f"000001.txt:2: .*{message}"):
            kitti_class_heights.class_statistics(str(labels))
    proc = subprocess.run(tool, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "000001.txt:2" in proc.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt"):
        kitti_class_heights.class_statistics(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not a directory"):
        kitti_class_heights.class_statistics(str(tmp_path / "missing"))
