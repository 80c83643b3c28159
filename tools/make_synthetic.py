"""Writes the synthetic world's TFRecords (train/val/test, with exact ground truth).

    python3 tools/make_synthetic.py --output_dir=data/synthetic_64x192
    python3 tools/make_synthetic.py --output_dir=data/synthetic_128x416 --height=128 \
        --width=416 --num_sequences=40 --moving_fraction=0.5 --seed=1
    python3 tools/make_synthetic.py --output_dir=data/synthetic_jittered --box_jitter=0.1

Training normally does not need this: `coopnet_tf.data.synthetic.ensure_synthetic_dataset`
generates the same data into a cache on first use. Files: <output_dir>/{train,val,test}-
SSSSS-of-NNNNN.tfrecord, world_config.json, and the marker _FINISHED (a JSON summary,
written last). Shards are written under temporary names and renamed when complete.
"""
import pathlib
import sys

from absl import app, flags

_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(1, _REPO_ROOT)

flags.DEFINE_string("output_dir", None, "Directory to write (created).")
flags.DEFINE_integer("height", 64, "Image height of the stored frames.")
flags.DEFINE_integer("width", 192, "Image width of the stored frames.")
flags.DEFINE_integer("num_sequences", 20, "Training sequences.")
flags.DEFINE_integer("num_val_sequences", 2, "Validation sequences (held out).")
flags.DEFINE_integer("num_test_sequences", 2, "Test sequences (held out).")
flags.DEFINE_integer("frames_per_sequence", 40, "Frames per sequence (F - 2 snippets each).")
flags.DEFINE_integer("num_objects", 14, "Boxes on/beside the road per sequence.")
flags.DEFINE_float("moving_fraction", 0.5, "Fraction of those boxes that move, in [0, 1].")
flags.DEFINE_integer("seed", 0, "World seed (the output is a deterministic function of the flags).")
flags.DEFINE_integer("train_shards", 8, "TFRecord files of the train split.")
flags.DEFINE_integer("eval_shards", 2, "TFRecord files of the val and test splits.")
flags.DEFINE_float("box_jitter", 0.0,
                   "Object boxes as a detector's: each side moved out by a random fraction of the "
                   "box size up to this (Lee et al.: 0.1); 0 = exact boxes.")
flags.DEFINE_float("box_miss_rate", 0.0, "Probability that an object's box is left out of a frame.")
flags.DEFINE_bool("overwrite", False, "Rewrite a finished dataset in --output_dir.")
flags.mark_flag_as_required("output_dir")

FLAGS = flags.FLAGS


def main(argv):
    del argv
    import dataclasses
    import json
    import time

    from coopnet_tf.data import synthetic

    config = synthetic.WorldConfig(
        height=FLAGS.height, width=FLAGS.width, num_sequences=FLAGS.num_sequences,
        num_val_sequences=FLAGS.num_val_sequences, num_test_sequences=FLAGS.num_test_sequences,
        frames_per_sequence=FLAGS.frames_per_sequence, num_objects=FLAGS.num_objects,
        moving_fraction=FLAGS.moving_fraction, seed=FLAGS.seed,
        train_shards=FLAGS.train_shards, eval_shards=FLAGS.eval_shards,
        box_jitter=FLAGS.box_jitter, box_miss_rate=FLAGS.box_miss_rate)
    if synthetic.is_complete(FLAGS.output_dir) and not FLAGS.overwrite:
        summary = synthetic.dataset_summary(FLAGS.output_dir)
        if summary["config"] == json.loads(json.dumps(dataclasses.asdict(config))):
            print(f"{FLAGS.output_dir} already holds this dataset (use --overwrite to rewrite)")
            return 0
        raise app.UsageError(f"{FLAGS.output_dir} holds a different synthetic dataset; "
                             "pass --overwrite or choose another --output_dir")
    start = time.time()
    synthetic.write_synthetic_dataset(FLAGS.output_dir, config)
    summary = synthetic.dataset_summary(FLAGS.output_dir)
    parts = ", ".join(f"{split}: {info['snippets']} snippets in {info['shards']} shards"
                      for split, info in summary["splits"].items())
    print(f"wrote {FLAGS.output_dir}: {parts}; {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    app.run(main)
