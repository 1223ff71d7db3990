"""The Evaluate section under a comparison (Explain & compare) and a saved run's metrics (Saved run):
metrics x methods with the random-map row, the deletion/insertion and randomisation curves, the masks.
Widgets only; the work is :mod:`workbench.evaluations` and :mod:`workbench.metrics`."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import altair as alt
import numpy as np
import streamlit as st

from pages import controls
from workbench import evaluations, metrics, session, sharing
from workbench.errors import WorkbenchError
from workbench.result import Comparison

log = logging.getLogger("workbench.app")


def curves_chart(rows: Sequence[dict[str, Any]], title: str, x_title: str, y_title: str) -> alt.Chart:
    """One line per method, the random map dashed grey."""
    data = alt.Data(values=list(rows))
    line = alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("x:Q", title=x_title),
        y=alt.Y("y:Q", title=y_title),
        color=alt.Color("method:N", title=None),
        strokeDash=alt.condition("datum.random", alt.value([5, 4]), alt.value([1, 0])),
        tooltip=["method:N", alt.Tooltip("x:Q", format=".3f"), alt.Tooltip("y:Q", format=".3f"), "layer:N"],
    )
    return line.properties(title=title, height=260)


def metric_params(name: str, scope: str) -> dict[str, Any]:
    values = {}
    for p in metrics.REGISTRY[name].params:
        key = f"{scope}_metric_{name}_{p.name}"
        cast = p.kind
        values[p.name] = st.number_input(
            p.name, min_value=cast(p.minimum) if p.minimum is not None else None,
            max_value=cast(p.maximum) if p.maximum is not None else None,
            step=1 if cast is int else 0.05, help=p.help, **controls.kept(key, cast(p.default)),
        )
    return values


def section(ws: session.Workspace, record: session.LoadedModel, comparison: Comparison, comparison_key: str, *, scope: str) -> None:
    """Choose metrics, see the cost, run them (once per comparison and settings), show the answer."""
    st.subheader("Evaluate")
    st.caption("How far to trust the maps: faithfulness (deletion, insertion), localisation against ground-truth masks, "
               "the model-randomisation sanity check and complexity, each beside the same metric on a seeded random map.")
    masks = evaluations.masks_for(ws, comparison)
    chosen = st.multiselect(
        "Metrics", metrics.names(), **controls.kept(f"{scope}_metrics", list(evaluations.DEFAULT_METRICS)),
        format_func=lambda name: metrics.REGISTRY[name].title,
    )
    if not chosen:
        st.info("Pick one or more metrics.")
        return
    params = {}
    with st.expander("Metric parameters and papers"):
        for name in chosen:
            cls = metrics.REGISTRY[name]
            st.markdown(f"**{cls.title}** — {cls.summary} [paper]({cls.paper})")
            params[name] = metric_params(name, scope)
    if not any(m is not None for m in masks) and any(metrics.REGISTRY[m].needs_mask for m in chosen):
        st.caption("No image here has a ground-truth mask: add a mask PNG beside the image on the Images page "
                   "(zoo samples have theirs) for the pointing game and mask energy.")
    try:
        work = evaluations.plan(record, comparison, comparison_key, chosen, params, masks=masks)
    except WorkbenchError as error:
        st.error(controls.plain(error), icon=":material/block:")
        return
    found = evaluations.cached(ws, work, comparison)
    if found is not None and comparison.run_id:
        try:
            evaluations.keep_with_run(ws, comparison, found, masks, sharing.run_store())
        except Exception:  # noqa: BLE001 - the metrics are shown; only their copy in the store is missing
            log.exception("saving the evaluation of run %s failed", comparison.run_id)
    if found is None:
        run_col, cost_col = st.columns([1, 5], vertical_alignment="center")
        pressed = run_col.button("Evaluate", type="primary", icon=":material/rule:", key=f"{scope}_evaluate")
        cost_col.caption(
            f"About {work.evaluations:,} model passes · estimated {work.seconds:.1f} s ("
            + ", ".join(f"{metrics.REGISTRY[m].title}: {int(e['evaluations']):,}" for m, e in work.estimate.items() if e["evaluations"])
            + ")" if work.evaluations else "Free: computed from the maps alone."
        )
        if not pressed:
            return
        with st.status(f"Evaluating {len(chosen)} metric(s)…", expanded=True) as status:
            bar = st.progress(0.0, text="starting")
            try:
                found = evaluations.run(
                    ws, record, comparison, work, masks, progress=lambda f, m: bar.progress(min(1.0, f), text=m),
                    store=sharing.run_store() if comparison.run_id else None,
                )
            except WorkbenchError as error:
                status.update(label=str(error), state="error")
                return
            except Exception as error:  # noqa: BLE001 - the app keeps working; the traceback is for the operator
                log.exception("evaluating failed")
                status.update(label=f"The evaluation failed ({type(error).__name__}); the details are in the server log.", state="error")
                return
            status.update(label=f"Evaluated in {found.seconds:.1f} s", state="complete", expanded=False)
        st.rerun()  # redraw the page from the cache: the exports above now include the evaluation
    show(found, comparison, masks, scope=scope)


def show(evaluation: Any, comparison: Comparison, masks: Sequence[np.ndarray | None], *, scope: str) -> None:
    """The table, the flags, the curves and the masks of one evaluation. Reads only: computes nothing."""
    number = st.column_config.NumberColumn
    titles = {m: metrics.REGISTRY[m].title if m in metrics.REGISTRY else m for m in evaluation.metrics}
    better = {m: metrics.REGISTRY[m].higher_is_better if m in metrics.REGISTRY else True for m in evaluation.metrics}
    rows = evaluations.table_rows(evaluation)
    for row in rows:
        if row["method"] != metrics.RANDOM:
            row["method"] = controls.method_title(row["method"])
        else:
            row["method"] = "random map (baseline)"
    st.dataframe(
        rows, hide_index=True, width="stretch", key=f"{scope}_evaluation_table",
        column_config={
            "method": st.column_config.TextColumn("method"),
            **{titles[m]: number(titles[m], format="%.3f", help=("higher" if better[m] else "lower") + " is better")
               for m in evaluation.metrics},
        },
    )
    st.caption(f"Mean over {len(evaluation.images)} image(s) · random map seeded with {evaluation.seed} · "
               f"computed in {evaluation.seconds:.1f} s")
    for r in evaluation.flagged():
        st.warning(controls.plain(f"{r.image} · {controls.method_title(r.method)}: {'; '.join(r.notes)}"), icon=":material/flag:")
    curve_metrics = [m for m in evaluation.metrics if any(r.curve for r in evaluation.results if r.metric == m)]
    if curve_metrics or any(m is not None for m in masks):
        index = 0
        if len(comparison.images) > 1:
            index = st.selectbox("Image for the curves", range(len(comparison.images)),
                                 format_func=lambda i: comparison.images[i].name, key=f"{scope}_evaluation_image")
        columns = st.columns(2, gap="large")
        for k, metric in enumerate(curve_metrics):
            rows = evaluations.curve_rows(evaluation, metric, index)
            if metric == "randomisation":
                chart = curves_chart(rows, "Randomisation: ρ with the original map", "layers randomised from the top", "Spearman ρ of |map|")
            else:
                chart = curves_chart(rows, titles[metric], "fraction of pixels", "probability of the target")
            columns[k % 2].altair_chart(chart, width="stretch", key=f"{scope}_curve_{metric}")
        if index < len(masks) and masks[index] is not None:
            with columns[len(curve_metrics) % 2]:
                st.image(evaluations.mask_picture(comparison.images[index].pixels, masks[index]),
                         caption=f"Ground-truth mask of {controls.plain(comparison.images[index].name)}", width=256)
