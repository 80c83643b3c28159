"""Per-pixel losses: photometric error, smoothness, occlusion and consistency terms;
Lee et al. object-motion losses (object_motion.py, docs/lee.md).

Pure TensorFlow, no gin, float32; runs inside `tf.function(jit_compile=True)`.
Only the geometry/photometry modules are re-exported here; `quantile` and `apportion`
are imported by their own module path.
"""
from coopnet_tf.losses.consistency import (
    epipolar_distance,
    epipolar_loss,
    forward_backward_loss,
    forward_backward_residual,
    fundamental_matrix,
    geometric_consistency,
    masked_mean,
    non_occluded_mask,
    range_map,
    variance_loss,
)
from coopnet_tf.losses.object_motion import (
    box_pixel_masks,
    csac_loss,
    height_prior_loss,
    motion_consistency,
    motion_smoothness,
    motion_sparsity,
    otsu_split,
    soft_inlier,
)
from coopnet_tf.losses.photometric import (
    l1_error,
    min_reprojection,
    photometric_error,
    ssim,
    ssim_dissimilarity,
)
from coopnet_tf.losses.smoothness import (
    disparity_smoothness,
    edge_aware_smoothness,
    flow_smoothness,
    normalise_disparity,
)

__all__ = [
    "box_pixel_masks",
    "csac_loss",
    "disparity_smoothness",
    "edge_aware_smoothness",
    "epipolar_distance",
    "epipolar_loss",
    "flow_smoothness",
    "forward_backward_loss",
    "forward_backward_residual",
    "fundamental_matrix",
    "geometric_consistency",
    "height_prior_loss",
    "l1_error",
    "masked_mean",
    "min_reprojection",
    "motion_consistency",
    "motion_smoothness",
    "motion_sparsity",
    "non_occluded_mask",
    "normalise_disparity",
    "otsu_split",
    "photometric_error",
    "range_map",
    "soft_inlier",
    "ssim",
    "ssim_dissimilarity",
    "variance_loss",
]
