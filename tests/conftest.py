"""Test configuration shared by every test module.

* Splits the CPU into two logical devices before TensorFlow initialises, so that
  tf.distribute tests can run MirroredStrategy with two replicas on a CPU-only
  machine. Single-device code is unaffected (it uses the first device).
* `shared_data` fixture: the real third-party data in ../shared/data; tests that
  need it skip with a message when it is absent (a user's clone has none).
* `tiny_world`: the square one-sequence synthetic world of the train-step and loop tests.
* `TINY_ENCODERS`: gin bindings that give every network of a test's training run the
  10-layer ResNet encoder (one BasicBlock per stage, ResNet18's feature shapes) through
  the same factories (measured: -20 % CPU time of test_train_loop + test_cc_loop).
* `fast_graphs` fixture (opt in with `pytestmark = pytest.mark.usefixtures("fast_graphs")`):
  grappler off for a module's few-step runs.
* Scheduling: setup.cfg gives xdist whole modules (``--dist loadfile``: a module's
  fixtures are built once) in collection order, and `pytest_collection_modifyitems` puts
  the modules with the longest end-to-end tests first (`LONGEST_MODULES_FIRST`), so that
  the two workers start with them and finish together.
"""
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from _pytest import pathlib as _pytest_pathlib  # noqa: E402  (pinned pytest, setup.py)
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# the modules with the most test time, longest first (every test's duration summed per
# module, 2-core CI run of 54cc95f on 2026-12-02: 159, 103, 84, 80, 77, 76, 76, 60, 54,
# 51, 44, 43, 41, 40, 38, 30, 30 s); the others follow in their usual order
LONGEST_MODULES_FIRST = (
    "test_train_loop.py", "test_benchmarks_smoke.py", "test_models.py", "test_oracle.py",
    "test_cc_loop.py", "test_train_step.py", "test_lee_loop.py", "test_lee_modes.py",
    "test_cc_step.py", "test_benchmark_lee_smoke.py", "test_flow_partner.py",
    "test_converters.py", "test_training_reliability.py", "test_lee_step.py",
    "test_export.py", "test_quantile.py", "test_quantile_summary.py",
)


def pytest_sessionstart(session):
    """Earlier finished sessions' base temporary directories are removed when a session
    starts, as pytest itself does only when one ends (setup.cfg keeps 1: this one): the
    suite writes several GB of checkpoints, and a machine that kept earlier sessions' runs
    filled its disk before this one ended. pytest's own cleanup, so a directory another
    running session holds (its lock is younger than pytest's lock timeout) is kept; not
    with --basetemp (nor in xdist workers, which get theirs from the controller)."""
    factory = session.config._tmp_path_factory  # pylint: disable=protected-access
    if factory._given_basetemp is not None:  # pylint: disable=protected-access
        return
    current = factory.getbasetemp()
    keep = max(1, int(session.config.getini("tmp_path_retention_count")))
    _pytest_pathlib.cleanup_numbered_dir(
        root=current.parent, prefix="pytest-", keep=keep,
        consider_lock_dead_if_created_before=time.time() - _pytest_pathlib.LOCK_TIMEOUT)


def pytest_collection_modifyitems(items):
    """Longest modules first (stable: each module's tests keep their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


_AS_TRAINING = object()


def two_cpu_mirrored_strategy(cross_device_ops=_AS_TRAINING):
    """A MirroredStrategy over the two logical CPUs configured above; skips the test when
    there are fewer. By default with ReductionToOneDevice, as training/distribution.py
    builds it on CPU devices; ``cross_device_ops=None`` gives TensorFlow's choice."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    if len(devices) < 2:
        pytest.skip("needs two logical CPU devices (tests/conftest.py)")
    if cross_device_ops is _AS_TRAINING:
        cross_device_ops = tf.distribute.ReductionToOneDevice()
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)
TINY_ENCODERS = (
    "build_depth_net.num_layers = 10",
    "build_pose_net.num_layers = 10",
    "build_flow_net.num_layers = 10",
    "build_moderator_net.num_layers = 10",
    "build_motion_net.num_layers = 10",
)
SHARED_DATA = pathlib.Path(
    os.environ.get("COOPNET_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")
)


@pytest.fixture
def shared_data():
    """Path of ../shared/data, or skip the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set COOPNET_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_gin_config():
    """Every test starts and ends with an empty gin config: bindings parsed by one test
    (e.g. a training run's `build_flow_net.num_layers = 18`) must not leak into the next
    one on the same xdist worker."""
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def fast_graphs():
    """Skip grappler's graph optimisations: they cost more than they save in few-step runs."""
    old = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": old.get("disable_meta_optimizer", False)})


def tiny_world(tmp_path_factory, size, frames_per_sequence):
    """A size x size synthetic world: one training and one validation sequence of
    `frames_per_sequence` frames, 4 objects, one shard each (seconds to generate)."""
    from coopnet_tf.data import synthetic  # pylint: disable=import-outside-toplevel
    return synthetic.ensure_synthetic_dataset(
        cache_dir=tmp_path_factory.mktemp("synthetic"), progress=False, height=size,
        width=size, num_sequences=1, num_val_sequences=1, num_test_sequences=0,
        frames_per_sequence=frames_per_sequence, num_objects=4, train_shards=1,
        eval_shards=1)

