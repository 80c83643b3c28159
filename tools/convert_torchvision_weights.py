"""Converts torchvision ResNet ImageNet weights to the .npz that coopnet-tf loads.

Needs PyTorch and torchvision (not dependencies of coopnet-tf; run it wherever you have
them). Either converts a .pth you already have, or lets torchvision download its
IMAGENET1K_V1 weights (the ones Monodepth2 starts from):

  python tools/convert_torchvision_weights.py --num_layers=18 \
      --output=~/.cache/coopnet_tf/pretrained/resnet18.npz
  python tools/convert_torchvision_weights.py --num_layers=50 --pth=resnet50-0676ba61.pth \
      --output=~/.cache/coopnet_tf/pretrained/resnet50.npz

Then build with `pretrained_weights="imagenet"` (looks in $COOPNET_PRETRAINED_DIR, then
~/.cache/coopnet_tf/pretrained/) or `pretrained_weights="/path/to/resnet18.npz"`.

Format: an uncompressed .npz, one float32 array per torchvision `state_dict` entry under
its torchvision name (OIHW conv kernels, BN weight/bias/running_mean/running_var);
`fc.*` and `num_batches_tracked` are dropped. The Keras loader transposes and tiles.
"""
import pathlib
from typing import Dict, Mapping

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS


def _define_flags():
    # Defined only when run as a script, so tests can import convert_state_dict.
    flags.DEFINE_enum("num_layers", "18", ["18", "34", "50"], "ResNet depth.")
    flags.DEFINE_string("pth", None, "A torchvision ResNet state_dict (.pth). If unset, "
                        "torchvision downloads its IMAGENET1K_V1 weights (needs network).")
    flags.DEFINE_string("output", None, "Output .npz path.")
    flags.mark_flag_as_required("output")


def convert_state_dict(state_dict: Mapping) -> Dict[str, np.ndarray]:
    """torchvision `state_dict` (tensors or arrays) -> {name: float32 array}.

    Strips a "module." prefix (DataParallel checkpoints) and unwraps
    {"state_dict": ...} / {"model": ...} containers; drops fc.* and num_batches_tracked.
    """
    for key in ("state_dict", "model"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
    out = {}
    for name, value in state_dict.items():
        name = name[len("module."):] if name.startswith("module.") else name
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        out[name] = np.asarray(value, np.float32)
    return out


def _check(arrays: Dict[str, np.ndarray], num_layers: int) -> None:
    """Compares names and shapes with what the coopnet-tf encoder reads, when importable."""
    try:
        from coopnet_tf.models import resnet
    except ImportError:  # converting on a machine without TensorFlow
        logging.warning("coopnet_tf not importable: names and shapes not checked")
        return
    expected = resnet.torchvision_state_dict_shapes(num_layers)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    wrong = [k for k in expected if k in arrays and tuple(arrays[k].shape) != expected[k]]
    if missing or extra or wrong:
        raise ValueError(f"not a torchvision ResNet{num_layers}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, wrong shapes {wrong[:5]}")


def main(argv):
    del argv
    import torch  # noqa: WPS433 (optional dependency, only for this tool)

    num_layers = int(FLAGS.num_layers)
    if FLAGS.pth:
        state_dict = torch.load(FLAGS.pth, map_location="cpu", weights_only=True)
    else:
        import torchvision

        builder = getattr(torchvision.models, f"resnet{num_layers}")
        state_dict = builder(weights="IMAGENET1K_V1").state_dict()
    arrays = convert_state_dict(state_dict)
    _check(arrays, num_layers)
    output = pathlib.Path(FLAGS.output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, **arrays)
    total = sum(a.size for a in arrays.values())
    print(f"wrote {output}: {len(arrays)} arrays, {total:,} values (ResNet{num_layers})")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
