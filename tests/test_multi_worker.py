"""Two-process loopback `MultiWorkerMirroredStrategy` smoke test, and 'mirrored' over
logical CPUs.

* Two workers (TF_CONFIG on 127.0.0.1, free ports) run `train.parse_gin` +
  `train_and_evaluate(distribution='multi_worker')` on the 64x64 synthetic world
  (`multi_worker_worker.py`): CoopNet for 2 steps, Lee et al. for 3 (one per phase, the
  last training both networks on one objective with boxes). Both must finish (exit 0)
  and hold the same trainable weights (and, for CoopNet, P² state); their BatchNorm
  moving statistics differ (not synchronised, see docs/reliability.md "Distribution"; the
  test prints by how much). Before the lazy flip
  matrix of `data/augment.py`, both exited after seconds with "Collective ops must be
  configured at program startup".
* `make_distribution_strategy('mirrored', num_logical_cpus=2)` in a fresh process splits
  the CPU and mirrors over the two logical devices.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import conftest

# Two TensorFlow processes that build, trace nothing (run_eagerly) and run 2 steps each:
# ~2 min of CPU in all, minutes of wall time on a loaded machine. Opt-in.
slow = pytest.mark.skipif(
    os.environ.get("COOPNET_SLOW_TESTS") != "1",
    reason="multi-worker smoke test (2 TensorFlow processes; minutes): set COOPNET_SLOW_TESTS=1")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).resolve().parent / "multi_worker_worker.py"
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return conftest.tiny_world(tmp_path_factory, 64, frames_per_sequence=5)


def _free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@slow
@pytest.mark.parametrize("method, steps", [("coopnet", 2), ("lee", 3)])
def test_two_workers_train_in_lockstep(tiny_dataset, tmp_path, method, steps):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    model_dir = tmp_path / "run"
    procs, logs = [], []
    start = time.time()
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT),
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"worker{index}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(tiny_dataset), str(model_dir),
             str(tmp_path / f"worker{index}"), method], cwd=REPO_ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT))
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, TIMEOUT_S - (time.time() - start)))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    for i, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"worker {i} exit {proc.returncode}:\n{out[-3000:]}"
    infos = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    weights = [np.load(tmp_path / f"worker{i}.npz") for i in range(2)]
    assert [info["chief"] for info in infos] == [True, False]
    assert infos[0]["result"]["step"] == infos[1]["result"]["step"] == steps
    assert infos[1]["write_dir"].startswith(str(model_dir / "workertemp"))
    names = sorted(weights[0].files)
    assert names == sorted(weights[1].files)
    trainable = set(infos[0]["trainable"])
    stats = [n for n in names if n.endswith(("moving_mean", "moving_variance"))]
    p2 = [n for n in names if n.startswith("p2/")]
    assert len(trainable) > 100 and len(stats) > 20 and bool(p2) == (method == "coopnet")
    # the workers trained: the weights differ from initialisation is covered by the loop
    # tests; here, both workers hold bit-identical weights and P² state ...
    for name in sorted(trainable) + p2:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)
    # BatchNorm moving statistics are NOT all-reduced (Keras 3 creates them with aggregation
    # 'none'; each worker updates its copy from its own snippet): they differ, and so does
    # each worker's validation. docs/reliability.md says which copy is saved and reported.
    differing = [n for n in stats if not np.array_equal(weights[0][n], weights[1][n])]
    largest = max(float(np.abs(weights[0][n] - weights[1][n]).max()) for n in stats)
    print(f"BatchNorm statistics differing across workers: {len(differing)}/{len(stats)}, "
          f"largest difference {largest:.3g}; abs_rel chief {infos[0]['result']['abs_rel']}, "
          f"worker {infos[1]['result']['abs_rel']}")
    assert differing, "BatchNorm statistics agree: update docs/reliability.md (Distribution)"
    assert all(np.isfinite(info["result"]["abs_rel"]) for info in infos)


_MIRRORED_SCRIPT = r"""
import tensorflow as tf
from coopnet_tf.training import factories
strategy = factories.make_distribution_strategy("mirrored", num_logical_cpus=2)
print("REPLICAS", strategy.num_replicas_in_sync,
      sorted(d.split("/")[-1] for d in strategy.extended.worker_devices))
# asking again with the same split is accepted; another count names the problem
factories.make_distribution_strategy("mirrored", num_logical_cpus=2)
try:
    factories.make_distribution_strategy("mirrored", num_logical_cpus=3)
except RuntimeError as err:
    print("ERROR", err)
"""


def test_mirrored_over_logical_cpus_in_a_fresh_process():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO_ROOT),
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    assert "REPLICAS 2 ['device:CPU:0', 'device:CPU:1']" in out, out[-2000:]
    assert "cannot split the CPU into 3 logical devices" in out
    assert "already initialised (with 2 logical CPU device(s))" in out


def test_num_logical_cpus_is_for_mirrored_only():
    from coopnet_tf.training import distribution
    with pytest.raises(ValueError, match="only applies to distribution='mirrored'"):
        distribution.make_distribution_strategy("multi_worker", num_logical_cpus=2)
    with pytest.raises(ValueError, match="unknown distribution strategy 'mirored'"):
        distribution.make_distribution_strategy("mirored")
