"""2-D object boxes as data: the class table, the two box-file formats, NumPy transforms.

A box set is a float32 array [n, 6] of rows (x1, y1, x2, y2, score, class) in pixels of
an image, the codebase's pixel convention (pixel centres at integer coordinates, so the
image covers [-0.5, W - 0.5] x [-0.5, H - 0.5]); x2 >= x1, y2 >= y1; score in [0, 1]
(1 for ground-truth labels); class = an index of `CLASSES`. Records store these rows
(`specs.FEATURE_BOX_COUNT` / `FEATURE_BOX_VALUES`); the pipeline transforms them with the
frames (`augment.resize_boxes` / `flip_boxes` / `clip_boxes`), the same maps as here.

Files (one per frame, `read_boxes`):

* ``.txt``: KITTI object-label lines (KITTI object devkit, `label_2/*.txt`), space separated:
  ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]``. Only the
  type, the 2-D box and the optional 16th field (score, as in KITTI detection results) are
  read; lines need at least the first 8 fields. ``DontCare`` lines are dropped; blank lines
  are skipped. The box is taken as it is (KITTI's 0-based pixel coordinates are ours).
* ``.json``: ``{"boxes": [...]}`` or a bare list; each entry either a list
  ``[x1, y1, x2, y2]``, ``[x1, y1, x2, y2, score]``, ``[x1, y1, x2, y2, score, class]`` or a
  dict ``{"box": [x1, y1, x2, y2], "score": s, "class": c}`` (``"bbox"`` and ``"label"``
  are accepted for ``"box"`` and ``"class"``). score defaults to 1, class to ``Misc``;
  class is a name of `CLASSES` (case-insensitive) or its index. Coordinates are absolute
  x-y-x-y pixels in the *corner* convention of detectors (pixel i spans [i, i + 1), the
  image [0, W]): torchvision detection models (``boxes``/``scores``/``labels``),
  detectron2 ``Instances.pred_boxes`` (XYXY_ABS), mmdetection ``bboxes`` map directly once
  their COCO labels are mapped to names of `CLASSES` (person -> Pedestrian, bicycle ->
  Cyclist, car -> Car, truck -> Truck, ...). They are shifted by -0.5 px to our convention;
  a top-level ``"pixel_origin": "center"`` says the numbers already are in ours.

Bad input raises `BoxFormatError` naming the file and the line (KITTI) or entry (JSON).
"""
import json
import os
from typing import Optional

import numpy as np

from coopnet_tf import specs

# The class table: index = the class id stored in records and batches. KITTI's object
# types (DontCare is dropped).
CLASSES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")
CLASS_IDS = {name.lower(): i for i, name in enumerate(CLASSES)}
MISC = CLASS_IDS["misc"]
KITTI_DONT_CARE = "DontCare"


class BoxFormatError(ValueError):
    """A box file that does not follow its format (the message names file and line)."""


def empty_boxes() -> np.ndarray:
    """float32 [0, 6]."""
    return np.zeros((0, specs.BOX_FIELDS), np.float32)


def class_id(value, where: str) -> int:
    """The `CLASSES` index of a class name (case-insensitive) or of an integer id."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key not in CLASS_IDS:
            raise BoxFormatError(f"{where}: unknown class {value!r}; expected one of {CLASSES}")
        return CLASS_IDS[key]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if not 0 <= value < len(CLASSES):
            raise BoxFormatError(f"{where}: class id {value} outside 0..{len(CLASSES) - 1} "
                                 f"(the table {CLASSES})")
        return int(value)
    raise BoxFormatError(f"{where}: class must be a name or an integer id, got {value!r}")


def _check_row(row, where: str) -> np.ndarray:
    row = np.asarray(row, np.float64)
    if not np.all(np.isfinite(row)):
        raise BoxFormatError(f"{where}: non-finite value in {row.tolist()}")
    x1, y1, x2, y2, score = row[:5]
    if x2 < x1 or y2 < y1:
        raise BoxFormatError(f"{where}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has x2 < x1 or "
                             "y2 < y1 (expected x1 y1 x2 y2)")
    if not 0.0 <= score <= 1.0:
        raise BoxFormatError(f"{where}: score {score:g} outside [0, 1]")
    return row


def _stack(rows) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, specs.BOX_FIELDS) if rows else empty_boxes()


def parse_kitti_labels(text: str, source: str = "<string>") -> np.ndarray:
    """Boxes [n, 6] of KITTI object-label lines (see the module docstring)."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{source}:{number}"
        if fields[0] == KITTI_DONT_CARE:
            continue
        if len(fields) < 8:
            raise BoxFormatError(f"{where}: a KITTI label line needs at least 8 fields "
                                 "(type truncated occluded alpha x1 y1 x2 y2 ...), got "
                                 f"{len(fields)}: {line.strip()!r}")
        try:
            x1, y1, x2, y2 = (float(v) for v in fields[4:8])
            score = float(fields[15]) if len(fields) > 15 else 1.0
        except ValueError as err:
            raise BoxFormatError(f"{where}: not a number in {line.strip()!r} ({err})") from err
        rows.append(_check_row([x1, y1, x2, y2, score, class_id(fields[0], where)], where))
    return _stack(rows)


