"""conftest.LONGEST_MODULES names modules that exist (a renamed module would silently
lose its place at the front of the `-n 2` schedule)."""
import pathlib

import conftest


def test_longest_modules_exist_once():
    here = pathlib.Path(__file__).parent
    assert len(set(conftest.LONGEST_MODULES)) == len(conftest.LONGEST_MODULES)
    missing = [m for m in conftest.LONGEST_MODULES if not (here / m).is_file()]
    assert not missing, missing
