"""The Lee et al. arms of `benchmarks/reproduce_synthetic.py` (issue 17) at a tiny setting.

* the phase scaling and the gin bindings of a Lee arm (no burn-in, Lee's phases, its
  gin file) and of the jittered arms;
* the jittered arms' world: the same images, ground truth and record files as the exact
  world, only the boxes differ;
* the object-motion metric: 0 for a prediction exact up to the per-image depth scale
  (fitted on static pixels only), |r_gt| for zero motion;
* CSAC's object segmentation (Lee Table 5) on a constructed field: one rigid vector on an
  object's exact pixels gives IoU 1 with the object pixels inside the boxes, a zero field
  (no contrast, flat depth) only the whole box's share; an object without a box is not GT;
* `train_all`: Lee arms train from scratch beside the burn-in arms (fake `_train`);
* the tables: object-motion and segmentation numbers for the Lee arms, n/a for the others;
* the benchmark end to end with one Lee arm (`lee_no_dam_jitter`: the DAM switch and the
  jittered world; 64x64, one eager step per phase, ResNet10 encoders): finite
  object-motion and segmentation numbers, the re-rendered object pixels consistent with
  the records' exact boxes and moving masks, the Lee row in the markdown, and the run's
  pose and residual equal to the exported ObjectMotionServing's on the restored networks.
  The numbers are meaningless. (A CoopNet arm beside it would add its burn-in, minutes on
  this CPU; the CoopNet path is tests/test_benchmarks_smoke.py's.)
"""
import json
import math
import os
import pathlib
import sys

import numpy as np
import pytest

import conftest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import reproduce_synthetic as rs  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_graphs")   # conftest.py


