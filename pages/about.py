"""About: versions, device, and this deployment's settings and limits (read-only: operators set them)."""

from __future__ import annotations

import streamlit as st

from pages import controls
from workbench import session, sharing
from workbench.settings import get_settings

ws: session.Workspace = controls.workspace("about")
settings = get_settings()

st.title("About")
st.markdown(
    "An interpretability workbench for image classifiers: load a PyTorch or Keras model, add images, "
    "and compare Grad-CAM, Integrated Gradients, SHAP and other attribution methods side by side, "
    "with one target and one colour scale, and see how much the methods agree."
)

device_col, trust_col, login_col = st.columns(3)
device_col.metric("Device", session.device_description(ws))
trust_col.metric("Trusted formats", "allowed" if settings.trusted_formats else "refused")
view = sharing.visibility()
login_col.metric("Sign-in", "on" if view.login else "off")
st.caption(view.mode + " Operators (with sign-in on) are listed in WORKBENCH_OPERATORS.")
st.caption(
    "Trusted formats are files that can run code when loaded (pickled nn.Module, TorchScript). "
    "Only the operator can allow them, with WORKBENCH_TRUSTED_FORMATS=1."
)

limits, versions = st.columns(2, gap="large")
with limits:
    st.subheader("Limits and settings")
    st.dataframe(session.settings_rows(settings), hide_index=True, width="stretch", height="content")
    st.subheader("Model workers")
    st.caption(
        "Each loaded model runs in a process of its own, stopped and replaced when it goes over a limit "
        "(worker_memory_mb, load_timeout_s, explain_timeout_s, max_input_side)."
    )
    st.dataframe(session.worker_rows(), hide_index=True, width="stretch")
with versions:
    st.subheader("Versions")
    st.dataframe([{"library": k, "version": v} for k, v in session.library_versions().items()], hide_index=True, width="stretch")
    st.subheader("This session")
    st.dataframe(
        [
            {"": "models loaded", "value": len(ws.models)},
            {"": "images", "value": len(ws.images)},
            {"": "maps cached", "value": len(ws.results)},
            {"": "cache size (MiB)", "value": round(ws.results.nbytes / 2**20, 1)},
            {"": "explainer runs", "value": ws.explainer_runs},
        ],
        hide_index=True,
        width="stretch",
    )
