"""6-DoF pose vectors <-> 4x4 rigid transforms (docs/decisions.md C3, D4).

Two parametrisations of the pose network's 6-vector:

* `"axis_angle"` (default, Monodepth2): layout `[omega(3), t(3)]` (rotation first),
  `R = exp([omega]_x)` by Rodrigues' formula, `T = [[R, t], [0, 1]]`.
* `"euler"` (SfMLearner / SC-SfMLearner / GeoNet): layout `[t(3), r(3)]` (translation
  first), `R = R_x(rx) R_y(ry) R_z(rz)` with right-handed elementary rotations.

A transform `T_a_to_b` maps points expressed in camera a into camera b:
`X_b = R X_a + t`. `compose_transforms(T_b_to_c, T_a_to_b) = T_a_to_c` (plain matmul).

All functions cast to float32 on entry (rotation matrices in float16 are not orthonormal
to the precision projection needs) and contain no data-dependent shapes: they run inside
`tf.function(jit_compile=True)`. Rodrigues uses `sin(theta)/theta` and
`(1 - cos theta)/theta^2 = 0.5 (sin(theta/2)/(theta/2))^2` with a series below a tiny
angle and the "double where" trick, so values and gradients are finite at omega = 0 (a
plain `tf.norm` has a NaN gradient there).
"""
import tensorflow as tf

AXIS_ANGLE = "axis_angle"
EULER = "euler"
_SMALL_ANGLE_SQ = 1e-8  # theta^2 below which the Taylor series is used


def _f32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def matmul_f32(a, b):
    """Batched matrix product `a @ b` in exact float32 (broadcast multiply + sum).

    Not `tf.matmul`: on Ampere/Hopper GPUs TF runs float32 matmuls in TF32 by default
    (10-bit mantissa), far too coarse for poses and projections. Shapes broadcast like
    `tf.matmul` on the leading dims: `[..., n, k] x [..., k, m] -> [..., n, m]`.
    """
    a = _f32(a)
    b = _f32(b)
    return tf.reduce_sum(a[..., :, :, tf.newaxis] * b[..., tf.newaxis, :, :], axis=-2)


def _skew(v):
    """`[..., 3]` -> `[..., 3, 3]` cross-product matrix `[v]_x`."""
    x, y, z = tf.unstack(v, axis=-1)
    zeros = tf.zeros_like(x)
    return tf.stack(
        [
            tf.stack([zeros, -z, y], axis=-1),
            tf.stack([z, zeros, -x], axis=-1),
            tf.stack([-y, x, zeros], axis=-1),
        ],
        axis=-2,
    )


def skew_matrix(v):
    """Cross-product matrix: `skew_matrix(v) @ w == cross(v, w)`.

    Args:
      v: `[..., 3]`.

    Returns:
      `[..., 3, 3]` float32 `[[0, -v3, v2], [v3, 0, -v1], [-v2, v1, 0]]`.
    """
    return _skew(_f32(v))


def axis_angle_to_matrix(axis_angle):
    """Rodrigues: rotation vector `omega` (axis * angle, radians) -> rotation matrix.

    `R = I + (sin theta / theta) [omega]_x + ((1 - cos theta) / theta^2) [omega]_x^2`,
    `theta = |omega|`; identical to Monodepth2's `rot_from_axisangle` (which uses
    `a = omega / (theta + 1e-7)`) up to float rounding, and smooth at omega = 0.

    Args:
      axis_angle: `[..., 3]`.

    Returns:
      `[..., 3, 3]` float32.
    """
    w = _f32(axis_angle)
    theta_sq = tf.reduce_sum(tf.square(w), axis=-1)
    small = theta_sq < _SMALL_ANGLE_SQ
    # Double-where: the non-selected branch must not produce NaN/inf gradients.
    safe_sq = tf.where(small, tf.ones_like(theta_sq), theta_sq)
    theta = tf.sqrt(safe_sq)
    half = 0.5 * theta
    a_big = tf.sin(theta) / theta
    b_big = 0.5 * tf.square(tf.sin(half) / half)
    a_small = 1.0 - theta_sq / 6.0 + tf.square(theta_sq) / 120.0
    b_small = 0.5 - theta_sq / 24.0 + tf.square(theta_sq) / 720.0
    a = tf.where(small, a_small, a_big)[..., tf.newaxis, tf.newaxis]
    b = tf.where(small, b_small, b_big)[..., tf.newaxis, tf.newaxis]
    k = _skew(w)
    return tf.eye(3, dtype=tf.float32) + a * k + b * matmul_f32(k, k)


