"""`train_and_evaluate(model_dir=...)`: the paper's training protocol (Sec. 4.4).

The only gin-configurable function of the training package and the only place that knows
the distribution strategy, the directories and the cadence:

* strategy (``distribution`` = default / mirrored / multi_worker), mixed precision, XLA;
* networks, the two optimizers (built inside ``strategy.scope()`` before the first step
  and before restoring), the apportionment strategy and its P² layer;
* data: per epoch, ``make_dataset`` seeded by (seed, epoch) through
  ``strategy.distribute_datasets_from_function``, skipping the batches already consumed
  in that epoch on resume — so a resumed run sees the same batches as an uninterrupted
  one; every other per-step randomness is stateless in (seed, step);
* the protocol: ``num_epochs`` (30), ``burn_in_epochs`` (5; Monodepth2 loss for D+T,
  uniform flow weights; P² runs in the last burn-in epoch), quantiles frozen at each
  epoch end and used during the next one, learning rate 1e-4 → 1e-5 after epoch 20 by
  global step;
* ``steps_per_loop`` steps per `tf.function` call (`tf.range` around ``strategy.run``);
* checkpoints (`tf.train.CheckpointManager`: both nets... everything; last N, plus the
  best by validation metric), TensorBoard summaries, the tqdm progress bar;
* per-epoch validation: depth AbsRel / RMSE (median-scaled) on the validation split when
  it has ground truth (the synthetic world), else the validation photometric loss.

Directory layout of ``model_dir``: ``checkpoints/`` (latest N), ``best/`` (best by
validation), ``summaries/`` (TensorBoard), ``operative_config.gin``,
``eval_<step>.json`` (validation results).
"""
import json
import math
import os
import time
from typing import Dict, Optional, Sequence

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from coopnet_tf import configurables, models, specs, summaries
from coopnet_tf.data import pipeline
from coopnet_tf.eval import depth as depth_eval
from coopnet_tf.losses import apportion
from coopnet_tf.training import distribution as distribution_lib
from coopnet_tf.training import optimizers
from coopnet_tf.training.step import CoopTrainStep, Phase, StepOptions

OPERATIVE_CONFIG = "operative_config.gin"
CHECKPOINT_SUBDIR = "checkpoints"
BEST_SUBDIR = "best"
SUMMARY_SUBDIR = "summaries"
MIXED_PRECISION_POLICIES = (None, "float32", "mixed_float16", "mixed_bfloat16")


# ------------------------------------------------------------------------ helpers ----

def file_pattern(data_dir: str, split: str) -> str:
    """Records of a split written by our converters / the synthetic world."""
    return os.path.join(os.fspath(data_dir), f"{split}-*.tfrecord")


def count_records(pattern) -> int:
    """Number of snippets in the files of ``pattern`` (reads them once)."""
    files = pipeline.list_files(pattern)
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(8, len(files)))
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1).numpy())


def records_have_ground_truth(pattern) -> bool:
    """True when the first record carries a ground-truth depth map."""
    files = pipeline.list_files(pattern)
    for raw in tf.data.TFRecordDataset(files[:1]).take(1):
        example = tf.train.Example.FromString(raw.numpy())
        return specs.FEATURE_GT_DEPTH in example.features.feature
    return False


def set_op_determinism(enabled: bool) -> bool:
    """Turns TensorFlow's op determinism on or off; returns the previous state.

    `tf.config.experimental.enable_op_determinism` is process-wide and has no public
    counterpart to read or undo it, so this uses the module behind it (TF 2.9+).
    """
    # pylint: disable-next=import-outside-toplevel
    from tensorflow.python.framework import config as tf_config
    before = bool(tf_config.is_op_determinism_enabled())
    if enabled and not before:
        tf_config.enable_op_determinism()
    elif before and not enabled:
        tf_config.disable_op_determinism()
    return before


def epoch_seed(seed: int, epoch: int) -> int:
    """Data seed of one epoch: a deterministic function of (seed, epoch)."""
    return int((int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2 ** 31 - 1))


