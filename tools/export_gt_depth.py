r"""Exports KITTI ground-truth depth maps from velodyne scans (Monodepth2 protocol).

Expected layout (KITTI raw with the velodyne zips, unzipped into ROOT):
  ROOT/<date>/calib_cam_to_cam.txt, ROOT/<date>/calib_velo_to_cam.txt
  ROOT/<date>/<date>_drive_<NNNN>_sync/velodyne_points/data/<0000000000>.bin

For each split line "<date>/<drive> <frame> <side>" it writes one sparse float32 depth
map (S_rect_02 size, 0 = no point), in file order, to an .npz whose key `data` is an
object array (load with allow_pickle=True), as Monodepth2's export_gt_depth.py.
Projection P_rect_02 . R_rect_00 . [R|T], velodyne x >= 0, depth = velodyne x,
pixel = round(coord) - 1, nearest depth wins on duplicates.
Camera 2 is used for every line, as in Monodepth2 (the Eigen test lines are all 'l').

--duplicate_index=monodepth2 (default) reproduces Monodepth2's duplicate search with its
non-unique linear index row*(W-1)+col-1 bit for bit; =unique uses row*W+col (maps then
differ only in columns 0 and W-1).

  python3 tools/export_gt_depth.py --data_path=$KITTI_RAW \
    --split_file=../shared/splits/eigen/test_files.txt --output=$DATA/eigen_gt_depths.npz
"""
import sys

from absl import app, flags

import _common  # noqa: F401  (puts the repository on sys.path)

FLAGS = flags.FLAGS

flags.DEFINE_string("data_path", None, "KITTI raw root (holds the <date> directories).")
flags.DEFINE_string("split_file", None, "Split file, e.g. ../shared/splits/eigen/test_files.txt.")
flags.DEFINE_string("output", None, "Output .npz (key 'data').")
flags.DEFINE_enum("duplicate_index", "monodepth2", ["monodepth2", "unique"],
                  "Duplicate-pixel search: Monodepth2's quirky index (bit-exact) or a true unique index.")
flags.DEFINE_bool("vel_depth", True, "Depth = velodyne x (Monodepth2's Eigen export); false = camera z.")
flags.mark_flags_as_required(["data_path", "split_file", "output"])


def main(argv):
    del argv
    from coopnet_tf.data import convert, kitti

    try:
        summary = kitti.export_gt_depths(FLAGS.data_path, FLAGS.split_file, FLAGS.output,
                                         duplicate_index=FLAGS.duplicate_index, vel_depth=FLAGS.vel_depth)
    except convert.ConversionError as err:
        sys.exit(f"export_gt_depth: error: {err}")
    print(summary, flush=True)


if __name__ == "__main__":
    app.run(main)
