r"""Converts KITTI odometry sequences to sharded snippet TFRecords.

Expected layout (data_odometry_color.zip, data_odometry_calib.zip and, optionally,
data_odometry_poses.zip unzipped into ROOT):
  ROOT/sequences/<XX>/image_2/<000000>.png   (left colour; image_3 = right)
  ROOT/sequences/<XX>/calib.txt              (P0..P3; K = P2[:, :3] for image_2)
  ROOT/poses/<XX>.txt                        (optional, sequences 00-10)

Every frame with both neighbours becomes the target of a snippet (t-1, t, t+1). When the
poses file exists (and --with_poses), the record carries gt/pose: T_target->source of this
camera (the cam0 poses conjugated by the rectified offset read from P2/P3).

Training sequences 00-08 at 128x416 (Bian et al.):
  python3 tools/convert_kitti_odometry.py --data_path=$KITTI_ODOM \
    --sequences=00,01,02,03,04,05,06,07,08 --output_dir=$DATA/kitti_odom_00_08 \
    --resize=128x416 --num_workers=8
"""
from absl import app, flags

import _common

FLAGS = flags.FLAGS

flags.DEFINE_string("data_path", None, "KITTI odometry root (holds sequences/ and poses/).")
flags.DEFINE_list("sequences", [f"{i:02d}" for i in range(9)], "Sequences to convert.")
flags.DEFINE_enum("camera", "image_2", ["image_2", "image_3"], "Camera directory (K from P2 / P3).")
flags.DEFINE_string("img_ext", "png", "Image extension.")
flags.DEFINE_bool("with_poses", True, "Store gt/pose when ROOT/poses/<XX>.txt exists.")
flags.mark_flag_as_required("data_path")
_common.define_writer_flags(default_prefix="train")
_common.define_image_flags()
_common.define_box_flags()
flags.adopt_module_key_flags(_common)  # list the shared flags under --help


def main(argv):
    del argv
    from coopnet_tf.data import convert, kitti

    options = _common.image_options()
    _common.run(
        "convert_kitti_odometry",
        lambda: kitti.odometry_snippets(FLAGS.data_path, FLAGS.sequences, FLAGS.camera, FLAGS.img_ext,
                                        FLAGS.with_poses),
        convert.encoder(convert.encode_snippet, options=options),
        config=dict(dataset="kitti_odometry", sequences=FLAGS.sequences, camera=FLAGS.camera,
                    img_ext=FLAGS.img_ext, with_poses=FLAGS.with_poses, options=options.__dict__),
        prefix=FLAGS.prefix)


if __name__ == "__main__":
    app.run(main)
