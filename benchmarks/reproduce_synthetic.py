r"""The synthetic benchmark: every apportionment strategy, oracle arms, exact ground truth.

    python benchmarks/reproduce_synthetic.py                       # the default run (CPU)
    python benchmarks/reproduce_synthetic.py --seeds=0,1,2         # paired intervals
    python benchmarks/reproduce_synthetic.py --methods=coopnet,oracle_static
    python benchmarks/reproduce_synthetic.py --eval_only          # re-evaluate trained runs

Defaults: seed 0, ``baseline`` and ``coopnet`` (``DEFAULT_METHODS``; about an hour on the
2-core CPU, docs/synthetic_benchmark.md), 5 epochs x 90 steps at 64x192: a shared burn-in
of 3 epochs, then 2 epochs per arm (lr 1e-4, then 1e-5); 630 training steps in all. The
verdict questions need more arms and seeds (the committed run's command is in
docs/synthetic_benchmark.md). The instrument (arms, oracle
switches, metrics, verdict table, determinism) is described in docs/synthetic_benchmark.md.

Arms (``METHODS``): ``baseline`` (Table 4 row 1), ``glnet_min`` (row 2), ``coopnet``
(V = V_η ∩ V_ζ), ``coopnet_no_vzeta`` (V = V_η), and the ORACLES ``oracle_static`` (V = the
ground-truth static pixels), ``coopnet_gt_inputs`` and ``glnet_min_gt_inputs`` (Δ, Δflow
from the ground-truth flow: ``oracle.ground_truth_apportionment_inputs = True``), trained
through the project's own training code
(`coopnet_tf.training.loop.train_and_evaluate`, configured by ``gin/synthetic.gin`` + gin
bindings), on the SAME synthetic dataset (with a raised share of moving objects), with the
same seeds (data order, augmentation, per-step randomness and the networks'
initialisation) and the same number of steps; each run has its own ``model_dir`` under
``--model_root`` (default ``<output_dir>/runs``, git-ignored). The repository's ``gin/``
is copied to ``<model_root>/gin_snapshot`` when training starts (refreshed only when it
differs, and refused while another process trains from the old copy) and every run parses
that copy. Finished runs are not retrained (re-running with more seeds trains only the new
ones); ``--eval_only`` re-evaluates and keeps, in the JSON, how the models were trained
(``training_run``). Several processes may share a model_root (e.g. one per seed, to keep
more cores busy): each run directory is trained under a lock (``<run_dir>.lock``), so a
process reaching a run another one is training waits for it and then uses its result.

Shared burn-in (default ``--share_burn_in``): in the training protocol every method is
trained identically during the burn-in epochs (Monodepth2 loss for depth/pose, uniform
flow weights: ``CoopTrainStep`` uses the coopnet strategy with ``use_quantiles=False``, or
the baseline strategy for methods without quantiles, which is the same loss), and the data
order and every per-step random draw are functions of (seed, step) only. So the burn-in is
trained ONCE per seed (with the coopnet configuration, whose P² layer estimates the
quantiles during the last burn-in epoch), its checkpoint is copied into every method's
``model_dir``, and each method resumes from it with its own apportionment — the same
result as training each from scratch, at a fraction of the cost. ``--noshare_burn_in``
trains every run from scratch.

Evaluation on the held-out TEST sequences of the same world (never seen in training),
three families compared with paired 95 % intervals over seeds and a generated verdict
table (docs/synthetic_benchmark.md): static-pixel depth (scale from static pixels only),
pose (ATE-3, ATE-5, whole chained sequences), moving-pixel depth (static scale, and the
per-image median as a second column; depth bias); plus "pixel in V" as a static detector,
flow EPE static / moving beside zero flow's, and the Fig. 1-style Δ densities per arm with
the learned and with the ground-truth flow (``*_delta_density.png``).

Lee et al. arms (ICCV 2021, issue 17; opt-in, not in ``DEFAULT_METHODS``): ``lee`` (DAM +
CSAC), ``lee_no_csac`` (``lee.csac = False``), ``lee_no_dam`` (``build_motion_net.dam =
False``), and ``lee_jitter``, ``lee_no_csac_jitter``, ``lee_no_dam_jitter`` with
detector-like boxes. They share no burn-in with the flow arms: each trains from scratch
(arms that differ only in CSAC, a phase 2-3 term, share their phase 1) with
``--lee_gin_file`` (``gin/lee_synthetic.gin``) and the same world, size, seed, batch and
total number of steps (num_epochs x steps_per_epoch) as the other arms; Lee Table 1's
three phases are scaled to num_epochs as equal thirds, phase 3 taking the remainder
(``lee_phase_epochs``: 5 epochs -> 2, 2, 1; the paper: 10, 10 and an unstated phase 3),
at Lee's constant lr 1e-4. The jittered arms train on a second world whose config differs
only in ``box_jitter = 0.1`` (each box side moved out by up to 10 % of the box size, as Lee
et al. train) and ``box_miss_rate = 0.1``: the synthetic world renders its images and
ground truth independently of these two fields, so the images, ground truth, record files
and data order are those of the exact-box world, only the boxes differ. Every arm is
evaluated on the exact world's test split (its exact boxes only for CSAC's object
segmentation below). A Lee run's depth columns come from its depth net as for the other
arms, its pose from the motion
net's ego branch on the pair in temporal order (as in training and the exported ``pose``
SavedModel), its flow
columns from the total motion (ego-motion + residual, Lee Eq. 2) and the "object motion"
columns compare its residual field r, multiplied by the image's static depth scale (the
scale of the static-depth metrics), with the world's exact r on the moving pixels
(``eval/object_motion.object_motion_error``); it has no V. "CSAC seg. IoU" is Lee Table 5
on this world: CSAC (the training loss's ``csac_loss``, also for ``lee_no_csac*``, which
never ran it in training) on the predicted residual and depth with the test snippet's exact
target boxes, its best hypothesis's inliers > 0.5 as the object mask, IoU with the world's
object pixels inside the boxes (``object_segmentation_metrics``). Other arms show n/a there.

Writes ``<output_dir>/reproduce_synthetic.json`` (every number per seed, the means and
spreads, metadata: machine, versions, command, date, load) and
``<output_dir>/reproduce_synthetic.md`` (the tables). Not part of the test suite
(``tests/test_benchmarks_smoke.py`` runs it at a tiny setting).
"""
import argparse
import collections
import contextlib
import dataclasses
import functools
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

GT_INPUTS = "oracle.ground_truth_apportionment_inputs = True"
METHODS = {
    "baseline": ["make_apportionment.name = 'baseline'"],
    "glnet_min": ["make_apportionment.name = 'glnet_min'"],
    "coopnet": ["make_apportionment.name = 'coopnet'",
                "make_apportionment.use_flow_prior = True"],
    "coopnet_no_vzeta": ["make_apportionment.name = 'coopnet'",
                         "make_apportionment.use_flow_prior = False"],
    # Competitive Collaboration (docs/competitive_collaboration.md), opt-in: after the
    # shared burn-in (its "basic" phase), collaboration / competition stages of `period`
    # steps (about a quarter of the remaining steps each, see gin_bindings).
    "cc": ["make_apportionment.name = 'cc'", "make_apportionment.period_unit = 'steps'"],
    # ORACLE arms (docs/synthetic_benchmark.md): ground truth in training.
    "oracle_static": ["make_apportionment.name = 'oracle_static'"],
    "coopnet_gt_inputs": ["make_apportionment.name = 'coopnet'",
                          "make_apportionment.use_flow_prior = True", GT_INPUTS],
    "glnet_min_gt_inputs": ["make_apportionment.name = 'glnet_min'", GT_INPUTS],
}
# Lee et al. (issue 17): arm -> (CSAC, DAM, detector-like boxes); trained with
# Config.lee_gin_file from scratch (no shared burn-in), evaluated with their own networks
LEE_ARMS = {
    "lee": (True, True, False),
    "lee_no_csac": (False, True, False),
    "lee_no_dam": (True, False, False),
    "lee_jitter": (True, True, True),
    "lee_no_csac_jitter": (False, True, True),
    "lee_no_dam_jitter": (True, False, True),
}
# the jittered arms' boxes: each side out by up to 10 % of the box size (Lee et al. train
# with a random margin up to 10 %) and 10 % of the boxes missed
LEE_BOX_NOISE = {"box_jitter": 0.1, "box_miss_rate": 0.1}
for _arm, (_csac, _dam, _noisy) in LEE_ARMS.items():
    METHODS[_arm] = [f"lee.csac = {_csac}", f"build_motion_net.dam = {_dam}"] + (
        [f"ensure_synthetic_dataset.{k} = {v!r}" for k, v in LEE_BOX_NOISE.items()]
        if _noisy else [])
# paired comparisons of the Lee arms (no verdict rows: the labels do not start with "(")
LEE_COMPARISONS = [
    ("Lee: DAM+CSAC vs without CSAC", "lee", "lee_no_csac"),
    ("Lee: DAM+CSAC vs without DAM", "lee", "lee_no_dam"),
    ("Lee, jittered boxes: DAM+CSAC vs without CSAC", "lee_jitter", "lee_no_csac_jitter"),
    ("Lee, jittered boxes: DAM+CSAC vs without DAM", "lee_jitter", "lee_no_dam_jitter"),
    ("Lee: exact vs jittered boxes", "lee", "lee_jitter"),
]
# the default run: the paper's central comparison, one seed, within about an hour on the
# 2-core CPU (~5.5 s/step on 2026-12-01: docs/synthetic_benchmark.md)
DEFAULT_METHODS = ("baseline", "coopnet")
BURN_IN_METHOD = "coopnet"   # trains the shared burn-in (and estimates the P² quantiles)
# the verdict table's comparisons: (question, first arm, second arm)
VERDICTS = [
    ("(a) what the benchmark can detect: oracle_static vs baseline", "oracle_static",
     "baseline"),
    ("(b) perfect flow partner: coopnet_gt_inputs vs oracle_static", "coopnet_gt_inputs",
     "oracle_static"),
    ("(b) perfect flow partner: coopnet_gt_inputs vs glnet_min_gt_inputs",
     "coopnet_gt_inputs", "glnet_min_gt_inputs"),
    ("(c) learned flow: coopnet vs baseline", "coopnet", "baseline"),
    ("(c) learned flow: coopnet vs glnet_min", "coopnet", "glnet_min"),
    ("(c) learned flow: coopnet vs oracle_static", "coopnet", "oracle_static"),
]


def is_lee(method: str) -> bool:
    return method in LEE_ARMS


# the bindings that decide whether Lee's warm-up (no boxes used) covers phase 1
PHASE1_LENGTH_BINDINGS = frozenset({"train_and_evaluate.burn_in_epochs", "lee.phase1_epochs"})


def lee_phase1_group(method: str, cfg: "Config") -> str:
    """The run directory name of a Lee arm's phase 1 when it is shared. Phase 1 uses
    neither CSAC (L_mr is a phase 2-3 term, Lee Table 1) nor the boxes (L_h joins after the
    warm-up, which `gin_bindings` makes phase 1), and the jittered world differs from the
    exact one only in its boxes: arms that differ only in ``lee.csac`` or in the boxes'
    jitter train the same phase 1 (same networks, frames, seed; checked bitwise,
    docs/synthetic_benchmark.md). The arms without DAM (another network) share theirs.
    An extra binding of the warm-up's or phase 1's length may leave L_h in phase 1: then
    the jittered arms get their own."""
    _, dam, noisy = LEE_ARMS[method]
    lengths_bound = any(b.split("=")[0].strip() in PHASE1_LENGTH_BINDINGS
                        for b in cfg.extra_bindings)
    return ("_lee_phase1" + ("" if dam else "_no_dam")
            + ("_jitter" if noisy and lengths_bound else ""))


def uses_ground_truth_inputs(method: str) -> bool:
    return GT_INPUTS in METHODS[method]


def estimates_quantiles_from_ground_truth(method: str) -> bool:
    """A coopnet arm with GT inputs: its P² estimation epoch (the last burn-in epoch) must
    see the GT-flow Δ, so it resumes from the shared burn-in BEFORE that epoch."""
    return uses_ground_truth_inputs(method) and "make_apportionment.name = 'coopnet'" in \
        METHODS[method]


