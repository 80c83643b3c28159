"""The record-file contract: one place that knows how snippets are stored on disk.

* Schema: one `tf.train.Example` per snippet (target frame plus its two sources); keys
  and layout are defined in `coopnet_tf.specs` (`serialize_snippet` / `parse_snippet`).
  Real datasets carry images and calibration only; the synthetic world adds exact
  ground truth (depth, per-source camera motion, flow, moving-object masks and residual
  object motion). Any record may carry 2-D object boxes per frame (variable length,
  `data/boxes.py`); records without them stay valid.
* Files: ``<dir>/<split>-SSSSS-of-NNNNN.tfrecord`` (`shard_name`, `shard_path`,
  `file_pattern`), written atomically by `atomic_writers` (the converters' and the
  synthetic world's one writer); `list_files` expands patterns, `count_records` counts
  from the framing, `has_ground_truth` looks at the first record, `check_file_header`
  (12 bytes, CRC) and `check_records` (every record) name a damaged file.

This module imports TensorFlow: the converters and the synthetic world's renderer import
it inside the functions that write, so that they stay TensorFlow-free until then.
"""
import contextlib
import os
import re
import struct
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from coopnet_tf import specs

SHARD_SUFFIX = ".tfrecord"
TMP_SUFFIX = ".tmp"
Patterns = Union[str, Sequence[str]]


# ------------------------------------------------------------------------ file names ----

def shard_name(prefix: str, index: int, num_shards: int) -> str:
    """``<prefix>-00003-of-00016.tfrecord``."""
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def shard_path(output_dir: str, prefix: str, index: int, num_shards: int) -> str:
    """``<output_dir>/<prefix>-00003-of-00016.tfrecord``."""
    return os.path.join(output_dir, shard_name(prefix, index, num_shards))


def file_pattern(data_dir, split: str) -> str:
    """Glob of the record files of a split written by our converters / the synthetic world."""
    return os.path.join(os.fspath(data_dir), f"{split}-*{SHARD_SUFFIX}")


@contextlib.contextmanager
def atomic_writers(paths: Sequence[str]) -> Iterator[List]:
    """`tf.io.TFRecordWriter`s on ``<path>.tmp``, moved onto ``paths`` (`os.replace`) when
    the block ends normally; on an exception every temporary is removed and no path appears.
    A file under its final name is therefore always complete."""
    tmps = [p + TMP_SUFFIX for p in paths]
    writers = []
    try:
        writers = [tf.io.TFRecordWriter(t) for t in tmps]
        yield writers
    except BaseException:
        for writer, tmp in zip(writers, tmps):
            writer.close()
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    for writer in writers:
        writer.close()
    for tmp, path in zip(tmps, paths):
        os.replace(tmp, path)


# ------------------------------------------------------------------------ files ----

def list_files(file_pattern: Patterns) -> List[str]:
    """Sorted files matching a glob, a comma-separated list of globs, or a list of globs.

    Raises:
      FileNotFoundError: naming the pattern(s) when nothing matches.
    """
    patterns = ([p for p in file_pattern.split(",") if p] if isinstance(file_pattern, str)
                else [os.fspath(p) for p in file_pattern])
    if not patterns:
        raise FileNotFoundError(f"empty file pattern {file_pattern!r}")
    files = []
    for pattern in patterns:
        matched = tf.io.gfile.glob(os.path.expanduser(pattern))
        if not matched:
            raise FileNotFoundError(
                f"no TFRecord files match the pattern {pattern!r}"
                + (f" (of {file_pattern!r})" if len(patterns) > 1 else ""))
        files.extend(matched)
    return sorted(set(files))


