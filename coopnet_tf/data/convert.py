"""Shared machinery of the dataset converters (`tools/convert_*.py`).

A converter turns a dataset into a deterministic list of picklable *items* (one per
output example) and hands it, with a module-level *encode function*, to
`write_sharded`, which

* assigns item `i` to shard `i % num_shards` (deterministic, so a re-run writes the
  same shards with the same contents),
* writes each shard as `<output_dir>/<prefix>-SSSSS-of-NNNNN.tfrecord`, first under
  `<name>.tmp` and then `os.replace`d to its final name: a shard under its final name
  is always complete, and an exception removes the `.tmp`,
* skips shards that already exist under their final name (resume after a crash or a
  Ctrl-C; leftover `.tmp` files are discarded and rewritten),
* runs the shards in `num_workers` processes (spawned, so TensorFlow is never forked)
  that exit when the converter dies, even by `kill -9` (Linux parent-death signal, plus a
  parent-liveness check),
* holds `<output_dir>/<prefix>.lock` while it runs (`ConverterLock`): a second converter
  on the same output refuses; a lock left by a killed converter is taken over once its
  workers are gone,
* shows a tqdm progress bar (snippets, rate, ETA) and ends with the summary line
  `examples=N shards=N skipped=N seconds=S` (examples and shards written by this run,
  shards skipped because they were already complete),
* writes `<output_dir>/<prefix>.manifest.json` (options, per-shard example counts); a
  re-run with different options into the same directory is refused unless
  `overwrite=True`.

Images of a snippet are described by `SnippetSource` and encoded by `encode_snippet`
(decode, size check, optional bottom crop, optional resize, PNG/JPEG encode, K adjusted
to the stored image, optional static-snippet filter), then serialised with
`coopnet_tf.data.records.serialize_snippet`. Optional 2-D boxes: `attach_boxes` gives each
frame its box file under a boxes directory (`box_file`: the frame's path relative to the
data root, extension .txt or .json; formats in `data/boxes.py`); `encode_snippet` carries
them through the same crop and resize as the frames (`boxes.stored_boxes`).

TensorFlow is imported lazily (inside the functions that write records), so that the
converters' `--help` and their input checks run without it.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import fcntl
import functools
import glob
import io
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from coopnet_tf.data import boxes as boxes_lib

MANIFEST_SUFFIX = ".manifest.json"
TMP_SUFFIX = ".tmp"  # the manifest's temporary (shards: records.atomic_writers)

_RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


class ConversionError(Exception):
    """A problem with the input data: names the file and the layout it expected."""


# --------------------------------------------------------------------------- sizes / K


def parse_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """Parses "HEIGHTxWIDTH" (e.g. "128x416") into (128, 416); "" or None -> None."""
    if not text:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise ValueError(f"size must be HEIGHTxWIDTH, e.g. 128x416; got {text!r}") from err
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return height, width


def scale_intrinsics(k: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K of an image resized by (sx, sy): fx, cx times sx; fy, cy times sy (docs/decisions.md C1).

    The half-pixel term is ignored, as in Monodepth2 / SfMLearner / SC-SfM.
    """
    k = np.array(k, np.float64).reshape(3, 3)
    k[0, :] *= sx
    k[1, :] *= sy
    k[2, :] = (0.0, 0.0, 1.0)
    return k


def crop_intrinsics(k: np.ndarray, offset_x: float, offset_y: float) -> np.ndarray:
    """K of a crop whose top-left corner is (offset_x, offset_y): cx, cy shift."""
    k = np.array(k, np.float64).reshape(3, 3)
    k[0, 2] -= offset_x
    k[1, 2] -= offset_y
    return k


def check_intrinsics(k: np.ndarray, source: str, size: Optional[Tuple[int, int]] = None) -> None:
    """ConversionError naming `source` (the calibration file and key) unless K is usable:
    finite, fx > 0, fy > 0, and the principal point inside the (height, width) image when
    `size` is known (else cx, cy > 0)."""
    k = np.asarray(k, np.float64).reshape(3, 3)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    problem = None
    if not np.all(np.isfinite(k)):
        problem = "non-finite values"
    elif fx <= 0 or fy <= 0:
        problem = "focal lengths must be > 0"
    elif size is not None and not (0 < cx < size[1] and 0 < cy < size[0]):
        problem = f"principal point outside the {size[0]}x{size[1]} (HxW) image"
    elif size is None and not (cx > 0 and cy > 0):
        problem = "principal point must be > 0"
    if problem:
        raise ConversionError(f"degenerate intrinsics in {source}: fx={fx:g} fy={fy:g} cx={cx:g} "
                              f"cy={cy:g} ({problem})")


