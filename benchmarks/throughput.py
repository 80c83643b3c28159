r"""Training-step time, its forward / backward / P² split, input pipeline and serving latency.

    python benchmarks/throughput.py                                  # CPU defaults, ~10 min
    python benchmarks/throughput.py --modes=function,xla --iters=5   # subset / more iterations
    python benchmarks/throughput.py --flow_layers=18                 # synthetic.gin's flow net

Everything at the paper's training setting unless told otherwise: 128x416, batch 4,
DispResNet18 depth, ResNet18 pose, the direct ResNet50 U-Net flow (base.gin), random
initialisation, the post-burn-in CoopNet step (`CoopTrainStep.train_step` with the coopnet
apportionment: every loss term on, P² update on), on a random batch. Measured IN ONE RUN:

* training step, per mode: ``eager`` (no tf.function), ``function`` (tf.function),
  ``xla`` (tf.function + ``StepOptions.jit_compile=True``: the project XLA-compiles the
  forward pass — networks, warps, Φ maps, auxiliary terms; the gradient and the optimizer
  updates are not compiled), ``mixed`` (tf.function under ``mixed_bfloat16`` on a CPU,
  ``mixed_float16`` with dynamic loss scaling on a GPU);
* forward-only: ``CoopTrainStep.compute_losses`` (networks + warps + losses, no tape, no
  update) per mode; backward + update = step − forward;
* P²: the quantile update alone (subsample of Δ, Δflow^x, Δflow^y + the P² loop + the
  variable writes) and the whole coopnet apportionment call, on same-sized inputs
  ([B, S, H, W] = [4, 2, 128, 416]), inside tf.function; reported as a share of the
  ``function`` step;
* input pipeline: `coopnet_tf.data.pipeline.make_dataset` in training mode on freshly
  rendered synthetic records at the training size (as benchmarks/input_pipeline.py);
* serving: each SavedModel (depth, pose, flow) exported with `coopnet_tf.export.export_models`
  from the freshly initialised networks, reloaded, batch 1, median latency.

Medians over ``--iters`` calls after ``--warmup`` untimed calls (the first call's time,
tracing/compilation included, is kept as ``first_call_s``). On a GPU the script also prints
snippets/s against the paper's ≈15.7 snippets/s (30 epochs x 22,600 pairs in 12 h on a
GTX 1080 Ti). Writes ``<output_dir>/throughput_<cpu|gpu>.json`` and ``.md``.
"""
import argparse
import dataclasses
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Dict, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

MODES = ("eager", "function", "xla", "mixed")
PAPER_SNIPPETS_PER_SECOND = 30 * 22_600 / (12 * 3600.0)   # ≈ 15.7


@dataclasses.dataclass
class Config:
    height: int = 128
    width: int = 416
    batch_size: int = 4
    depth_layers: int = 18
    pose_layers: int = 18
    flow_layers: int = 50
    modes: Sequence[str] = MODES
    warmup: int = 1
    iters: int = 3
    eager_iters: int = 2
    forward: bool = True
    p2_iters: int = 10
    pipeline_batches: int = 40
    pipeline_sequences: int = 2
    pipeline_frames: int = 12
    latency: bool = True
    latency_iters: int = 10
    output_dir: str = "benchmarks/results"
    output_name: Optional[str] = None


def _random_batch(cfg: Config, seed: int = 0):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf import specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.data import synthetic  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(seed)
    frames = rng.uniform(0, 1, (cfg.batch_size, specs.NUM_FRAMES, cfg.height, cfg.width, 3))
    K = np.tile(synthetic.intrinsics(cfg.height, cfg.width)[None], (cfg.batch_size, 1, 1))
    frames = tf.constant(frames, tf.float32)
    return {specs.KEY_FRAMES: frames, specs.KEY_FRAMES_AUG: frames,
            specs.KEY_INTRINSICS: tf.constant(K, tf.float32)}


