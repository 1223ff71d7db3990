"""Explain & compare: pick methods and parameters, see the cost, run, and compare the maps side by side."""

from __future__ import annotations

import logging
import time

import streamlit as st

import explainers
from pages import controls, evaluation
from workbench import calibration, engine, session, sharing, workspaces
from workbench.errors import WorkbenchError
from workbench.result import Comparison
from workbench.workers import Cancelled

log = logging.getLogger("workbench.app")
ws: session.Workspace = controls.workspace("explain")

st.title("Explain & compare")
record = ws.model
if record is None:
    st.info("Load a model first.")
    st.page_link("pages/models.py", label="Models", icon=":material/deployed_code:")
    st.stop()
if not ws.images:
    st.info("Add one or more images first.")
    st.page_link("pages/images.py", label="Images", icon=":material/image:")
    st.stop()

MODES = {"methods": "Several methods, one model", "models": "One method, two models"}
mode = st.segmented_control("Compare", list(MODES), format_func=MODES.get, required=True, **controls.kept("explain_mode", "methods"))
others = [m for m in ws.models.values() if m.id != record.id]
if mode == "models" and not others:
    st.info("Load a second model (for example shapes-cnn-keras next to shapes-cnn-torch) to compare one method across models.")
    st.stop()

pick_col, option_col = st.columns([3, 1], gap="large")
with pick_col:
    if mode == "methods":
        methods = st.multiselect(
            "Methods", explainers.names(), **controls.kept("explain_methods", list(session.DEFAULT_METHODS)),
            format_func=lambda name: explainers.REGISTRY[name].title,
        )
        models = [record]
    else:
        left, right = st.columns(2)
        method = left.selectbox("Method", explainers.names(), format_func=lambda name: explainers.REGISTRY[name].title, **controls.kept("explain_method", explainers.names()[0]))
        options = [m.id for m in others]
        second = right.selectbox(
            "Compare with", options, key=f"explain_second_{session.digest(options)[:8]}", format_func=lambda i: ws.models[i].name
        )
        methods, models = [method], [record, ws.models[second]]
    names = {e.id: e.name for e in ws.images.values()}
    # keyed by the set of images: a new image joins the comparison; one the user took out stays out
    chosen = st.multiselect(
        "Images", list(names), default=[i for i in names if i not in ws.left_out], format_func=names.get,
        key=f"explain_images_{session.digest(list(names))[:8]}",
    )
    ws.left_out = set(names) - set(chosen)
with option_col:
    seed = int(st.number_input("Seed", min_value=0, step=1, help="For the stochastic methods (SHAP, SmoothGrad, Expected Gradients).", **controls.kept("explain_seed", 0)))
    use_images = st.toggle("Loaded images as background", help="For Expected Gradients and the IG 'background' baseline; off = each method's default.", **controls.kept("explain_background", False))

params = {}
for name in methods:
    cls = explainers.REGISTRY[name]
    with st.expander(f"{cls.title} parameters"):
        st.caption(f"{cls.summary} [paper]({cls.paper})")
        params[name] = controls.method_params(record, name)

entries = [ws.images[i] for i in chosen if i in ws.images]
background = list(ws.images.values()) if use_images else None
try:
    plans = [session.plan(ws, m, entries, methods, session.params_for(m, params), seed, background=background) for m in models]
except WorkbenchError as error:
    st.error(controls.plain(error), icon=":material/block:")
    st.stop()

todo = sum(p.results_to_compute for p in plans)
last_run = st.session_state.get("explain_last_run")  # what the latest Run did, shown once nothing is left to do
keys = [session.comparison_key(m, entries, p, seed) for m, p in zip(models, plans)]
autorun = st.session_state.pop("explain_autorun", False)  # set by Quick start and a saved run's Re-run: run on arrival
rerun_of = st.session_state.get("explain_rerun")
if rerun_of and autorun:
    rerun_of["key"] = keys[0]
if rerun_of and rerun_of.get("key") == keys[0]:  # only while the page shows what the Re-run computed
    st.info(f"Re-run of saved run `{rerun_of['run_id'][:12]}…` with its model, images, methods, parameters and seed.", icon=":material/replay:")
    for note in rerun_of["notes"]:
        st.warning(controls.plain(note), icon=":material/warning:")
# A run in flight: Run's on_click marks this script run as the one that computes, so Run is drawn disabled
# while it works. Cancel, another page or a closed tab asks Streamlit to interrupt the script: the engine sees
# that while the model computes, stops the model's worker at once and returns the methods that finished;
# their maps stay cached, are saved as a partial run, and one line says how far it got (the next visit here,
# a toast on the page opened instead). Streamlit interrupts at any st call, reading st.session_state included,
# so the run's record (``flight``) is a dict put in the session state before it starts and filled in after.
RUNNING, IN_FLIGHT = "explain_running", controls.RUN_IN_FLIGHT
running = bool(st.session_state.pop(RUNNING, False) and todo) or bool(autorun and todo)
stopped = None if running else st.session_state.pop(IN_FLIGHT, None)
if stopped and stopped.get("notice"):
    st.warning(controls.plain(stopped["notice"]), icon=":material/stop_circle:")
