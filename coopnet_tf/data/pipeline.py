"""tf.data input pipeline: TFRecord snippets -> augmented, batched training/eval batches.

    files -> (per-worker shard) -> shuffle files -> interleave records -> shuffle records
    -> repeat -> parse + decode -> float [0, 1] -> resize to (height, width), K rescaled
    -> augment (flip; colour jitter, one draw per snippet) -> batch -> prefetch

`make_dataset` is the gin-configurable factory (gin only here, at the edge); the pure ops
live in `augment.py`. Output batches are dicts with the `specs.KEY_*` keys:
`frames` and `frames_aug` float32 [B, 3, H, W, 3] (clean: for the losses; jittered: for
the networks), `intrinsics` [B, 3, 3] at (H, W), `sequence_id` string [B], `frame_id`
int64 [B]; with ground truth also `gt_depth` [B, H, W, 1], `gt_pose` [B, S, 4, 4],
`gt_flow` [B, S, H, W, 2], `gt_moving_mask` [B, S, H, W, 1]; with object motion
`gt_object_motion` [B, S, H, W, 3]; with `max_boxes` = N > 0 the boxes of every frame,
carried through the resize and flip: `boxes` [B, 3, N, 4] (x1, y1, x2, y2 in pixels of the
batch image), `box_mask`, `box_scores` [B, 3, N] float32, `box_classes` [B, 3, N] int32.

Errors: a pattern that matches no file raises FileNotFoundError naming the pattern; a
file that is not a TFRecord file (bad first header) raises ValueError naming it when the
dataset is built; a record whose frames are not PNG/JPEG, whose PNG frames' size is not
the record's height x width, or that lacks ground truth when it is requested, fails
iteration with an InvalidArgumentError naming the file (and the snippet). A record
damaged further inside a file (DataLossError "corrupted record at <offset>" / "truncated
record") or a frame that does not decode ("Invalid PNG data") stops iteration without the
file name: iterate inside `naming_bad_records(pattern)`, which then finds the damaged file
and record index with `records.check_records(pattern)` and re-raises the error with them.
"""
import contextlib
from typing import Dict, Optional

from absl import logging
import gin
import tensorflow as tf

from coopnet_tf import specs
from coopnet_tf.data import augment, records
# The record-file contract lives in records.py; these names stay importable from here.
from coopnet_tf.data.records import (  # noqa: F401
    Patterns, check_file_header, check_records, list_files)

AUTOTUNE = tf.data.AUTOTUNE


# Errors tf.data raises without naming the file: a damaged TFRecord framing
# (DataLossError), a frame that does not decode ("Invalid PNG data", "Invalid JPEG data"),
# frames of different sizes in one record ("Incompatible shapes during merge").
_UNNAMED_DATA_ERRORS = ("PNG", "JPEG", "Incompatible shapes during merge")


@contextlib.contextmanager
def naming_bad_records(file_pattern: Patterns, with_ground_truth: bool = False):
    """Re-raises a tf.data error that does not name its file with the file and record index.

    Wrap the iteration over a `make_dataset` dataset (e.g. a training loop's steps): on a
    DataLossError, or an InvalidArgumentError from decoding a frame, `check_records`
    reads `file_pattern` again to find the damaged record, and the error is re-raised
    (same type) as "<file>: record <i>: <problem> (...)". If every record reads fine the
    original error is re-raised unchanged.
    """
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
        problem = records.tf_error_message(err)
        if not (isinstance(err, tf.errors.DataLossError)
                or any(k in (err.message or "") for k in _UNNAMED_DATA_ERRORS)):
            raise
        logging.error("input pipeline failed (%s); reading %s again to find the damaged record",
                      problem, file_pattern)
        try:
            records.check_records(file_pattern, with_ground_truth)
        except ValueError as located:
            raise type(err)(err.node_def, err.op, f"damaged input data: {located}") from err
        raise


# ----------------------------------------------------------------------------------
# The factory
# ----------------------------------------------------------------------------------

