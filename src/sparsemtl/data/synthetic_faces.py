"""``synthetic-faces``: procedural portraits, a small stand-in for CelebAMask-HQ.

Each sample is a head and shoulders drawn back to front with anti-aliased signed-distance
shapes: background gradient and clutter, hair, neck, clothes, ears, face, beard, eyes,
brows, nose, mouth and glasses. The four binary attributes change the drawing visibly:

* ``male``: short hair, ears showing, wider jaw and a beard/stubble region (labelled hair);
  otherwise long hair falling past the chin.
* ``smiling``: wider mouth with upturned corners and visible teeth; otherwise a closed,
  nearly flat mouth.
* ``arched_eyebrows``: brows curved up in the middle; otherwise straight brows.
* ``eyeglasses``: frames around both eyes with a bridge and temples.

Segmentation has three classes: background (also clothes and clutter), hair (head hair and
beard) and skin (face, ears and neck; brows, eyes, nose and mouth count as skin, as in a
face-parsing map merged to three classes). Glasses do not change the labels. Every pixel is
labelled, so ``IGNORE_INDEX`` never occurs.

Geometry is drawn in a face frame: origin at the face centre, x right, y down, in units of
the face's half-height. :func:`face_coordinates` maps pixels into that frame, so tests and
users can locate the eyes, mouth or chin in any rendered sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from ..tasks.spec import TaskSpec
from .procedural import ProceduralDataset

CLASS_NAMES = ("background", "hair", "skin")
BACKGROUND, HAIR, SKIN = range(len(CLASS_NAMES))
ATTRIBUTE_NAMES = ("male", "smiling", "arched_eyebrows", "eyeglasses")
ATTRIBUTE_PROBABILITIES = {"male": 0.5, "smiling": 0.5, "arched_eyebrows": 0.5, "eyeglasses": 0.3}

Curve = Callable[[np.ndarray], np.ndarray]
"""A function y(x) (or its slope) in the face frame, for brows and lips."""

RNG_SALT = 0xFACE
"""Mixed into every seed so the two synthetic datasets never share random streams."""

# Pose, in units of the image height (offset, scale) and radians (roll).
CENTRE_OFFSET_MAX = 0.06
FACE_SCALE_RANGE = (0.26, 0.34)
"""Face half-height as a fraction of the image height."""
ROLL_MAX = 0.3
YAW_SQUASH = 0.2
"""A fully turned head (|yaw| = 1) is this much narrower."""
FEATURE_SHIFT = 0.15
"""A fully turned head shifts eyes, nose and mouth this far sideways (face units)."""

# Face layout, in face units (half-height of the face = 1).
FACE_WIDTH_RANGE = (0.72, 0.8)
MALE_EXTRA_WIDTH = 0.05
JAW_TAPER_RANGE = {True: (0.05, 0.15), False: (0.15, 0.3)}
"""How much narrower the chin is than the cheeks, by sex (True = male)."""
EYE_Y = -0.12
EYE_SPACING_RANGE = (0.27, 0.33)
EYE_SIZE_RANGE = (0.9, 1.15)
BROW_Y_RANGE = (-0.36, -0.3)
BROW_HALF_LENGTH_RANGE = (0.15, 0.19)
BROW_THICKNESS_RANGE = {True: (0.06, 0.08), False: (0.04, 0.06)}
BROW_ARCH_RANGE = (0.07, 0.11)
BROW_TILT_MAX = 0.08
BROW_MAX_SKIN_RATIO = 0.5
"""Brows are at most this bright relative to the skin, so they stay visible on any face."""
MOUTH_Y_RANGE = (0.46, 0.54)
MOUTH_HALF_WIDTH_RANGE = (0.19, 0.25)
SMILE_WIDENING = 1.15
SMILE_CURVE_RANGE = (0.07, 0.12)
NEUTRAL_CURVE_RANGE = (-0.02, 0.01)
SMILE_OPENING_RANGE = (0.06, 0.1)
CLOSED_OPENING = 0.02
LIP_THICKNESS_RANGE = (0.035, 0.05)
LIP_COLOUR_LOW = (0.55, 0.2, 0.25)
LIP_COLOUR_HIGH = (0.85, 0.4, 0.4)
HAIRLINE_RANGE = {True: (-0.72, -0.55), False: (-0.6, -0.35)}
LONG_HAIR_END_RANGE = (0.9, 2.2)
"""Where long hair ends, face units below the face centre."""
BEARD_DENSITY_RANGE = (0.45, 0.95)
GLASSES_HALF_SIZE = (0.2, 0.14)
GLASSES_THICKNESS_RANGE = (0.04, 0.06)
GLASSES_TINT_MAX = 0.35
TINTED_PROBABILITY = 0.3
"""Share of glasses with tinted lenses."""
DARK_FRAME_PROBABILITY = 0.7
DARK_FRAME_MAX = 0.3

# Appearance.
CLUTTER_MAX = 6
AMBIENT_RANGE = (0.45, 0.65)
DIFFUSE_RANGE = (0.35, 0.6)
GAIN_RANGE = (0.85, 1.15)
NOISE_STD_RANGE = (0.005, 0.03)
STUBBLE_CONTRAST = 0.3

SKIN_TONES = np.array(
    [
        [0.96, 0.80, 0.69],
        [0.88, 0.67, 0.53],
        [0.76, 0.57, 0.42],
        [0.55, 0.38, 0.26],
        [0.36, 0.24, 0.16],
    ]
)
SCLERA_COLOUR = np.array([0.93, 0.92, 0.9])
PUPIL_COLOUR = np.array([0.03, 0.03, 0.03])
TEETH_COLOUR = np.array([0.95, 0.93, 0.88])
CLOSED_MOUTH_COLOUR = np.array([0.25, 0.08, 0.08])
HAIR_TONES = np.array(
    [
        [0.08, 0.06, 0.05],
        [0.25, 0.15, 0.08],
        [0.45, 0.3, 0.15],
        [0.75, 0.6, 0.35],
        [0.55, 0.2, 0.08],
        [0.6, 0.6, 0.6],
    ]
)


@dataclass(frozen=True)
class FaceParameters:
    """Everything random about one portrait; :func:`render_face` is deterministic in it.

    Appearance draws that depend on an attribute are stored as raw uniforms in [0, 1)
    (``*_u`` fields) and mapped at render time, so flipping one attribute with
    ``dataclasses.replace`` re-renders the same person with just that attribute changed.
    """

    male: bool
    smiling: bool
    arched_eyebrows: bool
    eyeglasses: bool
    centre: np.ndarray
    scale: float
    roll: float
    yaw: float
    face_width: float
    jaw_taper_u: float
    eye_spacing: float
    eye_size: float
    brow_y: float
    brow_half_length: float
    brow_thickness_u: float
    brow_arch: float
    brow_tilt: float
    mouth_y: float
    mouth_half_width: float
    mouth_curve_u: float
    mouth_opening_u: float
    lip_thickness: float
    hairline_u: float
    hair_length_u: float
    beard_density: float
    glasses_thickness: float
    glasses_tint: float
    skin_colour: np.ndarray
    hair_colour: np.ndarray
    lip_colour: np.ndarray
    iris_colour: np.ndarray
    frame_colour: np.ndarray
    clothes_colour: np.ndarray
    background_colours: np.ndarray
    background_angle: float
    clutter: np.ndarray
    """(k, 9): centre x, y, half sizes x, y, rotation, is_circle, colour r, g, b."""
    light_direction: np.ndarray
    ambient: float
    diffuse: float
    gain: float
    noise_std: float
    noise_seed: int

    @property
    def attributes(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in ATTRIBUTE_NAMES}


class SyntheticFaces(ProceduralDataset):
    """Procedural portraits with a 3-class face-parsing map and four binary attributes.

    Sample ``index`` is a pure function of ``(seed, index, image_size)``; the person
    (:meth:`face_parameters`) does not depend on ``image_size``. ``image_size`` is
    ``(height, width)``.
    """

    task_specs: ClassVar[dict[str, TaskSpec]] = {
        "segmentation": TaskSpec("segmentation", "segmentation", len(CLASS_NAMES), CLASS_NAMES),
        **{name: TaskSpec(name, "attribute") for name in ATTRIBUTE_NAMES},
    }

    rng_salt = RNG_SALT

    @staticmethod
    def sample_parameters(rng: np.random.Generator) -> FaceParameters:
        return sample_face_parameters(rng)

    @staticmethod
    def render(params: FaceParameters, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        return render_face(params, image_size)

    def face_parameters(self, index: int) -> FaceParameters:
        """The random face behind sample ``index`` (independent of ``image_size``)."""
        return self.parameters(index)


# ----------------------------------------------------------------------------- sampling


def sample_face_parameters(rng: np.random.Generator) -> FaceParameters:
    """Draw one random person, pose, lighting and background."""
    attributes = {name: bool(rng.random() < p) for name, p in ATTRIBUTE_PROBABILITIES.items()}
    elevation, azimuth = rng.uniform(0.2, 0.9), rng.uniform(-1.0, 1.0)
    return FaceParameters(
        **attributes,
        centre=rng.uniform(-CENTRE_OFFSET_MAX, CENTRE_OFFSET_MAX, size=2),
        scale=rng.uniform(*FACE_SCALE_RANGE),
        roll=rng.uniform(-ROLL_MAX, ROLL_MAX),
        yaw=rng.uniform(-1.0, 1.0),
        face_width=rng.uniform(*FACE_WIDTH_RANGE),
        jaw_taper_u=rng.random(),
        eye_spacing=rng.uniform(*EYE_SPACING_RANGE),
        eye_size=rng.uniform(*EYE_SIZE_RANGE),
        brow_y=rng.uniform(*BROW_Y_RANGE),
        brow_half_length=rng.uniform(*BROW_HALF_LENGTH_RANGE),
        brow_thickness_u=rng.random(),
        brow_arch=rng.uniform(*BROW_ARCH_RANGE),
        brow_tilt=rng.uniform(-BROW_TILT_MAX, BROW_TILT_MAX),
        mouth_y=rng.uniform(*MOUTH_Y_RANGE),
        mouth_half_width=rng.uniform(*MOUTH_HALF_WIDTH_RANGE),
        mouth_curve_u=rng.random(),
        mouth_opening_u=rng.random(),
        lip_thickness=rng.uniform(*LIP_THICKNESS_RANGE),
        hairline_u=rng.random(),
        hair_length_u=rng.random(),
        beard_density=rng.uniform(*BEARD_DENSITY_RANGE),
        glasses_thickness=rng.uniform(*GLASSES_THICKNESS_RANGE),
        glasses_tint=rng.uniform(0.0, GLASSES_TINT_MAX) * (rng.random() < TINTED_PROBABILITY),
        skin_colour=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 0.04),
        hair_colour=_jitter(rng, HAIR_TONES[rng.integers(len(HAIR_TONES))], 0.05),
        lip_colour=rng.uniform(LIP_COLOUR_LOW, LIP_COLOUR_HIGH),
        iris_colour=_jitter(rng, np.array([0.3, 0.22, 0.12]), 0.15),
        frame_colour=rng.uniform(0.0, _frame_brightness(rng), size=3),
        clothes_colour=rng.uniform(0.05, 0.95, size=3),
        background_colours=rng.uniform(0.05, 0.95, size=(2, 3)),
        background_angle=rng.uniform(0.0, 2 * np.pi),
        clutter=_sample_clutter(rng),
        light_direction=np.array(
            [
                np.cos(elevation) * np.sin(azimuth),
                -0.5 * np.sin(elevation),
                np.cos(elevation) * np.cos(azimuth),
            ]
        ),
        ambient=rng.uniform(*AMBIENT_RANGE),
        diffuse=rng.uniform(*DIFFUSE_RANGE),
        gain=rng.uniform(*GAIN_RANGE),
        noise_std=rng.uniform(*NOISE_STD_RANGE),
        noise_seed=int(rng.integers(2**31)),
    )


def _frame_brightness(rng: np.random.Generator) -> float:
    """Most frames are dark; the rest may take any colour."""
    return DARK_FRAME_MAX if rng.random() < DARK_FRAME_PROBABILITY else 1.0


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(colour + rng.uniform(-amount, amount, size=3), 0.0, 1.0)


def _sample_clutter(rng: np.random.Generator) -> np.ndarray:
    """Background shapes, in image-height units around the image centre."""
    count = int(rng.integers(0, CLUTTER_MAX + 1))
    return np.concatenate(
        [
            rng.uniform(-0.8, 0.8, size=(count, 2)),
            rng.uniform(0.04, 0.25, size=(count, 2)),
            rng.uniform(0.0, np.pi, size=(count, 1)),
            rng.random(size=(count, 1)) < 0.5,
            rng.uniform(0.0, 1.0, size=(count, 3)),
        ],
        axis=1,
    )


# --------------------------------------------------------------------------- geometry


def face_coordinates(params: FaceParameters, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Face-frame coordinates (x, y) of every pixel centre, each (H, W).

    Inverts the pose: offset, in-plane rotation, scale and the yaw-like horizontal squash.
    Eyes, nose and mouth are drawn in this frame shifted by ``FEATURE_SHIFT * yaw``.
    """
    x, y = _image_coordinates(image_size)
    x, y = x - params.centre[0], y - params.centre[1]
    cos, sin = math.cos(params.roll), math.sin(params.roll)
    face_x = (cos * x + sin * y) / params.scale
    face_y = (-sin * x + cos * y) / params.scale
    return face_x / (1.0 - YAW_SQUASH * abs(params.yaw)), face_y


