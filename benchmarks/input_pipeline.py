"""Input-pipeline throughput (snippets/s) at the training resolution, from TFRecords.

  python benchmarks/input_pipeline.py --output_json=benchmarks/results/input_pipeline_cpu.json
  python benchmarks/input_pipeline.py --stored_size=375x1242          # KITTI-sized records
  python benchmarks/input_pipeline.py --file_pattern='data/kitti/train-*.tfrecord'
  python benchmarks/input_pipeline.py --step_seconds=0.35             # compare with a step

Without --file_pattern it renders a small synthetic record set (--num_sequences x
--frames_per_sequence frames at --stored_size, default 128x416 = the training size) into a
temporary directory, then times `coopnet_tf.data.pipeline.make_dataset` in training mode
(parse, PNG decode, resize, flip + colour jitter, shuffle, batch, prefetch; the set is
repeated, so after the first pass the files come from the OS page cache). One training
step consumes --batch_size snippets; with --step_seconds (measured elsewhere, e.g. by the
training benchmark) it also prints the ratio produced / consumed (the target is >= 4x).
Not part of the test suite.
"""
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:  # runs from a clone that was not pip-installed
    sys.path.insert(1, _REPO_ROOT)

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("height", 128, "Training height (the pipeline's output).")
flags.DEFINE_integer("width", 416, "Training width (the pipeline's output).")
flags.DEFINE_integer("batch_size", 4, "Batch size (the paper's is 4).")
flags.DEFINE_string("stored_size", "128x416",
                    "HEIGHTxWIDTH of the generated records (ignored with --file_pattern).")
flags.DEFINE_integer("num_sequences", 2, "Synthetic sequences to generate.")
flags.DEFINE_integer("frames_per_sequence", 14, "Frames per generated sequence.")
flags.DEFINE_string("file_pattern", None, "Time these records instead of generating some.")
flags.DEFINE_bool("with_ground_truth", False, "Also decode/resize/flip the GT fields.")
flags.DEFINE_integer("warmup_batches", 10, "Untimed batches first (tracing, buffers).")
flags.DEFINE_integer("batches", 200, "Timed batches.")
flags.DEFINE_integer("repeats", 3, "Timed runs; the median is reported.")
flags.DEFINE_float("step_seconds", None, "Seconds of one training step, to compare against.")
flags.DEFINE_string("output_json", None, "Write the results here as JSON.")
FLAGS = flags.FLAGS


def _generate(tmp_dir):
    from coopnet_tf.data import synthetic

    h, w = (int(v) for v in FLAGS.stored_size.lower().split("x"))
    start = time.time()
    synthetic.write_synthetic_dataset(
        tmp_dir, synthetic.WorldConfig(
            height=h, width=w, num_sequences=FLAGS.num_sequences, num_val_sequences=0,
            num_test_sequences=0, frames_per_sequence=FLAGS.frames_per_sequence,
            train_shards=4), progress=False)
    return synthetic.file_pattern(tmp_dir, "train"), time.time() - start


def measure(pattern, with_ground_truth):
    import statistics

    from coopnet_tf.data import pipeline

    ds = pipeline.make_dataset(pattern, batch_size=FLAGS.batch_size, height=FLAGS.height,
                               width=FLAGS.width, training=True,
                               with_ground_truth=with_ground_truth)
    iterator = iter(ds)
    for _ in range(FLAGS.warmup_batches):
        next(iterator)
    rates = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
            batch = next(iterator)
        batch["frames"].numpy()
        rates.append(FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - start))
    return statistics.median(rates), rates


def main(argv):
    del argv
    import tensorflow as tf

    from coopnet_tf.data import pipeline

    with tempfile.TemporaryDirectory(prefix="coopnet_bench_") as tmp_dir:
        generate_seconds = None
        if FLAGS.file_pattern:
            pattern = FLAGS.file_pattern
        else:
            pattern, generate_seconds = _generate(tmp_dir)
        num_snippets = sum(pipeline.check_records(pattern).values())
        rows = [("train (augmented)", False)]
        if FLAGS.with_ground_truth:
            rows.append(("train + ground truth", True))
        results = []
        for name, gt in rows:
            median, rates = measure(pattern, gt)
            results.append({"pipeline": name, "snippets_per_second": round(median, 1),
                            "runs": [round(r, 1) for r in rates]})

    consumed = FLAGS.batch_size / FLAGS.step_seconds if FLAGS.step_seconds else None
    print(f"input pipeline at {FLAGS.height}x{FLAGS.width}, batch {FLAGS.batch_size}, "
          f"{num_snippets} snippets stored at "
          f"{FLAGS.stored_size if not FLAGS.file_pattern else FLAGS.file_pattern}, "
          f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}: other processes "
          "slow it down)")
    print(f"{'pipeline':<24}{'snippets/s':>12}{'batches/s':>11}"
          + (f"{'x one step':>12}" if consumed else ""))
    for r in results:
        line = (f"{r['pipeline']:<24}{r['snippets_per_second']:>12.1f}"
                f"{r['snippets_per_second'] / FLAGS.batch_size:>11.1f}")
        if consumed:
            r["ratio_to_step_consumption"] = round(r["snippets_per_second"] / consumed, 2)
            line += f"{r['ratio_to_step_consumption']:>11.1f}x"
        print(line)
    print(f"one training step consumes {FLAGS.batch_size} snippets"
          + (f" every {FLAGS.step_seconds} s = {consumed:.1f} snippets/s (target: pipeline >= 4x)"
             if consumed else "; pass --step_seconds to compare"))

    report = {
        "height": FLAGS.height, "width": FLAGS.width, "batch_size": FLAGS.batch_size,
        "records": FLAGS.file_pattern or f"synthetic {FLAGS.stored_size}",
        "num_snippets": num_snippets, "with_ground_truth": FLAGS.with_ground_truth,
        "generate_seconds": None if generate_seconds is None else round(generate_seconds, 1),
        "step_seconds": FLAGS.step_seconds,
        "step_snippets_per_second": None if consumed is None else round(consumed, 2),
        "results": results,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1min_at_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "tensorflow": tf.__version__},
    }
    if FLAGS.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output_json)), exist_ok=True)
        with open(FLAGS.output_json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {FLAGS.output_json}")


if __name__ == "__main__":
    app.run(main)