def phase_of_epoch(epoch: int, burn_in_epochs: int, estimation_epochs: int = 1) -> Phase:
    """The static step phase of a 0-based epoch (REFERENCE defaults table #11)."""
    use_quantiles, update = apportion.quantile_schedule(epoch, burn_in_epochs, estimation_epochs)
    return Phase(burn_in=not use_quantiles, update_quantiles=bool(update))


def _write_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """model_dir on the chief; a per-worker temporary directory elsewhere (MWMS)."""
    if distribution_lib.is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return os.path.join(model_dir, "workertemp", f"{resolver.task_type}_{resolver.task_id}")


def write_operative_config(model_dir: str) -> str:
    """Writes ``gin.operative_config_str()`` to ``<model_dir>/operative_config.gin``."""
    path = os.path.join(model_dir, OPERATIVE_CONFIG)
    tf.io.gfile.makedirs(model_dir)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(gin.operative_config_str())
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def build_networks(height: int, width: int):
    """The three networks from their gin factories at the training resolution."""
    return (models.build_depth_net(height=height, width=width),
            models.build_pose_net(height=height, width=width),
            models.build_flow_net(height=height, width=width))


class Trainer:
    """Everything `train_and_evaluate` builds, for the loop and for tests.

    Holds the strategy, networks, optimizers, apportionment, the step, the counters and
    the checkpoint. `train_and_evaluate` is a thin driver around it.
    """

    def __init__(self, model_dir: str, train_files, val_files, height: int, width: int,
                 batch_size: int, num_epochs: int, steps_per_epoch: int, burn_in_epochs: int,
                 quantile_estimation_epochs: int, strategy: tf.distribute.Strategy,
                 mixed_precision: Optional[str], jit_compile: bool, steps_per_loop: int,
                 keep_checkpoints: int, seed: int, deterministic_data: bool,
                 run_eagerly: bool, eval_batch_size: int, max_eval_batches: Optional[int]):
        self.model_dir = model_dir
        self.write_dir = _write_dir(model_dir, strategy)
        self.train_files, self.val_files = train_files, val_files
        self.height, self.width = int(height), int(width)
        self.batch_size = int(batch_size)
        self.num_epochs = int(num_epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.burn_in_epochs = int(burn_in_epochs)
        self.quantile_estimation_epochs = int(quantile_estimation_epochs)
        self.strategy = strategy
        self.steps_per_loop = max(1, int(steps_per_loop))
        self.seed = int(seed)
        self.deterministic_data = bool(deterministic_data)
        self.run_eagerly = bool(run_eagerly)
        self.eval_batch_size = int(eval_batch_size)
        self.max_eval_batches = max_eval_batches
        self.is_chief = distribution_lib.is_chief(strategy)
        if self.batch_size % strategy.num_replicas_in_sync:
            raise ValueError(f"batch_size {batch_size} is not divisible by the "
                             f"{strategy.num_replicas_in_sync} replicas")
        if mixed_precision not in MIXED_PRECISION_POLICIES:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_POLICIES}")
        keras.mixed_precision.set_global_policy(mixed_precision or "float32")
        loss_scale = mixed_precision == "mixed_float16"

        with strategy.scope():
            self.depth_net, self.pose_net, self.flow_net = build_networks(self.height, self.width)
            with gin.config_scope("depth_pose"):
                dp_opt = optimizers.make_optimizer(loss_scale=loss_scale, name="adam_depth_pose")
                self.lr_schedule_depth_pose = optimizers.make_learning_rate_schedule(
                    self.steps_per_epoch)
            with gin.config_scope("flow"):
                f_opt = optimizers.make_optimizer(loss_scale=loss_scale, name="adam_flow")
                self.lr_schedule_flow = optimizers.make_learning_rate_schedule(self.steps_per_epoch)
            self.apportionment = configurables.make_apportionment()
            options = configurables.step_options()._replace(jit_compile=bool(jit_compile),
                                                            seed=self.seed)
            self.step = CoopTrainStep(
                self.depth_net, self.pose_net, self.flow_net, dp_opt, f_opt, self.apportionment,
                weights=configurables.loss_weights(), options=options,
                global_batch_size=self.batch_size)
            self.step.build()
            # ORACLE switches read ground truth: the pipeline must deliver it.
            self.needs_ground_truth = bool(self.apportionment.needs_ground_truth
                                           or options.ground_truth_apportionment_inputs)
            self.global_step = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="global_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.best_metric = tf.Variable(np.inf, dtype=tf.float32, trainable=False,
                                           name="best_metric",
                                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.depth_pose_optimizer, self.flow_optimizer = dp_opt, f_opt

        self.checkpoint = tf.train.Checkpoint(
            depth_net=self.depth_net, pose_net=self.pose_net, flow_net=self.flow_net,
            depth_pose_optimizer=dp_opt, flow_optimizer=f_opt,
            global_step=self.global_step, epoch=self.epoch, best_metric=self.best_metric,
            nonfinite_steps=self.step.nonfinite_steps,
            **self.apportionment.checkpoint_items())
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.write_dir, CHECKPOINT_SUBDIR),
            max_to_keep=keep_checkpoints, step_counter=self.global_step)
        self.best_manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.write_dir, BEST_SUBDIR), max_to_keep=1,
            step_counter=self.global_step)
        self._loop_fns: Dict[Phase, object] = {}
        self._diag_fns: Dict[Phase, object] = {}
        self._predict_fn = None

    # ------------------------------------------------------------- checkpoints ----
    def restore(self) -> Optional[str]:
        """Restores the latest checkpoint of ``model_dir`` if there is one (every worker
        restores the chief's checkpoint)."""
        path = tf.train.latest_checkpoint(os.path.join(self.model_dir, CHECKPOINT_SUBDIR))
        if path:
            self.checkpoint.restore(path).assert_existing_objects_matched()
            logging.info("restored %s (step %d)", path, int(self.global_step.numpy()))
        return path

    def save(self, best: bool = False) -> str:
        path = self.manager.save(checkpoint_number=self.global_step)
        if best:
            self.best_manager.save(checkpoint_number=self.global_step)
        return path

    # -------------------------------------------------------------------- data ----
    def train_iterator(self, epoch: int, skip: int):
        """Distributed iterator over epoch ``epoch``'s batches, first ``skip`` skipped."""
        def dataset_fn(input_context):
            ds = pipeline.make_dataset(
                self.train_files, batch_size=self.batch_size, height=self.height,
                width=self.width, training=True, seed=epoch_seed(self.seed, epoch),
                deterministic=self.deterministic_data, input_context=input_context,
                with_ground_truth=self.needs_ground_truth)
            return ds.skip(skip) if skip else ds
        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def eval_dataset(self, with_ground_truth: bool):
        return pipeline.make_dataset(
            self.val_files, batch_size=self.eval_batch_size, height=self.height,
            width=self.width, training=False, with_ground_truth=with_ground_truth,
            deterministic=True)

    # -------------------------------------------------------------- functions ----
    def _one_step(self, iterator, phase: Phase):
        step = self.global_step.read_value()
        optimizers.set_learning_rate(self.depth_pose_optimizer, self.lr_schedule_depth_pose(step))
        optimizers.set_learning_rate(self.flow_optimizer, self.lr_schedule_flow(step))
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        batch = next(iterator)
        per_replica = self.strategy.run(
            lambda b, s: self.step.train_step(b, phase, s), args=(batch, seed))
        out = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
               for k, v in per_replica.items()}
        self.global_step.assign_add(1)
        return out

    def loop_fn(self, phase: Phase):
        """``fn(iterator, num_steps) -> {name: sum over the steps}`` for this phase."""
        if phase in self._loop_fns:
            return self._loop_fns[phase]
        if self.run_eagerly:
            def fn(iterator, num_steps):
                sums = None
                for _ in range(int(num_steps)):
                    out = self._one_step(iterator, phase)
                    sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
                return sums
        else:
            # The step body is traced once (a nested tf.function called inside tf.range);
            # its output structure, known after that trace, initialises the accumulators.
            one_step = tf.function(lambda it: self._one_step(it, phase))

            @tf.function
            def fn(iterator, num_steps):
                spec = one_step.get_concrete_function(iterator).structured_outputs
                sums = {k: tf.zeros_like(v) for k, v in spec.items()}
                for _ in tf.range(num_steps):
                    out = one_step(iterator)
                    sums = {k: sums[k] + out[k] for k in sums}
                return sums
        self._loop_fns[phase] = fn
        return fn

    def diagnostics_fn(self, phase: Phase):
        """``fn(batch) -> (losses, images, histograms)`` without any update (one trace per
        burn-in / CoopNet phase)."""
        phase = Phase(burn_in=phase.burn_in, update_quantiles=False)
        if phase not in self._diag_fns:
            def fn(batch):
                seed = tf.stack([tf.constant(self.seed, tf.int64), self.global_step.read_value()])
                return self.step.diagnostics(batch, phase, seed)
            self._diag_fns[phase] = fn if self.run_eagerly else tf.function(fn)
        return self._diag_fns[phase]

    def predict_disparity(self, images):
        """Scaled disparity `[B, H, W, 1]` (scale 0, inference mode)."""
        if self._predict_fn is None:
            opts = self.step.options

            def fn(x):
                sigmoid = tf.cast(self.depth_net(x, training=False)[0], tf.float32)
                return models.disp_to_depth(sigmoid, opts.min_depth, opts.max_depth)[0]
            self._predict_fn = fn if self.run_eagerly else tf.function(fn)
        return self._predict_fn(images)

    # -------------------------------------------------------------- evaluation ----
    def evaluate(self, has_ground_truth: bool) -> Dict[str, float]:
        """Validation: median-scaled depth metrics with GT, else the photometric loss."""
        ds = self.eval_dataset(has_ground_truth)
        if self.max_eval_batches:
            ds = ds.take(self.max_eval_batches)
        if has_ground_truth:
            gts, disps = [], []
            for batch in ds:
                target = batch[specs.KEY_FRAMES][:, specs.TARGET_INDEX]
                disps.append(self.predict_disparity(target).numpy()[..., 0])
                gts.append(batch[specs.KEY_GT_DEPTH].numpy()[..., 0])
            result = depth_eval.evaluate_depth(np.concatenate(gts), np.concatenate(disps),
                                               protocol="full", median_scaling=True)
            return {k: float(v) for k, v in result.items()
                    if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}
        totals, count = {}, 0
        phase = Phase(burn_in=True, update_quantiles=False)
        for batch in ds:
            losses, _, _ = self.diagnostics_fn(phase)(batch)
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            count += 1
        return {f"val_{k}": v / max(count, 1) for k, v in totals.items()}


