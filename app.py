"""The workbench in the browser: ``streamlit run app.py``.

The entry point is the frame around every page: it refuses to start in an unsafe
environment, creates the session's workspace once, draws the sidebar (active model,
device, versions) and runs the page picked in the navigation. It imports no framework:
torch or tensorflow load only when a model does.
"""

from __future__ import annotations

import streamlit as st

from workbench import session, warmup
from workbench.errors import WorkbenchError
from workbench.settings import check_environment

st.set_page_config(page_title="Interpretability workbench", page_icon=":material/biotech:", layout="wide")

try:
    check_environment()
except WorkbenchError as error:
    st.error(str(error))
    st.stop()

# shap compiles its kernels on first use; start that now, off the request path, once per process.
warmup.start_background_warm_up()
st.session_state.setdefault("workspace", session.Workspace())
workspace: session.Workspace = st.session_state["workspace"]

page = st.navigation(
    [
        st.Page("pages/models.py", title="Models", icon=":material/deployed_code:", default=True),
        st.Page("pages/images.py", title="Images", icon=":material/image:"),
        st.Page("pages/explain.py", title="Explain & compare", icon=":material/compare:"),
        # Stored runs and share links get their page here, between the work and About.
        st.Page("pages/about.py", title="About", icon=":material/info:"),
    ]
)


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
    with st.expander("Versions"):
        st.dataframe(
            [{"library": name, "version": version} for name, version in session.library_versions().items()],
            hide_index=True,
        )

page.run()
