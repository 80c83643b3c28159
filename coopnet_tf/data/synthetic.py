"""A procedural driving world with exact ground truth, rendered by ray casting (numpy).

The project's embedded default dataset: a new user can train out of the box, and the
tests get depth, camera motion, optical flow and moving-object masks that no real
dataset has. The renderer is numpy only; writing records (`write_synthetic_dataset`,
`ensure_synthetic_dataset`) imports TensorFlow lazily through `coopnet_tf.data.records`.

World (metres; x right, y DOWN, z forward along the road; the ground is the plane y = 0):

* a straight road along +z (four 3.5 m lanes between x = -7 and x = 7, dashed lane
  lines, solid edge lines), sidewalks with tiles, verges;
* building blocks (static axis-aligned boxes) lining both sides, with bricks or window
  grids, varying setback and height, occasional gaps;
* an enclosing "room" so that every ray ends at a finite depth: a textured sky ceiling
  at y = -45, distant backdrop walls, an end wall well beyond the last frame;
* `num_objects` boxes on and beside the road: a fraction `moving_fraction` of them move
  with their own constant velocity (cars along or against the traffic in the lanes
  that are not the ego lane, pedestrians/cyclists/cars crossing ahead); the others are
  parked cars and street furniture. Objects translate without rotating, so their
  Lambert shading is constant and brightness constancy holds exactly.

Camera: pinhole, x right, y down, z forward, 1.65 m above the ground, driving forward in
the right-hand lane at a per-sequence speed (0.7-1.1 m/frame, i.e. 7-11 m/s at 10 fps)
with a smooth sinusoidal yaw (gentle turns of a few degrees).
Intrinsics: Monodepth2's KITTI constants, fx = 0.58 W, fy = 1.92 H, cx = W/2, cy = H/2
(`intrinsics(height, width)`); at 128x416 fx = 241.3 px, fy = 245.8 px.

Textures are functions of each surface's own coordinates (world coordinates for the
road/room, box-local coordinates for boxes, so texture moves with its object):
multi-scale value noise plus stripes / checkers / bricks / windows / lane markings,
coloured per surface. Every pattern is box-filtered analytically over the pixel's
footprint on the surface (computed exactly from the ray differentials), and noise
octaves finer than ~1.5 px fade out, so the images are nearly alias-free and a source
frame warped with the exact flow reproduces the target (photometric learning works).

Ground truth of a snippet (target t, sources s in {t-1, t+1}), exact up to float32:
* depth: camera z of the target pixel's ray hit (every pixel has one, <= ~150 m);
* pose: T_target->source (4x4, maps target-camera points into the source camera);
* flow target->source in pixels: the target pixel's 3-D point, moved with its object
  between t and s when it is on a moving object, projected into the source camera;
* moving mask: 1 where the target pixel lies on an object that moves between t and s;
* object motion: the residual 3-D motion r of the target pixel's point between t and s,
  in the target camera (metres): X_s = R (X_t + r) + t with (R, t) = T_target->source,
  i.e. r = R_t^T (s - t) v for an object of world velocity v (R_t the target camera's
  rotation), 0 on static pixels (`Sequence.object_motion`);
* boxes of every frame: each object's (not the buildings') exact 2-D box, the projection
  of its 3-D extent (cut by the plane z = 1e-4 in front of the camera) clipped to the
  image [-0.5, W - 0.5] x [-0.5, H - 0.5], for the objects with at least one pixel in the
  frame; class Car, Pedestrian or Misc (street furniture) of `data/boxes.CLASSES`,
  score 1. Like a detector's, they can be widened (`box_jitter`: each side moved out by
  a uniform random fraction of the box size up to `box_jitter`, Lee et al. train with up
  to 10 %) and dropped (`box_miss_rate`), seeded per frame (`Sequence.frame_boxes`).
Occlusion in the source is not masked: the flow says where the point goes, visible or not.
"""
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from coopnet_tf import specs
from coopnet_tf.data import boxes as boxes_lib

# Bump when the rendered content changes: it is part of the cache key (and of the seeds).
GENERATOR_VERSION = 2
# Bump when the record features written change (not the rendering): part of the cache key.
RECORDS_VERSION = 2  # 2: gt/object_motion and boxes/*
BOX_NEAR_Z = 1e-4     # boxes: the object's extent is cut by this plane in front of the camera

SPLITS = ("train", "val", "test")
FINISHED_MARKER = "_FINISHED"
CONFIG_FILE = "world_config.json"

CAMERA_HEIGHT = 1.65
LANE_WIDTH = 3.5
EGO_LANE_X = 0.5 * LANE_WIDTH       # right-hand traffic: the ego drives in lane (0, 3.5)
SKY_Y = -45.0                        # the sky ceiling (y is down)
BACKDROP_X = 80.0                    # distant backdrop walls at x = +-80
LIGHT_DIR = np.array([0.45, -0.75, 0.48]) / np.linalg.norm([0.45, -0.75, 0.48])  # towards the sun

