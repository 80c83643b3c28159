"""`train_and_evaluate(model_dir=...)`: the paper's training protocol (Sec. 4.4).

`train_and_evaluate` is the gin entry point: it resolves the data, fills a `TrainConfig`
and drives a `Trainer`. The `Trainer` (built like TF-Agents' Learner: a small object around
a config) owns everything else:

* the strategy's scope (``distribution`` = default / mirrored / multi_worker), mixed
  precision, XLA; the method (``method`` = 'coopnet' | 'lee', `factories.make_method`):
  its networks, optimizers (built inside ``strategy.scope()`` before the first step and
  before restoring) and train step — CoopNet's apportionment strategy and its P² layer,
  or Lee et al.'s depth and motion nets;
* data: per epoch, ``make_dataset`` seeded by (seed, epoch) through
  ``strategy.distribute_datasets_from_function``, skipping the batches already consumed
  in that epoch on resume — so a resumed run sees the same batches as an uninterrupted
  one; every other per-step randomness is stateless in (seed, step);
* the protocol, from `schedule.EpochSchedule`: the `Phase` of every step (burn-in, P²
  estimation, a strategy's stages), quantiles frozen at each epoch end and used during
  the next one; learning rate 1e-4 → 1e-5 after epoch 20 by global step;
* ``train_until(step)``: ``steps_per_loop`` steps per `tf.function` call (`tf.range`
  around ``strategy.run``), never crossing an epoch end, a phase change or a cadence;
* ``write_summaries``: TensorBoard scalars (means since the last write), images and
  histograms on a fixed validation batch; the tqdm progress bar;
* ``end_epoch``: freeze the quantiles, validate, checkpoint (the best one by validation
  metric kept apart);
* ``evaluate``: depth AbsRel / RMSE (median-scaled) on the validation split when it has
  ground truth (the synthetic world), else the validation photometric loss.

Directory layout of ``model_dir``: `coopnet_tf.run_layout`.
"""
import json
import math
import os
import sys
import time
from typing import Dict, NamedTuple, Optional

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from coopnet_tf import models, run_layout, specs, summaries
from coopnet_tf.data import pipeline, records
from coopnet_tf.eval import depth as depth_eval
from coopnet_tf.training import determinism
from coopnet_tf.training import distribution as distribution_lib
from coopnet_tf.training import factories, optimizers
from coopnet_tf.training.schedule import EpochSchedule
from coopnet_tf.training.step import Phase

MIXED_PRECISION_POLICIES = (None, "float32", "mixed_float16", "mixed_bfloat16")
SATURATED_KEY = "disparity_saturated"
EVAL_SCALARS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", SATURATED_KEY)
# A depth net whose sigmoid output is within SATURATION of 0 or 1 gets a gradient factor
# σ(1 − σ) below it: that pixel's depth is stuck at max_depth / min_depth. On the
# synthetic validation frames the collapsed from-scratch Lee runs of docs/lee.md had σ
# below 5e-9 on every pixel, healthy ones a smallest σ of 0.01-0.03. Validation warns
# when more than SATURATED_WARNING of the pixels are stuck.
SATURATION = 1e-6
SATURATED_WARNING = 0.5
EVAL_PRINTED = ("abs_rel", "rmse", "a1")
# validation losses of the methods without ground truth (CoopNet's, Lee's)
VALIDATION_LOSS_KEYS = ("val_photo_theta_alpha", "val_photometric")


class TrainingDivergedError(RuntimeError):
    """Too many consecutive training steps had non-finite losses or gradients."""


class TrainConfig(NamedTuple):
    """Everything a `Trainer` needs besides the distribution strategy (see
    `train_and_evaluate` for the meaning of each field)."""
    model_dir: str
    train_files: object
    val_files: object = None
    height: int = 128
    width: int = 416
    batch_size: int = 4
    num_epochs: int = 30
    steps_per_epoch: int = 1
    burn_in_epochs: int = 5
    quantile_estimation_epochs: int = 1
    mixed_precision: Optional[str] = None
    jit_compile: bool = False
    steps_per_loop: int = 20
    summary_every_steps: int = 100
    image_every_steps: int = 1000
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    eval_batch_size: int = 8
    max_eval_batches: Optional[int] = None
    seed: int = 0
    deterministic_data: bool = True
    run_eagerly: bool = False
    progress: bool = True
    max_consecutive_nonfinite_steps: int = 20
    method: str = "coopnet"

    @property
    def total_steps(self) -> int:
        return int(self.num_epochs) * int(self.steps_per_epoch)