def _crc32c_table():
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def check_file_header(path: str) -> None:
    """Cheap check (12 bytes) that `path` starts like a TFRecord file.

    Raises:
      ValueError: naming the file when its first record header is invalid or truncated.
    """
    size = tf.io.gfile.stat(path).length
    if size == 0:
        return  # an empty TFRecord file is valid (no records)
    with tf.io.gfile.GFile(path, "rb") as f:
        header = f.read(12)
    if len(header) < 12:
        raise ValueError(f"{path}: truncated TFRecord file ({size} bytes)")
    (length,) = struct.unpack("<Q", header[:8])
    (crc,) = struct.unpack("<I", header[8:])
    if crc != _masked_crc32c(header[:8]):
        raise ValueError(f"{path}: not a TFRecord file (bad record header at offset 0); "
                         "was it written with tf.io.TFRecordWriter, uncompressed?")
    if 12 + length + 4 > size:
        raise ValueError(f"{path}: truncated TFRecord file (first record of {length} bytes, "
                         f"file of {size} bytes)")


def check_records(file_pattern: Patterns, with_ground_truth: bool = False) -> Dict[str, int]:
    """Reads and parses every record of every file; names the first damaged one.

    Use it when iteration stops with a DataLossError / InvalidArgumentError that does not
    say which file is at fault (tf.data does not).

    Returns:
      {file: number of records}.

    Raises:
      ValueError: "<file>: record <i>: <TensorFlow's message>".
    """
    counts = {}
    for path in list_files(file_pattern):
        check_file_header(path)
        count = 0
        # In order, one record at a time: `count` is the index of the failing record.
        ds = tf.data.TFRecordDataset(path).map(
            lambda r: parse_snippet(r, with_ground_truth=with_ground_truth))
        try:
            for _ in ds:
                count += 1
        except (tf.errors.OpError, ValueError) as e:
            raise ValueError(f"{path}: record {count}: {tf_error_message(e)}") from e
        counts[path] = count
    return counts


def tf_error_message(error: Exception) -> str:
    """The informative line of a TensorFlow error, without `{{function_node ...}}`,
    `[Op:...]`, "Graph execution error:" and node-location lines."""
    for line in (getattr(error, "message", None) or str(error)).strip().splitlines():
        line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line.strip())
        line = re.sub(r"^Error in user-defined function passed to .* with iterator: [\w:]+: ", "",
                      line)
        line = re.sub(r"\s*\[Op:[^\]]*\].*$", "", line).strip()
        if line and not line.startswith(("Graph execution error", "Detected at node",
                                          "<stack traces", "[[")):
            return line
    return ""


def _open_binary(path: str):
    if "://" in path:
            return tf.io.gfile.GFile(path, "rb"), tf.io.gfile.stat(path).length
    return open(path, "rb"), os.path.getsize(path)


def count_file_records(path: str, at_most: Optional[int] = None) -> int:
    """Records in one TFRecord file, from its framing (no parsing, no CRC check); with
    ``at_most``, counting stops once that many are found.

    Raises:
      ValueError: "truncated TFRecord file <path>".
    """
    count = position = 0
    size = tf.io.gfile.stat(path).length
    with tf.io.gfile.GFile(path, "rb") as f:
        while position < size:
            f.seek(position)
            header = f.read(8)
            if len(header) < 8:
                raise ValueError(f"truncated TFRecord file {path}")
            (length,) = struct.unpack("<Q", header)
            position += 8 + 4 + length + 4
            count += 1
            if at_most is not None and count >= at_most:
                return count
    if position != size:
        raise ValueError(f"truncated TFRecord file {path}")
    return count


def count_records(file_pattern: Patterns, at_most: Optional[int] = None) -> int:
    """Number of snippets in the files of ``file_pattern`` (framing only, fast); with
    ``at_most``, counting stops once that many are found."""
    total = 0
    for path in list_files(file_pattern):
        total += count_file_records(path, None if at_most is None else at_most - total)
        if at_most is not None and total >= at_most:
            break
    return total


