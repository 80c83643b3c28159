r"""Exports trained networks as TF-Serving SavedModels.

    python -m coopnet_tf.export --model_dir=runs/synthetic --export_dir=exports/synthetic \
        [--version=N] [--overwrite] [--checkpoint=latest|best|PATH] [--height=H --width=W] \
        [--models=depth,pose,flow]

writes ``<export_dir>/<name>/<version>/`` (the layout TF Serving's model server watches)
for ``name`` in ``depth``, ``pose``, ``flow`` — for a Lee et al. run
(``train_and_evaluate.method = 'lee'``) ``depth``, ``pose`` (its motion net's ego-motion,
`LeePoseServing`: the depth net on both images, then the ego branch) and
``object_motion`` — each with one ``serving_default`` signature (names from
`coopnet_tf.specs`):

| model | inputs (float32, [0, 1]) | outputs |
|---|---|---|
| depth | ``image [B, H, W, 3]`` | ``depth [B, H, W, 1]`` (m, up to scale), ``disparity [B, H, W, 1]`` (scaled, 1/depth) |
| pose  | ``image_a``, ``image_b`` ``[B, H, W, 3]`` (temporal order) | ``pose_vector [B, 6]`` (axis-angle, translation), ``transform [B, 4, 4]`` (T_a->b) |
| flow  | ``image_a``, ``image_b`` ``[B, H, W, 3]`` | ``flow [B, H, W, 2]`` (pixels, a -> b, channel 0 = x) |
| motion | ``image_prev``, ``image``, ``image_next`` ``[B, H, W, 3]``, ``intrinsics [B, 3, 3]`` | Competitive Collaboration runs: ``m_minus``, ``m_plus`` (moderator, 1 = static), ``masknet``, ``consensus``, ``joint`` (CC Eq. 14) ``[B, H, W, 1]``, ``composite_flow [B, H, W, 2]`` (Eq. 15, image -> image_next) |
| object_motion | ``image_a`` (target), ``image_b`` ``[B, H, W, 3]``, ``intrinsics [B, 3, 3]`` | Lee et al. runs: ``pose_vector [B, 6]``, ``transform [B, 4, 4]`` (T_a->b), ``residual [B, H, W, 3]`` (m at the depth's scale, camera a; X_b = R (X_a + r) + t) |

H, W default to the training resolution. The architecture is read from the operative gin
config the training loop wrote into ``model_dir``; the weights from the latest checkpoint
(``--checkpoint=best`` for the best-by-validation one). The version defaults to the
checkpoint's global step.

Inputs are checked inside the signatures (so TF Serving checks them too), before any
network op runs: every image must be ``[B, H, W, 3]`` with the exported H, W and B >= 1
(the same B for both images of a pair), finite, in [0, 1] (``VALUE_RANGE_TOLERANCE`` of
slack for resampling overshoot). A violation is an ``InvalidArgumentError`` whose text
names the input, the expected shape or range and what was received. Other sizes are
rejected, not resized: resize client-side (and scale flow back by the size ratios, and K
by `coopnet_tf.geometry.camera.scale_intrinsics`) — see docs/reliability.md.

An existing ``<name>/<version>`` is never replaced unless ``--overwrite`` is given (a
server watching the folder would otherwise serve other weights under the same version);
every SavedModel is written to ``<name>/.tmp-<version>-<pid>`` (not a number, so TF
Serving ignores it) and renamed into place once complete.

A residual flow network (``build_flow_net.residual = True``) needs depth, pose and the
intrinsics to build its rigid input; its export adds an ``intrinsics [B, 3, 3]`` input.
"""
import os
import pathlib
from typing import Dict, Optional, Sequence

import tensorflow as tf

from coopnet_tf import run_layout, specs


# Images may exceed [0, 1] by this much (bicubic/Lanczos resampling overshoot); 0-255
# images are far outside and rejected.
VALUE_RANGE_TOLERANCE = 0.01


# ------------------------------------------------------------- input validation ---

