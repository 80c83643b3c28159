r"""Adam update time: keras.optimizers.Adam vs the project's FusedAdam, one run.

    python benchmarks/optimizer_time.py
    python benchmarks/optimizer_time.py --repeats=10

The variables are those of the CoopNet depth+pose optimizer and flow optimizer at
gin/synthetic.gin's size (64x192; depth and pose ResNet18, flow ResNet18): one `apply` of
each optimizer on fixed random gradients, eager and inside a `tf.function`, the two
optimizer classes interleaved call by call (medians of ``--repeats`` after one warm-up)
so that load drifts affect both alike. Also reports the number of graph operations of
one traced `apply`. Writes ``<output_dir>/optimizer_time_<cpu|gpu>.json``.
"""
import argparse
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402


def _variables():
    from coopnet_tf import models  # pylint: disable=import-outside-toplevel
    depth = models.build_depth_net(height=64, width=192)
    pose = models.build_pose_net(height=64, width=192)
    flow = models.build_flow_net(height=64, width=192, num_layers=18)
    return depth.trainable_variables + pose.trainable_variables + flow.trainable_variables


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output_dir", default="benchmarks/results")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf.training import optimizers  # pylint: disable=import-outside-toplevel
    start = time.time()
    meta = common.run_metadata(argv)
    variables = _variables()
    grads = [tf.random.stateless_normal(v.shape, [0, i]) * 1e-3
             for i, v in enumerate(variables)]
    arms = {"keras.optimizers.Adam": keras.optimizers.Adam, "FusedAdam": optimizers.FusedAdam}
    calls, ops = {}, {}
    for name, cls in arms.items():
        opt = cls(learning_rate=1e-4, name=name.replace(".", "_"))
        opt.build(variables)
        graph_fn = tf.function(lambda o=opt: o.apply(grads, variables), autograph=False)
        ops[name] = len(graph_fn.get_concrete_function().graph.get_operations())
        calls[f"{name}/eager"] = lambda o=opt: o.apply(grads, variables)
        calls[f"{name}/tf.function"] = graph_fn
    times = {k: [] for k in calls}
    for fn in calls.values():
        fn()                                                   # warm-up
    for _ in range(a.repeats):
        for key, fn in calls.items():
            t = time.perf_counter()
            fn()
            _ = float(tf.reduce_sum(variables[0].value))      # wait for the update
            times[key].append(time.perf_counter() - t)
    results, rows = {}, []
    for mode in ("eager", "tf.function"):
        med = {n: statistics.median(times[f"{n}/{mode}"]) for n in arms}
        ratio = med["FusedAdam"] / med["keras.optimizers.Adam"]
        results[mode] = {"median_s": med, "fused_over_keras": ratio,
                         "per_call_s": {n: times[f"{n}/{mode}"] for n in arms}}
        rows.append([mode, f"{med['keras.optimizers.Adam'] * 1e3:.1f}",
                     f"{med['FusedAdam'] * 1e3:.1f}", f"{ratio:.2f}"])
    rows.append(["graph ops of one apply", str(ops["keras.optimizers.Adam"]),
                 str(ops["FusedAdam"]), f"{ops['FusedAdam'] / ops['keras.optimizers.Adam']:.2f}"])
    table = common.markdown_table(
        [f"{len(variables)} variables", "keras Adam (ms)", "FusedAdam (ms)", "fused / keras"],
        rows)
    print(table)
    device = common.device_tag()
    path = common.write_json(
        os.path.join(a.output_dir, f"optimizer_time_{device}.json"),
        {"metadata": common.finish_metadata(meta, start), "config": vars(a),
         "num_variables": len(variables), "graph_ops": ops, "results": results,
         "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
