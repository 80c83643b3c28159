r"""Runs exported SavedModels (or a training checkpoint) on image files; writes coloured PNGs.

    python -m coopnet_tf.predict --saved_model_dir=exports/synthetic \
        --images a.png b.png c.png --output_dir=predictions
    python -m coopnet_tf.predict --model_dir=runs/synthetic --images a.png b.png --output_dir=out

For every image ``x.png``: ``x_depth.png`` (magma colour map of the inverse depth, near =
bright) and ``x_depth.npy`` (the depth map, metres up to scale). For every consecutive
pair ``(a, b)`` in the order given, when a flow model is available: ``a_flow.png`` (the
Middlebury colour wheel of the flow a -> b). Images are resized to the model's input size;
outputs are at that size.

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


class Predictor:
    """Callable depth (and optional flow) predictors with a known input size."""

    def __init__(self, depth_fn: Callable, height: int, width: int,
                 flow_fn: Optional[Callable] = None):
        self.depth_fn, self.flow_fn = depth_fn, flow_fn
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
        flow_fn = None
        flow_dir = run_layout.find_saved_model(os.path.join(saved_model_dir, specs.EXPORT_FLOW))
        if flow_dir is not None:
            flow_sig = tf.saved_model.load(flow_dir).signatures["serving_default"]
            if "intrinsics" not in flow_sig.structured_input_signature[1]:
                flow_fn = lambda a, b: flow_sig(image_a=tf.constant(a), image_b=tf.constant(b))["flow"].numpy()  # noqa: E731
        return cls(lambda x: depth_sig(image=tf.constant(x))["depth"].numpy(), height, width,
                   flow_fn)

    @classmethod
    def from_model_dir(cls, model_dir: str, checkpoint: str = "latest") -> "Predictor":
        from coopnet_tf import export  # pylint: disable=import-outside-toplevel
        depth_net, pose_net, flow_net, info = export.restore_networks(model_dir, checkpoint)
        depth = export.DepthServing(depth_net, info["height"], info["width"])
        flow_fn = None
        if len(flow_net.inputs) == 1:
            flow = export.FlowServing(flow_net, info["height"], info["width"])
            flow_fn = lambda a, b: flow.serve(a, b)["flow"].numpy()  # noqa: E731
        return cls(lambda x: depth.serve(x)["depth"].numpy(), info["height"], info["width"],
                   flow_fn)


def predict_files(predictor: Predictor, images: Sequence[str], output_dir: str) -> List[str]:
    """Writes the depth (and flow) PNGs of ``images`` into ``output_dir``; returns the paths."""
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
    for path in predict_files(predictor, images, f.output_dir):
        print(path)


def _define_flags():
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("saved_model_dir", None, "export root (or one depth SavedModel)")
    flags.DEFINE_string("model_dir", None, "training directory (restores a checkpoint)")
    flags.DEFINE_string("checkpoint", "latest", "with --model_dir: 'latest', 'best' or a path")
    flags.DEFINE_multi_string("images", [], "image files (repeatable; extra positional "
                              "arguments are images too)")
    flags.DEFINE_string("output_dir", "predictions", "where the PNGs go")


if __name__ == "__main__":
    from absl import app
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    app.run(main)