def _shape_is(tensor: tf.Tensor, expected) -> tf.Tensor:
    """True when ``tensor``'s RUNTIME shape equals ``expected`` (-1: any size >= 1).

    Uses the shape vector padded with -1s, never the static rank: the signature's static
    shape says rank 4 whatever the caller sends, so `tf.rank` or `tf.debugging.assert_rank`
    would be folded to "true" at trace time.
    """
    rank = len(expected)
    padded = tf.concat([tf.shape(tensor), -tf.ones([rank + 1], tf.int32)], 0)[:rank + 1]
    dims = padded[:rank]
    want = tf.constant(list(expected), tf.int32)
    match = tf.logical_or(tf.equal(dims, want), tf.logical_and(want < 0, dims >= 1))
    return tf.logical_and(tf.reduce_all(match), tf.equal(padded[rank], -1))


def validate_inputs(images: Dict[str, tf.Tensor], height: int, width: int,
                    intrinsics: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
    """The serving inputs, gated by runtime checks of shape, batch and value range.

    Runs inside the signature (graph ops, so TF Serving enforces them as well). Checks,
    in order: every image is ``[B, height, width, 3]`` with B >= 1; the images (and
    ``intrinsics [B, 3, 3]``) share B; then every value is finite and in
    [-tol, 1 + tol] (tol = ``VALUE_RANGE_TOLERANCE``); intrinsics are finite. A failure
    raises ``InvalidArgumentError`` naming the input, what was expected and what came.

    Returns:
      the same tensors (identities that run only after the checks pass), with their
      static shapes set; ``intrinsics`` under the key "intrinsics".
    """
    size = f"the exported size {height}x{width}"
    checks = []
    for name, image in images.items():
        checks.append(tf.debugging.Assert(_shape_is(image, [-1, height, width, 3]), [
            f"{name}: expected a float32 batch [B, {height}, {width}, 3] (B >= 1, {size}; "
            f"resize other images to {height}x{width} before the call); got shape",
            tf.shape(image)], summarize=8, name=f"check_{name}_shape"))
    tensors = dict(images)
    if intrinsics is not None:
        checks.append(tf.debugging.Assert(_shape_is(intrinsics, [-1, 3, 3]), [
            "intrinsics: expected [B, 3, 3]; got shape", tf.shape(intrinsics)],
            summarize=8, name="check_intrinsics_shape"))
        tensors["intrinsics"] = intrinsics
    with tf.control_dependencies(checks):
        batches = [tf.shape(t)[0] for t in tensors.values()]
        same_batch = tf.reduce_all(tf.equal(tf.stack(batches), batches[0]))
        names = ", ".join(tensors)
        checks.append(tf.debugging.Assert(same_batch, [
            f"{names}: expected the same batch size B; got", tf.stack(batches)],
            summarize=8, name="check_batch"))
    with tf.control_dependencies(checks):
        for name, image in images.items():
            low, high = tf.reduce_min(image), tf.reduce_max(image)
            finite = tf.reduce_all(tf.math.is_finite(image))
            in_range = tf.logical_and(low >= -VALUE_RANGE_TOLERANCE,
                                      high <= 1.0 + VALUE_RANGE_TOLERANCE)
            checks.append(tf.debugging.Assert(tf.logical_and(finite, in_range), [
                f"{name}: expected finite RGB values in [0, 1] (8-bit images divided by "
                "255); got min, max, all finite:", low, high, finite],
                name=f"check_{name}_values"))
        if intrinsics is not None:
            checks.append(tf.debugging.Assert(
                tf.reduce_all(tf.math.is_finite(intrinsics)),
                ["intrinsics: expected finite values"], name="check_intrinsics_values"))
    out = {}
    with tf.control_dependencies(checks):
        for name, tensor in tensors.items():
            shape = [None, 3, 3] if name == "intrinsics" else [None, height, width, 3]
            checked = tf.identity(tensor)
            checked.set_shape(shape)
            out[name] = checked
    return out


# ------------------------------------------------------------------ serving modules ---

class DepthServing(tf.Module):
    """``image [B, H, W, 3]`` -> ``{"depth", "disparity"}`` (scale-0 output)."""

    def __init__(self, depth_net, height: int, width: int,
                 min_depth: float = specs.MIN_DEPTH, max_depth: float = specs.MAX_DEPTH):
        super().__init__(name="depth_serving")
        self.depth_net = depth_net
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.height, self.width = int(height), int(width)
        self.serve = tf.function(self._serve, autograph=False, input_signature=[
            tf.TensorSpec([None, height, width, 3], tf.float32, name="image")])

    def _serve(self, image):
        from coopnet_tf.models import disp_to_depth  # pylint: disable=import-outside-toplevel
        image = validate_inputs({"image": image}, self.height, self.width)["image"]
        sigmoid = self.depth_net(image, training=False)[0]
        disparity, depth = disp_to_depth(tf.cast(sigmoid, tf.float32), self.min_depth,
                                         self.max_depth)
        return {"depth": depth, "disparity": disparity}


class PoseServing(tf.Module):
    """``image_a, image_b`` -> ``{"pose_vector" [B, 6], "transform" [B, 4, 4]}`` (T_a->b)."""

    def __init__(self, pose_net, height: int, width: int, rotation_mode: str = "axis_angle"):
        super().__init__(name="pose_serving")
        self.pose_net = pose_net
        self.rotation_mode = rotation_mode
        self.height, self.width = int(height), int(width)
        spec = tf.TensorSpec([None, height, width, 3], tf.float32)
        self.serve = tf.function(self._serve, autograph=False, input_signature=[
            tf.TensorSpec.from_spec(spec, name="image_a"),
            tf.TensorSpec.from_spec(spec, name="image_b")])

    def _serve(self, image_a, image_b):
        from coopnet_tf import geometry  # pylint: disable=import-outside-toplevel
        checked = validate_inputs({"image_a": image_a, "image_b": image_b}, self.height,
                                  self.width)
        image_a, image_b = checked["image_a"], checked["image_b"]
        vec = tf.cast(self.pose_net(tf.concat([image_a, image_b], -1), training=False),
                      tf.float32)
        return {"pose_vector": vec,
                "transform": geometry.pose_vector_to_matrix(vec, self.rotation_mode)}


class FlowServing(tf.Module):
    """``image_a, image_b`` -> ``{"flow" [B, H, W, 2]}`` (a -> b, scale 0, pixels)."""

    def __init__(self, flow_net, height: int, width: int, depth_net=None, pose_net=None,
                 rotation_mode: str = "axis_angle"):
        super().__init__(name="flow_serving")
        self.flow_net = flow_net
        self.residual = len(flow_net.inputs) > 1
        self.height, self.width = int(height), int(width)
        spec = tf.TensorSpec([None, height, width, 3], tf.float32)
        signature = [tf.TensorSpec.from_spec(spec, name="image_a"),
                     tf.TensorSpec.from_spec(spec, name="image_b")]
        if self.residual:
            if depth_net is None or pose_net is None:
                raise ValueError("a residual flow network needs the depth and pose networks")
            self.depth_net, self.pose_net = depth_net, pose_net
            self.rotation_mode = rotation_mode
            signature.append(tf.TensorSpec([None, 3, 3], tf.float32, name="intrinsics"))
            self.serve = tf.function(self._serve_residual, autograph=False,
                                     input_signature=signature)
        else:
            self.serve = tf.function(self._serve, autograph=False, input_signature=signature)

    def _serve(self, image_a, image_b):
        checked = validate_inputs({"image_a": image_a, "image_b": image_b}, self.height,
                                  self.width)
        image_a, image_b = checked["image_a"], checked["image_b"]
        flow = self.flow_net(tf.concat([image_a, image_b], -1), training=False)[0]
        return {"flow": tf.cast(flow, tf.float32)}

    def _serve_residual(self, image_a, image_b, intrinsics):
        from coopnet_tf import geometry  # pylint: disable=import-outside-toplevel
        from coopnet_tf.models import disp_to_depth  # pylint: disable=import-outside-toplevel
        from coopnet_tf.training import step as step_lib  # pylint: disable=import-outside-toplevel
        checked = validate_inputs({"image_a": image_a, "image_b": image_b}, self.height,
                                  self.width, intrinsics)
        image_a, image_b = checked["image_a"], checked["image_b"]
        intrinsics = checked["intrinsics"]
        _, depth = disp_to_depth(tf.cast(self.depth_net(image_a, training=False)[0], tf.float32))
        vec = self.pose_net(tf.concat([image_a, image_b], -1), training=False)
        transform = geometry.pose_vector_to_matrix(tf.cast(vec, tf.float32), self.rotation_mode)
        rigid = step_lib.residual_flow_input(image_a, image_b, depth, transform, intrinsics)
        flow = self.flow_net([tf.concat([image_a, image_b], -1), rigid], training=False)[0]
        return {"flow": tf.cast(flow, tf.float32)}


class MotionServing(tf.Module):
    """CC's inference outputs (Eqs. 14-15) for the middle frame of a snippet: the
    moderator's masks, the consensus of ν(e₊, d) and u₊, m* and u* (specs.EXPORT_MOTION)."""

    def __init__(self, moderator, depth_net, pose_net, flow_net, height: int, width: int,
                 rotation_mode: str = "axis_angle", flow_threshold: float = 1e-3):
        super().__init__(name="motion_serving")
        self.moderator, self.depth_net, self.pose_net = moderator, depth_net, pose_net
        self.flow = FlowServing(flow_net, height, width, depth_net, pose_net, rotation_mode)
        self.rotation_mode = rotation_mode
        self.flow_threshold = float(flow_threshold)
        self.height, self.width = int(height), int(width)
        spec = tf.TensorSpec([None, height, width, 3], tf.float32)
        self.serve = tf.function(self._serve, autograph=False, input_signature=[
            tf.TensorSpec.from_spec(spec, name="image_prev"),
            tf.TensorSpec.from_spec(spec, name="image"),
            tf.TensorSpec.from_spec(spec, name="image_next"),
            tf.TensorSpec([None, 3, 3], tf.float32, name="intrinsics")])

    def _serve(self, image_prev, image, image_next, intrinsics):
        from coopnet_tf import geometry  # pylint: disable=import-outside-toplevel
        from coopnet_tf.losses import competitive  # pylint: disable=import-outside-toplevel
        from coopnet_tf.models import disp_to_depth  # pylint: disable=import-outside-toplevel
        checked = validate_inputs({"image_prev": image_prev, "image": image,
                                   "image_next": image_next}, self.height, self.width,
                                  intrinsics)
        image_prev, image, image_next = (checked[k] for k in ("image_prev", "image",
                                                              "image_next"))
        intrinsics = checked["intrinsics"]
        masks = tf.cast(self.moderator(tf.concat([image_prev, image, image_next], -1),
                                       training=False)[0], tf.float32)
        _, depth = disp_to_depth(tf.cast(self.depth_net(image, training=False)[0], tf.float32))
        vec = tf.cast(self.pose_net(tf.concat([image, image_next], -1), training=False),
                      tf.float32)
        rigid = geometry.rigid_flow(depth, geometry.pose_vector_to_matrix(
            vec, self.rotation_mode), intrinsics)
        flow = (self.flow._serve_residual(image, image_next, intrinsics) if self.flow.residual
                else self.flow._serve(image, image_next))["flow"]
        out = competitive.inference_masks(masks[..., 1:2], masks[..., 0:1], rigid, flow,
                                          self.flow_threshold)
        out.update(m_minus=masks[..., 0:1], m_plus=masks[..., 1:2],
                   composite_flow=competitive.composite_flow(out["joint"], rigid, flow))
        return out


class _LeeServing(tf.Module):
    """Shared part of Lee et al.'s serving modules: depth of both images, then the motion
    net's branches (`training.lee_step.predict_motion`)."""

    def __init__(self, depth_net, motion_net, height: int, width: int,
                 rotation_mode: str = "axis_angle", min_depth: float = specs.MIN_DEPTH,
                 max_depth: float = specs.MAX_DEPTH, name: str = "lee_serving"):
        super().__init__(name=name)
        from coopnet_tf.models import motion_branches  # pylint: disable=import-outside-toplevel
        self.depth_net, self.motion_net = depth_net, motion_net
        self.ego_net, self.residual_net = motion_branches(motion_net)
        self.rotation_mode = rotation_mode
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.height, self.width = int(height), int(width)

    def _motion(self, image_a, image_b, intrinsics=None):
        from coopnet_tf.models import disp_to_depth  # pylint: disable=import-outside-toplevel
        from coopnet_tf.training import lee_step  # pylint: disable=import-outside-toplevel
        checked = validate_inputs({"image_a": image_a, "image_b": image_b}, self.height,
                                  self.width, intrinsics)
        image_a, image_b = checked["image_a"], checked["image_b"]
        sigmoid = self.depth_net(tf.concat([image_a, image_b], 0), training=False)[0]
        _, depth = disp_to_depth(tf.cast(sigmoid, tf.float32), self.min_depth, self.max_depth)
        b = tf.shape(image_a)[0]
        return lee_step.predict_motion(
            self.ego_net, self.residual_net, image_a, image_b, depth[:b], depth[b:],
            checked.get("intrinsics"), self.rotation_mode,
            with_residual=intrinsics is not None, training=False)


class LeePoseServing(_LeeServing):
    """A Lee et al. run's ego-motion behind the ``pose`` signature: ``image_a, image_b``
    -> ``{"pose_vector" [B, 6], "transform" [B, 4, 4]}`` (T_a->b): the depth net on both
    images, then the motion net's ego branch on (I_a, I_b, D_a, D_b); like the pose net's,
    trained with image_b the later frame."""

    def __init__(self, depth_net, motion_net, height: int, width: int,
                 rotation_mode: str = "axis_angle"):
        super().__init__(depth_net, motion_net, height, width, rotation_mode,
                         name="lee_pose_serving")
        spec = tf.TensorSpec([None, height, width, 3], tf.float32)
        self.serve = tf.function(self._serve, autograph=False, input_signature=[
            tf.TensorSpec.from_spec(spec, name="image_a"),
            tf.TensorSpec.from_spec(spec, name="image_b")])

    def _serve(self, image_a, image_b):
        out = self._motion(image_a, image_b)
        return {"pose_vector": out["vectors"], "transform": out["transforms"]}


class ObjectMotionServing(_LeeServing):
    """Lee et al.'s motion (specs.EXPORT_OBJECT_MOTION): ``image_a`` (target),
    ``image_b`` (source, the frame after image_a: the ego branch is trained on pairs in
    temporal order), ``intrinsics`` -> ``pose_vector``, ``transform`` (T_a->b) and
    ``residual [B, H, W, 3]``: both stages of Lee Sec. 3.1, X_b = R (X_a + r) + t."""

    def __init__(self, depth_net, motion_net, height: int, width: int,
                 rotation_mode: str = "axis_angle"):
        super().__init__(depth_net, motion_net, height, width, rotation_mode,
                         name="object_motion_serving")
        spec = tf.TensorSpec([None, height, width, 3], tf.float32)
        self.serve = tf.function(self._serve, autograph=False, input_signature=[
            tf.TensorSpec.from_spec(spec, name="image_a"),
            tf.TensorSpec.from_spec(spec, name="image_b"),
            tf.TensorSpec([None, 3, 3], tf.float32, name="intrinsics")])

    def _serve(self, image_a, image_b, intrinsics):
        out = self._motion(image_a, image_b, intrinsics)
        return {"pose_vector": out["vectors"], "transform": out["transforms"],
                "residual": out["residual"]}


def save_serving_module(module: tf.Module, path: str, overwrite: bool = False) -> str:
    """Saves ``module`` with its ``serve`` function as ``serving_default`` at ``path``.

    Written to a temporary sibling ``.tmp-<name>-<pid>`` (same parent, so the final rename
    is atomic on a local disk) and renamed to ``path`` once complete: a killed export never
    leaves a partial version for TF Serving to load.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = path.rstrip("/")
    parent, base = os.path.dirname(path) or ".", os.path.basename(path)
    if tf.io.gfile.exists(path) and not overwrite:
        raise FileExistsError(_exists_message(path))
    tf.io.gfile.makedirs(parent)
    tmp = os.path.join(parent, f".tmp-{base}-{os.getpid()}")
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
    if tf.io.gfile.exists(path):   # overwrite: move the old version aside, then delete it
        old = os.path.join(parent, f".old-{base}-{os.getpid()}")
        tf.io.gfile.rename(path, old)
        tf.io.gfile.rename(tmp, path)
        tf.io.gfile.rmtree(old)
    else:
        tf.io.gfile.rename(tmp, path)
    return path


def _exists_message(path: str) -> str:
    return (f"{path} already exists: a served version must not change its weights. Export "
            "under another --version (e.g. the next free one), or pass --overwrite to "
            "replace it.")


def export_models(export_dir: str, version: int, height: int, width: int, depth_net=None,
                  pose_net=None, flow_net=None, names: Sequence[str] = ("depth", "pose", "flow"),
                  rotation_mode: str = "axis_angle", overwrite: bool = False,
                  moderator=None, flow_threshold: float = 1e-3,
                  motion_net=None) -> Dict[str, str]:
    """Writes the requested SavedModels; returns name -> path.

    Args:
      export_dir: root; models go to ``<export_dir>/<name>/<version>``.
      version: positive integer version directory (TF Serving serves the highest).
      height, width: serving input size (multiples of 32).
      depth_net, pose_net, flow_net: Keras models (restored).
      names: subset of ``specs.EXPORT_DEPTH/POSE/FLOW/MOTION/OBJECT_MOTION``.
      rotation_mode: pose parametrisation used in training.
      overwrite: replace existing version directories (default: refuse).
      moderator: Competitive Collaboration's moderator (needed for ``motion``).
      flow_threshold: λ_c (px) of the ``motion`` model's consensus mask.
      motion_net: a Lee et al. run's motion net: ``pose`` then serves its ego-motion
        (`LeePoseServing`), and ``object_motion`` is available.

    Raises:
      FileExistsError: a requested ``<name>/<version>`` exists and ``overwrite`` is False
        (checked for every name before anything is written).
      ValueError: unknown name, or version < 1.
    """
    if int(version) < 1:
        raise ValueError(f"version must be a positive integer (TF Serving), got {version}")
    unknown = [n for n in names if n not in (specs.EXPORT_DEPTH, specs.EXPORT_POSE,
                                             specs.EXPORT_FLOW, specs.EXPORT_MOTION,
                                             specs.EXPORT_OBJECT_MOTION)]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; expected depth, pose, flow, motion "
                         "or object_motion")
    if specs.EXPORT_MOTION in names and moderator is None:
        raise ValueError("the motion model needs a Competitive Collaboration run (its "
                         "checkpoint has no moderator_net)")
    if specs.EXPORT_OBJECT_MOTION in names and motion_net is None:
        raise ValueError("the object_motion model needs a Lee et al. run "
                         "(train_and_evaluate.method = 'lee')")
    if motion_net is not None and specs.EXPORT_FLOW in names:
        raise ValueError("a Lee et al. run has no flow network; export depth, pose, "
                         "object_motion")
    paths = {name: os.path.join(export_dir, name, str(int(version))) for name in names}
    existing = [p for p in paths.values() if tf.io.gfile.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(_exists_message(", ".join(existing)))
    for name, path in paths.items():
        if name == specs.EXPORT_DEPTH:
            module = DepthServing(depth_net, height, width)
        elif name == specs.EXPORT_POSE and motion_net is not None:
            module = LeePoseServing(depth_net, motion_net, height, width, rotation_mode)
        elif name == specs.EXPORT_POSE:
            module = PoseServing(pose_net, height, width, rotation_mode)
        elif name == specs.EXPORT_OBJECT_MOTION:
            module = ObjectMotionServing(depth_net, motion_net, height, width, rotation_mode)
        elif name == specs.EXPORT_MOTION:
            module = MotionServing(moderator, depth_net, pose_net, flow_net, height, width,
                                   rotation_mode, flow_threshold)
        else:
            module = FlowServing(flow_net, height, width, depth_net, pose_net, rotation_mode)
        save_serving_module(module, path, overwrite)
    return paths


# ------------------------------------------------------------- restore from a run ---

def find_checkpoint(model_dir: str, which: str = "latest") -> str:
    """Checkpoint path in a training ``model_dir``: ``latest``, ``best`` or an explicit path."""
    if which not in ("latest", "best"):
        return which
    sub = run_layout.checkpoint_subdir(which)
    path = tf.train.latest_checkpoint(os.path.join(model_dir, sub))
    if path is None:
        raise FileNotFoundError(f"no {which} checkpoint under {os.path.join(model_dir, sub)}")
    return path


def load_run_config(model_dir: str, extra_bindings: Sequence[str] = ()) -> None:
    """Parses ``<model_dir>/operative_config.gin`` (architecture + resolution of the run)."""
    import gin  # pylint: disable=import-outside-toplevel

    from coopnet_tf.training import factories  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    from coopnet_tf.training import loop  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

    path = os.path.join(model_dir, run_layout.OPERATIVE_CONFIG)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: model_dir must be a directory written by coopnet_tf.train")
    gin.clear_config()
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    gin.parse_config(text, skip_unknown=True)
    if extra_bindings:
        gin.parse_config(list(extra_bindings), skip_unknown=True)


def query_config(name: str, default):
    """The value bound to ``name`` (``"configurable.parameter"``) in the parsed gin config,
    with macros (``%HEIGHT``) resolved; ``default`` when nothing is bound."""
    import gin  # pylint: disable=import-outside-toplevel
    try:
        value = gin.query_parameter(name)
    except ValueError:
        return default
    while isinstance(value, gin.config.ConfigurableReference) and \
            value.configurable.name == "macro":
        value = value.scoped_configurable_fn()
    return value


def restore_networks(model_dir: str, checkpoint: str = "latest", height: Optional[int] = None,
                     width: Optional[int] = None):
    """Builds a CoopNet run's three networks from its operative config and restores them.

    Returns:
      (depth_net, pose_net, flow_net, info) with info = dict(height, width, step,
      checkpoint, rotation_mode).
    """
    from coopnet_tf import models  # pylint: disable=import-outside-toplevel

    load_run_config(model_dir)
    if query_config("train_and_evaluate.method", "coopnet") == "lee":
        raise ValueError(f"{model_dir} is a Lee et al. run (train_and_evaluate.method = "
                         "'lee'): it has depth and motion nets, no pose or flow net; use "
                         "restore_lee_networks or export_from_model_dir")
    height = int(height or query_config("train_and_evaluate.height", 128))
    width = int(width or query_config("train_and_evaluate.width", 416))
    rotation_mode = query_config("step_options.rotation_mode", "axis_angle")
    path = find_checkpoint(model_dir, checkpoint)
    depth_net = models.build_depth_net(height=height, width=width)
    pose_net = models.build_pose_net(height=height, width=width)
    flow_net = models.build_flow_net(height=height, width=width)
    step = tf.Variable(0, dtype=tf.int64)
    # same object names as the training loop's checkpoint (training/loop.py)
    ckpt = tf.train.Checkpoint(depth_net=depth_net, pose_net=pose_net, flow_net=flow_net,
                               global_step=step)
    ckpt.restore(path).expect_partial()
    info = dict(height=height, width=width, step=int(step.numpy()), checkpoint=path,
                rotation_mode=rotation_mode)
    return depth_net, pose_net, flow_net, info


def run_method(model_dir: str) -> str:
    """The training method of a run ('coopnet' or 'lee', `train_and_evaluate.method`)."""
    load_run_config(model_dir)
    return str(query_config("train_and_evaluate.method", "coopnet"))


def restore_lee_networks(model_dir: str, checkpoint: str = "latest",
                         height: Optional[int] = None, width: Optional[int] = None):
    """Builds a Lee et al. run's depth and motion nets from its operative config and
    restores them.

    Returns:
      (depth_net, motion_net, info) with info as `restore_networks`'s.
    """
    from coopnet_tf import models  # pylint: disable=import-outside-toplevel

    load_run_config(model_dir)
    height = int(height or query_config("train_and_evaluate.height", 128))
    width = int(width or query_config("train_and_evaluate.width", 416))
    path = find_checkpoint(model_dir, checkpoint)
    depth_net = models.build_depth_net(height=height, width=width)
    motion_net = models.build_motion_net(height=height, width=width)
    step = tf.Variable(0, dtype=tf.int64)
    # same object names as the training loop's checkpoint (training/factories.LeeMethod)
    tf.train.Checkpoint(depth_net=depth_net, motion_net=motion_net,
                        global_step=step).restore(path).expect_partial()
    info = dict(height=height, width=width, step=int(step.numpy()), checkpoint=path,
                rotation_mode=query_config("lee.rotation_mode", "axis_angle"))
    return depth_net, motion_net, info


DEFAULT_MODELS = {"coopnet": (specs.EXPORT_DEPTH, specs.EXPORT_POSE, specs.EXPORT_FLOW),
                  "lee": (specs.EXPORT_DEPTH, specs.EXPORT_POSE, specs.EXPORT_OBJECT_MOTION)}


def export_from_model_dir(model_dir: str, export_dir: str, version: Optional[int] = None,
                          checkpoint: str = "latest", height: Optional[int] = None,
                          width: Optional[int] = None,
                          names: Optional[Sequence[str]] = None,
                          overwrite: bool = False) -> Dict[str, str]:
    """Restores a training run and exports its networks (see module docstring); ``names``
    None: the method's `DEFAULT_MODELS`."""
    if run_method(model_dir) == "lee":
        depth_net, motion_net, info = restore_lee_networks(model_dir, checkpoint, height, width)
        return export_models(export_dir, version or max(info["step"], 1), info["height"],
                             info["width"], depth_net,
                             names=names or DEFAULT_MODELS["lee"],
                             rotation_mode=info["rotation_mode"], overwrite=overwrite,
                             motion_net=motion_net)
    names = names or DEFAULT_MODELS["coopnet"]
    depth_net, pose_net, flow_net, info = restore_networks(model_dir, checkpoint, height, width)
    if version is None:
        version = max(info["step"], 1)
    moderator = restore_moderator(info) if specs.EXPORT_MOTION in names else None
    return export_models(export_dir, version, info["height"], info["width"], depth_net,
                         pose_net, flow_net, names, info["rotation_mode"], overwrite,
                         moderator, float(query_config("make_apportionment.flow_threshold",
                                                       1e-3)))


def restore_moderator(info):
    """CC's moderator of the checkpoint ``info["checkpoint"]`` (after `restore_networks`,
    which loaded the run's config), or None when the run has none."""
    from coopnet_tf import models  # pylint: disable=import-outside-toplevel
    names = {n.split("/")[0] for n, _ in tf.train.list_variables(info["checkpoint"])}
    if "moderator_net" not in names:
        return None
    moderator = models.build_moderator_net(height=info["height"], width=info["width"])
    tf.train.Checkpoint(moderator_net=moderator).restore(info["checkpoint"]).expect_partial()
    return moderator


def main(argv):
    from absl import flags, logging  # pylint: disable=import-outside-toplevel
    del argv
    flags_ = flags.FLAGS
    try:
        paths = export_from_model_dir(
            flags_.model_dir, flags_.export_dir, flags_.version, flags_.checkpoint,
            flags_.height, flags_.width,
            [n.strip() for n in flags_.models.split(",") if n.strip()] or None,
            flags_.overwrite)
    except FileExistsError as err:
        raise SystemExit(f"export: {err}") from None
    for name, path in paths.items():
        logging.info("exported %s -> %s", name, path)
        print(f"{name}: {pathlib.Path(path)}")


def _define_flags():
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("model_dir", None, "training directory (checkpoints + operative config)")
    flags.DEFINE_string("export_dir", None, "root of the SavedModels: <export_dir>/<name>/<version>")
    flags.DEFINE_integer("version", None, "version directory (default: the checkpoint's step)")
    flags.DEFINE_bool("overwrite", False, "replace an existing <export_dir>/<name>/<version> "
                      "(default: refuse, so a served version never changes its weights)")
    flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a checkpoint path")
    flags.DEFINE_integer("height", None, "serving input height (default: training height)")
    flags.DEFINE_integer("width", None, "serving input width (default: training width)")
    flags.DEFINE_string("models", "",
                        "comma-separated subset to export (default: depth,pose,flow; a Lee "
                        "et al. run: depth,pose,object_motion; + motion for a CC run)")
    flags.mark_flags_as_required(["model_dir", "export_dir"])


if __name__ == "__main__":
    from absl import app  # pylint: disable=ungrouped-imports
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    app.run(main)
