"""Widgets built from data, shared by Explain & compare and a saved run's page: a method's Params,
the display options, the overlay grid, the agreement and cost section, and the share and export panel."""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Sequence

import numpy as np
import streamlit as st

from pages import charts, layer_views
from workbench import render, session, sharing
from workbench.errors import WorkbenchError
from workbench.result import Attribution, Comparison, ExplainedImage
from workbench.settings import get_settings

NORMALISATIONS = {
    "map": "Per map",
    "image": "Shared per image (across methods)",
    "method": "Shared per method (across images)",
}
DISPLAY_PX = 256  # small maps are enlarged (nearest neighbour) to at least this size for display


ENTRY_POINT = "app.py"
OPEN_PAGE_KEY = "app_open_page"


def workspace(url_path: str) -> session.Workspace:
    """The session's workspace, which the entry point creates after its environment and sign-in checks.

    On a freshly started server, a page opened by its own URL (``/runs``) before any session has run
    the entry point is run alone by Streamlit (it still sees the ``pages/`` folder): then this sends the
    browser through the entry point, which opens ``url_path`` once its frame has run.
    """
    if "workspace" not in st.session_state:
        st.session_state[OPEN_PAGE_KEY] = url_path
        st.switch_page(ENTRY_POINT, query_params=st.query_params.to_dict())
    ws = st.session_state["workspace"]
    keep_workspace(ws)  # every page's first call: what the last run changed is stored before this one draws
    toast_stopped_run(url_path)
    return ws


KEPT = "kept_values"  # the values the user chose for Explain & compare's settings, outside any widget's state


def _keep(key: str) -> None:
    st.session_state[KEPT][key] = st.session_state[key]


def kept(key: str, default: Any) -> dict[str, Any]:
    """Keyword arguments that make a widget show, and return, the value the user last chose (else ``default``).

    Streamlit drops a widget's state whenever a run does not draw it (another page, another model, the page
    stopped early); the widget then came back at a default, and the next run silently used it. So the
    chosen value lives in ``st.session_state[KEPT]``, is copied into the widget before it is drawn and is
    copied back by ``on_change``: what a run uses is always what the page shows. :func:`set_kept` sets one.
    """
    values = st.session_state.setdefault(KEPT, {})
    values.setdefault(key, default)
    st.session_state[key] = values[key]
    return {"key": key, "on_change": _keep, "args": (key,)}


def set_kept(key: str, value: Any) -> None:
    """Set a setting before its page draws it (Quick start, a saved run's Re-run)."""
    st.session_state.setdefault(KEPT, {})[key] = value


def method_params(record: session.LoadedModel, method: str, scope: str = "explain") -> dict[str, Any]:
    """One widget per Param of the method, with the registry's defaults; returns {name: value}."""
    import explainers

    cls = explainers.REGISTRY[method]
    settings = get_settings()
    values = {}
    for p in cls.params:
        key = f"{scope}_{method}_{p.name}"
        help_text = p.help + (f" This deployment caps it at {getattr(settings, p.cap)}." if p.cap else "")
        if p.name == "layer":
            layers = session.spatial_layers(record)
            try:
                automatic = record.adapter.default_cam_layer()
            except WorkbenchError:
                automatic = "none"
            layer_key = f"{key}_{record.id}"
            layer_views.apply_cam_choice(layer_key, record.id, [None, *layers], set_kept)  # picked on the Layers page
            if st.session_state.get(KEPT, {}).get(layer_key, None) not in (None, *layers):
                set_kept(layer_key, None)
            values[p.name] = st.selectbox(
                "layer",
                [None, *layers],
                format_func=lambda name, auto=automatic: f"automatic ({auto})" if name is None else name,
                help=help_text,
                **kept(layer_key, None),
            )
        elif p.choices:
            values[p.name] = st.selectbox(p.name, list(p.choices), help=help_text, **kept(key, p.default))
        elif p.kind is bool:
            values[p.name] = st.toggle(p.name, help=help_text, **kept(key, bool(p.default)))
        elif p.kind in (int, float):
            cast = p.kind
            values[p.name] = st.number_input(
                p.name,
                min_value=cast(p.minimum) if p.minimum is not None else None,
                max_value=cast(p.maximum) if p.maximum is not None else None,
                step=1 if cast is int else 0.01,
                help=help_text,
                **kept(key, cast(p.default)),
            )
        else:
            text = st.text_input(p.name, help=help_text, **kept(key, p.default or ""))
            values[p.name] = text or None
    return values