def _image_coordinates(image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in units of the image height, origin at the image centre."""
    height, width = image_size
    x = (np.arange(width) + 0.5 - width / 2) / height
    y = (np.arange(height) + 0.5 - height / 2) / height
    return np.broadcast_to(x, image_size), np.broadcast_to(y[:, None], image_size)


def _ellipse_sdf(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, power: float = 2.0
) -> np.ndarray:
    """Approximate signed distance to a (super-)ellipse; exact on the axes for power 2."""
    u, v = (x - cx) / ax, (y - cy) / ay
    if power == 2.0:
        norm = np.hypot(u, v)
    else:
        norm = (np.abs(u) ** power + np.abs(v) ** power) ** (1.0 / power)
    return (norm - 1.0) * min(ax, ay)


def _segment_sdf(
    x: np.ndarray,
    y: np.ndarray,
    start: tuple[float, float],
    end: tuple[float, float],
    radius: float,
) -> np.ndarray:
    """Signed distance to a capsule of ``radius`` around a line segment."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    along = np.clip(((x - start[0]) * dx + (y - start[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(x - start[0] - along * dx, y - start[1] - along * dy) - radius


def _curve_sdf(
    x: np.ndarray,
    y: np.ndarray,
    centre_x: float,
    half_length: float,
    height: Curve,
    slope: Curve,
    radius: float,
) -> np.ndarray:
    """Approximate distance to a thick curve ``y = height(x)``, ``|x - centre_x| <= half_length``.

    ``height`` and ``slope`` are callables of x; the vertical gap is divided by the slope
    factor, which is accurate for the gentle curves used for brows and lips.
    """
    clamped = np.clip(x, centre_x - half_length, centre_x + half_length)
    vertical = (y - height(clamped)) / np.sqrt(1.0 + slope(clamped) ** 2)
    return np.hypot(x - clamped, vertical) - radius


# --------------------------------------------------------------------------- rendering


class _Canvas:
    """An RGB image and its label map, painted back to front with soft coverage."""

    def __init__(self, image: np.ndarray, pixel_size: float) -> None:
        self.image = image
        self.labels = np.full(image.shape[1:], BACKGROUND, dtype=np.int64)
        self.pixel_size = pixel_size

    def coverage(self, sdf: np.ndarray) -> np.ndarray:
        """Anti-aliased area coverage of the shape ``sdf < 0`` (one-pixel ramp)."""
        return np.clip(0.5 - sdf / self.pixel_size, 0.0, 1.0)

    def paint(self, sdf: np.ndarray, colour: np.ndarray, label: int | None = None) -> None:
        """Composite ``colour`` (3,) or (3, H, W) over the shape; relabel its inside."""
        alpha = self.coverage(sdf)
        colour = colour.reshape(3, 1, 1) if colour.ndim == 1 else colour
        self.image += alpha * (colour - self.image)
        if label is not None:
            self.labels[sdf < 0] = label


@dataclass(frozen=True)
class _Frame:
    """Face-frame pixel coordinates and the per-pixel shading of the head."""

    x: np.ndarray
    y: np.ndarray
    feature_x: np.ndarray
    shading: np.ndarray


def render_face(params: FaceParameters, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Draw ``params`` at ``image_size = (height, width)`` into a sample of numpy arrays."""
    noise_rng = np.random.default_rng([params.noise_seed, *image_size])
    stubble = noise_rng.random(image_size)
    pixel_noise = noise_rng.normal(0.0, params.noise_std, size=(3, *image_size))
    x, y = face_coordinates(params, image_size)
    feature_x = x - FEATURE_SHIFT * params.yaw
    frame = _Frame(x=x, y=y, feature_x=feature_x, shading=_head_shading(params, x, y))
    pixel_size = 1.0 / (image_size[0] * params.scale)
    canvas = _Canvas(_background(params, image_size), pixel_size=pixel_size)
    _draw_clutter(canvas, params, image_size)
    _draw_hair_back(canvas, params, frame)
    _draw_neck_and_clothes(canvas, params, frame)
    _draw_face(canvas, params, frame)
    if params.male:
        _draw_beard(canvas, params, frame, stubble)
    _draw_hair_front(canvas, params, frame)
    _draw_eyes(canvas, params, frame)
    _draw_brows(canvas, params, frame)
    _draw_nose(canvas, params, frame)
    _draw_mouth(canvas, params, frame)
    if params.eyeglasses:
        _draw_glasses(canvas, params, frame)
    image = np.clip(canvas.image * params.gain + pixel_noise, 0.0, 1.0)
    sample = {"image": image.astype(np.float32), "segmentation": canvas.labels}
    for name, value in params.attributes.items():
        sample[name] = np.array(float(value), dtype=np.float32)
    return sample


def _face_half_width(params: FaceParameters) -> float:
    return params.face_width + (MALE_EXTRA_WIDTH if params.male else 0.0)


def _from_unit(u: float, bounds: tuple[float, float]) -> float:
    return bounds[0] + u * (bounds[1] - bounds[0])


def _head_shading(params: FaceParameters, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Lambertian shading of a head-sized ellipsoid, used for skin and hair alike."""
    nx, ny = x / 1.3, (y + 0.1) / 1.4
    nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.05, 1.0))
    light = params.light_direction / np.linalg.norm(params.light_direction)
    cosine = (nx * light[0] + ny * light[1] + nz * light[2]) / np.sqrt(nx * nx + ny * ny + nz * nz)
    lambert = np.clip(cosine, 0.0, 1.0)
    return params.ambient + params.diffuse * lambert


