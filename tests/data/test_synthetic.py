"""The procedural scenes: determinism, geometry against the camera model, pseudo-depth."""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest
from pydantic import ValidationError

from sgmim.data import CLASS_NAMES, render_scene
from sgmim.data.synthetic import split_seeds
from sgmim.data.synthetic.layout import sample_layout
from sgmim.data.synthetic.source import scene_cache_key
from sgmim.data.synthetic.textures import COLOUR_TEXTURES, GREY_TEXTURES
from sgmim.spec import PseudoDepthConfig, SceneGeometryConfig, SyntheticConfig

FLOOR, CEILING = CLASS_NAMES.index("floor"), CLASS_NAMES.index("ceiling")
EXACT = PseudoDepthConfig(blur=0, bias=0, edge_shift=0, noise=0, shift=0, min_range=1)


def camera_rays(scene) -> np.ndarray:
    """(H, W, 3) world directions with camera-frame z = 1, from the pinhole model alone."""
    height, width = scene.depth.shape
    v, u = np.mgrid[0:height, 0:width]
    pixels = np.stack([u, v, np.ones_like(u)], axis=-1).astype(np.float64)
    return pixels @ np.linalg.inv(scene.intrinsics.astype(np.float64)).T @ scene.cam_to_world[:3, :3].T


def test_outputs_have_documented_types_and_ranges():
    scene = render_scene(3, (48, 64))
    assert scene.rgb.shape == (48, 64, 3) and scene.rgb.dtype == np.uint8
    assert scene.depth.shape == (48, 64) and scene.depth.dtype == np.float32
    assert scene.label.dtype == np.uint8 and scene.instance.dtype == np.int32
    assert scene.pseudo_depth.dtype == np.float32
    assert (scene.depth > 0).all() and np.isfinite(scene.depth).all()
    assert scene.pseudo_depth.min() >= 0.0 and scene.pseudo_depth.max() <= 1.0
    assert scene.label.max() < len(CLASS_NAMES)
    assert scene.rgb.std() > 10, "textured scenes are not flat colour"


@pytest.mark.parametrize("seed", [0, 11])
def test_same_seed_same_scene_other_seed_other_scene(seed):
    a, b, c = render_scene(seed, 40), render_scene(seed, 40), render_scene(seed + 1, 40)
    for field in ("rgb", "depth", "label", "instance", "pseudo_depth", "intrinsics", "cam_to_world"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a.depth, c.depth)
    assert not np.array_equal(a.rgb, c.rgb)


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_floor_depth_matches_the_camera_model(seed):
    """On the floor plane z = 0 a ray c + t·r hits at t = -c_z / r_z, and t is the z-depth."""
    scene = render_scene(seed, 64)
    floor = scene.label == FLOOR
    assert floor.sum() > 50, "the camera looks down enough to see floor"
    rays = camera_rays(scene)
    expected = -scene.cam_to_world[2, 3] / rays[..., 2]
    np.testing.assert_allclose(scene.depth[floor], expected[floor], rtol=1e-5)


def test_every_pixel_back_projects_into_the_room_and_ceiling_is_flat():
    scene = next(s for s in map(lambda seed: render_scene(seed, 64), range(20)) if (s.label == CEILING).any())
    points = scene.cam_to_world[:3, 3] + scene.depth[..., None] * camera_rays(scene)
    assert points[..., 2].min() > -1e-4
    ceiling = scene.label == CEILING
    heights = points[ceiling][:, 2]
    assert heights.max() - heights.min() < 1e-3
    assert (points[..., 2] <= heights.mean() + 1e-3).all(), "nothing lies above the ceiling"


def test_labels_follow_instances():
    scene = render_scene(6, 64)
    for instance in np.unique(scene.instance):
        assert len(np.unique(scene.label[scene.instance == instance])) == 1
    assert len(np.unique(scene.instance)) > len(np.unique(scene.label)) - 1


def test_pseudo_depth_without_errors_is_normalised_inverse_depth():
    scene = render_scene(8, 48, EXACT)
    inverse = 1.0 / scene.depth.astype(np.float64)
    expected = (inverse - inverse.min()) / np.ptp(inverse)
    np.testing.assert_allclose(scene.pseudo_depth, expected, atol=1e-5)


