r"""Converts Cityscapes sequences to sharded snippet TFRecords, ego-car hood cropped.

Expected layout (leftImg8bit_sequence_trainvaltest.zip and camera_trainvaltest.zip
unzipped into ROOT):
  ROOT/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png  (2048x1024)
  ROOT/camera/<split>/<city>/<city>_<seq>_<frame>_camera.json  (fx, fy, u0, v0)

Snippets are frames (f-step, f, f+step) of one <city>_<seq>. The bottom 25 % (ego car,
Li et al. 2020) is cropped (1024 -> 768 rows; K unchanged), then the frames are resized
to --resize with K rescaled (fx, cx x W'/2048; fy, cy x H'/768). A sequence without its
own camera json uses the first json of the same <city>_<seq>.

  python3 tools/convert_cityscapes.py --data_path=$CITYSCAPES --splits=train \
    --output_dir=$DATA/cityscapes --resize=128x416 --num_workers=8
"""
from absl import app, flags

import _common

FLAGS = flags.FLAGS

flags.DEFINE_string("data_path", None, "Cityscapes root (holds leftImg8bit_sequence/ and camera/).")
flags.DEFINE_list("splits", ["train"], "leftImg8bit_sequence splits to convert.")
flags.DEFINE_integer("frame_step", 1, "Frames between target and sources (17 Hz; SfMLearner uses 2).")
flags.DEFINE_float("crop_bottom", 0.25, "Fraction of rows removed at the bottom (ego-car hood); 0 = none.")
flags.DEFINE_string("expected_size", "1024x2048", "HEIGHTxWIDTH every frame must have; empty = any.")
flags.mark_flag_as_required("data_path")
_common.define_writer_flags()
_common.define_image_flags()
_common.define_box_flags()
flags.adopt_module_key_flags(_common)  # list the shared flags under --help


def main(argv):
    del argv
    from coopnet_tf.data import cityscapes, convert

    options = _common.image_options()
    _common.run(
        "convert_cityscapes",
        lambda: cityscapes.snippets(FLAGS.data_path, FLAGS.splits, FLAGS.frame_step, FLAGS.crop_bottom,
                                    convert.parse_size(FLAGS.expected_size)),
        convert.encoder(convert.encode_snippet, options=options),
        config=dict(dataset="cityscapes", splits=FLAGS.splits, frame_step=FLAGS.frame_step,
                    crop_bottom=FLAGS.crop_bottom, expected_size=FLAGS.expected_size,
                    options=options.__dict__),
        prefix=FLAGS.prefix or "_".join(FLAGS.splits))


if __name__ == "__main__":
    app.run(main)