def _background(params: FaceParameters, image_size: tuple[int, int]) -> np.ndarray:
    """A linear two-colour gradient across the image."""
    x, y = _image_coordinates(image_size)
    angle = params.background_angle
    t = np.clip(0.5 + x * math.cos(angle) + y * math.sin(angle), 0.0, 1.0)
    first, second = params.background_colours
    return first[:, None, None] + t * (second - first)[:, None, None]


def _draw_clutter(canvas: _Canvas, params: FaceParameters, image_size: tuple[int, int]) -> None:
    """Circles and rotated rectangles behind the person (still background class)."""
    x, y = _image_coordinates(image_size)
    image_to_face_units = canvas.pixel_size * image_size[0]
    for cx, cy, hx, hy, angle, is_circle, *colour in params.clutter:
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = cos * (x - cx) + sin * (y - cy), -sin * (x - cx) + cos * (y - cy)
        sdf = _ellipse_sdf(u, v, 0.0, 0.0, hx, hy, power=2.0 if is_circle else 8.0)
        canvas.paint(sdf * image_to_face_units, np.array(colour))


def _draw_hair_back(canvas: _Canvas, params: FaceParameters, frame: _Frame) -> None:
    """Hair behind the head: a cap for men, a cap plus a long curtain for women."""
    half_width = _face_half_width(params)
    colour = params.hair_colour[:, None, None] * frame.shading
    cap = _ellipse_sdf(frame.x, frame.y, 0.0, -0.12, half_width + 0.09, 1.02)
    if not params.male:
        end = _from_unit(params.hair_length_u, LONG_HAIR_END_RANGE)
        curtain_half_width = half_width + 0.16 + 0.12 * np.clip(frame.y, 0.0, None)
        outside_rows = np.maximum(frame.y - end, -0.2 - frame.y)
        curtain = np.maximum(np.abs(frame.x) - curtain_half_width, outside_rows)
        cap = np.minimum(cap, curtain)
    canvas.paint(cap, colour, HAIR)


