"""`python tools/X.py --help` lists each tool's own flags, the required ones included
(issue 14, defect 11: flags defined in tools/_common.py were only under --helpfull)."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
WRITER = ["output_dir", "prefix", "num_shards", "examples_per_shard", "num_workers", "overwrite"]
IMAGE = ["resize", "image_format", "jpeg_quality", "resample"]

# tool -> (required flags, other flags of its own that --help must list)
TOOLS = {
    "convert_kitti_raw": (["data_path", "output_dir"], ["split_file", "cameras"] + WRITER + IMAGE),
    "convert_kitti_odometry": (["data_path", "output_dir"], ["sequences", "camera"] + WRITER + IMAGE),
    "convert_cityscapes": (["data_path", "output_dir"], ["splits", "crop_bottom"] + WRITER + IMAGE),
    "convert_kitti_flow": (["data_path", "output_dir"], ["split", "calib_dir"] + WRITER),
    "export_gt_depth": (["data_path", "split_file", "output"], ["duplicate_index"]),
    "make_synthetic": (["output_dir"], ["height", "width", "seed"]),
    "convert_torchvision_weights": (["output"], ["num_layers", "pth"]),
    "tensorboard_images": (["logdir", "tags", "output"], ["step", "title"]),
    "kitti_class_heights": (["label_dir"], ["output", "progress"]),
}


def test_every_tool_is_covered():
    assert sorted(TOOLS) == sorted(p.stem for p in (REPO / "tools").glob("*.py")
                                   if not p.stem.startswith("_"))


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help_lists_required_and_own_flags(tool):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), "--help"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "flags:" in proc.stdout, proc.stderr  # (absl's --help exits with status 1)
    listed = set(re.findall(r"^\s+--(?:\[no\])?(\w+):", proc.stdout, re.MULTILINE))
    required, others = TOOLS[tool]
    missing = [f for f in required + others if f not in listed]
    assert not missing, f"{tool} --help does not list {missing}:\n{proc.stdout}"


# tools whose functions the tests import (in one pytest process, beside other absl code)
IMPORTED_BY_TESTS = ("tensorboard_images", "kitti_class_heights")


def test_imported_tools_define_no_flags_on_import():
    """Their flags are defined only when run as programs: two tools both defining
    --output made the collection of the second test module fail (DuplicateFlagError)."""
    code = ("import sys; sys.path.insert(0, 'tools'); from absl import flags\n"
            + "".join(f"import {m}\n" for m in IMPORTED_BY_TESTS)
            + "print(sorted(f for f in ('output', 'logdir', 'label_dir') if f in flags.FLAGS))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]