def _build_networks(cfg: Config, policy: str):
    import keras  # pylint: disable=import-outside-toplevel

    from coopnet_tf import models  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import optimizers  # pylint: disable=import-outside-toplevel
    keras.mixed_precision.set_global_policy(policy)
    nets = (models.build_depth_net(height=cfg.height, width=cfg.width,
                                   num_layers=cfg.depth_layers),
            models.build_pose_net(height=cfg.height, width=cfg.width, num_layers=cfg.pose_layers),
            models.build_flow_net(height=cfg.height, width=cfg.width, num_layers=cfg.flow_layers))
    loss_scale = policy == "mixed_float16"
    opts = (optimizers.make_optimizer(loss_scale=loss_scale, name="adam_depth_pose"),
            optimizers.make_optimizer(loss_scale=loss_scale, name="adam_flow"))
    return nets, opts


def _make_step(nets, opts, jit_compile: bool, batch_size: int):
    from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training.step import (  # pylint: disable=import-outside-toplevel
        CoopTrainStep, LossWeights, StepOptions)
    step = CoopTrainStep(*nets, *opts, apportion.make_strategy("coopnet"),
                         weights=LossWeights(), options=StepOptions(jit_compile=jit_compile),
                         global_batch_size=batch_size)
    step.build()
    return step


def time_train_step(cfg: Config, policy: str, jit_compile: bool, eager: bool = False,
                    nets_opts=None, forward: bool = False, batch_size: Optional[int] = None,
                    log=print) -> Dict[str, object]:
    """Median time of the post-burn-in CoopNet `train_step` under a Keras dtype `policy`
    (``float32``, ``mixed_float16``, ``mixed_bfloat16``), the forward XLA-compiled or not,
    in a `tf.function` (or eagerly). `nets_opts` reuses networks and optimizers built
    under the same policy; `batch_size` overrides `cfg.batch_size`.

    Returns: {"policy", "jit_compile_forward", "batch_size", "step", ["forward",
    "backward_and_update_s", "forward_share"], "snippets_per_second", "nets_opts"}.
    """
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf.training.step import Phase  # pylint: disable=import-outside-toplevel
    bs = batch_size or cfg.batch_size
    phase = Phase(burn_in=False, update_quantiles=True)
    batch = _random_batch(dataclasses.replace(cfg, batch_size=bs))
    seed = tf.constant([0, 1], tf.int64)
    nets, opts = nets_opts if nets_opts is not None else _build_networks(cfg, policy)
    keras.mixed_precision.set_global_policy(policy)
    try:
        step = _make_step(nets, opts, jit_compile=jit_compile, batch_size=bs)

        def train_fn(s=step):
            return s.train_step(batch, phase, seed)

        def forward_fn(s=step):
            losses, _, _ = s.compute_losses(batch, phase, seed, training=True,
                                            update_quantiles=False)
            return losses["total_theta_alpha"], losses["total_delta"]

        if not eager:
            train_fn = tf.function(train_fn)
            forward_fn = tf.function(forward_fn)
        iters = cfg.eager_iters if eager else cfg.iters
        log(f"[throughput] {policy} xla={jit_compile} eager={eager} b{bs}: "
            f"step x{cfg.warmup}+{iters}")
        t_step = common.median_time(train_fn, cfg.warmup, iters)
        entry = {"policy": policy, "jit_compile_forward": jit_compile, "batch_size": bs,
                 "step": t_step}
        if forward:
            t_fwd = common.median_time(forward_fn, cfg.warmup, iters)
            entry["forward"] = t_fwd
            entry["backward_and_update_s"] = t_step["median_s"] - t_fwd["median_s"]
            entry["forward_share"] = t_fwd["median_s"] / t_step["median_s"]
        entry["snippets_per_second"] = bs / t_step["median_s"]
        entry["nets_opts"] = (nets, opts)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return entry