elif stopped:  # interrupted where nothing could be kept or said (e.g. the server stopped the script)
    kept = stopped.get("todo", 0) - todo
    st.info(
        "The last run stopped before it finished"
        + (f": {kept} of its {stopped['todo']} map(s) were computed and are kept" if kept > 0 else "")
        + ". Run computes what is missing.",
        icon=":material/stop_circle:",
    )
run_col, cost_col = st.columns([1, 5], vertical_alignment="center")
run_col.button(
    "Run", type="primary", disabled=todo == 0 or running, icon=":material/play_arrow:", key="explain_run",
    on_click=lambda: st.session_state.__setitem__(RUNNING, True),
)
if todo:
    timed = [calibration.seconds(calibration.PROCESS_TIMINGS, calibration.model_key(m.adapter), p.estimate) for m, p in zip(models, plans)]
    seconds = sum(s for s, _ in timed)
    if all(measured for _, measured in timed):
        basis = "from the times measured for these methods on this model"
    else:
        forward_ms = " / ".join(f"{session.forward_seconds(m) * 1000:.1f}" for m in models)
        basis = f"from a forward pass measured at {forward_ms} ms per image in a batch; runs refine it"
    cost_col.caption(
        f"{todo} map(s) to compute · about {sum(p.evaluations for p in plans):,} model passes · "
        f"estimated {seconds:.1f} s ({basis})"
    )
else:
    cost_col.caption((f"Last run: {last_run}. " if last_run else "") + "Every map for these settings is computed; display options change only the picture.")


def save(model: session.LoadedModel, work: session.Plan) -> None:
    """Store a computed comparison so it has a share link; a failure is shown, the maps stay."""
    comparison = session.cached_comparison(ws, model, entries, work, seed)
    if comparison is None:
        return
    try:
        sharing.save_comparison(
            ws, model, entries, comparison, session.comparison_key(model, entries, work, seed),
            store=sharing.run_store(), owner=sharing.current_owner(),
        )
    except WorkbenchError as error:
        st.session_state["explain_save_notice"] = f"The maps were not saved: {error}"
    except Exception as error:  # noqa: BLE001 - the maps are computed; only the link is missing
        log.exception("saving the run failed")
        st.session_state["explain_save_notice"] = f"The maps were not saved ({type(error).__name__}); the details are in the server log."
    else:
        st.session_state.pop("explain_save_notice", None)


def keep_stopped(model: session.LoadedModel, work: session.Plan, comparison: Comparison | None, prefix: str, keep: dict) -> str:
    """A run that stopped early: save the methods that finished as a partial run -> the one line for the user.
    ``comparison``: the engine's stopped comparison (None: find what finished in the cache). ``keep``: the
    store, owner and workspace id, read before the run: this touches neither st nor st.session_state."""
    if comparison is None:
        try:
            comparison = session.stopped_comparison(ws, model, work)
        except WorkbenchError as stop:  # no method had finished: nothing to save
            return prefix + str(stop)
    line = prefix + engine.stopped_line(comparison.stopped)
    try:
        if keep["store"] is None:
            raise WorkbenchError("the run store is not available")
        saved = sharing.save_comparison(ws, model, entries, comparison, None, store=keep["store"], owner=keep["owner"])
        if keep["workspace_id"]:
            workspaces.save(keep["store"], keep["workspace_id"], ws, keep["owner"])
    except Exception:  # noqa: BLE001 - the maps stay in the workspace; only the partial run's link is missing
        log.exception("saving the partial run failed")
        return line + " The finished maps are kept; saving them as a run failed (see the server log)."
    return line + f" The finished maps are kept and saved as partial run {saved.run_id[:12]}… (Runs page)."


def line_prefix(model: session.LoadedModel) -> str:
    """What starts a progress or stop line: the model's name where one run covers several models."""
    return f"{model.name}: " if len(models) > 1 else ""


def store_or_none() -> sharing.RunStore | None:
    try:
        return sharing.run_store()
    except Exception:  # noqa: BLE001 - storage trouble is reported where the run is saved
        log.exception("the run store is not available")
        return None