# --------------------------------------------------------------------------- images


def load_rgb(path: str, hint: str = "") -> Image.Image:
    """Opens and fully decodes an image as RGB; ConversionError naming it otherwise."""
    if not os.path.isfile(path):
        raise ConversionError(f"missing image {path}" + (f"; expected layout: {hint}" if hint else ""))
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise ConversionError(f"unreadable image {path}: {err}") from err


def encode_image(image: Image.Image, image_format: str, jpeg_quality: int = 95) -> bytes:
    """PNG or JPEG bytes of a PIL image (deterministic)."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=6)
    elif image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How the frames of a snippet are stored.

    Attributes:
      resize: (height, width) of the stored frames, or None to keep the (cropped) native size.
      image_format: "png" (lossless) or "jpeg".
      jpeg_quality: JPEG quality when image_format is "jpeg".
      resample: PIL filter for the resize: lanczos (default, antialiased like
        Monodepth2's PIL ANTIALIAS), bilinear, bicubic, area, nearest.
      static_threshold: drop a snippet when the mean over its two sources of
        mean|I_t - I_s| (grey, [0, 1], at the stored size) is below this; None = keep all.
    """

    resize: Optional[Tuple[int, int]] = None
    image_format: str = "png"
    jpeg_quality: int = 95
    resample: str = "lanczos"
    static_threshold: Optional[float] = None

    def __post_init__(self):
        if self.image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpeg', got {self.image_format!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")


@dataclasses.dataclass(frozen=True)
class SnippetSource:
    """Everything needed to build one snippet record (picklable, no image data).

    Attributes:
      frame_paths: 3 image files in temporal order (t-1, t, t+1).
      intrinsics: 9 floats, row-major K of the native (uncropped, unresized) image.
      sequence_id: written to the record.
      frame_id: index of the target frame in its sequence.
      expected_size: (height, width) every native frame must have, or None (then the
        three frames only have to agree with each other).
      crop_bottom: fraction of rows removed at the bottom before resizing (Cityscapes
        ego-car hood: 0.25); rows kept = int(height * (1 - crop_bottom)). K unchanged.
      layout: the expected layout, quoted in error messages.
      gt_pose: optional 32 floats, [2, 4, 4] T_target->source (KITTI odometry poses).
      box_paths: optional 3 box files (one per frame, `data/boxes.py` formats) with boxes
        in pixels of the native frames; None = a record without boxes.
    """

    frame_paths: Tuple[str, str, str]
    intrinsics: Tuple[float, ...]
    sequence_id: str
    frame_id: int
    expected_size: Optional[Tuple[int, int]] = None
    crop_bottom: float = 0.0
    layout: str = ""
    gt_pose: Optional[Tuple[float, ...]] = None
    box_paths: Optional[Tuple[str, str, str]] = None


BOX_EXTENSIONS = (".txt", ".json")


def box_file(frame_path: str, data_root: str, boxes_dir: str) -> str:
    """The box file of a frame: <boxes_dir>/<frame path relative to data_root, extension
    .txt (KITTI labels) or .json>; e.g. ROOT/2011_09_26/<drive>/image_02/data/0000000005.png
    -> BOXES/2011_09_26/<drive>/image_02/data/0000000005.txt.

    Raises:
      ConversionError: neither or both of the two files exist (both paths named), or the
        frame is not under data_root.
    """
    rel = os.path.relpath(os.path.abspath(frame_path), os.path.abspath(data_root))
    if rel.startswith(os.pardir):
        raise ConversionError(f"frame {frame_path} is not under the data root {data_root}; "
                              "cannot name its box file")
    stem = os.path.join(boxes_dir, os.path.splitext(rel)[0])
    found = [stem + ext for ext in BOX_EXTENSIONS if os.path.isfile(stem + ext)]
    if len(found) != 1:
        raise ConversionError(
            (f"missing box file for frame {frame_path}: expected {stem}.txt (KITTI labels) or "
             f"{stem}.json (an empty file = no boxes)") if not found else
            f"two box files for frame {frame_path}: {found[0]} and {found[1]}; keep one")
    return found[0]