# Material kinds.
NOISE, STRIPES, CHECKER, BRICKS, WINDOWS, ROAD, SKY = range(7)
_NOISE_TABLE = 256
_NOISE_OCTAVES = 6


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the generated dataset (it is the cache key).

    Attributes:
      height, width: stored image size (records are written at this size).
      num_sequences: training sequences.
      num_val_sequences, num_test_sequences: held-out sequences (different worlds).
      frames_per_sequence: frames rendered per sequence; each gives F - 2 snippets.
      num_objects: boxes on/beside the road per sequence (buildings not counted).
      moving_fraction: fraction of those boxes that move on their own, in [0, 1].
      seed: everything is a deterministic function of the config and this seed.
      train_shards, eval_shards: TFRecord files per split (capped by the snippet count).
      box_jitter: each side of an object's box moves out by a uniform random fraction,
        up to this, of the box width (x) or height (y); 0 = exact boxes.
      box_miss_rate: probability that an object's box is left out of a frame.
    """
    height: int = 64
    width: int = 192
    num_sequences: int = 20
    num_val_sequences: int = 2
    num_test_sequences: int = 2
    frames_per_sequence: int = 40
    num_objects: int = 14
    moving_fraction: float = 0.5
    seed: int = 0
    train_shards: int = 8
    eval_shards: int = 2
    box_jitter: float = 0.0
    box_miss_rate: float = 0.0

    def __post_init__(self):
        if self.height < 8 or self.width < 8:
            raise ValueError(f"image size must be at least 8x8, got {self.height}x{self.width}")
        if self.frames_per_sequence < specs.NUM_FRAMES:
            raise ValueError(f"frames_per_sequence must be >= {specs.NUM_FRAMES}, "
                             f"got {self.frames_per_sequence}")
        if not 0.0 <= self.moving_fraction <= 1.0:
            raise ValueError(f"moving_fraction must be in [0, 1], got {self.moving_fraction}")
        if not 0.0 <= self.box_jitter <= 1.0:
            raise ValueError(f"box_jitter must be in [0, 1], got {self.box_jitter}")
        if not 0.0 <= self.box_miss_rate <= 1.0:
            raise ValueError(f"box_miss_rate must be in [0, 1], got {self.box_miss_rate}")
        if min(self.num_sequences, self.num_val_sequences, self.num_test_sequences,
               self.num_objects) < 0:
            raise ValueError("sequence and object counts must be >= 0")

    def num_split_sequences(self, split: str) -> int:
        return {"train": self.num_sequences, "val": self.num_val_sequences,
                "test": self.num_test_sequences}[split]

    def cache_key(self) -> str:
        payload = json.dumps({"version": GENERATOR_VERSION, "records": RECORDS_VERSION,
                              **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]


def intrinsics(height: int, width: int) -> np.ndarray:
    """K of the synthetic camera at (height, width): Monodepth2's KITTI constants.

    Returns:
      float64 [3, 3]: fx = 0.58 W, fy = 1.92 H, cx = W / 2, cy = H / 2.
    """
    return np.array([[0.58 * width, 0.0, 0.5 * width],
                     [0.0, 1.92 * height, 0.5 * height],
                     [0.0, 0.0, 1.0]])


def _rot_y(angle) -> np.ndarray:
    """Rotation about +y (down); positive angles turn +z towards +x. [..., 3, 3]."""
    angle = np.asarray(angle, np.float64)
    c, s = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, zero, s], -1),
                     np.stack([zero, one, zero], -1),
                     np.stack([-s, zero, c], -1)], -2)


# ----------------------------------------------------------------------------------
# Scene construction
# ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Scene:
    """One sequence's world: camera trajectory, boxes, room and materials.

    Attributes:
      cam_to_world: [F, 4, 4] camera-to-world transforms.
      box_center: [N, 3] box centres at frame 0 (world).
      box_velocity: [N, 3] metres per frame (world); zero for static boxes.
      box_yaw: [N] constant yaw (boxes translate, never rotate).
      box_half: [N, 3] half extents (box-local x, y, z).
      box_moving: [N] bool.
      box_class: [N] index of `data/boxes.CLASSES`; -1 for buildings (no 2-D box).
      room_lo, room_hi: [3] the enclosing room (its +y face is the ground y = 0).
      materials: dict of per-surface arrays; surface id = prim * 6 + axis * 2 + (side > 0),
        prim N being the room.
    """
    cam_to_world: np.ndarray
    box_center: np.ndarray
    box_velocity: np.ndarray
    box_yaw: np.ndarray
    box_half: np.ndarray
    box_moving: np.ndarray
    box_class: np.ndarray
    room_lo: np.ndarray
    room_hi: np.ndarray
    materials: Dict[str, np.ndarray]

    @property
    def num_boxes(self) -> int:
        return len(self.box_yaw)


def _camera_trajectory(rng, num_frames) -> Tuple[np.ndarray, float]:
    speed = rng.uniform(0.7, 1.1)
    amplitude = rng.uniform(0.02, 0.06)          # yaw amplitude (rad), 1-3.5 degrees
    period = rng.uniform(40.0, 90.0)             # frames
    phase = rng.uniform(0.0, 2.0 * np.pi)
    omega = 2.0 * np.pi / period
    frames = np.arange(num_frames, dtype=np.float64)
    yaw = amplitude * np.sin(omega * frames + phase)
    # integrate the position with the yaw of each step (midpoint rule)
    yaw_mid = amplitude * np.sin(omega * (frames[:-1] + 0.5) + phase)
    steps = np.stack([speed * np.sin(yaw_mid), np.zeros_like(yaw_mid), speed * np.cos(yaw_mid)], -1)
    centre = np.concatenate([np.zeros((1, 3)), np.cumsum(steps, 0)], 0)
    # keep the lateral drift centred on the ego lane
    centre[:, 0] += EGO_LANE_X - 0.5 * (centre[:, 0].max() + centre[:, 0].min())
    centre[:, 1] = -CAMERA_HEIGHT
    centre[:, 2] += rng.uniform(0.0, 5.0)
    cam_to_world = np.tile(np.eye(4), (num_frames, 1, 1))
    cam_to_world[:, :3, :3] = _rot_y(yaw)
    cam_to_world[:, :3, 3] = centre
    return cam_to_world, speed


def _random_colour(rng, saturation=(0.2, 0.7), value=(0.35, 0.85)) -> np.ndarray:
    h = rng.uniform(0, 1)
    s = rng.uniform(*saturation)
    v = rng.uniform(*value)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def build_scene(config: WorldConfig, split: str, index: int) -> Scene:
    """Builds the deterministic scene of sequence `index` of `split`."""
    split_code = SPLITS.index(split)
    rng = np.random.default_rng([config.seed, split_code, index, GENERATOR_VERSION])
    num_frames = config.frames_per_sequence
    cam_to_world, speed = _camera_trajectory(rng, num_frames)
    cam_z = cam_to_world[:, 2, 3]
    cam_x = cam_to_world[:, 0, 3]
    z_start, z_end = cam_z[0], cam_z[-1]
    far_z = z_end + 110.0

    centres, halves, yaws, velocities, moving, kinds, classes = [], [], [], [], [], [], []

    def add_box(centre, half, yaw=0.0, velocity=(0.0, 0.0, 0.0), is_moving=False, kind="object",
                label="Misc"):
        centres.append(np.asarray(centre, np.float64))
        halves.append(np.asarray(half, np.float64))
        yaws.append(float(yaw))
        velocities.append(np.asarray(velocity, np.float64))
        moving.append(bool(is_moving))
        kinds.append(kind)
        classes.append(-1 if kind == "building" else boxes_lib.CLASS_IDS[label.lower()])

    # Building blocks on both sides (inner faces 9.5-13 m from the road axis).
    for side in (-1.0, 1.0):
        z = z_start - 25.0
        while z < far_z - 5.0:
            length = rng.uniform(8.0, 26.0)
            if rng.uniform() < 0.15:          # a gap between blocks
                z += rng.uniform(4.0, 10.0)
                continue
            setback = rng.uniform(9.5, 13.0)
            depth = rng.uniform(8.0, 14.0)
            height = rng.uniform(6.0, 28.0)
            add_box([side * (setback + depth / 2), -height / 2, z + length / 2],
                    [depth / 2, height / 2, length / 2], kind="building")
            z += length + rng.uniform(0.0, 1.0)

    # Objects on and beside the road.
    num_moving = int(round(config.moving_fraction * config.num_objects))
    num_static = config.num_objects - num_moving
    t_mid = 0.5 * (num_frames - 1)
    for _ in range(num_static):
        label = "Misc"
        if rng.uniform() < 0.7:  # parked car on the road edge
            label = "Car"
            side = rng.choice([-1.0, 1.0])
            half = [rng.uniform(0.8, 1.0), rng.uniform(0.65, 0.9), rng.uniform(1.9, 2.5)]
            x = side * rng.uniform(7.0 + half[0] * 0.2, 7.2 + half[0])
            yaw = rng.uniform(-0.08, 0.08)
        else:                    # street furniture on the sidewalk
            side = rng.choice([-1.0, 1.0])
            half = [rng.uniform(0.3, 0.8), rng.uniform(0.5, 1.5), rng.uniform(0.3, 0.8)]
            x = side * rng.uniform(7.8, 9.0)
            yaw = rng.uniform(-0.5, 0.5)
        z = rng.uniform(z_start + 6.0, z_end + 70.0)
        add_box([x, -half[1], z], half, yaw=yaw, label=label)
    for _ in range(num_moving):
        role = rng.uniform()
        if role < 0.65:  # a car along or against the traffic, never in the ego lane
            lane = rng.choice([-5.25, -1.75, 5.25])
            direction = 1.0 if lane > 0 else -1.0
            v = direction * rng.uniform(0.3, 1.4)
            if direction > 0 and abs(v - speed) < 0.25:   # same speed as the ego: still moving
                v += 0.3 * (1.0 if v > speed else -1.0)
            half = [rng.uniform(0.8, 1.0), rng.uniform(0.65, 1.1), rng.uniform(1.9, 2.6)]
            x = lane + rng.uniform(-0.3, 0.3)
            z_mid = cam_z[int(t_mid)] + rng.uniform(8.0, 60.0)
            add_box([x, -half[1], z_mid - v * t_mid], half, velocity=[0.0, 0.0, v],
                    is_moving=True, label="Car")
        else:            # crossing the road ahead of the ego (pedestrian, cyclist or car)
            label = "Car"
            if rng.uniform() < 0.6:
                label = "Pedestrian"
                half = [rng.uniform(0.25, 0.4), rng.uniform(0.8, 0.95), rng.uniform(0.25, 0.5)]
                v_abs = rng.uniform(0.12, 0.3)
            else:
                half = [rng.uniform(1.9, 2.4), rng.uniform(0.65, 0.9), rng.uniform(0.8, 1.0)]
                v_abs = rng.uniform(0.4, 1.0)
            direction = rng.choice([-1.0, 1.0])
            t_cross = rng.uniform(0.0, num_frames - 1.0)   # when it crosses the ego lane
            z = cam_z[int(t_cross)] + rng.uniform(12.0, 45.0)
            x0 = cam_x[int(t_cross)] - direction * v_abs * t_cross
            add_box([x0, -half[1], z], half, velocity=[direction * v_abs, 0.0, 0.0],
                    is_moving=True, label=label)

    scene = Scene(
        cam_to_world=cam_to_world,
        box_center=np.array(centres).reshape(-1, 3),
        box_velocity=np.array(velocities).reshape(-1, 3),
        box_yaw=np.array(yaws, np.float64),
        box_half=np.array(halves).reshape(-1, 3),
        box_moving=np.array(moving, bool),
        box_class=np.array(classes, np.int64),
        room_lo=np.array([-BACKDROP_X, SKY_Y, z_start - 60.0]),
        room_hi=np.array([BACKDROP_X, 0.0, far_z]),
        materials={},
    )
    scene.materials = _make_materials(rng, scene, kinds)
    return scene


def _make_materials(rng, scene: Scene, kinds: List[str]) -> Dict[str, np.ndarray]:
    n_surf = (scene.num_boxes + 1) * 6
    mat = {
        "kind": np.zeros(n_surf, np.int64),
        "c0": np.zeros((n_surf, 3)), "c1": np.zeros((n_surf, 3)), "tint": np.zeros((n_surf, 3)),
        "period": np.ones((n_surf, 2)), "duty": np.full((n_surf, 2), 0.5),
        "cell": np.ones(n_surf), "amp": np.full(n_surf, 0.3),
        "offset": rng.uniform(0.0, 5000.0, (n_surf, 2)),
        "shade": np.ones(n_surf),
    }
    for b, kind in enumerate(kinds):
        rot = _rot_y(scene.box_yaw[b])
        if kind == "building":
            wall = _random_colour(rng, (0.1, 0.5), (0.45, 0.85))
            pattern = BRICKS if rng.uniform() < 0.5 else WINDOWS
            for face in range(6):
                s = b * 6 + face
                mat["kind"][s] = pattern
                mat["c0"][s] = wall
                if pattern == BRICKS:
                    mat["c1"][s] = np.clip(wall * 0.55 + 0.2, 0, 1)   # mortar
                    mat["period"][s] = [rng.uniform(0.4, 0.6), rng.uniform(0.18, 0.26)]
                    mat["duty"][s] = [0.12, 0.2]
                else:
                    mat["c1"][s] = _random_colour(rng, (0.1, 0.4), (0.1, 0.35))  # glass
                    mat["period"][s] = [rng.uniform(2.0, 3.5), rng.uniform(2.8, 3.6)]
                    mat["duty"][s] = [rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.55)]
                mat["cell"][s] = rng.uniform(1.0, 3.0)
                mat["amp"][s] = rng.uniform(0.25, 0.45)
                mat["tint"][s] = _random_colour(rng, (0.3, 0.8), (0.1, 0.25))
        else:
            body = _random_colour(rng, (0.3, 0.9), (0.3, 0.9))
            for face in range(6):
                s = b * 6 + face
                mat["kind"][s] = rng.choice([STRIPES, CHECKER, NOISE, CHECKER])
                mat["c0"][s] = body
                mat["c1"][s] = np.clip(body * rng.uniform(0.3, 0.6) + rng.uniform(0.0, 0.35), 0, 1)
                mat["period"][s] = rng.uniform(0.3, 0.9, 2)
                mat["duty"][s] = rng.uniform(0.3, 0.7, 2)
                mat["cell"][s] = rng.uniform(0.3, 1.0)
                mat["amp"][s] = rng.uniform(0.3, 0.5)
                mat["tint"][s] = _random_colour(rng, (0.4, 0.9), (0.1, 0.3))
        for face in range(6):
            axis, side = divmod(face, 2)
            normal = rot[:, axis] * (1.0 if side else -1.0)
            mat["shade"][b * 6 + face] = 0.55 + 0.45 * max(0.0, float(normal @ LIGHT_DIR))
    # The room: faces (axis, side): x lo/hi and z hi are backdrops, y lo the sky, y hi the road.
    room = scene.num_boxes * 6
    for face in range(6):
        s = room + face
        mat["kind"][s] = NOISE
        mat["c0"][s] = _random_colour(rng, (0.1, 0.4), (0.35, 0.6))
        mat["c1"][s] = mat["c0"][s]
        mat["cell"][s] = rng.uniform(4.0, 10.0)
        mat["amp"][s] = 0.5
        mat["tint"][s] = _random_colour(rng, (0.3, 0.7), (0.1, 0.3))
        mat["shade"][s] = 0.85
    for face in (0, 1, 5):   # backdrop: distant towers as coarse stripes
        mat["kind"][room + face] = STRIPES
        mat["c1"][room + face] = np.clip(mat["c0"][room + face] * 0.6, 0, 1)
        mat["period"][room + face] = rng.uniform(6.0, 14.0, 2)
        mat["duty"][room + face] = rng.uniform(0.3, 0.7, 2)
    sky = room + 2
    mat["kind"][sky] = SKY
    mat["c0"][sky] = [0.45, 0.62, 0.88] * rng.uniform(0.85, 1.05, 3)
    mat["c1"][sky] = [0.93, 0.94, 0.96]
    mat["cell"][sky] = rng.uniform(10.0, 20.0)
    mat["shade"][sky] = 1.0
    road = room + 3
    mat["kind"][road] = ROAD
    mat["c0"][road] = np.full(3, rng.uniform(0.3, 0.42))          # asphalt
    mat["c1"][road] = _random_colour(rng, (0.05, 0.25), (0.6, 0.8))  # sidewalk tiles
    mat["tint"][road] = _random_colour(rng, (0.4, 0.7), (0.25, 0.45))  # verge
    mat["period"][road] = [rng.uniform(0.4, 0.7), rng.uniform(8.0, 12.0)]  # tile, dash period
    mat["cell"][road] = rng.uniform(0.8, 1.6)
    mat["amp"][road] = 0.35
    mat["shade"][road] = 0.55 + 0.45 * max(0.0, float(np.array([0.0, -1.0, 0.0]) @ LIGHT_DIR))
    return mat


# ----------------------------------------------------------------------------------
# Procedural textures (box-filtered over the pixel footprint)
# ----------------------------------------------------------------------------------

def _noise_tables(seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7919, GENERATOR_VERSION])
    return rng.uniform(0.0, 1.0, (_NOISE_OCTAVES, _NOISE_TABLE, _NOISE_TABLE))


def _fractal_noise(tables, u, v, cell, footprint) -> np.ndarray:
    """Value noise, octaves of cell sizes cell / 2^k, each faded out below ~1.5 px. [-0.5, 0.5]."""
    total = np.zeros_like(u)
    norm = 0.0
    for k in range(tables.shape[0]):
        c = cell / (2.0 ** k)
        weight = np.clip(c / (1.5 * footprint) - 1.0, 0.0, 1.0)
        amp = 0.72 ** k
        norm += amp
        if not np.any(weight > 0):
            continue
        x, y = u / c, v / c
        ix, iy = np.floor(x), np.floor(y)
        fx, fy = x - ix, y - iy
        fx = fx * fx * (3.0 - 2.0 * fx)
        fy = fy * fy * (3.0 - 2.0 * fy)
        i0 = ix.astype(np.int64) % _NOISE_TABLE
        j0 = iy.astype(np.int64) % _NOISE_TABLE
        i1, j1 = (i0 + 1) % _NOISE_TABLE, (j0 + 1) % _NOISE_TABLE
        t = tables[k]
        n = ((t[i0, j0] * (1 - fx) + t[i1, j0] * fx) * (1 - fy)
             + (t[i0, j1] * (1 - fx) + t[i1, j1] * fx) * fy)
        total += amp * weight * (n - 0.5)
    return total / norm


def _square_integral(x, duty):
    """Integral of the unit-period square wave that is 1 on [0, duty) of each period."""
    f = np.floor(x)
    return f * duty + np.minimum(x - f, duty)


def _filtered_square(u, footprint, period, duty, phase=0.0):
    """Square wave (1 on a `duty` fraction of each `period`) box-filtered over `footprint`."""
    w = footprint / period
    x = u / period + phase
    return (_square_integral(x + 0.5 * w, duty) - _square_integral(x - 0.5 * w, duty)) / w


def _coverage(u, footprint, lo, hi):
    """Fraction of the box [u - f/2, u + f/2] inside the interval [lo, hi]."""
    return np.clip((np.minimum(hi, u + 0.5 * footprint) - np.maximum(lo, u - 0.5 * footprint))
                   / footprint, 0.0, 1.0)


def _texture(mat, surf, u, v, fu, fv, tables) -> np.ndarray:
    """Colour of every pixel from its surface id, surface coordinates and footprints. [P, 3]."""
    kind = mat["kind"][surf]
    c0, c1, tint = mat["c0"][surf], mat["c1"][surf], mat["tint"][surf]
    period, duty = mat["period"][surf], mat["duty"][surf]
    off = mat["offset"][surf]
    fmax = np.maximum(fu, fv)
    pattern = np.zeros_like(u)

    sel = kind == STRIPES
    if np.any(sel):
        pattern[sel] = _filtered_square(u[sel], fu[sel], period[sel, 0], duty[sel, 0])
    sel = kind == CHECKER
    if np.any(sel):
        su = 2.0 * _filtered_square(u[sel], fu[sel], period[sel, 0], 0.5) - 1.0
        sv = 2.0 * _filtered_square(v[sel], fv[sel], period[sel, 1], 0.5) - 1.0
        pattern[sel] = 0.5 + 0.5 * su * sv
    sel = kind == BRICKS
    if np.any(sel):
        brick_len, row_h = period[sel, 0], period[sel, 1]
        row = np.floor(v[sel] / row_h)
        mortar_h = _filtered_square(v[sel], fv[sel], row_h, duty[sel, 1])
        mortar_v = _filtered_square(u[sel], fu[sel], brick_len, duty[sel, 0], 0.5 * (row % 2))
        pattern[sel] = 1.0 - (1.0 - mortar_h) * (1.0 - mortar_v)
    sel = kind == WINDOWS
    if np.any(sel):
        pattern[sel] = (_filtered_square(u[sel], fu[sel], period[sel, 0], duty[sel, 0], 0.25)
                        * _filtered_square(v[sel], fv[sel], period[sel, 1], duty[sel, 1], 0.3))

    base = c0 + (c1 - c0) * pattern[:, None]
    n1 = _fractal_noise(tables, u + off[:, 0], v + off[:, 1], mat["cell"][surf], fmax)
    n2 = _fractal_noise(tables[:2], u + off[:, 1], v + off[:, 0], 4.0 * mat["cell"][surf], fmax)
    amp = mat["amp"][surf][:, None]
    rgb = base * (1.0 + 2.0 * amp * n1[:, None]) + tint * (1.5 * n2[:, None])

    sel = kind == SKY
    if np.any(sel):
        clouds = np.clip(0.5 + 2.0 * n2[sel] + 0.5 * n1[sel], 0.0, 1.0)[:, None]
        rgb[sel] = c0[sel] + (c1[sel] - c0[sel]) * clouds
    sel = kind == ROAD
    if np.any(sel):
        rgb[sel] = _road(u[sel], v[sel], fu[sel], fv[sel], c0[sel], c1[sel], tint[sel],
                         period[sel], n1[sel], n2[sel])
    return rgb * mat["shade"][surf][:, None]


def _road(x, z, fx, fz, asphalt, tiles, verge, period, n1, n2) -> np.ndarray:
    """Road surface in world coordinates: lanes, lane lines, sidewalks with tiles, verges."""
    asphalt = asphalt * (1.0 + 0.8 * n1[:, None]) + 0.05 * n2[:, None]
    white = np.array([0.92, 0.92, 0.88])
    edge = (_coverage(x, fx, -7.1, -6.9) + _coverage(x, fx, 6.9, 7.1))
    dash = _filtered_square(z, fz, period[:, 1], 0.35)
    lines = sum(_coverage(x, fx, c - 0.075, c + 0.075) for c in (-LANE_WIDTH, 0.0, LANE_WIDTH))
    marking = np.clip(edge + lines * dash, 0.0, 1.0)[:, None]
    road = asphalt + (white - asphalt) * marking
    su = 2.0 * _filtered_square(x, fx, period[:, 0], 0.5) - 1.0
    sv = 2.0 * _filtered_square(z, fz, period[:, 0], 0.5) - 1.0
    tile = tiles * (0.85 + 0.15 * su * sv)[:, None] * (1.0 + 0.6 * n1[:, None])
    verge = verge * (1.0 + 1.5 * n1[:, None] + 0.8 * n2[:, None])
    w_side = (_coverage(x, fx, -9.5, -7.5) + _coverage(x, fx, 7.5, 9.5))[:, None]
    w_verge = (_coverage(x, fx, -1e4, -9.5) + _coverage(x, fx, 9.5, 1e4))[:, None]
    w_curb = (_coverage(x, fx, -7.5, -7.1) + _coverage(x, fx, 7.1, 7.5))[:, None]
    curb = 0.75 * np.ones(3)
    w_road = 1.0 - w_side - w_verge - w_curb
    return w_road * road + w_side * tile + w_verge * verge + w_curb * curb


# ----------------------------------------------------------------------------------
# Ray casting
# ----------------------------------------------------------------------------------

_FACE_UV = ((2, 1), (0, 2), (0, 1))  # texture axes (u, v) of a face normal to x, y, z


@dataclasses.dataclass
class Frame:
    """One rendered frame. Pixel arrays are [H, W, ...]."""
    image: np.ndarray        # uint8 [H, W, 3]
    depth: np.ndarray        # float64 [H, W], camera z
    points: np.ndarray       # float64 [H, W, 3], world point of each pixel
    prim: np.ndarray         # int64 [H, W], box index, or num_boxes for the room


def _pixel_rays(height, width, K) -> np.ndarray:
    """Camera rays K^-1 [x, y, 1] of every pixel centre (integer coordinates). [H*W, 3]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    pix = np.stack([x, y, np.ones_like(x)], -1).reshape(-1, 3)
    return pix @ np.linalg.inv(K).T