# ------------------------------------------------------------------------ helpers ----

def epoch_seed(seed: int, epoch: int) -> int:
    """Data seed of one epoch: a deterministic function of (seed, epoch)."""
    return int((int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2 ** 31 - 1))


def _write_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """model_dir on the chief; a per-worker temporary directory elsewhere (MWMS)."""
    if distribution_lib.is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return os.path.join(model_dir, run_layout.WORKER_TEMP_SUBDIR,
                        f"{resolver.task_type}_{resolver.task_id}")


def write_operative_config(model_dir: str) -> str:
    """Writes ``gin.operative_config_str()`` to ``<model_dir>/operative_config.gin``."""
    path = os.path.join(model_dir, run_layout.OPERATIVE_CONFIG)
    tf.io.gfile.makedirs(model_dir)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(gin.operative_config_str())
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def remove_stale_temporaries(directory: str) -> list:
    """Deletes ``ckpt-*_temp*`` left in a checkpoint directory by a killed (or disk-full)
    save; returns what it removed. A finished checkpoint never has that name."""
    removed = []
    for path in sorted(tf.io.gfile.glob(os.path.join(directory, "ckpt-*_temp*"))):
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
        removed.append(path)
    return removed


def batch_size_warning(train_files, batch_size: int) -> Optional[str]:
    """A warning when the training split holds fewer snippets than one batch (the
    pipeline then repeats snippets inside every batch), else None."""
    num_records = records.count_records(train_files, at_most=batch_size)
    if num_records >= batch_size:
        return None
    return (f"batch_size {batch_size} is larger than the {num_records} training snippets of "
            f"{train_files}: every batch repeats snippets")