def attach_boxes(items: Sequence["SnippetSource"], data_root: str,
                 boxes_dir: str) -> List["SnippetSource"]:
    """`items` with `box_paths` set from `box_file` (every file is checked to exist before
    any shard is written; the contents are read when the snippet is encoded)."""
    if not os.path.isdir(boxes_dir):
        raise ConversionError(f"boxes directory {boxes_dir} does not exist")
    cache: Dict[str, str] = {}

    def path_of(frame):
        if frame not in cache:
            cache[frame] = box_file(frame, data_root, boxes_dir)
        return cache[frame]

    return [dataclasses.replace(item, box_paths=tuple(path_of(f) for f in item.frame_paths))
            for item in items]


def stored_intrinsics(k_native: np.ndarray, native_size: Tuple[int, int], crop_bottom: float,
                      resize: Optional[Tuple[int, int]]) -> Tuple[np.ndarray, Tuple[int, int]]:
    """K and (height, width) of the stored image: bottom crop (K unchanged), then resize."""
    height, width = native_size
    kept = int(height * (1.0 - crop_bottom)) if crop_bottom else height
    k = np.array(k_native, np.float64).reshape(3, 3)
    if resize is None:
        return k, (kept, width)
    out_h, out_w = resize
    return scale_intrinsics(k, out_w / width, out_h / kept), (out_h, out_w)


def _frame_difference(images: Sequence[Image.Image]) -> float:
    grey = [np.asarray(im.convert("L"), np.float32) / 255.0 for im in images]
    target = grey[1]
    return float(np.mean([np.mean(np.abs(target - grey[i])) for i in (0, 2)]))


def _is_8bit_rgb(path: str) -> bool:
    with Image.open(path) as image:  # header only
        return image.mode == "RGB"


def encode_snippet(source: SnippetSource, options: ImageOptions) -> Optional[bytes]:
    """Builds the serialised record of one snippet, or None if it is filtered as static.

    Raises:
      ConversionError: a frame is missing, unreadable, or has the wrong size.
    """
    from coopnet_tf.data import records  # lazy: imports TensorFlow

    images = [load_rgb(p, source.layout) for p in source.frame_paths]
    native = (images[0].height, images[0].width)
    expected = tuple(source.expected_size) if source.expected_size else native
    for path, image in zip(source.frame_paths, images):
        if (image.height, image.width) != expected:
            raise ConversionError(
                f"wrong image size {path}: {image.height}x{image.width} (HxW), expected "
                f"{expected[0]}x{expected[1]}"
                + ("" if source.expected_size else " (as the other frames of the snippet)")
                + (f"; expected layout: {source.layout}" if source.layout else ""))
    k, (out_h, out_w) = stored_intrinsics(np.asarray(source.intrinsics), native,
                                          source.crop_bottom, options.resize)
    geometric_change = bool(source.crop_bottom) or (out_h, out_w) != native
    if geometric_change:
        if source.crop_bottom:
            kept = int(native[0] * (1.0 - source.crop_bottom))
            images = [im.crop((0, 0, native[1], kept)) for im in images]
        if options.resize is not None and (out_h, out_w) != (images[0].height, images[0].width):
            images = [im.resize((out_w, out_h), _RESAMPLE[options.resample]) for im in images]
    if options.static_threshold is not None and _frame_difference(images) < options.static_threshold:
        return None
    encoded = []
    for path, image in zip(source.frame_paths, images):
        ext = os.path.splitext(path)[1].lower()
        same_format = (ext == ".png" and options.image_format == "png") or (
            ext in (".jpg", ".jpeg") and options.image_format == "jpeg")
        if not geometric_change and same_format and _is_8bit_rgb(path):
            with open(path, "rb") as f:  # already decoded once above: the bytes are valid
                encoded.append(f.read())
        else:
            encoded.append(encode_image(image, options.image_format, options.jpeg_quality))
    gt_pose = None if source.gt_pose is None else np.asarray(source.gt_pose, np.float32).reshape(2, 4, 4)
    boxes = None
    if source.box_paths is not None:
        kept = int(native[0] * (1.0 - source.crop_bottom)) if source.crop_bottom else None
        try:
            boxes = [boxes_lib.stored_boxes(boxes_lib.read_boxes(p), native, kept, (out_h, out_w))
                     for p in source.box_paths]
        except boxes_lib.BoxFormatError as err:
            raise ConversionError(str(err)) from err
    return records.serialize_snippet(
        encoded, k, out_h, out_w, source.sequence_id, int(source.frame_id), gt_pose=gt_pose,
        boxes=boxes)