def has_ground_truth(file_pattern: Patterns) -> bool:
    """True when the first record carries a ground-truth depth map (the synthetic world)."""
    files = list_files(file_pattern)
    for raw in tf.data.TFRecordDataset(files[:1]).take(1):
        example = tf.train.Example.FromString(raw.numpy())
        return specs.FEATURE_GT_DEPTH in example.features.feature
    return False


# ------------------------------------------------------------------------ schema ----

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
    gt_object_motion: Optional[np.ndarray] = None,
    boxes: Optional[Sequence[np.ndarray]] = None,
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
      gt_object_motion: optional [NUM_SOURCES, H, W, 3] residual object motion r (m,
        target camera): X_s = R (X_t + r) + t with (R, t) = gt_pose; 0 on static pixels.
      boxes: optional NUM_FRAMES arrays [n_i, 6] (x1, y1, x2, y2, score, class) in pixels
        of the stored image (`data/boxes.py`); n_i may be 0. None writes no box features.
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
    if gt_object_motion is not None:
        feature[specs.FEATURE_GT_OBJECT_MOTION] = _bytes([_checked(
            gt_object_motion, (s, height, width, 3), np.float32, "gt_object_motion").tobytes()])
    if boxes is not None:
        counts, values = _box_features(boxes)
        feature[specs.FEATURE_BOX_COUNT] = _ints(counts)
        feature[specs.FEATURE_BOX_VALUES] = _floats(values)
    # deterministic: map entries in key order, so that the bytes do not depend on the process
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def _box_features(boxes: Sequence[np.ndarray]):
    """(counts [NUM_FRAMES], values [6 * total]) of per-frame box arrays, checked."""
    if len(boxes) != specs.NUM_FRAMES:
        raise ValueError(f"boxes must hold {specs.NUM_FRAMES} per-frame arrays, got {len(boxes)}")
    arrays = []
    for i, frame_boxes in enumerate(boxes):
        array = np.asarray(frame_boxes, np.float32)
        if array.size == 0:
            array = array.reshape(0, specs.BOX_FIELDS)
        if array.ndim != 2 or array.shape[1] != specs.BOX_FIELDS:
            raise ValueError(f"boxes of frame {i} must be [n, {specs.BOX_FIELDS}] (x1, y1, x2, "
                             f"y2, score, class), got shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"boxes of frame {i} have non-finite values")
        if np.any(array[:, 2] < array[:, 0]) or np.any(array[:, 3] < array[:, 1]):
            raise ValueError(f"boxes of frame {i}: x2 < x1 or y2 < y1")
        arrays.append(array)
    return [len(a) for a in arrays], np.concatenate(arrays, 0)


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
_OBJECT_MOTION_FEATURE = {
    specs.FEATURE_GT_OBJECT_MOTION: tf.io.FixedLenFeature([], tf.string, default_value=""),
}
_BOX_FEATURES = {
    specs.FEATURE_BOX_COUNT: tf.io.VarLenFeature(tf.int64),
    specs.FEATURE_BOX_VALUES: tf.io.VarLenFeature(tf.float32),
}


def padded_boxes(counts: tf.Tensor, values: tf.Tensor, max_boxes: int) -> Dict[str, tf.Tensor]:
    """The per-frame boxes of a record, each frame's `max_boxes` highest scores, padded.

    Args:
      counts: int64 [NUM_FRAMES] boxes per frame, or [0] (a record without boxes).
      values: float32 [6 * sum(counts)] rows (x1, y1, x2, y2, score, class).
      max_boxes: N > 0.

    Returns:
      dict `boxes` [F, N, 4], `box_mask` [F, N], `box_scores` [F, N] float32,
      `box_classes` [F, N] int32: ties in score keep file order; padding rows are 0 with
      class -1.
    """
    f, n = specs.NUM_FRAMES, max_boxes
    counts = tf.cond(tf.size(counts) > 0, lambda: counts,
                     lambda: tf.zeros([f], tf.int64))
    checks = [
        tf.debugging.assert_equal(tf.size(counts), f, message=f"{specs.FEATURE_BOX_COUNT} must "
                                  f"hold {f} per-frame counts"),
        tf.debugging.assert_non_negative(counts, message=f"negative {specs.FEATURE_BOX_COUNT}"),
        tf.debugging.assert_equal(
            tf.cast(tf.size(values), tf.int64), specs.BOX_FIELDS * tf.reduce_sum(counts),
            message=f"{specs.FEATURE_BOX_VALUES} must hold {specs.BOX_FIELDS} values per box "
                    f"counted in {specs.FEATURE_BOX_COUNT}"),
    ]
    with tf.control_dependencies(checks):
        rows = tf.reshape(values, [-1, specs.BOX_FIELDS])
    dense = tf.RaggedTensor.from_row_lengths(rows, counts).to_tensor(
        default_value=0.0, shape=[f, None, specs.BOX_FIELDS])
    dense = tf.concat([dense, tf.zeros([f, n, specs.BOX_FIELDS])], axis=1)  # at least n columns
    valid = tf.sequence_mask(counts, tf.shape(dense)[1])
    order = tf.argsort(tf.where(valid, -dense[..., 4], 2.0), axis=1, stable=True)[:, :n]
    top = tf.gather(dense, order, batch_dims=1)                       # [F, N, 6]
    mask = tf.gather(valid, order, batch_dims=1)
    top = tf.where(mask[..., None], top, 0.0)
    return {
        specs.KEY_BOXES: tf.ensure_shape(top[..., :4], [f, n, 4]),
        specs.KEY_BOX_MASK: tf.ensure_shape(tf.cast(mask, tf.float32), [f, n]),
        specs.KEY_BOX_SCORES: tf.ensure_shape(top[..., 4], [f, n]),
        specs.KEY_BOX_CLASSES: tf.ensure_shape(
            tf.where(mask, tf.cast(tf.round(top[..., 5]), tf.int32), -1), [f, n]),
    }


def parse_snippet(serialized: tf.Tensor, with_ground_truth: bool = False,
                  with_object_motion: bool = False, max_boxes: int = 0) -> Dict[str, tf.Tensor]:
    """Parses and decodes one serialised snippet.

    Args:
      serialized: scalar string tensor.
      with_ground_truth: also decode the ground-truth fields (the records must have
        them: the synthetic world writes them, real datasets do not).
      with_object_motion: also decode `gt/object_motion` (synthetic records written since
        the feature exists carry it).
      max_boxes: N > 0 adds the box keys (`padded_boxes`); a record without boxes gets an
        all-zero `box_mask`.

    Returns:
      dict with `frames` uint8 [3, H, W, 3], `intrinsics` float32 [3, 3], `height`,
      `width` (int32 scalars), `sequence_id`, `frame_id`; with ground truth also
      `gt_depth` [H, W, 1], `gt_pose` [S, 4, 4], `gt_flow` [S, H, W, 2],
      `gt_moving_mask` float32 [S, H, W, 1]; with object motion `gt_object_motion`
      [S, H, W, 3]; with boxes `boxes` [3, N, 4], `box_mask`, `box_scores` [3, N],
      `box_classes` int32 [3, N] (box coordinates in pixels of the stored image).
    """
    spec = dict(_FEATURES)
    if with_object_motion:
        spec.update(_OBJECT_MOTION_FEATURE)
    if max_boxes > 0:
        spec.update(_BOX_FEATURES)
    example = tf.io.parse_single_example(serialized, spec)
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
    if with_object_motion:
        parsed[specs.KEY_GT_OBJECT_MOTION] = tf.reshape(
            tf.io.decode_raw(example[specs.FEATURE_GT_OBJECT_MOTION], tf.float32),
            [specs.NUM_SOURCES, height, width, 3])
    if max_boxes > 0:
        parsed.update(padded_boxes(example[specs.FEATURE_BOX_COUNT].values,
                                   example[specs.FEATURE_BOX_VALUES].values, max_boxes))
    return parsed
