"""TFRecord schema of a KITTI 2015 optical-flow evaluation pair, and its converter pieces.

One `tf.train.Example` per pair `<id>_10.png -> <id>_11.png` (docs/decisions.md E4):

| feature | type | content |
|---|---|---|
| `images` | bytes[2] | encoded frames, first `_10` then `_11` (original PNG bytes) |
| `height`, `width` | int64 | native size (it varies across pairs, ~375x1242) |
| `pair_id` | bytes | "000000" … "000199" |
| `flow_occ` | bytes | the original 16-bit KITTI flow PNG of flow_occ (all valid pixels) |
| `flow_noc` | bytes | the same for flow_noc (non-occluded pixels) |
| `intrinsics` | float[9] | K = P_rect_02[:, :3] when calib_cam_to_cam/<id>.txt is given, else zeros |
| `has_intrinsics` | int64 | 1 when `intrinsics` is real |

Images and flow are stored at the native size: the evaluation resizes predictions to the
ground truth (u scaled by W_gt/W_pred, v by H_gt/H_pred). The flow PNGs are kept as they
are (lossless): u = (R − 2^15)/64, v = (G − 2^15)/64, valid = B > 0.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from coopnet_tf.data.convert import ConversionError, load_rgb

LAYOUT = ("ROOT/training/image_2/<id>_10.png and <id>_11.png, ROOT/training/flow_occ/<id>_10.png, "
          "ROOT/training/flow_noc/<id>_10.png (KITTI 2015 data_scene_flow, unzipped as downloaded); "
          "optional ROOT/training/calib_cam_to_cam/<id>.txt (data_scene_flow_calib)")

FEATURE_IMAGES = "images"
FEATURE_HEIGHT = "height"
FEATURE_WIDTH = "width"
FEATURE_PAIR_ID = "pair_id"
FEATURE_FLOW_OCC = "flow_occ"
FEATURE_FLOW_NOC = "flow_noc"
FEATURE_INTRINSICS = "intrinsics"
FEATURE_HAS_INTRINSICS = "has_intrinsics"


def decode_kitti_flow(rgb16: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """KITTI flow PNG values [H, W, 3] uint16 (R, G, B) -> (flow [H, W, 2] float32, valid [H, W] bool)."""
    rgb16 = np.asarray(rgb16).astype(np.float32)
    flow = (rgb16[..., :2] - 2.0 ** 15) / 64.0
    return flow, rgb16[..., 2] > 0


def encode_kitti_flow(flow: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Inverse of `decode_kitti_flow`: [H, W, 3] uint16 values to write as a 16-bit PNG."""
    values = np.clip(np.round(np.asarray(flow, np.float64) * 64.0 + 2.0 ** 15), 0, 2 ** 16 - 1)
    out = np.zeros(values.shape[:2] + (3,), np.uint16)
    out[..., :2] = values.astype(np.uint16)
    out[..., 2] = np.asarray(valid, bool).astype(np.uint16)
    return out


@dataclasses.dataclass(frozen=True)
class FlowPairSource:
    """Files of one evaluation pair (picklable)."""

    image_paths: Tuple[str, str]
    flow_occ_path: str
    flow_noc_path: str
    pair_id: str
    intrinsics: Optional[Tuple[float, ...]] = None


def flow_pairs(data_path: str, split: str = "training", calib_dir: Optional[str] = None) -> List[FlowPairSource]:
    """The KITTI 2015 pairs of `split` (only "training" has ground truth), sorted by id.

    Args:
      data_path: the data_scene_flow root (see LAYOUT).
      split: "training".
      calib_dir: directory of <id>.txt cam_to_cam calibrations; default
        ROOT/<split>/calib_cam_to_cam when it exists, else no intrinsics.

    Raises:
      ConversionError: missing image_2 directory, second frame or flow file.
    """
    from coopnet_tf.data import kitti

    image_dir = os.path.join(data_path, split, "image_2")
    if not os.path.isdir(image_dir):
        raise ConversionError(f"missing directory {image_dir}; expected layout: {LAYOUT}")
    if calib_dir is None:
        default = os.path.join(data_path, split, "calib_cam_to_cam")
        calib_dir = default if os.path.isdir(default) else None
    ids = sorted(name[:-len("_10.png")] for name in os.listdir(image_dir) if name.endswith("_10.png"))
    if not ids:
        raise ConversionError(f"no <id>_10.png frames in {image_dir}; expected layout: {LAYOUT}")
    pairs = []
    for pair_id in ids:
        paths = (os.path.join(image_dir, f"{pair_id}_10.png"), os.path.join(image_dir, f"{pair_id}_11.png"))
        occ = os.path.join(data_path, split, "flow_occ", f"{pair_id}_10.png")
        noc = os.path.join(data_path, split, "flow_noc", f"{pair_id}_10.png")
        for path, what in ((paths[1], "second frame"), (occ, "flow_occ ground truth"),
                           (noc, "flow_noc ground truth")):
            if not os.path.isfile(path):
                raise ConversionError(f"missing {what} {path}; expected layout: {LAYOUT}")
        k = None
        if calib_dir:
            calib_path = os.path.join(calib_dir, f"{pair_id}.txt")
            p_rect = kitti.read_calib_file(calib_path, LAYOUT).get("P_rect_02")
            if not isinstance(p_rect, np.ndarray) or p_rect.size != 12:
                raise ConversionError(f"calibration file {calib_path} lacks 'P_rect_02' (12 numbers)")
            k = tuple(float(v) for v in p_rect.reshape(3, 4)[:, :3].ravel())
        pairs.append(FlowPairSource(paths, occ, noc, pair_id, k))
    return pairs