def _drop_size(parsed: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    return {k: v for k, v in parsed.items() if k not in ("height", "width")}


@gin.configurable
def make_dataset(
    file_pattern: Patterns,
    batch_size: int,
    height: int,
    width: int,
    training: bool = True,
    with_ground_truth: bool = False,
    flip_probability: float = 0.5,
    jitter_probability: float = 0.5,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.1,
    shuffle_buffer: int = 256,
    seed: Optional[int] = None,
    deterministic: bool = False,
    input_context: Optional[tf.distribute.InputContext] = None,
    repeat: Optional[int] = None,
    cycle_length: int = 8,
    max_boxes: int = 0,
    with_object_motion: bool = False,
) -> tf.data.Dataset:
    """Batched snippets from TFRecord files (the `records.py` schema).

    Args:
      file_pattern: glob, comma-separated globs, or a list of globs of TFRecord files.
      batch_size: GLOBAL batch size; with `input_context` each pipeline yields
        `input_context.get_per_replica_batch_size(batch_size)`.
      height, width: output resolution; frames, K (and GT) are resized to it.
      training: augment (flip, jitter), shuffle, repeat, drop the last partial batch.
        When False: no augmentation (`frames_aug` = `frames`), file order, one pass,
        partial last batch kept.
      with_ground_truth: also output the GT keys (the records must carry them: the
        synthetic world does, real datasets do not).
      flip_probability: probability of a horizontal flip of the whole snippet.
      jitter_probability: probability of colour jitter (one draw per snippet).
      brightness, contrast, saturation, hue: jitter ranges (torchvision / Monodepth2).
      shuffle_buffer: records in the shuffle buffer (serialised records: a KITTI snippet at
        native size is ~2 MB; a 64x192 synthetic one with GT ~0.35 MB).
      seed: seed of the file/record shuffles and of the augmentation. None: random
        (0 in deterministic mode).
      deterministic: reproducible order and augmentation (tests): parallel map and
        interleave keep their order, shuffles and augmentation seeded.
      input_context: a `tf.distribute.InputContext` (from
        `strategy.distribute_datasets_from_function`): files are sharded by
        `input_pipeline_id` (records, when there are fewer files than pipelines), the
        augmentation seed differs per pipeline.
      repeat: passes over the data. None: forever when training, once otherwise;
        -1: forever; n > 0: n passes.
      cycle_length: files read in parallel (interleave) when training.
      max_boxes: N > 0 adds the box keys, N boxes per frame (the N highest scores of
        the record's, padded; `box_mask` 1 = a real box); records without boxes give an
        all-zero mask. 0: no box keys.
      with_object_motion: also output `gt_object_motion` (synthetic records carry it).

    Returns:
      a `tf.data.Dataset` of dicts with the `specs.KEY_*` keys (see the module docstring).

    Raises:
      FileNotFoundError: no file matches `file_pattern` (the message names it).
      ValueError: a file that is not a TFRecord file (named), or bad arguments.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_boxes < 0:
        raise ValueError(f"max_boxes must be >= 0, got {max_boxes}")
    files = list_files(file_pattern)
    for path in files:
        check_file_header(path)
    if deterministic and seed is None:
        seed = 0
    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    shard_files = num_pipelines > 1 and len(files) >= num_pipelines
    if shard_files:
        files = files[pipeline_id::num_pipelines]

    file_ds = tf.data.Dataset.from_tensor_slices(files)
    if training and len(files) > 1:
        file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def read(path):
        return tf.data.TFRecordDataset(path).map(lambda r: (r, path))

    if training:
        ds = file_ds.interleave(read, cycle_length=min(cycle_length, len(files)),
                                block_length=1, num_parallel_calls=AUTOTUNE,
                                deterministic=deterministic)
    else:  # file order, one file after the other
        ds = file_ds.interleave(read, cycle_length=1, block_length=1)
    if num_pipelines > 1 and not shard_files:
        ds = ds.shard(num_pipelines, pipeline_id)
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat is None:
        repeat = -1 if training else 1
    if repeat < 0:
        ds = ds.repeat()
    elif repeat > 1:
        ds = ds.repeat(repeat)
    elif repeat == 0:
        raise ValueError("repeat must be None, -1 or a positive number of passes")

    augment_seed = None if seed is None else (seed * 1_000_003 + pipeline_id) % (2**63 - 1)
    seeds = tf.data.Dataset.random(seed=augment_seed, rerandomize_each_iteration=True).batch(
        2, drop_remainder=True)
    ds = tf.data.Dataset.zip((ds, seeds))

    def process(element, pair_seed):
        serialized, path = element
        with tf.control_dependencies(_check_record(serialized, path, with_ground_truth,
                                                   with_object_motion, max_boxes > 0)):
            serialized = tf.identity(serialized)
        snippet = _drop_size(records.parse_snippet(serialized, with_ground_truth,
                                                   with_object_motion, max_boxes))
        # uint8 in; resize_snippet converts to float32 in [0, 1] (after shrinking)
        snippet = augment.resize_snippet(snippet, height, width)
        if training:
            snippet = augment.augment_snippet(
                snippet, pair_seed, flip_probability, jitter_probability, brightness,
                contrast, saturation, hue)
        else:
            snippet[specs.KEY_FRAMES_AUG] = snippet[specs.KEY_FRAMES]
        return snippet

    ds = ds.map(process, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)


_CHECK_SPEC = {
    specs.FEATURE_IMAGES: tf.io.FixedLenFeature([specs.NUM_FRAMES], tf.string,
                                                default_value=[""] * specs.NUM_FRAMES),
    specs.FEATURE_HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    specs.FEATURE_WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    specs.FEATURE_SEQUENCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    specs.FEATURE_FRAME_ID: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    specs.FEATURE_GT_DEPTH: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _png_sizes(images: tf.Tensor):
    """(height, width) int64 [F] from the PNG IHDR chunk (big-endian, bytes 16..24).
    Frames shorter than 24 bytes are zero-padded, so that this op never fails before the
    check that names the file (ops without a dependency run in any order)."""
    padded = tf.strings.join([images, b"\0" * 24])
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8, fixed_length=8),
                  tf.int64)
    weights = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64)
    return (tf.reduce_sum(raw[:, 4:] * weights, axis=-1),
            tf.reduce_sum(raw[:, :4] * weights, axis=-1))


_CHECK_BOXES_SPEC = {
    specs.FEATURE_BOX_COUNT: tf.io.VarLenFeature(tf.int64),
    specs.FEATURE_BOX_VALUES: tf.io.VarLenFeature(tf.float32),
}


def _check_record(serialized: tf.Tensor, path: tf.Tensor, with_ground_truth: bool,
                  with_object_motion: bool = False, with_boxes: bool = False):
    """Asserts that fail with the file name: frames not PNG/JPEG, ground truth missing,
    object motion missing, box features inconsistent."""
    spec = dict(_CHECK_SPEC)
    if with_object_motion:
        spec[specs.FEATURE_GT_OBJECT_MOTION] = tf.io.FixedLenFeature([], tf.string,
                                                                     default_value="")
    if with_boxes:
        spec.update(_CHECK_BOXES_SPEC)
    features = tf.io.parse_single_example(serialized, spec)
    magic = tf.strings.substr(features[specs.FEATURE_IMAGES], 0, 4)
    ok = tf.reduce_all(tf.logical_or(tf.equal(magic, b"\x89PNG"),
                                     tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8")))
    checks = [tf.debugging.Assert(
        ok, ["a record's frames are not PNG/JPEG images; file:", path])]
    frame_h, frame_w = _png_sizes(features[specs.FEATURE_IMAGES])
    size_ok = tf.reduce_all(tf.logical_or(
        tf.not_equal(magic, b"\x89PNG"),
        tf.logical_and(tf.equal(frame_h, features[specs.FEATURE_HEIGHT]),
                       tf.equal(frame_w, features[specs.FEATURE_WIDTH]))))
    checks.append(tf.debugging.Assert(
        size_ok, ["a frame size differs from the record height x width; file:", path,
                  "sequence_id:", features[specs.FEATURE_SEQUENCE_ID],
                  "frame_id:", features[specs.FEATURE_FRAME_ID],
                  "record height, width:", features[specs.FEATURE_HEIGHT],
                  features[specs.FEATURE_WIDTH], "frame heights:", frame_h, "widths:", frame_w],
        summarize=specs.NUM_FRAMES))
    if with_ground_truth:
        has_gt = tf.strings.length(features[specs.FEATURE_GT_DEPTH]) > 0
        checks.append(tf.debugging.Assert(
            has_gt, ["with_ground_truth=True but a record has no ground truth (only the "
                     "synthetic world writes it); file:", path]))
    if with_object_motion:
        has_motion = tf.strings.length(features[specs.FEATURE_GT_OBJECT_MOTION]) > 0
        checks.append(tf.debugging.Assert(
            has_motion, ["with_object_motion=True but a record has no gt/object_motion (the "
                         "synthetic world writes it since the box/object-motion schema); file:",
                         path]))
    if with_boxes:
        counts = features[specs.FEATURE_BOX_COUNT].values
        num_values = tf.cast(tf.size(features[specs.FEATURE_BOX_VALUES].values), tf.int64)
        boxes_ok = tf.logical_or(
            tf.logical_and(tf.equal(tf.size(counts), 0), tf.equal(num_values, 0)),
            tf.logical_and(tf.equal(tf.size(counts), specs.NUM_FRAMES),
                           tf.logical_and(tf.reduce_all(counts >= 0), tf.equal(
                               num_values, specs.BOX_FIELDS * tf.reduce_sum(counts)))))
        checks.append(tf.debugging.Assert(
            boxes_ok, [f"a record's {specs.FEATURE_BOX_COUNT} / {specs.FEATURE_BOX_VALUES} "
                       f"disagree ({specs.NUM_FRAMES} counts, {specs.BOX_FIELDS} values per "
                       "box expected); file:", path, "counts:", counts, "values:", num_values]))
    return checks