DEPTH_RANGE = (1e-3, 80.0)
SUBSETS = ("all", "static", "moving")


@dataclasses.dataclass
class Config:
    output_dir: str = "benchmarks/results"
    model_root: Optional[str] = None          # default <output_dir>/runs
    methods: Sequence[str] = DEFAULT_METHODS
    seeds: Sequence[int] = (0,)
    height: int = 64
    width: int = 192
    num_epochs: int = 5
    steps_per_epoch: int = 90
    burn_in_epochs: int = 3
    lr_boundary_epoch: int = 4
    batch_size: int = 4
    share_burn_in: bool = True
    # the world: synthetic.gin's sizes, more objects, 3/4 of them moving (~10 % of pixels)
    num_sequences: int = 12
    num_val_sequences: int = 2
    num_test_sequences: int = 4
    frames_per_sequence: int = 40
    num_objects: int = 20
    moving_fraction: float = 0.75
    world_seed: int = 0
    cache_dir: Optional[str] = None
    gin_file: str = "synthetic.gin"
    lee_gin_file: str = "lee_synthetic.gin"   # the Lee et al. arms'
    extra_bindings: Sequence[str] = ()
    run_eagerly: bool = False
    max_test_snippets: Optional[int] = None
    eval_only: bool = False
    plot: bool = True
    output_name: str = "reproduce_synthetic"
    progress: bool = False


# ------------------------------------------------------------------------ data ----

def world_kwargs(cfg: Config) -> Dict[str, object]:
    return dict(height=cfg.height, width=cfg.width, num_sequences=cfg.num_sequences,
                num_val_sequences=cfg.num_val_sequences,
                num_test_sequences=cfg.num_test_sequences,
                frames_per_sequence=cfg.frames_per_sequence, num_objects=cfg.num_objects,
                moving_fraction=cfg.moving_fraction, seed=cfg.world_seed)


def ensure_dataset(cfg: Config, noisy_boxes: bool = False) -> str:
    """The world's directory; ``noisy_boxes``: the jittered Lee arms' copy of it (same
    images and ground truth, boxes with `LEE_BOX_NOISE`)."""
    from coopnet_tf.data import synthetic  # pylint: disable=import-outside-toplevel
    extra = LEE_BOX_NOISE if noisy_boxes else {}
    return synthetic.ensure_synthetic_dataset(cache_dir=cfg.cache_dir, progress=cfg.progress,
                                              **world_kwargs(cfg), **extra)


def lee_phase_epochs(num_epochs: int):
    """Lee Table 1's phases scaled to the benchmark's epochs: phases 1 and 2 a third each
    (rounded), phase 3 the rest; (phase1_epochs, phase2_epochs)."""
    third = max(1, round(num_epochs / 3))
    if num_epochs - 2 * third < 1:
        raise ValueError(f"the Lee et al. arms need num_epochs >= 3 (one epoch per phase of "
                         f"Lee Table 1), got {num_epochs}")
    return third, third


# -------------------------------------------------------------------- training ----