def time_step_modes(cfg: Config, gpu: bool, log=print) -> Dict[str, Dict[str, object]]:
    """Step and forward-only times per mode. Returns mode -> timings."""
    results: Dict[str, Dict[str, object]] = {}
    float_nets = None
    mixed_policy = "mixed_float16" if gpu else "mixed_bfloat16"
    for mode in cfg.modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        policy = mixed_policy if mode == "mixed" else "float32"
        entry = time_train_step(cfg, policy, jit_compile=(mode == "xla"), eager=(mode == "eager"),
                                nets_opts=float_nets if policy == "float32" else None,
                                forward=cfg.forward, log=log)
        if policy == "float32":
            float_nets = entry["nets_opts"]
        del entry["nets_opts"], entry["batch_size"]
        results[mode] = entry
        log(f"[throughput] {mode}: step {entry['step']['median_s']:.3f} s "
            f"(first call {entry['step']['first_call_s']:.1f} s)")
    return results, (float_nets[0] if float_nets is not None else None)


def time_p2(cfg: Config, estimator: str = "p2") -> Dict[str, object]:
    """The quantile update alone (P², or `estimator`) and the whole coopnet apportionment
    call, same-sized inputs."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf import specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(1)
    shape = (cfg.batch_size, specs.NUM_SOURCES, cfg.height, cfg.width)

    def t(x):
        return tf.constant(x, tf.float32)
    inputs = apportion.ApportionInputs(
        phi_rigid=t(rng.uniform(0, 1, shape + (1,))), phi_flow=t(rng.uniform(0, 1, shape + (1,))),
        phi_identity=t(rng.uniform(0, 1, shape + (1,))),
        rigid_flow=t(rng.normal(0, 5, shape + (2,))), optical_flow=t(rng.normal(0, 5, shape + (2,))),
        non_occluded=t(rng.uniform(0, 1, shape + (1,)) > 0.1))
    strategy = apportion.make_strategy("coopnet", quantile_estimator=estimator)
    layer = strategy.quantile_layer
    delta = apportion.compute_delta(inputs.phi_rigid, inputs.phi_flow)
    dflow = apportion.compute_delta_flow(inputs.rigid_flow, inputs.optical_flow)
    domain = inputs.non_occluded > 0.5
    values = {apportion.DELTA: delta, apportion.DELTA_FLOW_X: dflow[..., 0:1],
              apportion.DELTA_FLOW_Y: dflow[..., 1:2]}

    @tf.function
    def p2_update():
        samples, active = layer.subsample(values, domain)
        layer.update_from_samples(samples, active, enabled=True)
        return layer.count

    @tf.function
    def apportion_call():
        app = strategy(inputs, use_quantiles=True, update_quantiles=True)
        return app.rigid_mask, app.flow_weight

    return {"p2_update": common.median_time(p2_update, 2, cfg.p2_iters),
            "coopnet_apportion": common.median_time(apportion_call, 2, cfg.p2_iters)}


def time_pipeline(cfg: Config) -> Dict[str, object]:
    """snippets/s of make_dataset (training mode) on rendered records at the training size."""
    from coopnet_tf.data import pipeline, synthetic  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        synthetic.write_synthetic_dataset(tmp, synthetic.WorldConfig(
            height=cfg.height, width=cfg.width, num_sequences=cfg.pipeline_sequences,
            num_val_sequences=0, num_test_sequences=0,
            frames_per_sequence=cfg.pipeline_frames, train_shards=4), progress=False)
        render_s = time.time() - start
        ds = pipeline.make_dataset(synthetic.file_pattern(tmp, "train"),
                                   batch_size=cfg.batch_size, height=cfg.height,
                                   width=cfg.width, training=True)
        it = iter(ds)
        for _ in range(5):
            next(it)
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(cfg.pipeline_batches):
                batch = next(it)
            batch["frames"].numpy()
            rates.append(cfg.pipeline_batches * cfg.batch_size / (time.perf_counter() - start))
    return {"snippets_per_second": statistics.median(rates), "runs": rates,
            "records_rendered_s": render_s,
            "records": cfg.pipeline_sequences * (cfg.pipeline_frames - 2)}


def time_serving(cfg: Config, nets) -> Dict[str, object]:
    """Exports the (freshly initialised) networks and times each SavedModel at batch 1."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf import export  # pylint: disable=import-outside-toplevel
    depth_net, pose_net, flow_net = nets
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        paths = export.export_models(tmp, 1, cfg.height, cfg.width, depth_net, pose_net, flow_net)
        out["export_s"] = time.time() - start
        rng = np.random.default_rng(2)
        img = lambda: tf.constant(rng.uniform(0, 1, (1, cfg.height, cfg.width, 3)), tf.float32)  # noqa: E731
        a, b = img(), img()
        for name, path in paths.items():
            fn = tf.saved_model.load(path).signatures["serving_default"]
            args = {"image": a} if name == "depth" else {"image_a": a, "image_b": b}
            out[name] = common.median_time(lambda f=fn, kw=args: f(**kw), 2, cfg.latency_iters)
    return out