# --------------------------------------------------------------------------- shards


def default_num_shards(num_items: int, examples_per_shard: int) -> int:
    return max(1, math.ceil(num_items / max(1, examples_per_shard)))


def write_shard(path: str, items: Sequence, encode_fn: Callable,
                progress: Optional[Callable[[int], None]] = None) -> Tuple[int, int]:
    """Writes one shard atomically (<path>.tmp, then os.replace). Returns (written, filtered).

    On any exception the .tmp file is removed and nothing appears under `path`.
    """
    from coopnet_tf.data import records  # pylint: disable=import-outside-toplevel  (TensorFlow)

    written = filtered = 0
    with records.atomic_writers([path]) as (writer,):
        for item in items:
            record = encode_fn(item)
            if record is None:
                filtered += 1
            else:
                writer.write(record)
                written += 1
            if progress is not None:
                progress(1)
    return written, filtered


def _count_records(path: str) -> int:
    from coopnet_tf.data import records  # pylint: disable=import-outside-toplevel  (TensorFlow)
    try:
        return records.count_file_records(path)
    except ValueError as err:
        raise ConversionError(str(err)) from err


# --------------------------------------------------------------------------- workers / lock

PARENT_POLL_SECONDS = 0.5
LOCK_SUFFIX = ".lock"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """Makes this worker process exit when `parent_pid` (the converter) dies, even by
    SIGKILL: Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)`, plus a thread that polls the parent
    (the portable fallback, and a guard against the parent dying before the prctl)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the polling thread below still applies

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)  # pylint: disable=protected-access
            time.sleep(PARENT_POLL_SECONDS)

    if os.getppid() != parent_pid:
        os._exit(1)  # pylint: disable=protected-access
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_init(parent_pid: int, lock_path: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    _die_with_parent(parent_pid)
    with open(lock_path, "a") as f:  # listed so that a re-run waits for it (see ConverterLock)
        f.write(f"{os.getpid()}\n")


def process_alive(pid: int) -> bool:
    """True if process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class ConverterLock:
    """Exclusive lock of one output (`<output_dir>/<prefix>.lock`) for a converter's run.

    The converter holds an `flock` on the file (released by the kernel when the process
    dies, however it dies); the file lists the converter's pid and its workers' pids. A
    second converter on the same output refuses with ConversionError. A lock left by a
    dead converter is taken over, after waiting up to `wait_seconds` for any worker it
    lists to exit (refused if one is still alive), so that a re-run never deletes a `.tmp`
    shard that an orphaned worker is still writing. The file is removed when the run
    ends (it stays only after a kill). POSIX only (fcntl).
    """

    def __init__(self, output_dir: str, prefix: str, wait_seconds: float = 10.0):
        self.path = os.path.join(output_dir, prefix + LOCK_SUFFIX)
        self.wait_seconds = wait_seconds
        self._file = None

    def _open_locked(self):
        while True:
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                owner = f.read().split()[:1]
                f.close()
                raise ConversionError(
                    f"{self.path}: another converter (pid {owner[0] if owner else '?'}) is "
                    f"writing this output; wait for it to finish (or stop it) before "
                    f"re-running") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                    return f
            except FileNotFoundError:
                pass
            f.close()  # the previous holder removed the file meanwhile: lock the new one

    def __enter__(self) -> "ConverterLock":
        f = self._open_locked()
        f.seek(0)
        pids = [int(v) for v in f.read().split() if v.isdigit()]
        deadline = time.time() + self.wait_seconds
        alive = [p for p in pids[1:] if p != os.getpid() and process_alive(p)]
        while alive and time.time() < deadline:
            time.sleep(0.2)
            alive = [p for p in alive if process_alive(p)]
        if alive:
            f.close()
            raise ConversionError(
                f"{self.path}: worker process(es) {alive} of a previous converter are still "
                f"running; stop them before re-running")
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        os.remove(self.path)  # while still locked: a waiting converter re-opens the path
        self._file.close()  # releases the flock
        self._file = None


