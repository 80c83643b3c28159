"""Dataset converters: KITTI raw (real frames), Cityscapes (fixture from real frames),
KITTI odometry and KITTI 2015 flow (tiny fixtures), errors, atomic shards and resume.

Expected intrinsics are computed here from the raw calibration text / the camera json,
independently of the converters.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from coopnet_tf import specs
from coopnet_tf.data import cityscapes, convert, flow_records, kitti, records

REPO = pathlib.Path(__file__).resolve().parents[1]
DATE = "2011_09_26"
DRIVE = "2011_09_26_drive_0000_sync"
FOLDER = f"{DATE}/{DRIVE}"
# Cityscapes intrinsics of ../shared/data/MANIFEST.md (2048x1024).
CS_FX, CS_FY, CS_U0, CS_V0 = 2262.52, 2265.30, 1096.98, 513.137
SUMMARY_RE = re.compile(r"^examples=(\d+) shards=(\d+) skipped=(\d+) seconds=([0-9.]+)$", re.M)


def _raw_line(path, key):
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return np.array([float(v) for v in line[len(key) + 1:].split()])
    raise AssertionError(f"{key} not in {path}")


def _write_split(path, frames, side="l"):
    path.write_text("".join(f"{FOLDER} {i} {side}\n" for i in frames))
    return str(path)


def _read_records(output_dir, prefix="train"):
    files = sorted(pathlib.Path(output_dir).glob(f"{prefix}-*-of-*.tfrecord"))
    return [records.parse_snippet(r) for f in files for r in tf.data.TFRecordDataset(str(f))]


def _shard_bytes(output_dir):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(output_dir).glob("*.tfrecord"))}


def _run_tool(name, *args, expect_rc=0):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, str(REPO / "tools" / name), *args], capture_output=True,
                            text=True, env=env, timeout=240)
    assert result.returncode == expect_rc, (result.returncode, result.stdout[-2000:], result.stderr[-4000:])
    return result


@pytest.fixture
def kitti_copy(shared_data, tmp_path):
    """A writable copy of ../shared/data/kitti_raw (10 frames, calibration; no velodyne)."""
    root = tmp_path / "kitti_raw"
    src = shared_data / "kitti_raw" / DATE
    (root / DATE).mkdir(parents=True)
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        shutil.copy(src / name, root / DATE / name)
    shutil.copytree(src / DRIVE / "image_02", root / DATE / DRIVE / "image_02")
    for p in (root / DATE / DRIVE / "image_02" / "data").iterdir():
        p.chmod(0o644)
    return root


def _frame(root, i):
    return root / DATE / DRIVE / "image_02" / "data" / f"{i:010d}.png"


# ----------------------------------------------------------------------------- KITTI raw


def test_kitti_raw_real_frames_to_records(shared_data, tmp_path):
    data = shared_data / "kitti_raw"
    split = _write_split(tmp_path / "train_files.txt", range(1, 9))
    items = kitti.raw_snippets(str(data), split)
    assert len(items) == 8
    options = convert.ImageOptions(resize=(128, 416))
    summary = convert.write_sharded(items, convert.encoder(convert.encode_snippet, options=options),
                                    str(tmp_path / "out"), num_shards=3, show_progress=False)
    assert SUMMARY_RE.match(summary.line())
    assert (summary.examples, summary.shards, summary.skipped) == (8, 3, 0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord",
        "train-00002-of-00003.tfrecord", "train.manifest.json"]

    cam_file = data / DATE / "calib_cam_to_cam.txt"
    p = _raw_line(cam_file, "P_rect_02").reshape(3, 4)
    width, height = _raw_line(cam_file, "S_rect_02")
    expected_k = np.array([[p[0, 0] * 416 / width, 0, p[0, 2] * 416 / width],
                           [0, p[1, 1] * 128 / height, p[1, 2] * 128 / height], [0, 0, 1]])
    parsed = _read_records(tmp_path / "out")
    assert sorted(int(r["frame_id"]) for r in parsed) == list(range(1, 9))
    resized = {i: tf.image.resize(np.asarray(Image.open(data / DATE / DRIVE / "image_02" / "data" / f"{i:010d}.png"),
                                             np.float32)[None], (128, 416), antialias=True)[0].numpy()
               for i in range(10)}
    for r in parsed:
        assert r["frames"].shape == (3, 128, 416, 3)
        assert (int(r["height"]), int(r["width"])) == (128, 416)
        assert r["sequence_id"].numpy().decode() == f"{DRIVE}/image_02"
        np.testing.assert_allclose(r["intrinsics"].numpy(), expected_k, rtol=1e-6)
        # Frames are (t-1, t, t+1): each matches a bilinear downscale of the right original.
        t = int(r["frame_id"])
        for j, offset in enumerate((-1, 0, 1)):
            stored = r["frames"][j].numpy().astype(np.float32)
            err = np.abs(stored - resized[t + offset]).mean()
            assert err < 4.0, (t, offset, err)
            assert err < np.abs(stored - resized[t - offset if offset else t + 1]).mean()


def test_kitti_raw_native_size_copies_the_png(shared_data, tmp_path):
    data = shared_data / "kitti_raw"
    split = _write_split(tmp_path / "s.txt", [1, 2])
    items = kitti.raw_snippets(str(data), split)
    convert.write_sharded(items, convert.encoder(convert.encode_snippet, options=convert.ImageOptions()),
                          str(tmp_path / "out"), prefix="native", num_shards=1, show_progress=False)
    raw = next(iter(tf.data.TFRecordDataset(str(tmp_path / "out" / "native-00000-of-00001.tfrecord"))))
    example = tf.train.Example.FromString(raw.numpy())
    stored = example.features.feature[specs.FEATURE_IMAGES].bytes_list.value
    assert [bytes(b) for b in stored] == [(data / DATE / DRIVE / "image_02" / "data" / f"{i:010d}.png").read_bytes()
                                          for i in (0, 1, 2)]
    parsed = records.parse_snippet(raw)
    p = _raw_line(data / DATE / "calib_cam_to_cam.txt", "P_rect_02").reshape(3, 4)
    np.testing.assert_allclose(parsed["intrinsics"].numpy(), p[:, :3], rtol=1e-6)
    assert parsed["frames"].shape == (3, 375, 1242, 3)


def test_kitti_raw_tool_end_to_end_and_resume(shared_data, tmp_path):
    # One shard, two workers: the process pool runs (one worker is spawned per pending
    # shard, and each imports TensorFlow, so the test keeps it to one).
    split = _write_split(tmp_path / "val_files.txt", range(1, 4))
    args = [f"--data_path={shared_data / 'kitti_raw'}", f"--split_file={split}",
            f"--output_dir={tmp_path / 'out'}", "--resize=128x416", "--num_shards=1", "--num_workers=2"]
    first = _run_tool("convert_kitti_raw.py", *args)
    match = SUMMARY_RE.search(first.stdout)
    assert match and match.groups()[:3] == ("3", "1", "0"), first.stdout
    assert [p.name for p in (tmp_path / "out").glob("*.tfrecord")] == ["val-00000-of-00001.tfrecord"]
    assert len(_read_records(tmp_path / "out", "val")) == 3
    again = _run_tool("convert_kitti_raw.py", *args)
    assert SUMMARY_RE.search(again.stdout).groups()[:3] == ("0", "0", "1")
    manifest = json.loads((tmp_path / "out" / "val.manifest.json").read_text())
    assert manifest["complete"] and manifest["total_examples"] == 3


def test_kitti_raw_missing_calibration_and_frames(kitti_copy, tmp_path):
    split = _write_split(tmp_path / "s.txt", [1, 2])
    (kitti_copy / DATE / "calib_cam_to_cam.txt").unlink()
    with pytest.raises(convert.ConversionError,
                       match=r"missing calibration file .*2011_09_26/calib_cam_to_cam\.txt; expected layout"):
        kitti.raw_snippets(str(kitti_copy), split)
    # The tool exits 1 with the same message and writes nothing.
    result = _run_tool("convert_kitti_raw.py", f"--data_path={kitti_copy}", f"--split_file={split}",
                       f"--output_dir={tmp_path / 'out'}", "--num_workers=1", expect_rc=1)
    assert "missing calibration file" in result.stderr and "calib_cam_to_cam.txt" in result.stderr
    assert not list(tmp_path.glob("out/*.tfrecord*"))

    (kitti_copy / DATE / "calib_cam_to_cam.txt").write_text("")
    with pytest.raises(convert.ConversionError, match=r"calib_cam_to_cam\.txt has no 'key: values' lines"):
        kitti.raw_snippets(str(kitti_copy), split)


def test_kitti_raw_missing_neighbour_frame(shared_data, tmp_path):
    split = _write_split(tmp_path / "s.txt", [9])
    with pytest.raises(convert.ConversionError,
                       match=r"missing image .*image_02/data/0000000010\.png; expected layout"):
        kitti.raw_snippets(str(shared_data / "kitti_raw"), split)


def _corrupt(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated PNG


def test_kitti_raw_corrupt_and_wrong_size_images(kitti_copy, tmp_path):
    split = _write_split(tmp_path / "s.txt", [1, 2])
    items = kitti.raw_snippets(str(kitti_copy), split)
    encode = convert.encoder(convert.encode_snippet, options=convert.ImageOptions(resize=(64, 208)))
    _corrupt(_frame(kitti_copy, 2))
    with pytest.raises(convert.ConversionError, match=r"unreadable image .*0000000002\.png"):
        convert.write_sharded(items, encode, str(tmp_path / "a"), num_shards=1, show_progress=False)
    assert not list((tmp_path / "a").glob("*.tfrecord*")), "no shard (nor .tmp) may be left behind"
    _frame(kitti_copy, 2).write_bytes(b"not an image at all")
    with pytest.raises(convert.ConversionError, match=r"unreadable image .*0000000002\.png"):
        convert.write_sharded(items, encode, str(tmp_path / "b"), num_shards=1, show_progress=False)

    shutil.copy(_frame(kitti_copy, 4), _frame(kitti_copy, 2))
    Image.open(_frame(kitti_copy, 3)).resize((1240, 375)).save(_frame(kitti_copy, 3))
    with pytest.raises(convert.ConversionError,
                       match=r"wrong image size .*0000000003\.png: 375x1240 \(HxW\), expected 375x1242"):
        convert.write_sharded(items, encode, str(tmp_path / "c"), num_shards=1, show_progress=False)
    assert not list((tmp_path / "c").glob("*.tfrecord*"))


def test_interrupted_conversion_resumes_to_the_same_shards(kitti_copy, tmp_path):
    split = _write_split(tmp_path / "s.txt", range(1, 9))
    items = kitti.raw_snippets(str(kitti_copy), split)
    encode = convert.encoder(convert.encode_snippet, options=convert.ImageOptions(resize=(64, 208)))
    reference = convert.write_sharded(items, encode, str(tmp_path / "ref"), num_shards=4, show_progress=False)
    assert (reference.examples, reference.shards) == (8, 4)
    expected = _shard_bytes(tmp_path / "ref")

    # Round-robin shards: shard 3 holds targets 4 and 8; frame 9 is only in target 8's snippet.
    good = _frame(kitti_copy, 9).read_bytes()
    _corrupt(_frame(kitti_copy, 9))
    out = tmp_path / "out"
    with pytest.raises(convert.ConversionError, match="0000000009.png"):
        convert.write_sharded(items, encode, str(out), num_shards=4, show_progress=False)
    assert sorted(_shard_bytes(out)) == [f"train-0000{i}-of-00004.tfrecord" for i in range(3)]
    assert not list(out.glob("*.tmp"))
    # A hard kill mid-shard leaves a .tmp behind: it must be ignored and replaced.
    (out / "train-00003-of-00004.tfrecord.tmp").write_bytes(b"half a shard")
    _frame(kitti_copy, 9).write_bytes(good)
    resumed = convert.write_sharded(items, encode, str(out), num_shards=4, show_progress=False)
    assert (resumed.examples, resumed.shards, resumed.skipped, resumed.total_examples) == (2, 1, 3, 8)
    assert _shard_bytes(out) == expected
    assert not list(out.glob("*.tmp"))
    # Resuming with other options into the same directory is refused.
    other = convert.encoder(convert.encode_snippet, options=convert.ImageOptions(resize=(32, 104)))
    with pytest.raises(convert.ConversionError, match="other options"):
        convert.write_sharded(items, other, str(out), num_shards=4, config={"resize": "32x104"},
                              show_progress=False)
    assert records.count_file_records(str(out / "train-00003-of-00004.tfrecord")) == 2


def test_static_filter_drops_repeated_frames(kitti_copy, tmp_path):
    # Make frames 4-6 identical: the snippet of target 5 is static, its neighbours are not.
    for i in (4, 6):
        shutil.copy(_frame(kitti_copy, 5), _frame(kitti_copy, i))
    items = kitti.raw_snippets(str(kitti_copy), _write_split(tmp_path / "s.txt", range(1, 9)))
    encode = convert.encoder(convert.encode_snippet,
                             options=convert.ImageOptions(resize=(64, 208), static_threshold=0.01))
    summary = convert.write_sharded(items, encode, str(tmp_path / "out"), num_shards=2, show_progress=False)
    assert (summary.examples, summary.filtered) == (7, 1)
    assert 5 not in [int(r["frame_id"]) for r in _read_records(tmp_path / "out")]


# ----------------------------------------------------------------------------- Cityscapes


@pytest.fixture
def cityscapes_root(shared_data, tmp_path):
    """Official layout from 4 real frames (JPEG -> PNG, official names) + one camera json."""
    root = tmp_path / "cityscapes"
    frames_dir = root / "leftImg8bit_sequence" / "train" / "aachen"
    frames_dir.mkdir(parents=True)
    src = shared_data / "cityscapes_frames" / "seq0000"
    for i in range(4):
        Image.open(src / f"aachen_000000_{i:06d}_leftImg8bit.jpg").save(
            frames_dir / f"aachen_000000_{i:06d}_leftImg8bit.png", compress_level=1)
    camera_dir = root / "camera" / "train" / "aachen"
    camera_dir.mkdir(parents=True)
    # As in the dataset, only the annotated frame (19) of the sequence has a camera file.
    (camera_dir / "aachen_000000_000019_camera.json").write_text(json.dumps({
        "extrinsic": {"baseline": 0.209313, "pitch": 0.038, "roll": 0.0, "x": 1.7, "y": 0.1, "yaw": -0.0195,
                      "z": 1.22},
        "intrinsic": {"fx": CS_FX, "fy": CS_FY, "u0": CS_U0, "v0": CS_V0}}))
    return root


def test_cityscapes_hood_crop_and_intrinsics(cityscapes_root, tmp_path):
    items = cityscapes.snippets(str(cityscapes_root), ["train"])
    assert [it.frame_id for it in items] == [1, 2]
    encode = convert.encoder(convert.encode_snippet, options=convert.ImageOptions(resize=(128, 416)))
    summary = convert.write_sharded(items, encode, str(tmp_path / "out"), prefix="cs", num_shards=2,
                                    show_progress=False)
    assert summary.examples == 2
    parsed = sorted(_read_records(tmp_path / "out", "cs"), key=lambda r: int(r["frame_id"]))
    expected_k = np.array([[CS_FX * 416 / 2048, 0, CS_U0 * 416 / 2048],
                           [0, CS_FY * 128 / 768, CS_V0 * 128 / 768], [0, 0, 1]])
    frame_dir = cityscapes_root / "leftImg8bit_sequence" / "train" / "aachen"
    for r in parsed:
        assert r["frames"].shape == (3, 128, 416, 3)
        np.testing.assert_allclose(r["intrinsics"].numpy(), expected_k, rtol=1e-6)
        assert r["sequence_id"].numpy().decode() == "train/aachen_000000"
        target = np.asarray(Image.open(frame_dir / f"aachen_000000_{int(r['frame_id']):06d}_leftImg8bit.png"),
                            np.float32)
        assert target.shape == (1024, 2048, 3)
        cropped = tf.image.resize(target[None, :768], (128, 416), antialias=True)[0].numpy()
        uncropped = tf.image.resize(target[None], (128, 416), antialias=True)[0].numpy()
        stored = r["frames"][1].numpy().astype(np.float32)
        err_cropped, err_full = np.abs(stored - cropped).mean(), np.abs(stored - uncropped).mean()
        assert err_cropped < 4.0 and err_cropped * 3 < err_full, (err_cropped, err_full)


def test_cityscapes_native_crop_is_exact(cityscapes_root, tmp_path):
    items = cityscapes.snippets(str(cityscapes_root), ["train"])[:1]
    convert.write_sharded(items, convert.encoder(convert.encode_snippet, options=convert.ImageOptions()),
                          str(tmp_path / "out"), prefix="cs", num_shards=1, show_progress=False)
    (r,) = _read_records(tmp_path / "out", "cs")
    assert r["frames"].shape == (3, 768, 2048, 3)
    np.testing.assert_allclose(r["intrinsics"].numpy(), [[CS_FX, 0, CS_U0], [0, CS_FY, CS_V0], [0, 0, 1]],
                               rtol=1e-6)
    source = np.asarray(Image.open(cityscapes_root / "leftImg8bit_sequence" / "train" / "aachen"
                                   / "aachen_000000_000001_leftImg8bit.png"))
    np.testing.assert_array_equal(r["frames"][1].numpy(), source[:768])


def test_cityscapes_errors(cityscapes_root, tmp_path):
    camera_file = cityscapes_root / "camera" / "train" / "aachen" / "aachen_000000_000019_camera.json"
    camera_file.rename(camera_file.with_suffix(".bak"))
    with pytest.raises(convert.ConversionError,
                       match=r"missing camera file .*camera/train/aachen/aachen_000000_000001_camera\.json"):
        cityscapes.snippets(str(cityscapes_root), ["train"])
    camera_file.with_suffix(".bak").rename(camera_file)
    frame = cityscapes_root / "leftImg8bit_sequence" / "train" / "aachen" / "aachen_000000_000002_leftImg8bit.png"
    Image.new("RGB", (2048, 1000)).save(frame)
    items = cityscapes.snippets(str(cityscapes_root), ["train"])
    with pytest.raises(convert.ConversionError, match=r"wrong image size .*aachen_000000_000002_leftImg8bit\.png: "
                                                       r"1000x2048 \(HxW\), expected 1024x2048"):
        convert.write_sharded(items, convert.encoder(convert.encode_snippet, options=convert.ImageOptions(
            resize=(32, 104))), str(tmp_path / "out"), num_shards=1, show_progress=False)
    with pytest.raises(convert.ConversionError, match=r"missing directory .*leftImg8bit_sequence/val"):
        cityscapes.snippets(str(cityscapes_root), ["val"])


# ----------------------------------------------------------------------------- odometry


def _pose(angle, translation):
    c, s = np.cos(angle), np.sin(angle)
    g = np.eye(4)
    g[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    g[:3, 3] = translation
    return g


def test_kitti_odometry_fixture(tmp_path):
    root = tmp_path / "odom"
    seq = root / "sequences" / "04"
    (seq / "image_2").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 120, 3), dtype=np.uint8)).save(seq / "image_2" / f"{i:06d}.png")
    k = np.array([[70.0, 0, 60.0], [0, 71.0, 20.0], [0, 0, 1]])
    offset = np.array([0.06, 0.0, 0.0])  # cam0 -> cam2
    p2 = np.hstack([k, (k @ offset)[:, None]])
    p0 = np.hstack([k, np.zeros((3, 1))])
    (seq / "calib.txt").write_text("".join(
        f"P{i}: " + " ".join(f"{v:.12e}" for v in (p2 if i == 2 else p0).ravel()) + "\n" for i in range(4)))
    poses = [_pose(0.02 * i, [0.01 * i, 0.0, 0.8 * i]) for i in range(5)]
    (root / "poses").mkdir()
    (root / "poses" / "04.txt").write_text("".join(" ".join(f"{v:.12e}" for v in g[:3].ravel()) + "\n"
                                                   for g in poses))
    items = kitti.odometry_snippets(str(root), ["4"])
    assert [it.frame_id for it in items] == [1, 2, 3]
    encode = convert.encoder(convert.encode_snippet, options=convert.ImageOptions(resize=(20, 60)))
    convert.write_sharded(items, encode, str(tmp_path / "out"), num_shards=2, show_progress=False)
    files = sorted((tmp_path / "out").glob("*.tfrecord"))
    raws = [r for f in files for r in tf.data.TFRecordDataset(str(f))]
    assert len(raws) == 3
    c = np.eye(4)
    c[:3, 3] = offset
    for raw in raws:
        parsed = records.parse_snippet(raw)
        assert parsed["frames"].shape == (3, 20, 60, 3)
        np.testing.assert_allclose(parsed["intrinsics"].numpy(), [[35.0, 0, 30.0], [0, 35.5, 10.0], [0, 0, 1]],
                                   rtol=1e-6)
        assert parsed["sequence_id"].numpy().decode() == "04/image_2"
        t = int(parsed["frame_id"])
        pose = tf.io.parse_single_example(raw, {specs.FEATURE_GT_POSE: tf.io.FixedLenFeature([32], tf.float32)})
        gt = pose[specs.FEATURE_GT_POSE].numpy().reshape(2, 4, 4)
        for j, s in enumerate((t - 1, t + 1)):
            # cam2-to-world = G @ C^-1; T_t->s = (G_s C^-1)^-1 (G_t C^-1).
            expected = np.linalg.inv(poses[s] @ np.linalg.inv(c)) @ poses[t] @ np.linalg.inv(c)
            np.testing.assert_allclose(gt[j], expected, atol=1e-6)
    with pytest.raises(convert.ConversionError, match=r"missing directory .*sequences/05/image_2"):
        kitti.odometry_snippets(str(root), ["05"])
    (seq / "calib.txt").unlink()
    with pytest.raises(convert.ConversionError, match=r"missing calibration file .*sequences/04/calib\.txt"):
        kitti.odometry_snippets(str(root), ["04"])


# ----------------------------------------------------------------------------- KITTI 2015 flow


def _png16(values):
    return tf.io.encode_png(tf.constant(values, tf.uint16)).numpy()


def test_kitti_flow_fixture(tmp_path):
    root = tmp_path / "kitti2015" / "training"
    for d in ("image_2", "flow_occ", "flow_noc"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(2)
    truth = {}
    for pair_id, (h, w) in (("000000", (12, 30)), ("000001", (10, 24))):
        for frame in ("10", "11"):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / "image_2" / f"{pair_id}_{frame}.png")
        flow = np.round(rng.uniform(-40, 40, (h, w, 2)) * 64) / 64
        valid_occ = rng.uniform(size=(h, w)) > 0.3
        valid_noc = valid_occ & (rng.uniform(size=(h, w)) > 0.3)
        for name, valid in (("flow_occ", valid_occ), ("flow_noc", valid_noc)):
            values = np.zeros((h, w, 3), np.uint16)
            values[..., :2] = flow * 64 + 2 ** 15   # KITTI devkit: u = (R - 2^15) / 64
            values[..., 2] = valid
            (root / name / f"{pair_id}_10.png").write_bytes(_png16(values))
        truth[pair_id] = (flow, valid_occ, valid_noc, (h, w))
    pairs = flow_records.flow_pairs(str(tmp_path / "kitti2015"))
    assert [p.pair_id for p in pairs] == ["000000", "000001"]
    summary = convert.write_sharded(pairs, flow_records.encode_flow_pair, str(tmp_path / "out"), prefix="flow",
                                    num_shards=1, show_progress=False)
    assert summary.examples == 2
    parsed = [flow_records.parse_flow_pair(r) for r in
              tf.data.TFRecordDataset(str(tmp_path / "out" / "flow-00000-of-00001.tfrecord"))]
    for r in parsed:
        flow, valid_occ, valid_noc, (h, w) = truth[r["pair_id"].numpy().decode()]
        assert r["frames"].shape == (2, h, w, 3)
        np.testing.assert_array_equal(r["frames"][1].numpy(), np.asarray(
            Image.open(root / "image_2" / f"{r['pair_id'].numpy().decode()}_11.png")))
        np.testing.assert_array_equal(r["flow_occ"].numpy(), flow)
        np.testing.assert_array_equal(r["valid_occ"].numpy()[..., 0], valid_occ)
        np.testing.assert_array_equal(r["valid_noc"].numpy()[..., 0], valid_noc)
        assert not bool(r["has_intrinsics"])
    # numpy codec round trip
    f, v = flow_records.decode_kitti_flow(flow_records.encode_kitti_flow(flow, valid_occ))
    np.testing.assert_array_equal(f, flow)
    np.testing.assert_array_equal(v, valid_occ)

    # Errors: flow of the wrong size; missing flow_noc.
    (root / "flow_occ" / "000001_10.png").write_bytes(_png16(np.zeros((11, 24, 3), np.uint16)))
    with pytest.raises(convert.ConversionError, match=r"wrong image size .*flow_occ/000001_10\.png: 11x24"):
        convert.write_sharded(flow_records.flow_pairs(str(tmp_path / "kitti2015")), flow_records.encode_flow_pair,
                              str(tmp_path / "bad"), num_shards=1, show_progress=False)
    assert not list((tmp_path / "bad").glob("*.tfrecord*"))
    (root / "flow_noc" / "000001_10.png").unlink()
    with pytest.raises(convert.ConversionError, match=r"missing flow_noc ground truth .*flow_noc/000001_10\.png"):
        flow_records.flow_pairs(str(tmp_path / "kitti2015"))


def test_kitti_flow_real_devkit_png(shared_data, tmp_path):
    root = tmp_path / "kitti2015" / "training"
    devkit = shared_data / "kitti_flow_devkit"
    for d in ("image_2", "flow_occ", "flow_noc"):
        (root / d).mkdir(parents=True)
    shutil.copy(devkit / "image.png", root / "image_2" / "000000_10.png")
    shutil.copy(devkit / "image.png", root / "image_2" / "000000_11.png")
    shutil.copy(devkit / "flow_gt.png", root / "flow_occ" / "000000_10.png")
    shutil.copy(devkit / "flow_est.png", root / "flow_noc" / "000000_10.png")
    calib = root / "calib_cam_to_cam"
    calib.mkdir()
    shutil.copy(shared_data / "kitti_raw" / DATE / "calib_cam_to_cam.txt", calib / "000000.txt")
    pairs = flow_records.flow_pairs(str(tmp_path / "kitti2015"))
    (r,) = [flow_records.parse_flow_pair(tf.constant(flow_records.encode_flow_pair(p))) for p in pairs]
    values = tf.io.decode_png((devkit / "flow_gt.png").read_bytes(), dtype=tf.uint16).numpy().astype(np.float64)
    np.testing.assert_array_equal(r["flow_occ"].numpy(), (values[..., :2] - 32768) / 64)
    assert r["flow_occ"].shape == (375, 1242, 2) and 0 < float(tf.reduce_mean(r["valid_occ"])) < 1
    assert bool(r["has_intrinsics"])
    p = _raw_line(shared_data / "kitti_raw" / DATE / "calib_cam_to_cam.txt", "P_rect_02").reshape(3, 4)
    np.testing.assert_allclose(r["intrinsics"].numpy(), p[:, :3], rtol=1e-6)


# ----------------------------------------------------------------------------- tools


@pytest.mark.parametrize("tool", ["convert_kitti_raw.py", "convert_kitti_odometry.py", "convert_kitti_flow.py",
                                  "convert_cityscapes.py", "export_gt_depth.py"])
def test_tools_have_help(tool):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, str(REPO / "tools" / tool), "--help"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode in (0, 1), result.stderr  # absl exits 1 after --help
    assert "--data_path" in result.stdout and "layout" in result.stdout.lower()


def test_parse_size_and_shard_names():
    assert convert.parse_size("128x416") == (128, 416)
    assert convert.parse_size("") is None
    with pytest.raises(ValueError):
        convert.parse_size("416")
    assert records.shard_path("/d", "train", 3, 16) == os.path.join("/d", "train-00003-of-00016.tfrecord")