def _frustum_cull(scene, centres, box_rot, R, c, K, height, width) -> np.ndarray:
    """Indices of the boxes not entirely outside one plane of the view frustum."""
    num = len(centres)
    if num == 0:
        return np.zeros(0, np.int64)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    corners = centres[:, None] + np.einsum("nij,nkj->nki", box_rot,
                                           signs[None] * scene.box_half[:, None])  # [N, 8, 3]
    cam = np.einsum("ji,nkj->nki", R, corners - c)                                # R^T (X - c)
    x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
    margin = 2.0  # pixels
    outside = (
        (z < 1e-3)
        .all(1)
        | (x * K[0, 0] - z * (width - 1 + margin - K[0, 2]) > 0).all(1)
        | (x * K[0, 0] + z * (K[0, 2] + margin) < 0).all(1)
        | (y * K[1, 1] - z * (height - 1 + margin - K[1, 2]) > 0).all(1)
        | (y * K[1, 1] + z * (K[1, 2] + margin) < 0).all(1))
    return np.nonzero(~outside)[0]


_BOX_EDGES = [(i, j) for i in range(8) for j in range(i + 1, 8)
              if bin(i ^ j).count("1") == 1]     # corners differing in one sign: 12 edges


def _cut_in_front(cam: np.ndarray, near: float) -> np.ndarray:
    """The corners [8, 3] (camera frame, in the sign order of `exact_boxes`: corners i and j
    share an edge when their indices differ in one bit) of a box in front of the plane
    z = near, plus the points where its edges cross that plane: the vertices of the box
    cut by the plane."""
    z = cam[:, 2]
    points = [cam[z >= near]]
    for i, j in _BOX_EDGES:
        if (z[i] - near) * (z[j] - near) < 0:
            a = (near - z[i]) / (z[j] - z[i])
            points.append((cam[i] + a * (cam[j] - cam[i]))[None])
    return np.concatenate(points, 0)


