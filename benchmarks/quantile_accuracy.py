r"""Accuracy of the two running-quantile estimators (P², weighted summary) on the test streams.

    python benchmarks/quantile_accuracy.py        # writes benchmarks/results/quantile_accuracy.json

Streams (as tests/test_quantile.py and tests/test_quantile_summary.py): 10^5 values of a
normal, the Fig. 1-shaped trimodal mixture and a Student t3 (seeds 0, 1); the mixture with
near-empty gaps (rank error); and non-stationary streams of `--steps` training steps of
4096 values (one step's subsample) whose mean swings by ±3 and spread grows 1.5x (as Δ
while the networks learn). Both estimators see the same values in the same order, in
chunks of 4096 (P²'s result does not depend on the chunking). Errors against
``np.quantile`` of the whole stream: max over p in {0.15, ..., 0.85} of |error| / std and
of |rank − p|. The tests' tolerances: 0.02 std and 0.005 in rank.
"""
import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

PROBS = [0.15, 0.25, 0.35, 0.5, 0.65, 0.75, 0.85]
CHUNK = 4096


def _mixture(rng, n, weights, means, stds):
    c = rng.choice(len(weights), size=n, p=weights)
    return rng.normal(np.asarray(means)[c], np.asarray(stds)[c])


def streams(steps_list):
    out = {}
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        n = 100_000
        out[f"normal_s{seed}"] = rng.normal(size=n)
        out[f"trimodal_fig1_s{seed}"] = _mixture(rng, n, [0.8, 0.1, 0.1], [0.0, -2.5, 3.0],
                                                 [1.0, 1.0, 1.2])
        out[f"student_t3_s{seed}"] = rng.standard_t(3, size=n)
    out["separated_modes"] = _mixture(np.random.default_rng(3), 100_000, [0.7, 0.15, 0.15],
                                      [0.0, -4.0, 4.0], [1.0, 0.7, 0.7])
    for steps in steps_list:
        rng = np.random.default_rng(5)
        out[f"non_stationary_{steps}_steps"] = np.concatenate(
            [rng.normal(3.0 * np.sin(6.0 * i / steps), 1.0 + 0.5 * i / steps, CHUNK)
             for i in range(steps)])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="200,1000", help="non-stationary stream lengths")
    p.add_argument("--output", default="benchmarks/results/quantile_accuracy.json")
    a = p.parse_args(argv)
    from coopnet_tf.losses import quantile  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses.quantile import p2_quantiles  # pylint: disable=import-outside-toplevel
    start = time.time()
    meta = common.run_metadata([sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))
    estimators = {
        "p2": lambda x: p2_quantiles(x, PROBS),
        "summary": lambda x: quantile.summary_quantiles(x, PROBS, chunk_size=CHUNK),
    }
    result = {"benchmark": "quantile_accuracy", "probabilities": PROBS, "chunk": CHUNK,
              "summary_size": quantile.DEFAULT_SUMMARY_SIZE, "streams": {}}
    rows = []
    for name, x in streams([int(s) for s in a.steps.split(",") if s]).items():
        exact = np.quantile(x, PROBS)
        xs = np.sort(x)
        entry = {"n": int(x.size)}
        for est, fn in estimators.items():
            t0 = time.perf_counter()
            got = fn(x)
            entry[est] = {
                "max_abs_error_std": float(np.max(np.abs(got - exact)) / np.std(x)),
                "max_abs_rank_error": float(np.max(np.abs(np.searchsorted(xs, got) / x.size
                                                          - np.asarray(PROBS)))),
                "seconds": time.perf_counter() - t0}
        result["streams"][name] = entry
        rows.append([name, entry["p2"]["max_abs_error_std"], entry["summary"]["max_abs_error_std"],
                     entry["p2"]["max_abs_rank_error"], entry["summary"]["max_abs_rank_error"]])
        print(name, entry, flush=True)
    result["table"] = common.markdown_table(
        ["stream", "P² err/std", "summary err/std", "P² rank err", "summary rank err"], rows)
    print(result["table"])
    result["metadata"] = common.finish_metadata(meta, start)
    common.write_json(a.output, result)


if __name__ == "__main__":
    main()
