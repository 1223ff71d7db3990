"""Layers: the active model's architecture graph, per-layer statistics over the loaded images, the first
NaN/Inf layer, weights and feature maps. Picking a layer here makes it Explain & compare's CAM layer."""

from __future__ import annotations

import logging

import numpy as np
import streamlit as st

from pages import controls, layer_views
from workbench import architecture, inspection, session
from workbench.errors import WorkbenchError

log = logging.getLogger("workbench.app")
ws: session.Workspace = controls.workspace("layers")
MAX_REPORTS = 4  # layer reports kept per session
GRAPH_HEIGHT = 560  # px

st.title("Layers")
record = ws.model
if record is None:
    st.info("Load a model first.")
    st.page_link("pages/models.py", label="Models", icon=":material/deployed_code:")
    st.stop()
adapter = record.adapter
entries = list(ws.images.values())


@st.cache_data(max_entries=8, show_spinner=False)
def cached_architecture(identity: str, _adapter) -> architecture.Architecture:
    return architecture.architecture(_adapter)


def report_for(entries) -> inspection.LayerReport:
    """The layer report of these images and their targets, computed once per session and settings."""
    targets = [session.target(ws, record, e) for e in entries]
    key = session.digest([record.identity, [e.id for e in entries], targets])
    reports = st.session_state.setdefault("layers_reports", {})
    if key not in reports:
        batch = adapter.prepare(np.stack([session.model_pixels(ws, record, e) for e in entries]))
        reports[key] = inspection.layer_report(adapter, batch, targets)
        while len(reports) > MAX_REPORTS:
            reports.pop(next(iter(reports)))
    return reports[key]


try:
    arch = cached_architecture(record.identity, adapter)
    report = None
    if entries:
        with st.spinner(f"One forward and backward pass over {len(entries)} image(s)…"):
            report = report_for(entries)
except WorkbenchError as error:
    st.error(str(error), icon=":material/block:")
    st.stop()
except Exception as error:  # noqa: BLE001 - the app keeps working; the traceback is for the operator
    log.exception("inspecting %s failed", record.name)
    st.error(f"Inspecting {record.name} failed ({type(error).__name__}); the details are in the server log.", icon=":material/block:")
    st.stop()

if report is not None and report.first_nonfinite is not None:
    st.error(report.first_nonfinite.describe([e.name for e in entries]) + " Explaining it is refused.", icon=":material/error:")
if not entries:
    st.info("Add images to see each layer's statistics over them; the graph needs none.")
    st.page_link("pages/images.py", label="Images", icon=":material/image:")

# ---------------------------------------------------------------------------- choosing a layer
layers = [layer.name for layer in sorted(adapter.layers(), key=lambda layer: layer.order)]
spatial = set(session.spatial_layers(record))
try:
    automatic = adapter.default_cam_layer()
except WorkbenchError:
    automatic = None
current = layer_views.cam_choice(record.id) or automatic
search_col, pick_col, collapse_col = st.columns([2, 3, 1], vertical_alignment="bottom")
search = search_col.text_input("Search layers by name", key="layers_search", placeholder="e.g. layer4 or conv")
matches = arch.search(search) if search else []
options = [n for n in layers if n in matches] if search else layers
if search and not options:
    search_col.caption("No layer name contains that.")
    options = layers
picked_key = f"layers_pick_{record.id}"
if st.session_state.get(picked_key) not in options:
    st.session_state[picked_key] = current if current in options else options[-1]
picked = pick_col.selectbox(
    "Layer", options, key=picked_key, help="A layer with a spatial output becomes the CAM layer of Explain & compare."
)
collapse = collapse_col.toggle(
    "Collapse blocks", value=arch.layer_count >= architecture.COLLAPSE_FROM, key=f"layers_collapse_{record.id}",
    help="One node per block; runs of identical blocks as one node. Blocks holding the picked layer or a match stay open.",
)
if picked in spatial:
    if picked != current:
        layer_views.choose_cam_layer(record.id, picked)
        current = picked
    st.caption(f"Grad-CAM, Grad-CAM++ and Score-CAM on Explain & compare use {controls.plain(picked)} for {controls.plain(record.name)}.")
else:
    st.caption(f"`{picked}` has no spatial output, so it cannot be a CAM layer; CAM methods keep `{current}`.")

