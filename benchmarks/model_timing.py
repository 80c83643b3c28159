"""Forward and forward+backward time of each network (baseline for performance work).

  python benchmarks/model_timing.py --height=128 --width=416 --batch_size=4 \
      --output_json=benchmarks/results/model_timing_cpu.json [--jit]

Each model is built with random init (the production factories), then timed inside a
`tf.function` (XLA with --jit): "forward" = inference call (training=False);
"fwd+bwd" = training-mode call, a scalar loss (mean of every output) and the gradients
of all trainable variables (no optimizer update). Reports the median and min over
--iters timed calls after --warmup untimed ones (the first includes tracing).
Not part of the test suite.
"""
import json
import math
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("height", 128, "Input height (multiple of 32).")
flags.DEFINE_integer("width", 416, "Input width (multiple of 32).")
flags.DEFINE_integer("batch_size", 4, "Batch size.")
flags.DEFINE_integer("warmup", 2, "Untimed calls before timing.")
flags.DEFINE_integer("iters", 5, "Timed calls.")
flags.DEFINE_bool("jit", False, "jit_compile=True (XLA) for the timed functions.")
flags.DEFINE_list("models", "depth,pose,flow,flow_residual", "Models to time.")
flags.DEFINE_string("output_json", None, "Write the results here as JSON.")
FLAGS = flags.FLAGS


def _builders():
    from coopnet_tf import models

    return {
        "depth": ("depth R18", lambda h, w: models.build_depth_net(height=h, width=w)),
        "pose": ("pose R18", lambda h, w: models.build_pose_net(height=h, width=w)),
        "flow": ("flow R50", lambda h, w: models.build_flow_net(height=h, width=w)),
        "flow_residual": ("flow R50 residual",
                          lambda h, w: models.build_flow_net(height=h, width=w, residual=True)),
    }


def _time(fn, args, warmup, iters):
    for _ in range(warmup):
        _sync(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        _sync(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def _sync(result):
    import tensorflow as tf

    for t in tf.nest.flatten(result):
        t.numpy()


def time_model(model, batch_size, warmup, iters, jit):
    """Returns dict of timings (seconds) for one model."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.RandomState(0)
    inputs = [tf.constant(rng.uniform(0, 1, (batch_size,) + tuple(t.shape[1:])).astype(np.float32))
              for t in model.inputs]
    if len(inputs) == 1:
        inputs = inputs[0]
    variables = model.trainable_variables

    @tf.function(jit_compile=jit)
    def forward(x):
        return model(x, training=False)

    @tf.function(jit_compile=jit)
    def forward_backward(x):
        with tf.GradientTape() as tape:
            outputs = tf.nest.flatten(model(x, training=True))
            loss = tf.add_n([tf.reduce_mean(o) for o in outputs])
        grads = tape.gradient(loss, variables)
        return loss, tf.add_n([tf.reduce_sum(g) for g in grads])

    fwd = _time(forward, (inputs,), warmup, iters)
    fb = _time(forward_backward, (inputs,), warmup, iters)
    return {
        "forward_median_s": statistics.median(fwd),
        "forward_min_s": min(fwd),
        "fwd_bwd_median_s": statistics.median(fb),
        "fwd_bwd_min_s": min(fb),
        "fwd_bwd_all_s": fb,
    }


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    builders = _builders()
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    results = {
        "height": FLAGS.height, "width": FLAGS.width, "batch_size": FLAGS.batch_size,
        "jit": FLAGS.jit, "warmup": FLAGS.warmup, "iters": FLAGS.iters, "device": device,
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "tensorflow": tf.__version__, "models": {},
    }
    print(f"{FLAGS.height}x{FLAGS.width}, batch {FLAGS.batch_size}, {device} "
          f"({os.cpu_count()} CPUs), jit={FLAGS.jit}, median of {FLAGS.iters} after "
          f"{FLAGS.warmup} warm-up")
    print(f"{'model':<20}{'params':>12}{'forward ms':>12}{'fwd+bwd ms':>12}{'(min ms)':>10}")
    for key in FLAGS.models:
        label, build = builders[key]
        model = build(FLAGS.height, FLAGS.width)
        params = sum(math.prod(v.shape) for v in model.trainable_variables)
        r = time_model(model, FLAGS.batch_size, FLAGS.warmup, FLAGS.iters, FLAGS.jit)
        r.update(label=label, trainable_params=params)
        results["models"][key] = r
        print(f"{label:<20}{params:>12,}{1e3 * r['forward_median_s']:>12.1f}"
              f"{1e3 * r['fwd_bwd_median_s']:>12.1f}{1e3 * r['fwd_bwd_min_s']:>10.1f}", flush=True)
        del model
        keras.backend.clear_session()
    if FLAGS.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output_json)), exist_ok=True)
        with open(FLAGS.output_json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {FLAGS.output_json}")


if __name__ == "__main__":
    app.run(main)
