"""tf.data input pipeline: TFRecord snippets -> augmented, batched training/eval batches.

    files -> (per-worker shard) -> shuffle files -> interleave records -> shuffle records
    -> repeat -> parse + decode -> float [0, 1] -> resize to (height, width), K rescaled
    -> augment (flip; colour jitter, one draw per snippet) -> batch -> prefetch

`make_dataset` is the gin-configurable factory (gin only here, at the edge); the pure ops
live in `augment.py`. Output batches are dicts with the `specs.KEY_*` keys:
`frames` and `frames_aug` float32 [B, 3, H, W, 3] (clean: for the losses; jittered: for
the networks), `intrinsics` [B, 3, 3] at (H, W), `sequence_id` string [B], `frame_id`
int64 [B]; with ground truth also `gt_depth` [B, H, W, 1], `gt_pose` [B, S, 4, 4],
`gt_flow` [B, S, H, W, 2], `gt_moving_mask` [B, S, H, W, 1].

Errors: a pattern that matches no file raises FileNotFoundError naming the pattern; a
file that is not a TFRecord file (bad first header) raises ValueError naming it when the
dataset is built; a record whose frames are not PNG/JPEG, or that lacks ground truth when
it is requested, fails iteration with an InvalidArgumentError naming the file. A record damaged further inside a file stops iteration with
tf.errors.DataLossError ("corrupted record at <offset>" / "truncated record"), which
tf.data reports without the file name: `records.check_records(pattern)` reads every file and
names the damaged one (and the record index).
"""
from typing import Dict, Optional

import gin
import tensorflow as tf

from coopnet_tf import specs
from coopnet_tf.data import augment, records
# The record-file contract lives in records.py; these names stay importable from here.
from coopnet_tf.data.records import (  # noqa: F401
    Patterns, check_file_header, check_records, list_files)

AUTOTUNE = tf.data.AUTOTUNE


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

    Returns:
      a `tf.data.Dataset` of dicts with the `specs.KEY_*` keys (see the module docstring).

    Raises:
      FileNotFoundError: no file matches `file_pattern` (the message names it).
      ValueError: a file that is not a TFRecord file (named), or bad arguments.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
        with tf.control_dependencies(_check_record(serialized, path, with_ground_truth)):
            serialized = tf.identity(serialized)
        snippet = _drop_size(records.parse_snippet(serialized, with_ground_truth))
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
    specs.FEATURE_GT_DEPTH: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _check_record(serialized: tf.Tensor, path: tf.Tensor, with_ground_truth: bool):
    """Asserts that fail with the file name: frames not PNG/JPEG, ground truth missing."""
    features = tf.io.parse_single_example(serialized, _CHECK_SPEC)
    magic = tf.strings.substr(features[specs.FEATURE_IMAGES], 0, 4)
    ok = tf.reduce_all(tf.logical_or(tf.equal(magic, b"\x89PNG"),
                                     tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8")))
    checks = [tf.debugging.Assert(
        ok, ["a record's frames are not PNG/JPEG images; file:", path])]
    if with_ground_truth:
        has_gt = tf.strings.length(features[specs.FEATURE_GT_DEPTH]) > 0
        checks.append(tf.debugging.Assert(
            has_gt, ["with_ground_truth=True but a record has no ground truth (only the "
                     "synthetic world writes it); file:", path]))
    return checks