def gin_bindings(cfg: Config, method: str, seed: int) -> List[str]:
    b = [f"ensure_synthetic_dataset.{k} = {v!r}" for k, v in world_kwargs(cfg).items()]
    if cfg.cache_dir:
        b.append(f"ensure_synthetic_dataset.cache_dir = {cfg.cache_dir!r}")
    b += [
        "ensure_synthetic_dataset.progress = False",
        f"train_and_evaluate.height = {cfg.height}",
        f"train_and_evaluate.width = {cfg.width}",
        f"train_and_evaluate.batch_size = {cfg.batch_size}",
        f"train_and_evaluate.num_epochs = {cfg.num_epochs}",
        f"train_and_evaluate.steps_per_epoch = {cfg.steps_per_epoch}",
        f"train_and_evaluate.seed = {seed}",
        f"train_and_evaluate.checkpoint_every_steps = {cfg.steps_per_epoch}",
        "train_and_evaluate.keep_checkpoints = 1",
        # TensorBoard images and Δ histograms of the fixed validation batch once per
        # epoch (inference-mode forward; leaves every training state untouched)
        f"train_and_evaluate.image_every_steps = {cfg.steps_per_epoch}",
        # Keras' own Adam, as the committed run's arms were trained with (before
        # optimizers.FusedAdam): arms trained or resumed at later commits stay bitwise
        # comparable with them (docs/synthetic_benchmark.md)
        "make_optimizer.fused = False",
    ]
    if is_lee(method):
        # from scratch, Lee's three phases over the same steps; lee_synthetic.gin's
        # constant lr (Lee et al. give no decay) and warm-up: all of phase 1 without L_g
        # and L_h (its burn_in_epochs = phase1_epochs, docs/lee.md "From scratch")
        phase1, phase2 = lee_phase_epochs(cfg.num_epochs)
        b += [f"lee.phase1_epochs = {phase1}",
              f"lee.phase2_epochs = {phase2}",
              f"train_and_evaluate.burn_in_epochs = {phase1}",
              f"make_learning_rate_schedule.boundary_epochs = ({cfg.num_epochs},)"]
    else:
        b += [f"train_and_evaluate.burn_in_epochs = {cfg.burn_in_epochs}",
              f"make_learning_rate_schedule.boundary_epochs = ({cfg.lr_boundary_epoch},)"]
    b += METHODS[method]
    if method == "cc":
        # half the post-burn-in steps per stage pair, so that the cycle (counted from step
        # 0) starts with a collaboration right after the burn-in when burn_in % 2P == 0
        post = max(4, (cfg.num_epochs - cfg.burn_in_epochs) * cfg.steps_per_epoch)
        burn = cfg.burn_in_epochs * cfg.steps_per_epoch
        period = next((p for p in range(post // 4, 0, -1) if burn % (2 * p) == 0), post // 4)
        b.append(f"make_apportionment.period = {period}")
    b += list(cfg.extra_bindings)
    return b


def _train(cfg: Config, model_dir: str, method: str, seed: int,
           stop_at_step: Optional[int] = None) -> Dict[str, float]:
    import gin  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel

    from coopnet_tf import train as train_lib  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import loop  # pylint: disable=import-outside-toplevel

    gin.clear_config()
    keras.backend.clear_session()
    snapshot = _gin_snapshot(cfg)
    prefixes = getattr(gin.config, "_LOCATION_PREFIXES", None)
    if prefixes is not None and snapshot not in prefixes:
        prefixes.insert(0, snapshot)   # looked up before the repository's gin/
    train_lib.parse_gin([cfg.lee_gin_file if is_lee(method) else cfg.gin_file],
                        gin_bindings(cfg, method, seed))
    keras.utils.set_random_seed(int(seed))
    kwargs = dict(model_dir=model_dir, progress=cfg.progress)
    if stop_at_step is not None:
        kwargs["stop_at_step"] = int(stop_at_step)
    if cfg.run_eagerly:
        kwargs["run_eagerly"] = True
    result = loop.train_and_evaluate(**kwargs)
    gin.clear_config()
    return result


def _previous_training(cfg: Config) -> Optional[Dict[str, object]]:
    """With --eval_only: the training info (per run) and the metadata/timing of the run
    that trained the models, from the JSON an earlier invocation wrote (kept, so that
    re-evaluating does not lose how the models were trained)."""
    import json  # pylint: disable=import-outside-toplevel
    path = os.path.join(cfg.output_dir, f"{cfg.output_name}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        old = json.load(f)
    if "training_run" in old:            # already a re-evaluation: pass it on
        training_run = old["training_run"]
    else:
        training_run = {"metadata": old.get("metadata"), "timing_seconds":
                        old.get("timing_seconds"), "config": old.get("config")}
    info = {k: v.get("training") for k, v in old.get("per_run", {}).items()}
    return {"train_info": info, "training_run": training_run}


def _gin_snapshot(cfg: Config) -> str:
    """A copy of the repository's gin/ taken once per benchmark, so that every run parses
    the same config files even if gin/ is edited while the benchmark runs."""
    root = cfg.model_root or os.path.join(cfg.output_dir, "runs")
    path = os.path.abspath(os.path.join(root, "gin_snapshot"))
    if not os.path.isdir(path):
        _replace_tree(str(common.REPO_ROOT / "gin"), path)
    return path


def _tree_contents(root: str) -> Dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root)] = f.read()
    return out


def _replace_tree(src: str, dst: str) -> None:
    """`dst` becomes a copy of `src`, written beside it and renamed into place."""
    partial, old = dst + ".partial", dst + ".old"
    for leftover in (partial, old):
        if os.path.exists(leftover):
            shutil.rmtree(leftover)
    shutil.copytree(src, partial)
    if os.path.exists(dst):
        os.rename(dst, old)
    os.rename(partial, dst)
    if os.path.exists(old):
        shutil.rmtree(old)


@contextlib.contextmanager
def _current_gin_snapshot(model_root: str) -> Iterator[str]:
    """While training: ``<model_root>/gin_snapshot`` equals this checkout's gin/. It is
    refreshed only when its content differs, and never under another benchmark process
    training from the same model_root (each holds a shared lock on
    ``gin_snapshot.lock`` until its training ends): such a process reads the snapshot at
    every run it starts, so replacing it would change its config mid-benchmark. Processes
    of the same checkout (e.g. different ``--seeds``, started together) share it: the
    check-and-refresh is serialised by ``gin_snapshot.refresh.lock``."""
    import fcntl  # pylint: disable=import-outside-toplevel  (POSIX only)
    path = os.path.abspath(os.path.join(model_root, "gin_snapshot"))
    gin_dir = str(common.REPO_ROOT / "gin")
    os.makedirs(model_root, exist_ok=True)
    with open(path + ".lock", "a+") as in_use:
        with open(path + ".refresh.lock", "a+") as refresh:
            fcntl.flock(refresh, fcntl.LOCK_EX)      # one starting process at a time
            try:
                fcntl.flock(in_use, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:                   # others train from the snapshot
                alone = False
            fcntl.flock(in_use, fcntl.LOCK_SH)         # (a downgrade when alone)
            if not os.path.isdir(path) or _tree_contents(path) != _tree_contents(gin_dir):
                if not alone:
                    fcntl.flock(in_use, fcntl.LOCK_UN)
                    raise RuntimeError(
                        f"{path} differs from {gin_dir} and another benchmark process is "
                        "training from it: wait for it to finish, or use another "
                        "--model_root")
                _replace_tree(gin_dir, path)
        try:
            yield path
        finally:
            fcntl.flock(in_use, fcntl.LOCK_UN)


def _copy_run(src: str, dst: str) -> None:
    """Replaces run `dst` by a copy of run `src` (without summaries and best checkpoint),
    written beside it and renamed into place: an interrupted copy leaves no half run."""
    partial = dst.rstrip(os.sep) + ".partial"
    if os.path.exists(partial):
        shutil.rmtree(partial)
    shutil.copytree(src, partial, ignore=shutil.ignore_patterns("summaries", "best"))
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.rename(partial, dst)


def _start_from(src: str, dst: str) -> bool:
    """Makes run `dst` continue from run `src` (the shared burn-in): copies `src` unless
    `dst` already has a checkpoint at or past `src`'s, so that an arm interrupted after
    the burn-in resumes from its own last checkpoint instead of starting over. Returns
    whether it copied."""
    own = _checkpoint_step(dst)
    if own >= 0 and own >= _checkpoint_step(src):
        return False
    _copy_run(src, dst)
    return True


def train_all(cfg: Config, model_root: str) -> Dict[str, Dict[str, object]]:
    """Trains every (method, seed) run; returns per-run training info.

    Shared burn-in: trained once per seed; when an arm estimates its quantiles from the
    ground-truth flow (``coopnet_gt_inputs``), the burn-in is stopped once before its P²
    estimation epoch, that checkpoint is kept (``_burn_in_pre_estimation``) and the arm
    resumes from it (the networks' training does not depend on Δ during the burn-in, and a
    resumed run equals an uninterrupted one exactly, see docs/synthetic_benchmark.md); the
    burn-in runs to its end only when some arm resumes from there.
    The Lee et al. arms train from scratch (a different method with its own phases); arms
    that differ only in CSAC or the boxes' jitter share their phase 1 (`lee_phase1_group`).
    """
    info: Dict[str, Dict[str, object]] = {}
    total_steps = cfg.num_epochs * cfg.steps_per_epoch
    burn_steps = cfg.burn_in_epochs * cfg.steps_per_epoch
    pre_steps = max(cfg.burn_in_epochs - 1, 0) * cfg.steps_per_epoch   # 1 estimation epoch
    need_pre = any(estimates_quantiles_from_ground_truth(m) for m in cfg.methods)
    # the whole burn-in only when an arm resumes from it (not for GT-estimating arms alone)
    need_full = any(not is_lee(m) and not estimates_quantiles_from_ground_truth(m)
                    for m in cfg.methods)
    lee_groups = collections.Counter(lee_phase1_group(m, cfg) for m in cfg.methods if is_lee(m))
    lee_phase1_steps = (lee_phase_epochs(cfg.num_epochs)[0] * cfg.steps_per_epoch
                        if lee_groups else 0)
    for seed in cfg.seeds:
        burn_dir = pre_dir = None
        burn_seconds = 0.0
        lee_seconds: Dict[str, float] = {}
        if cfg.share_burn_in and 0 < burn_steps < total_steps and \
                not all(is_lee(m) for m in cfg.methods):
            burn_dir = os.path.join(model_root, f"seed{seed}", "_burn_in")
            start = time.time()
            if need_pre and pre_steps > 0:
                pre_dir = os.path.join(model_root, f"seed{seed}", "_burn_in_pre_estimation")
            with common.run_dir_lock(burn_dir):     # also guards pre_dir, copied from it
                if pre_dir is not None and not _finished(pre_dir, pre_steps):
                    if not _finished(burn_dir, pre_steps):
                        print(f"[reproduce] seed {seed}: shared burn-in to step {pre_steps} "
                              "(before the P² estimation epoch)", flush=True)
                        _train(cfg, burn_dir, BURN_IN_METHOD, seed, stop_at_step=pre_steps)
                    if _finished(burn_dir, pre_steps) and not _finished(burn_dir, pre_steps + 1):
                        _copy_run(burn_dir, pre_dir)
                if need_full and not _finished(burn_dir, burn_steps):
                    print(f"[reproduce] seed {seed}: shared burn-in, {burn_steps} steps",
                          flush=True)
                    _train(cfg, burn_dir, BURN_IN_METHOD, seed, stop_at_step=burn_steps)
            burn_seconds = time.time() - start
        for method in cfg.methods:
            run_dir = os.path.join(model_root, f"seed{seed}", method)
            start = time.time()
            source = burn_dir
            shared_seconds = burn_seconds
            if is_lee(method):
                # from scratch: Lee's own three-phase schedule; phase 1 shared by the arms
                # that differ only in CSAC or the boxes' jitter
                source = None
                group = lee_phase1_group(method, cfg)
                if cfg.share_burn_in and lee_groups[group] > 1:
                    source = os.path.join(model_root, f"seed{seed}", group)
                    with common.run_dir_lock(source):
                        if not _finished(run_dir, total_steps) and \
                                not _finished(source, lee_phase1_steps):
                            print(f"[reproduce] seed {seed}: Lee phase 1 shared by the "
                                  f"{group} arms, {lee_phase1_steps} steps", flush=True)
                            shared_start = time.time()
                            _train(cfg, source, method, seed, stop_at_step=lee_phase1_steps)
                            lee_seconds[group] = time.time() - shared_start
                shared_seconds = lee_seconds.get(group, 0.0)
            elif estimates_quantiles_from_ground_truth(method):
                source = pre_dir    # None: from scratch (no shared part before estimation)
            result = {}
            with common.run_dir_lock(run_dir):
                if not _finished(run_dir, total_steps):
                    if source is not None:
                        _start_from(source, run_dir)
                    print(f"[reproduce] seed {seed}: {method}, to step {total_steps}",
                          flush=True)
                    result = _train(cfg, run_dir, method, seed)
            info[f"{method}/seed{seed}"] = {
                "model_dir": run_dir, "train_seconds": round(time.time() - start, 1),
                "shared_burn_in_seconds": round(shared_seconds, 1),
                "resumed_from": source,
                "final_validation": {k: v for k, v in result.items()
                                     if isinstance(v, (int, float))}}
    return info


def _checkpoint_step(model_dir: str) -> int:
    """The step of a run's latest checkpoint; -1 without one."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    suffix = path.rsplit("-", 1)[-1] if path else ""
    return int(suffix) if suffix.isdigit() else -1


def _finished(model_dir: str, steps: int) -> bool:
    return _checkpoint_step(model_dir) >= steps


# ------------------------------------------------------------------ evaluation ----

def _build_eval(model_dir: str, eager: bool = False):
    """Restores a run's networks and (when it has them) its frozen P² quantiles."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf import export  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training.step import (  # pylint: disable=import-outside-toplevel
        CoopTrainStep, LossWeights, Phase, StepOptions)

    keras.backend.clear_session()
    depth_net, pose_net, flow_net, info = export.restore_networks(model_dir)
    q = export.query_config
    options = StepOptions(min_depth=float(q("step_options.min_depth", 0.1)),
                          max_depth=float(q("step_options.max_depth", 100.0)),
                          rotation_mode=info["rotation_mode"],
                          occlusion_threshold=float(q("step_options.occlusion_threshold", 0.2)))
    eta = float(q("make_apportionment.eta", apportion.DEFAULT_ETA))
    zeta = float(q("make_apportionment.zeta", apportion.DEFAULT_ZETA))
    strategy = apportion.CoopNetStrategy(eta=eta, zeta=zeta, jit_compile=False)
    layer = strategy.quantile_layer
    tf.train.Checkpoint(quantiles=layer).restore(info["checkpoint"]).expect_partial()
    frozen = None
    if float(tf.reduce_min(tf.convert_to_tensor(layer.current_valid))) > 0.5:
        frozen = {
            "eta": [float(layer.current(apportion.DELTA, p)) for p in strategy.eta_probs],
            "zeta_x": [float(layer.current(apportion.DELTA_FLOW_X, p)) for p in strategy.zeta_probs],
            "zeta_y": [float(layer.current(apportion.DELTA_FLOW_Y, p)) for p in strategy.zeta_probs],
        }
    step = CoopTrainStep(depth_net, pose_net, flow_net, keras.optimizers.Adam(),
                         keras.optimizers.Adam(), apportion.make_strategy("baseline"),
                         weights=LossWeights(gc=0.0, fb=0.0, smooth=0.0, ep=0.0, var=0.0),
                         options=options)
    phase = Phase(burn_in=True, update_quantiles=False)
    forward = lambda batch: step.forward(batch, phase, False)  # noqa: E731
    moderator = None
    names = {n.split("/")[0] for n, _ in tf.train.list_variables(info["checkpoint"])}
    if "moderator_net" in names:   # a Competitive Collaboration run: its moderator M
        from coopnet_tf import models  # pylint: disable=import-outside-toplevel
        moderator = models.build_moderator_net(height=None, width=None)
        tf.train.Checkpoint(moderator_net=moderator).restore(
            info["checkpoint"]).expect_partial()
        info["flow_threshold"] = float(q("make_apportionment.flow_threshold", 1e-3))
        info["moderator"] = lambda x: moderator(x, training=False)[0]  # noqa: E731
        if not eager:
            info["moderator"] = tf.function(info["moderator"])
    if not eager:
        forward = tf.function(forward)
    return forward, frozen, info, (eta, zeta)


def collect_predictions(model_dir: str, test_pattern: str, height: int, width: int,
                        max_snippets: Optional[int] = None, eager: bool = False):
    """Runs the trained networks over the test split; returns numpy arrays."""
    from coopnet_tf import specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import apportion  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import step as step_lib  # pylint: disable=import-outside-toplevel

    forward, frozen, info, (eta, zeta) = _build_eval(model_dir, eager)
    keys = ("depth", "transforms", "flow", "delta", "dflow", "delta_gt", "dflow_gt", "non_occ")
    out = {k: [] for k in keys + GT_KEYS}   # (+ cc_* masks for a CC run)
    for batch in _test_batches(test_pattern, height, width, max_snippets, out):
        fwd = forward({k: v for k, v in batch.items()
                       if k in (specs.KEY_FRAMES, specs.KEY_FRAMES_AUG, specs.KEY_INTRINSICS)})
        out["depth"].append(fwd["depths"][0].numpy()[..., 0])
        out["transforms"].append(np.stack([t.numpy() for t in fwd["transforms"]], 1))
        out["flow"].append(fwd["optical_flow"].numpy())
        out["delta"].append(apportion.compute_delta(fwd["phi_rigid"][0],
                                                    fwd["phi_flow"][0]).numpy()[..., 0])
        out["dflow"].append(apportion.compute_delta_flow(fwd["rigid_flow"],
                                                         fwd["optical_flow"]).numpy())
        # the same with the ground-truth flow as the flow partner (the oracle's inputs)
        phi_gt, flow_gt = step_lib.ground_truth_flow_inputs(batch)
        out["delta_gt"].append(apportion.compute_delta(fwd["phi_rigid"][0],
                                                       phi_gt).numpy()[..., 0])
        out["dflow_gt"].append(apportion.compute_delta_flow(fwd["rigid_flow"],
                                                            flow_gt).numpy())
        out["non_occ"].append(fwd["non_occluded"].numpy()[..., 0] > 0.5)
        if "moderator" in info:   # CC Table 6's masks w.r.t. t+1 (1 = static)
            from coopnet_tf.losses import competitive, competitive_strategy  # pylint: disable=import-outside-toplevel
            m = info["moderator"](competitive_strategy.snippet(batch[specs.KEY_FRAMES]))
            nu, u = fwd["rigid_flow"][:, 1], fwd["optical_flow"][:, 1]
            masks = competitive.inference_masks(m[..., 1:2], m[..., 0:1], nu, u,
                                                info["flow_threshold"])
            masks["joint_authors"] = competitive.inference_masks(
                m[..., 1:2], m[..., 0:1], nu, u, relative=competitive.AUTHORS_RELATIVE_CONSENSUS,
                combination="union")["joint"]
            for key, value in masks.items():
                out.setdefault(f"cc_{key}", []).append(value.numpy()[..., 0])
    return _concatenate(out, max_snippets), frozen, (eta, zeta), info


# the test split's ground truth, collected for every arm (gt_object_motion: r of
# `specs.KEY_GT_OBJECT_MOTION`, for the Lee arms and the trivial reference)
GT_KEYS = ("gt_depth", "gt_pose", "gt_flow", "moving", "gt_object_motion", "seq", "frame")


def _test_batches(test_pattern: str, height: int, width: int, max_snippets: Optional[int],
                  out: Dict[str, list], max_boxes: int = 0):
    """Yields the test batches (file order, no augmentation; with ``max_boxes`` > 0 the
    boxes of every frame) after appending their ground truth (`GT_KEYS`) to ``out``; stops
    after ``max_snippets``."""
    from coopnet_tf import specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.data import pipeline  # pylint: disable=import-outside-toplevel
    ds = pipeline.make_dataset(test_pattern, batch_size=8, height=height, width=width,
                               training=False, with_ground_truth=True,
                               with_object_motion=True, deterministic=True,
                               max_boxes=max_boxes)
    seen = 0
    for batch in ds:
        out["gt_depth"].append(batch[specs.KEY_GT_DEPTH].numpy()[..., 0])
        out["gt_pose"].append(batch[specs.KEY_GT_POSE].numpy())
        out["gt_flow"].append(batch[specs.KEY_GT_FLOW].numpy())
        out["moving"].append(batch[specs.KEY_GT_MOVING].numpy()[..., 0] > 0.5)
        out["gt_object_motion"].append(batch[specs.KEY_GT_OBJECT_MOTION].numpy())
        out["seq"].append(batch[specs.KEY_SEQUENCE_ID].numpy())
        out["frame"].append(batch[specs.KEY_FRAME_ID].numpy())
        out.setdefault("target_image", []).append(
            batch[specs.KEY_FRAMES][:, specs.TARGET_INDEX].numpy())
        yield batch
        seen += int(batch[specs.KEY_FRAMES].shape[0])
        if max_snippets and seen >= max_snippets:
            break


def _concatenate(out: Dict[str, list], max_snippets: Optional[int]) -> Dict[str, np.ndarray]:
    arrays = {k: np.concatenate(v, 0) for k, v in out.items()}
    if max_snippets:
        arrays = {k: v[:max_snippets] for k, v in arrays.items()}
    return arrays


def _build_lee_eval(model_dir: str, eager: bool = False):
    """Restores a Lee et al. run; returns (forward, info): forward(frames [B, 3, H, W, 3],
    K [B, 3, 3]) -> depth of the target [B, H, W, 1], and per source (`specs.SOURCE_INDICES`
    order) T_target->source [B, S, 4, 4] from the ego branch on the pair in temporal order
    (as in training), the
    residual r [B, S, H, W, 3] (both stages, `lee_step.predict_motion`, as the exported
    SavedModels) and the total-motion flow [B, S, H, W, 2] (Lee Eq. 2)."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from coopnet_tf import export, geometry, specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.models import disp_to_depth, motion_branches  # pylint: disable=import-outside-toplevel
    from coopnet_tf.training import lee_step  # pylint: disable=import-outside-toplevel

    keras.backend.clear_session()
    depth_net, motion_net, info = export.restore_lee_networks(model_dir)
    ego_net, residual_net = motion_branches(motion_net)
    options = lee_step.LeeOptions()   # the step's depth range (not gin-configurable)

    def forward(frames, K):
        images = [frames[:, i] for i in range(specs.NUM_FRAMES)]
        sigmoid = depth_net(tf.concat(images, 0), training=False)[0]
        _, depth = disp_to_depth(tf.cast(sigmoid, tf.float32), options.min_depth,
                                 options.max_depth)
        depths = tf.split(depth, specs.NUM_FRAMES, 0)
        target, depth_t = images[specs.TARGET_INDEX], depths[specs.TARGET_INDEX]
        out = {"transforms": [], "residual": [], "flow": []}
        for i in specs.SOURCE_INDICES:
            earlier = tf.fill(tf.shape(target)[:1], i < specs.TARGET_INDEX)
            motion = lee_step.predict_motion(ego_net, residual_net, target, images[i], depth_t,
                                             depths[i], K, info["rotation_mode"],
                                             with_residual=True, training=False,
                                             source_earlier=earlier)
            _, _, flow = geometry.total_motion_warp(images[i], depth_t, motion["transforms"],
                                                    motion["residual"], K)
            out["transforms"].append(motion["transforms"])
            out["residual"].append(motion["residual"])
            out["flow"].append(flow)
        out = {k: tf.stack(v, 1) for k, v in out.items()}
        out["depth"] = depth_t
        return out

    return (forward if eager else tf.function(forward)), info


def collect_lee_predictions(model_dir: str, test_pattern: str, height: int, width: int,
                            max_snippets: Optional[int] = None, eager: bool = False,
                            max_boxes: int = 0):
    """A Lee et al. run over the test split: depth, transforms, flow, residual and the
    ground truth (`GT_KEYS`) as numpy arrays. With ``max_boxes`` > 0 also CSAC's object
    masks from the target's boxes (`csac_object_masks`: ``csac_mask``, ``box_region``,
    ``moving_box_region``) and the world's object pixels (``gt_objects``,
    `world_object_pixels`), for `object_segmentation_metrics`."""
    from coopnet_tf import export, specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import object_motion as motion_losses  # pylint: disable=import-outside-toplevel
    forward, _ = _build_lee_eval(model_dir, eager)
    # the run's own α, β of Lee Eq. 4 (its operative config, loaded by _build_lee_eval)
    alpha = float(export.query_config("lee.csac_alpha", motion_losses.CSAC_ALPHA))
    beta = float(export.query_config("lee.csac_beta", motion_losses.CSAC_BETA))
    out = {k: [] for k in ("depth", "transforms", "flow", "residual") + GT_KEYS}
    for index, batch in enumerate(_test_batches(test_pattern, height, width, max_snippets,
                                                out, max_boxes)):
        fwd = forward(batch[specs.KEY_FRAMES], batch[specs.KEY_INTRINSICS])
        out["depth"].append(fwd["depth"].numpy()[..., 0])
        for key in ("transforms", "flow", "residual"):
            out[key].append(fwd[key].numpy())
        if max_boxes:
            t = specs.TARGET_INDEX
            masks = csac_object_masks(out["residual"][-1], out["depth"][-1],
                                      batch[specs.KEY_BOXES].numpy()[:, t],
                                      batch[specs.KEY_BOX_MASK].numpy()[:, t], out["moving"][-1],
                                      alpha=alpha, beta=beta, seed=(CSAC_EVAL_SEED, index))
            for key, value in masks.items():
                out.setdefault(key, []).append(value)
            out.setdefault("gt_objects", []).append(world_object_pixels(
                test_pattern, out["seq"][-1], out["frame"][-1], height, width))
    return _concatenate(out, max_snippets)


# Lee Table 5 / Sec. 4.4 on the synthetic world: CSAC's inliers as an object segmentation
CSAC_INLIER_THRESHOLD = 0.5   # Lee Sec. 4.4: "inlier scores (threshold of 0.5)"
CSAC_EVAL_SEED = 17           # the hypothesis sampling's seed in evaluation: (17, batch index)


def csac_object_masks(residual, depth, boxes, box_mask, moving, alpha=None, beta=None,
                      seed=(CSAC_EVAL_SEED, 0)) -> Dict[str, np.ndarray]:
    """Predicted object masks from CSAC's inliers (Lee Sec. 4.4, Table 5).

    For each snippet and source, `eval.object_motion.csac_object_mask` (the training loss's
    own `csac_loss`, one call for all (snippet, source) pairs) on the predicted residual r
    and target depth with the target's boxes: a pixel is object iff the best foreground
    hypothesis's inlier score exceeds `CSAC_INLIER_THRESHOLD` for one real box that
    contains it.

    Args:
      residual: `[B, S, H, W, 3]` predicted residual field per source (the net's units:
        Eq. 3 is a ratio, as in training).
      depth: `[B, H, W]` or `[B, H, W, 1]` predicted target depth.
      boxes: `[B, N, 4]` target boxes (x1, y1, x2, y2), pixels of this resolution.
      box_mask: `[B, N]` 1 = a real box.
      moving: `[B, S, H, W]` bool GT moving mask per source.
      alpha, beta: Lee Eq. 4 (default `csac_loss`'s 30, 0.2).
      seed: `[2]` seed of the hypothesis sampling.

    Returns:
      dict of bool arrays: ``csac_mask`` `[B, S, H, W]`; ``box_region`` `[B, H, W]` (the
      pixels of any real box); ``moving_box_region`` `[B, S, H, W]` (the pixels of the
      real boxes that contain a GT moving pixel of that source).
    """
    from coopnet_tf.eval import object_motion as om_eval  # pylint: disable=import-outside-toplevel
    from coopnet_tf.losses import object_motion as motion_losses  # pylint: disable=import-outside-toplevel
    residual = np.asarray(residual, np.float32)
    b, s, h, w, _ = residual.shape
    depth = np.asarray(depth, np.float32).reshape(b, h, w, 1)
    boxes = np.asarray(boxes, np.float32)
    box_mask = np.asarray(box_mask, np.float32)
    kwargs = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None}
    # images = (snippet, source) pairs, snippet-major; each source sees the target's boxes
    pred = om_eval.csac_object_mask(
        residual.reshape(b * s, h, w, 3), np.repeat(depth, s, 0), np.repeat(boxes, s, 0),
        np.repeat(box_mask, s, 0), CSAC_INLIER_THRESHOLD, seed=seed,
        **kwargs).reshape(b, s, h, w)
    in_box = motion_losses.box_pixel_masks(boxes, box_mask, h, w).numpy() > 0.5  # [B, N, H, W]
    moving = np.asarray(moving, bool).reshape(b, s, h, w)
    has_moving = (in_box[:, None] & moving[:, :, None]).any(axis=(-2, -1))      # [B, S, N]
    return {"csac_mask": pred, "box_region": in_box.any(axis=1),
            "moving_box_region": (in_box[:, None] & has_moving[..., None, None]).any(axis=2)}


def world_object_pixels(test_pattern: str, sequence_ids, frame_ids, height: int,
                        width: int) -> np.ndarray:
    """bool `[B, H, W]`: the synthetic world's object pixels (the target pixel's ray hits
    one of the objects that get 2-D boxes; not buildings, road or sky) of each snippet's
    target frame. The records hold no object ids, so the sequences are rendered again from
    the dataset's `world_config.json` (deterministic; cached per sequence)."""
    from coopnet_tf.data import synthetic  # pylint: disable=import-outside-toplevel
    path = os.path.join(os.path.dirname(test_pattern), synthetic.CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing; the object segmentation metric needs the "
                         "synthetic world's config beside the test records")
    with open(path) as f:
        config_text = f.read()
    out = []
    for seq, frame in zip(sequence_ids, frame_ids):
        seq = seq.decode() if isinstance(seq, bytes) else str(seq)
        parts = seq.split("/")
        if len(parts) != 3 or parts[0] != "synthetic" or not parts[2].isdigit():
            raise ValueError(f"{test_pattern}: sequence id {seq!r} is not a synthetic "
                             "world's (synthetic/<split>/<index>)")
        masks = _sequence_object_pixels(config_text, parts[1], int(parts[2]))
        if masks.shape[1:] != (height, width):
            raise ValueError(f"{path}: the world renders {masks.shape[1:]}, the evaluation "
                             f"runs at {(height, width)}; object pixels need the same size")
        out.append(masks[int(frame)])
    return np.stack(out)


