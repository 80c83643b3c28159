r"""Per-class 3-D object heights of KITTI object labels: the height priors of Lee et al.'s L_h.

    python3 tools/kitti_class_heights.py --label_dir=$KITTI_OBJECT/training/label_2 \
        --output=class_heights.gin

Reads every ``*.txt`` of --label_dir: KITTI object-label lines (object devkit), parsed with
the conventions of `coopnet_tf/data/boxes.py` (space separated, blank lines skipped,
``DontCare`` dropped, class names of `boxes.CLASSES`). A line has 15 fields, 16 with a
score: ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]``; h, the
9th, is the object's 3-D height in metres. Prints per class the count, mean and standard
deviation (population, ddof = 0) of h, then the gin binding of the means in metres (3
decimals), ``lee.class_heights = {'Car': ..., ...}`` (docs/lee.md, L_h). --output writes that
line to a file (a temporary file in the same directory renamed over it). Bad input exits
with a message naming the file and the line.
"""
import math
import pathlib
import sys
from typing import Dict, List, Tuple

from absl import app, flags

import _common  # noqa: F401  (puts the repository on sys.path)

FLAGS = flags.FLAGS

LABEL_FIELDS = 15      # KITTI object labels; a 16th field is a detection score
HEIGHT_FIELD = 8       # h, the 9th field


def read_heights(path: str) -> List[Tuple[int, float]]:
    """(class id of `boxes.CLASSES`, h in m) of each object line of one label file.

    Raises:
      boxes.BoxFormatError: unreadable file, a line without 15 or 16 fields, an unknown
        class, or an h that is not a number > 0 (file and line named).
    """
    from coopnet_tf.data import boxes  # pylint: disable=import-outside-toplevel
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise boxes.BoxFormatError(f"{path}: unreadable label file ({err})") from err
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == boxes.KITTI_DONT_CARE:
            continue
        where = f"{path}:{number}"
        if len(fields) not in (LABEL_FIELDS, LABEL_FIELDS + 1):
            raise boxes.BoxFormatError(
                f"{where}: a KITTI object label line has {LABEL_FIELDS} fields (type truncated "
                "occluded alpha x1 y1 x2 y2 h w l x y z rotation_y) or 16 with a score, got "
                f"{len(fields)}: {line.strip()!r}")
        cls = boxes.class_id(fields[0], where)
        try:
            height = float(fields[HEIGHT_FIELD])
        except ValueError as err:
            raise boxes.BoxFormatError(f"{where}: h (field 9) is not a number in "
                                       f"{line.strip()!r}") from err
        if not math.isfinite(height) or height <= 0.0:
            raise boxes.BoxFormatError(
                f"{where}: h (field 9) = {fields[HEIGHT_FIELD]} is not a height > 0 (detection "
                "results without 3-D sizes carry -1; use ground-truth labels)")
        out.append((cls, height))
    return out


def class_statistics(label_dir: str, progress: bool = False) -> Dict[str, Tuple[int, float, float]]:
    """class name -> (count, mean h, std h) over the ``*.txt`` files of `label_dir`, in the
    order of `boxes.CLASSES`, classes with at least one object only.

    Raises:
      ValueError: `label_dir` is not a directory, holds no ``.txt`` file or no object, or
        a file is bad (`read_heights`).
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    from coopnet_tf.data import boxes  # pylint: disable=import-outside-toplevel
    root = pathlib.Path(label_dir)
    if not root.is_dir():
        raise ValueError(f"{label_dir}: not a directory (expected KITTI's label_2/)")
    files = sorted(root.glob("*.txt"))
    if not files:
        raise ValueError(f"{label_dir}: no .txt label file")
    heights = {}
    for path in tqdm(files, desc="label files", unit="file", disable=not progress):
        for cls, height in read_heights(str(path)):
            heights.setdefault(cls, []).append(height)
    if not heights:
        raise ValueError(f"{label_dir}: {len(files)} label files but no object (only "
                         "DontCare or blank lines)")
    return {boxes.CLASSES[c]: (len(heights[c]), float(np.mean(heights[c])),
                               float(np.std(heights[c]))) for c in sorted(heights)}


def gin_line(stats: Dict[str, Tuple[int, float, float]]) -> str:
    """``lee.class_heights = {'Car': 1.526, ...}`` of the means (m, 3 decimals)."""
    items = ", ".join(f"'{name}': {mean:.3f}" for name, (_, mean, _) in stats.items())
    return f"lee.class_heights = {{{items}}}"


def define_flags():
    """The command line's flags, defined only when run as a program (so that tests can
    import this module beside other absl tools)."""
    flags.DEFINE_string("label_dir", None, "Directory of KITTI object-label files (label_2/*.txt).")
    flags.DEFINE_string("output", "", "File to write the gin line to (empty: print only).")
    flags.DEFINE_bool("progress", True, "Progress bar over the files.")
    flags.mark_flag_as_required("label_dir")


def main(argv):
    del argv
    from coopnet_tf import files  # pylint: disable=import-outside-toplevel
    try:
        stats = class_statistics(FLAGS.label_dir, progress=FLAGS.progress)
    except ValueError as err:
        sys.exit(f"kitti_class_heights: error: {err}")
    print(f"{'class':<16}{'count':>8}{'mean h (m)':>12}{'std (m)':>10}")
    for name, (count, mean, std) in stats.items():
        print(f"{name:<16}{count:>8d}{mean:>12.3f}{std:>10.3f}")
    line = gin_line(stats)
    print(line, flush=True)
    if FLAGS.output:
        with files.atomic_file(FLAGS.output) as f:
            f.write(line + "\n")
        print(f"wrote {FLAGS.output}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
