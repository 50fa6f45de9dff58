"""Colour of the procedural scenes: photo textures, one point light with hard shadows, jitter.

Each surface (a room face or an object) gets its own photograph, texture scale, offset and
tint, so that neighbouring surfaces differ in appearance and reconstruction is not trivial.
"""

from __future__ import annotations

import numpy as np

from sgmim.data.synthetic.geometry import rotation_z
from sgmim.data.synthetic.layout import BOX, NUM_ROOM_FACES, SPHERE, Layout, Primitive, object_hit
from sgmim.data.synthetic.textures import sample_bilinear, texture_bank

AMBIENT = (0.25, 0.45)        # share of light that reaches shadowed and back-facing surfaces
ROOM_TILE = (0.8, 2.5)        # metres covered by one texture tile on the room's faces
OBJECT_TILE = (0.3, 1.2)      # ... and on objects
SHADOW_OFFSET = 1e-3          # shadow rays start this far off the surface (metres)
LIGHT_GAIN = 1.6              # the best-lit surfaces saturate a little, as in an exposed photo


def _room_face_geometry(face: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inward normal and the two in-plane coordinates (metres) of points on room face `face`."""
    axis, at_max = divmod(face, 2)
    normal = np.zeros((len(points), 3))
    normal[:, axis] = -1.0 if at_max else 1.0
    return normal, np.delete(points, axis, axis=1)


def _object_geometry(obj: Primitive, points: np.ndarray, detail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward normal and surface coordinates (metres) of points on `obj`; `detail` from the hit."""
    local = points - obj.center
    if obj.kind == BOX:
        rot = rotation_z(obj.yaw)
        local = local @ rot
        normal = np.zeros_like(local)
        rows = np.arange(len(local))
        normal[rows, detail] = np.sign(local[rows, detail])
        # Top and bottom faces map (x, y); a side face its horizontal edge and z.
        horizontal = np.where(detail == 0, local[:, 1], local[:, 0])
        uv = np.where(detail[:, None] == 2, local[:, :2], np.stack([horizontal, local[:, 2]], axis=1))
        return normal @ rot.T, uv
    radius = obj.size[0]
    if obj.kind == SPHERE:
        normal = local / radius
        uv = radius * np.stack([np.arctan2(normal[:, 1], normal[:, 0]),
                                np.arccos(np.clip(normal[:, 2], -1, 1))], axis=1)
        return normal, uv
    on_cap = detail.astype(bool)
    side = np.concatenate([local[:, :2] / radius, np.zeros((len(local), 1))], axis=1)
    cap = np.zeros_like(local)
    cap[:, 2] = np.sign(local[:, 2])
    normal = np.where(on_cap[:, None], cap, side)
    around = np.stack([radius * np.arctan2(local[:, 1], local[:, 0]), local[:, 2]], axis=1)
    return normal, np.where(on_cap[:, None], local[:, :2], around)


def _albedo(rng: np.random.Generator, uv: np.ndarray, tile: tuple[float, float]) -> np.ndarray:
    """(N, 3) texture colour for surface coordinates `uv` (N, 2) in metres, one random material."""
    bank, is_grey = texture_bank()
    k = rng.integers(len(bank))
    texels = bank.shape[1] / rng.uniform(*tile)
    offset = rng.uniform(0, bank.shape[1], 2)
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    coords = uv @ rot.T * texels + offset
    colour = sample_bilinear(bank[k], coords[:, 0], coords[:, 1])
    # Grey photos get a random paint colour; colour photos a milder per-channel jitter.
    tint = rng.uniform(0.3, 1.0, 3) if is_grey[k] else rng.uniform(0.8, 1.2, 3)
    return colour * tint


def _in_shadow(layout: Layout, points: np.ndarray) -> np.ndarray:
    """(N,) bool: an object blocks the segment between each point and the light.

    The intersection routines take one origin, so the rays start at the light and aim at the
    points: the point is at t = 1 and anything hit at t < 1 lies in between.
    """
    blocked = np.zeros(len(points), dtype=bool)
    for obj in layout.objects:
        t, _ = object_hit(obj, layout.light, points - layout.light)
        blocked |= t < 1.0
    return blocked


def shade(layout: Layout, rng: np.random.Generator, dirs: np.ndarray, t: np.ndarray,
          instance: np.ndarray, detail: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colour of the surfaces hit by primary rays (N,)."""
    points = layout.camera.cam_to_world[:3, 3] + t[:, None] * dirs
    normal = np.zeros_like(points)
    albedo = np.zeros_like(points)
    for k in range(NUM_ROOM_FACES + len(layout.objects)):
        hit = instance == k
        if k < NUM_ROOM_FACES:
            normal_k, uv = _room_face_geometry(k, points[hit])
            tile = ROOM_TILE
        else:
            normal_k, uv = _object_geometry(layout.objects[k - NUM_ROOM_FACES], points[hit], detail[hit])
            tile = OBJECT_TILE
        normal[hit] = normal_k
        albedo[hit] = _albedo(rng, uv, tile)

    to_light = layout.light - points
    distance = np.linalg.norm(to_light, axis=1)
    lambert = np.clip(np.einsum("ij,ij->i", normal, to_light) / distance, 0.0, 1.0)
    lit = lambert > 0
    lambert[lit] *= ~_in_shadow(layout, points[lit] + SHADOW_OFFSET * normal[lit])
    falloff = 1.0 / (1.0 + (distance / np.linalg.norm(layout.room)) ** 2)
    ambient = rng.uniform(*AMBIENT)
    light = ambient + (1.0 - ambient) * LIGHT_GAIN * lambert * falloff
    colour = albedo * light[:, None]
    # Scene-wide colour jitter: exposure, white balance and gamma.
    colour = colour * rng.uniform(0.8, 1.25) * rng.uniform(0.9, 1.1, 3)
    colour = np.clip(colour, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    return (colour * 255 + 0.5).astype(np.uint8)
