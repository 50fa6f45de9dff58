"""Scene layout: room, pinhole camera, light and primitives, sampled from one NumPy stream.

Conventions: world z up, floor at z = 0, room = [0, Lx] × [0, Ly] × [0, Lz] metres; camera
frame as OpenCV (x right, y down, z forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sgmim.data.synthetic.geometry import box_hit, cylinder_hit, sphere_hit
from sgmim.spec.data import DEFAULT_NUM_OBJECTS, SceneGeometryConfig

CLASS_NAMES = ("floor", "wall", "ceiling", "box", "sphere", "cylinder")
FLOOR, WALL, CEILING, BOX, SPHERE, CYLINDER = range(len(CLASS_NAMES))
# room_exit's face index (2·axis + max side) → class: x and y faces are walls.
ROOM_FACE_CLASSES = (WALL, WALL, WALL, WALL, FLOOR, CEILING)
NUM_ROOM_FACES = len(ROOM_FACE_CLASSES)

# Room size, camera height, pitch and field of view come from `SceneGeometryConfig`.
CAMERA_YAW_JITTER = 0.6       # radians off the direction of the room's centre
CAMERA_ROLL = 0.05            # radians, either way
WALL_MARGIN = 0.4             # camera and objects keep this far from the walls
CAMERA_CLEARANCE = 0.3        # free space between the camera and any object's footprint
LIGHT_INSET = 0.5             # the ceiling light keeps this far from the walls...
LIGHT_DROP = 0.1              # ... and hangs this far below the ceiling

# Object sizes in metres (uniform ranges). Everything stays below the lowest light (2.3 m).
BOX_HALF_WIDTH = (0.15, 0.7)
BOX_HALF_HEIGHT = (0.1, 0.9)
SPHERE_RADIUS = (0.1, 0.5)
CYLINDER_RADIUS = (0.08, 0.4)
CYLINDER_HEIGHT = (0.2, 1.8)
# Objects are placed in front of the camera, where they can be seen (at `object_distance`).
PLACE_ANGLE = 0.6             # radians off the viewing direction


@dataclass
class Primitive:
    """One object. `size`: box half-extents (3,); sphere (radius,); cylinder (radius, height)."""

    kind: int
    center: np.ndarray
    size: np.ndarray
    yaw: float = 0.0

    @property
    def footprint(self) -> float:
        """Radius of a vertical cylinder around the object's centre that contains it."""
        return float(np.hypot(*self.size[:2])) if self.kind == BOX else float(self.size[0])

    @property
    def bound(self) -> float:
        """Radius of a sphere around `center` that contains the object."""
        if self.kind == BOX:
            return float(np.linalg.norm(self.size))
        if self.kind == SPHERE:
            return float(self.size[0])
        return float(np.hypot(self.size[0], self.size[1] / 2))


@dataclass
class Camera:
    intrinsics: np.ndarray     # (3, 3) pixel coordinates, pixel centres at integers
    cam_to_world: np.ndarray   # (4, 4)

    def ray_directions(self, height: int, width: int) -> np.ndarray:
        """(H·W, 3) world directions with camera-frame z = 1, so the hit `t` is the z-depth."""
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
        pixels = np.stack([cols.ravel(), rows.ravel(), np.ones(height * width)], axis=1)
        return pixels @ np.linalg.inv(self.intrinsics).T @ self.cam_to_world[:3, :3].T


@dataclass
class Layout:
    """Everything `render_scene` draws before it casts a ray."""

    room: np.ndarray
    camera: Camera
    light: np.ndarray
    objects: list[Primitive] = field(default_factory=list)


def _look_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation: columns are the camera's x (right), y (down), z (forward)."""
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


def _sample_camera(rng: np.random.Generator, room: np.ndarray, height: int, width: int,
                   geometry: SceneGeometryConfig) -> Camera:
    position = np.array([rng.uniform(WALL_MARGIN, room[0] - WALL_MARGIN),
                         rng.uniform(WALL_MARGIN, room[1] - WALL_MARGIN),
                         rng.uniform(*geometry.camera_height)])
    to_centre = room[:2] / 2 - position[:2]
    yaw = np.arctan2(to_centre[1], to_centre[0]) + rng.uniform(-CAMERA_YAW_JITTER, CAMERA_YAW_JITTER)
    pitch = np.radians(rng.uniform(*geometry.camera_pitch_deg))
    rotation = _look_rotation(yaw, pitch, rng.uniform(-CAMERA_ROLL, CAMERA_ROLL))
    focal = (max(height, width) / 2) / np.tan(np.radians(rng.uniform(*geometry.hfov_deg)) / 2)
    intrinsics = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, position
    return Camera(intrinsics, pose)


