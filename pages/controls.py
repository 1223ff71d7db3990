"""Widgets the Explain page builds from data: a method's Params, the display options, the overlay grid."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import streamlit as st

from workbench import render, session
from workbench.errors import WorkbenchError
from workbench.result import Attribution
from workbench.settings import get_settings

NORMALISATIONS = {
    "map": "Per map",
    "image": "Shared per image (across methods)",
    "method": "Shared per method (across images)",
}
DISPLAY_PX = 256  # small maps are enlarged (nearest neighbour) to at least this size for display


def method_params(record: session.LoadedModel, method: str, scope: str = "explain") -> dict[str, Any]:
    """One widget per Param of the method, with the registry's defaults; returns {name: value}."""
    import explainers

    cls = explainers.REGISTRY[method]
    settings = get_settings()
    values = {}
    for p in cls.params:
        key = f"{scope}_{method}_{p.name}"
        help_text = p.help + (f" This deployment caps it at {getattr(settings, p.cap)}." if p.cap else "")
        if p.name == "layer":
            layers = session.spatial_layers(record)
            try:
                automatic = record.adapter.default_cam_layer()
            except WorkbenchError:
                automatic = "none"
            values[p.name] = st.selectbox(
                "layer",
                [None, *layers],
                format_func=lambda name, auto=automatic: f"automatic ({auto})" if name is None else name,
                key=f"{key}_{record.id}",
                help=help_text,
            )
        elif p.choices:
            values[p.name] = st.selectbox(p.name, list(p.choices), index=list(p.choices).index(p.default), key=key, help=help_text)
        elif p.kind is bool:
            values[p.name] = st.toggle(p.name, value=bool(p.default), key=key, help=help_text)
        elif p.kind in (int, float):
            cast = p.kind
            values[p.name] = st.number_input(
                p.name,
                value=cast(p.default),
                min_value=cast(p.minimum) if p.minimum is not None else None,
                max_value=cast(p.maximum) if p.maximum is not None else None,
                step=1 if cast is int else 0.01,
                key=key,
                help=help_text,
            )
        else:
            text = st.text_input(p.name, value=p.default or "", key=key, help=help_text)
            values[p.name] = text or None
    return values


@dataclasses.dataclass(frozen=True)
class Display:
    normalise: str
    positive_only: bool
    opacity: float
    cmap: str
    diverging: str
    raw: bool


def display_options() -> Display:
    """How maps are drawn; changing any of these never recomputes a map."""
    cols = st.columns([3, 2, 2, 2, 2, 2], vertical_alignment="bottom")
    normalise = cols[0].selectbox("Normalisation", list(NORMALISATIONS), format_func=NORMALISATIONS.get, key="display_normalise")
    opacity = cols[1].slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="display_opacity")
    cmap = cols[2].selectbox("Colormap", render.SEQUENTIAL_CMAPS, key="display_cmap")
    diverging = cols[3].selectbox("Signed maps", render.DIVERGING_CMAPS, key="display_diverging", help="Diverging colormap for signed maps.")
    positive_only = cols[4].toggle("Positive only", key="display_positive", help="Show only evidence for the target.")
    raw = cols[5].toggle("Raw maps", key="display_raw", help="The map alone, without the image underneath.")
    return Display(normalise, positive_only, opacity, cmap, diverging, raw)


def _enlarge(image: np.ndarray) -> np.ndarray:
    factor = max(1, -(-DISPLAY_PX // max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def picture(pixels: np.ndarray, result: Attribution, display: Display, scale: float | None) -> np.ndarray:
    """uint8 RGB of one map: overlaid on the image, or alone."""
    signed = result.signed and not display.positive_only
    cmap = display.diverging if signed else display.cmap
    if display.raw:
        values = render.normalise(result.map, result.signed, scale, display.positive_only)
        image = (render.colormap(values, cmap, signed) * 255).round().astype(np.uint8)
    else:
        image = render.overlay(
            pixels, result.map, signed=result.signed, cmap=cmap, alpha=display.opacity, scale=scale,
            positive_only=display.positive_only,
        )
    return _enlarge(image)


def scales(grid: Sequence[Sequence[Attribution]], display: Display) -> list[list[float | None]]:
    """The value that maps to full colour, per cell, under the chosen normalisation."""
    if display.normalise == "image":
        return [[render.shared_scale(row, display.positive_only)] * len(row) for row in grid]
    if display.normalise == "method" and grid:
        per_column = [render.shared_scale([row[j] for row in grid], display.positive_only) for j in range(len(grid[0]))]
        return [list(per_column) for _ in grid]
    return [[None] * len(row) for row in grid]


def grid(
    headers: Sequence[str],
    images: Sequence[tuple[str, np.ndarray]],
    results: Sequence[Sequence[Attribution]],
    display: Display,
    *,
    extra: Sequence[str] | None = None,
    downloads: Sequence[tuple[str, bytes]] | None = None,
) -> None:
    """Rows = images, columns = the original then one map per column header (+ an optional text column)."""
    widths = [1] * (1 + len(headers)) + ([1] if extra else [])
    top = st.columns(widths)
    top[0].markdown("**Image**")
    for col, header in zip(top[1:], headers):
        col.markdown(f"**{header}**")
    if extra:
        top[-1].markdown("**Agreement**")
    for i, ((caption, pixels), row, row_scales) in enumerate(zip(images, results, scales(results, display))):
        cols = st.columns(widths, vertical_alignment="top")
        cols[0].image(_enlarge(render.to_uint8(pixels)), caption=caption, width="stretch")
        if downloads:
            name, data = downloads[i]
            cols[0].download_button("maps .npz", data, file_name=name, mime="application/octet-stream", key=f"grid_download_{i}", icon=":material/download:")
        for col, result, scale in zip(cols[1:], row, row_scales):
            note = f"{result.seconds:.2f} s · {result.evaluations} passes"
            if result.completeness_ratio is not None:
                note += f" · gap {result.completeness_ratio:.1%}"
            col.image(picture(pixels, result, display, scale), caption=note, width="stretch")
            for warning in result.notes:
                col.caption(f"⚠ {warning}")
        if extra:
            cols[-1].markdown(extra[i])
