r"""Runs exported SavedModels (or a training checkpoint) on image files; writes coloured PNGs.

    python -m coopnet_tf.predict --saved_model_dir=exports/synthetic \
        --images a.png b.png c.png --output_dir=predictions
    python -m coopnet_tf.predict --model_dir=runs/synthetic --images a.png b.png --output_dir=out

For every image ``x.png``: ``x_depth.png`` (magma colour map of the inverse depth, near =
bright) and ``x_depth.npy`` (the depth map, metres up to scale). For every consecutive
pair ``(a, b)`` in the order given, when a flow model is available: ``a_flow.png`` (the
Middlebury colour wheel of the flow a -> b). For every consecutive triplet ``(a, b, c)``,
when a Competitive Collaboration ``motion`` model is available: ``b_motion.png`` (b with
the pixels CC's joint mask m* calls moving tinted red, CC Eq. 14) and ``b_motion.npy``
(m*, 1 = static). For every consecutive pair ``(a, b)``, when a Lee et al.
``object_motion`` model is available (or ``--model_dir`` is a Lee run):
``a_object_motion.png`` (magma colour map of |r|, the residual 3-D object motion of a's
pixels towards b, Lee Sec. 3.1; scaled per image to its 95th percentile) and
``a_object_motion.npy`` (r, `[H, W, 3]`, in the depth's units). The intrinsics of both
motion models come from ``--intrinsics`` (normalised fx, fy, cx, cy). Images are resized
to the model's input size; outputs are at that size.

``--saved_model_dir`` is an export root written by `coopnet_tf.export`
(``<dir>/depth/<version>``, ``<dir>/flow/<version>``; the highest version is used) or a
single depth SavedModel directory.
"""
import os
import pathlib
from typing import Callable, List, Optional, Sequence

import numpy as np

from coopnet_tf import run_layout, specs, visualize
from coopnet_tf.images import load_image


def save_png(path: str, rgb: np.ndarray) -> None:
    """Writes float RGB in [0, 1] as an 8-bit PNG."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    Image.fromarray(visualize.to_uint8(rgb)).save(path)


# Monodepth2's normalised KITTI intrinsics (fx/W, fy/H, cx/W, cy/H)
DEFAULT_NORMALISED_INTRINSICS = (0.58, 1.92, 0.5, 0.5)


def motion_overlay(image: np.ndarray, static: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``image [H, W, 3]`` with the pixels where ``static [H, W(, 1)]`` is 0 tinted red."""
    moving = np.asarray(static).reshape(image.shape[:2])[..., None] < 0.5
    red = np.array([1.0, 0.0, 0.0], np.float32)
    return np.where(moving, (1 - alpha) * image + alpha * red, image)


class Predictor:
    """Callable depth (and optional flow / CC motion / Lee object motion) predictors with a
    known input size.

    ``motion_fn(prev, image, next, intrinsics) -> m* [B, H, W, 1]`` (1 = static);
    ``object_motion_fn(image_a, image_b, intrinsics) -> r [B, H, W, 3]``."""

    def __init__(self, depth_fn: Callable, height: int, width: int,
                 flow_fn: Optional[Callable] = None, motion_fn: Optional[Callable] = None,
                 object_motion_fn: Optional[Callable] = None):
        self.depth_fn, self.flow_fn, self.motion_fn = depth_fn, flow_fn, motion_fn
        self.object_motion_fn = object_motion_fn
        self.height, self.width = height, width

    @classmethod
    def from_saved_model(cls, saved_model_dir: str) -> "Predictor":
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        depth_dir = (run_layout.find_saved_model(os.path.join(saved_model_dir, specs.EXPORT_DEPTH))
                     or run_layout.find_saved_model(saved_model_dir))
        if depth_dir is None:
            raise FileNotFoundError(f"no depth SavedModel under {saved_model_dir}")
        depth_sig = tf.saved_model.load(depth_dir).signatures["serving_default"]
        shape = depth_sig.structured_input_signature[1]["image"].shape
        height, width = int(shape[1]), int(shape[2])
        flow_fn = motion_fn = object_motion_fn = None
        flow_sig = _serving_signature(saved_model_dir, specs.EXPORT_FLOW)
        if flow_sig is not None and "intrinsics" not in flow_sig.structured_input_signature[1]:
            flow_fn = lambda a, b: flow_sig(image_a=tf.constant(a), image_b=tf.constant(b))["flow"].numpy()  # noqa: E731
        motion_sig = _serving_signature(saved_model_dir, specs.EXPORT_MOTION)
        if motion_sig is not None:
            motion_fn = lambda p, x, n, k: motion_sig(  # noqa: E731
                image_prev=tf.constant(p), image=tf.constant(x), image_next=tf.constant(n),
                intrinsics=tf.constant(k))["joint"].numpy()
        object_sig = _serving_signature(saved_model_dir, specs.EXPORT_OBJECT_MOTION)
        if object_sig is not None:
            object_motion_fn = lambda a, b, k: object_sig(  # noqa: E731
                image_a=tf.constant(a), image_b=tf.constant(b),
                intrinsics=tf.constant(k))["residual"].numpy()
        return cls(lambda x: depth_sig(image=tf.constant(x))["depth"].numpy(), height, width,
                   flow_fn, motion_fn, object_motion_fn)

    @classmethod
    def from_model_dir(cls, model_dir: str, checkpoint: str = "latest") -> "Predictor":
        from coopnet_tf import export  # pylint: disable=import-outside-toplevel
        flow_fn = motion_fn = object_motion_fn = None
        if export.run_method(model_dir) == "lee":
            depth_net, motion_net, info = export.restore_lee_networks(model_dir, checkpoint)
            objects = export.ObjectMotionServing(depth_net, motion_net, info["height"],
                                                 info["width"], info["rotation_mode"])
            object_motion_fn = lambda a, b, k: objects.serve(a, b, k)["residual"].numpy()  # noqa: E731
        else:
            depth_net, pose_net, flow_net, info = export.restore_networks(model_dir, checkpoint)
            if len(flow_net.inputs) == 1:
                flow = export.FlowServing(flow_net, info["height"], info["width"])
                flow_fn = lambda a, b: flow.serve(a, b)["flow"].numpy()  # noqa: E731
            moderator = export.restore_moderator(info)
            if moderator is not None:
                motion = export.MotionServing(
                    moderator, depth_net, pose_net, flow_net, info["height"], info["width"],
                    info["rotation_mode"],
                    float(export.query_config("make_apportionment.flow_threshold", 1e-3)))
                motion_fn = lambda p, x, n, k: motion.serve(p, x, n, k)["joint"].numpy()  # noqa: E731
        depth = export.DepthServing(depth_net, info["height"], info["width"])
        return cls(lambda x: depth.serve(x)["depth"].numpy(), info["height"], info["width"],
                   flow_fn, motion_fn, object_motion_fn)