def render_frame(scene: Scene, frame: int, height: int, width: int, tables: np.ndarray,
                 chunk: int = 8192) -> Frame:
    """Ray casts one frame: all pixels against all boxes and the room at once (in chunks)."""
    K = intrinsics(height, width)
    rays = _pixel_rays(height, width, K)
    R = scene.cam_to_world[frame, :3, :3]
    c = scene.cam_to_world[frame, :3, 3]
    centres = scene.box_center + frame * scene.box_velocity
    box_rot = _rot_y(scene.box_yaw)                            # [N, 3, 3] local -> world
    world_to_local = np.swapaxes(box_rot, 1, 2)
    origin_local = np.einsum("nij,nj->ni", world_to_local, c[None] - centres)  # [N, 3]
    visible = _frustum_cull(scene, centres, box_rot, R, c, K, height, width)
    world_to_local32 = world_to_local[visible].astype(np.float32)
    origin32 = origin_local[visible].astype(np.float32)
    half32 = scene.box_half[visible].astype(np.float32)
    num_visible = len(visible)
    dx_world, dy_world = R[:, 0] / K[0, 0], R[:, 1] / K[1, 1]    # ray change per pixel
    num = scene.num_boxes
    colours, depths, points, prims = [], [], [], []
    for start in range(0, rays.shape[0], chunk):
        d_world = np.einsum("ij,pj->pi", R, rays[start:start + chunk])  # [P, 3]; cam z is 1
        P = d_world.shape[0]
        # --- boxes: slab test in each box's frame, all pixels x all boxes, in float32 to
        # find the nearest box; the chosen box is then intersected again in float64.
        if num_visible:
            t_near = np.full((P, num_visible), -np.inf, np.float32)
            t_far = np.full((P, num_visible), np.inf, np.float32)
            d32 = d_world.astype(np.float32)
            for k in range(3):
                w = world_to_local32[:, k, :]                                # [N, 3]
                # (elementwise, not a matmul: multi-threaded BLAS is slower at this size)
                dk = d32[:, 0:1] * w[:, 0] + d32[:, 1:2] * w[:, 1] + d32[:, 2:3] * w[:, 2]
                dk = np.where(np.abs(dk) < 1e-9, np.float32(1e-9), dk)
                inv = np.float32(1.0) / dk
                ta = (-half32[:, k] - origin32[:, k]) * inv
                tb = (half32[:, k] - origin32[:, k]) * inv
                np.maximum(t_near, np.minimum(ta, tb), out=t_near)
                np.minimum(t_far, np.maximum(ta, tb), out=t_far)
            t_near = np.where((t_near <= t_far) & (t_near > 1e-4), t_near, np.inf)
            nearest = np.argmin(t_near, 1)                               # [P]
            any_box = np.isfinite(t_near[np.arange(P), nearest])
            box = visible[nearest]
            # exact float64 intersection with the chosen box
            d_local = np.einsum("pij,pj->pi", world_to_local[box], d_world)
            d_safe = np.where(np.abs(d_local) < 1e-12, 1e-12, d_local)
            t1 = (-scene.box_half[box] - origin_local[box]) / d_safe
            t2 = (scene.box_half[box] - origin_local[box]) / d_safe
            tmin = np.minimum(t1, t2)
            box_axis = np.argmax(tmin, -1)
            t_box = np.where(any_box, np.max(tmin, -1), np.inf)
        else:
            box = np.zeros(P, np.int64)
            t_box = np.full(P, np.inf)
        # --- the room (exit of the enclosing box)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_axes = np.where(d_world > 0, (scene.room_hi - c) / d_world,
                              np.where(d_world < 0, (scene.room_lo - c) / d_world, np.inf))
        room_axis = np.argmin(t_axes, -1)
        t_room = np.min(t_axes, -1)
        use_box = t_box < t_room
        t = np.where(use_box, t_box, t_room)
        prim = np.where(use_box, box, num)
        if num_visible:
            axis = np.where(use_box, box_axis, room_axis)
            d_l = np.where(use_box[:, None], d_local, d_world)
            o_l = np.where(use_box[:, None], origin_local[box], c[None])
            rot_t = np.where(use_box[:, None, None], world_to_local[box], np.eye(3))
        else:
            axis, d_l, o_l = room_axis, d_world, np.broadcast_to(c, d_world.shape)
            rot_t = np.broadcast_to(np.eye(3), (P, 3, 3))
        ar = np.arange(P)
        d_axis = d_l[ar, axis]
        # boxes are entered through the face opposite the ray; the room is left through the
        # face the ray points at
        side = np.where(use_box, -np.sign(d_axis), np.sign(d_axis))
        surf = prim * 6 + axis * 2 + (side > 0)
        q = o_l + t[:, None] * d_l                                # hit, prim-local coords
        # footprint: derivative of the local hit point w.r.t. one pixel step in x and y
        fp = []
        for dw in (dx_world, dy_world):
            a_l = np.einsum("pij,j->pi", rot_t, dw)
            fp.append(t[:, None] * (a_l - d_l * (a_l[ar, axis] / d_axis)[:, None]))
        uv_axes = np.array(_FACE_UV)[axis]                        # [P, 2]
        u, v = q[ar, uv_axes[:, 0]], q[ar, uv_axes[:, 1]]
        fu = np.abs(fp[0][ar, uv_axes[:, 0]]) + np.abs(fp[1][ar, uv_axes[:, 0]])
        fv = np.abs(fp[0][ar, uv_axes[:, 1]]) + np.abs(fp[1][ar, uv_axes[:, 1]])
        fu, fv = np.maximum(fu, 1e-4), np.maximum(fv, 1e-4)
        colours.append(_texture(scene.materials, surf, u, v, fu, fv, tables))
        depths.append(t)
        points.append(c[None] + t[:, None] * d_world)
        prims.append(prim)
    image = np.clip(np.concatenate(colours), 0.0, 1.0).reshape(height, width, 3)
    return Frame(
        image=np.round(image * 255.0).astype(np.uint8),
        depth=np.concatenate(depths).reshape(height, width),
        points=np.concatenate(points).reshape(height, width, 3),
        prim=np.concatenate(prims).reshape(height, width),
    )