@functools.lru_cache(maxsize=None)
def _sequence_object_pixels(config_text: str, split: str, index: int) -> np.ndarray:
    """bool `[F, H, W]` object pixels of every frame of one sequence (`Frame.prim`)."""
    import json  # pylint: disable=import-outside-toplevel

    from coopnet_tf.data import synthetic  # pylint: disable=import-outside-toplevel
    sequence = synthetic.render_sequence(synthetic.WorldConfig(**json.loads(config_text)),
                                         split, index)
    is_object = np.append(sequence.scene.box_class >= 0, False)   # index num_boxes = room
    return np.stack([is_object[f.prim] for f in sequence.frames])


def object_segmentation_metrics(arr: Dict[str, np.ndarray]) -> Dict[str, object]:
    """Lee Table 5 on the synthetic world: IoU of CSAC's inlier masks (``csac_mask``) with
    the world's object pixels inside the real target boxes (both sources of every snippet
    are images; `eval.object_motion.segmentation_iou`). ``all_boxes``: every box;
    ``moving_boxes``: prediction and GT restricted to the boxes that hold GT moving pixels
    of that source (where the residual field, not the depth split alone, decides)."""
    from coopnet_tf.eval import object_motion  # pylint: disable=import-outside-toplevel
    pred = arr["csac_mask"]
    h, w = pred.shape[-2:]
    objects = np.broadcast_to(arr["gt_objects"][:, None], pred.shape)
    regions = {"all_boxes": np.broadcast_to(arr["box_region"][:, None], pred.shape),
               "moving_boxes": arr["moving_box_region"]}
    out = {}
    for name, region in regions.items():
        p, g = (pred & region).reshape(-1, h, w), (objects & region).reshape(-1, h, w)
        res = object_motion.segmentation_iou(p, g)
        out[name] = {k: res[k] for k in ("iou_mean", "iou_pooled", "intersection", "union",
                                         "n_images")}
        out[name]["n_scored"] = int(np.isfinite(res["per_image"]).sum())
        out[name]["pred_pixels"] = int(p.sum())
        out[name]["gt_pixels"] = int(g.sum())
    out["threshold"] = CSAC_INLIER_THRESHOLD
    out["gt"] = "the world's object pixels (not buildings/road/sky) inside the target's boxes"
    return out


