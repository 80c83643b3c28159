r"""Median time of the post-burn-in CoopNet training step of the synthetic configuration.

    python benchmarks/step_time.py                        # this checkout
    python benchmarks/step_time.py --repo=/path/to/old    # another checkout (an A/B of two commits)
    python benchmarks/step_time.py --deterministic_ops    # with the trainer's determinism on
    python benchmarks/step_time.py --compare_determinism --rounds=2   # the A/B, one run

64x192, batch 4, random initialisation: depth and pose nets of the factories, the flow
ResNet18 with gin/synthetic.gin's decoder channels, the coopnet apportionment, one
`tf.function` over `CoopTrainStep.train_step` (post-burn-in phase, quantile update on) on a
fixed random batch. Prints the first (traced) call's time and the median of ``--steps``
further calls. Run two checkouts back to back on the same machine to compare code, not
machines (docs/training.md, "Synthetic run").

``--deterministic_ops``: what ``train_and_evaluate.deterministic_ops = True`` does
(`training.determinism.set_op_determinism`: op determinism and Grappler's memory optimizer
off). ``--compare_determinism``: fresh interpreters with the switch off and on, in ABBA
order (off, on, on, off, ...) so that a steady drift of the load hits both alike; a table
of the medians (first call, step, peak resident memory of the process) and their ratios,
written to ``<output_dir>/determinism_cost_<cpu|gpu>.json``.
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import time
from typing import Optional


def child(repo: str, steps: int, deterministic_ops: bool) -> dict:
    """One measurement in this interpreter; returns seconds and peak memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, repo)
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from coopnet_tf import models, specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import step as step_lib  # pylint: disable=import-outside-toplevel
    if deterministic_ops:
        try:
            from coopnet_tf.training import determinism  # pylint: disable=import-outside-toplevel
            determinism.set_op_determinism(True)
        except ImportError:            # an old checkout (--repo): op determinism only
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
    times = [timed(i + 1) for i in range(steps)]
    return {"first_call_s": first, "step_median_s": statistics.median(times), "steps_s": times,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "deterministic_ops": deterministic_ops}


def compare_determinism(repo: str, steps: int, rounds: int,
                        output_dir: Optional[str] = None, log=print) -> dict:
    """The A/B of the determinism switch (module docstring); writes
    ``<output_dir>/determinism_cost_<cpu|gpu>.json`` when `output_dir` is given."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from benchmarks import common  # pylint: disable=import-outside-toplevel
    meta = common.run_metadata(sys.argv)
    start = time.time()
    runs = {False: [], True: []}
    for r in range(rounds):
        # ABBA order (off, on, on, off, ...): a steady drift of the machine's load cancels
        for det in ((False, True) if r % 2 == 0 else (True, False)):
            runs[det].append(common.json_from_child(
                [__file__, f"--repo={repo}", f"--steps={steps}", "--_child"]
                + (["--deterministic_ops"] if det else [])))
            log(f"round {r}, deterministic_ops={det}: {runs[det][-1]}")
    keys = ("first_call_s", "step_median_s", "peak_rss_mb")
    med = {det: {k: statistics.median(x[k] for x in runs[det]) for k in keys}
           for det in runs}
    ratios = {k: med[True][k] / med[False][k] for k in keys}
    rows = [[k, common.fmt(med[False][k], 3), common.fmt(med[True][k], 3),
             common.fmt(ratios[k], 3)] for k in keys]
    table = common.markdown_table(["median over rounds", "off", "on", "on / off"], rows)
    log(table)
    payload = {"metadata": common.finish_metadata(meta, start),
               "config": {"repo": repo, "steps": steps, "rounds": rounds},
               "runs": {str(k).lower(): v for k, v in runs.items()}, "medians":
               {str(k).lower(): v for k, v in med.items()}, "ratios": ratios, "table": table}
    if output_dir:
        name = f"determinism_cost_{common.device_tag()}.json"
        common.write_json(os.path.join(output_dir, name), payload)
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--deterministic_ops", action="store_true")
    p.add_argument("--compare_determinism", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output_dir", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.compare_determinism:
        compare_determinism(a.repo, a.steps, a.rounds, a.output_dir)
        return
    out = child(a.repo, a.steps, a.deterministic_ops)
    if a._child:  # pylint: disable=protected-access
        print(json.dumps(out))
        return
    times = out["steps_s"]
    print(f"repo {a.repo}: first call {out['first_call_s']:.1f} s, median step "
          f"{out['step_median_s']:.2f} s over {a.steps} ({', '.join(f'{t:.2f}' for t in times)}); "
          f"deterministic_ops={a.deterministic_ops}, peak RSS {out['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