def parse_json_boxes(text: str, source: str = "<string>") -> np.ndarray:
    """Boxes [n, 6] of the per-frame JSON format (see the module docstring)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BoxFormatError(f"{source}:{err.lineno}: invalid JSON ({err.msg})") from err
    origin = "corner"
    if isinstance(data, dict):
        if "boxes" not in data:
            raise BoxFormatError(f"{source}: a JSON object needs a \"boxes\" list")
        origin = data.get("pixel_origin", "corner")
        if origin not in ("corner", "center"):
            raise BoxFormatError(f"{source}: pixel_origin must be \"corner\" or \"center\", "
                                 f"got {origin!r}")
        data = data["boxes"]
    if not isinstance(data, list):
        raise BoxFormatError(f"{source}: expected a list of boxes, got {type(data).__name__}")
    shift = -0.5 if origin == "corner" else 0.0
    rows = []
    for i, entry in enumerate(data):
        where = f"{source}: box {i}"
        score, cls = 1.0, MISC
        if isinstance(entry, dict):
            box = entry.get("box", entry.get("bbox"))
            score = entry.get("score", 1.0)
            cls = entry.get("class", entry.get("label", MISC))
        elif isinstance(entry, list) and 4 <= len(entry) <= 6:
            box = entry[:4]
            if len(entry) > 4:
                score = entry[4]
            if len(entry) > 5:
                cls = entry[5]
                if isinstance(cls, float) and cls.is_integer():
                    cls = int(cls)
        else:
            raise BoxFormatError(f"{where}: expected [x1, y1, x2, y2(, score(, class))] or "
                                 f"{{\"box\": [...], \"score\": ..., \"class\": ...}}, got {entry!r}")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise BoxFormatError(f"{where}: box must be 4 numbers [x1, y1, x2, y2], got {box!r}")
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            raise BoxFormatError(f"{where}: score must be a number, got {score!r}")
        row = [v + shift for v in box] + [float(score), class_id(cls, where)]
        rows.append(_check_row(row, where))
    return _stack(rows)


def read_boxes(path: str) -> np.ndarray:
    """Boxes [n, 6] of one frame's file: ``.txt`` KITTI labels or ``.json``.

    Raises:
      BoxFormatError: unknown extension, unreadable file, or bad content (file and line named).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".txt", ".json"):
        raise BoxFormatError(f"{path}: box files are .txt (KITTI labels) or .json, got {ext!r}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise BoxFormatError(f"{path}: unreadable box file ({err})") from err
    return parse_kitti_labels(text, path) if ext == ".txt" else parse_json_boxes(text, path)


# ------------------------------------------------------------------ transforms (NumPy) ----
# The same maps as augment.resize_boxes / flip_boxes / clip_boxes (the pipeline's TF ops).

def scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Boxes of an image resized by (sx, sy) = (W'/W, H'/H): x' = (x + 0.5) sx - 0.5.

    This is where image content moves under a resize (PIL's and tf.image.resize's
    half-pixel sampling): the image [-0.5, W - 0.5] maps onto [-0.5, W' - 0.5]. (K is
    scaled without the half-pixel term, docs/decisions.md C1; the two differ by
    0.5 (s - 1) px of position, box sizes agree.)
    """
    out = np.array(boxes, np.float32).reshape(-1, specs.BOX_FIELDS)
    scale = np.array([sx, sy, sx, sy], np.float32)
    out[:, :4] = (out[:, :4] + 0.5) * scale - 0.5
    return out


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes of the image mirrored left-right: x -> W - 1 - x, so [x1, x2] -> [W-1-x2, W-1-x1]."""
    out = np.array(boxes, np.float32).reshape(-1, specs.BOX_FIELDS)
    x1 = out[:, 0].copy()
    out[:, 0] = width - 1.0 - out[:, 2]
    out[:, 2] = width - 1.0 - x1
    return out


def clip_boxes(boxes: np.ndarray, height: int, width: int,
               min_size: float = 0.0) -> np.ndarray:
    """Boxes clipped to the image [-0.5, W - 0.5] x [-0.5, H - 0.5]; boxes whose clipped
    width or height is <= `min_size` (e.g. entirely outside the image) are dropped."""
    out = np.array(boxes, np.float32).reshape(-1, specs.BOX_FIELDS)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], -0.5, width - 0.5)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], -0.5, height - 0.5)
    keep = (out[:, 2] - out[:, 0] > min_size) & (out[:, 3] - out[:, 1] > min_size)
    return out[keep]


def stored_boxes(boxes: np.ndarray, native_size, kept_rows: Optional[int],
                 stored_size) -> np.ndarray:
    """Boxes of a native frame carried to the stored image of a converter: bottom crop to
    `kept_rows` rows (None = none; the top-left origin stays), then resize to `stored_size`
    (height, width), then clipped (`clip_boxes`)."""
    height, width = native_size
    if kept_rows is not None and kept_rows != height:
        boxes = clip_boxes(boxes, kept_rows, width)
        height = kept_rows
    out_h, out_w = stored_size
    if (out_h, out_w) != (height, width):
        boxes = scale_boxes(boxes, out_w / width, out_h / height)
    return clip_boxes(boxes, out_h, out_w)