@dataclasses.dataclass
class Summary:
    """What one `write_sharded` call did."""

    examples: int          # examples written by this run
    shards: int            # shards written by this run
    skipped: int           # shards skipped because already complete
    filtered: int          # snippets dropped by the static filter (this run)
    seconds: float
    total_examples: int    # examples in all shards of the dataset (written + skipped)
    num_shards: int

    def line(self) -> str:
        return (f"examples={self.examples} shards={self.shards} skipped={self.skipped} "
                f"seconds={self.seconds:.1f}")


def _check_manifest(manifest_path: str, config: Dict, num_shards: int, num_items: int,
                    overwrite: bool, output_dir: str, prefix: str) -> None:
    from coopnet_tf.data.records import SHARD_SUFFIX  # pylint: disable=import-outside-toplevel
    if overwrite:
        pattern = glob.escape(prefix) + "-*-of-*" + SHARD_SUFFIX + "*"
        for old in glob.glob(os.path.join(glob.escape(output_dir), pattern)):
            os.remove(old)
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
        return
    if not os.path.exists(manifest_path):
        pattern = glob.escape(prefix) + "-*-of-*" + SHARD_SUFFIX
        existing = glob.glob(os.path.join(glob.escape(output_dir), pattern))
        if existing:
            raise ConversionError(
                f"{output_dir} already holds shards named {prefix}-*{SHARD_SUFFIX} but no "
                f"{os.path.basename(manifest_path)}; use another --output_dir/--prefix or --overwrite")
        return
    with open(manifest_path) as f:
        previous = json.load(f)
    wanted = {"config": config, "num_shards": num_shards, "num_items": num_items}
    had = {k: previous.get(k) for k in wanted}
    if had != json.loads(json.dumps(wanted)):
        raise ConversionError(
            f"{manifest_path} records a conversion with other options ({had}); this run has "
            f"{wanted}. Resuming would mix them: use another --output_dir/--prefix or --overwrite")


