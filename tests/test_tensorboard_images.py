"""tools/tensorboard_images.py: the images it reads back are the ones the summaries wrote
(PNG round trip, exact at 8 bits), at the last step that has every tag; clear errors."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import tensorboard_images  # noqa: E402  pylint: disable=wrong-import-position


def _write(logdir, rng):
    """Two tags at steps 1 and 2 (tag b only at step 1): uint8-exact float images."""
    written = {}
    with tf.summary.create_file_writer(str(logdir)).as_default():
        for step, tags in ((1, ("images/a", "images/b")), (2, ("images/a",))):
            for tag in tags:
                img = rng.integers(0, 256, (2, 5, 7, 3)).astype(np.float32) / 255.0
                tf.summary.image(tag, img, step=step, max_outputs=2)
                written[(tag, step)] = np.round(img * 255).astype(np.uint8)
    return written


def test_reads_back_the_written_images(tmp_path):
    written = _write(tmp_path / "logs", np.random.default_rng(0))
    step, images = tensorboard_images.read_images(str(tmp_path / "logs"), ["images/a", "images/b"])
    assert step == 1                                 # the last step with every tag
    for tag in ("images/a", "images/b"):
        assert len(images[tag]) == 2
        np.testing.assert_array_equal(np.stack(images[tag]), written[(tag, 1)])
    step, images = tensorboard_images.read_images(str(tmp_path / "logs"), ["images/a"])
    assert step == 2
    np.testing.assert_array_equal(np.stack(images["images/a"]), written[("images/a", 2)])
    path = tensorboard_images.save_figure(str(tmp_path / "fig.png"), step, images)
    assert pathlib.Path(path).stat().st_size > 0


def test_errors_name_the_directory_and_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no TensorBoard event file"):
        tensorboard_images.read_images(str(tmp_path), ["images/a"])
    _write(tmp_path / "logs", np.random.default_rng(1))
    with pytest.raises(ValueError, match=r"no summary \['images/c'\].*images/a"):
        tensorboard_images.read_images(str(tmp_path / "logs"), ["images/c"])
    with pytest.raises(ValueError, match="step 2 lacks"):
        tensorboard_images.read_images(str(tmp_path / "logs"), ["images/a", "images/b"], step=2)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "tensorboard_images.py"),
                           f"--logdir={tmp_path}", "--tags=images/a", f"--output={tmp_path}/x.png"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and f"{tmp_path}: no TensorBoard event file" in proc.stderr
