"""benchmarks/device_suite.sh: refuses without a GPU; the CPU mode writes every key (tiny)."""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def test_refuses_without_gpu(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("COOPNET_SUITE_CPU", None)
    out = tmp_path / "x.json"
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "device_suite.sh"),
                           "--output", str(out)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "no GPU" in proc.stderr and "--cpu" in proc.stderr
    assert not out.exists()


def test_python_driver_refuses_without_gpu(tmp_path):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible here")
    from benchmarks import device_suite
    out = tmp_path / "x.json"
    assert device_suite.main(["--output", str(out)]) == device_suite.REFUSAL_EXIT
    assert not out.exists()


def test_cpu_mode_writes_every_key(tmp_path, monkeypatch):
    """The driver's logic (configurations, bounded batch search stopped by an OOM, shares,
    skips, keys) with the measurement functions stubbed: they are benchmarks/throughput.py's,
    run for real at a tiny setting by tests/test_benchmarks_smoke.py."""
    from benchmarks import device_suite, throughput
    calls = []

    def fake_step(cfg, policy, jit, nets_opts=None, batch_size=None, log=None, **_):
        bs = batch_size or cfg.batch_size
        calls.append((policy, jit, bs))
        if bs > 4:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating")
        t = 0.5 if policy == "mixed_bfloat16" else 1.0
        return {"policy": policy, "jit_compile_forward": jit, "batch_size": bs,
                "step": {"median_s": t}, "snippets_per_second": bs / t, "nets_opts": ("n", "o")}

    monkeypatch.setattr(throughput, "time_train_step", fake_step)
    monkeypatch.setattr(throughput, "time_p2", lambda cfg, estimator="p2": {
        "p2_update": {"median_s": 0.01}, "coopnet_apportion": {"median_s": 0.02}})
    monkeypatch.setattr(throughput, "time_pipeline", lambda cfg: {"snippets_per_second": 4.0})
    out = tmp_path / "suite.json"
    cfg = device_suite.SuiteConfig.cpu(batch_size=2, max_batch=16,
                                       policies=("float32", "mixed_bfloat16"), xla=(False, True),
                                       serving=False, output=str(out))
    device_suite.run(cfg, "cpu", argv=["device_suite.py", "--cpu"], log=lambda *_: None)
    data = json.loads(out.read_text())
    assert set(device_suite.KEYS) <= set(data) and data["device"] == "CPU"
    assert set(data["train_step"]) == {"float32", "float32+xla", "mixed_bfloat16",
                                       "mixed_bfloat16+xla"}
    assert data["fastest"] == "mixed_bfloat16"
    search = data["largest_batch"]
    assert search["tried"] == {"4": 8.0, "8": "out of memory"} and search["largest_batch"] == 4
    assert calls[-1] == ("mixed_bfloat16", False, 8)
    assert data["quantiles"]["p2"]["update_share_of_float32_step"] == pytest.approx(0.01)
    assert data["quantiles"]["sequential_iterations_per_step"] == {"p2": 4096, "summary": 0}
    assert data["pipeline"]["ratio_to_fastest_step"] == pytest.approx(1.0)
    assert "skipped" in data["two_replica"] and "skipped" in data["serving"]
    assert data["determinism"] == {"skipped": "disabled"}      # the CPU mode's default
    assert "uptime_start" in data["metadata"]
    # with the determinism part: the A/B's medians, ratios and table (stubbed here)
    from benchmarks import step_time
    seen = []
    monkeypatch.setattr(step_time, "compare_determinism", lambda repo, steps, rounds, log: (
        seen.append((steps, rounds)) or {"medians": 1, "ratios": 2, "table": 3, "runs": 4}))
    device_suite.run(dataclasses.replace(cfg, determinism=True), "cpu", log=lambda *_: None)
    assert json.loads(out.read_text())["determinism"] == {"medians": 1, "ratios": 2, "table": 3}
    assert seen == [(cfg.iters, 1)]
