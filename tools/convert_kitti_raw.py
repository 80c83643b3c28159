r"""Converts KITTI raw to sharded snippet TFRecords (coopnet_tf.data.records schema).

Expected layout (the KITTI raw zips unzipped into ROOT):
  ROOT/<date>/calib_cam_to_cam.txt
  ROOT/<date>/<date>_drive_<NNNN>_sync/image_02/data/<0000000000>.png   (left colour)
  ROOT/<date>/<date>_drive_<NNNN>_sync/image_03/data/<0000000000>.png   (right colour)

Each snippet is frames (t-1, t, t+1) of one drive and camera; K is P_rect_02 (image_02)
or P_rect_03 (image_03) of the date's calib_cam_to_cam.txt, rescaled to the stored size.
With --split_file, one snippet per line ("2011_09_26/2011_09_26_drive_0022_sync 473 r",
l = image_02, r = image_03), in file order; without, every frame with both neighbours.

Eigen-Zhou training split at 128x416:
  python3 tools/convert_kitti_raw.py --data_path=$KITTI_RAW \
    --split_file=../shared/splits/eigen_zhou/train_files.txt \
    --output_dir=$DATA/kitti_eigen_zhou --resize=128x416 --num_workers=8
"""
import os

from absl import app, flags

import _common

FLAGS = flags.FLAGS

flags.DEFINE_string("data_path", None, "KITTI raw root (holds the <date> directories).")
flags.DEFINE_string("split_file", "", "Split file (lines '<date>/<drive> <frame> <l|r>'); empty = all frames.")
flags.DEFINE_list("cameras", ["image_02", "image_03"], "Cameras converted when there is no split file.")
flags.DEFINE_string("img_ext", "png", "Image extension (png as downloaded; jpg for Monodepth2's converted copy).")
flags.mark_flag_as_required("data_path")
_common.define_writer_flags()
_common.define_image_flags()
_common.define_box_flags()
flags.adopt_module_key_flags(_common)  # list the shared flags under --help


def main(argv):
    del argv
    from coopnet_tf.data import convert, kitti

    options = _common.image_options()
    _common.run(
        "convert_kitti_raw",
        lambda: kitti.raw_snippets(FLAGS.data_path, FLAGS.split_file or None, FLAGS.cameras, FLAGS.img_ext),
        convert.encoder(convert.encode_snippet, options=options),
        config=dict(dataset="kitti_raw",
                    split_file=os.path.abspath(FLAGS.split_file) if FLAGS.split_file else "",
                    cameras=FLAGS.cameras, img_ext=FLAGS.img_ext, options=options.__dict__),
        prefix=_common.prefix_from_split(FLAGS.split_file, "train"))


if __name__ == "__main__":
    app.run(main)