def _serving_signature(export_root: str, name: str):
    """The ``serving_default`` signature of the newest ``<export_root>/<name>/<version>``,
    or None when there is none."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    path = run_layout.find_saved_model(os.path.join(export_root, name))
    return None if path is None else tf.saved_model.load(path).signatures["serving_default"]


def predict_files(predictor: Predictor, images: Sequence[str], output_dir: str,
                  intrinsics: Sequence[float] = DEFAULT_NORMALISED_INTRINSICS) -> List[str]:
    """Writes the depth (and flow, motion) PNGs of ``images`` into ``output_dir``; returns
    the paths. ``intrinsics``: normalised (fx, fy, cx, cy) for the motion model."""
    os.makedirs(output_dir, exist_ok=True)
    written = []
    arrays = [load_image(p, predictor.height, predictor.width, resample="bilinear")[0]
              for p in images]
    for path, arr in zip(images, arrays):
        depth = predictor.depth_fn(arr[np.newaxis])[0]
        stem = pathlib.Path(path).stem
        out = os.path.join(output_dir, f"{stem}_depth.png")
        save_png(out, visualize.colorize_depth(depth))
        np.save(os.path.join(output_dir, f"{stem}_depth.npy"), depth[..., 0])
        written.append(out)
    if predictor.flow_fn is not None:
        for (pa, a), b in zip(zip(images, arrays), arrays[1:]):
            flow = predictor.flow_fn(a[np.newaxis], b[np.newaxis])[0]
            out = os.path.join(output_dir, f"{pathlib.Path(pa).stem}_flow.png")
            save_png(out, visualize.flow_to_color(flow))
            written.append(out)
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    w, h = predictor.width, predictor.height
    k = np.array([[[fx * w, 0, cx * w], [0, fy * h, cy * h], [0, 0, 1]]], np.float32)
    if predictor.object_motion_fn is not None:
        for (pa, a), b in zip(zip(images, arrays), arrays[1:]):
            residual = predictor.object_motion_fn(a[np.newaxis], b[np.newaxis], k)[0]
            stem = pathlib.Path(pa).stem
            out = os.path.join(output_dir, f"{stem}_object_motion.png")
            save_png(out, visualize.colorize(np.linalg.norm(residual, axis=-1)))
            np.save(os.path.join(output_dir, f"{stem}_object_motion.npy"), residual)
            written.append(out)
    if predictor.motion_fn is not None:
        for pb, a, b, c in zip(images[1:], arrays, arrays[1:], arrays[2:]):
            joint = predictor.motion_fn(a[None], b[None], c[None], k)[0]
            stem = pathlib.Path(pb).stem
            out = os.path.join(output_dir, f"{stem}_motion.png")
            save_png(out, motion_overlay(b, joint))
            np.save(os.path.join(output_dir, f"{stem}_motion.npy"), joint[..., 0])
            written.append(out)
    return written


def main(argv):
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    images = list(f.images or []) + list(argv[1:])
    if not images:
        raise SystemExit("--images: give at least one image file")
    if bool(f.saved_model_dir) == bool(f.model_dir):
        raise SystemExit("give exactly one of --saved_model_dir and --model_dir")
    predictor = (Predictor.from_saved_model(f.saved_model_dir) if f.saved_model_dir
                 else Predictor.from_model_dir(f.model_dir, f.checkpoint))
    for path in predict_files(predictor, images, f.output_dir,
                              [float(v) for v in f.intrinsics]):
        print(path)


def _define_flags():
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("saved_model_dir", None, "export root (or one depth SavedModel)")
    flags.DEFINE_string("model_dir", None, "training directory (restores a checkpoint)")
    flags.DEFINE_string("checkpoint", "latest", "with --model_dir: 'latest', 'best' or a path")
    flags.DEFINE_multi_string("images", [], "image files (repeatable; extra positional "
                              "arguments are images too)")
    flags.DEFINE_string("output_dir", "predictions", "where the PNGs go")
    flags.DEFINE_list("intrinsics", [str(v) for v in DEFAULT_NORMALISED_INTRINSICS],
                      "motion model: normalised fx, fy, cx, cy (fx / width, ...)")


if __name__ == "__main__":
    from absl import app
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    app.run(main)
