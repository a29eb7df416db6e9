"""``synthetic-scenes``: ray-cast indoor rooms, a small procedural stand-in for NYU-v2.

Every sample is an axis-aligned room (floor, ceiling, four walls) holding boxes, spheres
and vertical cylinders, seen by a random pinhole camera standing in the room. The renderer
returns an RGB image shaded by one or two point lights, the metric z-depth, the unit surface
normal in the camera frame, a 6-class semantic map and scene-level binary attributes. Depth
and normals are only recoverable from shading, texture and perspective, so the tasks are
related and non-trivial, and a little simulated sensor dropout exercises invalid handling.

Conventions (shared by :func:`render_scene`, :meth:`CameraParameters.intrinsics` and the
tests):

* World frame: metres, z up, floor at ``z = 0``, room spans ``[0, size]`` on every axis.
* Camera frame: OpenCV, x right, y down, z forward.
* Pixel centres: pixel ``(row v, column u)`` covers ``[u, u + 1) x [v, v + 1)`` and is sampled
  at its centre, so its viewing ray is ``K^-1 [u + 0.5, v + 0.5, 1]``; a valid pixel with
  depth ``d`` back-projects to ``P = d * K^-1 [u + 0.5, v + 0.5, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Protocol

import numpy as np

from ..tasks.kinds.edges import boundaries
from ..tasks.spec import TaskSpec
from .procedural import ProceduralDataset

CLASS_NAMES = ("floor", "ceiling", "wall", "box", "sphere", "cylinder")
FLOOR, CEILING, WALL, BOX, SPHERE, CYLINDER = range(len(CLASS_NAMES))
ATTRIBUTE_CLASSES = {"has_sphere": SPHERE, "has_cylinder": CYLINDER}
"""Attribute name -> class whose visibility in the image defines the attribute."""

RNG_SALT = 0x5C3E
"""Mixed into every seed so the two synthetic datasets never share random streams."""

ROOM_SIDE_RANGE_M = (3.0, 8.0)
ROOM_HEIGHT_RANGE_M = (2.4, 3.2)
CAMERA_HEIGHT_RANGE_M = (1.0, 1.8)
CAMERA_CLEARANCE_M = 0.4
"""Horizontal distance the camera keeps from walls and from every object's footprint."""
CAMERA_YAW_SPREAD_DEG = 70.0
"""The camera looks towards the room centre, give or take this much."""
MIN_VIEW_DEPTH_M = 2.0
"""The wall straight ahead of the camera is at least this far away (horizontally)."""
CAMERA_PITCH_RANGE_DEG = (-30.0, 3.0)
CAMERA_ROLL_RANGE_DEG = (-4.0, 4.0)
VERTICAL_FOV_RANGE_DEG = (45.0, 65.0)
PRINCIPAL_POINT_JITTER = 0.02
"""Maximum offset of the principal point from the image centre, as a fraction of the size."""

EXTRA_BOXES_RANGE = (1, 4)
"""Boxes per room besides the one aimed into view (inclusive bounds)."""
EXTRA_ROUND_OBJECTS_MAX = 2
"""At most this many spheres / cylinders besides the one placed in view."""
VIEW_TARGET_HEIGHT_M = 0.3
VIEW_DISTANCE_RANGE_M = (1.0, 5.0)
VIEW_WINDOW = ((-0.8, -0.2), (0.8, 0.95))
"""Objects aimed into view stand where a ray through this window (low, high corners of
(x, y) in units of the vertical half-field-of-view tangent) meets ``VIEW_TARGET_HEIGHT_M``,
between ``VIEW_DISTANCE_RANGE_M`` away."""
ATTRIBUTE_PROBABILITY = 0.5
BOX_HALF_SIDE_RANGE_M = (0.2, 0.6)
BOX_HALF_HEIGHT_RANGE_M = (0.15, 0.6)
SPHERE_RADIUS_RANGE_M = (0.15, 0.45)
CYLINDER_RADIUS_RANGE_M = (0.1, 0.35)
CYLINDER_HEIGHT_RANGE_M = (0.4, 1.6)
FLOATING_HEIGHT_RANGE_M = (0.5, 1.5)
STACK_PROBABILITY = 0.3
FLOAT_PROBABILITY = 0.2
WALL_CLEARANCE_M = 0.05
CEILING_CLEARANCE_M = 0.7
"""Objects stay this far below the ceiling, leaving room for the lights."""
PLACEMENT_ATTEMPTS = 20

