"""benchmarks/device_suite.sh: refuses without a GPU; the CPU mode writes every key (tiny)."""
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


def test_cpu_mode_writes_every_key(tmp_path):
    from benchmarks import device_suite
    out = tmp_path / "suite.json"
    cfg = device_suite.SuiteConfig.cpu(
        height=64, width=64, batch_size=1, flow_layers=18, max_batch=2,
        policies=("float32",), xla=(False,), warmup=1, iters=1, p2_iters=1,
        pipeline_batches=1, serving=False, output=str(out))
    device_suite.run(cfg, "cpu", argv=["device_suite.py", "--cpu"], log=lambda *_: None)
    data = json.loads(out.read_text())
    assert set(device_suite.KEYS) <= set(data)
    assert data["device"] == "CPU"
    assert data["train_step"]["float32"]["snippets_per_second"] > 0
    assert data["largest_batch"]["largest_batch"] in (1, 2)
    for est in ("p2", "summary"):
        assert data["quantiles"][est]["update_share_of_float32_step"] > 0
    assert data["quantiles"]["sequential_iterations_per_step"] == {"p2": 4096, "summary": 0}
    assert data["pipeline"]["ratio_to_fastest_step"] > 0
    assert "skipped" in data["two_replica"] and "skipped" in data["serving"]
    assert "uptime_start" in data["metadata"]
