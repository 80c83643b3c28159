"""Damaged training records are named (file and record index) instead of surfacing as
bare tf.data errors (issue 14, defect 6): a frame that does not decode, a frame of another
size than the record's, a truncated file."""
import numpy as np
import pytest
import tensorflow as tf

from coopnet_tf.data import pipeline, records

H, W = 8, 12


def _png(height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return tf.io.encode_png(pixels).numpy()


def _write(path, frame_lists):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for frames in frame_lists:
            writer.write(records.serialize_snippet(frames, np.eye(3), H, W, "seq", 7))
    return str(path)


def _good():
    return [_png(H, W, s) for s in range(3)]


def _consume_in_function(path, steps=5):
    """Iterates as the training loop does: `next(iterator)` inside a tf.function."""
    ds = pipeline.make_dataset(path, batch_size=1, height=H, width=W, training=False)
    iterator = iter(ds)

    @tf.function
    def run(it, n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            total += tf.reduce_sum(next(it)["frames"])
        return total

    return run(iterator, tf.constant(steps))


def test_frame_of_another_size_is_named_with_its_snippet(tmp_path):
    path = _write(tmp_path / "size.tfrecord", [_good(), [_png(H, W), _png(H + 2, W), _png(H, W)]])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"(?s)frame size differs from the record height x width; file:.*"
                             r"size\.tfrecord.*seq.*7.*frame heights:\] \[8 10 8\]"):
        list(pipeline.make_dataset(path, batch_size=1, height=H, width=W, training=False))


def test_undecodable_frame_is_located(tmp_path):
    broken = bytearray(_good()[1])
    broken[40:60] = bytes(20)  # header intact, image data destroyed
    path = _write(tmp_path / "corrupt.tfrecord", [_good(), _good(), [_png(H, W), bytes(broken), _png(H, W)]])
    with pytest.raises(tf.errors.InvalidArgumentError) as bare:
        _consume_in_function(path)
    assert "corrupt.tfrecord" not in bare.value.message  # what tf.data says by itself
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"damaged input data: .*corrupt\.tfrecord: record 2: Invalid PNG"):
        with pipeline.naming_bad_records(path):
            _consume_in_function(path)


def test_truncated_file_is_located(tmp_path):
    whole = _write(tmp_path / "whole.tfrecord", [_good()] * 3)
    data = open(whole, "rb").read()
    truncated = tmp_path / "truncated.tfrecord"
    truncated.write_bytes(data[:-30])
    pattern = f"{whole},{truncated}"
    with pytest.raises(tf.errors.DataLossError,
                       match=r"damaged input data: .*truncated\.tfrecord: record 2: truncated record"):
        with pipeline.naming_bad_records(pattern):
            _consume_in_function(str(truncated))


def test_other_errors_pass_through_unchanged(tmp_path):
    path = _write(tmp_path / "fine.tfrecord", [_good()])
    error = tf.errors.InvalidArgumentError(None, None, "Incompatible shapes: [2] vs. [3]")
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        with pipeline.naming_bad_records(path):
            raise error
    assert raised.value is error
    # a data error whose records all read fine (nothing to locate): re-raised as it was
    loss = tf.errors.DataLossError(None, None, "truncated record at 12")
    with pytest.raises(tf.errors.DataLossError) as raised:
        with pipeline.naming_bad_records(path):
            raise loss
    assert raised.value is loss