LIGHT_DEPTH_BELOW_CEILING_M = (0.2, 0.6)
LIGHT_WALL_MARGIN_M = 0.5
TOTAL_LIGHT_INTENSITY_RANGE = (5.0, 12.0)
AMBIENT_RANGE = (0.12, 0.3)
SKY_AMBIENT_SHARE = 0.3
"""Part of the ambient term that depends on how much a surface faces up (a normal cue)."""
EXPOSURE_RANGE = (0.8, 1.2)
DISPLAY_GAMMA = 2.2
NOISE_STD_RANGE = (0.005, 0.03)

MAX_RANGE_M = (7.0, 10.0)
"""Sensor range: z-depth beyond this is reported invalid (0)."""
DROPOUT_BLOBS_MAX = 3
DROPOUT_RADIUS_RANGE = (0.03, 0.1)
"""Radii of dropout ellipses as a fraction of the image size."""

T_MIN = 1e-6
"""Smallest accepted ray parameter."""
SHADOW_END = 1.0 - 1e-6
"""Shadow rays end just short of the lit point, so a surface never shadows itself."""

FLOOR_PATTERNS = ("checker", "stripes", "waves")
WALL_PATTERNS = ("plain", "stripes", "waves")
OBJECT_PATTERNS = ("plain", "plain", "checker", "stripes", "waves")
FLOOR_PATTERN_SCALE_M = (0.3, 0.8)
WALL_PATTERN_SCALE_M = (0.1, 0.5)
OBJECT_PATTERN_SCALE_M = (0.08, 0.3)
"""Tile / stripe widths of the procedural textures."""
SURFACE_BRIGHTNESS = (0.25, 0.9)
CEILING_BRIGHTNESS = (0.75, 0.95)
OBJECT_BRIGHTNESS = (0.3, 1.0)
MAX_SATURATION = 0.6
ACCENT_DARKENING = (0.4, 0.8)
"""The second texture colour is the first one scaled by this, plus a small tint."""
ACCENT_TINT = 0.1
NUM_WAVES = 3
WAVELENGTH_RANGE_M = (0.2, 1.0)


@dataclass(frozen=True)
class Material:
    """Procedural albedo: ``base`` and ``accent`` colours blended by a pattern in 3D."""

    base: np.ndarray
    accent: np.ndarray
    pattern: str
    scale: float
    offset: np.ndarray
    stripe_axis: int
    waves: np.ndarray
    """(NUM_WAVES, 4): wave vector (rad/m) and phase of the smooth ``waves`` pattern."""

    def albedo(self, coordinates: np.ndarray) -> np.ndarray:
        """RGB albedo (3, N) at texture coordinates (3, N) in metres."""
        weight = self._pattern_weight(coordinates + self.offset[:, None])
        return self.base[:, None] + weight * (self.accent - self.base)[:, None]

    def _pattern_weight(self, q: np.ndarray) -> np.ndarray:
        if self.pattern == "checker":
            return np.floor(q / self.scale).sum(axis=0) % 2
        if self.pattern == "stripes":
            return np.floor(q[self.stripe_axis] / self.scale) % 2
        if self.pattern == "waves":
            phases = self.waves[:, :3] @ q + self.waves[:, 3:]
            return 0.5 + 0.5 * np.sin(phases).mean(axis=0)
        return np.zeros(q.shape[1])


class Primitive(Protocol):
    """A solid object the rays can hit (box, sphere, cylinder).

    Points and vectors are column stacks (3, N); ray origins may also be one column (3, 1).
    """

    class_id: int
    material: Material | None
    """Set once the layout is final, so rejected placements cost no material draws."""

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Ray parameter (N,) of the first hit beyond ``T_MIN``, inf on a miss."""

    def normals(self, points: np.ndarray) -> np.ndarray:
        """Outward unit normals at surface points."""

    def texture_coordinates(self, points: np.ndarray) -> np.ndarray:
        """Object-attached coordinates, so textures move with the object."""

    def footprint_radius(self) -> float:
        """Radius of a vertical cylinder around the object's centre that contains it."""

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """Centre and radius of a sphere containing the object (for ray culling)."""


@dataclass(frozen=True)
class Sphere:
    center: np.ndarray
    radius: float
    material: Material | None = None
    class_id: ClassVar[int] = SPHERE

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        offset = origins - self.center[:, None]
        a = _dot(directions, directions)
        b = _dot(offset, directions)
        c = _dot(offset, offset) - self.radius**2
        return _nearest_quadratic_root(a, b, c)

    def normals(self, points: np.ndarray) -> np.ndarray:
        return (points - self.center[:, None]) / self.radius

    def texture_coordinates(self, points: np.ndarray) -> np.ndarray:
        return points - self.center[:, None]

    def footprint_radius(self) -> float:
        return self.radius

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        return self.center, self.radius


