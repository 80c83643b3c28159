"""Flags and error handling shared by the `tools/convert_*.py` absl apps.

Only absl is imported at module level, so `--help` is instant; the converters import
coopnet_tf (and TensorFlow, lazily) inside `main`.
"""
import logging
import os
import pathlib
import sys

from absl import flags

# Running `python3 tools/<tool>.py` from a clone that was not pip-installed still works.
_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(1, _REPO_ROOT)

FLAGS = flags.FLAGS


def define_writer_flags(default_prefix: str = "") -> None:
    """--output_dir, --prefix, --num_shards, --examples_per_shard, --num_workers, --overwrite."""
    flags.DEFINE_string("output_dir", None, "Directory of the TFRecord shards (created).")
    flags.DEFINE_string("prefix", default_prefix,
                        "Shard names are <output_dir>/<prefix>-SSSSS-of-NNNNN.tfrecord."
                        + (" Empty: derived from the split file name (train_files.txt -> train)."
                           if not default_prefix else ""))
    flags.DEFINE_integer("num_shards", 0, "Number of shards; 0 = ceil(snippets / examples_per_shard).")
    flags.DEFINE_integer("examples_per_shard", 256, "Used when --num_shards is 0.")
    flags.DEFINE_integer("num_workers", min(8, os.cpu_count() or 1),
                         "Worker processes (each writes whole shards); 1 = run in this process.")
    flags.DEFINE_bool("overwrite", False,
                      "Delete this prefix's shards first. Without it, a re-run resumes: complete "
                      "shards are skipped (the options must be the same as the first run's).")
    flags.mark_flag_as_required("output_dir")


def define_image_flags(default_resize: str = "", static_filter: bool = True) -> None:
    """--resize, --image_format, --jpeg_quality, --resample and (optionally) the static filter."""
    flags.DEFINE_string("resize", default_resize,
                        "Stored size HEIGHTxWIDTH, e.g. 128x416 (K is rescaled to it); empty = native size.")
    flags.DEFINE_enum("image_format", "png", ["png", "jpeg"],
                      "Encoding of the stored frames (png is lossless; native files are copied as they "
                      "are when neither resized nor cropped).")
    flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality for --image_format=jpeg.")
    flags.DEFINE_enum("resample", "lanczos", ["lanczos", "bilinear", "bicubic", "area", "nearest"],
                      "Resize filter (lanczos is antialiased, like Monodepth2's PIL ANTIALIAS).")
    if static_filter:
        flags.DEFINE_bool("filter_static", False,
                          "Zhou-style static-frame filtering: drop snippets whose mean absolute frame "
                          "difference (grey, [0,1], at the stored size, mean over the two sources) is "
                          "below --static_threshold. The eigen_zhou split is already filtered.")
        flags.DEFINE_float("static_threshold", 0.01,
                           "Threshold of --filter_static (consecutive KITTI frames of a moving car "
                           "differ by ~0.05).")


def define_box_flags() -> None:
    """--boxes_dir: optional 2-D boxes per frame (coopnet_tf/data/boxes.py formats)."""
    flags.DEFINE_string(
        "boxes_dir", "",
        "Optional 2-D object boxes: one file per frame at <boxes_dir>/<frame path relative to "
        "--data_path>.txt (KITTI object-label lines) or .json ({\"boxes\": [[x1, y1, x2, y2, "
        "score, class], ...]}, detector xyxy pixels); boxes in pixels of the native frame, "
        "carried through the crop and resize. Empty = records without boxes.")


def image_options():
    from coopnet_tf.data import convert

    threshold = None
    if "filter_static" in FLAGS and FLAGS.filter_static:
        threshold = FLAGS.static_threshold
    return convert.ImageOptions(resize=convert.parse_size(FLAGS.resize), image_format=FLAGS.image_format,
                                jpeg_quality=FLAGS.jpeg_quality, resample=FLAGS.resample,
                                static_threshold=threshold)


def prefix_from_split(split_file: str, fallback: str) -> str:
    if FLAGS.prefix:
        return FLAGS.prefix
    if split_file:
        stem = pathlib.Path(split_file).stem
        return stem[:-len("_files")] if stem.endswith("_files") else stem
    return fallback


def run(tool: str, build_items, encode_fn, config: dict, prefix: str) -> None:
    """Builds the items, writes the shards, prints the summary; exits 1 with the message
    (naming the file and the expected layout) on bad input."""
    from coopnet_tf.data import convert

    logging.getLogger().setLevel(logging.INFO)
    if "boxes_dir" in FLAGS and FLAGS.boxes_dir:
        boxes_dir = os.path.abspath(FLAGS.boxes_dir)
        items_without_boxes = build_items

        def build_items():
            return convert.attach_boxes(items_without_boxes(), FLAGS.data_path, boxes_dir)
        config = dict(config, boxes_dir=boxes_dir)
    try:
        items = build_items()
        logging.info("%s: %d examples to write into %s", tool, len(items), FLAGS.output_dir)
        summary = convert.write_sharded(
            items, encode_fn, FLAGS.output_dir, prefix=prefix, num_shards=FLAGS.num_shards,
            examples_per_shard=FLAGS.examples_per_shard, num_workers=FLAGS.num_workers,
            config=convert.summary_config(**config), overwrite=FLAGS.overwrite)
    except convert.ConversionError as err:
        sys.exit(f"{tool}: error: {err}")
    logging.info("%s: %d examples in %d shards under %s (%d dropped as static this run)", tool,
                 summary.total_examples, summary.num_shards, FLAGS.output_dir, summary.filtered)
    print(summary.line(), flush=True)
