"""Smoke test of the benchmark scripts' core functions at a tiny setting (not a benchmark).

Runs `benchmarks/reproduce_synthetic.py` (coopnet, one seed, two eager steps, a tiny
world) and `benchmarks/throughput.py` (eager mode, 64x64, batch 1, R18
networks) end to end and checks the JSON they write. The numbers are meaningless here.
"""
import json
import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


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
    from benchmarks import reproduce_synthetic as rs
    cfg = rs.Config(
        output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
        methods=("coopnet",), seeds=(0,), height=64, width=64,
        num_epochs=2, steps_per_epoch=1, burn_in_epochs=1, lr_boundary_epoch=1,
        num_sequences=1, num_val_sequences=1, num_test_sequences=1, frames_per_sequence=6,
        num_objects=4, run_eagerly=True, plot=True, share_burn_in=False,
        extra_bindings=("build_flow_net.num_layers = 18",
                        "train_and_evaluate.max_eval_batches = 1",
                        "train_and_evaluate.evaluate_before_training = False"))
    payload = rs.run(cfg, argv=["reproduce_synthetic.py", "--smoke"])
    data = json.loads((tmp_path / "out" / "reproduce_synthetic.json").read_text())
    assert (tmp_path / "out" / "reproduce_synthetic.md").is_file()
    assert (tmp_path / "out" / "reproduce_synthetic_delta_density.png").is_file()
    for key in ("config", "dataset", "protocol", "per_run", "summary", "metadata",
                "timing_seconds"):
        assert key in data
    for key in ("date_utc", "command", "machine", "versions", "load_average_end"):
        assert key in data["metadata"]
    run = data["per_run"]["coopnet/seed0"]
    for subset in ("all", "static", "moving"):
        assert set(run["depth"][subset]) >= {"abs_rel", "rmse", "pixels"}
    assert {"ate5_mean", "ate3_mean"} <= set(run["pose"])
    assert {"epe_static", "epe_moving", "epe_all"} <= set(run["flow"])
    assert "V_testq" in run["v"] and "precision_static" in run["v"]["V_testq"]
    assert "V_frozen" in run["v"]          # the coopnet run has frozen quantiles
    assert "AbsRel moving" in data["summary"]["coopnet"]
    assert "trivial (learned nothing)" in data["summary"]
    assert payload["per_run"].keys() == data["per_run"].keys()


def test_throughput_tiny(tmp_path):
    from benchmarks import throughput as tp
    cfg = tp.Config(height=64, width=64, batch_size=1, flow_layers=18,
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
