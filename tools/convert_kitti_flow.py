r"""Converts the KITTI 2015 flow training pairs to evaluation TFRecords (flow_records schema).

Expected layout (data_scene_flow.zip, optionally data_scene_flow_calib.zip, unzipped
into ROOT):
  ROOT/training/image_2/<id>_10.png, <id>_11.png    (the pair, id = 000000..000199)
  ROOT/training/flow_occ/<id>_10.png                 (16-bit KITTI flow PNG, all pixels)
  ROOT/training/flow_noc/<id>_10.png                 (non-occluded pixels)
  ROOT/training/calib_cam_to_cam/<id>.txt            (optional: K = P_rect_02[:, :3])

Frames and flow are stored at their native size, the flow PNGs byte for byte; read the
records with coopnet_tf.data.flow_records.parse_flow_pair.

  python3 tools/convert_kitti_flow.py --data_path=$KITTI_2015 --output_dir=$DATA/kitti2015_flow
"""
from absl import app, flags

import _common

FLAGS = flags.FLAGS

flags.DEFINE_string("data_path", None, "KITTI 2015 scene-flow root (holds training/).")
flags.DEFINE_string("split", "training", "Sub-directory with ground truth (only 'training' has it).")
flags.DEFINE_string("calib_dir", "",
                    "Directory of <id>.txt calibrations; empty = ROOT/<split>/calib_cam_to_cam if present.")
flags.mark_flag_as_required("data_path")
_common.define_writer_flags(default_prefix="kitti2015_flow")
flags.adopt_module_key_flags(_common)  # list the shared flags under --help


def main(argv):
    del argv
    from coopnet_tf.data import flow_records

    _common.run(
        "convert_kitti_flow",
        lambda: flow_records.flow_pairs(FLAGS.data_path, FLAGS.split, FLAGS.calib_dir or None),
        flow_records.encode_flow_pair,
        config=dict(dataset="kitti2015_flow", split=FLAGS.split, calib_dir=FLAGS.calib_dir),
        prefix=FLAGS.prefix)


if __name__ == "__main__":
    app.run(main)
