"""Converter processes (issue 14, defect 5): workers die with a killed converter, a second
converter on the same output refuses, and a re-run takes over the dead one's lock (the
resume of the shards themselves is tested in test_converters.py)."""
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from coopnet_tf.data import convert

REPO = pathlib.Path(__file__).resolve().parents[1]

# A converter on 24 tiny synthetic items, 2 workers; each item takes SLEEP seconds.
SCRIPT = textwrap.dedent("""
    import os, sys, time
    from coopnet_tf.data import convert

    def encode(i):
        time.sleep(float(os.environ["SLEEP"]))
        return str(i).encode()

    if __name__ == "__main__":
        s = convert.write_sharded(list(range(24)), encode, sys.argv[1], num_shards=4,
                                  num_workers=2, show_progress=False)
        print(s.line(), s.total_examples, flush=True)
""")


def _start(script, out, sleep):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO), SLEEP=str(sleep))
    return subprocess.Popen([sys.executable, str(script), str(out)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(predicate, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and SIGKILL")
def test_killed_converter_takes_its_workers_and_a_second_one_refuses(tmp_path):
    script = tmp_path / "conv.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    lock = out / ("train" + convert.LOCK_SUFFIX)
    first = _start(script, out, sleep=60)  # never finishes by itself within the test
    workers = []
    try:
        # The lock lists the converter and, once started, its two workers.
        assert _wait_for(lambda: lock.exists() and len(lock.read_text().split()) == 3, 60), \
            first.stderr.read() if first.poll() is not None else "workers did not start"
        pids = [int(p) for p in lock.read_text().split()]
        assert pids[0] == first.pid
        workers = pids[1:]
        assert all(convert.process_alive(p) for p in workers)

        second = _start(script, out, sleep=0)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 1, err
        assert f"{lock}: another converter (pid {first.pid}) is writing this output" in err

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert _wait_for(lambda: not any(convert.process_alive(p) for p in workers), 5), \
            f"workers {workers} outlived the killed converter"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        for pid in workers:  # only left when the test fails
            if convert.process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert lock.exists()  # left by the kill: a re-run takes it over (no worker to wait for)
    with convert.ConverterLock(str(out), "train", wait_seconds=0):
        assert lock.read_text().split() == [str(os.getpid())]


def test_stale_lock_waits_for_listed_workers_then_refuses(tmp_path):
    # A lock file left by a dead converter that lists a live process (standing in for an
    # orphaned worker): the new converter must not touch the output.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "train.lock").write_text(f"999999999\n{sleeper.pid}\n")
        with pytest.raises(convert.ConversionError, match=rf"worker process\(es\) \[{sleeper.pid}\] "
                                                          r"of a previous converter are still running"):
            with convert.ConverterLock(str(tmp_path), "train", wait_seconds=0.5):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with convert.ConverterLock(str(tmp_path), "train", wait_seconds=0.5) as lock:  # now dead
        assert (tmp_path / "train.lock").read_text().split() == [str(os.getpid())]
        assert lock.path == str(tmp_path / "train.lock")
    assert not (tmp_path / "train.lock").exists()