def object_motion_metrics(arr: Dict[str, np.ndarray], residual: np.ndarray) -> Dict[str, object]:
    """Lee et al.'s residual field against the world's exact r (`eval/object_motion`), per
    source, on the pixels with GT depth in `DEPTH_RANGE` of images with a static scale; the
    residual is in the depth net's units, so it is multiplied by the image's static depth
    scale first. Moving = the GT moving mask of each source."""
    from coopnet_tf.eval import object_motion, strata  # pylint: disable=import-outside-toplevel
    lo, hi = DEPTH_RANGE
    moving_any = arr["moving"].any(axis=1)
    scales = strata.static_depth_scales(arr["gt_depth"], arr["depth"], moving_any, lo, hi)
    valid = (arr["gt_depth"] > lo) & (arr["gt_depth"] < hi) & np.isfinite(scales)[:, None, None]
    scaled = residual.astype(np.float64) * np.nan_to_num(scales)[:, None, None, None, None]
    result = object_motion.object_motion_error(scaled, arr["gt_object_motion"],
                                               moving=arr["moving"], valid=valid[:, None])
    result["scale"] = "per-image static depth scale (as depth_static_scale)"
    return result


def depth_metrics(gt: np.ndarray, pred: np.ndarray, moving_any: np.ndarray) -> Dict[str, object]:
    """Median-scaled depth errors pooled over the pixels of all / static / moving."""
    from coopnet_tf.eval import depth as depth_eval  # pylint: disable=import-outside-toplevel
    lo, hi = DEPTH_RANGE
    sums = {s: np.zeros(3) for s in SUBSETS}   # |d|/gt, d^2, count
    rel_std = []                                 # collapse detector: spread of the prediction
    for i in range(len(gt)):
        rel_std.append(float(np.std(pred[i]) / max(float(np.mean(pred[i])), 1e-12)))
        valid = (gt[i] > lo) & (gt[i] < hi)
        if not valid.any():
            continue
        ratio = np.median(gt[i][valid]) / np.median(pred[i][valid])
        p = np.clip(pred[i].astype(np.float64) * ratio, lo, hi)
        g = gt[i].astype(np.float64)
        for subset, m in (("all", valid), ("static", valid & ~moving_any[i]),
                          ("moving", valid & moving_any[i])):
            d = p[m] - g[m]
            sums[subset] += [np.sum(np.abs(d) / g[m]), np.sum(d * d), m.sum()]
    result = {}
    for s, (ar, sq, n) in sums.items():
        result[s] = {"abs_rel": ar / n if n else None, "rmse": math.sqrt(sq / n) if n else None,
                     "pixels": int(n)}
    std = depth_eval.evaluate_depth(list(gt), 1.0 / np.maximum(pred, 1e-6), protocol="full",
                                    min_depth=lo, max_depth=hi)
    result["standard"] = {k: std[k] for k in depth_eval.METRIC_NAMES}
    # std/mean of the predicted depth within an image, averaged over images (GT: see
    # "gt_depth_rel_std"); ~0 means the depth network collapsed to a constant map.
    result["pred_depth_rel_std"] = float(np.mean(rel_std))
    gclip = np.clip(gt, lo, hi)
    result["gt_depth_rel_std"] = float(np.mean(np.std(gclip, axis=(1, 2))
                                               / np.mean(gclip, axis=(1, 2))))
    return result


def pose_metrics(transforms: np.ndarray, gt_pose: np.ndarray, seq: np.ndarray,
                 frame: np.ndarray) -> Dict[str, object]:
    """ATE on 5-frame snippets of chained T_{k->k+1} (Zhou) and 3-frame per snippet."""
    from coopnet_tf import specs  # pylint: disable=import-outside-toplevel
    from coopnet_tf.eval import odometry, strata  # pylint: disable=import-outside-toplevel
    nxt = specs.SOURCE_INDICES.index(specs.TARGET_INDEX + 1)
    prv = specs.SOURCE_INDICES.index(specs.TARGET_INDEX - 1)
    ate3 = []
    for t_pred, t_gt in zip(transforms, gt_pose):
        # positions of [t-1, t, t+1] in the target camera: c_s = inv(T_t->s)[:3, 3]
        pts = []
        for mats in (t_pred, t_gt):
            inv = np.linalg.inv(mats.astype(np.float64))
            p = np.stack([inv[prv][:3, 3], np.zeros(3), inv[nxt][:3, 3]])
            pts.append(p - p[0])   # relative to the snippet's first frame (as Zhou et al.)
        ate3.append(odometry.compute_ate(pts[1], pts[0]))
    ate5, chained = [], []
    for s in np.unique(seq):
        idx = np.where(seq == s)[0]
        idx = idx[np.argsort(frame[idx])]
        frames = frame[idx]
        # split into runs of consecutive target frames
        breaks = np.where(np.diff(frames) != 1)[0] + 1
        for run in np.split(idx, breaks):
            if len(run) < 4:
                continue
            gt_traj = odometry.chain_relative_poses(gt_pose[run, nxt])
            pred_traj = odometry.chain_relative_poses(transforms[run, nxt])
            ate5.extend(odometry.snippet_ate(gt_traj, pred_traj, 5).tolist())
            chained.append(strata.chained_trajectory_ate(gt_pose[run, nxt], transforms[run, nxt]))
    return {"ate5_mean": float(np.mean(ate5)) if ate5 else None,
            "ate_chained_mean": float(np.mean(chained)) if chained else None,
            "ate_chained_runs": len(chained),
            "ate5_std": float(np.std(ate5)) if ate5 else None, "ate5_snippets": len(ate5),
            "ate3_mean": float(np.mean(ate3)), "ate3_std": float(np.std(ate3)),
            "ate3_snippets": len(ate3)}


def flow_metrics(flow: np.ndarray, gt_flow: np.ndarray, moving: np.ndarray) -> Dict[str, object]:
    """EPE (px) of the flow and, beside it, of zero flow (what learning nothing scores)."""
    epe = np.sqrt(np.sum((flow.astype(np.float64) - gt_flow) ** 2, -1))
    zero = np.sqrt(np.sum(gt_flow.astype(np.float64) ** 2, -1))
    out = {"epe_all": float(epe.mean())}
    for name, m in (("static", ~moving), ("moving", moving)):
        out[f"epe_{name}"] = float(epe[m].mean()) if m.any() else None
        out[f"epe_zero_{name}"] = float(zero[m].mean()) if m.any() else None
    out["epe_moving_over_zero"] = (out["epe_moving"] / out["epe_zero_moving"]
                                   if out["epe_moving"] and out["epe_zero_moving"] else None)
    return out


def v_detector(v: np.ndarray, moving: np.ndarray) -> Dict[str, float]:
    static = ~moving
    tp = float(np.sum(v & static))
    n_v = float(v.sum())
    return {"precision_static": tp / n_v if n_v else None,
            "recall_static": tp / float(static.sum()) if static.any() else None,
            "base_rate_static": float(static.mean()),
            "fraction_in_v": float(v.mean()),
            "moving_in_v": float(np.sum(v & moving) / moving.sum()) if moving.any() else None}


def compute_v(delta, dflow, bounds_eta, bounds_x, bounds_y, use_flow_prior=True):
    v = (delta >= bounds_eta[0]) & (delta <= bounds_eta[1])
    if use_flow_prior:
        v &= (dflow[..., 0] >= bounds_x[0]) & (dflow[..., 0] <= bounds_x[1])
        v &= (dflow[..., 1] >= bounds_y[0]) & (dflow[..., 1] <= bounds_y[1])
    return v


def own_inputs(arr, method: str):
    """(Δ, Δflow) the arm apportions with: from the ground-truth flow for *_gt_inputs arms,
    else from its flow net."""
    if uses_ground_truth_inputs(method):
        return arr["delta_gt"], arr["dflow_gt"]
    return arr["delta"], arr["dflow"]


def quantiles_of_test_pixels(delta, dflow, valid, eta_zeta):
    """The exact V_η and V_ζ (x, y) bounds of the test pixels `valid`."""
    eta, zeta = eta_zeta
    return (np.quantile(delta[valid], [0.5 - eta, 0.5 + eta]),
            np.quantile(dflow[..., 0][valid], [0.5 - zeta, 0.5 + zeta]),
            np.quantile(dflow[..., 1][valid], [0.5 - zeta, 0.5 + zeta]))


def v_metrics(arr, frozen, eta_zeta, method: str) -> Dict[str, object]:
    delta, dflow = own_inputs(arr, method)
    dom, moving = arr["non_occ"], arr["moving"]
    use_prior = method != "coopnet_no_vzeta"
    result = {"use_flow_prior": use_prior,
              "inputs": ("ground-truth flow" if uses_ground_truth_inputs(method)
                         else "learned flow")}
    qe, qx, qy = quantiles_of_test_pixels(delta, dflow, dom, eta_zeta)
    result["test_quantiles"] = {"eta": qe.tolist(), "zeta_x": qx.tolist(), "zeta_y": qy.tolist()}
    result["V_testq"] = v_detector(compute_v(delta, dflow, qe, qx, qy, use_prior), moving)
    result["V_eta_testq"] = v_detector(compute_v(delta, dflow, qe, qx, qy, False), moving)
    if frozen is not None and method.startswith("coopnet"):
        result["frozen_quantiles"] = frozen
        result["V_frozen"] = v_detector(compute_v(delta, dflow, frozen["eta"], frozen["zeta_x"],
                                                  frozen["zeta_y"], use_prior), moving)
    # Δ itself on the non-occluded pixels: static vs moving
    st, mv = dom & ~moving, dom & moving
    result["delta_stats"] = {
        "mean_static": float(delta[st].mean()) if st.any() else None,
        "mean_moving": float(delta[mv].mean()) if mv.any() else None,
        "p_negative_static": float((delta[st] < 0).mean()) if st.any() else None,
        "p_negative_moving": float((delta[mv] < 0).mean()) if mv.any() else None,
        "fraction_non_occluded": float(dom.mean()),
    }
    return result


def motion_mask_sets(arr, frozen, eta_zeta, method: str) -> Dict[str, np.ndarray]:
    """Static masks (bool `[N, H, W]`, 1 = static) of the t+1 source: CoopNet's V on the
    arm's own apportionment inputs (GT flow for *_gt_inputs arms) with the test set's
    quantiles (every arm) and the run's frozen ones (coopnet runs), and CC's MaskNet /
    Consensus / Joint masks (CC runs)."""
    delta, dflow = (x[:, 1] for x in own_inputs(arr, method))
    use_prior = method != "coopnet_no_vzeta"
    qe, qx, qy = quantiles_of_test_pixels(delta, dflow, arr["non_occ"][:, 1], eta_zeta)
    sets = {"V_testq": compute_v(delta, dflow, qe, qx, qy, use_prior)}
    if frozen is not None and method.startswith("coopnet"):
        sets["V_frozen"] = compute_v(delta, dflow, frozen["eta"], frozen["zeta_x"],
                                     frozen["zeta_y"], use_prior)
    for key in ("masknet", "consensus", "joint", "joint_authors"):
        if f"cc_{key}" in arr:
            sets[key] = arr[f"cc_{key}"] > 0.5
    return sets


def motion_iou_metrics(sets: Dict[str, np.ndarray], moving: np.ndarray) -> Dict[str, object]:
    """CC Table 6's IoU (static / moving / mean, every pixel) of each static mask of
    `motion_mask_sets` against the exact moving masks of the t+1 source, all by the same
    function (CoopNet's V as a moving detector: its complement)."""
    from coopnet_tf.eval import motion  # pylint: disable=import-outside-toplevel
    result = motion.evaluate_mask_sets({k: list(v.astype(np.float32)) for k, v in sets.items()},
                                       list(moving[:, 1]))
    return {k: {m: v[m] for m in ("iou_mean", "iou_static", "iou_moving")}
            for k, v in result.items()}


# each strategy's own segmentation, shown in the motion-mask figure: CC's joint mask
# m* (Eq. 14), CoopNet's V with the run's frozen quantiles (the pixels it trained D, T on)
MASK_SHOWN = (("cc", "joint"), ("coopnet", "V_frozen"))


def shown_mask_key(method: str) -> Optional[str]:
    """The key (of `motion_mask_sets`) of the arm's own segmentation, for the figure."""
    return next((key for prefix, key in MASK_SHOWN if method.startswith(prefix)), None)


def mask_examples(arr, count: int = 3) -> np.ndarray:
    """Indices of the figure's snippets: in each of the first `count` test sequences, the
    snippet whose t+1 source has the most moving pixels."""
    fraction = arr["moving"][:, 1].mean(axis=(1, 2))
    picks = []
    for seq in list(dict.fromkeys(arr["seq"].tolist()))[:count]:
        idx = np.flatnonzero(arr["seq"] == seq)
        picks.append(int(idx[np.argmax(fraction[idx])]))
    return np.asarray(picks, np.int64)