def _write_manifest(path: str, content: Dict) -> None:
    tmp = path + TMP_SUFFIX
    with open(tmp, "w") as f:
        json.dump(content, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def write_sharded(items: Sequence, encode_fn: Callable, output_dir: str, prefix: str = "train",
                  num_shards: int = 0, examples_per_shard: int = 256, num_workers: int = 1,
                  config: Optional[Dict] = None, overwrite: bool = False,
                  show_progress: bool = True) -> Summary:
    """Encodes `items` with `encode_fn` into sharded TFRecords (see the module docstring).

    Args:
      items: picklable descriptions of the examples, in a deterministic order.
      encode_fn: module-level callable (or functools.partial of one) item -> bytes or
        None (None drops the item, e.g. a static snippet). Must be picklable when
        num_workers > 1.
      output_dir: created if needed.
      prefix: shard file name prefix.
      num_shards: number of shards; 0 = ceil(len(items) / examples_per_shard).
      examples_per_shard: used when num_shards is 0.
      num_workers: processes; <= 1 runs in this process.
      config: JSON-serialisable options recorded in the manifest; a re-run must match.
      overwrite: delete this prefix's shards and manifest first.
      show_progress: tqdm bar on stderr.

    Returns:
      Summary; its `line()` is the converters' final line.

    Raises:
      ConversionError: bad input (the message names the file). Shards finished before
        the error stay (complete); the failing shard leaves no file behind. Also raised
        when another converter is writing the same output (see `ConverterLock`).
    """
    start = time.time()
    if not items:
        raise ConversionError("nothing to convert: no snippets found (check the data path and split)")
    num_shards = num_shards or default_num_shards(len(items), examples_per_shard)
    if num_shards > len(items):
        num_shards = len(items)
    os.makedirs(output_dir, exist_ok=True)
    with ConverterLock(output_dir, prefix) as lock:
        return _write_sharded_locked(items, encode_fn, output_dir, prefix, num_shards,
                                     num_workers, config, overwrite, show_progress, start,
                                     lock.path)


def _write_sharded_locked(items, encode_fn, output_dir, prefix, num_shards, num_workers, config,
                          overwrite, show_progress, start, lock_path) -> Summary:
    from tqdm import tqdm

    config = dict(config or {})
    manifest_path = os.path.join(output_dir, prefix + MANIFEST_SUFFIX)
    _check_manifest(manifest_path, config, num_shards, len(items), overwrite, output_dir, prefix)
    _write_manifest(manifest_path, {"config": config, "num_shards": num_shards,
                                    "num_items": len(items), "complete": False})
    from coopnet_tf.data import records  # pylint: disable=import-outside-toplevel  (TensorFlow)

    for stale in glob.glob(os.path.join(glob.escape(output_dir),
                                        glob.escape(prefix) + "-*" + records.TMP_SUFFIX)):
        os.remove(stale)  # a crash (kill -9) can leave one; its shard is rewritten below
    paths = [records.shard_path(output_dir, prefix, s, num_shards) for s in range(num_shards)]
    shard_items = [items[s::num_shards] for s in range(num_shards)]
    todo = [s for s in range(num_shards) if not os.path.exists(paths[s])]
    skipped = num_shards - len(todo)
    counts: Dict[int, int] = {s: _count_records(paths[s]) for s in range(num_shards) if s not in todo}
    if skipped:
        logging.info("resuming: %d of %d shards already complete", skipped, num_shards)
    written = filtered = 0
    bar = tqdm(total=sum(len(shard_items[s]) for s in todo), unit="snippet", disable=not show_progress,
               desc=f"{prefix}", dynamic_ncols=True, smoothing=0.05)
    try:
        if num_workers <= 1:
            for s in todo:
                w, f = write_shard(paths[s], shard_items[s], encode_fn, bar.update)
                counts[s], written, filtered = w, written + w, filtered + f
        else:
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(
                    max_workers=num_workers, mp_context=context, initializer=_worker_init,
                    initargs=(os.getpid(), lock_path)) as pool:
                futures = {pool.submit(write_shard, paths[s], shard_items[s], encode_fn): s for s in todo}
                try:
                    for future in concurrent.futures.as_completed(futures):
                        s = futures[future]
                        w, f = future.result()
                        counts[s], written, filtered = w, written + w, filtered + f
                        bar.update(len(shard_items[s]))
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    summary = Summary(examples=written, shards=len(todo), skipped=skipped, filtered=filtered,
                      seconds=time.time() - start, total_examples=sum(counts.values()),
                      num_shards=num_shards)
    _write_manifest(manifest_path, {
        "config": config, "num_shards": num_shards, "num_items": len(items), "complete": True,
        "total_examples": summary.total_examples,
        "shards": {os.path.basename(paths[s]): counts[s] for s in range(num_shards)},
    })
    if filtered:
        logging.info("static filter dropped %d snippets", filtered)
    return summary


def encoder(fn: Callable, **kwargs) -> Callable:
    """functools.partial(fn, **kwargs): a picklable encode function for write_sharded."""
    return functools.partial(fn, **kwargs)


def check_files_exist(paths: Sequence[str], what: str, layout: str) -> None:
    """ConversionError naming the first missing file (checked before any shard is written)."""
    for path in paths:
        if not os.path.isfile(path):
            raise ConversionError(f"missing {what} {path}; expected layout: {layout}")


def summary_config(**kwargs) -> Dict:
    """JSON-safe copy of converter options for the manifest."""
    return json.loads(json.dumps(kwargs, default=str))


__all__: List[str] = [
    "ConversionError", "ConverterLock", "ImageOptions", "SnippetSource", "Summary",
    "attach_boxes", "box_file", "check_files_exist",
    "check_intrinsics", "crop_intrinsics", "default_num_shards", "encode_image", "encode_snippet",
    "encoder", "load_rgb", "parse_size", "scale_intrinsics", "stored_intrinsics",
    "summary_config", "write_shard", "write_sharded",
]
