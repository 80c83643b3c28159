r"""Median time of the post-burn-in CoopNet training step of the synthetic configuration.

    python benchmarks/step_time.py                        # this checkout
    python benchmarks/step_time.py --repo=/path/to/old    # another checkout (an A/B of two commits)
    python benchmarks/step_time.py --deterministic_ops    # with op determinism on

64x192, batch 4, random initialisation: depth and pose nets of the factories, the flow
ResNet18 with gin/synthetic.gin's decoder channels, the coopnet apportionment, one
`tf.function` over `CoopTrainStep.train_step` (post-burn-in phase, quantile update on) on a
fixed random batch. Prints the first (traced) call's time and the median of ``--steps``
further calls. Run two checkouts back to back on the same machine to compare code, not
machines (docs/training.md, "Synthetic run").
"""
import argparse
import os
import statistics
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--deterministic_ops", action="store_true")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, a.repo)
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from coopnet_tf import models, specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import step as step_lib  # pylint: disable=import-outside-toplevel
    if a.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    height, width, batch_size = 64, 192, 4
    tf.keras.utils.set_random_seed(0)
    step = step_lib.CoopTrainStep(
        models.build_depth_net(height=height, width=width),
        models.build_pose_net(height=height, width=width),
        models.build_flow_net(height=height, width=width, num_layers=18,
                              decoder_channels=(8, 16, 32, 64, 128)),
        tf.keras.optimizers.Adam(1e-4), tf.keras.optimizers.Adam(1e-4),
        apportion.make_strategy("coopnet"), weights=step_lib.LossWeights(),
        options=step_lib.StepOptions(), global_batch_size=batch_size)
    step.build()
    frames = tf.random.stateless_uniform([batch_size, 3, height, width, 3], seed=[1, 2])
    intrinsics = tf.constant([[[0.58 * width, 0, 0.5 * width], [0, 1.92 * height, 0.5 * height],
                               [0, 0, 1]]] * batch_size, tf.float32)
    batch = {specs.KEY_FRAMES: frames, specs.KEY_FRAMES_AUG: frames,
             specs.KEY_INTRINSICS: intrinsics}
    phase = step_lib.Phase(burn_in=False, update_quantiles=True)
    fn = tf.function(lambda b, s: step.train_step(b, phase, s))

    def timed(i):
        start = time.perf_counter()
        out = fn(batch, tf.constant([0, i], tf.int64))
        tf.nest.map_structure(lambda x: x.numpy(), out)
        return time.perf_counter() - start

    first = timed(0)
    times = [timed(i + 1) for i in range(a.steps)]
    print(f"repo {a.repo}: first call {first:.1f} s, median step {statistics.median(times):.2f} s "
          f"over {a.steps} ({', '.join(f'{t:.2f}' for t in times)}); deterministic_ops="
          f"{a.deterministic_ops}")


if __name__ == "__main__":
    main()