def _sample_object(rng: np.random.Generator) -> Primitive:
    """A primitive resting on the floor at the origin; `_place` moves it."""
    kind = int(rng.choice([BOX, SPHERE, CYLINDER]))
    if kind == BOX:
        half = np.array([*rng.uniform(*BOX_HALF_WIDTH, 2), rng.uniform(*BOX_HALF_HEIGHT)])
        return Primitive(kind, np.array([0.0, 0.0, half[2]]), half, rng.uniform(0, np.pi))
    if kind == SPHERE:
        radius = rng.uniform(*SPHERE_RADIUS)
        return Primitive(kind, np.array([0.0, 0.0, radius]), np.array([radius]))
    size = np.array([rng.uniform(*CYLINDER_RADIUS), rng.uniform(*CYLINDER_HEIGHT)])
    return Primitive(kind, np.array([0.0, 0.0, size[1] / 2]), size)


def _place(rng: np.random.Generator, obj: Primitive, room: np.ndarray, camera: Camera,
           distance: tuple[float, float], tries: int = 20) -> bool:
    """Put `obj` inside the room, clear of the camera and in front of it; False if no spot fits."""
    cam_xy = camera.cam_to_world[:2, 3]
    forward = camera.cam_to_world[:3, 2]
    view_yaw = np.arctan2(forward[1], forward[0])
    margin = WALL_MARGIN / 2 + obj.footprint
    for _ in range(tries):
        angle = view_yaw + rng.uniform(-PLACE_ANGLE, PLACE_ANGLE)
        xy = cam_xy + rng.uniform(*distance) * np.array([np.cos(angle), np.sin(angle)])
        inside = np.all(xy >= margin) and np.all(xy <= room[:2] - margin)
        if inside and np.linalg.norm(xy - cam_xy) > obj.footprint + CAMERA_CLEARANCE:
            obj.center[:2] = xy
            return True
    return False


def sample_layout(rng: np.random.Generator, height: int, width: int,
                  num_objects: tuple[int, int] = DEFAULT_NUM_OBJECTS,
                  geometry: SceneGeometryConfig | None = None) -> Layout:
    """Room size, camera, light and objects for one scene."""
    geometry = geometry or SceneGeometryConfig()
    room = np.array([rng.uniform(*geometry.room_side), rng.uniform(*geometry.room_side),
                     rng.uniform(*geometry.room_height)])
    camera = _sample_camera(rng, room, height, width, geometry)
    light = np.array([rng.uniform(LIGHT_INSET, room[0] - LIGHT_INSET),
                      rng.uniform(LIGHT_INSET, room[1] - LIGHT_INSET), room[2] - LIGHT_DROP])
    layout = Layout(room, camera, light)
    for _ in range(rng.integers(num_objects[0], num_objects[1] + 1)):
        obj = _sample_object(rng)
        if _place(rng, obj, room, camera, geometry.object_distance):
            layout.objects.append(obj)
    return layout


def _exact_hit(obj: Primitive, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if obj.kind == BOX:
        return box_hit(origin, dirs, obj.center, obj.size, obj.yaw)
    if obj.kind == SPHERE:
        t = sphere_hit(origin, dirs, obj.center, obj.size[0])
        return t, np.zeros(len(t), dtype=np.int64)
    z_range = (obj.center[2] - obj.size[1] / 2, obj.center[2] + obj.size[1] / 2)
    t, on_cap = cylinder_hit(origin, dirs, obj.center[:2], obj.size[0], z_range)
    return t, on_cap.astype(np.int64)


def object_hit(obj: Primitive, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`t` (N,) and a per-ray detail for shading: the box face axis or the cylinder cap flag.

    Most objects cover a small part of the view, so the exact test runs only on the rays that
    enter the object's bounding sphere (all rays when the origin is inside that sphere).
    """
    if np.linalg.norm(origin - obj.center) <= obj.bound:
        return _exact_hit(obj, origin, dirs)
    candidates = np.flatnonzero(np.isfinite(sphere_hit(origin, dirs, obj.center, obj.bound)))
    t = np.full(len(dirs), np.inf)
    detail = np.zeros(len(dirs), dtype=np.int64)
    t[candidates], detail[candidates] = _exact_hit(obj, origin, dirs[candidates])
    return t, detail