def check_oracles(trainer: Trainer) -> None:
    """Refuses an oracle switch on records without ground truth and announces one loudly
    (an oracle run is a research instrument, never a result to report as a method)."""
    if not trainer.needs_ground_truth:
        return
    switches = []
    if trainer.apportionment.needs_ground_truth:
        switches.append(f"make_apportionment.name = {trainer.apportionment.name!r}")
    if trainer.step.options.ground_truth_apportionment_inputs:
        switches.append("oracle.ground_truth_apportionment_inputs = True")
    for split, files in (("train", trainer.train_files), ("val", trainer.val_files)):
        if files and not records_have_ground_truth(files):
            raise ValueError(
                f"{' and '.join(switches)} needs records with ground truth (gt/depth, "
                f"gt/flow, gt/moving_mask: the synthetic world), but the {split} records "
                f"{files!r} have none")
    message = ("ORACLE RUN — uses ground truth in training: " + "; ".join(switches)
               + " (docs/synthetic_benchmark.md)")
    logging.warning(message)
    print(f"[WARNING] {message}", flush=True)


def validation_history(model_dir: str) -> str:
    """One line from the run's ``eval_<step>.json`` files, e.g. ``abs_rel 0.595 (step 0,
    untrained) -> 0.504 (90) -> 0.409 (450); best 0.395 (step 360)``; '' when none."""
    results = []
    for path in tf.io.gfile.glob(os.path.join(model_dir, "eval_*.json")):
        with tf.io.gfile.GFile(path) as f:
            results.append(json.load(f))
    if not results:
        return ""
    key = "abs_rel" if "abs_rel" in results[0] else "val_photo_theta_alpha"
    results = sorted((r for r in results if key in r), key=lambda r: r["step"])
    if not results:
        return ""
    parts = [f"{r[key]:.3f} ({r['step']}{', ' + r['tag'] if r['step'] == 0 else ''})"
             for r in results]
    best = min(results, key=lambda r: r[key])
    return f"{key} " + " -> ".join(parts) + f"; best {best[key]:.3f} (step {best['step']})"


