"""Cityscapes: camera json reading, sequence snippets, ego-car hood crop.

Numpy only (no TensorFlow). Used by `tools/convert_cityscapes.py`.

Layout (leftImg8bit_sequence_trainvaltest.zip and camera_trainvaltest.zip unzipped
into one ROOT):

    ROOT/leftImg8bit_sequence/<split>/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png
    ROOT/camera/<split>/<city>/<city>_<seq:06d>_<frame:06d>_camera.json

The camera json (`{"intrinsic": {"fx", "fy", "u0", "v0"}, "extrinsic": {"baseline", ...}}`)
exists for one frame of each 30-frame sequence (the annotated one); every frame of the
sequence uses it (as SfMLearner's Cityscapes loader does): the converter takes the json of
the target frame when it exists, else the first json of the same <city>_<seq>.

Hood crop (Li et al. 2020 / SfMLearner / ManyDepth, docs/decisions.md C1, E2): the bottom
25 % of the 2048x1024 image shows the ego car; rows [0, int(0.75 * H)) = 768 are kept.
The crop removes rows at the bottom only, so K (fx, fy, cx = u0, cy = v0) is unchanged by
it; a resize to the stored size then scales fx, cx by W'/2048 and fy, cy by H'/768.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from coopnet_tf.data.convert import ConversionError, SnippetSource

LAYOUT = ("ROOT/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
          "ROOT/camera/<split>/<city>/<city>_<seq>_<frame>_camera.json (Cityscapes, unzipped as downloaded)")
IMAGE_SIZE = (1024, 2048)  # (height, width) of every Cityscapes frame
HOOD_CROP = 0.25           # fraction of rows removed at the bottom

_FRAME_RE = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.(?P<ext>png|jpg)$")


def read_camera_json(path: str) -> Tuple[np.ndarray, float]:
    """K (3x3, fx, fy, u0, v0 of the 2048x1024 image) and the stereo baseline (m, or nan).

    Raises:
      ConversionError: missing file, not JSON, or no intrinsic fx/fy/u0/v0.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"missing camera file {path}; expected layout: {LAYOUT}")
    try:
        with open(path) as f:
            content = json.load(f)
        intrinsic = content["intrinsic"]
        fx, fy, u0, v0 = (float(intrinsic[k]) for k in ("fx", "fy", "u0", "v0"))
    except (ValueError, KeyError, TypeError) as err:
        raise ConversionError(
            f"camera file {path} is not a Cityscapes camera json with intrinsic fx, fy, u0, v0: {err!r}") from err
    baseline = float(content.get("extrinsic", {}).get("baseline", float("nan")))
    return np.array([[fx, 0.0, u0], [0.0, fy, v0], [0.0, 0.0, 1.0]]), baseline


def camera_json_for(data_path: str, split: str, city: str, seq: str, frame: str,
                    listing: Optional[Sequence[str]] = None) -> str:
    """The camera json of a frame: its own, else the first (sorted) one of <city>_<seq>.

    `listing` (the file names of camera/<split>/<city>) saves a directory listing per call.
    """
    directory = os.path.join(data_path, "camera", split, city)
    exact = os.path.join(directory, f"{city}_{seq}_{frame}_camera.json")
    if listing is None:
        listing = os.listdir(directory) if os.path.isdir(directory) else []
    names = listing if isinstance(listing, (set, frozenset)) else set(listing)
    if os.path.basename(exact) in names:
        return exact
    prefix = f"{city}_{seq}_"
    candidates = sorted(n for n in names if n.startswith(prefix) and n.endswith("_camera.json"))
    if candidates:
        return os.path.join(directory, candidates[0])
    raise ConversionError(
        f"missing camera file {exact} (nor any {city}_{seq}_*_camera.json in {directory}); "
        f"expected layout: {LAYOUT}")


def snippets(data_path: str, splits: Sequence[str] = ("train",), frame_step: int = 1,
             crop_bottom: float = HOOD_CROP,
             expected_size: Optional[Tuple[int, int]] = IMAGE_SIZE) -> List[SnippetSource]:
    """Snippets (t-1, t, t+1) of Cityscapes sequences, hood crop recorded in each.

    Args:
      data_path: Cityscapes root (see LAYOUT).
      splits: leftImg8bit_sequence sub-directories ("train", "val", "test").
      frame_step: frames between target and sources (1 = 17 Hz as recorded; SfMLearner
        uses 2 to match KITTI's 10 Hz).
      crop_bottom: fraction of rows removed at the bottom (0.25; 0 keeps the hood).
      expected_size: (height, width) of every frame, or None to accept any size
        consistent within a snippet.

    Returns:
      One SnippetSource per frame whose neighbours at +-frame_step exist, ordered by
      split, city, sequence, frame.
    """
    out: List[SnippetSource] = []
    for split in splits:
        split_dir = os.path.join(data_path, "leftImg8bit_sequence", split)
        if not os.path.isdir(split_dir):
            raise ConversionError(f"missing directory {split_dir}; expected layout: {LAYOUT}")
        for city in sorted(os.listdir(split_dir)):
            city_dir = os.path.join(split_dir, city)
            if not os.path.isdir(city_dir):
                continue
            sequences: Dict[str, Dict[int, str]] = {}
            for name in os.listdir(city_dir):
                match = _FRAME_RE.match(name)
                if match and match["city"] == city:
                    sequences.setdefault(match["seq"], {})[int(match["frame"])] = os.path.join(city_dir, name)
            camera_cache: Dict[str, np.ndarray] = {}
            camera_dir = os.path.join(data_path, "camera", split, city)
            listing = set(os.listdir(camera_dir)) if os.path.isdir(camera_dir) else set()
            for seq in sorted(sequences):
                frames = sequences[seq]
                for frame in sorted(frames):
                    if frame - frame_step not in frames or frame + frame_step not in frames:
                        continue
                    camera_path = camera_json_for(data_path, split, city, seq, f"{frame:06d}", listing)
                    if camera_path not in camera_cache:
                        camera_cache[camera_path] = read_camera_json(camera_path)[0]
                    k = camera_cache[camera_path]
                    out.append(SnippetSource(
                        frame_paths=tuple(frames[frame + d] for d in (-frame_step, 0, frame_step)),
                        intrinsics=tuple(float(v) for v in k.ravel()),
                        sequence_id=f"{split}/{city}_{seq}", frame_id=frame,
                        expected_size=tuple(expected_size) if expected_size else None,
                        crop_bottom=crop_bottom, layout=LAYOUT))
    if not out:
        raise ConversionError(f"no Cityscapes sequence frames with both neighbours under {data_path} "
                              f"(splits {list(splits)}); expected layout: {LAYOUT}")
    return out