def _decode_flow_png(path: str) -> np.ndarray:
    import tensorflow as tf  # lazy

    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 26 or data[24] != 16:
        raise ConversionError(f"unreadable flow PNG {path}: expected a 16-bit PNG (KITTI flow format)")
    try:
        values = tf.io.decode_png(data, channels=3, dtype=tf.uint16).numpy()
    except Exception as err:  # tf raises InvalidArgumentError and friends
        reason = str(err).splitlines()[0] if str(err) else repr(err)
        raise ConversionError(f"unreadable flow PNG {path}: {reason}") from err
    return values


def encode_flow_pair(source: FlowPairSource) -> bytes:
    """Serialised evaluation record of one pair (checks decodability and sizes)."""
    import tensorflow as tf  # lazy

    images = [load_rgb(p, LAYOUT) for p in source.image_paths]
    size = (images[0].height, images[0].width)
    flows = {p: _decode_flow_png(p) for p in (source.flow_occ_path, source.flow_noc_path)}
    for path, shape in [(source.image_paths[1], (images[1].height, images[1].width))] + [
            (p, v.shape[:2]) for p, v in flows.items()]:
        if tuple(shape) != size:
            raise ConversionError(f"wrong image size {path}: {shape[0]}x{shape[1]} (HxW), expected "
                                  f"{size[0]}x{size[1]} as {source.image_paths[0]}")
    encoded = []
    for path in source.image_paths:
        with open(path, "rb") as f:
            encoded.append(f.read())
    with open(source.flow_occ_path, "rb") as f:
        occ = f.read()
    with open(source.flow_noc_path, "rb") as f:
        noc = f.read()
    k = source.intrinsics if source.intrinsics is not None else (0.0,) * 9

    def _bytes(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    def _ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    feature = {
        FEATURE_IMAGES: _bytes(encoded),
        FEATURE_HEIGHT: _ints([size[0]]),
        FEATURE_WIDTH: _ints([size[1]]),
        FEATURE_PAIR_ID: _bytes([source.pair_id.encode()]),
        FEATURE_FLOW_OCC: _bytes([occ]),
        FEATURE_FLOW_NOC: _bytes([noc]),
        FEATURE_INTRINSICS: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in k])),
        FEATURE_HAS_INTRINSICS: _ints([int(source.intrinsics is not None)]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_flow_pair(serialized) -> Dict:
    """Parses one pair record.

    Returns:
      dict: `frames` uint8 [2, H, W, 3]; `flow_occ`, `flow_noc` float32 [H, W, 2] (px,
      channel 0 = u = x); `valid_occ`, `valid_noc` float32 [H, W, 1] in {0, 1};
      `intrinsics` float32 [3, 3]; `has_intrinsics` bool; `height`, `width` int32;
      `pair_id` string.
    """
    import tensorflow as tf  # lazy

    features = {
        FEATURE_IMAGES: tf.io.FixedLenFeature([2], tf.string),
        FEATURE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        FEATURE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        FEATURE_PAIR_ID: tf.io.FixedLenFeature([], tf.string),
        FEATURE_FLOW_OCC: tf.io.FixedLenFeature([], tf.string),
        FEATURE_FLOW_NOC: tf.io.FixedLenFeature([], tf.string),
        FEATURE_INTRINSICS: tf.io.FixedLenFeature([9], tf.float32),
        FEATURE_HAS_INTRINSICS: tf.io.FixedLenFeature([], tf.int64),
    }
    example = tf.io.parse_single_example(serialized, features)
    frames = tf.stack([tf.io.decode_png(example[FEATURE_IMAGES][i], channels=3) for i in range(2)])
    out = {
        "frames": frames,
        "height": tf.cast(example[FEATURE_HEIGHT], tf.int32),
        "width": tf.cast(example[FEATURE_WIDTH], tf.int32),
        "pair_id": example[FEATURE_PAIR_ID],
        "intrinsics": tf.reshape(example[FEATURE_INTRINSICS], [3, 3]),
        "has_intrinsics": tf.cast(example[FEATURE_HAS_INTRINSICS], tf.bool),
    }
    for name, key in (("occ", FEATURE_FLOW_OCC), ("noc", FEATURE_FLOW_NOC)):
        values = tf.cast(tf.io.decode_png(example[key], channels=3, dtype=tf.uint16), tf.float32)
        out[f"flow_{name}"] = (values[..., :2] - 2.0 ** 15) / 64.0
        out[f"valid_{name}"] = tf.cast(values[..., 2:3] > 0, tf.float32)
    return out