def _scalar_groups(sums: Dict[str, tf.Tensor], num_steps: int):
    groups: Dict[str, Dict[str, float]] = {}
    for key, value in sums.items():
        prefix, _, name = key.partition("/")
        groups.setdefault(prefix, {})[name] = float(value) / num_steps
    return groups


@gin.configurable
def train_and_evaluate(
    model_dir: str = "runs/default",
    data_dir: Optional[str] = None,
    train_files=None,
    val_files=None,
    height: int = 128,
    width: int = 416,
    batch_size: int = 4,
    num_epochs: int = 30,
    steps_per_epoch: Optional[int] = None,
    burn_in_epochs: int = 5,
    quantile_estimation_epochs: int = 1,
    distribution: str = "default",
    mixed_precision: Optional[str] = None,
    jit_compile: bool = False,
    steps_per_loop: int = 20,
    summary_every_steps: int = 100,
    image_every_steps: int = 1000,
    checkpoint_every_steps: int = 1000,
    keep_checkpoints: int = 3,
    eval_batch_size: int = 8,
    max_eval_batches: Optional[int] = None,
    evaluate_before_training: bool = True,
    seed: int = 0,
    deterministic_data: bool = True,
    deterministic_ops: bool = True,
    run_eagerly: bool = False,
    stop_at_step: Optional[int] = None,
    progress: bool = True,
) -> Dict[str, float]:
    """Trains CoopNet and evaluates it after every epoch (paper Sec. 4.4 protocol).

    Args:
      model_dir: checkpoints, summaries and the operative config go here; an existing
        checkpoint is resumed.
      data_dir: directory of ``train-*.tfrecord`` / ``val-*.tfrecord`` records (e.g.
        ``@ensure_synthetic_dataset()``); or give ``train_files`` / ``val_files``.
      train_files, val_files: globs (override ``data_dir``); without validation files the
        per-epoch validation is skipped.
      height, width: training resolution (multiples of 32; paper 128×416 / 192×640).
      batch_size: GLOBAL batch size (paper: 4), divided among the replicas.
      num_epochs: 30 (paper).
      steps_per_epoch: optimizer steps per epoch; None = one pass over the training split
        (REFERENCE defaults table #12).
      burn_in_epochs: 5 (paper); 0 disables the burn-in.
      quantile_estimation_epochs: P² runs during the last this-many burn-in epochs.
      distribution: "default", "mirrored" or "multi_worker" (`training/distribution.py`).
      mixed_precision: None / "float32", "mixed_float16" (dynamic loss scaling) or
        "mixed_bfloat16".
      jit_compile: XLA-compile the forward pass (networks, warps, Φ maps, aux terms).
      steps_per_loop: training steps per `tf.function` call.
      summary_every_steps: scalar summaries cadence (means over the steps since the last).
      image_every_steps: image + histogram summaries cadence (on a fixed validation batch).
      checkpoint_every_steps: checkpoint cadence (also at every epoch end and at the end).
      keep_checkpoints: latest checkpoints kept (the best one is kept separately).
      eval_batch_size: validation batch size.
      max_eval_batches: cap on validation batches (None: the whole split).
      evaluate_before_training: evaluate the untrained networks first (step 0).
      seed: seeds the data order/augmentation per epoch and the per-step randomness.
      deterministic_data: deterministic tf.data (needed for exact resume).
      deterministic_ops: `tf.config.experimental.enable_op_determinism()` while training
        (restored afterwards): two runs, and a resumed and an uninterrupted run, give
        bit-identical weights on CPU (docs/synthetic_benchmark.md, "Determinism").
      run_eagerly: no tf.function (debugging; set by ``--run_eagerly``).
      stop_at_step: stop (after checkpointing) when the global step reaches it — a
        planned interruption; running again resumes.
      progress: show the tqdm progress bar.

    Returns:
      The last validation metrics (plus ``step``, ``epoch``, ``nonfinite_steps``).
    """
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

    strategy = configurables.make_distribution_strategy(distribution)
    keras.utils.set_random_seed(int(seed))   # reproducible initialisation
    if train_files is None:
        if data_dir is None:
            raise ValueError("give train_and_evaluate.data_dir or train_and_evaluate.train_files")
        train_files = file_pattern(data_dir, "train")
    if val_files is None and data_dir is not None:
        candidate = file_pattern(data_dir, "val")
        val_files = candidate if tf.io.gfile.glob(candidate) else None
    if steps_per_epoch is None:
        num_records = count_records(train_files)
        steps_per_epoch = max(1, num_records // batch_size)
        logging.info("%d training snippets -> %d steps per epoch", num_records, steps_per_epoch)
    total_steps = int(num_epochs) * int(steps_per_epoch)

    determinism_before = set_op_determinism(deterministic_ops)
    trainer = Trainer(
        model_dir, train_files, val_files, height, width, batch_size, num_epochs,
        steps_per_epoch, burn_in_epochs, quantile_estimation_epochs, strategy, mixed_precision,
        jit_compile, steps_per_loop, keep_checkpoints, seed, deterministic_data, run_eagerly,
        eval_batch_size, max_eval_batches)
    check_oracles(trainer)
    restored = trainer.restore()
    chief = trainer.is_chief
    writer = tf.summary.create_file_writer(
        os.path.join(trainer.write_dir, SUMMARY_SUBDIR)) if chief else tf.summary.create_noop_writer()
    has_gt = bool(val_files) and records_have_ground_truth(val_files)
    diag_batch = None
    if val_files:
        diag_batch = next(iter(trainer.eval_dataset(trainer.needs_ground_truth).take(1)))
        diag_batch = {k: v[:min(4, batch_size)] for k, v in diag_batch.items()}
    spe = trainer.steps_per_epoch
    step = int(trainer.global_step.numpy())
    metrics: Dict[str, float] = {}

    def log_eval(result: Dict[str, float], at_step: int, tag: str):
        if not chief:
            return
        with writer.as_default():
            summaries.write_scalars({k: v for k, v in result.items()
                                     if k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1")
                                     or k.startswith("val_")}, at_step, prefix="eval")
        with tf.io.gfile.GFile(os.path.join(trainer.write_dir, f"eval_{at_step}.json"), "w") as f:
            json.dump({"step": at_step, "tag": tag, **result}, f, indent=2, sort_keys=True)
        main = {k: round(v, 4) for k, v in result.items()
                if k in ("abs_rel", "rmse", "a1") or k.startswith("val_photo")}
        logging.info("validation (%s, step %d): %s", tag, at_step, main)
        print(f"[eval] {tag} step {at_step}: {main}", flush=True)

    if restored is None and evaluate_before_training and val_files:
        metrics = trainer.evaluate(has_gt)
        log_eval(metrics, 0, "untrained")

    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step",
               disable=not (progress and chief), dynamic_ncols=True)
    wrote_config = False
    last_summary = step
    acc_sums: Dict[str, float] = {}
    acc_steps = 0
    start_time = time.time()
    try:
        while step < total_steps and (stop_at_step is None or step < stop_at_step):
            epoch = step // spe
            offset = step - epoch * spe
            phase = phase_of_epoch(epoch, trainer.burn_in_epochs,
                                   trainer.quantile_estimation_epochs)
            if offset == 0:
                trainer.apportionment.start_epoch()
            trainer.epoch.assign(epoch)
            iterator = trainer.train_iterator(epoch, offset)
            loop_fn = trainer.loop_fn(phase)
            epoch_end = (epoch + 1) * spe
            while step < epoch_end and (stop_at_step is None or step < stop_at_step):
                n = min(trainer.steps_per_loop, epoch_end - step)
                if stop_at_step is not None:
                    n = min(n, stop_at_step - step)
                for cadence in (summary_every_steps, checkpoint_every_steps, image_every_steps):
                    if cadence:
                        n = min(n, cadence - step % cadence)
                t0 = time.time()
                sums = loop_fn(iterator, tf.constant(n, tf.int64))
                sums = {k: float(v) for k, v in sums.items()}
                elapsed = time.time() - t0
                step += n
                bar.update(n)
                for k, v in sums.items():
                    acc_sums[k] = acc_sums.get(k, 0.0) + v
                acc_steps += n
                if not wrote_config and chief:
                    write_operative_config(model_dir)
                    wrote_config = True
                bar.set_postfix(summaries.format_postfix(
                    {k.split("/", 1)[1]: v / n for k, v in sums.items() if k.startswith("losses/")}))
                if chief and summary_every_steps and step - last_summary >= summary_every_steps:
                    with writer.as_default():
                        for prefix, values in _scalar_groups(acc_sums, acc_steps).items():
                            summaries.write_scalars(values, step, prefix=prefix)
                        summaries.write_scalars({
                            "learning_rate_depth_pose": float(optimizers.current_learning_rate(
                                trainer.depth_pose_optimizer)),
                            "learning_rate_flow": float(optimizers.current_learning_rate(
                                trainer.flow_optimizer)),
                            "nonfinite_steps": float(trainer.step.nonfinite_steps.numpy()),
                            "steps_per_second": n / max(elapsed, 1e-9),
                            "epoch": float(epoch),
                            "burn_in": float(phase.burn_in),
                        }, step, prefix="train")
                    last_summary = step
                    acc_sums, acc_steps = {}, 0
                if chief and diag_batch is not None and image_every_steps and \
                        step % image_every_steps == 0:
                    _, images, hists = trainer.diagnostics_fn(phase)(diag_batch)
                    with writer.as_default():
                        summaries.write_images(images, step)
                        summaries.write_histograms(hists, step)
                if step % spe == 0:
                    break
                if checkpoint_every_steps and step % checkpoint_every_steps == 0:
                    trainer.save()
            if step % spe == 0 and step > 0:
                # epoch end: freeze the quantiles, validate, checkpoint.
                trainer.apportionment.end_epoch()
                trainer.epoch.assign(step // spe)
                best = False
                if val_files:
                    metrics = trainer.evaluate(has_gt)
                    key = "abs_rel" if has_gt else "val_photo_theta_alpha"
                    value = metrics.get(key, float("nan"))
                    if math.isfinite(value) and value < float(trainer.best_metric.numpy()):
                        trainer.best_metric.assign(value)
                        best = True
                    log_eval(metrics, step, f"epoch {step // spe}")
                trainer.save(best=best)
            elif stop_at_step is not None and step >= stop_at_step:
                trainer.save()
    finally:
        bar.close()
        writer.flush()
        set_op_determinism(determinism_before)
    if chief:
        logging.info("trained %d steps in %.1f s", step, time.time() - start_time)
        history = validation_history(trainer.write_dir)
        if history:
            print("[eval] history: " + history, flush=True)
    metrics = dict(metrics)
    metrics.update(step=step, epoch=step // spe,
                   nonfinite_steps=int(trainer.step.nonfinite_steps.numpy()))
    return metrics