# ----------------------------------------------------------------------------------
# Sequences and snippets
# ----------------------------------------------------------------------------------

class Sequence:
    """A rendered sequence; `snippet(i)` gives the ground truth of the snippet centred on i."""

    def __init__(self, config: WorldConfig, split: str, index: int):
        self.config = config
        self.split = split
        self.index = index
        self.scene = build_scene(config, split, index)
        self.K = intrinsics(config.height, config.width)
        tables = _noise_tables(config.seed)
        self.frames = [render_frame(self.scene, f, config.height, config.width, tables)
                       for f in range(config.frames_per_sequence)]

    @property
    def sequence_id(self) -> str:
        return f"synthetic/{self.split}/{self.index:04d}"

    @property
    def images(self) -> np.ndarray:
        """uint8 [F, H, W, 3]."""
        return np.stack([f.image for f in self.frames])

    def target_indices(self) -> range:
        """Frames that have a full snippet around them."""
        after = specs.NUM_FRAMES - 1 - specs.TARGET_INDEX
        return range(specs.TARGET_INDEX, len(self.frames) - after)

    def pose(self, target: int, source: int) -> np.ndarray:
        """T_target->source, float64 [4, 4]."""
        return np.linalg.inv(self.scene.cam_to_world[source]) @ self.scene.cam_to_world[target]

    def flow_and_mask(self, target: int, source: int) -> Tuple[np.ndarray, np.ndarray]:
        """Flow target->source [H, W, 2] (px, x then y) and the moving mask [H, W] uint8."""
        frame = self.frames[target]
        scene = self.scene
        moving_box = np.append(scene.box_moving, False)
        moving = moving_box[frame.prim]
        velocity = np.concatenate([scene.box_velocity, np.zeros((1, 3))])[frame.prim]
        points = frame.points + (source - target) * velocity * moving[..., None]
        T = scene.cam_to_world[source]
        cam = (points - T[:3, 3]) @ T[:3, :3]                      # R^T (X - c)
        proj = cam @ self.K.T
        xy = proj[..., :2] / proj[..., 2:3]
        h, w = frame.depth.shape
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        flow = xy - np.stack([x, y], -1)
        return flow, moving.astype(np.uint8)

    def object_motion(self, target: int, source: int) -> np.ndarray:
        """Residual object motion [H, W, 3] (m, target camera) of every target pixel:
        r = R_t^T (source - target) v, so that X_s = R (X_t + r) + t with
        (R, t) = `pose(target, source)`; 0 on static pixels."""
        scene = self.scene
        velocity = np.concatenate([scene.box_velocity * scene.box_moving[:, None],
                                   np.zeros((1, 3))])[self.frames[target].prim]
        rotation = scene.cam_to_world[target, :3, :3]
        return (source - target) * velocity @ rotation                # R_t^T v, row vectors

    def exact_boxes(self, frame: int) -> np.ndarray:
        """The exact 2-D box of every object seen in `frame` (module docstring).

        Returns:
          float64 [n, 6] (x1, y1, x2, y2, score = 1, class), in object order.
        """
        scene = self.scene
        h, w = self.config.height, self.config.width
        seen = np.bincount(self.frames[frame].prim.ravel(), minlength=scene.num_boxes + 1)
        objects = [b for b in range(scene.num_boxes)
                   if scene.box_class[b] >= 0 and seen[b] > 0]
        if not objects:
            return np.zeros((0, specs.BOX_FIELDS))
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                         np.float64)
        cam_to_world = scene.cam_to_world[frame]
        rows = []
        for b in objects:
            centre = scene.box_center[b] + frame * scene.box_velocity[b]
            corners = centre + (signs * scene.box_half[b]) @ _rot_y(scene.box_yaw[b]).T
            cam = (corners - cam_to_world[:3, 3]) @ cam_to_world[:3, :3]   # R^T (X - c)
            points = _cut_in_front(cam, BOX_NEAR_Z)
            proj = points @ self.K.T
            xy = proj[:, :2] / proj[:, 2:3]
            rows.append([*xy.min(0), *xy.max(0), 1.0, scene.box_class[b]])
        return boxes_lib.clip_boxes(np.array(rows), h, w).astype(np.float64)

    def frame_boxes(self, frame: int) -> np.ndarray:
        """The boxes of `frame` as written to the records: `exact_boxes`, widened by up to
        `config.box_jitter` per side and dropped with probability `config.box_miss_rate`
        (seeded by the config, split, sequence and frame), clipped to the image.

        Returns:
          float32 [n, 6] (x1, y1, x2, y2, score, class).
        """
        rows = self.exact_boxes(frame)
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, SPLITS.index(self.split), self.index, frame,
                                     0xB0B5])
        keep = rng.uniform(size=len(rows)) >= cfg.box_miss_rate
        margin = rng.uniform(0.0, cfg.box_jitter, size=(len(rows), 4))
        size = np.stack([rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1]], -1)
        rows = rows.copy()
        rows[:, :4] += margin * np.concatenate([-size, size], -1)
        return boxes_lib.clip_boxes(rows[keep], cfg.height, cfg.width)

    def snippet(self, target: int) -> Dict[str, np.ndarray]:
        """Frames and exact ground truth of the snippet [target-1, target, target+1].

        Returns:
          dict: `frames` uint8 [3, H, W, 3], `intrinsics` [3, 3], `gt_depth` float32 [H, W],
          `gt_pose` float32 [S, 4, 4] (T_target->source), `gt_flow` float32 [S, H, W, 2],
          `gt_moving_mask` uint8 [S, H, W], `gt_object_motion` float32 [S, H, W, 3].
        """
        offsets = [i - specs.TARGET_INDEX for i in range(specs.NUM_FRAMES)]
        frame_ids = [target + o for o in offsets]
        if min(frame_ids) < 0 or max(frame_ids) >= len(self.frames):
            raise IndexError(f"target {target} has no full snippet in a sequence of "
                             f"{len(self.frames)} frames")
        sources = [frame_ids[i] for i in specs.SOURCE_INDICES]
        flows, masks = zip(*[self.flow_and_mask(target, s) for s in sources])
        return {
            "frames": np.stack([self.frames[f].image for f in frame_ids]),
            "intrinsics": self.K.astype(np.float32),
            "gt_depth": self.frames[target].depth.astype(np.float32),
            "gt_pose": np.stack([self.pose(target, s) for s in sources]).astype(np.float32),
            "gt_flow": np.stack(flows).astype(np.float32),
            "gt_moving_mask": np.stack(masks),
            "gt_object_motion": np.stack(
                [self.object_motion(target, s) for s in sources]).astype(np.float32),
        }