def markdown(result: Dict[str, object], cfg: Config) -> str:
    modes = result["modes"]
    rows = []
    for mode, e in modes.items():
        fwd = e.get("forward", {}).get("median_s") if isinstance(e.get("forward"), dict) else None
        rows.append([mode, e["policy"], e["step"]["median_s"], fwd,
                     e.get("backward_and_update_s"), e["snippets_per_second"],
                     e["step"]["first_call_s"]])
    text = [f"Training step, {cfg.height}x{cfg.width}, batch {cfg.batch_size}, depth R"
            f"{cfg.depth_layers} / pose R{cfg.pose_layers} / flow R{cfg.flow_layers}, "
            f"post-burn-in CoopNet step; medians of {cfg.iters} calls ({cfg.eager_iters} "
            "eager) after warm-up.\n",
            common.markdown_table(["mode", "policy", "step [s]", "forward [s]",
                                   "backward+update [s]", "snippets/s", "first call [s]"], rows)]
    ratios = result.get("ratios", {})
    if ratios:
        text.append("\n" + "; ".join(f"{k} = {common.fmt(v)}" for k, v in ratios.items()) + "\n")
    p2 = result.get("p2")
    if p2:
        text.append(common.markdown_table(
            ["P² / apportionment", "median [s]", "share of the `function` step"],
            [["P² update (subsample + P² loop)", p2["p2_update"]["median_s"],
              p2.get("p2_update_share_of_step")],
             ["whole coopnet apportionment", p2["coopnet_apportion"]["median_s"],
              p2.get("apportion_share_of_step")]]))
    pipe = result.get("input_pipeline")
    if pipe:
        text.append(f"\nInput pipeline (make_dataset, training mode, {cfg.height}x{cfg.width}, "
                    f"batch {cfg.batch_size}): {pipe['snippets_per_second']:.1f} snippets/s; "
                    f"pipeline / step ratio (function mode): "
                    f"{common.fmt(result.get('pipeline_over_step'))}\n")
    serve = result.get("serving")
    if serve:
        text.append(common.markdown_table(
            ["SavedModel", "batch-1 latency [ms] (median)", "min [ms]"],
            [[n, serve[n]["median_s"] * 1e3, serve[n]["min_s"] * 1e3]
             for n in ("depth", "pose", "flow") if n in serve]))
    text.append("\n" + result["paper_comparison"] + "\n")
    return "\n".join(text) + "\n"


