r"""Where the CoopNet training step's time goes: share of each component, one run.

    python benchmarks/step_profile.py                       # 128x416 b4 and 64x192 b4
    python benchmarks/step_profile.py --sizes=64x192 --repeats=5

Method: timed sub-functions. For each size, the post-burn-in CoopNet step
(`CoopTrainStep.train_step`, coopnet apportionment, every loss term on) runs once eagerly
through `CoopTrainStep.forward` to record realistic intermediate tensors (disparities,
flows, poses, Φ maps). Then each component is rebuilt as its own `tf.function` from the
library's functions on exactly the step's shapes, with its gradient where the step takes
one (tape over the component's inputs/variables, the gradient is computed and returned):

* ``depth_net`` / ``pose_net`` / ``flow_net``: forward + backward of each network on the
  step's batches (depth: target + 2 sources; pose: 2 pairs; flow: 4 pairs);
* ``warps``: every scale's disparity upsampled to H×W and converted to depth, flows
  upsampled, rigid warp and flow warp of every (scale, source), + backward;
* ``phi_ssim``: Φ (SSIM + L1) of every warped image and the identity, + backward;
* ``occlusion``: the range-map non-occlusion mask (no gradient);
* ``aux_losses``: smoothness (depth, flow; all scales), forward-backward consistency, L_gc,
  L_ep (both objectives), L_var, + backward;
* ``photometric_losses``: the masked per-scale photometric losses of both objectives;
* ``apportion_<estimator>``: the whole coopnet apportionment call with the quantile update
  (Δ, Δflow, subsample, estimator update, masks, weights, statistics), for P² and the
  weighted summary; ``quantile_update_<estimator>``: the subsample + update alone;
* ``optimizers``: both Adam updates on gradients of the variables' shapes;
* ``step``: the whole `train_step` in a `tf.function` (the denominator).

All components are timed in interleaved rounds (one call of each per round, ``--repeats``
rounds after ``--warmup``) and reported as medians and as shares of the step's median,
so that a shared machine's load drifts affect numerator and denominator alike. The
remainder ``unattributed`` = step − Σ components (the step's estimator) is tape
bookkeeping, concatenations/transposes, the non-finite guard and measurement noise.
Writes ``<output_dir>/step_profile_<cpu|gpu>.json`` and a bar chart ``.png``.
"""
import argparse
import os
import pathlib
import statistics
import sys
import time
from typing import Dict, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

NETWORKS = ("depth_net", "pose_net", "flow_net")
ESTIMATORS = ("p2", "summary")