def tiny_config(root: pathlib.Path, methods=("lee_no_dam_jitter",)) -> rs.Config:
    return rs.Config(
        output_dir=str(root / "out"), cache_dir=str(root / "cache"), methods=methods,
        seeds=(0,), height=64, width=64, num_epochs=3, steps_per_epoch=1, burn_in_epochs=2,
        lr_boundary_epoch=2, num_sequences=1, num_val_sequences=1, num_test_sequences=1,
        frames_per_sequence=6, num_objects=4, batch_size=1, run_eagerly=True, plot=False,
        extra_bindings=conftest.TINY_ENCODERS + (
            "train_and_evaluate.max_eval_batches = 1",
            "train_and_evaluate.eval_batch_size = 1",
            "train_and_evaluate.evaluate_before_training = False",
            "lee.lambda_mc = 0.0",     # (L_mc doubles the motion-net work; test_lee_step)
            "build_depth_net.decoder_channels = (4, 8, 8, 16, 16)",
            "build_motion_net.decoder_channels = (4, 8, 8, 16, 16)"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("lee_bench")


def test_phase_scaling_and_bindings(tmp_path):
    assert [rs.lee_phase_epochs(n) for n in (3, 4, 5, 6, 30)] == \
        [(1, 1), (1, 1), (2, 2), (2, 2), (10, 10)]
    with pytest.raises(ValueError, match="num_epochs >= 3"):
        rs.lee_phase_epochs(2)
    cfg = rs.Config(num_epochs=5, burn_in_epochs=3, lr_boundary_epoch=4)
    lee = rs.gin_bindings(cfg, "lee_no_csac_jitter", 1)
    # the warm-up is phase 1 (lee_synthetic.gin's choice), scaled with the benchmark's
    # epochs; not the flow arms' burn-in (3)
    for line in ("lee.phase1_epochs = 2", "train_and_evaluate.burn_in_epochs = 2",
                 "lee.phase2_epochs = 2", "make_learning_rate_schedule.boundary_epochs = (5,)",
                 "lee.csac = False", "build_motion_net.dam = True",
                 "ensure_synthetic_dataset.box_jitter = 0.1",
                 "ensure_synthetic_dataset.box_miss_rate = 0.1",
                 "train_and_evaluate.steps_per_epoch = 90", "train_and_evaluate.seed = 1"):
        assert line in lee
    assert not any("box_" in b for b in rs.gin_bindings(cfg, "lee_no_dam", 1))
    base = rs.gin_bindings(cfg, "baseline", 1)
    assert "train_and_evaluate.burn_in_epochs = 3" in base and not any(
        b.startswith("lee.") for b in base)
    assert not set(rs.LEE_ARMS) & set(rs.DEFAULT_METHODS)
    with pytest.raises(ValueError, match="num_epochs >= 3"):
        rs.run(rs.Config(output_dir=str(tmp_path), methods=("lee",), num_epochs=2))


def test_jittered_world_differs_from_the_exact_one_only_in_its_boxes(root):
    import tensorflow as tf
    from coopnet_tf import specs
    from coopnet_tf.data import pipeline, synthetic
    cfg = tiny_config(root)
    exact, noisy = rs.ensure_dataset(cfg), rs.ensure_dataset(cfg, noisy_boxes=True)
    assert exact != noisy
    for split in ("train", "test"):
        names = [sorted(p.rsplit("/", 1)[-1] for p in tf.io.gfile.glob(
            synthetic.file_pattern(d, split))) for d in (exact, noisy)]
        assert names[0] == names[1] and names[0]
    batches = [next(iter(pipeline.make_dataset(
        synthetic.file_pattern(d, "train"), batch_size=64, height=64, width=64,
        training=False, with_ground_truth=True, with_object_motion=True, max_boxes=8)))
        for d in (exact, noisy)]
    for key in (specs.KEY_FRAMES, specs.KEY_INTRINSICS, specs.KEY_GT_DEPTH, specs.KEY_GT_POSE,
                specs.KEY_GT_FLOW, specs.KEY_GT_MOVING, specs.KEY_GT_OBJECT_MOTION):
        np.testing.assert_array_equal(batches[0][key].numpy(), batches[1][key].numpy())
    masks = [b[specs.KEY_BOX_MASK].numpy() for b in batches]
    boxes = [b[specs.KEY_BOXES].numpy() for b in batches]
    assert masks[0].sum() > 0 and masks[1].sum() > 0
    assert not (np.array_equal(masks[0], masks[1]) and np.array_equal(boxes[0], boxes[1]))


def test_object_motion_metric_uses_the_static_depth_scale():
    rng = np.random.default_rng(0)
    n, h, w = 3, 8, 10
    gt_depth = rng.uniform(2.0, 30.0, (n, h, w))
    moving = np.zeros((n, 2, h, w), bool)
    moving[:, 0, 2:5, 3:7] = True
    moving[:, 1, 2:6, 3:7] = True
    gt_r = np.where(moving[..., None], rng.normal(0.0, 0.5, (n, 2, h, w, 3)), 0.0)
    c = np.array([0.5, 2.0, 7.0])                     # per-image unknown scale
    depth = gt_depth / c[:, None, None]
    depth[moving.any(1)] *= 3.0                       # wrong depth on the moving object
    arr = {"gt_depth": gt_depth, "depth": depth, "moving": moving, "gt_object_motion": gt_r}
    exact = rs.object_motion_metrics(arr, gt_r / c[:, None, None, None, None])
    assert exact["epe_moving"] < 1e-12 and exact["epe_static"] < 1e-12
    assert exact["n_moving"] == int(moving.sum())
    unscaled = rs.object_motion_metrics(arr, gt_r)
    assert unscaled["epe_moving"] > 0.1
    zero = rs.object_motion_metrics(arr, np.zeros_like(gt_r))
    want = np.linalg.norm(gt_r, axis=-1)[moving].mean()
    assert math.isclose(zero["epe_moving"], want, rel_tol=1e-12)
    assert math.isclose(zero["gt_norm_moving"], want, rel_tol=1e-12)


def test_csac_segmentation_of_a_constructed_field():
    """Flat depth (CSAC's Otsu foreground = the whole box), one rigid vector on object A's
    pixels (60 of its box's 100), zero elsewhere; object C fills its own box; object B has
    no box. Source 0: the rigid field; source 1: a zero field (no contrast). Snippet 1 is
    snippet 0 mirrored left-right (boxes too)."""
    h, w = 24, 32
    a = np.zeros((h, w), bool)
    a[7:13, 2:12] = True                               # 60 pixels of box A's 10 x 10
    box_a = np.zeros((h, w), bool)
    box_a[3:13, 2:12] = True
    c = np.zeros((h, w), bool)
    c[14:20, 20:28] = True                             # fills box C
    b = np.zeros((h, w), bool)
    b[16:22, 4:12] = True                              # an object without a box
    boxes = np.array([[2, 3, 11, 12], [20, 14, 27, 19], [0, 0, 0, 0]], np.float32)
    mirrored = np.stack([w - 1 - boxes[:, 2], boxes[:, 1], w - 1 - boxes[:, 0], boxes[:, 3]], -1)
    boxes = np.stack([boxes, mirrored * [[1], [1], [0]]])   # (the padding row stays 0)
    box_mask = np.array([[1.0, 1.0, 0.0]] * 2, np.float32)

    def both(x):                                       # [2, ...]: snippet 0 and its mirror
        return np.stack([x, x[..., ::-1]])

    residual = np.zeros((2, 2, h, w, 3), np.float32)
    residual[:, 0] = np.where(both(a)[..., None], [0.3, -0.1, 0.8], 0.0)
    moving = np.repeat(both(a)[:, None], 2, axis=1)
    masks = rs.csac_object_masks(residual, np.full((2, h, w), 10.0, np.float32), boxes,
                                 box_mask, moving)
    np.testing.assert_array_equal(masks["box_region"], both(box_a | c))
    np.testing.assert_array_equal(masks["moving_box_region"][:, 0], both(box_a))
    np.testing.assert_array_equal(masks["csac_mask"][:, 0], both(a | c))      # the inliers
    np.testing.assert_array_equal(masks["csac_mask"][:, 1], both(box_a | c))  # everything
    arr = dict(masks, gt_objects=both(a | b | c))
    per_source = [rs.object_segmentation_metrics(
        {k: v[:, i:i + 1] if k in ("csac_mask", "moving_box_region") else v
         for k, v in arr.items()}) for i in (0, 1)]
    rigid, zero = per_source
    assert rigid["all_boxes"]["iou_mean"] >= 0.9 and rigid["moving_boxes"]["iou_mean"] >= 0.9
    assert rigid["all_boxes"]["gt_pixels"] == 2 * (60 + 48)
    assert rigid["moving_boxes"]["gt_pixels"] == 2 * 60
    # no contrast: the whole box is "object", IoU = the object's share of its box
    assert zero["moving_boxes"]["iou_mean"] == pytest.approx(60 / 100)
    assert zero["all_boxes"]["iou_mean"] == pytest.approx((60 + 48) / (100 + 48))
    pooled = rs.object_segmentation_metrics(arr)
    assert pooled["all_boxes"]["n_images"] == 4 and pooled["all_boxes"]["intersection"] == 4 * 108


def test_world_object_pixels_needs_the_world_config(tmp_path):
    with pytest.raises(ValueError, match="world_config.json: missing"):
        rs.world_object_pixels(str(tmp_path / "test-*.tfrecord"), [b"synthetic/test/0000"],
                               [1], 8, 8)


def test_train_all_trains_lee_arms_from_scratch(tmp_path, monkeypatch):
    """Lee arms never resume from the shared burn-in; with only Lee arms there is none
    (one arm per phase-1 group here: no shared phase 1 either)."""
    calls = []
    monkeypatch.setattr(rs, "_finished", lambda model_dir, steps: False)
    monkeypatch.setattr(rs, "_copy_run", lambda src, dst: calls.append(("copy", src, dst)))
    monkeypatch.setattr(rs, "_train", lambda cfg, model_dir, method, seed, stop_at_step=None:
                        calls.append(("train", method, pathlib.Path(model_dir).name,
                                      stop_at_step)) or {})
    cfg = rs.Config(methods=("baseline", "lee", "lee_no_dam_jitter"), num_epochs=5,
                    burn_in_epochs=3)
    info = rs.train_all(cfg, str(tmp_path))
    assert calls == [("train", "coopnet", "_burn_in", 270),
                     ("copy", str(tmp_path / "seed0" / "_burn_in"),
                      str(tmp_path / "seed0" / "baseline")),
                     ("train", "baseline", "baseline", None),
                     ("train", "lee", "lee", None),
                     ("train", "lee_no_dam_jitter", "lee_no_dam_jitter", None)]
    assert info["lee/seed0"]["resumed_from"] is None
    assert info["lee/seed0"]["shared_burn_in_seconds"] == 0.0
    assert info["baseline/seed0"]["resumed_from"].endswith("_burn_in")
    calls.clear()
    rs.train_all(rs.Config(methods=("lee_no_dam",), num_epochs=5, burn_in_epochs=3),
                 str(tmp_path))
    assert calls == [("train", "lee_no_dam", "lee_no_dam", None)]


def test_tables_show_object_motion_for_lee_arms_and_na_for_the_others():
    om = {"epe_moving": 0.25, "rel_moving": 0.5, "epe_static": 0.125, "gt_norm_moving": 0.75}
    seg = {"all_boxes": {"iou_mean": 0.75}, "moving_boxes": {"iou_mean": 0.625}}
    per_run = {"baseline/seed0": {"pose": {"ate3_mean": 0.1}},
               "lee/seed0": {"pose": {"ate3_mean": 0.2}, "object_motion": om,
                             "object_segmentation": seg},
               "lee_no_csac/seed0": {"pose": {"ate3_mean": 0.3},
                                     "object_motion": dict(om, epe_moving=0.5),
                                     "object_segmentation": seg}}
    methods = ("baseline", "lee", "lee_no_csac")
    summary = rs.summarise(per_run, methods, (0,))
    assert summary["baseline"]["r EPE moving"]["mean"] is None
    assert summary["lee"]["r EPE moving"]["mean"] == 0.25
    assert summary["_paired"]["lee − lee_no_csac"]["metrics"]["r EPE moving"]["mean"] == -0.25
    assert not any(r["comparison"] == "lee − lee_no_csac" for r in summary["_verdicts"])
    md = rs.tables_markdown(summary, methods, (0,))
    table = md.split("**object motion**")[1].split("**")[0]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines()
            if line.startswith("|")}
    assert table.splitlines()[2].split("|")[5:7] == [" CSAC seg. IoU ",
                                                     " CSAC seg. IoU moving boxes "]
    assert [c.strip() for c in rows["baseline"]] == ["n/a"] * 5
    assert [c.strip() for c in rows["lee"]] == ["0.25", "0.5", "0.125", "0.75", "0.625"]
    assert summary["_paired"]["lee − lee_no_csac"]["metrics"]["CSAC seg. IoU"]["mean"] == 0.0
    assert [c.strip() for c in rows["lee_no_csac"]][0] == "0.5"


def test_lee_arm_end_to_end(root, monkeypatch):
    """One Lee arm (without DAM, jittered boxes: both switches' paths) trained and
    evaluated by the benchmark; its pose and residual are the serving module's."""
    import tensorflow as tf
    from coopnet_tf import export, specs
    from coopnet_tf.data import pipeline, synthetic
    arm = "lee_no_dam_jitter"
    cfg = tiny_config(root, methods=(arm,))
    collected = []   # the arrays the benchmark's own evaluation scored (not recomputed here)
    collect = rs.collect_lee_predictions
    monkeypatch.setattr(rs, "collect_lee_predictions",
                        lambda *a, **k: collected.append(collect(*a, **k)) or collected[-1])
    rs.run(cfg, argv=["reproduce_synthetic.py", "--smoke"])
    assert len(collected) == 1
    out = pathlib.Path(cfg.output_dir)
    data = json.loads((out / "reproduce_synthetic.json").read_text())
    md = (out / "reproduce_synthetic.md").read_text()
    run = data["per_run"][f"{arm}/seed0"]
    om = run["object_motion"]
    assert om["n_moving"] > 0
    for key in ("epe_moving", "rel_moving", "epe_static", "gt_norm_moving"):
        assert om[key] is not None and math.isfinite(om[key]), key
    assert data["summary"][arm]["r EPE moving"]["mean"] == om["epe_moving"]
    seg = run["object_segmentation"]
    assert seg["csac_in_training"] is True and seg["threshold"] == 0.5
    n_images = 2 * run["test_snippets"]                  # (snippet, source) pairs
    for key in ("all_boxes", "moving_boxes"):
        assert seg[key]["n_images"] == n_images and 0 < seg[key]["n_scored"] <= n_images
        assert 0.0 <= seg[key]["iou_mean"] <= 1.0, key
        assert seg[key]["intersection"] <= min(seg[key]["pred_pixels"], seg[key]["gt_pixels"])
    assert seg["all_boxes"]["gt_pixels"] >= seg["moving_boxes"]["gt_pixels"] > 0
    assert data["summary"][arm]["CSAC seg. IoU"]["mean"] == seg["all_boxes"]["iou_mean"]
    assert run["training"]["resumed_from"] is None
    for value in (run["flow"]["epe_moving"], run["pose"]["ate3_mean"],
                  run["depth_static_scale"]["moving"]["abs_rel"]):
        assert math.isfinite(value)
    # the trivial reference: zero motion scores mean |r_gt| on the moving pixels
    assert data["trivial_reference"]["object_motion"]["epe_moving"] == pytest.approx(
        om["gt_norm_moving"], rel=1e-9)
    table = md.split("**object motion**")[1].split("**")[0]
    assert any(line.startswith(f"| {arm} |") and "n/a" not in line
               for line in table.splitlines())
    run_dir = out / "runs" / "seed0" / arm
    operative = (run_dir / "operative_config.gin").read_text()
    for line in ("train_and_evaluate.method = 'lee'", "build_motion_net.dam = False",
                 "ensure_synthetic_dataset.box_jitter = 0.1", "lee.phase1_epochs = 1"):
        assert line in operative, line
    assert data["dataset"]["noisy_boxes_path"] == rs.ensure_dataset(cfg, noisy_boxes=True)

    # the benchmark's pose and residual = the exported ObjectMotionServing's
    test_files = synthetic.file_pattern(rs.ensure_dataset(cfg), "test")
    arr = collected[0]
    assert len(arr["residual"]) == run["test_snippets"]
    # the re-rendered object pixels belong to the records' snippets: every one lies in an
    # exact box of its target frame, and the GT moving pixels
    # of both sources are object pixels
    objects, region = arr["gt_objects"], arr["box_region"]
    assert objects.any() and not (objects & ~region).any()
    assert not (arr["moving"] & ~objects[:, None]).any() and arr["moving"].any()
    assert arr["csac_mask"].shape == arr["moving"].shape and not (
        arr["csac_mask"] & ~region[:, None]).any()
    depth_net, motion_net, info = export.restore_lee_networks(str(run_dir))
    batch = next(iter(pipeline.make_dataset(test_files, batch_size=2, height=64, width=64,
                                            training=False)))
    frames, K = batch[specs.KEY_FRAMES], tf.constant(batch[specs.KEY_INTRINSICS])
    serving = export.ObjectMotionServing(depth_net, motion_net, 64, 64, info["rotation_mode"])
    t = specs.TARGET_INDEX
    for k, i in enumerate(specs.SOURCE_INDICES):   # the test split's first two snippets
        if i > t:    # serving's pair order (image_b after image_a): both stages equal
            want = serving.serve(frames[:, t], frames[:, i], K)
            np.testing.assert_allclose(arr["residual"][:2, k], want["residual"].numpy(),
                                       atol=1e-5)
            np.testing.assert_allclose(arr["transforms"][:2, k], want["transform"].numpy(),
                                       atol=1e-5)
        else:        # the ego branch sees (I_s, I_t) in time order: T_t->s = (T_s->t)^-1
            want = serving.serve(frames[:, i], frames[:, t], K)["transform"].numpy()
            np.testing.assert_allclose(arr["transforms"][:2, k], np.linalg.inv(want),
                                       atol=1e-5)


def test_phase_1_is_the_same_on_the_jittered_world(root):
    """The premise of sharing phase 1 across the boxes' jitter (`lee_phase1_group`): phase
    1 (the warm-up: neither L_h nor CSAC) trained on the exact and on the jittered world
    ends with bitwise the same networks and optimizer state; phase 2 (boxes used) does not."""
    import dataclasses
    import tensorflow as tf
    cfg = dataclasses.replace(tiny_config(root, methods=("lee_no_dam", "lee_no_dam_jitter")),
                              steps_per_epoch=2)
    phase1 = rs.lee_phase_epochs(cfg.num_epochs)[0] * cfg.steps_per_epoch

    def variables(arm, steps):
        model_dir = str(root / "phase1" / arm)
        rs._train(cfg, model_dir, arm, 0, stop_at_step=steps)
        reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
        return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                if "OPTIMIZER_SLOT" in k or "/.ATTRIBUTES/VARIABLE_VALUE" in k}

    exact, jittered = (variables(arm, phase1) for arm in cfg.methods)
    assert exact.keys() == jittered.keys() and len(exact) > 100
    assert [k for k in exact if not np.array_equal(exact[k], jittered[k])] == []
    exact, jittered = (variables(arm, phase1 + 1) for arm in cfg.methods)
    assert any(not np.array_equal(exact[k], jittered[k]) for k in exact)


