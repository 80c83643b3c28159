"""`python -m coopnet_tf.models --summary [--height=128 --width=416]`.

Builds the networks (random init) and prints, per model, the trainable and
non-trainable parameter counts and the output shapes.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_bool("summary", False, "Print parameter counts and output shapes.")
flags.DEFINE_integer("height", 128, "Input height (multiple of 32).")
flags.DEFINE_integer("width", 416, "Input width (multiple of 32).")
flags.DEFINE_bool("layers", False, "Also print keras model.summary() of each model.")
FLAGS = flags.FLAGS


def _count(variables) -> int:
    total = 0
    for v in variables:
        n = 1
        for d in v.shape:
            n *= int(d)
        total += n
    return total


def summary_rows(height: int, width: int):
    """[(name, trainable, non_trainable, input shapes, output shapes, model)]."""
    from coopnet_tf import models

    specs = [
        ("depth R18", models.build_depth_net, {}),
        ("pose R18 (2 frames)", models.build_pose_net, {}),
        ("flow R50 (direct)", models.build_flow_net, {}),
        ("flow R50 (residual)", models.build_flow_net, {"residual": True}),
        ("motion R18 (DAM)", models.build_motion_net, {}),
        ("motion R18 (no DAM)", models.build_motion_net, {"dam": False}),
    ]
    rows = []
    for label, fn, kwargs in specs:
        model = fn(height=height, width=width, **kwargs)
        outputs = model.outputs if isinstance(model.outputs, list) else [model.outputs]
        rows.append((
            label,
            _count(model.trainable_weights),
            _count(model.non_trainable_weights),
            [tuple(t.shape) for t in model.inputs],
            [tuple(t.shape) for t in outputs],
            model,
        ))
    return rows


def main(argv):
    del argv
    if not FLAGS.summary:
        print("nothing to do: pass --summary (see --help)")
        return
    try:
        rows = summary_rows(FLAGS.height, FLAGS.width)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print(f"Networks at {FLAGS.height}x{FLAGS.width} (batch dimension None):")
    print(f"{'model':<22}{'trainable':>14}{'non-trainable':>15}  inputs -> outputs")
    for label, trainable, non_trainable, ins, outs, model in rows:
        print(f"{label:<22}{trainable:>14,}{non_trainable:>15,}  "
              f"{', '.join(map(str, ins))} -> {', '.join(map(str, outs))}")
        if FLAGS.layers:
            model.summary()
    print("trainable counts include BN gamma/beta; non-trainable = BN moving mean/variance.")


if __name__ == "__main__":
    app.run(main)