def _draw_neck_and_clothes(canvas: _Canvas, params: FaceParameters, frame: _Frame) -> None:
    neck_half_width = 0.46 * _face_half_width(params)
    neck = np.maximum(np.abs(frame.x) - neck_half_width, 0.4 - frame.y)
    canvas.paint(neck, params.skin_colour[:, None, None] * (0.8 * frame.shading), SKIN)
    clothes = _ellipse_sdf(frame.x, frame.y, 0.0, 2.35, 2.0, 0.95)
    clothes_colour = params.clothes_colour[:, None, None] * np.clip(frame.shading, 0.5, 1.0)
    canvas.paint(clothes, clothes_colour, BACKGROUND)


def _draw_face(canvas: _Canvas, params: FaceParameters, frame: _Frame) -> None:
    """Face oval narrowing towards the chin; men also show their ears."""
    half_width = _face_half_width(params)
    colour = params.skin_colour[:, None, None] * frame.shading
    if params.male:
        for side in (-1.0, 1.0):
            ear = _ellipse_sdf(frame.x, frame.y, side * 0.97 * half_width, 0.02, 0.1, 0.18)
            canvas.paint(ear, colour * 0.92, SKIN)
    taper = _from_unit(params.jaw_taper_u, JAW_TAPER_RANGE[params.male])
    local_width = half_width * (1.0 - taper * np.clip(frame.y, 0.0, 1.0) ** 2)
    face = (np.hypot(frame.x / local_width, frame.y) - 1.0) * local_width
    canvas.paint(face, colour, SKIN)


