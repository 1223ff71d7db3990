"""Models: upload a model file or pick a zoo model; see its summary, layers and a test prediction."""

from __future__ import annotations

import logging

import streamlit as st

import model_zoo
from pages import controls
from workbench import session
from workbench.errors import WorkbenchError
from workbench.preprocess import PRESETS
from workbench.settings import get_settings
from workbench.size_checks import check_input_size

log = logging.getLogger("workbench.app")
ws: session.Workspace = controls.workspace("models")


def attempt(action, what: str, notice_key: str, then=st.rerun) -> None:
    """Run a load; a refusal becomes the message shown under the widget, anything else goes to the log.

    After a success, ``then()``: by default a rerun, so the sidebar shows the new model.
    """
    try:
        action()
    except WorkbenchError as error:
        st.session_state[notice_key] = str(error)
        return
    except Exception as error:  # noqa: BLE001 - the app keeps working; the traceback is for the operator
        log.exception("loading %s failed", what)
        st.session_state[notice_key] = f"{what} could not be loaded ({type(error).__name__}); the details are in the server log."
        return
    st.session_state.pop(notice_key, None)
    then()


def parse_size(text: str) -> tuple[int, int, int] | None:
    parts = [p for p in text.lower().replace(",", "x").replace(" ", "x").split("x") if p]
    if not parts:
        return None
    if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise WorkbenchError(f"Input size {text!r} is not H x W or H x W x C, e.g. 224 x 224 x 3.")
    size = tuple(int(p) for p in parts) + ((3,) if len(parts) == 2 else ())
    check_input_size(size, "Input size", get_settings())
    return size  # type: ignore[return-value]


st.title("Models")
upload_col, zoo_col = st.columns([3, 2], gap="large")

