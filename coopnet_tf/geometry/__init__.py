"""Camera geometry: intrinsics, SE(3) poses, projection, rigid flow and warping;
Lee et al. two-stage warping (forward_warp.py, docs/lee.md).

Pure TensorFlow, no gin, float32, batch-first NHWC; every function runs inside
`tf.function(jit_compile=True)`. See docs/geometry.md.
"""
from coopnet_tf.geometry.camera import (
    crop_intrinsics,
    flip_intrinsics,
    invert_intrinsics,
    pixel_grid,
    pyramid_intrinsics,
    scale_intrinsics,
)
from coopnet_tf.geometry.forward_warp import (
    forward_project,
    total_motion_points,
    total_motion_warp,
)
from coopnet_tf.geometry.pose import (
    axis_angle_to_matrix,
    compose_transforms,
    euler_to_matrix,
    invert_transform,
    matmul_f32,
    matrix_to_axis_angle,
    matrix_to_euler,
    matrix_to_pose_vector,
    pose_vector_to_matrix,
    rotation_angle,
    rotation_translation_to_matrix,
    skew_matrix,
)
from coopnet_tf.geometry.warp import (
    backproject,
    bilinear_sample,
    flow_warp,
    homogeneous_pixel_grid,
    project,
    rigid_flow,
    rigid_warp,
    transform_points,
)

__all__ = [
    "axis_angle_to_matrix",
    "backproject",
    "bilinear_sample",
    "compose_transforms",
    "crop_intrinsics",
    "euler_to_matrix",
    "flip_intrinsics",
    "flow_warp",
    "forward_project",
    "homogeneous_pixel_grid",
    "invert_intrinsics",
    "invert_transform",
    "matmul_f32",
    "matrix_to_axis_angle",
    "matrix_to_euler",
    "matrix_to_pose_vector",
    "pixel_grid",
    "pose_vector_to_matrix",
    "project",
    "pyramid_intrinsics",
    "rigid_flow",
    "rigid_warp",
    "rotation_angle",
    "rotation_translation_to_matrix",
    "scale_intrinsics",
    "skew_matrix",
    "total_motion_points",
    "total_motion_warp",
    "transform_points",
]