def euler_to_matrix(euler):
    """SfMLearner Euler angles `(rx, ry, rz)` (radians) -> `R = R_x R_y R_z`.

    Args:
      euler: `[..., 3]`.

    Returns:
      `[..., 3, 3]` float32.
    """
    e = _f32(euler)
    rx, ry, rz = tf.unstack(e, axis=-1)
    zeros = tf.zeros_like(rx)
    ones = tf.ones_like(rx)

    def mat(rows):
        return tf.stack([tf.stack(r, axis=-1) for r in rows], axis=-2)

    cx, sx = tf.cos(rx), tf.sin(rx)
    cy, sy = tf.cos(ry), tf.sin(ry)
    cz, sz = tf.cos(rz), tf.sin(rz)
    r_x = mat([[ones, zeros, zeros], [zeros, cx, -sx], [zeros, sx, cx]])
    r_y = mat([[cy, zeros, sy], [zeros, ones, zeros], [-sy, zeros, cy]])
    r_z = mat([[cz, -sz, zeros], [sz, cz, zeros], [zeros, zeros, ones]])
    return matmul_f32(r_x, matmul_f32(r_y, r_z))


def rotation_translation_to_matrix(rotation, translation):
    """`R[..., 3, 3]`, `t[..., 3]` -> `T[..., 4, 4] = [[R, t], [0, 1]]` (float32)."""
    rotation = _f32(rotation)
    translation = _f32(translation)
    top = tf.concat([rotation, translation[..., tf.newaxis]], axis=-1)  # [..., 3, 4]
    bottom = tf.concat(
        [tf.zeros_like(translation), tf.ones_like(translation[..., :1])], axis=-1
    )[..., tf.newaxis, :]  # [..., 1, 4]
    return tf.concat([top, bottom], axis=-2)


def pose_vector_to_matrix(vec, rotation_mode=AXIS_ANGLE):
    """Pose-network 6-vector -> 4x4 rigid transform `T = [[R, t], [0, 1]]`.

    Args:
      vec: `[B, 6]` (any leading shape `[..., 6]` works). Layout `[rot(3), trans(3)]`
        for `"axis_angle"` (Monodepth2, default), `[trans(3), rot(3)]` for `"euler"`
        (SfMLearner). The network's x0.01 output scaling is applied by the network,
        not here.
      rotation_mode: `"axis_angle"` or `"euler"`.

    Returns:
      `[B, 4, 4]` float32.
    """
    vec = _f32(vec)
    if rotation_mode == AXIS_ANGLE:
        rotation = axis_angle_to_matrix(vec[..., :3])
        translation = vec[..., 3:]
    elif rotation_mode == EULER:
        translation = vec[..., :3]
        rotation = euler_to_matrix(vec[..., 3:])
    else:
        raise ValueError(f"rotation_mode must be 'axis_angle' or 'euler', got {rotation_mode!r}")
    return rotation_translation_to_matrix(rotation, translation)


def _rotation_block(matrix):
    matrix = _f32(matrix)
    if matrix.shape[-1] == 4:
        return matrix[..., :3, :3]
    return matrix


def matrix_to_axis_angle(matrix):
    """Rotation matrix -> rotation vector `omega` with `|omega|` in `[0, pi]`.

    Goes through a unit quaternion chosen by Shepperd's rule (largest of `w, x, y, z`
    as pivot), which stays accurate at angles near 0 and near pi, and is branch-free
    (`tf.where` on static shapes) so it compiles under XLA.

    Args:
      matrix: `[..., 3, 3]` rotation or `[..., 4, 4]` transform (rotation block used).

    Returns:
      `[..., 3]` float32; `axis_angle_to_matrix(matrix_to_axis_angle(R)) == R`.
    """
    r = _rotation_block(matrix)
    m00, m01, m02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    m10, m11, m12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    m20, m21, m22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    trace = m00 + m11 + m22
    # 4 * q_i^2 for each candidate pivot; each candidate quaternion is (w, x, y, z)
    # scaled by 4 q_pivot, normalised below.
    cands = tf.stack(
        [
            tf.stack([1.0 + trace, m21 - m12, m02 - m20, m10 - m01], axis=-1),
            tf.stack([m21 - m12, 1.0 + m00 - m11 - m22, m01 + m10, m02 + m20], axis=-1),
            tf.stack([m02 - m20, m01 + m10, 1.0 - m00 + m11 - m22, m12 + m21], axis=-1),
            tf.stack([m10 - m01, m02 + m20, m12 + m21, 1.0 - m00 - m11 + m22], axis=-1),
        ],
        axis=-2,
    )  # [..., 4 (pivot), 4 (w, x, y, z)]
    pivots = tf.stack([1.0 + trace, 1.0 + m00 - m11 - m22,
                       1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], axis=-1)
    best = tf.one_hot(tf.argmax(pivots, axis=-1), 4, dtype=tf.float32)
    q = tf.reduce_sum(cands * best[..., tf.newaxis], axis=-2)
    q = q / tf.norm(q, axis=-1, keepdims=True)
    # Canonical sign w >= 0 so that the angle is in [0, pi].
    q = q * tf.where(q[..., :1] < 0.0, -1.0, 1.0)
    w, v = q[..., 0], q[..., 1:]
    v_sq = tf.reduce_sum(tf.square(v), axis=-1)
    small = v_sq < 1e-12
    v_norm = tf.sqrt(tf.where(small, tf.ones_like(v_sq), v_sq))
    angle = 2.0 * tf.atan2(v_norm, w)
    # angle / |v|; for tiny |v| (tiny angle, w ~ 1) it tends to 2 / w.
    factor = tf.where(small, 2.0 / w, angle / v_norm)
    return v * factor[..., tf.newaxis]