def plot_motion_masks(path: str, images: np.ndarray, gt_moving: np.ndarray,
                      panels: Dict[str, np.ndarray], title: str = "") -> str:
    """Rows = test snippets; columns: the target image, the exact moving mask of the t+1
    source, then each arm's moving detection (complement of its static mask) coloured
    against the exact mask (green TP, red FP, blue FN, grey TN)."""
    from coopnet_tf.eval import plots  # pylint: disable=import-outside-toplevel
    plt = plots.pyplot()
    rows, cols = len(images), 2 + len(panels)
    h, w = gt_moving.shape[1:]
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols * w / max(h, 1) / 3, 1.0 * rows + 0.6),
                             squeeze=False)
    for r in range(rows):
        shown = [("target", np.clip(images[r], 0, 1)),
                 ("GT moving", plots.mask_comparison(gt_moving[r], gt_moving[r]))]
        shown += [(label, plots.mask_comparison(~static[r], gt_moving[r]))
                  for label, static in panels.items()]
        for c, (label, img) in enumerate(shown):
            axes[r][c].imshow(img, interpolation="nearest")
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(label, fontsize=7)
    return plots.save_figure(fig, path, dpi=130, title=title, title_size=7)


def evaluate_lee_run(model_dir: str, test_pattern: str, cfg: Config):
    """A Lee et al. run's metrics: depth and pose as every arm's (pose from the ego branch),
    flow = the total-motion flow, object motion; no V, no Δ samples."""
    from coopnet_tf import export  # pylint: disable=import-outside-toplevel
    arr = collect_lee_predictions(model_dir, test_pattern, cfg.height, cfg.width,
                                  cfg.max_test_snippets, eager=cfg.run_eagerly,
                                  max_boxes=max(1, cfg.num_objects))
    segmentation = object_segmentation_metrics(arr)
    # a `lee_no_csac*` run never ran CSAC in training: here it runs at evaluation only
    segmentation["csac_in_training"] = bool(export.query_config("lee.csac", True)) and \
        float(export.query_config("lee.lambda_mr", 1.0)) > 0
    metrics = dict(common_metrics(arr),
                   flow_source="total motion: ego-motion + residual (Lee Eq. 2)",
                   object_motion=object_motion_metrics(arr, arr["residual"]),
                   object_segmentation=segmentation, v={})
    return metrics, None, arr


def common_metrics(arr) -> Dict[str, object]:
    """The families every arm reports: depth (median and static scale), pose, flow."""
    from coopnet_tf.eval import strata  # pylint: disable=import-outside-toplevel
    moving_any = arr["moving"].any(axis=1)
    return {
        "depth": depth_metrics(arr["gt_depth"], arr["depth"], moving_any),
        "depth_static_scale": strata.static_scaled_depth(arr["gt_depth"], arr["depth"],
                                                         moving_any, *DEPTH_RANGE),
        "pose": pose_metrics(arr["transforms"], arr["gt_pose"], arr["seq"], arr["frame"]),
        "flow": flow_metrics(arr["flow"], arr["gt_flow"], arr["moving"]),
        "test_snippets": int(len(arr["depth"])),
        "moving_pixel_fraction": float(moving_any.mean()),
    }


def evaluate_run(model_dir: str, method: str, test_pattern: str, cfg: Config):
    """(metrics, Δ samples for the plot or None, arrays) of a trained run; a Lee et al. run
    (`export.run_method`) goes to `evaluate_lee_run`."""
    from coopnet_tf import export  # pylint: disable=import-outside-toplevel
    if export.run_method(model_dir) == "lee":
        return evaluate_lee_run(model_dir, test_pattern, cfg)
    arr, frozen, eta_zeta, _ = collect_predictions(model_dir, test_pattern, cfg.height,
                                                   cfg.width, cfg.max_test_snippets,
                                                   eager=cfg.run_eagerly)
    masks = motion_mask_sets(arr, frozen, eta_zeta, method)
    metrics = dict(common_metrics(arr), v=v_metrics(arr, frozen, eta_zeta, method),
                   motion_iou=motion_iou_metrics(masks, arr["moving"]))
    if masks.get(shown_mask_key(method)) is not None:
        arr["shown_mask"] = masks[shown_mask_key(method)]
    # Δ samples for the plot (non-occluded pixels), subsampled
    dom = arr["non_occ"]
    rng = np.random.default_rng(0)
    samples = {}
    for flow_name, key in (("learned", "delta"), ("gt", "delta_gt")):
        samples[flow_name] = {}
        for name, m in (("all", dom), ("static", dom & ~arr["moving"]),
                        ("moving", dom & arr["moving"])):
            vals = arr[key][m]
            if len(vals) > 200_000:
                vals = rng.choice(vals, 200_000, replace=False)
            samples[flow_name][name] = vals
    return metrics, samples, arr


def trivial_reference(arr) -> Dict[str, object]:
    """What a network that learned nothing scores: constant depth, identity pose, zero flow,
    zero object motion."""
    from coopnet_tf.eval import strata  # pylint: disable=import-outside-toplevel
    moving_any = arr["moving"].any(axis=1)
    eye = np.broadcast_to(np.eye(4, dtype=np.float32), arr["transforms"].shape)
    return {
        "depth": depth_metrics(arr["gt_depth"], np.ones_like(arr["depth"]), moving_any),
        "depth_static_scale": strata.static_scaled_depth(
            arr["gt_depth"], np.ones_like(arr["depth"]), moving_any, *DEPTH_RANGE),
        "pose": pose_metrics(eye, arr["gt_pose"], arr["seq"], arr["frame"]),
        "flow": flow_metrics(np.zeros_like(arr["flow"]), arr["gt_flow"], arr["moving"]),
        "object_motion": object_motion_metrics(
            dict(arr, depth=np.ones_like(arr["depth"])),
            np.zeros_like(arr["gt_object_motion"])),
    }


# what a run's evaluation depends on besides its checkpoint and config: the code that
# computes it (the package and this benchmark)
_EVALUATION_CODE = ("coopnet_tf", "benchmarks/reproduce_synthetic.py", "benchmarks/common.py")


def evaluation_key(run_dir: str, method: str, test_pattern: str, cfg: Config) -> str:
    """A digest of everything a run's evaluation depends on: its latest checkpoint (the
    index file, which holds every tensor's checksum) and operative config, the method,
    the test files (names and sizes), the evaluation settings and the source of the
    evaluating code. Any change gives a new key, so a stored evaluation is never reused
    for something it did not measure."""
    import glob  # pylint: disable=import-outside-toplevel
    import hashlib  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}:{len(data)}:".encode() + data)

    checkpoint = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if checkpoint is None:
        raise ValueError(f"{run_dir}: no checkpoint to evaluate")
    for path in (checkpoint + ".index", os.path.join(run_dir, "operative_config.gin")):
        add(os.path.basename(path), pathlib.Path(path).read_bytes() if os.path.isfile(path)
            else b"<missing>")
    add("method", method.encode())
    for path in sorted(glob.glob(test_pattern)):
        add("test_file", f"{os.path.basename(path)}={os.path.getsize(path)}".encode())
    add("settings", repr((cfg.height, cfg.width, cfg.max_test_snippets, cfg.run_eagerly,
                          cfg.num_objects)).encode())
    root = pathlib.Path(__file__).resolve().parents[1]
    for entry in _EVALUATION_CODE:
        paths = sorted((root / entry).rglob("*.py")) if (root / entry).is_dir() \
            else [root / entry]
        for path in paths:
            add(str(path.relative_to(root)), path.read_bytes())
    return digest.hexdigest()[:20]