def _draw_beard(canvas: _Canvas, params: FaceParameters, frame: _Frame, stubble: np.ndarray) -> None:
    """Lower face and upper lip covered in stubble or beard (hair class)."""
    half_width = _face_half_width(params)
    taper = _from_unit(params.jaw_taper_u, JAW_TAPER_RANGE[True])
    local_width = half_width * (1.0 - taper * np.clip(frame.y, 0.0, 1.0) ** 2) + 0.03
    jaw = (np.hypot(frame.x / local_width, frame.y - 0.01) - 1.0) * local_width
    top = 0.3 - 0.35 * (frame.x / half_width) ** 2
    region = np.maximum(jaw, top - frame.y)
    mixed = params.skin_colour + params.beard_density * (params.hair_colour - params.skin_colour)
    texture = 1.0 - STUBBLE_CONTRAST * params.beard_density * stubble
    canvas.paint(region, mixed[:, None, None] * frame.shading * texture, HAIR)


def _draw_hair_front(canvas: _Canvas, params: FaceParameters, frame: _Frame) -> None:
    """Hair over the forehead, down to a curved hairline."""
    half_width = _face_half_width(params)
    hairline = _from_unit(params.hairline_u, HAIRLINE_RANGE[params.male])
    cap = _ellipse_sdf(frame.x, frame.y, 0.0, -0.12, half_width + 0.09, 1.02)
    below_line = frame.y - (hairline + 0.35 * (frame.x / half_width) ** 2)
    colour = params.hair_colour[:, None, None] * frame.shading
    canvas.paint(np.maximum(cap, below_line), colour, HAIR)


