"""Smoke test of the benchmark scripts' core functions at a tiny setting (not a benchmark).

Runs `benchmarks/reproduce_synthetic.py` (coopnet_gt_inputs, one seed, three eager steps, a
tiny world) and `benchmarks/throughput.py` (eager mode, 64x64, batch 1) end to end with
ResNet10 encoders (conftest.TINY_ENCODERS) and checks the JSON they write. The numbers
are meaningless here.
"""
import dataclasses
import json
import os
import pathlib
import sys

import numpy as np
import pytest

import conftest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def test_benchmarks_use_only_existing_library_names():
    """The benchmarks this suite does not run (step profile, device suite, ...) call
    library functions through imported modules; a refactor that moves a function must not
    leave them pointing at nothing (step_profile.py called apportion.rigid_photometric_loss
    after it had moved to losses/photometric.py, and failed after minutes of work)."""
    import ast
    import importlib
    missing, checked = [], 0
    for path in sorted((REPO_ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {}   # local name -> coopnet_tf module imported under it
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("coopnet_tf"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    try:
                        modules[alias.asname or alias.name] = importlib.import_module(full)
                    except ImportError:
                        pass          # a function or class, not a module
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules):
                checked += 1
                if not hasattr(modules[node.value.id], node.attr):
                    missing.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert checked > 50
    assert not missing, missing


def test_common_helpers(tmp_path):
    from benchmarks import common
    ms = common.mean_spread([1.0, 3.0, None, float("nan")])
    assert ms["mean"] == 2.0 and ms["half_range"] == 1.0 and ms["n"] == 2
    assert common.fmt_mean_spread(ms) == "2 ± 1"
    assert common.mean_spread([])["mean"] is None
    table = common.markdown_table(["a", "b"], [["x", 0.5], ["y", None]])
    assert table.splitlines()[1] == "|---|---|" and "n/a" in table
    meta = common.run_metadata(["prog", "--flag"])
    for key in ("date_utc", "command", "machine", "versions", "load_average_start"):
        assert key in meta
    path = common.write_json(tmp_path / "x.json", {"nan": float("nan"), "v": [1, 2]})
    assert json.loads(pathlib.Path(path).read_text()) == {"nan": None, "v": [1, 2]}


def test_reproduce_synthetic_tiny(tmp_path):
    """One GT-input coopnet arm end to end (the costliest path: the burn-in stopped before
    its estimation epoch, copied, resumed with the ground-truth-flow Δ); the scheduling of
    several arms is tested with a stand-in trainer below, the tables with synthetic runs."""
    from benchmarks import reproduce_synthetic as rs
    methods = ("coopnet_gt_inputs",)
    cfg = rs.Config(
        output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
        methods=methods, seeds=(0,), height=64, width=64,
        num_epochs=3, steps_per_epoch=1, burn_in_epochs=2, lr_boundary_epoch=2, batch_size=1,
        num_sequences=1, num_val_sequences=1, num_test_sequences=1, frames_per_sequence=6,
        num_objects=4, run_eagerly=True, plot=True, share_burn_in=True,
        extra_bindings=conftest.TINY_ENCODERS + (
            "train_and_evaluate.max_eval_batches = 1",
            "train_and_evaluate.evaluate_before_training = False"))
    payload = rs.run(cfg, argv=["reproduce_synthetic.py", "--smoke"])
    data = json.loads((tmp_path / "out" / "reproduce_synthetic.json").read_text())
    md = (tmp_path / "out" / "reproduce_synthetic.md").read_text()
    assert (tmp_path / "out" / "reproduce_synthetic_delta_density.png").is_file()
    for key in ("config", "dataset", "protocol", "per_run", "summary", "metadata",
                "timing_seconds"):
        assert key in data
    for key in ("date_utc", "command", "machine", "versions", "load_average_end"):
        assert key in data["metadata"]
    # shared burn-in: the GT-input coopnet arm resumed before the P² estimation epoch,
    # and the burn-in stopped there (no arm needs its end)
    runs = data["per_run"]
    run = runs["coopnet_gt_inputs/seed0"]
    assert run["training"]["resumed_from"].endswith("_burn_in_pre_estimation")
    assert rs._checkpoint_step(str(tmp_path / "out" / "runs" / "seed0" / "_burn_in")) == 1
    operative = (tmp_path / "out" / "runs" / "seed0" / "coopnet_gt_inputs" /
                 "operative_config.gin").read_text()
    assert "oracle.ground_truth_apportionment_inputs = True" in operative
    for subset in ("all", "static", "moving"):
        assert set(run["depth"][subset]) >= {"abs_rel", "rmse", "pixels"}
    assert set(run["depth_static_scale"]["static"]) >= {"abs_rel", "log_rmse", "a1"}
    assert "moving_bias" in run["depth_static_scale"]
    assert {"ate5_mean", "ate3_mean", "ate_chained_mean"} <= set(run["pose"])
    assert {"epe_static", "epe_moving", "epe_zero_moving", "epe_all"} <= set(run["flow"])
    assert "V_testq" in run["v"] and "precision_static" in run["v"]["V_testq"]
    assert "V_frozen" in run["v"]          # quantiles frozen from the GT-flow Δ
    assert run["v"]["inputs"] == "ground-truth flow"
    assert "AbsRel moving" in data["summary"]["coopnet_gt_inputs"]
    assert "trivial (learned nothing)" in data["summary"]
    assert "coopnet_gt_inputs" in md
    assert payload["per_run"].keys() == data["per_run"].keys()
    assert (tmp_path / "out" / "reproduce_synthetic_motion_masks.png").is_file()
    assert data["mask_plot"].endswith("reproduce_synthetic_motion_masks.png")
    # re-evaluating reuses the stored evaluation (nothing changed): same numbers and tables
    stored = list((tmp_path / "out" / "runs" / "seed0" / "coopnet_gt_inputs" /
                   "evaluation").glob("coopnet_gt_inputs-*.json"))
    assert len(stored) == 1

    def must_not_evaluate(*args):
        raise AssertionError("evaluated again although nothing changed")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rs, "evaluate_run", must_not_evaluate)
        rs.run(dataclasses.replace(cfg, eval_only=True, plot=False),
               argv=["reproduce_synthetic.py"])
    again = json.loads((tmp_path / "out" / "reproduce_synthetic.json").read_text())
    assert again["per_run"] == data["per_run"]
    assert again["summary"] == data["summary"]
    md_again = (tmp_path / "out" / "reproduce_synthetic.md").read_text()
    assert md_again.split("**static depth**")[1] == md.split("**static depth**")[1]


def test_evaluation_key_changes_with_what_the_evaluation_measures(tmp_path):
    """A stored evaluation is reused only for the same checkpoint (its index bytes, or a
    newer checkpoint), operative config, method and settings."""
    from benchmarks import reproduce_synthetic as rs
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')
    (ckpt / "ckpt-5.index").write_bytes(b"index of step 5")
    (run_dir / "operative_config.gin").write_text("a.b = 1\n")
    test_file = tmp_path / "test-0.tfrecord"
    test_file.write_bytes(b"records")
    cfg = rs.Config(output_dir=str(tmp_path))

    def key(method="coopnet", **changes):
        return rs.evaluation_key(str(run_dir), method, str(tmp_path / "test-*.tfrecord"),
                                 dataclasses.replace(cfg, **changes))

    first = key()
    assert key() == first
    assert key("glnet_min") != first
    assert key(max_test_snippets=7) != first and key(height=cfg.height * 2) != first
    (run_dir / "operative_config.gin").write_text("a.b = 2\n")
    changed_config = key()
    assert changed_config != first
    (ckpt / "ckpt-5.index").write_bytes(b"index of step 5, other weights")
    changed_weights = key()
    assert changed_weights not in (first, changed_config)
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckpt-6"\n')
    (ckpt / "ckpt-6.index").write_bytes(b"index of step 5, other weights")
    newer = key()
    assert newer != changed_weights          # same bytes, but a newer checkpoint
    test_file.write_bytes(b"more records")
    assert key() not in (newer, changed_weights, changed_config, first)


def test_motion_masks_use_each_arms_own_inputs(tmp_path):
    """V of a GT-input arm comes from the GT-flow Δ (the inputs it trained with): there it
    is exactly the static pixels, while the learned-flow Δ (noise here) is not; the figure
    takes each sequence's most-moving snippet."""
    from benchmarks import reproduce_synthetic as rs
    rng = np.random.default_rng(0)
    n, h, w = 6, 8, 12
    moving = rng.random((n, 2, h, w)) < 0.1
    arr = {"moving": moving, "non_occ": np.ones((n, 2, h, w), bool),
           "delta_gt": np.where(moving, 5.0, 0.0), "dflow_gt": np.zeros((n, 2, h, w, 2)),
           "delta": rng.normal(size=(n, 2, h, w)), "dflow": rng.normal(size=(n, 2, h, w, 2)),
           "cc_joint": (~moving[:, 1]).astype(np.float32),
           "seq": np.array([b"a"] * 3 + [b"b"] * 3)}
    frozen = {"eta": (-0.1, 0.1), "zeta_x": (-1.0, 1.0), "zeta_y": (-1.0, 1.0)}
    gt_sets = rs.motion_mask_sets(arr, frozen, (0.3, 0.3), "coopnet_gt_inputs")
    np.testing.assert_array_equal(gt_sets["V_testq"], ~moving[:, 1])
    np.testing.assert_array_equal(gt_sets["V_frozen"], ~moving[:, 1])
    assert gt_sets["joint"].dtype == bool
    learned = rs.motion_mask_sets(arr, frozen, (0.3, 0.3), "coopnet")
    assert not np.array_equal(learned["V_frozen"], ~moving[:, 1])
    iou = rs.motion_iou_metrics(gt_sets, moving)
    assert iou["V_frozen"]["iou_moving"] == 1.0 and iou["joint"]["iou_mean"] == 1.0
    assert rs.motion_iou_metrics(learned, moving)["V_frozen"]["iou_moving"] < 0.5
    assert [rs.shown_mask_key(m) for m in ("cc", "coopnet_no_vzeta", "glnet_min")] == \
        ["joint", "V_frozen", None]
    fraction = moving[:, 1].mean(axis=(1, 2))
    picks = rs.mask_examples(arr, count=3)
    assert list(picks) == [int(np.argmax(fraction[:3])), 3 + int(np.argmax(fraction[3:]))]
    path = rs.plot_motion_masks(str(tmp_path / "m.png"), rng.random((2, h, w, 3)),
                                moving[picks, 1], {"cc: not joint": gt_sets["joint"][picks]})
    assert os.path.getsize(path) > 0


def test_an_interrupted_arm_resumes_from_its_own_checkpoint(tmp_path, monkeypatch):
    """The shared burn-in is copied into an arm only when the arm has no checkpoint at or
    past the burn-in's: a benchmark restarted mid-arm keeps the arm's progress."""
    import tensorflow as tf
    from benchmarks import reproduce_synthetic as rs

    def run(name, step, marker):
        value = tf.Variable(float(marker))
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=value),
                                             str(tmp_path / name / "checkpoints"), 1)
        manager.save(checkpoint_number=step)
        return str(tmp_path / name)

    def marker(model_dir):
        path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        return float(tf.train.load_checkpoint(path).get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE"))

    burn_in = run("burn_in", 270, 1.0)
    assert rs._checkpoint_step(str(tmp_path / "absent")) == -1
    assert rs._start_from(burn_in, str(tmp_path / "new"))              # no run yet: copy
    assert rs._checkpoint_step(str(tmp_path / "new")) == 270 and marker(str(tmp_path / "new")) == 1
    ahead = run("ahead", 360, 2.0)
    assert not rs._start_from(burn_in, ahead)                           # its own progress kept
    assert rs._checkpoint_step(ahead) == 360 and marker(ahead) == 2
    behind = run("behind", 90, 3.0)
    assert rs._start_from(burn_in, behind)                              # older: replaced
    assert rs._checkpoint_step(behind) == 270 and marker(behind) == 1
    assert not list(tmp_path.glob("*.partial"))
    # --eval_only refuses an arm that has not finished training
    run("seed0/coopnet", 1, 4.0)
    cfg = rs.Config(output_dir=str(tmp_path / "out"), model_root=str(tmp_path),
                    methods=("coopnet",), seeds=(0,), num_epochs=3, steps_per_epoch=1,
                    burn_in_epochs=2, eval_only=True)
    monkeypatch.setattr(rs, "ensure_dataset", lambda *a, **k: str(tmp_path / "world"))
    with pytest.raises(ValueError, match=r"seed0/coopnet: not trained to step 3 \(latest "
                                         r"checkpoint: 1\)"):
        rs.run(cfg, argv=["reproduce_synthetic.py"])


def _fake_checkpoint(model_dir, step):
    """The files `tf.train.latest_checkpoint` looks for, without TensorFlow."""
    ckpt = pathlib.Path(model_dir) / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / f"ckpt-{step}.index").write_bytes(b"")
    (ckpt / "checkpoint").write_text(f'model_checkpoint_path: "ckpt-{step}"\n')