if running:
    flight = {"todo": todo}  # the next run reads how this one ended from here
    st.session_state[IN_FLIGHT] = flight
    keep = {"store": store_or_none(), "owner": sharing.current_owner(), "workspace_id": st.session_state.get(controls.WORKSPACE_ID)}
    with st.status(f"Computing {todo} map(s)…", expanded=True) as status:
        st.button("Cancel", key="explain_cancel", icon=":material/stop:",
                  help="Stop now: the maps of the methods that have finished are kept and saved as a partial run; the method running is dropped.")
        bar = st.progress(0.0, text="starting")

        def show(fraction: float, message: str) -> None:
            if not controls.interrupt_requested():  # an st call would be interrupted before the worker is stopped
                bar.progress(fraction, text=message)

        started = time.perf_counter()
        current = 0
        try:
            for current, (model, work) in enumerate(zip(models, plans)):
                prefix = line_prefix(model)
                began = time.perf_counter()
                computed = session.run(
                    ws, model, entries, work, seed,
                    progress=lambda f, message, n=current, p=prefix: show(min(1.0, (n + f) / len(models)), p + message),
                    cancel=controls.interrupt_requested,
                )
                calibration.record_run(calibration.PROCESS_TIMINGS, model.adapter, work, computed,
                                       None if computed.stopped else time.perf_counter() - began)
                if computed.stopped is not None:
                    flight["notice"] = keep_stopped(model, work, computed, prefix, keep)
                    break
                if len(models) > 1 and keep["store"] is not None:  # the next model may be cancelled: save this one now
                    try:
                        sharing.save_comparison(ws, model, entries, computed, session.comparison_key(model, entries, work, seed),
                                                store=keep["store"], owner=keep["owner"])
                    except Exception:  # noqa: BLE001 - saved again (and any failure shown) once every model is done
                        log.exception("saving %s's comparison failed", model.name)
        except Cancelled as error:  # stopped before any method of this model finished: nothing to save
            flight["notice"] = line_prefix(models[current]) + str(error)
        except WorkbenchError as error:
            st.session_state.pop(IN_FLIGHT, None)
            status.update(label=controls.plain(error), state="error")
        except Exception as error:  # noqa: BLE001 - the app keeps working; the traceback is for the operator
            st.session_state.pop(IN_FLIGHT, None)
            log.exception("explaining failed")
            status.update(label=f"The run failed ({type(error).__name__}); the details are in the server log.", state="error")
        except BaseException:  # Streamlit interrupted the script at an st call: keep what finished, then let it
            try:
                flight["notice"] = keep_stopped(models[current], plans[current], None, line_prefix(models[current]), keep)
            except Exception:  # noqa: BLE001 - the interruption goes on; the next visit says the run stopped
                log.exception("keeping the maps of an interrupted run failed")
            raise
        if "notice" in flight:  # Streamlit's pending rerun (Cancel, another page) goes on from this st call
            status.update(label=controls.plain(flight["notice"]), state="error")
            st.rerun()
        elif st.session_state.pop(IN_FLIGHT, None) is not None:  # completed (an error popped it already)
            st.session_state["explain_last_run"] = f"computed {todo} map(s) in {time.perf_counter() - started:.1f} s"
            bar.progress(1.0, text="saving the run")
            for model, work in zip(models, plans):  # every completed run is saved: its link exists at once
                save(model, work)
            st.rerun()  # redraw the controls against the new cache: Run disabled, nothing left to estimate

comparisons = [session.cached_comparison(ws, m, entries, p, seed) for m, p in zip(models, plans)]
if any(c is None for c in comparisons):
    st.info("Press Run to compute the maps for these settings.")
    st.stop()
saved = [sharing.saved_comparison(ws, key) for key in keys]
# show the saved comparison where there is one: the page, its exports and the link are then the same arrays
comparisons = [s or c for s, c in zip(saved, comparisons)]

st.divider()
display = controls.display_options()
with st.container(border=True):
    if not all(saved):
        if st.session_state.get("explain_save_notice"):
            st.error(controls.plain(st.session_state["explain_save_notice"]), icon=":material/cloud_off:")
        else:  # assembled from maps computed for other settings: saving them is the user's choice
            st.caption("These maps were computed earlier in this session, for other settings, and are not saved yet.")
        if st.button("Save & share", key="explain_save", icon=":material/share:"):
            for model, work in zip(models, plans):
                save(model, work)
            st.rerun()
    else:
        for model, comparison in zip(models, saved):
            if len(models) > 1:
                st.markdown(f"**{controls.plain(model.name)}**")
            controls.share_panel(comparison, display, scope=f"explain_{model.id}" if len(models) > 1 else "explain",
                                 evaluation=sharing.saved_evaluation(ws, comparison.run_id))

first = comparisons[0]
if mode == "methods":
    controls.comparison_view(first, display, scope="explain")
    st.divider()
    evaluation.section(ws, record, first, keys[0], scope="explain")
else:
    percent = 10.0
    pairs = [(a[0], b[0]) for a, b in zip(comparisons[0].results, comparisons[1].results)]
    agreement = [session.cross_model_agreement(a, b, percent) for a, b in pairs]
    controls.grid(
        [m.name for m in models],
        [(f"{im.name} · {im.target_label}", im.pixels) for im in first.images],
        [list(pair) for pair in pairs],
        display,
        extra=[f"Spearman ρ {g['spearman']:.2f}  \ntop-{percent:g}% IoU {g['iou']:.2f}" for g in agreement],
    )