def _draw_eyes(canvas: _Canvas, params: FaceParameters, frame: _Frame) -> None:
    size = params.eye_size
    for side in (-1.0, 1.0):
        cx = side * params.eye_spacing
        sclera = _ellipse_sdf(frame.feature_x, frame.y, cx, EYE_Y, 0.13 * size, 0.065 * size)
        canvas.paint(sclera, SCLERA_COLOUR[:, None, None] * frame.shading)
        iris = _ellipse_sdf(frame.feature_x, frame.y, cx, EYE_Y, 0.058 * size, 0.058 * size)
        canvas.paint(np.maximum(iris, sclera), params.iris_colour)
        pupil = _ellipse_sdf(frame.feature_x, frame.y, cx, EYE_Y, 0.025 * size, 0.025 * size)
        canvas.paint(pupil, PUPIL_COLOUR)


def _draw_brows(canvas: _Canvas, params: FaceParameters, frame: _Frame) -> None:
    """Arched brows rise to a peak a little outside the eye centre; straight ones barely tilt."""
    thickness = _from_unit(params.brow_thickness_u, BROW_THICKNESS_RANGE[params.male])
    half = params.brow_half_length
    base = np.minimum(params.hair_colour * 0.8, params.skin_colour * BROW_MAX_SKIN_RATIO)
    colour = base[:, None, None] * frame.shading
    for side in (-1.0, 1.0):
        cx = side * params.eye_spacing
        if params.arched_eyebrows:
            peak = cx + side * 0.3 * half
            arch = params.brow_arch

            def height(x: np.ndarray) -> np.ndarray:
                return params.brow_y - arch * (1.0 - ((x - peak) / (1.3 * half)) ** 2)

            def slope(x: np.ndarray) -> np.ndarray:
                return 2.0 * arch * (x - peak) / (1.3 * half) ** 2
        else:
            tilt = side * params.brow_tilt

            def height(x: np.ndarray) -> np.ndarray:
                return params.brow_y - 0.02 + tilt * (x - cx)

            def slope(x: np.ndarray) -> np.ndarray:
                return np.full_like(x, tilt)

        brow = _curve_sdf(frame.feature_x, frame.y, cx, half, height, slope, thickness / 2)
        canvas.paint(brow, colour)


