r"""One-command device suite: the numbers a user needs from one GPU machine, in one JSON.

    benchmarks/device_suite.sh                      # GPU: ~<= 8 min, device_suite_gpu.json
    benchmarks/device_suite.sh --cpu                # reduced CPU run (no GPU needed)
    COOPNET_SUITE_CPU=1 benchmarks/device_suite.sh  # same

Refuses (exit status 3, a message on stderr) when TensorFlow sees no GPU, unless the CPU
mode is asked for. Measures, reusing `benchmarks/throughput.py`'s functions:

* ``train_step``: snippets/s of the post-burn-in CoopNet `train_step` (tf.function) for
  each dtype policy float32 / mixed_float16 / mixed_bfloat16, each with and without
  ``StepOptions.jit_compile`` (XLA on the forward), at ``--height x --width`` batch
  ``--batch_size`` (128x416 b4 on a GPU);
* ``largest_batch``: for the fastest of those configurations, batch sizes doubled from
  ``--batch_size`` up to ``--max_batch`` until out of memory or out of the time budget;
  snippets/s at the largest batch that ran;
* ``quantiles``: the quantile update (P² and the weighted summary) and the whole coopnet
  apportionment call, each as a share of the float32 step;
* ``pipeline``: `make_dataset` (training mode) snippets/s on rendered records and its
  ratio to the fastest training step (>= 1: the pipeline keeps up);
* ``two_replica``: with two or more GPUs, `MirroredStrategy` over two of them at twice
  the batch: scaling = snippets/s(2 replicas) / snippets/s(1);
* ``serving``: batch-1 latency of the exported depth / pose / flow SavedModels.

Every key is always written; a measurement that did not run holds ``{"skipped": why}``.
"""
import argparse
import dataclasses
import os
import pathlib
import sys
import time
from typing import Dict, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
REFUSAL_EXIT = 3
KEYS = ("device", "config", "train_step", "largest_batch", "quantiles", "pipeline",
        "two_replica", "serving", "determinism", "metadata")


@dataclasses.dataclass
class SuiteConfig:
    height: int = 128
    width: int = 416
    batch_size: int = 4
    flow_layers: int = 50
    max_batch: int = 64
    policies: Sequence[str] = POLICIES
    xla: Sequence[bool] = (False, True)
    warmup: int = 2
    iters: int = 10
    p2_iters: int = 10
    pipeline_batches: int = 40
    serving: bool = True
    latency_iters: int = 20
    budget_s: float = 420.0   # stop optional work (batch search, determinism) after this
    determinism: bool = True  # step time with the determinism switch off vs on
    output: str = "benchmarks/results/device_suite_gpu.json"

    @classmethod
    def cpu(cls, **overrides) -> "SuiteConfig":
        """The reduced CPU version: the synthetic config's size and flow net, few calls."""
        base = dict(height=64, width=192, batch_size=4, flow_layers=18, max_batch=8,
                    warmup=1, iters=2, p2_iters=3, pipeline_batches=10, latency_iters=3,
                    budget_s=480.0, determinism=False,   # CPU: step_time.py, on its own
                    output="benchmarks/results/device_suite_cpu.json")
        base.update(overrides)
        return cls(**base)


def _throughput_config(cfg: SuiteConfig):
    from benchmarks import throughput  # pylint: disable=import-outside-toplevel
    return throughput.Config(height=cfg.height, width=cfg.width, batch_size=cfg.batch_size,
                             flow_layers=cfg.flow_layers, warmup=cfg.warmup, iters=cfg.iters,
                             p2_iters=cfg.p2_iters, pipeline_batches=cfg.pipeline_batches,
                             pipeline_sequences=1, pipeline_frames=12,
                             latency_iters=cfg.latency_iters)


def _summary(entry) -> Dict[str, object]:
    return {k: v for k, v in entry.items() if k != "nets_opts"}


def _is_oom(exc: Exception) -> bool:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return isinstance(exc, tf.errors.ResourceExhaustedError) or "out of memory" in str(exc).lower()


