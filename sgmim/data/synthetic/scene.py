"""Procedural indoor scenes: a room with boxes, spheres and cylinders seen by a pinhole camera.

`render_scene(seed, size)` is a pure function of its arguments. The seed draws the layout and
materials from one NumPy stream and the pseudo-depth errors from another, so changing the
pseudo-depth settings never changes the scene itself. `depth` is the z-depth in metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sgmim.data.synthetic.geometry import room_exit
from sgmim.data.synthetic.layout import NUM_ROOM_FACES, ROOM_FACE_CLASSES, Layout, object_hit, sample_layout
from sgmim.data.synthetic.pseudo_depth import pseudo_depth
from sgmim.data.synthetic.shading import shade
from sgmim.spec.data import DEFAULT_NUM_OBJECTS, PseudoDepthConfig, SceneGeometryConfig, SyntheticConfig


@dataclass
class Scene:
    """One rendered view. Arrays are (H, W[, 3]); `instance` indexes room faces then objects."""

    rgb: np.ndarray            # uint8 (H, W, 3)
    depth: np.ndarray          # float32 (H, W) metric z-depth, > 0 everywhere (closed room)
    label: np.ndarray          # uint8 (H, W) index into CLASS_NAMES
    instance: np.ndarray       # int32 (H, W)
    pseudo_depth: np.ndarray   # float32 (H, W) in [0, 1], 1 = near
    intrinsics: np.ndarray     # float32 (3, 3)
    cam_to_world: np.ndarray   # float32 (4, 4)


def cast(layout: Layout, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Primary rays: `t` (N,), `instance` (N,) and `detail` (N,) of the nearest surface."""
    origin = layout.camera.cam_to_world[:3, 3]
    t, instance = room_exit(origin, dirs, layout.room)
    detail = np.zeros_like(instance)
    for k, obj in enumerate(layout.objects):
        t_obj, obj_detail = object_hit(obj, origin, dirs)
        closer = t_obj < t
        t = np.where(closer, t_obj, t)
        instance = np.where(closer, NUM_ROOM_FACES + k, instance)
        detail = np.where(closer, obj_detail, detail)
    return t, instance, detail


def instance_classes(layout: Layout) -> np.ndarray:
    """(num_instances,) uint8 semantic class of each instance id."""
    return np.array(ROOM_FACE_CLASSES + tuple(o.kind for o in layout.objects), dtype=np.uint8)


def render_scene(seed: int, size: int | tuple[int, int],
                 pseudo: PseudoDepthConfig | None = None,
                 num_objects: tuple[int, int] = DEFAULT_NUM_OBJECTS,
                 geometry: SceneGeometryConfig | None = None) -> Scene:
    """Render scene `seed` at `size` ((H, W) or a square side) with the camera and room ranges of
    `geometry` (default: `SceneGeometryConfig()`)."""
    height, width = (size, size) if isinstance(size, int) else size
    layout_seq, pseudo_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(layout_seq)
    layout = sample_layout(rng, height, width, num_objects, geometry)
    dirs = layout.camera.ray_directions(height, width)
    t, instance, detail = cast(layout, dirs)
    rgb = shade(layout, rng, dirs, t, instance, detail)
    depth = t.reshape(height, width).astype(np.float32)
    instance = instance.reshape(height, width).astype(np.int32)
    return Scene(
        rgb=rgb.reshape(height, width, 3),
        depth=depth,
        label=instance_classes(layout)[instance],
        instance=instance,
        pseudo_depth=pseudo_depth(depth, np.random.default_rng(pseudo_seq), pseudo or PseudoDepthConfig()),
        intrinsics=layout.camera.intrinsics.astype(np.float32),
        cam_to_world=layout.camera.cam_to_world.astype(np.float32),
    )


def render_configured(seed: int, size: tuple[int, int], synthetic: SyntheticConfig) -> Scene:
    """Scene `seed` with a spec's scene settings: what the synthetic sources and `sgmim data
    synth` both draw, so a folder written from the same settings holds the training scenes."""
    return render_scene(seed, size, synthetic.pseudo_depth, synthetic.num_objects, synthetic.geometry)