def render_sequence(config: WorldConfig, split: str = "train", index: int = 0) -> Sequence:
    """Renders sequence `index` of `split` (deterministic in config and index)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Sequence(config, split, index)


# ----------------------------------------------------------------------------------
# Writing records and the cache
# ----------------------------------------------------------------------------------

def _encode_png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def serialized_snippets(sequence: Sequence) -> Iterator[bytes]:
    """Yields one serialised `tf.train.Example` per snippet of the sequence (with GT)."""
    from coopnet_tf.data import records  # imports TensorFlow
    encoded = [_encode_png(f.image) for f in sequence.frames]
    frame_boxes = [sequence.frame_boxes(f) for f in range(len(sequence.frames))]
    cfg = sequence.config
    for t in sequence.target_indices():
        gt = sequence.snippet(t)
        frame_ids = [t + i - specs.TARGET_INDEX for i in range(specs.NUM_FRAMES)]
        yield records.serialize_snippet(
            [encoded[f] for f in frame_ids], gt["intrinsics"], cfg.height, cfg.width,
            sequence.sequence_id, t, gt_depth=gt["gt_depth"], gt_pose=gt["gt_pose"],
            gt_flow=gt["gt_flow"], gt_moving_mask=gt["gt_moving_mask"],
            gt_object_motion=gt["gt_object_motion"], boxes=[frame_boxes[f] for f in frame_ids])


def file_pattern(path, split: str = "train") -> str:
    """Glob of the record files of `split` in a dataset directory written here."""
    from coopnet_tf.data import records  # imports TensorFlow
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return records.file_pattern(path, split)


def is_complete(path) -> bool:
    """True when `path` holds a finished dataset (its marker file is written last)."""
    return os.path.isfile(os.path.join(os.fspath(path), FINISHED_MARKER))


def write_synthetic_dataset(output_dir, config: Optional[WorldConfig] = None,
                            progress: bool = True, **world_config) -> str:
    """Renders every split and writes sharded TFRecords (with ground truth) to `output_dir`.

    The shards of a split are written by `records.atomic_writers` (temporary names, moved
    into place with `os.replace` when the split is complete); the marker file `_FINISHED`
    (a JSON summary) is written last, so a directory without it is incomplete. Snippets are dealt round-robin to the shards of their split.

    Args:
      output_dir: directory to write to (created).
      config: a `WorldConfig`; or pass its fields as keyword arguments.
      progress: show a tqdm progress bar over sequences.

    Returns:
      `output_dir` as a string.
    """
    from tqdm.auto import tqdm

    from coopnet_tf.data import records  # imports TensorFlow

    if config is None:
        config = WorldConfig(**world_config)
    elif world_config:
        config = dataclasses.replace(config, **world_config)
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if is_complete(output_dir):
        os.remove(os.path.join(output_dir, FINISHED_MARKER))
    start = time.time()
    snippets_per_sequence = config.frames_per_sequence - (specs.NUM_FRAMES - 1)
    total_sequences = sum(config.num_split_sequences(s) for s in SPLITS)
    summary = {"config": dataclasses.asdict(config), "generator_version": GENERATOR_VERSION,
               "splits": {}}
    with tqdm(total=total_sequences, desc=f"synthetic world {config.height}x{config.width}",
              unit="seq", disable=not progress) as bar:
        for split in SPLITS:
            num_seq = config.num_split_sequences(split)
            if num_seq == 0:
                continue
            wanted = config.train_shards if split == "train" else config.eval_shards
            num_shards = max(1, min(wanted, num_seq * snippets_per_sequence))
            paths = [records.shard_path(output_dir, split, i, num_shards)
                     for i in range(num_shards)]
            count = 0
            with records.atomic_writers(paths) as writers:
                for index in range(num_seq):
                    for example in serialized_snippets(render_sequence(config, split, index)):
                        writers[count % num_shards].write(example)
                        count += 1
                    bar.update(1)
            summary["splits"][split] = {"sequences": num_seq, "snippets": count,
                                        "shards": num_shards,
                                        "pattern": file_pattern(output_dir, split)}
    summary["seconds"] = round(time.time() - start, 2)
    _atomic_write_text(os.path.join(output_dir, CONFIG_FILE),
                       json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True))
    _atomic_write_text(os.path.join(output_dir, FINISHED_MARKER),
                       json.dumps(summary, indent=2, sort_keys=True))
    return output_dir


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def default_cache_dir() -> pathlib.Path:
    """$COOPNET_CACHE/synthetic, else ~/.cache/coopnet_tf/synthetic."""
    root = os.environ.get("COOPNET_CACHE")
    if root:
        base = pathlib.Path(root).expanduser()
    else:
        base = pathlib.Path.home() / ".cache" / "coopnet_tf"
    return base / "synthetic"


def ensure_synthetic_dataset(cache_dir=None, progress: bool = True, **world_config) -> str:
    """Returns the directory of the synthetic dataset of this config, generating it once.

    The dataset lives in `<cache_dir>/<H>x<W>-<hash of the config>`; `cache_dir` defaults to
    `default_cache_dir()` ($COOPNET_CACHE/synthetic or ~/.cache/coopnet_tf/synthetic).
    The first call renders it (progress bar) into a temporary directory beside it and
    renames that into place when finished, so the path either is complete or does not
    exist; concurrent callers (pytest workers, several jobs) wait on a lock file and the
    later ones reuse the result. Later calls return at once.

    Args:
      cache_dir: root directory of the cache.
      progress: show a progress bar while generating.
      **world_config: fields of `WorldConfig` (height, width, num_sequences, ...).

    Returns:
      The dataset directory; `file_pattern(path, split)` gives its record files, split in
      ("train", "val", "test").
    """
    config = WorldConfig(**world_config)
    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{config.height}x{config.width}-{config.cache_key()}"
    if is_complete(path):
        return str(path)
    with open(root / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_complete(path):
                return str(path)
            if path.exists():       # an incomplete leftover (cannot happen via rename)
                shutil.rmtree(path)
            tmp = tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=root)
            try:
                write_synthetic_dataset(tmp, config, progress=progress)
                # the summary names the temporary directory: rewrite it for the final path
                marker = pathlib.Path(tmp) / FINISHED_MARKER
                summary = json.loads(marker.read_text())
                for split_info in summary["splits"].values():
                    split_info["pattern"] = split_info["pattern"].replace(tmp, str(path))
                _atomic_write_text(str(marker), json.dumps(summary, indent=2, sort_keys=True))
                os.replace(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(path)


def dataset_summary(path) -> dict:
    """The JSON summary (config, snippets and shards per split) of a finished dataset."""
    marker = os.path.join(os.fspath(path), FINISHED_MARKER)
    if not os.path.isfile(marker):
        raise FileNotFoundError(
            f"{path} is not a finished synthetic dataset (no {FINISHED_MARKER})")
    with open(marker) as f:
        return json.load(f)


__all__ = [
    "WorldConfig", "Scene", "Sequence", "Frame", "intrinsics", "build_scene", "render_frame",
    "render_sequence", "serialized_snippets", "write_synthetic_dataset",
    "ensure_synthetic_dataset", "default_cache_dir", "file_pattern", "is_complete",
    "dataset_summary",
]