def _two_replica(tcfg, policy: str, jit: bool, single_sps: float, log) -> Dict[str, object]:
    """snippets/s of the step under MirroredStrategy over two GPUs at twice the batch."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from benchmarks import throughput  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training.step import Phase  # pylint: disable=import-outside-toplevel
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) < 2:
        return {"skipped": f"{len(gpus)} GPU visible (needs 2)"}
    strategy = tf.distribute.MirroredStrategy([g.name for g in gpus[:2]])
    global_batch = 2 * tcfg.batch_size
    with strategy.scope():
        nets, opts = throughput._build_networks(tcfg, policy)  # pylint: disable=protected-access
        step = throughput._make_step(nets, opts, jit, global_batch)  # pylint: disable=protected-access
    batch = throughput._random_batch(tcfg)  # pylint: disable=protected-access
    per_replica = strategy.experimental_distribute_values_from_function(lambda _: batch)
    phase = Phase(burn_in=False, update_quantiles=True)
    seed = tf.constant([0, 1], tf.int64)
    fn = tf.function(lambda: strategy.run(step.train_step, args=(per_replica, phase, seed)))
    log("[device_suite] two replicas")
    t = common.median_time(lambda: strategy.experimental_local_results(fn()), tcfg.warmup,
                           tcfg.iters)
    keras.mixed_precision.set_global_policy("float32")
    sps = global_batch / t["median_s"]
    return {"policy": policy, "jit_compile_forward": jit, "global_batch": global_batch,
            "step": t, "snippets_per_second": sps, "scaling_over_one": sps / single_sps}


def run(cfg: SuiteConfig, mode: str, argv=None, log=print) -> Dict[str, object]:
    """Runs the suite; `mode` is "gpu" or "cpu". Writes and returns the JSON payload."""
    from benchmarks import throughput  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import quantile  # pylint: disable=import-outside-toplevel
    start = time.time()
    meta = common.run_metadata(argv)
    meta["uptime_start"] = _uptime()
    tcfg = _throughput_config(cfg)
    result: Dict[str, object] = {k: None for k in KEYS}
    result.update(device=mode.upper(), config=dataclasses.asdict(cfg))

    steps, float_entry = {}, None
    for policy in cfg.policies:
        nets_opts = None
        for jit in cfg.xla:
            key = f"{policy}{'+xla' if jit else ''}"
            try:
                entry = throughput.time_train_step(tcfg, policy, jit, nets_opts=nets_opts, log=log)
            except Exception as exc:  # pylint: disable=broad-except
                # a policy the device cannot run (e.g. float16 kernels) must not end the suite
                steps[key] = {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
                continue
            nets_opts = entry["nets_opts"]
            if key == "float32":
                float_entry = entry
            steps[key] = _summary(entry)
            log(f"[device_suite] {key}: {entry['snippets_per_second']:.2f} snippets/s")
    result["train_step"] = steps
    ran = {k: v for k, v in steps.items() if "snippets_per_second" in v}
    best_key = max(ran, key=lambda k: ran[k]["snippets_per_second"]) if ran else None
    result["fastest"] = best_key

    # Largest batch that fits, for the fastest configuration (bounded doubling search).
    search = {"configuration": best_key, "tried": {}}
    if best_key is None:
        search["skipped"] = "no configuration ran"
    else:
        best = ran[best_key]
        bs = cfg.batch_size * 2
        while bs <= cfg.max_batch:
            if time.time() - start > cfg.budget_s:
                search["stopped"] = f"time budget {cfg.budget_s:.0f} s reached"
                break
            try:
                entry = throughput.time_train_step(
                    tcfg, best["policy"], best["jit_compile_forward"], batch_size=bs, log=log)
            except Exception as exc:  # pylint: disable=broad-except
                if not _is_oom(exc):
                    raise
                search["tried"][str(bs)] = "out of memory"
                break
            search["tried"][str(bs)] = entry["snippets_per_second"]
            bs *= 2
        fitted = [int(b) for b, v in search["tried"].items() if isinstance(v, float)]
        largest = max(fitted, default=cfg.batch_size)
        search["largest_batch"] = largest
        search["snippets_per_second"] = (search["tried"][str(largest)] if fitted
                                         else best["snippets_per_second"])
        search["max_batch_searched"] = cfg.max_batch
    result["largest_batch"] = search

    step_s = float_entry["step"]["median_s"] if float_entry else None
    quant = {}
    for est in ("p2", "summary"):
        log(f"[device_suite] quantile update ({est})")
        t = throughput.time_p2(tcfg, estimator=est)
        quant[est] = {
            "update": t["p2_update"], "apportion": t["coopnet_apportion"],
            "update_share_of_float32_step": t["p2_update"]["median_s"] / step_s if step_s else None,
            "apportion_share_of_float32_step": (t["coopnet_apportion"]["median_s"] / step_s
                                                if step_s else None)}
    # P²'s while_loop runs one iteration per gathered sample; the summary has no loop.
    quant["sequential_iterations_per_step"] = {"p2": quantile.DEFAULT_SAMPLE_SIZE, "summary": 0}
    result["quantiles"] = quant

    log("[device_suite] input pipeline")
    pipe = throughput.time_pipeline(tcfg)
    if best_key is not None:
        pipe["ratio_to_fastest_step"] = (pipe["snippets_per_second"]
                                         / ran[best_key]["snippets_per_second"])
    result["pipeline"] = pipe

    if mode == "gpu" and float_entry is not None:
        result["two_replica"] = _two_replica(tcfg, "float32", False,
                                             float_entry["snippets_per_second"], log)
    else:
        result["two_replica"] = {"skipped": "needs two GPUs"}

    if cfg.serving and float_entry is not None:
        log("[device_suite] serving latency")
        result["serving"] = throughput.time_serving(tcfg, float_entry["nets_opts"][0])
    else:
        result["serving"] = {"skipped": "disabled" if not cfg.serving else "no float32 step"}

    # train_and_evaluate.deterministic_ops: its cost on this device (synthetic config's
    # step, 64x192, two fresh interpreters; docs/synthetic_benchmark.md "Determinism")
    if not cfg.determinism:
        result["determinism"] = {"skipped": "disabled"}
    elif time.time() - start > cfg.budget_s:
        result["determinism"] = {"skipped": f"time budget {cfg.budget_s:.0f} s reached"}
    else:
        from benchmarks import step_time  # pylint: disable=import-outside-toplevel
        log("[device_suite] determinism switch off vs on")
        det = step_time.compare_determinism(str(common.REPO_ROOT), steps=cfg.iters, rounds=1,
                                            log=log)
        result["determinism"] = {k: det[k] for k in ("medians", "ratios", "table")}

    meta["uptime_end"] = _uptime()
    result["metadata"] = common.finish_metadata(meta, start)
    common.write_json(cfg.output, result)
    log(f"[device_suite] wrote {cfg.output} ({result['metadata']['wall_seconds']} s)")
    return result


def _uptime() -> Optional[str]:
    import subprocess  # pylint: disable=import-outside-toplevel
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true",
                   help="run the reduced CPU version (also: COOPNET_SUITE_CPU=1)")
    p.add_argument("--output", default=None)
    p.add_argument("--policies", default=None, help=f"subset of {','.join(POLICIES)}")
    p.add_argument("--xla", default=None, help="'0', '1' or '0,1'")
    for name in ("height", "width", "batch_size", "flow_layers", "max_batch", "warmup",
                 "iters", "p2_iters", "pipeline_batches", "latency_iters"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--budget_s", type=float, default=None)
    p.add_argument("--no_serving", action="store_true")
    p.add_argument("--no_determinism", action="store_true")
    a = p.parse_args(argv)
    cpu = a.cpu or os.environ.get("COOPNET_SUITE_CPU", "") == "1"

    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not cpu and not tf.config.list_physical_devices("GPU"):
        print("device_suite: TensorFlow sees no GPU; refusing to run the GPU suite. Run on a "
              "machine with a GPU, or pass --cpu (or COOPNET_SUITE_CPU=1) for the reduced "
              "CPU version.", file=sys.stderr)
        return REFUSAL_EXIT
    flags = ("cpu", "policies", "xla", "no_serving", "no_determinism")
    overrides = {k: v for k, v in vars(a).items() if v is not None and k not in flags}
    if a.policies:
        overrides["policies"] = tuple(x.strip() for x in a.policies.split(",") if x.strip())
        bad = [x for x in overrides["policies"] if x not in POLICIES]
        if bad:
            p.error(f"unknown policies {bad}; choose from {POLICIES}")
    if a.xla:
        overrides["xla"] = tuple(bool(int(x)) for x in a.xla.split(","))
    if a.no_serving:
        overrides["serving"] = False
    if a.no_determinism:
        overrides["determinism"] = False
    cfg = SuiteConfig.cpu(**overrides) if cpu else SuiteConfig(**overrides)
    run(cfg, "cpu" if cpu else "gpu",
        argv=[sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
