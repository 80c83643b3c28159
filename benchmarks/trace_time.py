r"""Tracing time of the training steps with and without AutoGraph, one run.

    python benchmarks/trace_time.py                          # coopnet and lee, 2 rounds
    python benchmarks/trace_time.py --methods=coopnet --rounds=3

What a user pays before the first training step (and each test that traces a step): the
Python tracing of the step into a graph. The loop's step functions are built with
``tf.function(..., autograph=False)``: the steps have no tensor-dependent Python control
flow (every branch on a tensor is an explicit `tf.cond` / `tf.where`), so AutoGraph's
source-to-source conversion of every function they call is pure cost.

Method: each (method, autograph on/off) trace runs in a fresh interpreter (AutoGraph caches
its conversions per process, so only a first trace shows its cost, as in a new training
run), in interleaved rounds (on, off, on, off, ...) so that machine load drifts affect
both arms alike. A child builds the tests' tiny networks (64x64, ResNet10 encoders, thin
decoders: tracing cost is per operation, not per pixel) and traces two phases of the step
(CoopNet: burn-in, then post-burn-in with the quantile update; Lee: phase 1, then phase
3), reporting each trace's seconds and the graph's operation-type histogram. The table
gives the medians per arm, their ratio, and whether both arms built identical graphs
(same operation types and counts). Writes ``<output_dir>/trace_time_<cpu|gpu>.json``.
"""
import argparse
import collections
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

SIZE = 64
SMALL = (4, 8, 8, 16, 16)
METHODS = ("coopnet", "lee")


def _batch(tf, method):
    from coopnet_tf import specs  # pylint: disable=import-outside-toplevel
    rng = tf.random.Generator.from_seed(0)
    frames = rng.uniform((1, 3, SIZE, SIZE, 3))
    K = tf.constant([[[40.0, 0.0, 31.5], [0.0, 40.0, 31.5], [0.0, 0.0, 1.0]]])
    batch = {specs.KEY_FRAMES: frames, specs.KEY_FRAMES_AUG: frames, specs.KEY_INTRINSICS: K}
    if method == "lee":
        batch[specs.KEY_BOXES] = tf.constant([[[[20.0, 20.0, 30.0, 30.0]]] * 3])
        batch[specs.KEY_BOX_MASK] = tf.ones((1, 3, 1))
    return batch


def _step_and_phases(method):
    """The step (tiny networks, the library's classes) and the two phases to trace."""
    import keras  # pylint: disable=import-outside-toplevel

    from coopnet_tf import models  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import lee_step  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import step as step_lib  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(0)
    depth = models.build_depth_net(height=SIZE, width=SIZE, num_layers=10,
                                   decoder_channels=SMALL)
    if method == "coopnet":
        step = step_lib.CoopTrainStep(
            depth, models.build_pose_net(height=SIZE, width=SIZE, num_layers=10),
            models.build_flow_net(height=SIZE, width=SIZE, num_layers=10,
                                  decoder_channels=SMALL),
            keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4),
            apportion.make_strategy("coopnet", sample_size=256), global_batch_size=1)
        phases = {"burn_in": step_lib.Phase(burn_in=True),
                  "post_burn_in": step_lib.Phase(update_quantiles=True)}
    else:
        step = lee_step.LeeTrainStep(
            depth, models.build_motion_net(height=SIZE, width=SIZE, num_layers=10,
                                           decoder_channels=SMALL),
            keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4), global_batch_size=1)
        phases = {"phase1": step_lib.Phase(stage=lee_step.PHASE1),
                  "phase3": step_lib.Phase(stage=lee_step.PHASE3)}
    step.build()
    return step, phases


def child(method: str, autograph: bool) -> dict:
    """Traces the two phases in this (fresh) interpreter; returns seconds and op counts."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    step, phases = _step_and_phases(method)
    batch = _batch(tf, method)
    seed = tf.constant([0, 0], tf.int64)
    out = {}
    for name, phase in phases.items():
        fn = tf.function(lambda b, s, p=phase: step.train_step(b, p, s), autograph=autograph)
        start = time.perf_counter()
        graph = fn.get_concrete_function(batch, seed).graph
        seconds = time.perf_counter() - start
        ops = collections.Counter(op.type for op in graph.get_operations())
        out[name] = {"seconds": seconds, "num_ops": sum(ops.values()), "op_types": dict(ops)}
    return out


def _run_child(method: str, autograph: bool) -> dict:
    return common.json_from_child([__file__, "--_child", method,
                                   f"--_autograph={int(autograph)}"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output_dir", default="benchmarks/results")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_autograph", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:                                          # pylint: disable=protected-access
        print(json.dumps(child(a._child, bool(a._autograph))))   # pylint: disable=protected-access
        return
    methods = [m for m in a.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown {m!r} (known: {', '.join(METHODS)})")
    start = time.time()
    meta = common.run_metadata(argv)
    runs = {m: {"on": [], "off": []} for m in methods}
    for r in range(a.rounds):
        for m in methods:
            for arm in ("on", "off"):
                t = time.time()
                runs[m][arm].append(_run_child(m, arm == "on"))
                print(f"[trace_time] round {r + 1}/{a.rounds} {m} autograph {arm}: "
                      + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in
                                  runs[m][arm][-1].items())
                      + f" ({time.time() - t:.0f} s with start-up)", flush=True)
    rows, summary = [], {}
    for m in methods:
        for phase in runs[m]["on"][0]:
            med = {arm: statistics.median(x[phase]["seconds"] for x in runs[m][arm])
                   for arm in ("on", "off")}
            same = all(x[phase]["op_types"] == runs[m]["on"][0][phase]["op_types"]
                       for arm in ("on", "off") for x in runs[m][arm])
            summary[f"{m}/{phase}"] = {
                "autograph_on_s": med["on"], "autograph_off_s": med["off"],
                "off_over_on": med["off"] / med["on"], "identical_graphs": same,
                "num_ops": runs[m]["on"][0][phase]["num_ops"],
                "per_round": {arm: [x[phase]["seconds"] for x in runs[m][arm]]
                              for arm in ("on", "off")}}
            rows.append([m, phase, str(summary[f"{m}/{phase}"]["num_ops"]), f"{med['on']:.1f}",
                         f"{med['off']:.1f}", f"{med['off'] / med['on']:.2f}",
                         "yes" if same else "NO"])
    table = common.markdown_table(["method", "phase (traced in order)", "ops",
                                   "AutoGraph on (s)", "off (s)", "off / on",
                                   "identical graphs"], rows)
    print(table)
    meta = common.finish_metadata(meta, start)
    device = common.device_tag()
    path = common.write_json(os.path.join(a.output_dir, f"trace_time_{device}.json"),
                             {"metadata": meta, "config": vars(a) | {"size": SIZE},
                              "results": summary, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