def _twice_at_once(fn):
    """Runs `fn` in two threads at once (the locks are per open file, so two threads
    contend as two processes would); returns the exceptions they raised."""
    import threading
    errors = []

    def guarded():
        try:
            fn()
        except Exception as e:  # pylint: disable=broad-except
            errors.append(e)
    threads = [threading.Thread(target=guarded) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_two_processes_on_one_model_root_train_each_run_once(tmp_path, monkeypatch):
    """Two benchmark invocations over the same seeds and model_root (threads here; the
    locks are per open file, so the same as processes): every run, the shared burn-in and
    its pre-estimation copy are trained once; the second invocation waits and reuses."""
    import threading
    import time
    from benchmarks import reproduce_synthetic as rs
    calls, guard = [], threading.Lock()

    def fake_train(cfg, model_dir, method, seed, stop_at_step=None):
        time.sleep(0.2)            # long enough for the other thread to arrive meanwhile
        step = stop_at_step or cfg.num_epochs * cfg.steps_per_epoch
        with guard:
            calls.append((os.path.relpath(model_dir, tmp_path), step))
        _fake_checkpoint(model_dir, step)
        return {}

    monkeypatch.setattr(rs, "_train", fake_train)
    cfg = rs.Config(output_dir=str(tmp_path), methods=("coopnet", "coopnet_gt_inputs",
                                                      "baseline"),
                    seeds=(0,), num_epochs=3, steps_per_epoch=2, burn_in_epochs=2)
    infos = []
    errors = _twice_at_once(lambda: infos.append(rs.train_all(cfg, str(tmp_path))))
    assert not errors, errors
    assert sorted(calls) == sorted([
        ("seed0/_burn_in", 2), ("seed0/_burn_in", 4), ("seed0/coopnet", 6),
        ("seed0/coopnet_gt_inputs", 6), ("seed0/baseline", 6)])
    assert rs._checkpoint_step(str(tmp_path / "seed0" / "_burn_in_pre_estimation")) == 2
    assert len(infos) == 2 and infos[0].keys() == infos[1].keys()
    # a GT-estimating arm alone needs the burn-in only up to its estimation epoch
    calls.clear()
    rs.train_all(dataclasses.replace(cfg, methods=("coopnet_gt_inputs",), seeds=(1,)),
                 str(tmp_path))
    assert calls == [("seed1/_burn_in", 2), ("seed1/coopnet_gt_inputs", 6)]


def test_gin_snapshot_refreshed_only_when_changed_and_never_under_another_process(
        tmp_path, monkeypatch):
    import fcntl
    import time
    from benchmarks import reproduce_synthetic as rs
    repo = tmp_path / "repo"
    (repo / "gin").mkdir(parents=True)
    (repo / "gin" / "a.gin").write_text("x = 1\n")
    monkeypatch.setattr(rs.common, "REPO_ROOT", repo)
    root = str(tmp_path / "runs")
    snap = pathlib.Path(root) / "gin_snapshot"
    with rs._current_gin_snapshot(root) as path:
        assert path == str(snap) and (snap / "a.gin").read_text() == "x = 1\n"
    inode = (snap / "a.gin").stat().st_ino
    with rs._current_gin_snapshot(root):                     # unchanged: kept as it is
        assert (snap / "a.gin").stat().st_ino == inode
        with rs._current_gin_snapshot(root):                 # a second same-checkout user
            pass
    (repo / "gin" / "a.gin").write_text("x = 2\n")
    with open(str(snap) + ".lock") as other:                 # another process trains
        fcntl.flock(other, fcntl.LOCK_SH)
        with pytest.raises(RuntimeError, match="another benchmark process"):
            with rs._current_gin_snapshot(root):
                pass
        assert (snap / "a.gin").read_text() == "x = 1\n"     # its config untouched
    with rs._current_gin_snapshot(root):                     # alone again: refreshed
        assert (snap / "a.gin").read_text() == "x = 2\n"
    assert not list(pathlib.Path(root).glob("gin_snapshot.*[!k]"))   # no .partial/.old
    # two processes of one (changed) checkout starting together: one refreshes, both run
    import threading
    (repo / "gin" / "a.gin").write_text("x = 3\n")
    seen = []
    # make them meet: each start's first content check waits (up to 1 s) for the other's;
    # without serialised check-and-refresh both saw the old snapshot and both refused
    barrier, real_contents, waited = threading.Barrier(2, timeout=1.0), rs._tree_contents, set()

    def contents_after_meeting(path):
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
        return real_contents(path)
    monkeypatch.setattr(rs, "_tree_contents", contents_after_meeting)

    def start():
        with rs._current_gin_snapshot(root):
            seen.append((snap / "a.gin").read_text())
            time.sleep(0.2)                                  # both inside at once
    errors = _twice_at_once(start)
    assert not errors and seen == ["x = 3\n"] * 2


def test_flow_competence_continues_a_longer_burn_in_from_a_shorter_one(tmp_path, monkeypatch):
    from benchmarks import flow_competence as fc
    from benchmarks import reproduce_synthetic as rs
    assert fc.shorter_burn_in_settings("burn9+pixel_smooth") == ["pixel_smooth+burn6",
                                                                 "pixel_smooth"]
    assert fc.shorter_burn_in_settings("burn6") == ["current"]
    assert fc.shorter_burn_in_settings("pyramid") == []
    assert fc.shorter_burn_in_settings("burn6+post") == []
    trained = []

    def fake_train(bcfg, model_dir, method, seed, stop_at_step=None):
        trained.append((os.path.relpath(model_dir, tmp_path), rs._checkpoint_step(model_dir),
                        stop_at_step))
        _fake_checkpoint(model_dir, stop_at_step)
        return {}

    monkeypatch.setattr(rs, "_train", fake_train)
    cfg = fc.Config(model_root=str(tmp_path))
    info = fc.train_setting(cfg, "burn6")                 # nothing shorter yet: from scratch
    assert trained == [("burn6/run", -1, 540)] and info["resumed_from"] is None
    fc.train_setting(cfg, "current")
    info = fc.train_setting(cfg, "burn9")                 # the longest finished one: burn6
    assert trained[-1] == ("burn9/run", 540, 810)
    assert info["resumed_from"] == "burn6" and info["steps_from_resume"] == 270
    # two processes with overlapping --levers (threads here): the setting trains once
    import time
    slow_train = fake_train
    monkeypatch.setattr(rs, "_train", lambda *a, **k: (time.sleep(0.2), slow_train(*a, **k))[1])
    assert not _twice_at_once(lambda: fc.train_setting(cfg, "bwd_photo"))
    assert [t for t in trained if t[0] == "bwd_photo/run"] == [("bwd_photo/run", -1, 270)]


def test_verdicts_follow_the_paired_intervals():
    from benchmarks import reproduce_synthetic as rs

    def run(abs_rel_static, ate, abs_rel_moving):
        return {"depth_static_scale": {"static": {"abs_rel": abs_rel_static},
                                       "moving": {"abs_rel": abs_rel_moving}},
                "pose": {"ate3_mean": ate}}
    per_run = {}
    for s, noise in enumerate((0.0, 0.01, -0.01)):
        per_run[f"baseline/seed{s}"] = run(0.30 + noise, 0.05 + noise, 0.5 + noise)
        # oracle: static depth clearly better in every seed; pose worse in one seed only
        per_run[f"oracle_static/seed{s}"] = run(0.20 + noise, 0.05 + 3 * noise, 0.5 - noise)
    summary = rs.summarise(per_run, ("baseline", "oracle_static"), (0, 1, 2))
    rows = {r["family"]: r for r in summary["_verdicts"]}
    assert rows["static depth"]["outcome"] == "oracle_static better"
    assert rows["static depth"]["a_better_on"] == ["AbsRel static"]
    assert rows["pose"]["outcome"] == "no detectable difference"
    d = summary["_paired"]["oracle_static − baseline"]["metrics"]["AbsRel static"]
    assert d["n"] == 3 and d["high"] < 0 < d["high"] + 0.2
    one = rs.summarise({k: v for k, v in per_run.items() if k.endswith("seed0")},
                       ("baseline", "oracle_static"), (0,))
    assert all(r["outcome"].startswith("n/a") for r in one["_verdicts"])
    md = rs.tables_markdown(summary, ("baseline", "oracle_static"), (0, 1, 2))
    assert "**Verdicts**" in md and "oracle_static better" in md
    md_one = rs.tables_markdown(one, ("baseline", "oracle_static"), (0,))
    assert "**Verdicts**" in md_one and "n/a (fewer than 2 seeds)" in md_one


def test_throughput_tiny(tmp_path):
    from benchmarks import throughput as tp
    cfg = tp.Config(height=64, width=64, batch_size=1, depth_layers=10, pose_layers=10,
                    flow_layers=10,
                    modes=("eager",), warmup=1, iters=1, eager_iters=1,
                    p2_iters=1, pipeline_batches=2, pipeline_sequences=1, pipeline_frames=4,
                    latency=True, latency_iters=1, output_dir=str(tmp_path), output_name="tp")
    tp.run(cfg, argv=["throughput.py", "--smoke"], log=lambda *_: None)
    data = json.loads((tmp_path / "tp.json").read_text())
    for key in ("modes", "ratios", "p2", "input_pipeline", "serving", "paper_comparison",
                "metadata", "device"):
        assert key in data
    for mode in ("eager",):
        entry = data["modes"][mode]
        assert entry["step"]["median_s"] > 0 and entry["forward"]["median_s"] > 0
        assert "backward_and_update_s" in entry and "snippets_per_second" in entry
    assert {"p2_update", "coopnet_apportion", "p2_update_share_of_step"} <= set(data["p2"])
    assert set(data["serving"]) >= {"depth", "pose", "flow"}
    assert (tmp_path / "tp.md").is_file()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
