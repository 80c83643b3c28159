"""TFRecord schema of a training snippet (target frame plus its two sources).

One `tf.train.Example` per snippet; keys and layout are defined in `coopnet_tf.specs`.
Real datasets carry images and calibration only; the synthetic world adds exact
ground truth (depth, per-source camera motion, flow and moving-object masks).
"""
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from coopnet_tf import specs


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32).ravel()))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values, np.int64).ravel()))


def serialize_snippet(
    encoded_frames: Sequence[bytes],
    intrinsics: np.ndarray,
    height: int,
    width: int,
    sequence_id: str,
    frame_id: int,
    gt_depth: Optional[np.ndarray] = None,
    gt_pose: Optional[np.ndarray] = None,
    gt_flow: Optional[np.ndarray] = None,
    gt_moving_mask: Optional[np.ndarray] = None,
) -> bytes:
    """Serialises one snippet to a `tf.train.Example` string.

    Args:
      encoded_frames: `specs.NUM_FRAMES` PNG/JPEG byte strings in temporal order.
      intrinsics: [3, 3] K of the stored (encoded) resolution.
      height, width: stored image size; every frame must have it.
      sequence_id: identifies the sequence (e.g. "2011_09_26_drive_0001_sync/image_02").
      frame_id: index of the target frame in its sequence.
      gt_depth: optional [H, W] float target depth in metres (camera z).
      gt_pose: optional [NUM_SOURCES, 4, 4] T_target->source.
      gt_flow: optional [NUM_SOURCES, H, W, 2] flow target->source in pixels.
      gt_moving_mask: optional [NUM_SOURCES, H, W] 1 where the target pixel moves.
    """
    if len(encoded_frames) != specs.NUM_FRAMES:
        raise ValueError(f"a snippet has {specs.NUM_FRAMES} frames, got {len(encoded_frames)}")
    intrinsics = np.asarray(intrinsics, np.float32)
    if intrinsics.shape != (3, 3):
        raise ValueError(f"intrinsics must be [3, 3], got {intrinsics.shape}")
    feature = {
        specs.FEATURE_IMAGES: _bytes(encoded_frames),
        specs.FEATURE_INTRINSICS: _floats(intrinsics),
        specs.FEATURE_HEIGHT: _ints([height]),
        specs.FEATURE_WIDTH: _ints([width]),
        specs.FEATURE_SEQUENCE_ID: _bytes([sequence_id.encode()]),
        specs.FEATURE_FRAME_ID: _ints([frame_id]),
    }
    s = specs.NUM_SOURCES
    if gt_depth is not None:
        feature[specs.FEATURE_GT_DEPTH] = _bytes(
            [_checked(gt_depth, (height, width), np.float32, "gt_depth").tobytes()])
    if gt_pose is not None:
        feature[specs.FEATURE_GT_POSE] = _floats(_checked(gt_pose, (s, 4, 4), np.float32, "gt_pose"))
    if gt_flow is not None:
        feature[specs.FEATURE_GT_FLOW] = _bytes(
            [_checked(gt_flow, (s, height, width, 2), np.float32, "gt_flow").tobytes()])
    if gt_moving_mask is not None:
        feature[specs.FEATURE_GT_MOVING] = _bytes(
            [_checked(gt_moving_mask, (s, height, width), np.uint8, "gt_moving_mask").tobytes()])
    # deterministic: map entries in key order, so that the bytes do not depend on the process
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def _checked(array, shape, dtype, name) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {array.shape}")
    return np.ascontiguousarray(array.astype(dtype))


_FEATURES = {
    specs.FEATURE_IMAGES: tf.io.FixedLenFeature([specs.NUM_FRAMES], tf.string),
    specs.FEATURE_INTRINSICS: tf.io.FixedLenFeature([9], tf.float32),
    specs.FEATURE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    specs.FEATURE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    specs.FEATURE_SEQUENCE_ID: tf.io.FixedLenFeature([], tf.string),
    specs.FEATURE_FRAME_ID: tf.io.FixedLenFeature([], tf.int64),
    specs.FEATURE_GT_DEPTH: tf.io.FixedLenFeature([], tf.string, default_value=""),
    specs.FEATURE_GT_POSE: tf.io.FixedLenFeature(
        [specs.NUM_SOURCES * 16], tf.float32, default_value=[0.0] * (specs.NUM_SOURCES * 16)),
    specs.FEATURE_GT_FLOW: tf.io.FixedLenFeature([], tf.string, default_value=""),
    specs.FEATURE_GT_MOVING: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def parse_snippet(serialized: tf.Tensor, with_ground_truth: bool = False) -> Dict[str, tf.Tensor]:
    """Parses and decodes one serialised snippet.

    Args:
      serialized: scalar string tensor.
      with_ground_truth: also decode the ground-truth fields (the records must have
        them: the synthetic world writes them, real datasets do not).

    Returns:
      dict with `frames` uint8 [3, H, W, 3], `intrinsics` float32 [3, 3], `height`,
      `width` (int32 scalars), `sequence_id`, `frame_id`; with ground truth also
      `gt_depth` [H, W, 1], `gt_pose` [S, 4, 4], `gt_flow` [S, H, W, 2],
      `gt_moving_mask` float32 [S, H, W, 1].
    """
    example = tf.io.parse_single_example(serialized, _FEATURES)
    height = tf.cast(example[specs.FEATURE_HEIGHT], tf.int32)
    width = tf.cast(example[specs.FEATURE_WIDTH], tf.int32)
    frames = tf.map_fn(
        lambda data: tf.ensure_shape(tf.io.decode_image(data, channels=3, expand_animations=False),
                                     [None, None, 3]),
        example[specs.FEATURE_IMAGES],
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )
    tf.debugging.assert_equal(
        tf.shape(frames)[1:3], tf.stack([height, width]),
        message="decoded frame size differs from the record's height/width")
    parsed = {
        specs.KEY_FRAMES: frames,
        specs.KEY_INTRINSICS: tf.reshape(example[specs.FEATURE_INTRINSICS], [3, 3]),
        "height": height,
        "width": width,
        specs.KEY_SEQUENCE_ID: example[specs.FEATURE_SEQUENCE_ID],
        specs.KEY_FRAME_ID: example[specs.FEATURE_FRAME_ID],
    }
    if with_ground_truth:
        s = specs.NUM_SOURCES
        parsed[specs.KEY_GT_DEPTH] = tf.reshape(
            tf.io.decode_raw(example[specs.FEATURE_GT_DEPTH], tf.float32), [height, width, 1])
        parsed[specs.KEY_GT_POSE] = tf.reshape(example[specs.FEATURE_GT_POSE], [s, 4, 4])
        parsed[specs.KEY_GT_FLOW] = tf.reshape(
            tf.io.decode_raw(example[specs.FEATURE_GT_FLOW], tf.float32), [s, height, width, 2])
        parsed[specs.KEY_GT_MOVING] = tf.cast(tf.reshape(
            tf.io.decode_raw(example[specs.FEATURE_GT_MOVING], tf.uint8), [s, height, width, 1]),
            tf.float32)
    return parsed