def run(cfg: Config, argv=None, log=print) -> Dict[str, object]:
    start = time.time()
    meta = common.run_metadata(argv)
    gpu = bool(meta["machine"]["gpus"])
    result: Dict[str, object] = {"benchmark": "throughput", "config": dataclasses.asdict(cfg),
                                 "device": "GPU" if gpu else "CPU"}
    modes, float_nets = time_step_modes(cfg, gpu, log)
    result["modes"] = modes
    ratios = {}
    if "function" in modes and "xla" in modes:
        ratios["xla_speedup_over_function"] = (modes["function"]["step"]["median_s"]
                                               / modes["xla"]["step"]["median_s"])
    if "function" in modes and "eager" in modes:
        ratios["function_speedup_over_eager"] = (modes["eager"]["step"]["median_s"]
                                                 / modes["function"]["step"]["median_s"])
    if "function" in modes and "mixed" in modes:
        ratios["mixed_speedup_over_function"] = (modes["function"]["step"]["median_s"]
                                                 / modes["mixed"]["step"]["median_s"])
    result["ratios"] = ratios
    ref = modes.get("function") or next(iter(modes.values()))
    log("[throughput] P² update")
    p2 = time_p2(cfg)
    p2["p2_update_share_of_step"] = p2["p2_update"]["median_s"] / ref["step"]["median_s"]
    p2["apportion_share_of_step"] = p2["coopnet_apportion"]["median_s"] / ref["step"]["median_s"]
    result["p2"] = p2
    log("[throughput] input pipeline")
    result["input_pipeline"] = time_pipeline(cfg)
    result["pipeline_over_step"] = (result["input_pipeline"]["snippets_per_second"]
                                    / ref["snippets_per_second"])
    if cfg.latency and float_nets is not None:
        log("[throughput] serving latency")
        result["serving"] = time_serving(cfg, float_nets)
    best = max(modes.items(), key=lambda kv: kv[1]["snippets_per_second"])
    if gpu:
        sps = best[1]["snippets_per_second"]
        result["paper_comparison"] = (
            f"GPU ({', '.join(meta['machine']['gpus'])}): best mode '{best[0]}' trains "
            f"{sps:.1f} snippets/s vs the paper's ≈{PAPER_SNIPPETS_PER_SECOND:.1f} snippets/s "
            f"(30 epochs x 22,600 pairs in 12 h on a GTX 1080 Ti): "
            f"{sps / PAPER_SNIPPETS_PER_SECOND:.2f}x.")
    else:
        result["paper_comparison"] = (
            f"CPU only: the paper's ≈{PAPER_SNIPPETS_PER_SECOND:.1f} snippets/s (GTX 1080 Ti) "
            "needs a GPU run to compare against; this machine's best mode "
            f"('{best[0]}') trains {best[1]['snippets_per_second']:.2f} snippets/s.")
    log("[throughput] " + result["paper_comparison"])
    result["metadata"] = common.finish_metadata(meta, start)
    name = cfg.output_name or f"throughput_{result['device'].lower()}"
    common.write_json(os.path.join(cfg.output_dir, f"{name}.json"), result)
    md = markdown(result, cfg)
    header = (f"# Throughput ({result['device']})\n\nCommand: `{meta['command']}`  \n"
              f"Date (UTC): {meta['date_utc']}; machine: {meta['machine']['cpu']} x "
              f"{meta['machine']['cpu_count']}; GPUs: {meta['machine']['gpus'] or 'none'}; "
              f"TF {meta['versions']['tensorflow']}; load {meta['load_average_start']} -> "
              f"{result['metadata']['load_average_end']}; wall "
              f"{result['metadata']['wall_seconds']} s\n\n")
    with open(os.path.join(cfg.output_dir, f"{name}.md"), "w") as f:
        f.write(header + md)
    log(md)
    return result


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in ("height", "width", "batch_size", "depth_layers", "pose_layers", "flow_layers",
                  "warmup", "iters", "eager_iters", "p2_iters", "pipeline_batches",
                  "pipeline_sequences", "pipeline_frames", "latency_iters"):
        p.add_argument(f"--{field}", type=int, default=getattr(d, field))
    p.add_argument("--modes", default=",".join(d.modes), help=f"subset of {','.join(MODES)}")
    p.add_argument("--forward", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the forward-only loss computation")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                   help="export SavedModels and time them at batch 1")
    p.add_argument("--output_dir", default=d.output_dir)
    p.add_argument("--output_name", default=None,
                   help="file stem (default throughput_cpu / throughput_gpu)")
    a = vars(p.parse_args(argv))
    a["modes"] = tuple(m.strip() for m in a["modes"].split(",") if m.strip())
    bad = [m for m in a["modes"] if m not in MODES]
    if bad:
        p.error(f"unknown modes {bad}; choose from {MODES}")
    return Config(**a)


def main(argv=None):
    cfg = parse_args(argv)
    run(cfg, argv=[sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
