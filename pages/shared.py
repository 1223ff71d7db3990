"""A saved run, opened from its share link (``?run=<id>``): the same grid and charts as Explain & compare,
read from the store — read-only, no explainer runs here — with its exports and a Re-run."""

from __future__ import annotations

import datetime
import logging

import streamlit as st

from pages import controls, evaluation
from workbench import engine, session, sharing
from workbench.errors import RunNotFound, WorkbenchError
from workbench.store import RunDamaged, StoreUnavailable

log = logging.getLogger("workbench.app")
ws: session.Workspace = controls.workspace("saved")

st.title("Saved run")
run_id = st.query_params.get("run")
if run_id is None:
    st.info("Open a share link, or pick a run on the Runs page.")
    st.page_link("pages/runs.py", label="Runs", icon=":material/history:")
    st.stop()

try:
    opened = sharing.open_run(ws, run_id, sharing.run_store())
except (RunNotFound, RunDamaged, StoreUnavailable) as error:
    st.error(controls.plain(error), icon=":material/link_off:")
    st.page_link("pages/runs.py", label="Runs", icon=":material/history:")
    st.stop()
except Exception as error:  # noqa: BLE001 - the app keeps working; the traceback is for the operator
    log.exception("opening run %r failed", run_id)
    st.error(f"The run could not be opened ({type(error).__name__}); the details are in the server log.", icon=":material/link_off:")
    st.stop()

comparison = opened.comparison
created = datetime.datetime.fromtimestamp(comparison.created, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
model = dict(comparison.model)
st.markdown(
    f"**{controls.plain(model.get('name', 'model'))}** · {len(comparison.images)} image(s) · "
    f"{controls.plain(', '.join(controls.method_title(m) for m in comparison.methods))} · seed {comparison.seed} · computed {created}"
    + (f" by {controls.plain(comparison.owner)}" if comparison.owner else "")
)
if comparison.stopped is not None:  # a run cancelled part-way: it holds only the methods that finished
    st.warning(controls.plain(f"Partial run. {engine.stopped_line(comparison.stopped)}"), icon=":material/stop_circle:")
opened_in = f"opened from the store in {opened.load_seconds * 1000:.0f} ms" if opened.load_seconds is not None else "saved in this session"
st.caption(
    f":material/lock: Read-only view of a saved run: {opened_in}; computing these maps took {opened.compute_seconds:.1f} s. "
    "No explainer runs on this page; Re-run computes the run again from its stored model and images."
)

display = controls.display_options()
with st.container(border=True):
    controls.share_panel(comparison, display, scope="shared", evaluation=opened.evaluation)
    if st.button("Re-run", key="shared_rerun", icon=":material/replay:", help="Load this run's model and images into your workspace and compute the same methods, parameters and seed on Explain & compare."):
        try:
            with st.spinner("Loading the run's model and images…"):
                rerun = sharing.reload(ws, comparison.run_id, sharing.run_store())
        except WorkbenchError as error:
            st.error(controls.plain(error), icon=":material/block:")
        except Exception as error:  # noqa: BLE001 - the app keeps working; the traceback is for the operator
            log.exception("re-running run %s failed", comparison.run_id)
            st.error(f"The run could not be loaded for a re-run ({type(error).__name__}); the details are in the server log.", icon=":material/block:")
        else:
            controls.preset_explain(rerun)
            st.session_state["explain_rerun"] = {"run_id": rerun.run_id, "notes": list(rerun.notes)}
            st.session_state["explain_autorun"] = True
            st.switch_page("pages/explain.py")

controls.comparison_view(comparison, display, scope="shared")
if opened.evaluation is not None:
    st.divider()
    st.subheader("Evaluation")
    evaluation.show(opened.evaluation, comparison, opened.masks or [None] * len(comparison.images), scope="shared")
