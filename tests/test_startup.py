"""Importing the package must not initialise TensorFlow's eager context.

`MultiWorkerMirroredStrategy` configures collective ops, and splitting a CPU into logical
devices (`make_distribution_strategy(num_logical_cpus=N)`) configures devices; both raise
``RuntimeError`` once the context exists. `train.main` imports the whole training stack
(gin parsing) before `train_and_evaluate` builds the strategy, so a single module-level
tensor anywhere (it was `data/augment.py`'s flip matrix) made multi-worker training
impossible. The check runs in a fresh interpreter: this test process's context is
already initialised by conftest.
"""
import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Imports every module of coopnet_tf (what `train.main` pulls in through gin parsing is a
# subset), the entry points and the tools, then probes the context two ways: the private
# handle after each import (to name the offender) and the public API at the end (a
# logical-device split, which raises RuntimeError once the context is initialised).
_SCRIPT = r"""
import importlib, pathlib, pkgutil, sys
sys.path.insert(0, str(pathlib.Path.cwd() / "tools"))
import tensorflow as tf
from tensorflow.python.eager import context

def initialised():
    return getattr(context.context(), "_context_handle", None) is not None

import coopnet_tf
names = ["coopnet_tf.train", "coopnet_tf.evaluate", "coopnet_tf.export", "coopnet_tf.predict"]
names += [m.name for m in pkgutil.walk_packages(coopnet_tf.__path__, "coopnet_tf.")
          if m.name != "coopnet_tf.models.__main__"]
tools = sorted(p.stem for p in pathlib.Path("tools").glob("*.py"))
from absl import flags
for name in names + tools:
    before = set(flags.FLAGS)
    importlib.import_module(name)
    if name in tools:   # each tool defines its own absl flags (some share names)
        for flag in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, flag)
    if initialised():
        print("INITIALISED_BY", name)
        sys.exit(3)
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
print("LOGICAL_CPUS", len(tf.config.list_logical_devices("CPU")), "MODULES", len(names + tools))
"""


def test_importing_the_package_leaves_the_context_uninitialised():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "INITIALISED_BY" not in out, out[-2000:]
    assert proc.returncode == 0, out[-2000:]
    assert "LOGICAL_CPUS 2" in out, out[-2000:]
    modules = int(out.split("MODULES")[1].split()[0])
    assert modules > 40   # the walk found the package (not an empty loop)