class Progress:
    """The progress display: a tqdm bar on a terminal; without one (a log file, ``| cat``)
    one plain line at every epoch end and at most one a minute in between."""

    def __init__(self, total: int, initial: int, enabled: bool, interval: float = 60.0,
                 keys=None):
        self.total, self.n, self.enabled = int(total), int(initial), bool(enabled)
        self.keys = keys
        self.losses: Dict[str, str] = {}
        self.interval, self._last_line, self._start = interval, time.time(), time.time()
        self._start_step = self._printed = self.n
        self.bar = None
        if self.enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                            dynamic_ncols=True)

    def advance(self, num_steps: int, losses: Dict[str, float]) -> None:
        self.n += num_steps
        self.losses = summaries.format_postfix(losses, self.keys)
        if self.bar is not None:
            self.bar.set_postfix(self.losses, refresh=False)
            self.bar.update(num_steps)
        elif self.enabled and time.time() - self._last_line >= self.interval:
            self.line()

    def line(self) -> None:
        """One plain line (no terminal): steps, rate, the main losses."""
        if self.bar is not None or not self.enabled or self.n == self._printed:
            return
        self._printed = self.n
        now = time.time()
        rate = (self.n - self._start_step) / max(now - self._start, 1e-9)
        losses = " ".join(f"{k}={v}" for k, v in self.losses.items())
        print(f"[train] step {self.n}/{self.total} ({rate:.2f} step/s) {losses}".rstrip(),
              file=sys.stderr, flush=True)
        self._last_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Networks, optimizers, apportionment, step, counters, checkpoints and summaries of
    one run, and the protocol: `train_until`, `write_summaries`, `end_epoch`, `evaluate`.
    """

    def __init__(self, config: TrainConfig, strategy: tf.distribute.Strategy):
        self.config = config
        self.strategy = strategy
        self.model_dir = config.model_dir
        self.write_dir = _write_dir(config.model_dir, strategy)
        self.is_chief = distribution_lib.is_chief(strategy)
        if config.batch_size % strategy.num_replicas_in_sync:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                             f"{strategy.num_replicas_in_sync} replicas")
        if config.mixed_precision not in MIXED_PRECISION_POLICIES:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_POLICIES}")
        keras.mixed_precision.set_global_policy(config.mixed_precision or "float32")
        loss_scale = config.mixed_precision == "mixed_float16"
        self.steps_per_loop = max(1, int(config.steps_per_loop))

        with strategy.scope():
            # networks, optimizers, step (factories.CoopNetMethod / LeeMethod)
            self.method = factories.make_method(config.method, config, loss_scale)
            self.step = self.method.step
            self.step.build()
            self.needs_ground_truth = self.method.needs_ground_truth
            self.global_step = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="global_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.best_metric = tf.Variable(np.inf, dtype=tf.float32, trainable=False,
                                           name="best_metric",
                                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.schedule = EpochSchedule(config.steps_per_epoch, config.burn_in_epochs,
                                      config.quantile_estimation_epochs,
                                      stages=self.method.stages)

        self.checkpoint_items = dict(
            global_step=self.global_step, epoch=self.epoch, best_metric=self.best_metric,
            nonfinite_steps=self.step.nonfinite_steps, **self.method.checkpoint_items())
        self.checkpoint = tf.train.Checkpoint(**self.checkpoint_items)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.write_dir, run_layout.CHECKPOINT_SUBDIR),
            max_to_keep=config.keep_checkpoints, step_counter=self.global_step)
        self.best_manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.write_dir, run_layout.BEST_SUBDIR),
            max_to_keep=1, step_counter=self.global_step)
        for directory in (self.manager.directory, self.best_manager.directory):
            for path in remove_stale_temporaries(directory):
                logging.warning("removed %s, left by an interrupted checkpoint save", path)
        self._loop_fns: Dict[Phase, object] = {}
        self._diag_fns: Dict[Phase, object] = {}
        self._predict_fn = None
        self.metrics: Dict[str, float] = {}   # the last validation result
        self._summary_sums: Dict[str, float] = {}
        self._summary_steps: Dict[str, int] = {}
        self._last_summary = 0
        self._wrote_config = False

    def __getattr__(self, name):
        # the method's networks and parts (depth_net; CoopNet: pose_net, flow_net,
        # apportionment, ...; Lee: motion_net) read as the trainer's own attributes
        if name == "method":
            raise AttributeError(name)
        return getattr(self.method, name)

    # ------------------------------------------------------------- checkpoints ----
    def restore(self) -> Optional[str]:
        """Restores the latest checkpoint of ``model_dir`` if there is one (every worker
        restores the chief's checkpoint)."""
        path = tf.train.latest_checkpoint(
            os.path.join(self.model_dir, run_layout.CHECKPOINT_SUBDIR))
        if path:
            self._restore_from(path)
            logging.info("restored %s (step %d)", path, int(self.global_step.numpy()))
        self._last_summary = int(self.global_step.numpy())
        return path

    def _restore_from(self, path: str) -> None:
        """Every item of the checkpoint must match, except the method's
        `burn_in_untouched_items` in a checkpoint of the burn-in that lacks them (a shared
        burn-in trained by another strategy): those keep their initialisation."""
        saved = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(path)}
        fresh = [k for k in self.method.burn_in_untouched_items() if k not in saved]
        if not fresh:
            self.checkpoint.restore(path).assert_existing_objects_matched()
            return
        step = int(tf.train.load_checkpoint(path).get_tensor(
            "global_step/.ATTRIBUTES/VARIABLE_VALUE"))
        if step > self.schedule.burn_in_steps:
            raise ValueError(
                f"{path}: has no {fresh} but is at step {step}, after the burn-in "
                f"({self.schedule.burn_in_steps} steps): it was written by a run of another "
                "method or strategy; resume from a burn-in checkpoint or a run of this one")
        items = {k: v for k, v in self.checkpoint_items.items() if k not in fresh}
        tf.train.Checkpoint(**items).restore(path).assert_existing_objects_matched()
        logging.info("%s: a burn-in checkpoint without %s; they start from their "
                     "initialisation", path, fresh)

    def save(self, best: bool = False) -> str:
        path = self.manager.save(checkpoint_number=self.global_step)
        if best:
            self.best_manager.save(checkpoint_number=self.global_step)
        if not self.is_chief:
            # every worker takes part in a save; only the chief's copy is kept
            tf.io.gfile.rmtree(self.write_dir)
        return path

    # -------------------------------------------------------------------- data ----
    def train_iterator(self, epoch: int, skip: int):
        """Distributed iterator over epoch ``epoch``'s batches, first ``skip`` skipped."""
        cfg = self.config

        def dataset_fn(input_context):
            ds = pipeline.make_dataset(
                cfg.train_files, batch_size=cfg.batch_size, height=cfg.height,
                width=cfg.width, training=True, seed=epoch_seed(cfg.seed, epoch),
                deterministic=cfg.deterministic_data, input_context=input_context,
                with_ground_truth=self.needs_ground_truth)
            return ds.skip(skip) if skip else ds
        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def eval_dataset(self, with_ground_truth: bool):
        cfg = self.config
        return pipeline.make_dataset(
            cfg.val_files, batch_size=cfg.eval_batch_size, height=cfg.height,
            width=cfg.width, training=False, with_ground_truth=with_ground_truth,
            deterministic=True)

    def prepare_outputs(self) -> None:
        """Summary writer, whether validation has ground truth, the image batch."""
        cfg = self.config
        self.writer = (tf.summary.create_file_writer(
            os.path.join(self.write_dir, run_layout.SUMMARY_SUBDIR)) if self.is_chief
            else tf.summary.create_noop_writer())
        self.has_ground_truth = bool(cfg.val_files) and records.has_ground_truth(cfg.val_files)
        self.diag_batch = None
        if cfg.val_files:
            # with ground truth when the records have it (the GT moving mask image beside
            # Competitive Collaboration's m_s)
            with pipeline.naming_bad_records(cfg.val_files, self.has_ground_truth):
                batch = next(iter(self.eval_dataset(self.has_ground_truth).take(1)))
            self.diag_batch = {k: v[:min(4, cfg.batch_size)] for k, v in batch.items()}

    # -------------------------------------------------------------- functions ----
    def _one_step(self, iterator, phase: Phase):
        step = self.global_step.read_value()
        for optimizer, schedule in self.method.optimizers.values():
            optimizers.set_learning_rate(optimizer, schedule(step))
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), step])
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
        if self.config.run_eagerly:
            def fn(iterator, num_steps):
                sums = None
                for _ in range(int(num_steps)):
                    out = self._one_step(iterator, phase)
                    sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
                return sums
        else:
            # The step body is traced once (a nested tf.function called inside tf.range);
            # its output structure, known after that trace, initialises the accumulators.
            # No AutoGraph inside the step (its tensor branches are explicit tf.cond /
            # tf.where): half the tracing time (docs/performance.md, benchmarks/trace_time.py).
            one_step = tf.function(lambda it: self._one_step(it, phase), autograph=False)

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
        phase = phase._replace(update_quantiles=False)
        if phase not in self._diag_fns:
            def fn(batch):
                seed = tf.stack([tf.constant(self.config.seed, tf.int64),
                                 self.global_step.read_value()])
                return self.step.diagnostics(batch, phase, seed)
            self._diag_fns[phase] = fn if self.config.run_eagerly else tf.function(
                fn, autograph=False)
        return self._diag_fns[phase]

    def predict_sigmoid(self, images):
        """The depth net's sigmoid output `[B, H, W, 1]` (scale 0, inference mode)."""
        if self._predict_fn is None:
            def fn(x):
                return tf.cast(self.depth_net(x, training=False)[0], tf.float32)
            self._predict_fn = fn if self.config.run_eagerly else tf.function(
                fn, autograph=False)
        return self._predict_fn(images)

    def _scaled_disparity(self, sigmoid):
        opts = self.step.options
        return models.disp_to_depth(sigmoid, opts.min_depth, opts.max_depth)[0]

    # ---------------------------------------------------------------- training ----
    def _chunk(self, step: int, stop: int) -> int:
        """Steps of the next `tf.function` call: within the phase, the stop and every
        cadence."""
        cfg = self.config
        n = min(self.steps_per_loop, self.schedule.next_change(step) - step, stop - step)
        for cadence in (cfg.summary_every_steps, cfg.checkpoint_every_steps,
                        cfg.image_every_steps):
            if cadence:
                n = min(n, cadence - step % cadence)
        return n

    def train_until(self, stop_step: int) -> int:
        """Trains until the global step reaches ``min(stop_step, total steps)``: summaries,
        checkpoints and `end_epoch` on their cadences. Returns the global step."""
        cfg = self.config
        spe = cfg.steps_per_epoch
        stop = min(int(stop_step), cfg.total_steps)
        step = int(self.global_step.numpy())
        bar = Progress(cfg.total_steps, step, cfg.progress and self.is_chief,
                       keys=self.method.progress_keys)
        try:
            while step < stop:
                epoch, offset = divmod(step, spe)
                if offset == 0:
                    self.method.start_epoch()
                self.epoch.assign(epoch)
                iterator = self.train_iterator(epoch, offset)
                epoch_end = min((epoch + 1) * spe, stop)
                while step < epoch_end:
                    phase = self.schedule.phase(step)
                    n = self._chunk(step, epoch_end)
                    t0 = time.time()
                    skipped_before = int(self.step.nonfinite_steps.numpy())
                    with pipeline.naming_bad_records(self.config.train_files):
                        sums = self.loop_fn(phase)(iterator, tf.constant(n, tf.int64))
                    sums = {k: float(v) for k, v in sums.items()}
                    elapsed = time.time() - t0
                    step += n
                    self._check_nonfinite(step, n, skipped_before)
                    bar.advance(n, {k.split("/", 1)[1]: v / n for k, v in sums.items()
                                    if k.startswith("losses/")})
                    if not self._wrote_config and self.is_chief:
                        write_operative_config(cfg.model_dir)
                        self._wrote_config = True
                    self.write_summaries(step, sums, n, elapsed, phase)
                    if step % spe == 0:
                        break
                    if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                        self.save()
                if step % spe == 0 and step > 0:
                    bar.line()
                    self.end_epoch()
                elif step >= stop:
                    self.save()
        finally:
            bar.close()
            self.writer.flush()
        return step

    def _check_nonfinite(self, step: int, num_steps: int, skipped_before: int) -> None:
        """Warns when steps of the last call were skipped; raises `TrainingDivergedError`
        after ``max_consecutive_nonfinite_steps`` skipped steps in a row."""
        total = int(self.step.nonfinite_steps.numpy())
        if total == skipped_before:
            return
        in_a_row = int(self.step.consecutive_nonfinite_steps.numpy())
        limit = self.config.max_consecutive_nonfinite_steps
        logging.warning(
            "step %d: %d of the last %d steps skipped (non-finite loss or gradients; %d in a "
            "row, %d in all)%s", step, total - skipped_before, num_steps, in_a_row, total,
            f"; the run stops after {limit} in a row" if limit else "")
        if limit and in_a_row >= limit:
            raise TrainingDivergedError(
                f"training diverged: the last {in_a_row} steps (up to step {step}) had "
                f"non-finite losses or gradients and were skipped "
                f"(train_and_evaluate.max_consecutive_nonfinite_steps = {limit}). The weights "
                f"are those of step {step - in_a_row}; the latest checkpoint is "
                f"{self.manager.latest_checkpoint}. Lower the learning rate or clip the "
                f"gradients (step_options.gradient_clip_norm).")

    def write_summaries(self, step: int, sums: Dict[str, float], num_steps: int,
                        elapsed: float, phase: Phase) -> None:
        """Accumulates a call's loss sums; writes their means (plus learning rates,
        skipped steps, throughput) every ``summary_every_steps``, and images and
        histograms of the fixed validation batch every ``image_every_steps``."""
        cfg = self.config
        for k, v in sums.items():
            if not self.method.keep_scalar(k):
                continue     # e.g. no frozen quantiles yet (burn-in): nothing to plot
            self._summary_sums[k] = self._summary_sums.get(k, 0.0) + v
            self._summary_steps[k] = self._summary_steps.get(k, 0) + num_steps
        if not self.is_chief:
            return
        every = cfg.summary_every_steps
        if every and step - self._last_summary >= every:
            with self.writer.as_default():
                for prefix, values in _scalar_groups(self._summary_sums,
                                                     self._summary_steps).items():
                    summaries.write_scalars(values, step, prefix=prefix)
                summaries.write_scalars({
                    **{f"learning_rate_{name}": float(optimizers.current_learning_rate(opt))
                       for name, (opt, _) in self.method.optimizers.items()},
                    **{f"loss_scale_{name}": optimizers.current_loss_scale(opt)
                       for name, (opt, _) in self.method.optimizers.items()
                       if optimizers.current_loss_scale(opt) is not None},
                    "nonfinite_steps": float(self.step.nonfinite_steps.numpy()),
                    "steps_per_second": num_steps / max(elapsed, 1e-9),
                    "epoch": float((step - 1) // cfg.steps_per_epoch),
                    "burn_in": float(phase.burn_in),
                }, step, prefix="train")
            self._last_summary = step
            self._summary_sums, self._summary_steps = {}, {}
        if self.diag_batch is not None and cfg.image_every_steps and \
                step % cfg.image_every_steps == 0:
            _, images, hists = self.diagnostics_fn(phase)(self.diag_batch)
            with self.writer.as_default():
                summaries.write_images(images, step, kinds=self.method.image_kinds)
                summaries.write_histograms(hists, step)

    def end_epoch(self) -> None:
        """Epoch end: freeze the quantiles, validate, checkpoint (and keep it as the best
        when the validation metric improved)."""
        step = int(self.global_step.numpy())
        self.method.end_epoch()
        self.epoch.assign(step // self.config.steps_per_epoch)
        best = False
        if self.config.val_files:
            self.metrics = self.evaluate()
            best = self._record_best(self.metrics.get(self._validation_key(), float("nan")))
            self.log_eval(self.metrics, step, f"epoch {step // self.config.steps_per_epoch}")
        self.save(best=best)

    def _record_best(self, value: float) -> bool:
        """True (and the best metric updated) when ``value`` is finite and beats it."""
        if math.isfinite(value) and value < float(self.best_metric.numpy()):
            self.best_metric.assign(value)
            return True
        return False

    def _validation_key(self) -> str:
        return "abs_rel" if self.has_ground_truth else self.method.validation_key

    # -------------------------------------------------------------- evaluation ----
    def evaluate_untrained(self) -> Dict[str, float]:
        """Validates the untrained networks (step 0); their checkpoint is the first best,
        so that ``best/`` and the summary agree when no epoch improves on them."""
        self.metrics = self.evaluate()
        self.log_eval(self.metrics, 0, "untrained")
        if self._record_best(self.metrics.get(self._validation_key(), float("nan"))):
            self.best_manager.save(checkpoint_number=self.global_step)
            if not self.is_chief:
                tf.io.gfile.rmtree(self.write_dir)
        return self.metrics

    def evaluate(self) -> Dict[str, float]:
        """Validation: median-scaled depth metrics with GT, else the photometric loss."""
        with pipeline.naming_bad_records(self.config.val_files, self.has_ground_truth):
            return self._evaluate()

    def _evaluate(self) -> Dict[str, float]:
        ds = self.eval_dataset(self.has_ground_truth)
        if self.config.max_eval_batches:
            ds = ds.take(self.config.max_eval_batches)
        stuck = []        # per validation image: its share of saturated pixels

        def predict(batch):
            sigmoid = self.predict_sigmoid(batch[specs.KEY_FRAMES][:, specs.TARGET_INDEX])
            saturated = (sigmoid < SATURATION) | (sigmoid > 1.0 - SATURATION)
            stuck.extend(np.mean(saturated.numpy(), axis=(1, 2, 3)).tolist())
            return sigmoid

        if self.has_ground_truth:
            gts, disps = [], []
            for batch in ds:
                disps.append(self._scaled_disparity(predict(batch)).numpy()[..., 0])
                gts.append(batch[specs.KEY_GT_DEPTH].numpy()[..., 0])
            result = depth_eval.evaluate_depth(np.concatenate(gts), np.concatenate(disps),
                                               protocol="full", median_scaling=True)
            result = {k: float(v) for k, v in result.items()
                      if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}
        else:
            totals, count = {}, 0
            # the phase of the last step trained (a method may define its loss per phase)
            last = max(int(self.global_step.numpy()) - 1, 0)
            phase = self.method.validation_phase(self.schedule.phase(last))
            for batch in ds:
                losses, _, _ = self.diagnostics_fn(phase)(batch)
                predict(batch)
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                count += 1
            result = {f"val_{k}": v / max(count, 1) for k, v in totals.items()}
        result[SATURATED_KEY] = float(np.mean(stuck)) if stuck else 0.0
        return result

    def log_eval(self, result: Dict[str, float], at_step: int, tag: str) -> None:
        """Validation result -> TensorBoard ``eval/``, ``eval_<step>.json``, one line."""
        if not self.is_chief:
            return
        with self.writer.as_default():
            summaries.write_scalars({k: v for k, v in result.items()
                                     if k in EVAL_SCALARS or k.startswith("val_")},
                                    at_step, prefix="eval")
        with tf.io.gfile.GFile(run_layout.eval_json(self.write_dir, at_step), "w") as f:
            json.dump({"step": at_step, "tag": tag, **result}, f, indent=2, sort_keys=True)
        main = {k: round(v, 4) for k, v in result.items()
                if k in EVAL_PRINTED or k.startswith("val_photo")}
        logging.info("validation (%s, step %d): %s", tag, at_step, main)
        print(f"[eval] {tag} step {at_step}: {main}", flush=True)
        saturated = result.get(SATURATED_KEY, 0.0)
        if saturated > SATURATED_WARNING:
            message = (
                f"step {at_step}: the depth net's disparity is saturated on "
                f"{100 * saturated:.0f} % of the validation pixels (sigmoid within "
                f"{SATURATION:g} of 0 or 1: depth stuck at max_depth / min_depth, no "
                "gradient back): a collapsed run; see docs/training.md \"Troubleshooting\"")
            logging.warning(message)
            print(f"[WARNING] {message}", flush=True)


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
    for split, files in (("train", trainer.config.train_files),
                         ("val", trainer.config.val_files)):
        if files and not records.has_ground_truth(files):
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
    for path in tf.io.gfile.glob(os.path.join(model_dir, run_layout.EVAL_JSON_GLOB)):
        with tf.io.gfile.GFile(path) as f:
            results.append(json.load(f))
    if not results:
        return ""
    key = "abs_rel" if "abs_rel" in results[0] else next(
        (k for k in VALIDATION_LOSS_KEYS if k in results[0]), VALIDATION_LOSS_KEYS[0])
    results = sorted((r for r in results if key in r), key=lambda r: r["step"])
    if not results:
        return ""
    parts = [f"{r[key]:.3f} ({r['step']}{', ' + r['tag'] if r['step'] == 0 else ''})"
             for r in results]
    finite = [r for r in results if r[key] is not None and math.isfinite(r[key])]
    if not finite:
        return f"{key} " + " -> ".join(parts) + "; best: none (no finite validation)"
    best = min(finite, key=lambda r: r[key])
    note = ("; no epoch improved on the untrained network"
            if best["step"] == 0 and len(results) > 1 else "")
    return (f"{key} " + " -> ".join(parts) + f"; best {best[key]:.3f} (step {best['step']})"
            + note)


def _scalar_groups(sums: Dict[str, float], num_steps: Dict[str, int]):
    """{prefix: {name: mean}} of ``prefix/name`` sums over their steps."""
    groups: Dict[str, Dict[str, float]] = {}
    for key, value in sums.items():
        prefix, _, name = key.partition("/")
        groups.setdefault(prefix, {})[name] = float(value) / num_steps[key]
    return groups


def resolve_files(data_dir, train_files, val_files):
    """(train pattern, validation pattern or None) from ``data_dir`` or explicit globs."""
    if train_files is None:
        if data_dir is None:
            raise ValueError("give train_and_evaluate.data_dir or train_and_evaluate.train_files")
        train_files = records.file_pattern(data_dir, "train")
    if val_files is None and data_dir is not None:
        candidate = records.file_pattern(data_dir, "val")
        val_files = candidate if tf.io.gfile.glob(candidate) else None
    return train_files, val_files


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
    max_consecutive_nonfinite_steps: int = 20,
    method: str = "coopnet",
) -> Dict[str, float]:
    """Trains CoopNet (or another method) and evaluates it after every epoch (paper Sec.
    4.4 protocol).

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
        (docs/decisions.md D12).
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
      deterministic_ops: deterministic kernels (`enable_op_determinism`) and no Grappler
        memory optimizer while training (`training.determinism`; restored afterwards):
        two runs, and a resumed and an uninterrupted run, give bit-identical weights on
        CPU (docs/synthetic_benchmark.md, "Determinism").
      run_eagerly: no tf.function (debugging; set by ``--run_eagerly``).
      stop_at_step: stop (after checkpointing) when the global step reaches it — a
        planned interruption; running again resumes.
      progress: show the tqdm progress bar.
      max_consecutive_nonfinite_steps: stop with `TrainingDivergedError` after this many
        skipped (non-finite) steps in a row; 0 never stops. Skipped steps are warned about.
      method: 'coopnet' (depth, pose and flow nets with the configured apportionment,
        Competitive Collaboration included) or 'lee' (Lee et al., ICCV 2021: depth and
        motion nets, the three phases of their Table 1; docs/lee.md).

    Returns:
      The last validation metrics (plus ``step``, ``epoch``, ``nonfinite_steps``).
    """
    strategy = factories.make_distribution_strategy(distribution)
    keras.utils.set_random_seed(int(seed))   # reproducible initialisation
    train_files, val_files = resolve_files(data_dir, train_files, val_files)
    if steps_per_epoch is None:
        num_records = records.count_records(train_files)
        steps_per_epoch = max(1, num_records // batch_size)
        logging.info("%d training snippets -> %d steps per epoch", num_records, steps_per_epoch)
    config = TrainConfig(
        model_dir=model_dir, train_files=train_files, val_files=val_files, height=int(height),
        width=int(width), batch_size=int(batch_size), num_epochs=int(num_epochs),
        steps_per_epoch=int(steps_per_epoch), burn_in_epochs=int(burn_in_epochs),
        quantile_estimation_epochs=int(quantile_estimation_epochs),
        mixed_precision=mixed_precision, jit_compile=bool(jit_compile),
        steps_per_loop=int(steps_per_loop), summary_every_steps=summary_every_steps,
        image_every_steps=image_every_steps, checkpoint_every_steps=checkpoint_every_steps,
        keep_checkpoints=keep_checkpoints, eval_batch_size=int(eval_batch_size),
        max_eval_batches=max_eval_batches, seed=int(seed),
        deterministic_data=bool(deterministic_data), run_eagerly=bool(run_eagerly),
        progress=bool(progress),
        max_consecutive_nonfinite_steps=int(max_consecutive_nonfinite_steps),
        method=str(method))
    warning = batch_size_warning(train_files, config.batch_size)
    if warning:
        logging.warning(warning)

    determinism_before = determinism.set_op_determinism(deterministic_ops)
    trainer = Trainer(config, strategy)
    check_oracles(trainer)
    restored = trainer.restore()
    trainer.prepare_outputs()
    if restored is None and evaluate_before_training and val_files:
        trainer.evaluate_untrained()
    start_time = time.time()
    try:
        step = trainer.train_until(config.total_steps if stop_at_step is None else stop_at_step)
    finally:
        determinism.restore(determinism_before)
    if trainer.is_chief:
        logging.info("trained %d steps in %.1f s", step, time.time() - start_time)
        history = validation_history(trainer.write_dir)
        if history:
            print("[eval] history: " + history, flush=True)
    return dict(trainer.metrics, step=step, epoch=step // config.steps_per_epoch,
                nonfinite_steps=int(trainer.step.nonfinite_steps.numpy()))
