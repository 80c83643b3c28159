r"""How well does the flow partner know the motion after the shared burn-in?

    python benchmarks/flow_competence.py                                  # current code
    python benchmarks/flow_competence.py --levers=current,pixel_smooth,bwd_photo
    python benchmarks/flow_competence.py --levers=pixel_smooth+bwd_photo+burn6

For each lever setting, trains the burn-in of `benchmarks/reproduce_synthetic.py` only
(its world: 64x192, num_objects=20, moving_fraction=0.75; its schedule: 3 epochs x 90
steps, coopnet configuration with uniform flow weights, lr 1e-4) through the project's own
training code (`reproduce_synthetic._train` -> `coopnet_tf.training.loop.train_and_evaluate`
with ``gin/synthetic.gin`` + gin bindings), then evaluates on the TEST split of that world:

* flow EPE (px, F_{t->s}, both sources, pooled) on moving / static / all pixels, the same
  for zero flow, and ``ratio_moving`` = EPE_moving / EPE_zero_moving (the goal: <= 0.5);
  a pixel is moving for a source when the GT moving mask is set for that source;
* Φ_F vs Φ_D at scale 0 on non-occluded pixels: the fraction with Δ = Φ_D − Φ_F < 0
  (rigid reconstructs better) on all / static / moving pixels;
* the spread over (image, source) pairs of the tails' share |Γ|/|P| that Eq. 11 would use
  with the run's frozen P² quantiles (what per-pair vs batch-wide normalisation changes).

A lever setting is a ``+``-joined list of tokens (`LEVERS`): gin bindings
(``pixel_smooth``, ``bwd_photo``, ``eq11_batch``, ...), schedule/resolution changes
(``burn6``: 6 burn-in epochs; ``res96``: 96x288, ``res128``: 128x384) and ``post``: one
more epoch with the coopnet apportionment (quantiles in use, lr 1e-4 as in the
benchmark's epoch 4), resumed from the burn-in of the same setting without ``post`` and
``eq11_*`` (trained first when missing). ``current`` is the code's behaviour.

Each setting trains in ``<model_root>/<setting>/run`` (default model_root
``benchmarks/results/runs/flow_competence``, git-ignored) with its own gin snapshot; a
finished setting is not retrained, its result is kept in ``<setting>/competence.json``,
and every invocation rewrites ``<output_dir>/flow_competence.json`` (+ ``.md``) from all
finished settings, so settings can be trained by separate processes (each run under a
lock, ``<setting>/run.lock``: overlapping ``--levers`` wait instead of training one
setting twice). A longer burn-in (``burn6``, ``burn9``) continues from the longest
finished setting with the same other tokens in the same order and a shorter burn-in
(``pyramid+burn6`` from ``pyramid``, ``burn6`` from ``current``;
`shorter_burn_in_settings`): exact, since the burn-in's training does not depend on where
it ends (tests/test_train_loop.py); ``resumed_from`` and ``steps_from_resume`` in the
result say so, ``train_seconds`` is the resumed part.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks import reproduce_synthetic as rs  # noqa: E402

# token -> gin bindings
LEVERS: Dict[str, List[str]] = {
    "current": [],
    # (a) flow smoothness in pixels of its scale instead of width/height-normalised units
    "pixel_smooth": ["step_options.flow_smoothness_units = 'pixels'"],
    # (b) F_{s->t} gets its own photometric term
    "bwd_photo": ["step_options.backward_flow_photometric = True"],
    # (e) each scale's flow warps images of its own resolution (a pyramid)
    "pyramid": ["step_options.flow_image_pyramid = True"],
    # (c) Eq. 11 normalised over the batch's pixels instead of per (image, source) pair
    "eq11_batch": ["make_apportionment.flow_normalisation = 'batch'"],
    "eq11_pair": ["make_apportionment.flow_normalisation = 'pair'"],
}
# separate flow smoothness weight: "ls_flow=<value>" -> loss_weights.lambda_s_flow
SCHEDULE_TOKENS = {"burn6": {"burn_in_epochs": 6}, "burn9": {"burn_in_epochs": 9},
                   "res96": {"height": 96, "width": 288},
                   "res128": {"height": 128, "width": 384}}
POST = "post"


@dataclasses.dataclass
class Config:
    output_dir: str = "benchmarks/results"
    model_root: Optional[str] = None     # default <output_dir>/runs/flow_competence
    levers: Sequence[str] = ("current",)
    seed: int = 0
    eval_only: bool = False
    basin: bool = False
    output_name: str = "flow_competence"
    progress: bool = False


def parse_setting(setting: str):
    """(bindings, Config overrides for reproduce_synthetic, post, burn-in setting name)."""
    tokens = [t for t in setting.split("+") if t]
    bindings: List[str] = []
    overrides: Dict[str, object] = {}
    post = False
    base = []
    for tok in tokens:
        if tok == POST:
            post = True
            continue
        if tok in LEVERS:
            bindings += LEVERS[tok]
        elif tok in SCHEDULE_TOKENS:
            overrides.update(SCHEDULE_TOKENS[tok])
        elif tok.startswith("ls_flow="):
            bindings.append(f"loss_weights.lambda_s_flow = {float(tok.split('=', 1)[1])!r}")
        else:
            raise ValueError(f"unknown lever token {tok!r} in {setting!r}; tokens: "
                             f"{sorted(LEVERS) + sorted(SCHEDULE_TOKENS)} ls_flow=<x> {POST}")
        if not tok.startswith("eq11_"):
            base.append(tok)
    return bindings, overrides, post, "+".join(base) or "current"


def bench_config(cfg: Config, setting: str) -> rs.Config:
    bindings, overrides, post, _ = parse_setting(setting)
    burn = int(overrides.get("burn_in_epochs", rs.Config.burn_in_epochs))
    # lr 1e-4 throughout the burn-in and the first post-burn-in epoch (as in the benchmark)
    extra = burn + 2
    return dataclasses.replace(
        rs.Config(), model_root=os.path.join(_root(cfg), setting), seeds=(cfg.seed,),
        num_epochs=extra, lr_boundary_epoch=burn + 1, extra_bindings=tuple(bindings),
        progress=cfg.progress, **overrides)


def _root(cfg: Config) -> str:
    return cfg.model_root or os.path.join(cfg.output_dir, "runs", "flow_competence")


def _steps(bcfg: rs.Config, post: bool) -> int:
    return (bcfg.burn_in_epochs + (1 if post else 0)) * bcfg.steps_per_epoch


BURN_TOKENS = ("burn6", "burn9")   # longer burn-ins, shortest first ("": the default 3)


def shorter_burn_in_settings(setting: str) -> List[str]:
    """The settings that train exactly as `setting` up to their own (shorter) burn-in end,
    longest first: the same tokens with a shorter burn token. During the burn-in the
    networks' training does not depend on where it ends (the learning rate is constant
    until after it, the P² estimators run only in its last epoch, reset at each epoch start
    and touch no network: tests/test_train_loop.py), so a longer burn-in may continue
    from a shorter one's checkpoint. None for ``post`` settings (they resume from their
    burn-in already)."""
    tokens = [t for t in setting.split("+") if t]
    burns = [t for t in tokens if t in BURN_TOKENS]
    if POST in tokens or not burns:
        return []
    rest = [t for t in tokens if t not in BURN_TOKENS]
    shorter = list(reversed([""] + list(BURN_TOKENS[:BURN_TOKENS.index(burns[-1])])))
    return ["+".join(rest + ([b] if b else [])) or "current" for b in shorter]


def train_setting(cfg: Config, setting: str) -> Dict[str, object]:
    """Trains `setting` (and, for ``post``, its burn-in first; for a longer burn-in, from
    the longest finished shorter one); returns timing info."""
    bcfg = bench_config(cfg, setting)
    run_dir = os.path.join(bcfg.model_root, "run")
    with common.run_dir_lock(run_dir):     # another process training it: wait, then reuse
        return _train_setting(cfg, setting, bcfg, run_dir)


def _train_setting(cfg: Config, setting: str, bcfg: rs.Config,
                   run_dir: str) -> Dict[str, object]:
    _, _, post, base = parse_setting(setting)
    steps = _steps(bcfg, post)
    info = {"steps": steps, "train_seconds": 0.0, "resumed_from": None}
    if rs._finished(run_dir, steps):  # pylint: disable=protected-access
        return _load(os.path.join(bcfg.model_root, "competence.json")).get("training", info)
    for shorter in shorter_burn_in_settings(setting):
        short_cfg = bench_config(cfg, shorter)
        short_dir = os.path.join(short_cfg.model_root, "run")
        short_steps = _steps(short_cfg, False)
        if rs._finished(short_dir, short_steps):  # pylint: disable=protected-access
            rs._start_from(short_dir, run_dir)  # pylint: disable=protected-access
            info["resumed_from"] = shorter
            info["steps_from_resume"] = steps - short_steps
            break
    if post:
        base_cfg = bench_config(cfg, base)
        base_dir = os.path.join(base_cfg.model_root, "run")
        if not rs._finished(base_dir, _steps(base_cfg, False)):  # pylint: disable=protected-access
            train_setting(cfg, base)
        rs._start_from(base_dir, run_dir)  # pylint: disable=protected-access
        info["resumed_from"] = base
        info["steps_from_resume"] = bcfg.steps_per_epoch
    snapshot = os.path.join(bcfg.model_root, "gin_snapshot")
    if os.path.isdir(snapshot):
        shutil.rmtree(snapshot)
    print(f"[flow_competence] {setting}: training to step {steps}", flush=True)
    start = time.time()
    rs._train(bcfg, run_dir, rs.BURN_IN_METHOD, cfg.seed,  # pylint: disable=protected-access
              stop_at_step=steps)
    info["train_seconds"] = round(time.time() - start, 1)
    info["load_average_after"] = common.load_average()
    return info


def tails_share_spread(arr, frozen, tail_probability=0.15) -> Dict[str, object]:
    """What per-pair vs batch-wide normalisation of Eq. 11 changes on this Δ.

    Per (image, source) pair b: the share |Γ_b|/|P_b| of the non-occluded pixels in Γ
    (Δ outside the tails bounds [q_t, q_{1-t}]) and the ratio of the weight a Γ pixel
    gets per pair, |P_b|/|Γ_b|, to the batch-wide one, |P|/|Γ| (1 everywhere: the two
    normalisations agree). Bounds: the run's frozen P² quantiles when it has them, else
    the exact quantiles of Δ on the test set (``bounds``)."""
    dom = arr["non_occ"]
    if frozen is not None and "tails" in frozen:
        lo, hi = frozen["tails"]
        bounds = "frozen P2"
    else:
        lo, hi = np.quantile(arr["delta"][dom], [tail_probability, 1.0 - tail_probability])
        bounds = "test-set quantiles"
    gamma = ((arr["delta"] < lo) | (arr["delta"] > hi)) & dom
    n_p = dom.sum(axis=(2, 3)).astype(np.float64)
    n_g = gamma.sum(axis=(2, 3)).astype(np.float64)
    ok = (n_p > 0) & (n_g > 0)
    share = n_g[ok] / n_p[ok]
    ratio = (n_p[ok] / n_g[ok]) / (n_p[ok].sum() / n_g[ok].sum())
    q = lambda x: {"mean": float(x.mean()), "std": float(x.std()),  # noqa: E731
                   "p05": float(np.percentile(x, 5)), "p95": float(np.percentile(x, 95))}
    return {"bounds": bounds, "tails": [float(lo), float(hi)], "share": q(share),
            "gamma_weight_pair_over_batch": q(ratio)}


def evaluate_setting(cfg: Config, setting: str, test_pattern: str) -> Dict[str, object]:
    bcfg = bench_config(cfg, setting)
    run_dir = os.path.join(bcfg.model_root, "run")
    arr, frozen, _, _ = rs.collect_predictions(run_dir, test_pattern, bcfg.height, bcfg.width)
    moving = arr["moving"]
    flow = rs.flow_metrics(arr["flow"], arr["gt_flow"], moving)
    zero = rs.flow_metrics(np.zeros_like(arr["gt_flow"]), arr["gt_flow"], moving)
    dom = arr["non_occ"]
    neg = {}
    for name, m in (("all", dom), ("static", dom & ~moving), ("moving", dom & moving)):
        neg[name] = float((arr["delta"][m] < 0).mean()) if m.any() else None
    px = 192.0 / bcfg.width   # EPE in pixels of the 64x192 frame, comparable across sizes
    # can the net represent the motion: predicted vs GT magnitude, and where it gets close
    mag = np.linalg.norm(arr["flow"], axis=-1)
    gt_mag = np.linalg.norm(arr["gt_flow"], axis=-1)
    epe = np.linalg.norm(arr["flow"].astype(np.float64) - arr["gt_flow"], axis=-1)
    motion = {"pred_magnitude_moving": float(mag[moving].mean()),
              "gt_magnitude_moving": float(gt_mag[moving].mean()),
              "pred_magnitude_max": float(mag.max()),
              "epe_moving_median": float(np.median(epe[moving])),
              "fraction_moving_epe_below_3px": float((epe[moving] < 3.0).mean())}
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    ckpt = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    result = {
        "setting": setting,
        "checkpoint_step": int(ckpt.rsplit("-", 1)[-1]) if ckpt else None,
        "resolution": [bcfg.height, bcfg.width],
        "flow": flow,
        "zero_flow": zero,
        "ratio_moving": flow["epe_moving"] / zero["epe_moving"],
        "ratio_static": flow["epe_static"] / zero["epe_static"],
        "ratio_all": flow["epe_all"] / zero["epe_all"],
        "epe_moving_px192": flow["epe_moving"] * px,
        "fraction_delta_negative": neg,
        "motion": motion,
        "moving_pixel_fraction": float(moving.mean()),
        "test_pairs": int(moving.shape[0] * moving.shape[1]),
    }
    if frozen is not None:
        # the tails bounds of the run's quantiles, when the strategy estimated them
        try:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel
            strategy = apportion.CoopNetStrategy(jit_compile=False)
            layer = strategy.quantile_layer
            tf.train.Checkpoint(quantiles=layer).restore(
                tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))).expect_partial()
            frozen = dict(frozen, tails=[float(layer.current(apportion.DELTA, p))
                                         for p in strategy.tail_probs])
        except Exception as e:  # pragma: no cover - diagnostic only
            print(f"[flow_competence] tails quantiles unavailable: {e}")
    result["tails_share_per_pair"] = tails_share_spread(arr, frozen)
    return result


BASIN_ALPHAS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
BASIN_FACTORS = (1, 4)


def photometric_basin(test_pattern: str, height: int, width: int) -> Dict[str, object]:
    """Does the photometric error see the motion? Mean Φ(I_t, I_s(p + α F_gt)) on moving
    and static pixels for α from 0 (zero flow) to 1 (GT flow), on the full-resolution
    images (what the loss of every scale uses) and on images area-downsampled by 4 (what a
    per-scale image pyramid would use). No network involved."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf import geometry, specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.data import pipeline  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import photometric  # pylint: disable=import-outside-toplevel
    ds = pipeline.make_dataset(test_pattern, batch_size=8, height=height, width=width,
                               training=False, with_ground_truth=True, deterministic=True)
    sums = {(f, a, sub): [0.0, 0] for f in BASIN_FACTORS for a in BASIN_ALPHAS
            for sub in ("moving", "static")}
    for batch in ds:
        frames = tf.cast(batch[specs.KEY_FRAMES], tf.float32)
        target = frames[:, specs.TARGET_INDEX]
        for k, i in enumerate(specs.SOURCE_INDICES):
            flow = batch[specs.KEY_GT_FLOW][:, k]
            moving = batch[specs.KEY_GT_MOVING][:, k] > 0.5
            for f in BASIN_FACTORS:
                t, src, fl, mv = target, frames[:, i], flow, moving
                if f > 1:
                    t = tf.nn.avg_pool2d(t, f, f, "VALID")
                    src = tf.nn.avg_pool2d(src, f, f, "VALID")
                    fl = tf.nn.avg_pool2d(fl, f, f, "VALID") / f
                    mv = tf.nn.max_pool2d(tf.cast(mv, tf.float32), f, f, "VALID") > 0.5
                for a in BASIN_ALPHAS:
                    warped, _ = geometry.flow_warp(src, a * fl)
                    phi = photometric.photometric_error(t, warped).numpy()
                    m = mv.numpy()
                    for sub, sel in (("moving", m), ("static", ~m)):
                        sums[(f, a, sub)][0] += float(phi[sel].sum())
                        sums[(f, a, sub)][1] += int(sel.sum())
    return {f"1/{f}": {sub: {str(a): sums[(f, a, sub)][0] / max(sums[(f, a, sub)][1], 1)
                             for a in BASIN_ALPHAS} for sub in ("moving", "static")}
            for f in BASIN_FACTORS}


