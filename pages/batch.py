"""Batch results: a dataset explained by ``python -m workbench batch``, as a table to sort and filter, and a grid."""

from __future__ import annotations

import streamlit as st

from pages import controls
from workbench import batch
from workbench.errors import WorkbenchError

MAX_GRID = 12
controls.workspace("batch")

st.title("Batch results")
root = batch.batch_root()
folders = batch.result_folders(root)
st.caption(
    f"Results of `python -m workbench batch ... --out {root}/NAME` appear here: one row per image and method, "
    "sortable (click a column), filtered by class, method and metric; select rows to see their maps."
)
if not folders:
    st.info("No batch results yet.", icon=":material/dataset:")
    st.stop()
name = st.selectbox("Result", folders, key="batch_folder")
try:
    result = batch.open_result(name, root)
except WorkbenchError as error:
    st.error(controls.plain(error), icon=":material/block:")
    st.stop()

summary = result.summary
if summary:
    rate = summary.get("throughput_images_per_second")
    cols = st.columns(4)
    cols[0].metric("Images explained", summary.get("images_explained", 0))
    cols[1].metric("Failed", summary.get("images_failed", 0))
    cols[2].metric("Maps", summary.get("results", 0))
    cols[3].metric("Images / s", f"{rate:.2f}" if rate else "–")

class_col, method_col, metric_col = st.columns(3)
classes = class_col.multiselect("Classes", result.classes, key="batch_classes")
methods = method_col.multiselect("Methods", result.methods, key="batch_methods")
metric = metric_col.selectbox("Filter by metric", [None, *result.metrics], format_func=lambda m: "—" if m is None else m, key="batch_metric")
metric_range = None
if metric and (bounds := result.metric_range(metric)) and bounds[0] < bounds[1]:
    metric_range = st.slider(f"{metric} between", bounds[0], bounds[1], bounds, key="batch_metric_range")

rows = result.table(classes=classes, methods=methods, metric=metric, metric_range=metric_range)
st.caption(f"{len(rows)} of {sum(r['status'] == 'ok' for r in result.rows)} maps")
picked = st.dataframe(
    rows, key="batch_table", hide_index=True, on_select="rerun", selection_mode="multi-row", use_container_width=True,
    column_config={"key": None},
)
selected = [rows[i] for i in picked.selection.rows][:MAX_GRID]
if selected:
    grid = st.columns(min(4, len(selected)))
    for i, row in enumerate(selected):
        try:
            image, _ = result.overlay(row["key"], row["method"])
        except (WorkbenchError, OSError) as error:
            grid[i % len(grid)].warning(controls.plain(f"{row['image']}: {error}"))
            continue
        grid[i % len(grid)].image(image, caption=controls.plain(f"{row['image']} · {row['method']} · {row['class']}"), use_container_width=True)
else:
    st.caption(f"Select rows (up to {MAX_GRID}) to see their maps.")

failures = result.failures()
if failures:
    with st.expander(f"{len(failures)} image(s) could not be explained"):
        st.dataframe(failures, hide_index=True, use_container_width=True)
