"""coopnet_tf/files.py: atomic writes leave either the old file or the complete new one."""
import os

import pytest

from coopnet_tf import files


def test_atomic_file_replaces_only_when_complete(tmp_path):
    path = tmp_path / "sub" / "result.json"
    with files.atomic_file(path) as f:
        f.write("first\n")
    assert path.read_text() == "first\n" and oct(os.stat(path).st_mode & 0o777) == "0o644"
    with pytest.raises(RuntimeError, match="killed"):
        with files.atomic_file(path) as f:
            f.write("half of the sec")
            raise RuntimeError("killed while writing")
    assert path.read_text() == "first\n"                    # the old file, untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]   # no temp
    with files.atomic_file(tmp_path / "b.npz", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.npz").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="mode must be"):
        with files.atomic_file(path, "a"):
            pass