with upload_col:
    st.subheader("Upload a model")
    uploaded = st.file_uploader(
        "Drop a model file: .keras, .h5, .onnx, PyTorch weights (.pt, .pth, .safetensors), or a zipped Hugging Face "
        "save_pretrained folder (config.json + model.safetensors)",
        key="models_upload",
        max_upload_size=max(1, get_settings().max_model_bytes // 2**20),
        help="The format is read from the bytes. Files that can run code on load are refused unless the operator trusts them.",
    )
    with st.expander("Weights only, or an input size the file does not fix?"):
        architecture = st.selectbox(
            "Architecture for state_dict / safetensors weights",
            ["", *model_zoo.ARCHITECTURES],
            format_func=lambda name: name or "(not needed)",
            key="models_architecture",
        )
        if architecture:
            st.caption(model_zoo.ARCHITECTURES[architecture].description)
        size_text = st.text_input(
            "Input size H x W x C (blank: from the model)",
            key="models_input_size",
            placeholder="224 x 224 x 3",
            help=f"At most {get_settings().max_input_side} pixels a side (operator setting WORKBENCH_MAX_INPUT_SIDE).",
        )
    if uploaded is not None and session.new_uploads(ws, f"model|{architecture}|{size_text}", [uploaded]):
        with st.spinner(f"Loading {controls.plain(uploaded.name)}…"):
            attempt(
                lambda: session.load_upload(ws, uploaded.getvalue(), uploaded.name, architecture=architecture, input_size=parse_size(size_text)),
                uploaded.name,
                "models_notice",
            )
    if st.session_state.get("models_notice"):
        st.error(controls.plain(st.session_state["models_notice"]), icon=":material/block:")

with zoo_col:
    st.subheader("Or pick a zoo model")
    entries = {entry.name: entry for entry in model_zoo.entries()}
    zoo_name = st.selectbox("Zoo model", list(entries), key="models_zoo")
    entry = entries[zoo_name]
    st.caption(f"{entry.framework} · {' x '.join(map(str, entry.input_size))} input · {len(entry.labels)} classes. {entry.description}")
    if st.button("Load zoo model", key="models_zoo_load", type="primary", icon=":material/download:"):
        with st.spinner(f"Loading {zoo_name}…"):
            attempt(lambda: session.load_zoo(ws, zoo_name), zoo_name, "models_zoo_notice")
    if st.session_state.get("models_zoo_notice"):
        st.error(controls.plain(st.session_state["models_zoo_notice"]), icon=":material/block:")
    if not ws.models and st.button(
        "Quick start: shapes-cnn-torch, a sample image, and Grad-CAM, IG and SHAP side by side",
        key="models_quick_start", icon=":material/bolt:",
    ):
        with st.spinner("Loading shapes-cnn-torch…"):
            attempt(lambda: session.quick_start(ws), "shapes-cnn-torch", "models_zoo_notice", then=controls.explain_on_arrival)

record = ws.model
if record is None:
    st.info("Load a model to see its summary, layers and a test prediction. Several models can be loaded and switched in the sidebar.")
    st.stop()

st.divider()
head, remove = st.columns([5, 1], vertical_alignment="bottom")
head.subheader(f"Active model: {controls.plain(record.name)}")
if remove.button("Unload", key=f"models_remove_{record.id}", icon=":material/delete:"):
    session.remove_model(ws, record.id)
    st.rerun()

summary_col, settings_col = st.columns([2, 3], gap="large")
with summary_col:
    st.dataframe([{"model": k, "": v} for k, v in session.summary_rows(record)], hide_index=True, width="stretch")
with settings_col:
    own = record.adapter.own_preset  # a Hugging Face model's preprocessor config
    presets = {**({own.name: own} if own is not None else {}), **PRESETS}
    preset = st.selectbox(
        "Preprocessing preset",
        list(presets),
        index=list(presets).index(record.adapter.preset.name),
        format_func=lambda name: f"{name} — {presets[name].description}",
        key=f"models_preset_{record.id}",
        help="How pixels in [0, 1] become the model's input.",
    )
    session.set_preset(record, preset)
    scores = ["logits", "probabilities"]
    score = st.segmented_control(
        "Explain", scores, default=record.adapter.output_kind, required=True, key=f"models_score_{record.id}",
        help="logits: the pre-softmax score (a final softmax is peeled off where the model has one); "
        "probabilities: the softmax output. Every result records which one it explains.",
    )
    attempt(lambda: session.set_score(record, score), "score", "models_score_notice", then=lambda: None)
    resize = st.segmented_control(
        "Other aspect ratios", ["stretch", "center-crop", "letterbox"], default=record.adapter.resize_mode, required=True,
        key=f"models_resize_{record.id}",
        help="How an image that is not the model's shape fits its input: stretched, the centre cropped, or padded. "
        "Overlays are drawn on the original image either way.",
    )
    attempt(lambda: session.set_resize(record, resize), "resize", "models_score_notice", then=lambda: None)
    if st.session_state.get("models_score_notice"):
        st.error(st.session_state["models_score_notice"], icon=":material/block:")
    labels_file = st.file_uploader("Labels file (one per line, or JSON)", key=f"models_labels_{record.id}", type=["txt", "json", "csv"])
    if labels_file is not None and session.new_uploads(ws, f"labels|{record.id}", [labels_file]):
        attempt(lambda: session.set_labels(record, labels_file.getvalue(), labels_file.name), labels_file.name, "models_labels_notice")
    if st.session_state.get("models_labels_notice"):
        st.error(controls.plain(st.session_state["models_labels_notice"]), icon=":material/block:")
    sample, rows = session.test_prediction(ws, record)
    st.markdown(f"**Test prediction** on {controls.plain(sample.name)} · a forward pass takes {session.forward_seconds(record) * 1000:.1f} ms per image (batched)")
    st.dataframe(
        rows[:3],
        column_config={"probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f")},
        column_order=["rank", "class", "probability", "score"],
        hide_index=True,
        width="stretch",
    )

st.markdown("**Layers** (output shapes channels-last; ✓ is the layer CAM methods use unless you pick another)")
st.dataframe(session.layer_rows(record), hide_index=True, width="stretch", height=300)