def evaluate_run_stored(run_dir: str, method: str, test_pattern: str,
                        cfg: Config) -> Dict[str, object]:
    """`evaluate_run`, kept per run in ``<run_dir>/evaluation/<method>-<key>.{npz,json}``
    (`evaluation_key`; written atomically, the JSON last) and reused while the key matches:
    an evaluation of many runs that is killed resumes where it stopped, and runs that
    finished early can be evaluated while others still train. Returns what `run` needs:
    metrics, Δ samples (None for Lee runs), the trivial reference, the motion-mask figure's
    snippets (images, exact moving mask of the t+1 source, the arm's own static mask) and
    whether it was reused."""
    import json  # pylint: disable=import-outside-toplevel
    from coopnet_tf import files  # pylint: disable=import-outside-toplevel
    stem = os.path.join(run_dir, "evaluation",
                        f"{method}-{evaluation_key(run_dir, method, test_pattern, cfg)}")
    if os.path.isfile(stem + ".json"):
        with open(stem + ".json") as f:
            stored = json.load(f)
        with np.load(stem + ".npz") as z:
            arrays = {k: z[k] for k in z.files}
        samples = None
        if stored["has_samples"]:
            samples = {flow: {name: arrays[f"samples/{flow}/{name}"]
                              for name in ("all", "static", "moving")}
                       for flow in ("learned", "gt")}
        figure = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("figure/")}
        return {"metrics": stored["metrics"], "trivial": stored["trivial"],
                "samples": samples, "figure": figure, "reused": True}
    metrics, samples, arr = evaluate_run(run_dir, method, test_pattern, cfg)
    examples = mask_examples(arr)
    figure = {"images": arr["target_image"][examples], "gt": arr["moving"][examples, 1]}
    if "shown_mask" in arr:
        figure["shown_mask"] = arr["shown_mask"][examples]
    trivial = trivial_reference(arr)
    del arr
    arrays = {f"figure/{k}": v for k, v in figure.items()}
    for flow, subsets in (samples or {}).items():
        arrays.update({f"samples/{flow}/{name}": v for name, v in subsets.items()})
    with files.atomic_file(stem + ".npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    # stored and returned in the form json.load gives back, so that fresh and reused
    # evaluations tabulate alike
    record = common.json_ready({"run_dir": run_dir, "method": method,
                                "has_samples": samples is not None, "metrics": metrics,
                                "trivial": trivial})
    with files.atomic_file(stem + ".json") as f:
        json.dump(record, f)
    return {"metrics": record["metrics"], "trivial": record["trivial"], "samples": samples,
            "figure": figure, "reused": False}


# ----------------------------------------------------------------- reporting ----

# metric families: (name, path in a run's metrics, better: "lower" / "higher" / "one")
FAMILIES = {
    "static depth": [
        ("AbsRel static", ("depth_static_scale", "static", "abs_rel"), "lower"),
        ("log-RMSE static", ("depth_static_scale", "static", "log_rmse"), "lower"),
        ("δ<1.25 static", ("depth_static_scale", "static", "a1"), "higher"),
    ],
    "pose": [
        ("ATE-3", ("pose", "ate3_mean"), "lower"),
        ("ATE-5", ("pose", "ate5_mean"), "lower"),
        ("ATE chained", ("pose", "ate_chained_mean"), "lower"),
    ],
    "moving depth": [
        ("AbsRel moving", ("depth_static_scale", "moving", "abs_rel"), "lower"),
        ("log-RMSE moving", ("depth_static_scale", "moving", "log_rmse"), "lower"),
        ("δ<1.25 moving", ("depth_static_scale", "moving", "a1"), "higher"),
        ("AbsRel moving (median/img)", ("depth", "moving", "abs_rel"), "lower"),
        ("moving bias", ("depth_static_scale", "moving_bias"), "one"),
    ],
    "V detector": [
        ("V precision", ("v", "V_testq", "precision_static"), "higher"),
        ("V recall", ("v", "V_testq", "recall_static"), "higher"),
        ("P(V|moving)", ("v", "V_testq", "moving_in_v"), "lower"),
        ("V frozen precision", ("v", "V_frozen", "precision_static"), "higher"),
    ],
    "flow": [
        ("EPE static", ("flow", "epe_static"), "lower"),
        ("EPE moving", ("flow", "epe_moving"), "lower"),
        ("EPE moving / zero flow", ("flow", "epe_moving_over_zero"), "lower"),
    ],
    "object motion": [   # Lee et al. arms only (their residual field r)
        ("r EPE moving", ("object_motion", "epe_moving"), "lower"),
        ("r rel. error moving", ("object_motion", "rel_moving"), "lower"),
        ("r EPE static", ("object_motion", "epe_static"), "lower"),
        # Lee Table 5: CSAC's inliers (threshold 0.5) vs the world's object pixels in boxes
        ("CSAC seg. IoU", ("object_segmentation", "all_boxes", "iou_mean"), "higher"),
        ("CSAC seg. IoU moving boxes", ("object_segmentation", "moving_boxes", "iou_mean"),
         "higher"),
    ],
}
CONTEXT_METRICS = [   # shown, not compared
    ("AbsRel all (median/img)", ("depth", "all", "abs_rel")),
    ("depth std/mean", ("depth", "pred_depth_rel_std")),
    ("zero-flow EPE static", ("flow", "epe_zero_static")),
    ("zero-flow EPE moving", ("flow", "epe_zero_moving")),
    ("zero-motion r EPE moving", ("object_motion", "gt_norm_moving")),
    ("P(static)", ("v", "V_testq", "base_rate_static")),
    ("mean Δ static", ("v", "delta_stats", "mean_static")),
    ("mean Δ moving", ("v", "delta_stats", "mean_moving")),
]
MOTION_METRICS = [
    (f"{name}: IoU {cls}", ("motion_iou", key, f"iou_{cls}"))
    for key, name in (("V_testq", "not-V test-q"), ("V_frozen", "not-V frozen"),
                      ("masknet", "CC MaskNet"), ("consensus", "CC Consensus"),
                      ("joint", "CC Joint"), ("joint_authors", "CC Joint (authors' eval)"))
    for cls in ("moving", "mean")
]
VERDICT_FAMILIES = ("static depth", "pose", "moving depth")


def _get(d, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _badness(value, better):
    """A value where lower is better (the moving bias: |log bias|)."""
    if value is None:
        return None
    if better == "higher":
        return -value
    if better == "one":
        return abs(math.log(value)) if value > 0 else None
    return value


def comparisons(methods) -> List[tuple]:
    """(label, a, b) pairs whose arms were both run: the verdicts', the Lee ablations'
    (`LEE_COMPARISONS`) and coopnet − every arm."""
    out = [(q, a, b) for q, a, b in VERDICTS + LEE_COMPARISONS
           if a in methods and b in methods]
    seen = {(a, b) for _, a, b in out}
    for other in methods:
        if other != "coopnet" and "coopnet" in methods and ("coopnet", other) not in seen:
            out.append((f"coopnet vs {other}", "coopnet", other))
    return out


def summarise(per_run: Dict[str, Dict], methods, seeds) -> Dict[str, Dict]:
    """Per arm and metric: per-seed values and the mean; per comparison and metric: the
    paired differences a − b with their 95 % t-interval (``strata.paired_interval``)."""
    from coopnet_tf.eval import strata  # pylint: disable=import-outside-toplevel
    metrics = [(n, p, b) for fam in FAMILIES.values() for n, p, b in fam]
    summary = {}
    for method in methods:
        runs = [per_run.get(f"{method}/seed{s}") for s in seeds]
        runs = [r for r in runs if r is not None]
        summary[method] = {name: common.mean_spread(_get(r, path) for r in runs)
                           for name, path, *_ in metrics + CONTEXT_METRICS
                           + MOTION_METRICS}
    paired = {}
    for label, a, b in comparisons(methods):
        rows = {}
        for name, path, better in metrics:
            va = [_get(per_run.get(f"{a}/seed{s}", {}), path) for s in seeds]
            vb = [_get(per_run.get(f"{b}/seed{s}", {}), path) for s in seeds]
            diff = strata.paired_interval(va, vb)
            # in "badness" units (lower = better) for the verdict
            bad = strata.paired_interval([_badness(v, better) for v in va],
                                         [_badness(v, better) for v in vb])
            diff["a_better"] = bool(bad["excludes_zero"] and bad["high"] < 0)
            diff["b_better"] = bool(bad["excludes_zero"] and bad["low"] > 0)
            rows[name] = diff
        paired[f"{a} − {b}"] = {"question": label, "a": a, "b": b, "metrics": rows}
    summary["_paired"] = paired
    summary["_verdicts"] = verdicts(paired, len(seeds))
    return summary


TRIVIAL_ROW = "trivial (learned nothing)"


def add_trivial_row(summary: Dict[str, Dict], trivial: Optional[Dict]) -> List[str]:
    """Adds the "learned nothing" reference (``trivial_reference``) to the summary as a
    row; returns the rows to print after the arms (none without a reference)."""
    if trivial is None:
        return []
    summary[TRIVIAL_ROW] = {
        name: common.mean_spread([_get(trivial, path)])
        for name, path, *_ in [r for fam in FAMILIES.values() for r in fam] + CONTEXT_METRICS}
    return [TRIVIAL_ROW]


def verdicts(paired: Dict[str, Dict], num_seeds: int) -> List[Dict[str, object]]:
    """Per verdict question and metric family: which arm the 95 % paired intervals favour.

    "a better" when at least one metric of the family favours a with an interval that
    excludes 0 and none favours b; "mixed" when both happen; "no detectable difference"
    when no interval excludes 0; "n/a" with fewer than 2 seeds.
    """
    out = []
    for key, comp in paired.items():
        if not comp["question"].startswith("("):
            continue
        for family in VERDICT_FAMILIES:
            names = [n for n, *_ in FAMILIES[family]]
            rows = [comp["metrics"][n] for n in names]
            a_wins = [n for n, r in zip(names, rows) if r["a_better"]]
            b_wins = [n for n, r in zip(names, rows) if r["b_better"]]
            if num_seeds < 2 or all(r["n"] < 2 for r in rows):
                outcome = "n/a (fewer than 2 seeds)"
            elif a_wins and b_wins:
                outcome = "mixed"
            elif a_wins:
                outcome = f"{comp['a']} better"
            elif b_wins:
                outcome = f"{comp['b']} better"
            else:
                outcome = "no detectable difference"
            out.append({"question": comp["question"], "comparison": key, "family": family,
                        "outcome": outcome, "a_better_on": a_wins, "b_better_on": b_wins})
    return out


def _fmt_values(ms) -> str:
    if ms.get("mean") is None:
        return "n/a"
    vals = ms.get("values", [])
    if len(vals) > 1:
        return f"{common.fmt(ms['mean'])} ({', '.join(common.fmt(v, 3) for v in vals)})"
    return common.fmt(ms["mean"])


def _fmt_interval(d) -> str:
    if d["n"] < 2:
        return "n/a"
    return f"[{common.fmt(d['low'], 3)}, {common.fmt(d['high'], 3)}]"


def tables_markdown(summary, methods, seeds) -> str:
    parts = [f"Test split of the synthetic world; seeds {list(seeds)}; each cell: mean "
             "(per-seed values). Depth: scale per image from its STATIC pixels only "
             "(median ratio), pooled over pixels; \"median/img\": the standard per-image "
             "median scale on all pixels; moving bias: median of scaled prediction / GT "
             "on moving pixels (1 = unbiased). ATE in metres (3-frame per snippet, 5-frame "
             "Zhou et al., whole test sequences chained and 7-DoF aligned). EPE in px; zero "
             "flow's EPE beside. V: \"pixel in V\" as a static detector with test-set "
             "quantiles, from each arm's own apportionment inputs (GT flow for *_gt_inputs "
             "arms); frozen: the run's P² quantiles. Lee et al. arms (lee*): pose from "
             "the motion net's ego branch, flow = the total motion (ego + residual), no V; "
             "object motion: EPE (m) and relative error of their residual field r, times "
             "the image's static depth scale, against the world's exact r on moving pixels "
             "(\"r EPE static\": on static pixels, where r = 0; zero motion's EPE beside); "
             "CSAC seg. IoU: mean IoU per (snippet, source) of CSAC's inliers (> 0.5, best "
             "hypothesis, Lee Sec. 4.4 / Table 5) on the target's exact boxes against the "
             "world's object pixels inside those boxes (\"moving boxes\": only the boxes "
             "holding GT moving pixels; lee_no_csac*: CSAC run at evaluation only); "
             "n/a for the other arms.\n"]
    for family, rows in list(FAMILIES.items()) + [("context", CONTEXT_METRICS)]:
        names = [r[0] for r in rows]
        parts.append(f"\n**{family}**\n\n" + common.markdown_table(
            ["method"] + names,
            [[m] + [_fmt_values(summary[m].get(n, {})) for n in names]
             for m in methods if m in summary]))
    motion_rows = [n for n, _ in MOTION_METRICS
                   if any(summary[m].get(n, {}).get("mean") is not None for m in methods
                          if n in summary[m])]
    if motion_rows:
        parts.append("\n\nMotion segmentation as CC Table 6 (IoU per class, pooled over the "
                     "test pixels, against the exact moving masks w.r.t. t+1): CoopNet's V "
                     "complement as a moving detector and CC's three masks (CC runs).\n\n")
        parts.append(common.markdown_table(
            ["method"] + motion_rows,
            [[m] + [_fmt_values(summary[m][n]) for n in motion_rows]
             for m in methods if motion_rows[0] in summary[m]]))
    paired = summary.get("_paired", {})
    if paired:
        parts.append("\n\n**Paired differences** (a − b per seed, mean, 95 % t-interval "
                     "over seeds; \"favours\": the interval excludes 0)\n\n")
        table = []
        for key, comp in paired.items():
            for name, d in comp["metrics"].items():
                fav = comp["a"] if d["a_better"] else comp["b"] if d["b_better"] else ""
                table.append([key, name, ", ".join(common.fmt(v, 3) for v in d["per_seed"]),
                              common.fmt(d["mean"]), _fmt_interval(d), fav])
        parts.append(common.markdown_table(
            ["a − b", "metric", "per seed", "mean", "95 % interval", "favours"], table))
    rows = summary.get("_verdicts", [])
    if rows:
        parts.append("\n\n**Verdicts** (computed from the intervals above: a family favours "
                     "an arm when one of its metrics' intervals excludes 0 in its favour and "
                     "none in the other's)\n\n")
        parts.append(common.markdown_table(
            ["question", "family", "outcome", "metrics favouring a", "metrics favouring b"],
            [[r["question"], r["family"], r["outcome"], ", ".join(r["a_better_on"]) or "–",
              ", ".join(r["b_better_on"]) or "–"] for r in rows]))
    return "\n".join(parts) + "\n"


def plot_delta_density(path: str, samples_by_method: Dict[str, Dict[str, Dict]],
                       quantiles_by_method: Dict[str, Optional[Dict]], title: str = "") -> str:
    """Fig. 1-style Δ = Φ_D − Φ_F densities per arm: top row with the arm's learned flow,
    bottom row with the ground-truth flow as Φ_F (same depth/pose)."""
    from coopnet_tf.eval import plots  # pylint: disable=import-outside-toplevel
    plt = plots.pyplot()
    methods = list(samples_by_method)
    fig, axes = plt.subplots(2, len(methods), figsize=(4.2 * len(methods), 6.6),
                             squeeze=False)
    vals = [s[f]["all"] for s in samples_by_method.values() for f in ("learned", "gt")
            if len(s[f]["all"])]
    all_vals = np.concatenate(vals) if vals else np.zeros(0)
    lo, hi = np.percentile(all_vals, [0.5, 99.5]) if len(all_vals) else (-0.5, 0.5)
    bins = np.linspace(lo, hi, 121)
    for col, method in enumerate(methods):
        for row, flow_name in enumerate(("learned", "gt")):
            ax = axes[row][col]
            s = samples_by_method[method][flow_name]
            for name, colour in (("all", "k"), ("static", "tab:blue"), ("moving", "tab:red")):
                if len(s[name]) == 0:
                    continue
                hist, edges = np.histogram(s[name], bins=bins, density=True)
                ax.plot(0.5 * (edges[1:] + edges[:-1]), hist, color=colour, lw=1.4,
                        label=f"{name} ({len(s[name])})")
            q = quantiles_by_method.get(method)
            own = "gt" if uses_ground_truth_inputs(method) else "learned"
            if q and flow_name == own:
                for b in q["eta"]:
                    ax.axvline(b, color="tab:green", ls="--", lw=1)
            ax.axvline(0.0, color="grey", lw=0.6)
            ax.set_yscale("log")
            ax.set_title(f"{method}: {'learned' if flow_name == 'learned' else 'GT'} flow",
                         fontsize=9)
            ax.set_xlabel("Δ = Φ_D − Φ_F")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("density (log)")
        axes[1][0].set_ylabel("density (log)")
    return plots.save_figure(fig, path, dpi=110, title=title, title_size=9)


# ----------------------------------------------------------------------- main ----

def run(cfg: Config, argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Trains (unless eval_only), evaluates, writes JSON + markdown (+ plot). Returns the
    JSON payload."""
    start = time.time()
    if any(map(is_lee, cfg.methods)):
        lee_phase_epochs(cfg.num_epochs)     # fails before any training when too short
    meta = common.run_metadata(argv)
    model_root = cfg.model_root or os.path.join(cfg.output_dir, "runs")
    os.makedirs(cfg.output_dir, exist_ok=True)
    t0 = time.time()
    data_dir = ensure_dataset(cfg)
    noisy_dir = ensure_dataset(cfg, noisy_boxes=True) if any(
        LEE_ARMS[m][2] for m in cfg.methods if is_lee(m)) else None
    data_seconds = time.time() - t0
    from coopnet_tf.data import synthetic  # pylint: disable=import-outside-toplevel
    test_pattern = synthetic.file_pattern(data_dir, "test")
    t0 = time.time()
    train_info = {}
    if not cfg.eval_only:
        with _current_gin_snapshot(model_root):
            train_info = train_all(cfg, model_root)
    train_seconds = time.time() - t0
    previous = _previous_training(cfg) if cfg.eval_only else None
    if previous is not None:
        train_info = previous["train_info"]
    per_run, samples, quantiles, per_run_extra = {}, {}, {}, {}
    mask_figure = {"panels": {}}   # the motion-mask figure's snippets, seed 0 of the run
    t0 = time.time()
    for seed in cfg.seeds:
        for method in cfg.methods:
            run_dir = os.path.join(model_root, f"seed{seed}", method)
            if not _finished(run_dir, cfg.num_epochs * cfg.steps_per_epoch):
                raise ValueError(f"{run_dir}: not trained to step "
                                 f"{cfg.num_epochs * cfg.steps_per_epoch} (latest checkpoint: "
                                 f"{_checkpoint_step(run_dir)}); run without --eval_only "
                                 "to finish it, or leave the arm out of --methods")
            print(f"[reproduce] evaluating {method} seed {seed}", flush=True)
            evaluated = evaluate_run_stored(run_dir, method, test_pattern, cfg)
            if evaluated["reused"]:
                print("[reproduce]   (its stored evaluation: unchanged checkpoint, config "
                      "and code)", flush=True)
            metrics, s, figure = (evaluated[k] for k in ("metrics", "samples", "figure"))
            if "trivial" not in per_run_extra:
                per_run_extra["trivial"] = evaluated["trivial"]
                mask_figure = {"images": figure["images"], "gt": figure["gt"], "panels": {}}
            if seed == cfg.seeds[0] and "shown_mask" in figure:
                label = f"{method}: not {shown_mask_key(method)}"   # its moving pixels
                mask_figure["panels"][label] = figure["shown_mask"]
            metrics["training"] = train_info.get(f"{method}/seed{seed}")
            per_run[f"{method}/seed{seed}"] = metrics
            if seed == cfg.seeds[0] and s is not None:   # (Lee runs have no Δ)
                samples[method] = s
                quantiles[method] = metrics["v"].get("frozen_quantiles")
    eval_seconds = time.time() - t0
    summary = summarise(per_run, cfg.methods, cfg.seeds)
    trivial = per_run_extra.get("trivial")
    md = tables_markdown(summary, list(cfg.methods) + add_trivial_row(summary, trivial),
                         cfg.seeds)
    payload = {
        "benchmark": "reproduce_synthetic",
        "config": dataclasses.asdict(cfg),
        "dataset": {"path": data_dir, "world": world_kwargs(cfg),
                    "summary": synthetic.dataset_summary(data_dir),
                    "noisy_boxes_path": noisy_dir,
                    "noisy_boxes": LEE_BOX_NOISE if noisy_dir else None},
        "protocol": {
            "shared_burn_in": bool(cfg.share_burn_in),
            "total_steps": cfg.num_epochs * cfg.steps_per_epoch,
            "burn_in_steps": cfg.burn_in_epochs * cfg.steps_per_epoch,
            "depth": "depth_static_scale: per-image scale from the static pixels only; "
                     "depth: median scaling per image on all pixels; GT in (1e-3, 80) m, "
                     "whole image; subsets pooled over pixels; moving = GT moving for any "
                     "source",
            "pose": "ate5: Zhou et al. 5-frame snippets of trajectories chained from the "
                    "T_{k->k+1} of consecutive test snippets; ate3: per snippet, frames "
                    "[t-1, t, t+1], scale-aligned (SfMLearner compute_ate); "
                    "ate_chained: whole runs of consecutive test snippets chained, 7-DoF "
                    "Umeyama aligned, position RMSE",
            "flow": "EPE of F_{t->s}, both sources, all pixels (occluded included); Lee "
                    "arms: the flow of their total motion (ego + residual, Lee Eq. 2)",
            "object_motion": "Lee arms: |s r_pred - r_gt| (m), s = the image's static "
                             "depth scale, both sources, GT depth in (1e-3, 80) m, moving = "
                             "the GT moving mask of the source; rel: / |r_gt|",
            "object_segmentation": "Lee arms (Lee Table 5): losses.object_motion.csac_loss "
                                   "on the predicted residual and target depth with the "
                                   "target's exact boxes (every object's, max_boxes = "
                                   "num_objects), per source; object = best hypothesis's "
                                   "inlier score > 0.5 inside a real box; IoU with the "
                                   "world's object pixels (re-rendered Frame.prim: not "
                                   "buildings/road/sky) inside the boxes, per (snippet, "
                                   "source), mean over images with a non-empty union; "
                                   "moving_boxes: only boxes holding GT moving pixels of the "
                                   "source; lee_no_csac*: CSAC at evaluation only",
            "lee": "Lee arms train from scratch with the lee gin file, phases "
                   "(phase1, phase2, rest) epochs = "
                   f"{lee_phase_epochs(cfg.num_epochs) if any(map(is_lee, cfg.methods)) else None}",
            "v": "V_frozen: final frozen P² quantiles of the coopnet runs; V_testq: exact "
                 "quantiles of the test set (all methods); both from each arm's own "
                 "apportionment inputs (GT flow for *_gt_inputs arms)",
            "statistics": "per-seed values, mean, 95 % Student-t interval of the paired "
                          "differences a - b over seeds (n/a with fewer than 2 seeds)",
        },
        "timing_seconds": {"dataset": round(data_seconds, 1), "training": round(train_seconds, 1),
                           "evaluation": round(eval_seconds, 1)},
        "per_run": per_run,
        "trivial_reference": trivial,
        "summary": summary,
    }
    if cfg.plot and samples:
        title = (f"Δ densities on the test split (seed {cfg.seeds[0]}; non-occluded pixels, "
                 "GT moving masks; top: the arm's flow net as Φ_F, bottom: the GT flow; "
                 "dashed: frozen V_η bounds on the arm's own inputs)")
        payload["plot"] = plot_delta_density(
            os.path.join(cfg.output_dir, f"{cfg.output_name}_delta_density.png"), samples,
            quantiles, title)
    if cfg.plot and mask_figure["panels"]:
        payload["mask_plot"] = plot_motion_masks(
            os.path.join(cfg.output_dir, f"{cfg.output_name}_motion_masks.png"),
            mask_figure["images"], mask_figure["gt"], mask_figure["panels"],
            title=(f"moving pixels of the t+1 source, test snippets, seed {cfg.seeds[0]}: "
                   "green = detected moving, red = false alarm, blue = missed, grey = static"))
    if previous is not None:
        payload["training_run"] = previous["training_run"]
    payload["metadata"] = common.finish_metadata(meta, start)
    json_path = common.write_json(os.path.join(cfg.output_dir, f"{cfg.output_name}.json"),
                                  payload)
    trained_by = ""
    if previous is not None and (previous["training_run"] or {}).get("metadata"):
        tm = previous["training_run"]["metadata"]
        trained_by = (f"Models trained by: `{tm.get('command')}` ({tm.get('date_utc')}, wall "
                      f"{tm.get('wall_seconds')} s, load {tm.get('load_average_start')} -> "
                      f"{tm.get('load_average_end')})  \n")
    header = (f"# Synthetic reproduction\n\n{trained_by}Command: `{meta['command']}`  \n"
              f"Date (UTC): {meta['date_utc']}; machine: {meta['machine']['cpu']} x "
              f"{meta['machine']['cpu_count']}; TF {meta['versions']['tensorflow']}; "
              f"load {meta['load_average_start']} -> {payload['metadata']['load_average_end']}; "
              f"wall {payload['metadata']['wall_seconds']} s\n\n")
    with open(os.path.join(cfg.output_dir, f"{cfg.output_name}.md"), "w") as f:
        f.write(header + md)
    print(md)
    print(f"[reproduce] wrote {json_path}", flush=True)
    return payload


def parse_args(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=d.output_dir)
    p.add_argument("--model_root", default=None,
                   help="where the runs' model_dirs go (default <output_dir>/runs)")
    p.add_argument("--methods", default=",".join(d.methods),
                   help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)))
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--num_epochs", type=int, default=d.num_epochs)
    p.add_argument("--steps_per_epoch", type=int, default=d.steps_per_epoch)
    p.add_argument("--burn_in_epochs", type=int, default=d.burn_in_epochs)
    p.add_argument("--lr_boundary_epoch", type=int, default=d.lr_boundary_epoch)
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--share_burn_in", action=argparse.BooleanOptionalAction,
                   default=d.share_burn_in)
    p.add_argument("--num_sequences", type=int, default=d.num_sequences)
    p.add_argument("--num_val_sequences", type=int, default=d.num_val_sequences)
    p.add_argument("--num_test_sequences", type=int, default=d.num_test_sequences)
    p.add_argument("--frames_per_sequence", type=int, default=d.frames_per_sequence)
    p.add_argument("--num_objects", type=int, default=d.num_objects)
    p.add_argument("--moving_fraction", type=float, default=d.moving_fraction)
    p.add_argument("--world_seed", type=int, default=d.world_seed)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--gin_file", default=d.gin_file)
    p.add_argument("--lee_gin_file", default=d.lee_gin_file,
                   help="gin file of the Lee et al. arms (lee*)")
    p.add_argument("--gin_bindings", action="append", default=[],
                   help="extra gin bindings for every run (repeatable)")
    p.add_argument("--run_eagerly", action="store_true")
    p.add_argument("--max_test_snippets", type=int, default=None)
    p.add_argument("--eval_only", action="store_true",
                   help="evaluate the runs already under --model_root")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--output_name", default=d.output_name)
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    return Config(
        output_dir=a.output_dir, model_root=a.model_root, methods=tuple(methods),
        seeds=tuple(int(s) for s in a.seeds.split(",") if s.strip()), height=a.height,
        width=a.width, num_epochs=a.num_epochs, steps_per_epoch=a.steps_per_epoch,
        burn_in_epochs=a.burn_in_epochs, lr_boundary_epoch=a.lr_boundary_epoch,
        batch_size=a.batch_size, share_burn_in=a.share_burn_in,
        num_sequences=a.num_sequences, num_val_sequences=a.num_val_sequences,
        num_test_sequences=a.num_test_sequences, frames_per_sequence=a.frames_per_sequence,
        num_objects=a.num_objects, moving_fraction=a.moving_fraction,
        world_seed=a.world_seed, cache_dir=a.cache_dir, gin_file=a.gin_file,
        lee_gin_file=a.lee_gin_file,
        extra_bindings=tuple(a.gin_bindings), run_eagerly=a.run_eagerly,
        max_test_snippets=a.max_test_snippets, eval_only=a.eval_only, plot=a.plot,
        output_name=a.output_name, progress=a.progress)


def main(argv=None):
    cfg = parse_args(argv)
    run(cfg, argv=[sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
