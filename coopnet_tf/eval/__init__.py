"""Evaluation metrics as pure numpy functions (no TensorFlow import at module level).

* `depth`: KITTI Eigen (Garg crop) and Cityscapes depth protocols, the 7 metrics.
* `odometry`: KITTI devkit t_err / r_err, Zhou et al. 5-frame ATE, Umeyama alignment.
* `flow`: EPE (noc / all) and Fl outliers on KITTI 2015.
* `motion`: static / moving IoU as in Competitive Collaboration Table 6.
* `scene_flow`: KITTI Scene Flow 2015 disparity outliers D1 / D2 (Lee et al. Table 4).
* `object_motion`: residual 3-D object-motion error and CSAC inlier IoU (Lee et al. Table 5).
* `kitti_flow_io`: KITTI 16-bit PNG flow / disparity files.
* `resize`: OpenCV-compatible bilinear and nearest resizing in numpy.
* `plots`: matplotlib (Agg) figures.

The command-line entry point is `coopnet_tf/evaluate.py`.
"""