def _components(step, fwd, batch, phase, seed, estimator_strategies):
    """name -> zero-argument tf.function reproducing one part of the step."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf import geometry, specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import (  # pylint: disable=import-outside-toplevel
        apportion, consistency, photometric, smoothness)
    from coopnet_tf.models import disp_to_depth  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import step as step_lib  # pylint: disable=import-outside-toplevel
    opts = step.options
    frames = tf.cast(batch[specs.KEY_FRAMES], tf.float32)
    b, height, width = frames.shape[0], frames.shape[2], frames.shape[3]
    target = frames[:, specs.TARGET_INDEX]
    sources = [frames[:, i] for i in specs.SOURCE_INDICES]
    num_src = len(sources)
    src_stack = tf.concat(sources, 0)
    tgt_rep = tf.concat([target] * num_src, 0)
    K = fwd["intrinsics"]
    K_rep = tf.concat([K] * num_src, 0)
    t_stack = tf.concat(fwd["transforms"], 0)
    disps = [tf.identity(d) for d in fwd["disparities"]]
    num_scales = len(disps)
    flow_fw, flow_bw = fwd["flow_fw"], fwd["flow_bw"]
    flows = [tf.concat([f, g], 0) for f, g in zip(flow_fw, flow_bw)]
    depth_in = tf.concat([target] + sources, 0)
    pairs = tf.concat([tf.concat([sources[0], target], -1), tf.concat([target, sources[1]], -1)], 0)
    flow_in = tf.concat([tf.concat([target, s], -1) for s in sources]
                        + [tf.concat([s, target], -1) for s in sources], 0)

    def net_fn(net, x):
        variables = step_lib.tf_variables(net.trainable_variables)  # noqa  (private helpers of the step)

        @tf.function
        def fn():
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(variables)
                out = net(x, training=True)
                out = out if isinstance(out, (list, tuple)) else [out]
                loss = tf.add_n([tf.reduce_mean(tf.cast(o, tf.float32)) for o in out])
            return tape.gradient(loss, variables)
        return fn

    @tf.function
    def warps():
        with tf.GradientTape() as tape:
            tape.watch(disps + flow_fw + [t_stack])
            depths = [disp_to_depth(step_lib._resize(d, height, width),  # noqa  (private helpers of the step)
                                    opts.min_depth, opts.max_depth)[1] for d in disps]
            rigid, _, rflow = geometry.rigid_warp(
                tf.concat([src_stack] * num_scales, 0),
                tf.concat([tf.concat([d] * num_src, 0) for d in depths], 0),
                tf.concat([t_stack] * num_scales, 0), tf.concat([K_rep] * num_scales, 0))
            fl, _ = geometry.flow_warp(
                tf.concat([src_stack] * num_scales, 0),
                tf.concat([step_lib._upsample_flow(f, height, width)  # noqa  (private helpers of the step)
                           for f in flow_fw], 0))
            loss = tf.reduce_mean(rigid) + tf.reduce_mean(fl) + tf.reduce_mean(rflow)
        return tape.gradient(loss, disps + flow_fw + [t_stack])

    warped = tf.random.uniform([2 * num_scales * num_src * b, height, width, 3])

    @tf.function
    def phi_ssim():
        with tf.GradientTape() as tape:
            tape.watch(warped)
            phi = photometric.photometric_error(
                tf.concat([tgt_rep] * (2 * num_scales + 1), 0),
                tf.concat([warped, src_stack], 0))
            loss = tf.reduce_mean(phi)
        return tape.gradient(loss, warped)

    @tf.function
    def occlusion():
        return consistency.non_occluded_mask(tf.concat([flow_bw[0], flow_fw[0]], 0),
                                             opts.occlusion_threshold)

    non_occ = tf.concat([_source_major(fwd["non_occluded"])] * 2, 0)
    app_inputs = apportion.ApportionInputs(
        phi_rigid=fwd["phi_rigid"][0], phi_flow=fwd["phi_flow"][0],
        phi_identity=fwd["phi_identity"], rigid_flow=fwd["rigid_flow"],
        optical_flow=fwd["optical_flow"], non_occluded=fwd["non_occluded"])

    @tf.function
    def aux_losses():
        with tf.GradientTape() as tape:
            tape.watch(disps + flows + [t_stack])
            depths = [disp_to_depth(step_lib._resize(d, height, width),  # noqa  (private helpers of the step)
                                    opts.min_depth, opts.max_depth)[1] for d in disps]
            total = 0.0
            for s in range(num_scales):
                h, wd = disps[s].shape[1], disps[s].shape[2]
                tgt_s = step_lib._downsample_image(target, h, wd)  # noqa  (private helpers of the step)
                src_s = step_lib._downsample_image(src_stack, h, wd)  # noqa  (private helpers of the step)
                total += smoothness.disparity_smoothness(disps[s], tgt_s)
                total += smoothness.flow_smoothness(
                    flows[s], tf.concat([tf.concat([tgt_s] * num_src, 0), src_s], 0))
                total += consistency.forward_backward_loss(
                    flows[s], tf.concat([flow_bw[s], flow_fw[s]], 0),
                    step_lib._downsample_mask(non_occ, width // wd))  # noqa  (private helpers of the step)
            d_t = tf.concat([depths[0]] * num_src, 0)
            diff, valid = consistency.geometric_consistency(
                tf.concat([d_t, d_t], 0), tf.concat([d_t, d_t], 0),
                tf.concat([t_stack, geometry.invert_transform(t_stack)], 0),
                tf.concat([K_rep] * 2, 0))
            total += consistency.masked_mean(diff, valid)
            mask = non_occ[:num_src * b]
            total += consistency.epipolar_loss(tf.stop_gradient(flows[0][:num_src * b]),
                                               t_stack, K_rep, mask)
            total += consistency.epipolar_loss(flows[0][:num_src * b],
                                               tf.stop_gradient(t_stack), K_rep, mask)
            total += consistency.variance_loss(depths[0])
        return tape.gradient(total, disps + flows + [t_stack])

    phis_r, phis_f = list(fwd["phi_rigid"]), list(fwd["phi_flow"])
    any_strategy = next(iter(estimator_strategies.values()))
    app = any_strategy(app_inputs, use_quantiles=True, update_quantiles=False)

    @tf.function
    def photometric_losses():
        with tf.GradientTape() as tape:
            tape.watch(phis_r + phis_f)
            total = 0.0
            for s in range(num_scales):
                total += photometric.rigid_photometric_loss(
                    phis_r[s], fwd["phi_identity"], app.rigid_mask, app.rigid_normalisation,
                    seed=tf.random.experimental.stateless_fold_in(seed, s))
                total += photometric.flow_photometric_loss(phis_f[s], app.flow_weight)
        return tape.gradient(total, phis_r + phis_f)

    comps = {
        "depth_net": net_fn(step.depth_net, depth_in),
        "pose_net": net_fn(step.pose_net, pairs),
        "flow_net": net_fn(step.flow_net, flow_in),
        "warps": warps, "phi_ssim": phi_ssim, "occlusion": occlusion,
        "aux_losses": aux_losses, "photometric_losses": photometric_losses,
    }
    delta = apportion.compute_delta(app_inputs.phi_rigid, app_inputs.phi_flow)
    dflow = apportion.compute_delta_flow(app_inputs.rigid_flow, app_inputs.optical_flow)
    values = {apportion.DELTA: delta, apportion.DELTA_FLOW_X: dflow[..., 0:1],
              apportion.DELTA_FLOW_Y: dflow[..., 1:2]}
    domain = app_inputs.non_occluded > 0.5
    for name, strat in estimator_strategies.items():
        comps[f"apportion_{name}"] = tf.function(
            lambda s=strat: s(app_inputs, use_quantiles=True, update_quantiles=True).rigid_mask)
        comps[f"quantile_update_{name}"] = tf.function(
            lambda s=strat: s.quantile_layer.update(values, domain)[1])

    dp_vars, f_vars = step.depth_pose_variables, step.flow_variables
    opt_dp = step.depth_pose_optimizer.__class__.from_config(step.depth_pose_optimizer.get_config())
    opt_f = step.flow_optimizer.__class__.from_config(step.flow_optimizer.get_config())
    opt_dp.build(dp_vars)
    opt_f.build(f_vars)
    g_dp = [tf.zeros_like(v) + 1e-6 for v in step_lib.tf_variables(dp_vars)]  # noqa  (private helpers of the step)
    g_f = [tf.zeros_like(v) + 1e-6 for v in step_lib.tf_variables(f_vars)]  # noqa  (private helpers of the step)

    @tf.function
    def optimizers():
        opt_dp.apply(g_dp, dp_vars)
        opt_f.apply(g_f, f_vars)
        return tf.constant(0)

    comps["optimizers"] = optimizers
    comps["step"] = tf.function(lambda: step.train_step(batch, phase, seed))
    return comps


def _source_major(x):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    perm = [1, 0] + list(range(2, x.shape.rank))
    y = tf.transpose(x, perm)
    return tf.reshape(y, [-1] + x.shape[2:].as_list())


def profile_size(height, width, batch_size, flow_layers, repeats, warmup, estimator, log=print):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from benchmarks import throughput  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training.step import (  # pylint: disable=import-outside-toplevel
        CoopTrainStep, Phase)
    cfg = throughput.Config(height=height, width=width, batch_size=batch_size,
                            flow_layers=flow_layers)
    nets, opts = throughput._build_networks(cfg, "float32")  # noqa  (private helpers of the step)
    strategy = apportion.make_strategy("coopnet", quantile_estimator=estimator)
    step = CoopTrainStep(*nets, *opts, strategy, global_batch_size=batch_size)
    step.build()
    batch = throughput._random_batch(cfg)  # noqa  (private helpers of the step)
    phase = Phase(burn_in=False, update_quantiles=True)
    seed = tf.constant([0, 1], tf.int64)
    log(f"[step_profile] {height}x{width} b{batch_size}: recording the forward")
    fwd = step.forward(batch, phase)
    strategies = {e: apportion.make_strategy("coopnet", quantile_estimator=e) for e in ESTIMATORS}
    comps = _components(step, fwd, batch, phase, seed, strategies)
    first = {}
    for name, fn in comps.items():
        start = time.perf_counter()
        for _ in range(warmup):
            common.sync(fn())
        first[name] = time.perf_counter() - start
        log(f"[step_profile]   warm {name}: {first[name]:.1f} s")
    times: Dict[str, List[float]] = {n: [] for n in comps}
    for r in range(repeats):
        for name, fn in comps.items():
            start = time.perf_counter()
            common.sync(fn())
            times[name].append(time.perf_counter() - start)
        log(f"[step_profile]   round {r + 1}/{repeats}: step {times['step'][-1]:.2f} s")
    med = {n: statistics.median(v) for n, v in times.items()}
    step_s = med["step"]
    in_step = [n for n in comps if n != "step" and not n.startswith("quantile_update")
               and not (n.startswith("apportion_") and n != f"apportion_{estimator}")]
    shares = {n: med[n] / step_s for n in comps if n != "step"}
    network_s = sum(med[n] for n in NETWORKS)
    attributed = sum(med[n] for n in in_step)
    return {
        "height": height, "width": width, "batch_size": batch_size,
        "flow_layers": flow_layers, "step_estimator": estimator,
        "median_s": med, "times_s": times, "warmup_s": first, "share_of_step": shares,
        "components_in_step": in_step,
        "unattributed_share": 1.0 - attributed / step_s,
        "network_share": network_s / step_s,
        "non_network_share": 1.0 - network_s / step_s,
        "non_network_components_share": (attributed - network_s) / step_s,
        "snippets_per_second": batch_size / step_s,
    }


def _table(entry) -> str:
    rows = [[n, entry["median_s"][n], 100.0 * entry["share_of_step"][n]]
            for n in entry["median_s"] if n != "step"]
    rows.append(["unattributed (step − Σ in-step components)", None,
                 100.0 * entry["unattributed_share"]])
    rows.append(["step", entry["median_s"]["step"], 100.0])
    return common.markdown_table(["component", "median [s]", "% of step"], rows)


def _plot(result, path):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    sizes = result["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, (key, entry) in zip(axes[0], sizes.items()):
        names = entry["components_in_step"] + ["unattributed"]
        vals = [100.0 * entry["share_of_step"][n] for n in entry["components_in_step"]]
        vals.append(100.0 * entry["unattributed_share"])
        colors = ["tab:blue" if n in NETWORKS else "tab:orange" for n in names]
        ax.barh(names[::-1], vals[::-1], color=colors[::-1])
        ax.set_xlabel("% of the training step (median)")
        ax.set_title(f"{key}, batch {entry['batch_size']}: step {entry['median_s']['step']:.2f} s,"
                     f" non-network {100 * entry['non_network_share']:.0f} %", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="128x416,64x192", help="HxW list")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--flow_layers", default="50,18",
                   help="flow ResNet depth per size (base.gin: 50; synthetic.gin: 18)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--estimator", default="p2", choices=ESTIMATORS,
                   help="quantile estimator of the timed step")
    p.add_argument("--output_dir", default="benchmarks/results")
    p.add_argument("--output_name", default=None)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="only combine the sizes of these result files into the output")
    a = p.parse_args(argv)
    if a.merge:
        return _merge(a.merge, a.output_dir, a.output_name or "step_profile_cpu")
    start = time.time()
    meta = common.run_metadata([sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))
    meta["uptime_start"] = _uptime()
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",") if s]
    layers = [int(v) for v in a.flow_layers.split(",")]
    layers += [layers[-1]] * (len(sizes) - len(layers))
    device = common.device_tag()
    result = {"benchmark": "step_profile", "device": device.upper(), "method": (
        "timed sub-functions with gradients, interleaved rounds, medians; see the module "
        "docstring"), "sizes": {}}
    for (h, w), fl in zip(sizes, layers):
        entry = profile_size(h, w, a.batch_size, fl, a.repeats, a.warmup, a.estimator)
        result["sizes"][f"{h}x{w}"] = entry
        print(f"\n{h}x{w} batch {a.batch_size} (flow R{fl}); non-network share "
              f"{100 * entry['non_network_share']:.1f} %\n" + _table(entry))
    meta["uptime_end"] = _uptime()
    result["metadata"] = common.finish_metadata(meta, start)
    name = a.output_name or f"step_profile_{device}"
    path = common.write_json(os.path.join(a.output_dir, f"{name}.json"), result)
    _plot(result, os.path.join(a.output_dir, f"{name}.png"))
    print("wrote", path)


def _merge(paths, output_dir, name):
    """One result (JSON + chart) from separate per-size runs (each keeps its metadata)."""
    import json  # pylint: disable=import-outside-toplevel
    merged = None
    for path in paths:
        with open(path) as f:
            part = json.load(f)
        meta = part.pop("metadata")
        if merged is None:
            merged = dict(part, sizes={}, metadata={"runs": []})
        for key, entry in part["sizes"].items():
            merged["sizes"][key] = entry
        merged["metadata"]["runs"].append(dict(meta, sizes=list(part["sizes"])))
    out = common.write_json(os.path.join(output_dir, f"{name}.json"), merged)
    _plot(merged, os.path.join(output_dir, f"{name}.png"))
    print("wrote", out)


def _uptime():
    import subprocess  # pylint: disable=import-outside-toplevel
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return None


if __name__ == "__main__":
    main()