def test_lee_arms_that_differ_only_in_csac_share_their_phase_1(tmp_path, monkeypatch):
    """CSAC is a phase 2-3 term and the boxes are not used in phase 1 (the warm-up): lee /
    lee_no_csac and their jittered pair resume from one phase-1 run per seed, trained
    once; the arms without DAM train alone (one of a group: no shared phase); a restart
    after the shared phase neither retrains it nor copies it over an arm's progress."""
    steps, calls = {}, []

    def train(cfg, model_dir, method, seed, stop_at_step=None):
        name = os.path.relpath(model_dir, tmp_path)
        calls.append(("train", method, name, stop_at_step))
        steps[name] = stop_at_step or cfg.num_epochs * cfg.steps_per_epoch
        return {}

    def copy(src, dst):
        calls.append(("copy", os.path.relpath(src, tmp_path), os.path.relpath(dst, tmp_path)))
        steps[os.path.relpath(dst, tmp_path)] = steps[os.path.relpath(src, tmp_path)]

    monkeypatch.setattr(rs, "_train", train)
    monkeypatch.setattr(rs, "_copy_run", copy)
    monkeypatch.setattr(rs, "_checkpoint_step",
                        lambda model_dir: steps.get(os.path.relpath(model_dir, tmp_path), -1))
    cfg = rs.Config(methods=("lee", "lee_no_csac", "lee_no_dam", "lee_jitter",
                             "lee_no_csac_jitter"), seeds=(0, 1), num_epochs=5,
                    steps_per_epoch=90)
    assert rs.lee_phase_epochs(5)[0] * 90 == 180
    info = rs.train_all(cfg, str(tmp_path))
    for seed in (0, 1):
        s = f"seed{seed}/"
        shared = s + "_lee_phase1"
        mine = [c for c in calls if any(str(x).startswith(s) for x in c[2:])]
        assert mine == [
            ("train", "lee", shared, 180), ("copy", shared, s + "lee"),
            ("train", "lee", s + "lee", None),
            ("copy", shared, s + "lee_no_csac"), ("train", "lee_no_csac", s + "lee_no_csac", None),
            ("train", "lee_no_dam", s + "lee_no_dam", None),
            ("copy", shared, s + "lee_jitter"), ("train", "lee_jitter", s + "lee_jitter", None),
            ("copy", shared, s + "lee_no_csac_jitter"),
            ("train", "lee_no_csac_jitter", s + "lee_no_csac_jitter", None)]
        assert info[f"lee_no_csac/seed{seed}"]["resumed_from"] == str(tmp_path / shared)
        assert info[f"lee_no_dam/seed{seed}"]["resumed_from"] is None
    # an extra binding of the warm-up's or phase 1's length may leave L_h (boxes) in phase 1
    assert rs.lee_phase1_group("lee_jitter", cfg) == rs.lee_phase1_group("lee", cfg)
    bound = rs.Config(extra_bindings=("train_and_evaluate.burn_in_epochs = 1",))
    assert rs.lee_phase1_group("lee_jitter", bound) == "_lee_phase1_jitter"
    assert rs.lee_phase1_group("lee_no_dam", bound) == "_lee_phase1_no_dam"
    longer = rs.Config(extra_bindings=("lee.phase1_epochs=3",))
    assert rs.lee_phase1_group("lee_no_csac_jitter", longer) == "_lee_phase1_jitter"
    # restart: an arm interrupted after the shared phase keeps its own progress
    steps["seed0/lee_no_csac"] = 270
    calls.clear()
    rs.train_all(cfg, str(tmp_path))
    assert calls == [("train", "lee_no_csac", "seed0/lee_no_csac", None)]
    # one arm of a pair alone: no shared phase
    calls.clear()
    steps.clear()
    rs.train_all(rs.Config(methods=("lee_no_csac",), num_epochs=5, steps_per_epoch=90),
                 str(tmp_path))
    assert calls == [("train", "lee_no_csac", "seed0/lee_no_csac", None)]
