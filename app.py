"""The workbench in the browser: ``streamlit run app.py``.

The entry point is the frame around every page: it refuses to start in an unsafe
environment, asks for sign-in when ``.streamlit/secrets.toml`` has an ``[auth]`` section,
creates the session's workspace once, draws the sidebar (active model, device, versions)
and runs the page picked in the navigation. A share link (``?run=<id>``) opens the saved
run's page. It imports no framework: torch and tensorflow load only in the model worker processes.
"""

from __future__ import annotations

import logging

import streamlit as st

from pages import controls
from workbench import session, sharing
from workbench.errors import WorkbenchError
from workbench.settings import check_environment

# an emoji icon is drawn in the browser; a :material/...: page icon is fetched from an external font host
st.set_page_config(page_title="Interpretability workbench", page_icon="🔬", layout="wide")

try:
    check_environment()
except WorkbenchError as error:
    st.error(str(error))
    st.stop()

if sharing.login_enabled() and not sharing.signed_in():
    st.title("Interpretability workbench")
    st.write("This deployment is for signed-in users.")
    if "run" in st.query_params:
        st.caption("You opened a share link: after signing in, open the link again to see the run.")
    if st.button("Sign in", type="primary", icon=":material/login:", key="app_login"):
        st.login()
    st.stop()

# models live in worker processes: have a warm one ready (frameworks imported, shap's kernels compiled).
session.start_workers()
if "workspace" not in st.session_state:
    # the workspace named in the URL (?ws=), restored after a reload or a restart; else a new one
    st.session_state["workspace"] = controls.open_workspace()
    try:  # a new session: a good moment for the daily retention cleanup (in the background, once a day)
        sharing.schedule_cleanup(sharing.run_store())
    except Exception:  # noqa: BLE001 - storage trouble shows where runs are used, not on every page
        logging.getLogger("workbench.app").exception("the run store is not available")
workspace: session.Workspace = st.session_state["workspace"]

# A share link is the app's address + ?run=<id>: with one, the saved run is the page at that address.
opening_link = "run" in st.query_params
pages = [
    st.Page("pages/models.py", title="Models", icon=":material/deployed_code:", default=not opening_link),
    st.Page("pages/images.py", title="Images", icon=":material/image:"),
    st.Page("pages/explain.py", title="Explain & compare", icon=":material/compare:"),
    st.Page("pages/layers.py", title="Layers", icon=":material/stacks:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
    st.Page("pages/batch.py", title="Batch results", icon=":material/dataset:"),
    st.Page("pages/shared.py", title="Saved run", icon=":material/link:", url_path="saved", default=opening_link,
            visibility="visible" if opening_link else "hidden"),
    st.Page("pages/about.py", title="About", icon=":material/info:"),
]
page = st.navigation(pages)
# a page opened by its own URL before this entry point had ever run came here first (pages/controls.py)
wanted = st.session_state.pop(controls.OPEN_PAGE_KEY, None)
if wanted and wanted != page.url_path:
    target = next((p for p in pages if p.url_path == wanted), None)
    if target is not None:
        st.switch_page(target, query_params=st.query_params.to_dict())


def _activate() -> None:
    workspace.active = st.session_state["sidebar_model"]


with st.sidebar:
    # Pages rerun after they load or remove something, so this always shows the current state.
    if workspace.models:
        if st.session_state.get("sidebar_model") != workspace.active:
            st.session_state["sidebar_model"] = workspace.active
        st.selectbox(
            "Active model",
            list(workspace.models),
            key="sidebar_model",
            format_func=lambda model_id: workspace.models[model_id].name,
            on_change=_activate,
        )
    else:
        st.caption("No model loaded yet.")
    st.caption(f"Images: {len(workspace.images)} · Device: {session.device_description(workspace)}")
    for note in st.session_state.get("workspace_notes", []):
        st.caption(f"⚠ {controls.plain(note)}")
    st.button("New workspace", key="app_new_workspace", icon=":material/note_add:", on_click=controls.new_workspace,
              help="Start empty. This workspace stays saved under its address until cleanup.")
    if sharing.login_enabled():
        st.caption(f"Signed in as {controls.plain(sharing.current_owner() or 'an unnamed user')}")
        if st.button("Sign out", key="app_logout", icon=":material/logout:"):
            st.logout()
    with st.expander("Versions"):
        st.dataframe(
            [{"library": name, "version": version} for name, version in session.library_versions().items()],
            hide_index=True,
        )

page.run()
