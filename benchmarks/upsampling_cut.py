r"""Before/after, in one run, of the step's depth upsampling cut (docs/performance.md).

    python benchmarks/upsampling_cut.py --height=128 --width=416 --batch_size=4

`CoopTrainStep.forward` upsamples every scale's disparity to H x W and converts it to
depth. With L_gc on, the depth net also runs on the two sources, whose depths are used
only at scale 0 (unless ``gc_all_scales``). Before: all 3B disparities upsampled at every
scale; after: the sources' only at scale 0. Times forward + backward (gradient w.r.t. the
disparities) of both variants in interleaved calls, medians, and checks that the target
depths are identical.
"""
import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=416)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args(argv)
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf.models import disp_to_depth  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import step as step_lib  # pylint: disable=import-outside-toplevel
    b, h, w = a.batch_size, a.height, a.width
    disps = [tf.random.uniform([3 * b, h // 2 ** k, w // 2 ** k, 1], 0.01, 1.0) for k in range(4)]

    def depths(source_scales):
        return [disp_to_depth(step_lib._resize(d if k < source_scales else d[:b], h, w),  # noqa
                              0.1, 100.0)[1] for k, d in enumerate(disps)]

    def make(source_scales):
        @tf.function
        def fn():
            with tf.GradientTape() as tape:
                tape.watch(disps)
                out = depths(source_scales)
                loss = tf.add_n([tf.reduce_mean(d[:b]) for d in out]) + tf.reduce_mean(out[0])
            return [d[:b] for d in out], tape.gradient(loss, disps)
        return fn

    before, after = make(4), make(1)
    d_before, d_after = before()[0], after()[0]
    identical = all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(d_before, d_after))
    times = {"before": [], "after": []}
    for _ in range(a.iters):
        for name, fn in (("before", before), ("after", after)):
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fn())
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{h}x{w} batch {b}: before {med['before'] * 1e3:.1f} ms, after "
          f"{med['after'] * 1e3:.1f} ms (x{med['before'] / med['after']:.2f}); target depths "
          f"identical: {identical}; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
