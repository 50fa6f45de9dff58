"""Ray–primitive intersection for the procedural scenes, vectorised over rays with NumPy.

World frame: z up, the floor is z = 0. Rays are `origin + t · D` with one origin for all rays
and D of shape (N, 3). The camera builds D with a camera-frame z component of 1, so the hit
parameter `t` *is* the metric z-depth; nothing here assumes unit directions.
A miss is `t = inf`. Only hits with `t > EPS` count, which keeps shadow rays from hitting the
surface they start on.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-4


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with ±inf (not a warning) where den is 0: an axis-parallel ray never crosses."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def rotation_z(yaw: float) -> np.ndarray:
    """(3, 3) rotation about the vertical axis by `yaw` radians."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def room_exit(origin: np.ndarray, dirs: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where rays from inside the box [0, size] leave it.

    Returns `t` (N,) and `face` (N,) int: 2·axis + (1 if the ray leaves through the max side),
    so 4 is the floor (z = 0) and 5 the ceiling.
    """
    positive = dirs > 0
    bound = np.where(positive, size, 0.0)
    t_axis = _safe_div(bound - origin, dirs)
    t_axis[~np.isfinite(t_axis) | (t_axis < 0)] = np.inf
    axis = np.argmin(t_axis, axis=1)
    rows = np.arange(len(dirs))
    return t_axis[rows, axis], 2 * axis + positive[rows, axis]


def box_hit(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, half: np.ndarray,
            yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """Oriented box (rotated by `yaw` about z) by the slab method.

    Returns `t` (N,) and the local axis (N,) of the entry face, for normals and texture maps.
    """
    rot = rotation_z(yaw)
    o_local = (origin - center) @ rot
    d_local = dirs @ rot
    t1 = _safe_div(-half - o_local, d_local)
    t2 = _safe_div(half - o_local, d_local)
    # fmin/fmax skip the NaN of 0/0 (a ray inside a slab's plane); column-wise is faster
    # than reducing over a length-3 axis.
    t_near = np.fmin(t1, t2)
    t_far = np.fmax(t1, t2)
    t_in = np.fmax(np.fmax(t_near[:, 0], t_near[:, 1]), t_near[:, 2])
    t_out = np.fmin(np.fmin(t_far[:, 0], t_far[:, 1]), t_far[:, 2])
    entry_axis = np.where(t_near[:, 0] == t_in, 0, np.where(t_near[:, 1] == t_in, 1, 2))
    hit = (t_in <= t_out) & (t_in > EPS)
    return np.where(hit, t_in, np.inf), entry_axis


def sphere_hit(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """Nearest entry of each ray into a sphere seen from outside: `t` (N,)."""
    oc = origin - center
    a = np.einsum("ij,ij->i", dirs, dirs)
    b = 2.0 * dirs @ oc
    c = oc @ oc - radius**2
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t = (-b - root) / (2 * a)
    return np.where((disc >= 0) & (t > EPS), t, np.inf)


def cylinder_hit(origin: np.ndarray, dirs: np.ndarray, center_xy: np.ndarray, radius: float,
                 z_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Capped vertical cylinder seen from outside.

    Returns `t` (N,) and `on_cap` (N,) bool (the hit is on the top or bottom disc).
    """
    oxy = origin[:2] - center_xy
    dxy = dirs[:, :2]
    a = np.einsum("ij,ij->i", dxy, dxy)
    b = 2.0 * dxy @ oxy
    c = oxy @ oxy - radius**2
    disc = b * b - 4 * a * c
    t_side = _safe_div(-b - np.sqrt(np.maximum(disc, 0.0)), 2 * a)
    z_side = origin[2] + t_side * dirs[:, 2]
    side_ok = (disc >= 0) & (t_side > EPS) & (z_side >= z_range[0]) & (z_side <= z_range[1])
    t_side = np.where(side_ok, t_side, np.inf)

    t_cap = np.full(len(dirs), np.inf)
    for z_cap in z_range:
        t = _safe_div(z_cap - origin[2], dirs[:, 2])
        p = oxy + t[:, None] * dxy
        ok = (t > EPS) & (np.einsum("ij,ij->i", p, p) <= radius**2)
        t_cap = np.where(ok & (t < t_cap), t, t_cap)
    return np.minimum(t_side, t_cap), t_cap < t_side
