"""Cost of one P² quantile update relative to a training step (issue 5: target <= 2 %).

  python benchmarks/p2_cost.py --output_json=benchmarks/results/p2_cost_cpu.json
  python benchmarks/p2_cost.py --step_seconds=4.2      # skip the network timing

Times, inside `tf.function`, with the default `P2Quantiles` layer (Δ: 4 probabilities,
Δflow x/y: 2 each = 8 estimators; 4096 samples per variable):

* ``p2_loop``: the sequential P² loop alone on 4096 samples x 8 estimators;
* ``p2_update``: the whole update as the training step runs it: uniform subsample of the
  non-occluded values of Δ, Δflow^x, Δflow^y at [B, S, H, W] = [4, 2, 128, 416] (top-k of
  hashed keys) + the P² loop + the variable writes;
* ``coopnet_apportion``: the whole `coopnet` strategy call (Δ, Δflow, the update, masks,
  Eq. 11 weights, statistics, histograms) — everything apportionment adds to a step;

and the denominator, a training step's network work at 128x416 batch 4 with random
init: forward+backward of depth (R18) once, pose (R18) twice (two sources) and flow (R50)
four times (forward and backward flow of two sources) — the default CoopNet step —
and the minimal "each network once" variant. Pass --step_seconds to use a measured
training step instead. Medians over --iters calls after warm-up. Not part of the tests.
"""
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("height", 128, "Image height.")
flags.DEFINE_integer("width", 416, "Image width.")
flags.DEFINE_integer("batch_size", 4, "Batch size.")
flags.DEFINE_integer("num_sources", 2, "Source frames per target.")
flags.DEFINE_integer("sample_size", 4096, "P² samples per variable per step.")
flags.DEFINE_integer("iters", 20, "Timed calls (P² parts).")
flags.DEFINE_integer("step_iters", 3, "Timed calls (network step).")
flags.DEFINE_float("step_seconds", None, "Use this training-step time instead of timing "
                   "the networks.")
flags.DEFINE_bool("outer_jit", False, "Also XLA-compile the outer functions.")
flags.DEFINE_string("output_json", None, "Write the results here as JSON.")
FLAGS = flags.FLAGS


def _sync(x):
    import tensorflow as tf
    for t in tf.nest.flatten(x):
        if hasattr(t, "numpy"):
            t.numpy()