@dataclass(frozen=True)
class Cylinder:
    """Vertical cylinder with flat caps at ``z_min`` and ``z_max``."""

    center_xy: np.ndarray
    z_min: float
    z_max: float
    radius: float
    material: Material | None = None
    class_id: ClassVar[int] = CYLINDER

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        offset = origins[:2] - self.center_xy[:, None]
        flat = directions[:2]
        a = _dot(flat, flat)
        b = _dot(offset, flat)
        c = _dot(offset, offset) - self.radius**2

        def within_height(t: np.ndarray) -> np.ndarray:
            z = origins[2] + t * directions[2]
            return (z >= self.z_min) & (z <= self.z_max)

        t_side = _nearest_quadratic_root(a, b, c, within_height)
        t_bottom = self._cap_hit(offset, directions, origins[2], self.z_min)
        t_top = self._cap_hit(offset, directions, origins[2], self.z_max)
        return np.minimum(t_side, np.minimum(t_bottom, t_top))

    def _cap_hit(self, offset: np.ndarray, directions: np.ndarray, origin_z: np.ndarray, z: float) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (z - origin_z) / directions[2]
        radial = offset + t * directions[:2]
        inside = _dot(radial, radial) <= self.radius**2
        return np.where(inside & (t > T_MIN), t, np.inf)

    def normals(self, points: np.ndarray) -> np.ndarray:
        radial = points[:2] - self.center_xy[:, None]
        side_error = np.abs(np.sqrt(_dot(radial, radial)) - self.radius)
        top_error = np.abs(points[2] - self.z_max)
        bottom_error = np.abs(points[2] - self.z_min)
        on_side = side_error < np.minimum(top_error, bottom_error)
        cap_z = np.where(top_error <= bottom_error, 1.0, -1.0)
        side = radial / self.radius
        return np.stack([side[0] * on_side, side[1] * on_side, np.where(on_side, 0.0, cap_z)])

    def texture_coordinates(self, points: np.ndarray) -> np.ndarray:
        return points - np.array([*self.center_xy, self.z_min])[:, None]

    def footprint_radius(self) -> float:
        return self.radius

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        half_height = (self.z_max - self.z_min) / 2
        centre = np.array([*self.center_xy, self.z_min + half_height])
        return centre, math.hypot(self.radius, half_height)


