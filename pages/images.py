"""Images: upload images or add zoo samples; see each one's top-5 predictions and pick the class to explain."""

from __future__ import annotations

import logging

import streamlit as st

import model_zoo
from pages import charts, controls
from workbench import evaluations, render, session
from workbench.errors import WorkbenchError

log = logging.getLogger("workbench.app")
ws: session.Workspace = controls.workspace("images")

st.title("Images")
upload_col, zoo_col = st.columns([3, 2], gap="large")

with upload_col:
    files = st.file_uploader(
        "Drop one or more images (PNG, JPEG, WebP, BMP, GIF)",
        help="A PNG named <image name>_mask.png is that image's ground-truth mask (any non-zero pixel is in the mask).",
        accept_multiple_files=True,
        key="images_upload",
    )
    fresh = session.new_uploads(ws, "image", files)
    if fresh or not files:
        st.session_state["images_notice"] = []
    before = len(ws.images)
    # <stem>_mask.png beside an image is its ground-truth mask: images first, then their masks
    fresh = sorted(fresh, key=lambda f: f.name.lower().endswith(f"{evaluations.MASK_SUFFIX}.png"))
    for f in fresh:
        try:
            owner = evaluations.mask_target(ws, f.name)
            if owner is not None:
                evaluations.attach_mask(ws, owner, f.getvalue(), f.name)
                continue
            session.add_image(ws, f.getvalue(), f.name)
        except WorkbenchError as error:
            st.session_state["images_notice"].append(str(error))
        except Exception as error:  # noqa: BLE001 - the app keeps working; the traceback is for the operator
            log.exception("reading image %s failed", f.name)
            st.session_state["images_notice"].append(f"{f.name} could not be read ({type(error).__name__}); the details are in the server log.")
    if len(ws.images) != before:
        st.rerun()  # so the sidebar counts the new images
    for message in st.session_state.get("images_notice", []):
        st.error(controls.plain(message), icon=":material/block:")

with zoo_col:
    try:
        samples = {s.name: s for s in model_zoo.samples()}
    except OSError:
        samples = {}
    picked = st.multiselect("Zoo samples (with ground-truth masks)", list(samples), key="images_samples", placeholder="circle_0, square_1, …")
    add, add_all = st.columns(2)
    if add.button("Add samples", key="images_add_samples", disabled=not picked, icon=":material/add_photo_alternate:"):
        for name in picked:
            session.add_sample(ws, samples[name])
        st.rerun()
    if add_all.button("Add all samples", key="images_add_all", disabled=not samples):
        for sample in samples.values():
            session.add_sample(ws, sample)
        st.rerun()

if not ws.images:
    st.info("Add images to see the model's predictions and choose the class each one is explained for.")
    st.stop()

record = ws.model
if record is None:
    st.warning("No model loaded: load one on the Models page to see predictions.")
else:
    st.caption(
        f"Predictions of **{controls.plain(record.name)}**"
        + (" (softmax of its logits, for display)" if record.adapter.output_kind == "logits" else "")
        + ". The target is the class each explanation is for; by default the predicted one."
    )

columns = st.columns(2, gap="medium")
for n, entry in enumerate(list(ws.images.values())):
    with columns[n % 2].container(border=True):
        thumb, info = st.columns([1, 2])
        image = entry.image
        caption = f"{image.name} · {image.original_size[1]}x{image.original_size[0]} {image.format}"
        if entry.label:
            caption += f" · true class: {entry.label}"
        thumb.image(render.to_uint8(image.pixels), caption=controls.plain(caption), width="stretch")
        if entry.mask is not None:
            thumb.caption("has a ground-truth mask")
        mask_files = thumb.file_uploader(
            "Ground-truth mask (PNG)", type=["png"], key=f"images_mask_{entry.id[:16]}",
            help="Any non-zero pixel is in the mask; the image's size. Used by the pointing game and mask energy.",
        )
        for f in session.new_uploads(ws, f"mask/{entry.id}", [mask_files] if mask_files else []):
            try:
                evaluations.attach_mask(ws, entry.id, f.getvalue(), f.name)
            except WorkbenchError as error:
                thumb.error(str(error), icon=":material/block:")
            else:
                st.rerun()
        for note in image.notes:
            thumb.caption(f"ℹ {controls.plain(note)}")
        with info:
            if record is not None:
                rows = session.top_predictions(ws, record, entry)
                st.altair_chart(charts.top_classes(rows, True), width="stretch")
                labels = record.adapter.labels
                predicted = session.predicted_class(ws, record, entry)
                chosen = st.selectbox(
                    "Target class",
                    range(len(labels)),
                    index=session.target(ws, record, entry),
                    format_func=lambda k: f"{labels[k]}" + (" (predicted)" if k == predicted else ""),
                    key=f"images_target_{record.identity[:12]}_{entry.id[:16]}",
                )
                session.set_target(ws, record, entry, chosen)
            if st.button("Remove", key=f"images_remove_{entry.id[:16]}", icon=":material/delete:"):
                session.remove_image(ws, entry.id)
                st.rerun()