def _load(path: str) -> Dict[str, object]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


COLUMNS = ("setting", "step", "EPE moving", "zero EPE moving", "ratio moving",
           "EPE static", "ratio static", "P(Δ<0) moving", "P(Δ<0) static", "train min",
           "load")


def table(results: Sequence[Dict[str, object]]) -> str:
    rows = []
    for r in results:
        t = r.get("training") or {}
        rows.append([r["setting"], r.get("checkpoint_step"), r["flow"]["epe_moving"],
                     r["zero_flow"]["epe_moving"], r["ratio_moving"], r["flow"]["epe_static"],
                     r["ratio_static"], r["fraction_delta_negative"]["moving"],
                     r["fraction_delta_negative"]["static"],
                     (t.get("train_seconds") or 0) / 60.0,
                     str(t.get("load_average_after"))])
    return common.markdown_table(COLUMNS, rows)


def run(cfg: Config, argv=None) -> Dict[str, object]:
    meta = common.run_metadata(argv)
    start = time.time()
    data_dir = rs.ensure_dataset(rs.Config())
    from coopnet_tf.data import synthetic  # pylint: disable=import-outside-toplevel
    for setting in cfg.levers:
        if setting != "none":
            parse_setting(setting)           # fail before training anything
    for setting in cfg.levers:
        if setting == "none":
            continue
        bcfg = bench_config(cfg, setting)
        path = os.path.join(bcfg.model_root, "competence.json")
        training = None if cfg.eval_only else train_setting(cfg, setting)
        old = _load(path)
        if training is None:
            training = old.get("training")
        d = rs.ensure_dataset(bcfg) if (bcfg.height, bcfg.width) != (64, 192) else data_dir
        result = evaluate_setting(cfg, setting, synthetic.file_pattern(d, "test"))
        result["training"] = training
        result["command"] = meta.get("command")
        common.write_json(path, result)
        print(table([result]), flush=True)
    root = _root(cfg)
    basin_path = os.path.join(root, "photometric_basin.json")
    if cfg.basin:
        common.write_json(basin_path, photometric_basin(synthetic.file_pattern(data_dir, "test"),
                                                        64, 192))
    # the summary over every finished setting under model_root
    results = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        r = _load(os.path.join(root, name, "competence.json"))
        if r:
            results.append(r)
    payload = {"benchmark": "flow_competence", "config": dataclasses.asdict(cfg),
               "protocol": __doc__.split("\n\n")[2], "results": results,
               "photometric_basin": _load(basin_path) or None,
               "metadata": common.finish_metadata(meta, start)}
    os.makedirs(cfg.output_dir, exist_ok=True)
    common.write_json(os.path.join(cfg.output_dir, f"{cfg.output_name}.json"), payload)
    md = table(results)
    with open(os.path.join(cfg.output_dir, f"{cfg.output_name}.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return payload


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=d.output_dir)
    p.add_argument("--model_root", default=None)
    p.add_argument("--levers", default=",".join(d.levers),
                   help="comma-separated settings, each a '+'-joined list of tokens")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval_only", action="store_true")
    p.add_argument("--basin", action="store_true",
                   help="also measure Φ along zero flow -> GT flow (photometric_basin)")
    p.add_argument("--output_name", default=d.output_name)
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    return Config(output_dir=a.output_dir, model_root=a.model_root,
                  levers=tuple(s.strip() for s in a.levers.split(",") if s.strip()),
                  seed=a.seed, eval_only=a.eval_only, basin=a.basin,
                  output_name=a.output_name, progress=a.progress)


def main(argv=None):
    cfg = parse_args(argv)
    run(cfg, argv=[sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