@dataclass(frozen=True)
class Box:
    """Box standing upright, rotated by ``yaw`` radians about the vertical axis."""

    center: np.ndarray
    half_extents: np.ndarray
    yaw: float
    material: Material | None = None
    class_id: ClassVar[int] = BOX

    @property
    def rotation(self) -> np.ndarray:
        """Box-to-world rotation."""
        return _rotation_z(self.yaw)

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        to_local = self.rotation.T
        local_origins = to_local @ (origins - self.center[:, None])
        local_directions = to_local @ directions
        half = self.half_extents[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = 1.0 / local_directions
            t_low = (-half - local_origins) * inverse
            t_high = (half - local_origins) * inverse
        t_near = np.minimum(t_low, t_high).max(axis=0)
        t_far = np.maximum(t_low, t_high).min(axis=0)
        t = np.where(t_near > T_MIN, t_near, t_far)
        return np.where((t_near <= t_far) & (t > T_MIN), t, np.inf)

    def normals(self, points: np.ndarray) -> np.ndarray:
        local = self.texture_coordinates(points)
        face = np.abs(np.abs(local) - self.half_extents[:, None]).argmin(axis=0)
        columns = np.arange(points.shape[1])
        local_normals = np.zeros_like(points)
        local_normals[face, columns] = np.sign(local[face, columns])
        return self.rotation @ local_normals

    def texture_coordinates(self, points: np.ndarray) -> np.ndarray:
        return self.rotation.T @ (points - self.center[:, None])

    def footprint_radius(self) -> float:
        return math.hypot(*self.half_extents[:2])

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        return self.center, math.hypot(*self.half_extents)


@dataclass(frozen=True)
class CameraParameters:
    """Pinhole camera; ``rotation`` maps camera-frame vectors to world (columns x, y, z)."""

    position: np.ndarray
    rotation: np.ndarray
    vertical_fov: float
    principal_offset: np.ndarray
    """Principal point minus image centre, as a fraction of (width, height)."""

    def intrinsics(self, image_size: tuple[int, int]) -> np.ndarray:
        """3x3 K at ``image_size = (height, width)``; the camera keeps square pixels."""
        height, width = image_size
        focal = 0.5 * height / np.tan(0.5 * self.vertical_fov)
        cx = width * (0.5 + self.principal_offset[0])
        cy = height * (0.5 + self.principal_offset[1])
        return np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Light:
    position: np.ndarray
    intensity: float


@dataclass(frozen=True)
class SceneParameters:
    """Everything random about one sample; rendering it at any size is deterministic."""

    room_size: np.ndarray
    camera: CameraParameters
    lights: tuple[Light, ...]
    objects: tuple[Primitive, ...]
    floor: Material
    ceiling: Material
    walls: Material
    ambient: float
    exposure: float
    noise_std: float
    max_range: float
    dropout_blobs: np.ndarray
    """(k, 4): centre (x, y) and radii (x, y) of dropout ellipses, as fractions of the size."""
    noise_seed: int


@dataclass(frozen=True)
class _Hits:
    """Nearest surface along each pixel ray (world frame, vectors as (3, N) columns)."""

    depth: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    labels: np.ndarray
    albedo: np.ndarray


class SyntheticScenes(ProceduralDataset):
    """Procedural indoor scenes with segmentation, depth, normals, class boundaries and attributes.

    Sample ``index`` is a pure function of ``(seed, index, image_size)``; the scene itself
    (:meth:`scene_parameters`) does not depend on ``image_size``, so one index rendered at
    two sizes shows the same room. ``image_size`` is ``(height, width)``. Segmentation is
    defined on every pixel (the room is closed), so it never contains ``IGNORE_INDEX``.
    """

    task_specs: ClassVar[dict[str, TaskSpec]] = {
        "segmentation": TaskSpec("segmentation", "segmentation", len(CLASS_NAMES), CLASS_NAMES),
        "depth": TaskSpec("depth", "depth"),
        "normals": TaskSpec("normals", "normals"),
        "edges": TaskSpec("edges", "edges"),
        **{name: TaskSpec(name, "attribute") for name in ATTRIBUTE_CLASSES},
    }

    rng_salt = RNG_SALT

    @staticmethod
    def sample_parameters(rng: np.random.Generator) -> SceneParameters:
        return sample_scene_parameters(rng)

    @staticmethod
    def render(params: SceneParameters, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        return render_scene(params, image_size)

    def scene_parameters(self, index: int) -> SceneParameters:
        """The random scene behind sample ``index`` (independent of ``image_size``)."""
        return self.parameters(index)


# ----------------------------------------------------------------------------- sampling


def sample_scene_parameters(rng: np.random.Generator) -> SceneParameters:
    """Draw one random room, camera, lights and object layout."""
    room = np.array([*rng.uniform(*ROOM_SIDE_RANGE_M, size=2), rng.uniform(*ROOM_HEIGHT_RANGE_M)])
    camera = _sample_camera(rng, room)
    objects = _sample_objects(rng, room, camera)
    return SceneParameters(
        room_size=room,
        camera=camera,
        lights=_sample_lights(rng, room),
        objects=objects,
        floor=_sample_material(rng, FLOOR_PATTERNS, FLOOR_PATTERN_SCALE_M, SURFACE_BRIGHTNESS),
        ceiling=_sample_material(rng, ("plain",), FLOOR_PATTERN_SCALE_M, CEILING_BRIGHTNESS),
        walls=_sample_material(rng, WALL_PATTERNS, WALL_PATTERN_SCALE_M, SURFACE_BRIGHTNESS),
        ambient=rng.uniform(*AMBIENT_RANGE),
        exposure=rng.uniform(*EXPOSURE_RANGE),
        noise_std=rng.uniform(*NOISE_STD_RANGE),
        max_range=rng.uniform(*MAX_RANGE_M),
        dropout_blobs=_sample_dropout_blobs(rng),
        noise_seed=int(rng.integers(2**31)),
    )


def _sample_camera(rng: np.random.Generator, room: np.ndarray) -> CameraParameters:
    """A camera looking roughly towards the room centre, with open space in front of it.

    The retry loop ends: near a wall and facing the centre, the opposite wall is at least
    ``ROOM_SIDE_RANGE_M[0] - CAMERA_CLEARANCE_M`` > ``MIN_VIEW_DEPTH_M`` away.
    """
    while True:
        position = _sample_camera_position(rng, room)
        to_centre = room[:2] / 2 - position[:2]
        spread = np.deg2rad(rng.uniform(-1, 1) * CAMERA_YAW_SPREAD_DEG)
        yaw = np.arctan2(to_centre[1], to_centre[0]) + spread
        if _distance_to_wall(room, position, yaw) >= MIN_VIEW_DEPTH_M:
            break
    pitch = np.deg2rad(rng.uniform(*CAMERA_PITCH_RANGE_DEG))
    roll = np.deg2rad(rng.uniform(*CAMERA_ROLL_RANGE_DEG))
    return CameraParameters(
        position=position,
        rotation=_camera_rotation(yaw, pitch, roll),
        vertical_fov=np.deg2rad(rng.uniform(*VERTICAL_FOV_RANGE_DEG)),
        principal_offset=rng.uniform(-PRINCIPAL_POINT_JITTER, PRINCIPAL_POINT_JITTER, size=2),
    )


def _sample_camera_position(rng: np.random.Generator, room: np.ndarray) -> np.ndarray:
    margin = CAMERA_CLEARANCE_M
    return np.array(
        [
            rng.uniform(margin, room[0] - margin),
            rng.uniform(margin, room[1] - margin),
            rng.uniform(*CAMERA_HEIGHT_RANGE_M),
        ]
    )


def _distance_to_wall(room: np.ndarray, position: np.ndarray, yaw: float) -> float:
    """Horizontal distance from ``position`` to the wall straight ahead at heading ``yaw``."""
    heading = np.array([np.cos(yaw), np.sin(yaw)])
    with np.errstate(divide="ignore"):
        distances = (np.where(heading > 0, room[:2], 0.0) - position[:2]) / heading
    return float(np.min(np.where(np.isfinite(distances), distances, np.inf)))


def _camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation: columns are the camera's right, down and forward axes."""
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    rolled_right = np.cos(roll) * right + np.sin(roll) * down
    rolled_down = np.cos(roll) * down - np.sin(roll) * right
    return np.stack([rolled_right, rolled_down, forward], axis=1)


def _sample_lights(rng: np.random.Generator, room: np.ndarray) -> tuple[Light, ...]:
    count = int(rng.integers(1, 3))
    total = rng.uniform(*TOTAL_LIGHT_INTENSITY_RANGE)
    lights = []
    for _ in range(count):
        xy = rng.uniform(LIGHT_WALL_MARGIN_M, room[:2] - LIGHT_WALL_MARGIN_M)
        z = room[2] - rng.uniform(*LIGHT_DEPTH_BELOW_CEILING_M)
        lights.append(Light(position=np.array([*xy, z]), intensity=total / count))
    return tuple(lights)


def _sample_material(
    rng: np.random.Generator,
    patterns: tuple[str, ...],
    scale_range: tuple[float, float],
    brightness: tuple[float, float],
) -> Material:
    base = _random_colour(rng, brightness)
    tint = rng.uniform(-ACCENT_TINT, ACCENT_TINT, size=3)
    accent = np.clip(base * rng.uniform(*ACCENT_DARKENING) + tint, 0.02, 1.0)
    directions = _unit(rng.normal(size=(NUM_WAVES, 3)))
    frequencies = 2 * np.pi / rng.uniform(*WAVELENGTH_RANGE_M, size=(NUM_WAVES, 1))
    phases = rng.uniform(0, 2 * np.pi, (NUM_WAVES, 1))
    return Material(
        base=base,
        accent=accent,
        pattern=str(rng.choice(patterns)),
        scale=rng.uniform(*scale_range),
        offset=rng.uniform(0.0, 1.0, size=3),
        stripe_axis=int(rng.integers(3)),
        waves=np.concatenate([directions * frequencies, phases], axis=1),
    )


def _random_colour(rng: np.random.Generator, brightness: tuple[float, float]) -> np.ndarray:
    """A moderately saturated colour with the given value range."""
    value = rng.uniform(*brightness)
    saturation = rng.uniform(0.0, MAX_SATURATION)
    hue_weights = rng.dirichlet(np.ones(3))
    return value * (1 - saturation + saturation * hue_weights / hue_weights.max())


def _sample_dropout_blobs(rng: np.random.Generator) -> np.ndarray:
    count = int(rng.integers(0, DROPOUT_BLOBS_MAX + 1))
    centres = rng.uniform(0.0, 1.0, size=(count, 2))
    radii = rng.uniform(*DROPOUT_RADIUS_RANGE, size=(count, 2))
    return np.concatenate([centres, radii], axis=1)


# ---------------------------------------------------------------------- object layout


@dataclass
class _Layout:
    """Objects placed so far, with the clearances that new objects must respect."""

    room: np.ndarray
    camera: CameraParameters
    objects: list[Primitive]

    def is_free(self, obj: Primitive) -> bool:
        """Whether a footprint fits in the room, away from the camera and other objects."""
        (x, y), radius = _footprint_centre(obj), obj.footprint_radius()
        low = radius + WALL_CLEARANCE_M
        if not (low <= x <= self.room[0] - low and low <= y <= self.room[1] - low):
            return False
        if math.dist((x, y), self.camera.position[:2]) < radius + CAMERA_CLEARANCE_M:
            return False
        return all(
            math.dist((x, y), _footprint_centre(other)) >= radius + other.footprint_radius() for other in self.objects
        )

    def try_add(self, obj: Primitive) -> bool:
        if self.is_free(obj):
            self.objects.append(obj)
            return True
        return False


def _footprint_centre(obj: Primitive) -> np.ndarray:
    return obj.center_xy if isinstance(obj, Cylinder) else obj.center[:2]


def _sample_objects(rng: np.random.Generator, room: np.ndarray, camera: CameraParameters) -> tuple[Primitive, ...]:
    """One object of each wanted kind goes in view first, then boxes, then extra objects.

    Spheres and cylinders are each present with probability ``ATTRIBUTE_PROBABILITY``, so
    the visibility attributes are balanced; one box is always aimed into view too.
    """
    layout = _Layout(room=room, camera=camera, objects=[])
    wanted = [cls for cls in (Sphere, Cylinder) if rng.random() < ATTRIBUTE_PROBABILITY]
    for cls in (*wanted, Box):
        if not _place_in_view(rng, layout, cls):
            _place_anywhere(rng, layout, cls)
    for _ in range(int(rng.integers(EXTRA_BOXES_RANGE[0], EXTRA_BOXES_RANGE[1] + 1))):
        _place_anywhere(rng, layout, Box)
    for cls in wanted:
        for _ in range(int(rng.integers(0, EXTRA_ROUND_OBJECTS_MAX + 1))):
            _place_anywhere(rng, layout, cls)
    return tuple(replace(obj, material=_object_material(rng)) for obj in layout.objects)


def _place_in_view(rng: np.random.Generator, layout: _Layout, cls: type) -> bool:
    """Stand an object where a ray through the lower middle of the image meets it."""
    camera = layout.camera
    for _ in range(PLACEMENT_ATTEMPTS):
        image_offset = rng.uniform(*VIEW_WINDOW) * np.tan(camera.vertical_fov / 2)
        ray = camera.rotation @ np.array([*image_offset, 1.0])
        drop = VIEW_TARGET_HEIGHT_M - camera.position[2]
        if ray[2] * drop <= 0:
            continue
        xy = camera.position[:2] + ray[:2] * drop / ray[2]
        distance = np.linalg.norm(xy - camera.position[:2])
        if VIEW_DISTANCE_RANGE_M[0] <= distance <= VIEW_DISTANCE_RANGE_M[1]:
            if layout.try_add(_new_object(rng, cls, xy)):
                return True
    return False


def _place_anywhere(rng: np.random.Generator, layout: _Layout, cls: type) -> None:
    """Place an object at a free floor spot, or stacked on a box, or not at all."""
    if cls is not Box and rng.random() < STACK_PROBABILITY and _stack_on_box(rng, layout, cls):
        return
    for _ in range(PLACEMENT_ATTEMPTS):
        if layout.try_add(_new_object(rng, cls, rng.uniform(0.0, layout.room[:2]))):
            return


def _stack_on_box(rng: np.random.Generator, layout: _Layout, cls: type) -> bool:
    """Put a sphere or cylinder on top of a random box wide enough to hold it."""
    boxes = [obj for obj in layout.objects if isinstance(obj, Box)]
    if not boxes:
        return False
    box = boxes[int(rng.integers(len(boxes)))]
    obj = _new_object(rng, cls, box.center[:2], base_z=2 * box.half_extents[2])
    top = obj.center[2] + obj.radius if isinstance(obj, Sphere) else obj.z_max
    too_wide = obj.footprint_radius() > box.half_extents[:2].min()
    if too_wide or top > layout.room[2] - CEILING_CLEARANCE_M:
        return False
    layout.objects.append(obj)
    return True


def _new_object(rng: np.random.Generator, cls: type, xy: np.ndarray, base_z: float | None = None) -> Primitive:
    """A random object of class ``cls`` centred above ``xy``, its lowest point at ``base_z``.

    Without ``base_z`` the object stands on the floor (spheres sometimes float).
    """
    if cls is Box:
        half_side = rng.uniform(*BOX_HALF_SIDE_RANGE_M, size=2)
        half = np.array([*half_side, rng.uniform(*BOX_HALF_HEIGHT_RANGE_M)])
        return Box(np.array([*xy, half[2]]), half, rng.uniform(0, np.pi / 2))
    if base_z is None:
        floating = cls is Sphere and rng.random() < FLOAT_PROBABILITY
        base_z = rng.uniform(*FLOATING_HEIGHT_RANGE_M) if floating else 0.0
    if cls is Sphere:
        radius = rng.uniform(*SPHERE_RADIUS_RANGE_M)
        return Sphere(np.array([*xy, base_z + radius]), radius)
    radius, height = rng.uniform(*CYLINDER_RADIUS_RANGE_M), rng.uniform(*CYLINDER_HEIGHT_RANGE_M)
    return Cylinder(np.asarray(xy, float), base_z, base_z + height, radius)


def _object_material(rng: np.random.Generator) -> Material:
    return _sample_material(rng, OBJECT_PATTERNS, OBJECT_PATTERN_SCALE_M, OBJECT_BRIGHTNESS)


# --------------------------------------------------------------------------- rendering


def render_scene(params: SceneParameters, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Ray-cast ``params`` at ``image_size = (height, width)`` into a sample of numpy arrays."""
    height, width = image_size
    intrinsics = params.camera.intrinsics(image_size)
    camera_rays = _pixel_rays(intrinsics, height, width)
    hits = _cast_primary_rays(params, params.camera.rotation @ camera_rays)
    image = _shade(params, hits, image_size)
    valid = _valid_depth_mask(params, hits.depth, image_size)
    depth = np.where(valid, hits.depth, 0.0)
    normals = np.where(valid, params.camera.rotation.T @ hits.normals, 0.0)
    labels = hits.labels.reshape(height, width)
    sample = {
        "image": image.reshape(3, height, width).astype(np.float32),
        "segmentation": labels.astype(np.int64),
        "depth": depth.reshape(1, height, width).astype(np.float32),
        "normals": normals.reshape(3, height, width).astype(np.float32),
        "edges": boundaries(labels),
        "intrinsics": intrinsics.astype(np.float32),
    }
    for name, class_id in ATTRIBUTE_CLASSES.items():
        sample[name] = np.array(float((labels == class_id).any()), dtype=np.float32)
    return sample


def _pixel_grid(image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(u + 0.5, v + 0.5)``, row-major and flattened."""
    height, width = image_size
    return np.tile(np.arange(width) + 0.5, height), np.repeat(np.arange(height) + 0.5, width)


def _pixel_rays(intrinsics: np.ndarray, height: int, width: int) -> np.ndarray:
    """Camera-frame rays ``K^-1 [u + 0.5, v + 0.5, 1]`` (z = 1) as columns (3, H * W)."""
    u, v = _pixel_grid((height, width))
    x = (u - intrinsics[0, 2]) / intrinsics[0, 0]
    y = (v - intrinsics[1, 2]) / intrinsics[1, 1]
    return np.stack([x, y, np.ones_like(x)])


def _cast_primary_rays(params: SceneParameters, directions: np.ndarray) -> _Hits:
    """Nearest hit per ray; as camera rays have unit z, the ray parameter is the z-depth."""
    origin = params.camera.position[:, None]
    depth, labels, normals = _room_hits(params.room_size, params.camera.position, directions)
    owner = np.full(directions.shape[1], -1)
    lengths = np.sqrt(_dot(directions, directions))
    for k, obj in enumerate(params.objects):
        t = _culled_intersect(obj, params.camera.position, directions, lengths)
        closer = t < depth
        depth = np.where(closer, t, depth)
        owner[closer] = k
    points = origin + depth * directions
    albedo = _room_albedo(params, points, labels)
    for k, obj in enumerate(params.objects):
        mask = owner == k
        if mask.any():
            normals[:, mask] = obj.normals(points[:, mask])
            labels[mask] = obj.class_id
            albedo[:, mask] = obj.material.albedo(obj.texture_coordinates(points[:, mask]))
    return _Hits(depth=depth, points=points, normals=normals, labels=labels, albedo=albedo)


def _room_hits(
    room: np.ndarray, origin: np.ndarray, directions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where rays from ``origin`` inside the room leave it: depth, class and inward normal."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axes = (np.where(directions > 0, room[:, None], 0.0) - origin[:, None]) / directions
    t_axes = np.where(t_axes > 0, t_axes, np.inf)
    axis = t_axes.argmin(axis=0)
    columns = np.arange(directions.shape[1])
    outward = np.sign(directions[axis, columns])
    normals = np.zeros_like(directions)
    normals[axis, columns] = -outward
    labels = np.where(axis < 2, WALL, np.where(outward < 0, FLOOR, CEILING))
    return t_axes[axis, columns], labels, normals


def _room_albedo(params: SceneParameters, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    albedo = np.empty_like(points)
    surfaces = ((FLOOR, params.floor), (CEILING, params.ceiling), (WALL, params.walls))
    for class_id, material in surfaces:
        mask = labels == class_id
        albedo[:, mask] = material.albedo(points[:, mask])
    return albedo


def _shade(params: SceneParameters, hits: _Hits, image_size: tuple[int, int]) -> np.ndarray:
    """Lambertian shading with hemispheric ambient, shadows, gamma and sensor noise."""
    sky = 1.0 - SKY_AMBIENT_SHARE * (1.0 - hits.normals[2]) / 2
    irradiance = params.ambient * sky
    for light in params.lights:
        irradiance = irradiance + _direct_light(params, hits, light)
    radiance = hits.albedo * (irradiance * params.exposure)
    image = np.clip(radiance, 0.0, 1.0) ** (1 / DISPLAY_GAMMA)
    noise_rng = np.random.default_rng([params.noise_seed, *image_size])
    image += noise_rng.normal(0.0, params.noise_std, size=image.shape)
    return np.clip(image, 0.0, 1.0)


def _direct_light(params: SceneParameters, hits: _Hits, light: Light) -> np.ndarray:
    """Irradiance from one point light with soft inverse-square falloff and hard shadows.

    Shadow rays run from the light to each surface point (one shared origin, so they can
    be culled per object); anything hit before ``SHADOW_END`` of the way blocks the light.
    """
    from_light = hits.points - light.position[:, None]
    distance_sq = _dot(from_light, from_light)
    distance = np.sqrt(distance_sq)
    cosine = -_dot(hits.normals, from_light) / distance
    lit = np.flatnonzero(cosine > 0)
    blocked = np.zeros(len(lit), bool)
    for obj in params.objects:
        t = _culled_intersect(obj, light.position, from_light[:, lit], distance[lit])
        blocked |= t < SHADOW_END
    irradiance = np.zeros(len(cosine))
    unshadowed = light.intensity * cosine[lit] / (1.0 + distance_sq[lit])
    irradiance[lit] = np.where(blocked, 0.0, unshadowed)
    return irradiance


def _culled_intersect(obj: Primitive, origin: np.ndarray, directions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``obj.intersect`` for rays from one ``origin``, run only on rays that enter the cone
    from ``origin`` around the object's bounding sphere; ``lengths`` are the direction norms."""
    centre, radius = obj.bounding_sphere()
    to_centre = centre - origin
    distance = math.hypot(*to_centre)
    if distance <= radius:
        return obj.intersect(origin[:, None], directions)
    cos_limit = math.sqrt(1.0 - (radius / distance) ** 2)
    candidates = np.flatnonzero(to_centre @ directions >= cos_limit * distance * lengths)
    t = np.full(directions.shape[1], np.inf)
    if candidates.size:
        t[candidates] = obj.intersect(origin[:, None], directions[:, candidates])
    return t


def _valid_depth_mask(params: SceneParameters, depth: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Simulated sensor: no return beyond ``max_range`` or inside dropout blobs."""
    valid = depth <= params.max_range
    u, v = _pixel_grid(image_size)
    x, y = u / image_size[1], v / image_size[0]
    for cx, cy, rx, ry in params.dropout_blobs:
        valid &= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 > 1.0
    return valid


# ------------------------------------------------------------------------------ helpers


def _nearest_quadratic_root(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    accept: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Smallest root beyond ``T_MIN`` of ``a t^2 + 2 b t + c`` that ``accept(t)`` allows."""
    discriminant = b * b - a * c
    root = np.sqrt(np.maximum(discriminant, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        near, far = (-b - root) / a, (-b + root) / a
    usable = (discriminant >= 0) & (a > 0)
    near_ok = usable & (near > T_MIN)
    far_ok = usable & (far > T_MIN)
    if accept is not None:
        near_ok &= accept(near)
        far_ok &= accept(far)
    return np.where(near_ok, near, np.where(far_ok, far, np.inf))


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise dot product of (k, N) stacks."""
    return (a * b).sum(axis=0)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
