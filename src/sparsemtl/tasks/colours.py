"""Colours for pictures of targets and predictions: class palettes and a continuous colour map."""

from __future__ import annotations

import colorsys

import numpy as np

#: Anchor colours of the continuous map (samples of matplotlib's viridis, dark to bright), so
#: a picture of depth or a probability reads the same without matplotlib installed.
_MAP_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    dtype=np.float64,
)

#: Golden-ratio hue step: consecutive classes get hues far apart, for any number of classes.
_HUE_STEP = (5**0.5 - 1) / 2


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours, distinct for neighbouring class ids; class 0 is grey."""
    colours = [(128, 128, 128)]
    for k in range(1, num_classes):
        hue = (k * _HUE_STEP) % 1.0
        value = 0.95 if k % 2 else 0.7
        colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, value)))
    return np.array(colours[:num_classes], dtype=np.uint8)


def colour_map(values: np.ndarray, low: float, high: float, invalid: np.ndarray | None = None) -> np.ndarray:
    """(..., 3) uint8 colours of ``values`` scaled from [low, high] onto the map; ``invalid``
    pixels (and non-finite values) are black."""
    span = high - low if high > low else 1.0
    t = np.clip((np.nan_to_num(values.astype(np.float64), nan=low) - low) / span, 0.0, 1.0)
    position = t * (len(_MAP_ANCHORS) - 1)
    index = np.minimum(position.astype(np.int64), len(_MAP_ANCHORS) - 2)
    frac = (position - index)[..., None]
    rgb = _MAP_ANCHORS[index] * (1 - frac) + _MAP_ANCHORS[index + 1] * frac
    bad = ~np.isfinite(values) if invalid is None else (invalid | ~np.isfinite(values))
    rgb[bad] = 0.0
    return np.round(rgb).astype(np.uint8)