# ---------------------------------------------------------------------------- graph
st.subheader("Architecture")
st.caption(
    f"{arch.layer_count} layers{'' if arch.traced else ' in forward order (the model could not be traced, so branches are not drawn)'}; "
    "residual branches in pink; the picked layer in yellow, search matches in blue."
)
with st.container(height=GRAPH_HEIGHT, border=True):  # a tall model scrolls here, drawn at its own size
    st.graphviz_chart(architecture.to_dot(arch, selected=picked, search=search, collapse=collapse), width="content")

if report is None:
    st.stop()

# ---------------------------------------------------------------------------- statistics
st.subheader("Statistics over the images")
st.caption(
    f"Every layer's output over {len(entries)} image(s); gradient norm of each image's target score with respect to "
    "the layer's output (mean over images): where it falls to ~0, CAMs from that layer go blank. Dead channels are "
    "0 everywhere on every image. Click a column to sort."
)
number = st.column_config.NumberColumn
st.dataframe(
    [row.as_dict() | {"#": row.order, "output_shape": " x ".join(map(str, row.output_shape))} for row in report.rows],
    hide_index=True,
    width="stretch",
    height=320,
    column_order=["#", "name", "kind", "output_shape", "parameters", "mean", "std", "min", "max", "fraction_zero",
                  "dead_channels", "nan_count", "inf_count", "grad_norm"],
    column_config={
        "mean": number(format="%.4g"), "std": number(format="%.4g"), "min": number(format="%.4g"), "max": number(format="%.4g"),
        "fraction_zero": number("zeros", format="percent"), "grad_norm": number("grad norm", format="%.3e"),
        "dead_channels": number("dead"), "nan_count": number("NaN"), "inf_count": number("Inf"),
    },
    key="layers_table",
)
left, right = st.columns(2)
left.altair_chart(layer_views.depth_chart(report.rows, ["mean", "std"], "Activation mean and std across depth"), width="stretch")
right.altair_chart(layer_views.depth_chart(report.rows, ["grad_norm"], "Gradient norm across depth", log_scale=True), width="stretch")
left.altair_chart(layer_views.depth_chart(report.rows, ["fraction_zero"], "Fraction of zeros across depth"), width="stretch")
right.altair_chart(layer_views.depth_chart(report.rows, ["dead_channels", "nan_count", "inf_count"], "Dead channels, NaN and Inf"), width="stretch")

# ---------------------------------------------------------------------------- weights
with st.expander("Weights per layer"):
    weights = inspection.weight_statistics(adapter)
    st.dataframe([w.as_dict() for w in weights], hide_index=True, width="stretch", height=240, key="layers_weights")
    own = next((w for w in weights if w.name == picked), None)
    if own is not None:
        st.altair_chart(layer_views.weight_histogram(own), width="stretch")
    else:
        st.caption(f"`{picked}` has no weights of its own.")

# ---------------------------------------------------------------------------- feature maps
st.subheader("Feature maps")
maps_layer = picked if picked in spatial else current
if maps_layer is None:
    st.caption("This model has no layer with a spatial output.")
    st.stop()
image_col, k_col = st.columns([3, 2])
index = image_col.selectbox("Image", range(len(entries)), format_func=lambda i: entries[i].name, key="layers_image")
k = k_col.slider("Channels (strongest by mean activation)", 4, 32, 16, 4, key="layers_k")
batch = adapter.prepare(session.model_pixels(ws, record, entries[index])[None])
try:
    fm = inspection.feature_maps(adapter, batch, maps_layer, k)
except WorkbenchError as error:
    st.error(str(error), icon=":material/block:")
    st.stop()
st.caption(f"Top {fm.maps.shape[1]} channels of {controls.plain(maps_layer)} on {controls.plain(entries[index].name)}, one colour scale: {fm.vmin:.3g} … {fm.vmax:.3g}")
st.image(inspection.colour_bar(fm.vmin, fm.vmax), caption=f"{fm.vmin:.3g}  →  {fm.vmax:.3g}", width=256)
per_row = 8
for start in range(0, fm.maps.shape[1], per_row):
    for col, j in zip(st.columns(per_row), range(start, min(start + per_row, fm.maps.shape[1]))):
        col.image(inspection.feature_tile(fm, 0, j), caption=f"ch {fm.channels[0, j]} · {fm.means[0, j]:.3g}", width="stretch")
