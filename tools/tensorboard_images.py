r"""Writes TensorBoard image summaries of a run as one PNG figure (for papers and notes).

    python tools/tensorboard_images.py --logdir=runs/synthetic/summaries \
        --tags=images/target,images/moderator_mask,images/gt_moving_mask \
        --output=cc_masks.png                      # the last step that has every tag

Rows: the images of a summary (``max_outputs`` per tag, the validation batch); columns:
the tags in the order given, each titled with its tag; the step is in the figure's title.
``--step`` picks a step (default: the last one at which every tag was written).
"""
import pathlib
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app, flags

import _common  # noqa: F401  (puts the repository on sys.path)

FLAGS = flags.FLAGS


def read_images(logdir: str, tags: Sequence[str],
                step: Optional[int] = None) -> Tuple[int, Dict[str, List]]:
    """(step, tag -> list of uint8 `[H, W, 3]` images) of the image summaries in `logdir`.

    Raises ValueError naming the directory when it holds no event file, a tag is missing,
    or no step has every tag."""
    import io  # pylint: disable=import-outside-toplevel

    import numpy as np  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
    if not list(pathlib.Path(logdir).glob("events.out.tfevents.*")):
        raise ValueError(f"{logdir}: no TensorBoard event file")
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    known = acc.Tags()["tensors"]
    missing = [t for t in tags if t not in known]
    if missing:
        images = sorted(t for t in known if t.startswith("images"))
        raise ValueError(f"{logdir}: no summary {missing}; image tags: {images}")
    events = {t: {e.step: e for e in acc.Tensors(t)} for t in tags}
    steps = set.intersection(*(set(e) for e in events.values()))
    if step is None:
        if not steps:
            raise ValueError(f"{logdir}: no step has every tag of {list(tags)}")
        step = max(steps)
    elif step not in steps:
        raise ValueError(f"{logdir}: step {step} lacks some of {list(tags)}; steps with all: "
                         f"{sorted(steps)}")
    out = {}
    for tag in tags:
        # an image summary's tensor: [width, height, encoded image 1, encoded image 2, ...]
        blobs = events[tag][step].tensor_proto.string_val[2:]
        out[tag] = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]
    return step, out


def save_figure(path: str, step: int, images: Dict[str, List], title: str = "") -> str:
    """Rows = image index, columns = tags (titled)."""
    from coopnet_tf.eval import plots  # pylint: disable=import-outside-toplevel
    plt = plots.pyplot()
    tags = list(images)
    rows = max(len(v) for v in images.values())
    h, w = images[tags[0]][0].shape[:2]
    fig, axes = plt.subplots(rows, len(tags), squeeze=False,
                             figsize=(0.9 + 2.4 * len(tags) * w / max(h, 1) / 3, 0.5 + 0.9 * rows))
    for c, tag in enumerate(tags):
        for r in range(rows):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r < len(images[tag]):
                ax.imshow(images[tag][r], interpolation="nearest")
        axes[0][c].set_title(tag, fontsize=7)
    return plots.save_figure(fig, path, dpi=130, title=f"{title} step {step}".strip(),
                             title_size=8)

def define_flags():
    """The command line's flags, defined only when run as a program (so that tests can
    import this module beside other absl tools)."""
    flags.DEFINE_string("logdir", None, "Directory of the event files (a run's summaries/).")
    flags.DEFINE_list("tags", None, "Image summary tags, e.g. images/target,images/v_mask.")
    flags.DEFINE_integer("step", None, "Step to show; default: the last step with every tag.")
    flags.DEFINE_string("output", None, "PNG file to write.")
    flags.DEFINE_string("title", None, "Figure title (default: the logdir); the step is appended.")
    flags.mark_flags_as_required(["logdir", "tags", "output"])


def main(argv):
    del argv
    try:
        step, images = read_images(FLAGS.logdir, FLAGS.tags, FLAGS.step)
    except ValueError as err:
        sys.exit(f"tensorboard_images: {err}")
    title = FLAGS.logdir if FLAGS.title is None else FLAGS.title
    print(save_figure(FLAGS.output, step, images, title=title))


if __name__ == "__main__":
    define_flags()
    app.run(main)