def _median_time(fn, args=(), warmup=2, iters=10):
    for _ in range(warmup):
        _sync(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        _sync(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def _time_p2(jit_compile):
    import numpy as np
    import tensorflow as tf
    from coopnet_tf.losses import apportion
    from coopnet_tf.losses import quantile as q_lib

    rng = np.random.default_rng(0)
    b, s, h, w = FLAGS.batch_size, FLAGS.num_sources, FLAGS.height, FLAGS.width
    shape = [b, s, h, w, 1]
    delta = tf.constant(rng.normal(0.0, 0.05, shape), tf.float32)
    dfx = tf.constant(rng.standard_t(3, shape) * 0.1, tf.float32)
    dfy = tf.constant(rng.standard_t(3, shape) * 0.1, tf.float32)
    valid = tf.constant(rng.random(shape) > 0.15)
    out = {}

    layer = q_lib.P2Quantiles(sample_size=FLAGS.sample_size, seed=0, jit_compile=jit_compile)
    e = layer.num_estimators
    x = tf.constant(rng.normal(size=[FLAGS.sample_size, e]))
    act = tf.ones([FLAGS.sample_size, e], tf.bool)
    probs = tf.constant(layer._est_prob, tf.float64)
    absorb = q_lib.p2_absorb_fn(jit_compile)

    @tf.function
    def loop_only():
        # a fresh initialised state each call: the regular (steady-state) path
        st = q_lib.p2_absorb(q_lib.p2_initial_state(e), x[:5], act[:5], probs, compact=False)
        return absorb(st, x, act, probs, compact=False)

    out["p2_loop"] = _median_time(loop_only, iters=FLAGS.iters)

    values = {"delta": delta, "delta_flow_x": dfx, "delta_flow_y": dfy}
    update = tf.function(lambda v, m: layer.update(v, m), jit_compile=FLAGS.outer_jit)
    out["p2_update"] = _median_time(update, (values, valid), iters=FLAGS.iters)

    strategy = apportion.make_strategy("coopnet", sample_size=FLAGS.sample_size,
                                       jit_compile=jit_compile)
    flow_r = tf.constant(rng.normal(0, 5, [b, s, h, w, 2]), tf.float32)
    flow_o = flow_r + tf.constant(rng.normal(0, 0.5, [b, s, h, w, 2]), tf.float32)
    phi_d = tf.constant(rng.uniform(0, 0.3, shape), tf.float32)
    phi_f = phi_d - delta
    inputs = apportion.ApportionInputs(phi_d, phi_f, phi_d + 0.05, flow_r, flow_o,
                                       tf.cast(valid, tf.float32))
    strategy.quantile_layer.update(values, valid)
    strategy.end_epoch()

    @tf.function(jit_compile=FLAGS.outer_jit)
    def apportion_step(inp):
        a = strategy(inp, use_quantiles=tf.constant(True), update_quantiles=tf.constant(True))
        return a.rigid_mask, a.flow_weight, a.stats

    out["coopnet_apportion"] = _median_time(apportion_step, (inputs,), iters=FLAGS.iters)
    return out


def _time_networks():
    import tensorflow as tf
    from coopnet_tf import models

    b, h, w = FLAGS.batch_size, FLAGS.height, FLAGS.width
    depth = models.build_depth_net(height=h, width=w)
    pose = models.build_pose_net(height=h, width=w)
    flow = models.build_flow_net(height=h, width=w)
    img = tf.random.uniform([b, h, w, 3])
    pair = tf.random.uniform([b, h, w, 6])
    variables = depth.trainable_variables + pose.trainable_variables + flow.trainable_variables

    def make(n_pose, n_flow):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.add_n([tf.reduce_mean(d) for d in depth(img, training=True)])
                for _ in range(n_pose):
                    loss += tf.reduce_mean(pose(pair, training=True))
                for _ in range(n_flow):
                    loss += tf.add_n([tf.reduce_mean(f) for f in flow(pair, training=True)])
            return tape.gradient(loss, variables)
        return step

    return {
        "step_default": _median_time(make(2, 4), warmup=1, iters=FLAGS.step_iters),
        "step_each_network_once": _median_time(make(1, 1), warmup=1, iters=FLAGS.step_iters),
    }


def main(_):
    import tensorflow as tf

    results = {
        "height": FLAGS.height, "width": FLAGS.width, "batch_size": FLAGS.batch_size,
        "num_sources": FLAGS.num_sources, "sample_size": FLAGS.sample_size,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "tensorflow": tf.__version__, "load_average_1min_start": os.getloadavg()[0],
        "timings_s": {},
    }
    for jit in (True, False):
        for k, (med, mn) in _time_p2(jit).items():
            results["timings_s"][f"{k}{'' if jit else '_nojit'}"] = {"median": med, "min": mn}
    if FLAGS.step_seconds:
        steps = {"step_given": (FLAGS.step_seconds, FLAGS.step_seconds)}
    else:
        steps = _time_networks()
    for k, (med, mn) in steps.items():
        results["timings_s"][k] = {"median": med, "min": mn}
    results["load_average_1min_end"] = os.getloadavg()[0]

    rows = []
    denominators = {k: v["median"] for k, v in results["timings_s"].items()
                    if k.startswith("step")}
    for k, v in results["timings_s"].items():
        if k.startswith("step"):
            continue
        ratios = {d: 100.0 * v["median"] / t for d, t in denominators.items()}
        rows.append((k, v["median"], v["min"], ratios))
    results["percent_of_step"] = {r[0]: r[3] for r in rows}

    dnames = list(denominators)
    print(f"device={results['device']} cpus={results['cpu_count']} "
          f"load(1min)={results['load_average_1min_start']:.1f}->"
          f"{results['load_average_1min_end']:.1f}")
    for d, t in denominators.items():
        print(f"  denominator {d}: {t * 1e3:.1f} ms (median)")
    header = f"{'part':28s} {'median ms':>10s} {'min ms':>8s} " + " ".join(
        f"{'% of ' + d:>28s}" for d in dnames)
    print(header)
    for name, med, mn, ratios in rows:
        print(f"{name:28s} {med * 1e3:10.2f} {mn * 1e3:8.2f} " + " ".join(
            f"{ratios[d]:28.2f}" for d in dnames))
    if FLAGS.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output_json)), exist_ok=True)
        with open(FLAGS.output_json, "w") as f:
            json.dump(results, f, indent=2)
        print("wrote", FLAGS.output_json)


if __name__ == "__main__":
    app.run(main)