def _draw_nose(canvas: _Canvas, params: FaceParameters, frame: _Frame) -> None:
    nostrils = _ellipse_sdf(frame.feature_x, frame.y, 0.0, 0.27, 0.1, 0.035)
    canvas.paint(nostrils, params.skin_colour[:, None, None] * (0.7 * frame.shading))


def _draw_mouth(canvas: _Canvas, params: FaceParameters, frame: _Frame) -> None:
    """Smiles are wider, curve up at the corners and open to show teeth."""
    if params.smiling:
        half = params.mouth_half_width * SMILE_WIDENING
        curve = _from_unit(params.mouth_curve_u, SMILE_CURVE_RANGE)
        opening = _from_unit(params.mouth_opening_u, SMILE_OPENING_RANGE)
    else:
        half = params.mouth_half_width
        curve = _from_unit(params.mouth_curve_u, NEUTRAL_CURVE_RANGE)
        opening = CLOSED_OPENING
    mouth_y = params.mouth_y

    def upper(x: np.ndarray) -> np.ndarray:
        return mouth_y - curve * (x / half) ** 2

    def lower(x: np.ndarray) -> np.ndarray:
        return upper(x) + opening * (1.0 - (x / half) ** 2)

    def upper_slope(x: np.ndarray) -> np.ndarray:
        return -2.0 * curve * x / half**2

    def lower_slope(x: np.ndarray) -> np.ndarray:
        return upper_slope(x) - 2.0 * opening * x / half**2

    x = frame.feature_x
    inside = np.maximum(np.abs(x) - half, np.maximum(upper(x) - frame.y, frame.y - lower(x)))
    gap_colour = TEETH_COLOUR if params.smiling else CLOSED_MOUTH_COLOUR
    canvas.paint(inside, gap_colour[:, None, None] * frame.shading)
    lip_colour = params.lip_colour[:, None, None] * frame.shading
    for height, slope in ((upper, upper_slope), (lower, lower_slope)):
        lip = _curve_sdf(x, frame.y, 0.0, half, height, slope, params.lip_thickness / 2)
        canvas.paint(lip, lip_colour)


def _draw_glasses(canvas: _Canvas, params: FaceParameters, frame: _Frame) -> None:
    """Two lens rims, a bridge and temples running back to the ears."""
    ax, ay = GLASSES_HALF_SIZE
    radius = params.glasses_thickness / 2
    y = EYE_Y + 0.01
    x = frame.feature_x
    for side in (-1.0, 1.0):
        cx = side * params.eye_spacing
        lens = _ellipse_sdf(x, frame.y, cx, y, ax, ay, power=3.0)
        canvas.image *= 1.0 - params.glasses_tint * canvas.coverage(lens)
        canvas.paint(np.abs(lens) - radius, params.frame_colour)
        temple_end = (side * (_face_half_width(params) + 0.02), y - 0.03)
        temple = _segment_sdf(x, frame.y, (cx + side * ax, y), temple_end, radius)
        canvas.paint(temple, params.frame_colour)
    inner = params.eye_spacing - ax
    bridge = _segment_sdf(x, frame.y, (-inner, y - 0.02), (inner, y - 0.02), radius)
    canvas.paint(bridge, params.frame_colour)