def test_default_pseudo_depth_is_ordered_like_depth_but_not_exact():
    scene = render_scene(8, 64)
    exact = render_scene(8, 64, EXACT).pseudo_depth
    ranks = np.argsort(np.argsort(scene.pseudo_depth.ravel())), np.argsort(np.argsort(-scene.depth.ravel()))
    spearman = np.corrcoef(*ranks)[0, 1]
    assert spearman > 0.8, "still a depth map: near is high"
    assert np.abs(scene.pseudo_depth - exact).mean() > 0.02, "but not the ground truth"
    assert np.array_equal(scene.rgb, render_scene(8, 64, EXACT).rgb), "errors never change the scene"


def test_split_seed_ranges_are_disjoint():
    ranges = [set(split_seeds(s, 0, 1000)) for s in ("train", "val", "test")]
    assert not (ranges[0] & ranges[1] or ranges[0] & ranges[2] or ranges[1] & ranges[2])


def test_textures_are_bundled_in_the_wheel():
    folder = importlib.resources.files("skimage.data")
    for name in GREY_TEXTURES + COLOUR_TEXTURES:
        assert (folder / name).is_file(), f"{name} would be fetched at run time"


FIXED = SceneGeometryConfig(hfov_deg=(60, 60), room_side=(5, 5), room_height=(2.8, 2.8),
                            camera_height=(1.4, 1.4))


def layouts(geometry: SceneGeometryConfig, seeds=range(6)):
    return [sample_layout(np.random.default_rng(seed), 32, 32, (4, 10), geometry) for seed in seeds]


def test_fixed_geometry_gives_every_scene_the_same_camera_intrinsics_and_room():
    drawn = layouts(FIXED)
    assert {tuple(layout.room) for layout in drawn} == {(5.0, 5.0, 2.8)}
    assert {layout.camera.cam_to_world[2, 3] for layout in drawn} == {1.4}
    scenes = [render_scene(seed, 32, geometry=FIXED) for seed in range(4)]
    focal = 16 / np.tan(np.radians(30))
    for scene in scenes:
        np.testing.assert_allclose(scene.intrinsics, [[focal, 0, 15.5], [0, focal, 15.5], [0, 0, 1]],
                                   rtol=1e-6)
    assert len({scene.rgb.tobytes() for scene in scenes}) == 4, "layouts, objects and light still vary"


def test_varied_geometry_draws_the_camera_and_room_per_scene():
    drawn = layouts(SceneGeometryConfig.varied())
    assert len({layout.camera.intrinsics[0, 0] for layout in drawn}) == len(drawn)
    assert len({tuple(layout.room) for layout in drawn}) == len(drawn)
    assert len({layout.camera.cam_to_world[2, 3] for layout in drawn}) == len(drawn)


def test_default_geometry_fixes_the_field_of_view_and_the_room_height():
    drawn = layouts(SceneGeometryConfig())
    assert len({layout.camera.intrinsics[0, 0] for layout in drawn}) == 1
    assert {layout.room[2] for layout in drawn} == {2.8}
    pitch = np.degrees([np.arcsin(layout.camera.cam_to_world[2, 2]) for layout in drawn])
    assert pitch.min() >= -15 - 1e-6 and pitch.max() <= -5 + 1e-6, "the camera looks a little down"
    ceiling = next(s for s in (render_scene(seed, 64) for seed in range(20)) if (s.label == CEILING).any())
    points = ceiling.cam_to_world[:3, 3] + camera_rays(ceiling) * ceiling.depth[..., None]
    np.testing.assert_allclose(points[ceiling.label == CEILING][:, 2], 2.8, atol=1e-3)


@pytest.mark.parametrize("field,value", [("hfov_deg", (80, 60)), ("room_height", (2.0, 3.0)),
                                         ("camera_height", (1.0, 3.0)), ("room_side", (1.0, 4.0))])
def test_geometry_ranges_outside_their_limits_are_refused(field, value):
    with pytest.raises(ValidationError, match=field):
        SceneGeometryConfig(**{field: value})


def test_the_scene_cache_key_changes_with_the_geometry():
    fields = {"image": "rgb"}
    varied = SyntheticConfig(geometry=SceneGeometryConfig.varied())
    assert scene_cache_key(SyntheticConfig(), (32, 32), fields) != scene_cache_key(varied, (32, 32), fields)


def test_objects_stand_at_the_configured_distance_from_the_camera():
    near = SceneGeometryConfig(object_distance=(2.0, 2.5))
    drawn = layouts(near, range(10))
    distances = [np.linalg.norm(obj.center[:2] - layout.camera.cam_to_world[:2, 3])
                 for layout in drawn for obj in layout.objects]
    assert len(distances) >= 10 and min(distances) >= 2.0 and max(distances) <= 2.5