def matrix_to_euler(matrix):
    """Inverse of `euler_to_matrix` for `R = R_x R_y R_z`, valid for `|ry| < pi/2`.

    Args:
      matrix: `[..., 3, 3]` rotation or `[..., 4, 4]` transform.

    Returns:
      `[..., 3]` float32 `(rx, ry, rz)`.
    """
    r = _rotation_block(matrix)
    ry = tf.atan2(r[..., 0, 2], tf.sqrt(tf.square(r[..., 0, 0]) + tf.square(r[..., 0, 1])))
    rx = tf.atan2(-r[..., 1, 2], r[..., 2, 2])
    rz = tf.atan2(-r[..., 0, 1], r[..., 0, 0])
    return tf.stack([rx, ry, rz], axis=-1)


def matrix_to_pose_vector(matrix, rotation_mode=AXIS_ANGLE):
    """Inverse of `pose_vector_to_matrix` (same layouts).

    Args:
      matrix: `[..., 4, 4]`.
      rotation_mode: `"axis_angle"` or `"euler"`.

    Returns:
      `[..., 6]` float32.
    """
    matrix = _f32(matrix)
    translation = matrix[..., :3, 3]
    if rotation_mode == AXIS_ANGLE:
        return tf.concat([matrix_to_axis_angle(matrix), translation], axis=-1)
    if rotation_mode == EULER:
        return tf.concat([translation, matrix_to_euler(matrix)], axis=-1)
    raise ValueError(f"rotation_mode must be 'axis_angle' or 'euler', got {rotation_mode!r}")


def invert_transform(transform):
    """Closed-form inverse of a rigid transform: `[[R^T, -R^T t], [0, 1]]`.

    Used for the t-1 source (docs/decisions.md C3: the pose net sees `(I_{t-1}, I_t)` in
    temporal order and `T_{t->t-1}` is the inverse of its output).

    Args:
      transform: `[..., 4, 4]`.

    Returns:
      `[..., 4, 4]` float32.
    """
    transform = _f32(transform)
    r_t = tf.linalg.matrix_transpose(transform[..., :3, :3])
    t = transform[..., :3, 3:]
    return rotation_translation_to_matrix(r_t, -matmul_f32(r_t, t)[..., 0])


def compose_transforms(a, b):
    """`a @ b`: apply `b` first, then `a` (`T_b_to_c @ T_a_to_b = T_a_to_c`).

    Args:
      a, b: `[..., 4, 4]`.

    Returns:
      `[..., 4, 4]` float32.
    """
    return matmul_f32(a, b)


def rotation_angle(matrix):
    """Rotation angle (radians, `[0, pi]`) of `[..., 3, 3]` or `[..., 4, 4]`; float32."""
    r = _rotation_block(matrix)
    cos = 0.5 * (tf.linalg.trace(r) - 1.0)
    return tf.acos(tf.clip_by_value(cos, -1.0, 1.0))


__all__ = [
    "AXIS_ANGLE",
    "EULER",
    "matmul_f32",
    "skew_matrix",
    "axis_angle_to_matrix",
    "euler_to_matrix",
    "rotation_translation_to_matrix",
    "pose_vector_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_euler",
    "matrix_to_pose_vector",
    "invert_transform",
    "compose_transforms",
    "rotation_angle",
]
