"""The README is assembled from docs/readme/ and names the exact command CI runs."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_is_assembled_from_its_sections():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "build_readme.py"),
                             "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    test_command = re.search(r"python3 -m pytest [^\n`]*", readme).group(0).strip()
    ci_command = re.search(r"python3 -m pytest [^\n]*", ci).group(0).strip()
    assert test_command == ci_command == "python3 -m pytest -n 2 -q tests"
