"""Atomic file writes: a temporary file beside the target, renamed over it when complete,
so that a failure (or a kill) never leaves a truncated file under the final name."""
import contextlib
import os
import tempfile
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_file(path, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file in `path`'s directory (created if needed) for writing
    (``mode`` "w" text UTF-8 or "wb"); on a clean exit it is made world-readable and
    renamed over `path`; on an exception it is removed and `path` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp_", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
