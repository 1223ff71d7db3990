"""Runs: saved runs, newest first, filtered by model and method; open one, revoke its link or delete it.

With sign-in on, a user lists their own runs (an operator lists all); anyone else's run opens only through
its share link. Without sign-in every run is listed, as for a single user or a trusted network."""

from __future__ import annotations

import datetime
import logging

import streamlit as st

import explainers
from pages import controls
from workbench import session, sharing
from workbench.errors import RunNotFound, WorkbenchError
from workbench.settings import get_settings
from workbench.store import NotRunOwner

log = logging.getLogger("workbench.app")
ws: session.Workspace = controls.workspace("runs")
LISTED = 100


def when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


st.title("Runs")
try:
    store = sharing.run_store()
except WorkbenchError as error:  # the operator's data directory or database: the message says which
    st.error(controls.plain(error), icon=":material/cloud_off:")
    st.stop()
except Exception as error:  # noqa: BLE001 - the app keeps working; the traceback is for the operator
    log.exception("the run store is not available")
    st.error(f"Saved runs are not available ({type(error).__name__}); the details are in the server log.", icon=":material/cloud_off:")
    st.stop()
me = sharing.current_owner()
view = sharing.visibility()
retention = get_settings().retention_days
cleanup = sharing.last_cleanup(store)
retention_note = (
    f"Runs are kept for {retention} days (operator setting WORKBENCH_RETENTION_DAYS); once a day the app deletes "
    "older runs and the stored files no run uses any more."
    if retention > 0
    else "Runs are kept until deleted (WORKBENCH_RETENTION_DAYS = 0)."
)
if cleanup and cleanup["report"]:
    report = cleanup["report"]
    retention_note += f" Last cleanup {when(cleanup['started'])} UTC: {report['runs_deleted']} run(s), {report['blobs_deleted']} file(s) removed."
st.caption(retention_note)

st.caption(view.mode)
models = sharing.model_names(store, owner=view.owner_filter())
model_col, method_col, mine_col = st.columns([2, 2, 1], vertical_alignment="bottom")
model = model_col.selectbox("Model", [None, *models], format_func=lambda m: "All models" if m is None else m, key="runs_model")
method = method_col.selectbox(
    "Method", [None, *explainers.names()], format_func=lambda m: "All methods" if m is None else controls.method_title(m), key="runs_method"
)
# the toggle only where a list can hold other people's runs: an operator's, or a shared deployment's
only_mine = me is not None and view.lists_all and mine_col.toggle("Only my runs", key="runs_mine")
runs = store.list_runs(model=model, method=method, owner=view.owner_filter(only_mine), limit=LISTED)

if st.session_state.get("runs_notice"):
    st.error(controls.plain(st.session_state.pop("runs_notice")), icon=":material/block:")
if not runs:
    st.info("No saved runs" + (" match these filters." if model or method or only_mine else " yet: every run on Explain & compare is saved here."))
    st.page_link("pages/explain.py", label="Explain & compare", icon=":material/compare:")
    st.stop()

st.caption(f"{len(runs)} run(s), newest first" + (f" (the newest {LISTED})" if len(runs) == LISTED else "") + ". Times are UTC.")
widths = [2.2, 3, 3.4, 2.4, 1.2, 1.6, 1.6]
head = st.columns(widths)
for col, title in zip(head, ["Computed", "Model", "Methods", "Owner"]):
    col.markdown(f"**{title}**")
for run in runs:
    cols = st.columns(widths, vertical_alignment="center")
    cols[0].text(when(run.created))
    cols[1].text(f"{run.model_name} · {run.image_count} image{'s' if run.image_count != 1 else ''}")
    cols[2].text(", ".join(controls.method_title(m) for m in run.methods) + (f" · partial ({run.stopped})" if run.stopped else ""))
    cols[3].text(run.owner or "—")
    if cols[4].button("Open", key=f"runs_open_{run.run_id}", width="stretch"):
        st.switch_page("pages/shared.py", query_params={"run": run.run_id})
    allowed = sharing.may_delete(run, me)
    refused = None if allowed else "Only the person who saved this run can change it."
    with cols[5].popover("Revoke link", width="stretch", disabled=not allowed, help=refused):
        st.markdown("Revoke this run's share link? Whoever has it sees *not available*; the run stays here with a new link.")
        if st.button("Revoke", key=f"runs_revoke_{run.run_id}", type="primary"):
            try:
                sharing.revoke_link(ws, run.run_id, store, me)
            except (NotRunOwner, RunNotFound) as error:
                st.session_state["runs_notice"] = str(error)
            except Exception as error:  # noqa: BLE001 - the app keeps working; the traceback is for the operator
                log.exception("revoking the link of run %s failed", run.run_id)
                st.session_state["runs_notice"] = f"The link could not be revoked ({type(error).__name__}); the details are in the server log."
            st.rerun()
    with cols[6].popover("Delete", width="stretch", disabled=not allowed, help=refused):
        st.markdown("Delete this run for everyone? Its share link stops working.")
        if st.button("Delete", key=f"runs_delete_{run.run_id}", type="primary"):
            try:
                sharing.delete_run(ws, run.run_id, store, me)
            except (NotRunOwner, RunNotFound) as error:
                st.session_state["runs_notice"] = str(error)
            except Exception as error:  # noqa: BLE001 - the app keeps working; the traceback is for the operator
                log.exception("deleting run %s failed", run.run_id)
                st.session_state["runs_notice"] = f"The run could not be deleted ({type(error).__name__}); the details are in the server log."
            st.rerun()
