"""The Layers page's charts and the TensorBoard download, built from :mod:`workbench.inspection` results.

Also where a layer picked on the Layers page becomes Explain & compare's CAM layer: the page records the
choice per model (:func:`choose_cam_layer`); the layer widget applies it once (:func:`apply_cam_choice`)."""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import altair as alt
import streamlit as st

from workbench.errors import WorkbenchError

log = logging.getLogger("workbench.app")
CAM_CHOICE_KEY = "layers_cam_choice"  # {model id: layer} picked on the Layers page


# ---------------------------------------------------------------------------- the CAM layer
def choose_cam_layer(model_id: str, layer: str | None) -> None:
    """Make ``layer`` (None: automatic) the CAM layer of Explain & compare's CAM methods for this model."""
    st.session_state.setdefault(CAM_CHOICE_KEY, {})[model_id] = layer


def cam_choice(model_id: str) -> str | None:
    return st.session_state.get(CAM_CHOICE_KEY, {}).get(model_id)


def apply_cam_choice(widget_key: str, model_id: str, options: Sequence[str | None], keep) -> None:
    """Before a CAM method's layer widget is drawn: set it (``keep(widget_key, value)``, the page's kept
    settings) to the Layers page's choice, once per choice, so a later change on Explain & compare itself stays."""
    choices = st.session_state.get(CAM_CHOICE_KEY, {})
    if model_id not in choices:
        return
    chosen = choices[model_id]
    marker = f"{widget_key}_from_layers"
    if chosen in options and st.session_state.get(marker, "\0") != chosen:
        keep(widget_key, chosen)
        st.session_state[marker] = chosen


# ---------------------------------------------------------------------------- charts across depth
def depth_rows(rows: Sequence[Any], fields: Sequence[str]) -> list[dict[str, Any]]:
    return [  # NaN and Inf are counted in their own columns; a chart's JSON cannot carry them
        {"order": r.order, "layer": r.name, "kind": r.kind, "statistic": f, "value": float(getattr(r, f))}
        for r in rows
        for f in fields
        if getattr(r, f) is not None and math.isfinite(getattr(r, f))
    ]


def depth_chart(rows: Sequence[Any], fields: Sequence[str], title: str, *, log_scale: bool = False) -> alt.Chart:
    """One line per statistic over the layers in forward order; hover names the layer."""
    data = depth_rows(rows, fields)
    if log_scale:
        data = [d for d in data if d["value"] > 0]
    return (
        alt.Chart(alt.Data(values=data))
        .mark_line(point=alt.OverlayMarkDef(size=25))
        .encode(
            x=alt.X("order:Q", title="layer (forward order)"),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(type="log") if log_scale else alt.Undefined),
            color=alt.Color("statistic:N", title=None),
            tooltip=["order:Q", "layer:N", "kind:N", "statistic:N", alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(title=title, height=220)
    )


def weight_histogram(row: Any) -> alt.Chart:
    data = [
        {"from": float(a), "to": float(b), "count": int(c)}
        for a, b, c in zip(row.edges[:-1], row.edges[1:], row.histogram)
    ]
    return (
        alt.Chart(alt.Data(values=data))
        .mark_bar()
        .encode(
            x=alt.X("from:Q", title="weight value", bin="binned"),
            x2="to:Q",
            y=alt.Y("count:Q", title="count"),
            tooltip=[alt.Tooltip("from:Q", format=".3g"), alt.Tooltip("to:Q", format=".3g"), "count:Q"],
        )
        .properties(title=f"Weights of {row.name}", height=200)
    )


# ---------------------------------------------------------------------------- TensorBoard
def tensorboard_download(comparison, *, scope: str) -> None:
    """A saved run's TensorBoard event files as a zip, written when clicked (in a child process)."""
    from functools import partial

    if not comparison.run_id:
        return
    st.download_button(
        "TensorBoard .zip",
        partial(_event_zip, comparison.run_id),
        file_name=f"run-{comparison.run_id[:12]}-tensorboard.zip",
        mime="application/zip",
        key=f"{scope}_export_tensorboard",
        icon=":material/download:",
        on_click="ignore",
        width="stretch",
        help="Event files with every map (overlay and raw), timings, completeness gaps and agreement as scalars, layer "
        "statistics and weights as histograms, and the provenance. Unzip into a folder and run tensorboard --logdir on it.",
    )


def _event_zip(run_id: str) -> bytes:
    from workbench import tensorboard

    try:
        return tensorboard.event_zip(run_id)
    except WorkbenchError:
        log.exception("writing the TensorBoard files of run %s failed", run_id)
        return tensorboard.event_zip(run_id, layers=False)  # the run's maps and scalars, without the layers
