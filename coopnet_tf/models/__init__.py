"""Depth, pose, flow, moderator and motion networks (Keras 3 functional models).

Public API: the gin-configurable factories `build_depth_net`, `build_pose_net`,
`build_flow_net`, `build_moderator_net` (Competitive Collaboration's M_χ),
`build_motion_net` (Lee et al.'s MotionNet with DAM) and its branch views
`motion_branches`, and `disp_to_depth`. Importing this package registers the custom
layers, which `keras.models.load_model` needs for `.keras` files. Nothing is downloaded
at import time (or ever).
"""
from coopnet_tf.models.blocks import MIN_SIZE, NUM_SCALES, SIZE_MULTIPLE, check_input_size
from coopnet_tf.models.depth_net import disp_to_depth
from coopnet_tf.models.factory import (
    build_depth_net,
    build_flow_net,
    build_moderator_net,
    build_motion_net,
    build_pose_net,
)
from coopnet_tf.models.motion_net import motion_branches
from coopnet_tf.models.resnet import (
    build_resnet_encoder,
    load_pretrained_encoder,
    resolve_pretrained_weights,
)

__all__ = [
    "MIN_SIZE",
    "NUM_SCALES",
    "SIZE_MULTIPLE",
    "build_depth_net",
    "build_flow_net",
    "build_moderator_net",
    "build_motion_net",
    "build_pose_net",
    "build_resnet_encoder",
    "check_input_size",
    "disp_to_depth",
    "load_pretrained_encoder",
    "motion_branches",
    "resolve_pretrained_weights",
]