@dataclasses.dataclass(frozen=True)
class Display:
    normalise: str
    positive_only: bool
    opacity: float
    cmap: str
    diverging: str
    raw: bool


def display_options() -> Display:
    """How maps are drawn; changing any of these never recomputes a map."""
    cols = st.columns([3, 2, 2, 2, 2, 2], vertical_alignment="bottom")
    normalise = cols[0].selectbox("Normalisation", list(NORMALISATIONS), format_func=NORMALISATIONS.get, key="display_normalise")
    opacity = cols[1].slider("Opacity", 0.0, 1.0, render.DEFAULT_OPACITY, 0.05, key="display_opacity")
    cmap = cols[2].selectbox("Colormap", render.SEQUENTIAL_CMAPS, key="display_cmap")
    diverging = cols[3].selectbox("Signed maps", render.DIVERGING_CMAPS, key="display_diverging", help="Diverging colormap for signed maps.")
    positive_only = cols[4].toggle("Positive only", key="display_positive", help="Show only evidence for the target.")
    raw = cols[5].toggle("Raw maps", key="display_raw", help="The map alone, without the image underneath.")
    return Display(normalise, positive_only, opacity, cmap, diverging, raw)


def _enlarge(image: np.ndarray) -> np.ndarray:
    factor = max(1, -(-DISPLAY_PX // max(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


COLORBAR_PX = 12  # the colour bar's height under each map, in display pixels


def value_range(result: Attribution, display: Display, scale: float | None) -> str:
    """The values the colour bar spans: the cell's scale (the per-map one when None), signed or not."""
    return render.colour_scale(result.map, result.signed, scale=scale, positive_only=display.positive_only).label()


def picture(pixels, result: Attribution, display: Display, scale: float | None) -> np.ndarray:
    """uint8 RGB of one map (overlaid on the image, or alone; raw: the model-resolution map), enlarged,
    with its colour bar underneath: the colormap from the lowest to the highest value shown (the caption
    gives the values).

    ``pixels`` is an array, or an ExplainedImage: then the overlay is drawn on the original image at its
    own size and aspect ratio, the map mapped back through the resize it went through.
    """
    image = _map_picture(pixels, result, display, scale)
    signed = result.signed and not display.positive_only
    bar = render.colorbar(image.shape[1], display.diverging if signed else display.cmap, signed, COLORBAR_PX)
    gap = np.full((max(2, COLORBAR_PX // 3), image.shape[1], 3), 255, np.uint8)
    return np.concatenate([image, gap, bar], axis=0)


def _map_picture(pixels, result: Attribution, display: Display, scale: float | None) -> np.ndarray:
    signed = result.signed and not display.positive_only
    cmap = display.diverging if signed else display.cmap
    if display.raw:
        values = render.normalise(result.map, result.signed, scale, display.positive_only)
        image = (render.colormap(values, cmap, signed) * 255).round().astype(np.uint8)
    else:
        pixels, shown = pixels.display(result.map) if isinstance(pixels, ExplainedImage) else (pixels, result.map)
        # the map's own scale, not the resampled one's: the colour bar's values are the ones drawn
        scale = render.colour_scale(result.map, result.signed, scale=scale, positive_only=display.positive_only).scale
        image = render.overlay(
            pixels, shown, signed=result.signed, cmap=cmap, alpha=display.opacity, scale=scale,
            positive_only=display.positive_only,
        )
    return _enlarge(image)


def scales(grid: Sequence[Sequence[Attribution]], display: Display) -> list[list[float | None]]:
    """The value that maps to full colour, per cell, under the chosen normalisation (as the exports draw it)."""
    return render.grid_scales(grid, display.normalise, display.positive_only)


def grid(
    headers: Sequence[str],
    images: Sequence[tuple[str, np.ndarray]],
    results: Sequence[Sequence[Attribution]],
    display: Display,
    *,
    extra: Sequence[str] | None = None,
    downloads: Sequence[tuple[str, bytes | Callable[[], bytes]]] | None = None,
) -> None:
    """Rows = images, columns = the original then one map per column header (+ an optional text column)."""
    widths = [1] * (1 + len(headers)) + ([1] if extra else [])
    top = st.columns(widths)
    top[0].markdown("**Image**")
    for col, header in zip(top[1:], headers):
        col.markdown(f"**{plain(header)}**")
    if extra:
        top[-1].markdown("**Agreement**")
    for i, ((caption, pixels), row, row_scales) in enumerate(zip(images, results, scales(results, display))):
        cols = st.columns(widths, vertical_alignment="top")
        shown = (pixels.original if pixels.original is not None else pixels.pixels) if isinstance(pixels, ExplainedImage) else pixels
        cols[0].image(_enlarge(render.to_uint8(shown)), caption=plain(caption), width="stretch")
        if downloads:
            name, data = downloads[i]
            cols[0].download_button(
                "maps .npz", data, file_name=name, mime="application/octet-stream", key=f"grid_download_{i}",
                icon=":material/download:", on_click="ignore",
            )
        for col, result, scale in zip(cols[1:], row, row_scales):
            # an explainer times its whole batch: with several images the time is their mean, and says so
            each = f"{result.seconds:.2f} s" if len(images) == 1 else f"{result.seconds:.2f} s/image (mean of {len(images)})"
            explains = f"explains {result.score} · " if result.score else ""
            note = f"colour {value_range(result, display, scale)} · {explains}{each} · {result.evaluations} passes"
            if result.completeness_ratio is not None:
                note += f" · gap {result.completeness_ratio:.1%}"
            col.image(picture(pixels, result, display, scale), caption=note, width="stretch")
            for warning in result.notes:
                col.caption(f"⚠ {plain(warning)}")
        if extra:
            cols[-1].markdown(extra[i])


def plain(text: object) -> str:
    """Text for any element that renders Markdown (markdown, caption, subheader, error, image captions,
    spinner and status labels), shown as it is: file names, class names and e-mail addresses are not markup.

    Every character Markdown, GitHub's extensions or Streamlit's directives give a meaning is escaped:
    links and images (``[`` ``!``), HTML (``<``), autolinks (``:`` ``@``), emphasis, code, tables, maths,
    colours and icons (``:red[``, ``:material/...:``); a leading list or heading marker too. Line breaks
    become spaces, so a name cannot start a block of its own.
    """
    text = " ".join(str(text).split())
    text = re.sub(r"([\\`*_{}\[\]()#+!|~<>$@:=^&])", r"\\\1", text)
    return re.sub(r"^(\d+)([.)])|^([-.])", lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", text)


def method_title(name: str) -> str:
    """The method's display title; a saved run may name a method this deployment does not have."""
    import explainers

    return explainers.REGISTRY[name].title if name in explainers.REGISTRY else name


def comparison_view(comparison: Comparison, display: Display, *, scope: str) -> None:
    """Several methods on one model: the grid, then agreement, time and completeness for one image.

    Explain & compare and a saved run's page draw a comparison with this, so a share link shows
    exactly what its author saw. Reads the comparison only: it computes no map.
    """
    titles = [method_title(m) for m in comparison.methods]
    grid(
        titles,
        [(f"{im.name} · {im.target_label}", im) for im in comparison.images],
        comparison.results,
        display,
        # built when clicked, not on every rerun
        downloads=[
            (f"{im.name.rsplit('.', 1)[0]}_maps.npz", functools.partial(session.npz_bytes, comparison, i))
            for i, im in enumerate(comparison.images)
        ],
    )

    st.subheader("Agreement and cost")
    index = 0
    if len(comparison.images) > 1:
        index = st.selectbox(
            "Image", range(len(comparison.images)), format_func=lambda i: comparison.images[i].name, key=f"{scope}_detail_image"
        )
    results = comparison.results[index]
    metric_col, k_col = st.columns([1, 2])
    metric = metric_col.segmented_control(
        "Agreement", ["Spearman ρ", "top-k % IoU"], default="Spearman ρ", required=True, key=f"{scope}_metric"
    )
    percent = k_col.slider("k: top % of pixels for IoU", 1, 50, 10, key=f"{scope}_k")
    chart_col, time_col = st.columns(2, gap="large")
    with chart_col:
        if len(results) > 1:
            rows = session.agreement_rows(results, titles, percent)
            label = "Spearman ρ" if metric == "Spearman ρ" else f"top-{percent:g}% IoU"
            st.altair_chart(charts.agreement_heatmap(rows, label), key=f"{scope}_agreement_chart")
        else:
            st.caption("Pick two or more methods to see how they agree.")
    with time_col:
        st.altair_chart(charts.method_times(session.timing_rows(results, titles)), width="stretch")
    complete = [r for r in session.completeness_rows(results, titles) if r["reference"] is not None]
    if complete:
        st.markdown("**Completeness** — the sum of the map should equal f(x) − reference (IG: f(baseline), SHAP: f(masked image))")
        number = st.column_config.NumberColumn
        st.dataframe(
            complete,
            hide_index=True,
            width="stretch",
            column_config={
                "f(x)": number(format="%.4g"),
                "reference": number(format="%.4g"),
                "sum of attributions": number(format="%.4g"),
                "gap": number(format="%.2e"),
                "gap / |f(x) - reference|": number(format="percent"),
            },
        )


def share_panel(comparison: Comparison, display: Display, *, scope: str, evaluation: Any = None) -> None:
    """A saved comparison's share link (st.code has a copy button) and its four exports, built on click
    (the JSON and HTML with the comparison's evaluation, where it has one)."""
    retention = get_settings().retention_days
    kept = f"kept {retention} days" if retention > 0 else "kept until deleted"
    st.markdown(
        "**Copy share link**",
        help=f"Anyone who can open this deployment can open the link and see these maps, read-only; {kept}.",
    )
    st.code(sharing.link(comparison.run_id), language=None)
    items = sharing.exports(
        comparison,
        share_url=sharing.link(comparison.run_id),
        alpha=display.opacity,
        normalise=display.normalise,
        positive_only=display.positive_only,
        cmap=display.cmap,
        diverging=display.diverging,
        evaluation=evaluation,
    )
    columns = st.columns(len(items) + 1)
    for col, item in zip(columns, items):
        col.download_button(
            item.label, item.build, file_name=item.file_name, mime=item.mime, key=f"{scope}_export_{item.kind}",
            icon=":material/download:", on_click="ignore", width="stretch",
        )
    with columns[-1]:
        layer_views.tensorboard_download(comparison, scope=scope)


def explain_on_arrival() -> None:
    """Quick start's last step: Explain & compare with the default methods, computed as the page opens."""
    state = st.session_state
    state.pop("explain_rerun", None)
    set_kept("explain_mode", "methods")
    set_kept("explain_methods", list(session.DEFAULT_METHODS))
    state["explain_autorun"] = True
    st.switch_page("pages/explain.py")


def preset_explain(rerun: sharing.Rerun) -> None:
    """Set Explain & compare's widgets to a saved run's methods, parameters, seed and background, before
    that page draws them (the keys are the ones :func:`method_params` and the page use)."""
    import explainers

    set_kept("explain_mode", "methods")
    set_kept("explain_methods", list(rerun.methods))
    set_kept("explain_seed", int(rerun.seed))
    set_kept("explain_background", bool(rerun.background))
    layers = set(session.spatial_layers(rerun.record))
    for method in rerun.methods:
        values = rerun.params.get(method, {})
        for p in explainers.REGISTRY[method].params:
            if p.name not in values:
                continue
            value, key = values[p.name], f"explain_{method}_{p.name}"
            if p.name == "layer":
                set_kept(f"{key}_{rerun.record.id}", value if value in layers else None)
            elif p.choices or p.kind is bool:
                set_kept(key, value)
            elif p.kind in (int, float):
                set_kept(key, p.kind(value))
            else:
                set_kept(key, value or "")


# ---------------------------------------------------------------------------- the workspace across reloads
WORKSPACE_ID = "workspace_id"
WORKSPACE_SAVED = "workspace_saved"  # the fingerprint of the workspace as last stored


def open_workspace() -> session.Workspace:
    """The workspace named by the page's ``?ws=`` (restored from the store), else a new one with a new id.

    A reload or a server restart then finds the same models, images and maps: the id stays in the URL
    (:func:`keep_workspace` puts it back after page switches) and the state is saved whenever it changes.
    """
    import logging

    from workbench import workspaces

    state = st.session_state
    wanted = st.query_params.get("ws")
    ws, notes, workspace_id = None, [], None
    if wanted:
        try:
            found = workspaces.load(sharing.run_store(), wanted, sharing.current_owner())
        except Exception:  # noqa: BLE001 - a workspace that cannot come back is replaced by a new one
            logging.getLogger("workbench.app").exception("restoring workspace %r failed", wanted)
            found = None
            notes = ["The saved workspace could not be restored; this is a new one."]
        if found is not None:
            (ws, notes), workspace_id = found, wanted
    if ws is None:
        ws, workspace_id = session.Workspace(), workspaces.new_id()
    state[WORKSPACE_ID] = workspace_id
    state[WORKSPACE_SAVED] = workspaces.fingerprint(ws)
    state["workspace_notes"] = notes
    st.query_params["ws"] = workspace_id
    return ws


def keep_workspace(ws: session.Workspace) -> None:
    """Each run: the id back in the URL, and the workspace stored when it changed since it was last stored."""
    import logging

    from workbench import workspaces

    state = st.session_state
    workspace_id = state.get(WORKSPACE_ID)
    if not workspace_id:
        return
    if st.query_params.get("ws") != workspace_id:
        st.query_params["ws"] = workspace_id
    now = workspaces.fingerprint(ws)
    if now == state.get(WORKSPACE_SAVED):
        return
    try:
        workspaces.save(sharing.run_store(), workspace_id, ws, sharing.current_owner())
    except Exception:  # noqa: BLE001 - the session keeps working; only a reload would lose it
        logging.getLogger("workbench.app").exception("saving workspace %s failed", workspace_id)
        return
    state[WORKSPACE_SAVED] = now


def new_workspace() -> None:
    """An empty workspace under a new id; the old one stays stored until cleanup (its URL still opens it)."""
    from workbench import workspaces

    state = st.session_state
    ws = session.Workspace()
    state["workspace"] = ws
    state[WORKSPACE_ID] = workspaces.new_id()
    state[WORKSPACE_SAVED] = workspaces.fingerprint(ws)
    state["workspace_notes"] = []
    st.query_params["ws"] = state[WORKSPACE_ID]


# ---------------------------------------------------------------------------- a run the user stops
def interrupt_requested() -> bool:
    """Whether Streamlit was asked to rerun or stop this script (Cancel pressed, another page opened, the
    tab closed), without acting on it yet.

    Streamlit interrupts a script only at its next ``st`` call; a model call that takes minutes makes none,
    so the engine polls this while it waits on the model's worker, stops the worker, and returns the maps
    that finished. It reads the script runner's pending request (Streamlit has no public way to peek at it);
    where that is not available it says False and runs end at the next ``st`` call as before.
    """
    try:
        from streamlit.runtime.scriptrunner_utils.script_requests import ScriptRequestType
        from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx
    except ImportError:
        return False
    requests = getattr(get_script_run_ctx(suppress_warning=True), "script_requests", None)
    state = getattr(requests, "_state", ScriptRequestType.CONTINUE)
    return state in (ScriptRequestType.RERUN, ScriptRequestType.STOP)


RUN_IN_FLIGHT = "explain_in_flight"  # Explain & compare's record of its run: {"todo": n, "notice": the line once it stopped}


def toast_stopped_run(page_path: str) -> None:
    """A run stopped because the user opened another page: say so once on that page (Explain & compare
    shows the same line when it is next opened)."""
    flight = st.session_state.get(RUN_IN_FLIGHT)
    if flight and flight.get("notice") and page_path != "explain" and not flight.get("toasted"):
        flight["toasted"] = True
        st.toast(plain(flight["notice"]), icon=":material/stop_circle:")
