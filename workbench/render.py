"""Attribution maps as pictures: normalisation, colormaps and overlays (numpy + matplotlib colormaps)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from .result import Attribution

# The first of each is the default: perceptually uniform (equal steps in value look like equal steps in
# colour, and lightness rises with the value), so the picture does not invent edges the map lacks, as jet does.
SEQUENTIAL_CMAPS = ("viridis", "inferno", "magma", "cividis", "gray", "turbo", "jet")
DIVERGING_CMAPS = ("RdBu_r", "coolwarm", "PiYG", "bwr", "seismic")
# Overlay opacity: at this default a typical Integrated Gradients or SHAP map (most of its mass far below
# its saturating top 2 %) is visible over the image, not only its few extreme pixels.
DEFAULT_OPACITY = 0.7


# As captum's visualize_image_attr: the top 2 % of values saturate, so a few extreme pixels
# (common in gradient maps) do not leave the rest of the map invisible.
OUTLIER_PERCENT = 2.0


def scale_of(attribution_map: np.ndarray, signed: bool, positive_only: bool = False, outlier_percent: float = OUTLIER_PERCENT) -> float:
    """The value that maps to full colour: the (100 - outlier_percent) percentile of |value|
    for signed maps, of the (positive part of the) value otherwise."""
    m = np.asarray(attribution_map, dtype=np.float64)
    if positive_only or not signed:
        m = np.maximum(m, 0)
    values = np.abs(m).ravel()
    values = values[values > 0]
    if values.size == 0:
        return 1.0
    value = float(np.percentile(values, 100.0 - outlier_percent)) if outlier_percent > 0 else float(values.max())
    return value if value > 0 else float(values.max())


def shared_scale(results: Sequence[Attribution], positive_only: bool = False) -> float:
    """One scale for several maps, so colours compare across methods (each map first in its own units)."""
    return max((scale_of(r.map, r.signed, positive_only) for r in results), default=1.0)


def normalise(attribution_map: np.ndarray, signed: bool, scale: float | None = None, positive_only: bool = False) -> np.ndarray:
    """-> values in [0, 1] for unsigned or positive-only maps, in [-1, 1] for signed maps."""
    m = np.asarray(attribution_map, dtype=np.float32)
    if positive_only:
        m = np.maximum(m, 0)
    s = scale if scale and scale > 0 else scale_of(m, signed, positive_only)
    lo = -1.0 if signed and not positive_only else 0.0
    return np.clip(m / s, lo, 1.0).astype(np.float32)


def colormap(values: np.ndarray, name: str, signed: bool) -> np.ndarray:
    """[H, W] normalised values -> [H, W, 3] float RGB in [0, 1]."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    positions = (values + 1.0) / 2.0 if signed else values
    return cmap(np.clip(positions, 0, 1))[..., :3].astype(np.float32)


def default_cmap(signed: bool, positive_only: bool = False) -> str:
    return DIVERGING_CMAPS[0] if signed and not positive_only else SEQUENTIAL_CMAPS[0]


def colorbar(width: int, cmap: str, signed: bool, height: int = 10) -> np.ndarray:
    """uint8 [height, width, 3]: the colormap from the lowest value shown (left: -scale for signed maps,
    else 0) to the highest (right: +scale), as the overlay maps them."""
    positions = np.linspace(-1.0 if signed else 0.0, 1.0, max(2, int(width)), dtype=np.float32)
    row = colormap(positions[None, :], cmap, signed)
    return (np.repeat(row, max(1, int(height)), axis=0) * 255).round().astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ColourScale:
    """What one overlay's colour bar says: its colormap and the values at its two ends (a signed map's
    bar runs from -scale through 0, the diverging map's neutral centre, to +scale; others from 0 to scale)."""

    cmap: str
    signed: bool
    scale: float

    @property
    def low(self) -> float:
        return -self.scale if self.signed else 0.0

    @property
    def high(self) -> float:
        return self.scale

    def label(self) -> str:
        s = self.scale
        return f"−{s:.3g} … 0 … +{s:.3g}" if self.signed else f"0 … {s:.3g}"

    def to_dict(self) -> dict[str, Any]:
        return {"cmap": self.cmap, "signed": self.signed, "low": self.low, "high": self.high}


def colour_scale(
    attribution_map: np.ndarray,
    signed: bool,
    *,
    scale: float | None = None,
    positive_only: bool = False,
    cmap: str | None = None,
    diverging: str | None = None,
) -> ColourScale:
    """The colour bar of one map drawn with ``scale`` (None: the map's own, :func:`scale_of`): ``cmap`` for
    unsigned and positive-only maps, ``diverging`` for signed ones (None: the defaults)."""
    shown_signed = signed and not positive_only
    s = scale if scale and scale > 0 else scale_of(attribution_map, signed, positive_only)
    name = (diverging if shown_signed else cmap) or default_cmap(signed, positive_only)
    return ColourScale(name, shown_signed, float(s))


# How a grid of maps (rows = images, columns = methods) shares colour scales.
NORMALISATIONS = ("map", "image", "method")


def grid_scales(grid: Sequence[Sequence[Attribution]], normalise: str = "map", positive_only: bool = False) -> list[list[float | None]]:
    """The value that maps to full colour, per cell: ``map`` each its own (None), ``image`` one per row
    (across methods), ``method`` one per column (across images)."""
    if normalise == "image":
        return [[shared_scale(row, positive_only)] * len(row) for row in grid]
    if normalise == "method" and grid:
        per_column = [shared_scale([row[j] for row in grid], positive_only) for j in range(len(grid[0]))]
        return [list(per_column) for _ in grid]
    return [[None] * len(row) for row in grid]


def overlay(
    pixels: np.ndarray,
    attribution_map: np.ndarray,
    *,
    signed: bool,
    cmap: str | None = None,
    alpha: float = DEFAULT_OPACITY,
    scale: float | None = None,
    positive_only: bool = False,
) -> np.ndarray:
    """Blend a coloured map over the image: -> uint8 [H, W, 3].

    Signed maps are blended with opacity ``alpha * sqrt(|value|)``: zero leaves the image as it is, and
    the many small values of a gradient map stay visible next to its saturated extremes (with ``|value|``
    alone, a pixel at a tenth of the scale got a twentieth of the colour). The hue still encodes the value.
    """
    values = normalise(attribution_map, signed, scale, positive_only)
    is_signed = signed and not positive_only
    colours = colormap(values, cmap or default_cmap(signed, positive_only), is_signed)
    base = np.asarray(pixels, dtype=np.float32)
    if base.shape[-1] == 1:
        base = np.repeat(base, 3, axis=-1)
    if is_signed:
        # weight the colour by strength, so neutral (zero) attribution leaves the image visible
        strength = np.sqrt(np.abs(values))[..., None] * alpha
    else:
        strength = np.full(values.shape + (1,), alpha, np.float32)
    blended = base * (1 - strength) + colours * strength
    return (np.clip(blended, 0, 1) * 255).round().astype(np.uint8)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    base = np.asarray(pixels, dtype=np.float32)
    if base.shape[-1] == 1:
        base = np.repeat(base, 3, axis=-1)
    return (np.clip(base, 0, 1) * 255).round().astype(np.uint8)
