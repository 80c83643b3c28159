"""Shared helpers of the benchmark scripts (`reproduce_synthetic.py`, `throughput.py`).

* `run_metadata()`: machine, CPU/GPU, library versions, date, git commit, the command line
  and the load average — stored in every result JSON so that a number can be traced back
  to where and how it was measured;
* `markdown_table()` / `fmt()`: the markdown tables the scripts print and write;
* `write_json()` (atomic), `median_time()` (timing with warm-up), `mean_spread()`;
* `run_dir_lock()`: one process at a time trains a run directory;
* `json_from_child()`: a measurement in a fresh interpreter, its last stdout line as JSON.

No TensorFlow import at module level (the smoke test imports this cheaply).
"""
import contextlib
import datetime
import json
import math
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def ensure_repo_on_path() -> None:
    """Lets the scripts run from a clone that was not pip-installed."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


@contextlib.contextmanager
def run_dir_lock(run_dir: str) -> Iterator[None]:
    """Holds an exclusive lock on run directory `run_dir` (the file ``<run_dir>.lock``
    beside it, which survives the directory being replaced by a copy). A second process
    asking for the same run waits until the first releases it, saying whom it waits for,
    so that it then sees the run's progress instead of training it again. The lock is an
    ``fcntl.flock``: the kernel releases it when its holder dies (no stale lock after a
    kill); it is reliable on a local file system, not across hosts on NFS."""
    import fcntl  # pylint: disable=import-outside-toplevel  (POSIX only)
    path = run_dir.rstrip(os.sep) + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            print(f"[lock] {run_dir}: in use by {holder}; waiting", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {platform.node()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def json_from_child(args: Sequence[str]) -> object:
    """Runs ``python args...`` in a fresh interpreter (TensorFlow's C++ logging quiet) and
    returns the JSON of its last stdout line; a failing child raises CalledProcessError
    (its stdout and stderr attached)."""
    proc = subprocess.run([sys.executable] + list(args), check=True, capture_output=True,
                          text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10, check=False)
        commit = out.stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=False)
        if commit and dirty.stdout.strip():
            commit += " (+ uncommitted changes)"
        return commit
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_names() -> List[str]:
    """Names of the visible GPUs (empty on a CPU-only machine). Imports TensorFlow."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    names = []
    for dev in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(dev)
            names.append(details.get("device_name", dev.name))
        except (ValueError, RuntimeError):
            names.append(dev.name)
    return names


def device_tag() -> str:
    """``gpu`` or ``cpu``: the suffix of a result file, so that both can be committed."""
    return "gpu" if gpu_names() else "cpu"


def run_metadata(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Where, when and how a benchmark ran."""
    versions = {"python": platform.python_version()}
    for mod in ("tensorflow", "keras", "numpy", "gin"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "?")
        except ImportError:
            versions[mod] = None
    argv = list(sys.argv if argv is None else argv)
    try:
        gpus = gpu_names()
    except Exception:  # pylint: disable=broad-except
        gpus = []
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in argv),
        "git_commit": _git_commit(),
        "machine": {
            "hostname_hash": abs(hash(platform.node())) % 10_000,
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "gpus": gpus,
        },
        "versions": versions,
        "load_average_start": load_average(),
    }


def finish_metadata(meta: Dict[str, object], start_time: float) -> Dict[str, object]:
    meta = dict(meta)
    meta["load_average_end"] = load_average()
    meta["wall_seconds"] = round(time.time() - start_time, 1)
    return meta


def write_json(path, payload) -> str:
    """Atomic JSON write (NaN written as null)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(json_ready(payload), f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return str(path)


def json_ready(x):
    """What json.load would give back for x: dicts with str keys, lists, Python scalars
    (NumPy scalars and arrays converted), non-finite floats as None."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):   # NumPy
        x = x.tolist()
        if isinstance(x, list):
            return json_ready(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def mean_spread(values: Iterable[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean, sample std and half-range of the finite values (None when there are none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "half_range": None, "n": 0}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "half_range": (max(vals) - min(vals)) / 2.0,
        "n": len(vals),
        "values": vals,
    }


def fmt_mean_spread(ms: Dict[str, Optional[float]], digits: int = 4) -> str:
    if ms.get("mean") is None:
        return "n/a"
    if ms.get("n", 0) > 1:
        return f"{fmt(ms['mean'], digits)} ± {fmt(ms['half_range'], 2)}"
    return fmt(ms["mean"], digits)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return "\n".join(lines)


def sync(x) -> None:
    """Forces the values of (nested) tensors (waits for the device)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    for t in tf.nest.flatten(x):
        if hasattr(t, "numpy"):
            t.numpy()


def median_time(fn: Callable[[], object], warmup: int = 1, iters: int = 3) -> Dict[str, object]:
    """Calls ``fn`` ``warmup`` times untimed (the first call's time is reported as
    ``first_call_s``: tracing / compilation), then ``iters`` timed calls."""
    first = None
    for i in range(warmup):
        start = time.perf_counter()
        sync(fn())
        if i == 0:
            first = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times,
            "first_call_s": first}
