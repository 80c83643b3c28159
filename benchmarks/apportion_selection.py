"""Precision/recall of CoopNet's rigid set V against the synthetic world's moving masks.

Ground-truth depth, pose and flow plus noise stand in for the networks' predictions;
Δ, Δflow, the occlusion mask and V are computed as training does, quantiles are
estimated over one "epoch" of the snippets with P² and frozen, then V is compared with
the ground-truth moving masks (tests/test_apportion.py runs the small default)::

  python benchmarks/apportion_selection.py --height=128 --width=416 --sequences=6 --frames=12
"""
import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coopnet_tf.losses import apportion  # noqa: E402
from coopnet_tf.losses.apportion import ApportionInputs  # noqa: E402


def _synthetic_snippets(config, num_sequences, split="val"):
    from coopnet_tf.data import synthetic
    for i in range(num_sequences):
        seq = synthetic.render_sequence(config, split, i)
        for t in seq.target_indices():
            snippet = seq.snippet(t)
            # Source -> target flows (the occlusion mask splats them).
            snippet["reverse_flow"] = np.stack(
                [seq.flow_and_mask(s, t)[0] for s in (t - 1, t + 1)]).astype(np.float32)
            yield snippet


def _noisy_predictions(batch, rng, depth_noise=0.05, flow_noise=0.3, rotation_noise=1e-3,
                       translation_noise=0.02):
    """ApportionInputs from GT + noise, and the moving masks `[B, S, H, W, 1]` bool.

    Depth: GT times exp(smooth noise, std `depth_noise`); pose: GT with a random rotation
    (std `rotation_noise` rad) and translation noise (`translation_noise` x |t|); flows
    (both directions): GT + N(0, `flow_noise` px)."""
    from coopnet_tf.geometry import pose as pose_lib
    from coopnet_tf.geometry import warp
    from coopnet_tf.losses import consistency, photometric

    frames = tf.constant(np.stack([b["frames"] for b in batch]).astype(np.float32) / 255.0)
    K = tf.constant(np.stack([b["intrinsics"] for b in batch]))
    depth = np.stack([b["gt_depth"] for b in batch])[..., None]
    nb, h, w, _ = depth.shape
    low = rng.normal(0.0, depth_noise, (nb, max(h // 8, 1), max(w // 8, 1), 1))
    depth_pred = depth * tf.exp(tf.image.resize(low.astype(np.float32), [h, w]))
    target = frames[:, 1]
    out = {k: [] for k in ("phi_rigid", "phi_flow", "phi_identity", "rigid_flow",
                           "optical_flow", "non_occluded", "moving")}
    for si, fi in enumerate((0, 2)):
        T = np.stack([b["gt_pose"][si] for b in batch]).astype(np.float64)
        rot = pose_lib.axis_angle_to_matrix(
            tf.constant(rng.normal(0.0, rotation_noise, (nb, 3)), tf.float32)).numpy()
        T_pred = T.copy()
        T_pred[:, :3, :3] = rot @ T[:, :3, :3]
        T_pred[:, :3, 3] += (rng.normal(0.0, translation_noise, (nb, 3))
                             * np.linalg.norm(T[:, :3, 3], axis=-1, keepdims=True))
        source = frames[:, fi]
        warped, _, rigid = warp.rigid_warp(source, depth_pred, tf.constant(T_pred, tf.float32), K)
        flow = np.stack([b["gt_flow"][si] for b in batch])
        flow = flow + rng.normal(0.0, flow_noise, flow.shape).astype(np.float32)
        flow_warped, _ = warp.flow_warp(source, flow)
        reverse = np.stack([b["reverse_flow"][si] for b in batch])
        reverse = reverse + rng.normal(0.0, flow_noise, reverse.shape).astype(np.float32)
        out["phi_rigid"].append(photometric.photometric_error(target, warped))
        out["phi_flow"].append(photometric.photometric_error(target, flow_warped))
        out["phi_identity"].append(photometric.photometric_error(target, source))
        out["rigid_flow"].append(rigid)
        out["optical_flow"].append(tf.constant(flow))
        out["non_occluded"].append(consistency.non_occluded_mask(tf.constant(reverse)))
        out["moving"].append(np.stack([b["gt_moving_mask"][si] for b in batch])[..., None] > 0)
    moving = np.stack(out.pop("moving"), axis=1)
    inputs = ApportionInputs(**{k: tf.stack(v, axis=1) for k, v in out.items()})
    return inputs, moving


def synthetic_selection_metrics(height=64, width=192, sequences=2, frames=8, batch_size=4,
                                seed=0, **noise):
    """Precision/recall of "pixel in V" (and V_η, V_ζ) versus "pixel static"."""
    from coopnet_tf.data import synthetic
    config = synthetic.WorldConfig(height=height, width=width, frames_per_sequence=frames,
                                   num_val_sequences=sequences)
    data = list(_synthetic_snippets(config, sequences))
    rng = np.random.default_rng(seed)
    batches = [_noisy_predictions(data[i:i + batch_size], rng, **noise)
               for i in range(0, len(data) - batch_size + 1, batch_size)]
    strategy = apportion.make_strategy("coopnet")
    layer = strategy.quantile_layer
    strategy.start_epoch()  # epoch k: estimate ...
    for inputs, _ in batches:
        strategy(inputs, use_quantiles=False, update_quantiles=True)
    strategy.end_epoch()  # ... freeze, and select with them in epoch k+1
    cur = {k: float(v) for k, v in layer.estimates_dict("current").items()}
    counts = {k: np.zeros(4) for k in ("V", "V_eta", "V_zeta")}
    for inputs, moving in batches:
        app = strategy(inputs, use_quantiles=True, update_quantiles=False)
        d = apportion.compute_delta(inputs.phi_rigid, inputs.phi_flow).numpy()
        df = apportion.compute_delta_flow(inputs.rigid_flow, inputs.optical_flow).numpy()
        v_eta = (d >= cur["delta_q0.35"]) & (d <= cur["delta_q0.65"])
        dfx, dfy = df[..., :1], df[..., 1:]
        v_zeta = ((dfx >= cur["delta_flow_x_q0.25"]) & (dfx <= cur["delta_flow_x_q0.75"])
                  & (dfy >= cur["delta_flow_y_q0.25"]) & (dfy <= cur["delta_flow_y_q0.75"]))
        v = app.rigid_mask.numpy() > 0.5
        np.testing.assert_array_equal(v, v_eta & v_zeta)
        for k, m in (("V", v), ("V_eta", v_eta), ("V_zeta", v_zeta)):
            counts[k] += [np.sum(m & ~moving), np.sum(m), np.sum(~moving), np.sum(m & moving)]
    n_moving = sum(int(m.sum()) for _, m in batches)
    n_all = sum(m.size for _, m in batches)
    result = {"pixels": n_all, "snippets": len(batches) * batch_size,
              "moving_fraction": n_moving / n_all, "quantiles": cur}
    for k, (tp, sel, static, mov) in counts.items():
        result[k] = {"precision": tp / sel, "recall": tp / static,
                     "moving_admitted": mov / max(n_moving, 1), "selected": sel / n_all}
    return result


def print_metrics(result):
    print(f"\n{result['snippets']} snippets, {result['pixels']} pixel-source pairs, "
          f"moving fraction {result['moving_fraction']:.4f}")
    print(f"{'set':8s} {'precision':>10s} {'recall':>8s} {'selected':>9s} {'moving in set':>14s}")
    for k in ("V_eta", "V_zeta", "V"):
        r = result[k]
        print(f"{k:8s} {r['precision']:10.4f} {r['recall']:8.4f} {r['selected']:9.4f} "
              f"{r['moving_admitted']:14.4f}")


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=synthetic_selection_metrics.__doc__)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--sequences", type=int, default=6)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--depth_noise", type=float, default=0.05)
    parser.add_argument("--flow_noise", type=float, default=0.3)
    args = parser.parse_args()
    res = synthetic_selection_metrics(args.height, args.width, args.sequences, args.frames,
                                      depth_noise=args.depth_noise, flow_noise=args.flow_noise)
    print_metrics(res)
    print(json.dumps(res, indent=1))
