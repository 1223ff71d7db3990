"""Saved runs in the app: the process's run store, saving what Explain & compare computed,
reopening a share link, the four exports, re-running a saved run, and the daily cleanup.

Every comparison computed with Run is saved (:func:`save_comparison`), so its share link
exists as soon as the maps do. A link opens in any session: :func:`open_run` reads the
arrays back from the :class:`~workbench.store.RunStore` (once per session) and calls no
explainer. :func:`reload` puts the run's model and images back into a workspace, so the
same methods, parameters and seed can be run again.

Pages call these and lay out the answers; nothing here draws a widget. Streamlit is
imported only where its process-wide cache, options, secrets or user are needed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from . import session
from .engine import ExplainRequest, ImageRef
from .errors import RunNotFound, WorkbenchError
from .result import Comparison
from .settings import Settings, get_settings
from .store import RunRecord, RunStore, is_valid_run_id, share_link

log = logging.getLogger("workbench.app")

MAX_STORES = 4  # run stores kept per process (one per database and data directory)
CLEANUP_INTERVAL_S = 86400.0  # the retention cleanup runs at most this often per process
MALFORMED = (
    "This link's run id is not valid: a share link ends with ?run= followed by a code of letters, "
    "digits, - and _. Copy the whole link and try again."
)


# ---------------------------------------------------------------------------- the store
@functools.cache
def _store_cache():
    import streamlit as st

    @st.cache_resource(max_entries=MAX_STORES, show_spinner=False)
    def cached_store(database_url: str, data_dir: str) -> RunStore:
        return RunStore(database_url or None, data_dir)

    return cached_store


def run_store(settings: Settings | None = None) -> RunStore:
    """The process's one RunStore for the configured database and data directory (``st.cache_resource``)."""
    settings = settings or get_settings()
    return _store_cache()(settings.database_url, str(settings.data_path.resolve()))


def link(run_id: str) -> str:
    """The run's share link: the deployment's address + ``server.baseUrlPath`` + ``/?run=<id>``.

    The address is WORKBENCH_PUBLIC_BASE_URL when the operator set it, else the one the browser used
    (:func:`browser_base_url`), so a link works on any host, port or proxy the app was opened through.
    """
    import streamlit as st

    base = get_settings().public_base_url or browser_base_url()
    return share_link(run_id, base_url=base, base_path=st.get_option("server.baseUrlPath"))


def browser_base_url() -> str | None:
    """``scheme://host[:port]`` of the address this session's browser opened, or None outside a browser.

    ``st.context.url`` (Streamlit >= 1.45) is the page's URL as the browser shows it; without it, the
    request's ``Host`` header with ``X-Forwarded-Proto`` (a TLS-terminating proxy) or http.
    """
    import streamlit as st
    from urllib.parse import urlsplit

    try:
        url = st.context.url
    except Exception:  # noqa: BLE001 - no browser context (bare script, CLI)
        url = None
    if url:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
    try:
        headers = st.context.headers
        host = headers.get("Host")
        scheme = (headers.get("X-Forwarded-Proto") or "http").split(",")[0].strip().lower()
    except Exception:  # noqa: BLE001
        return None
    if host and scheme in ("http", "https") and "/" not in host and " " not in host:
        return f"{scheme}://{host}"
    return None


# ---------------------------------------------------------------------------- login
def login_enabled() -> bool:
    """True when ``.streamlit/secrets.toml`` has an ``[auth]`` section: then every page needs sign-in."""
    import streamlit as st

    try:
        return bool(st.secrets.load_if_toml_exists() and "auth" in st.secrets)
    except Exception:  # noqa: BLE001 - an unreadable secrets file means no login configured
        log.exception("reading .streamlit/secrets.toml failed")
        return False


def signed_in() -> bool:
    import streamlit as st

    return bool(st.user.get("is_logged_in"))


def current_owner() -> str | None:
    """Who owns what this session saves: the signed-in user's e-mail when login is on, else nobody."""
    if not login_enabled() or not signed_in():
        return None
    import streamlit as st

    return st.user.get("email") or st.user.get("sub") or None


def is_operator(owner: str | None, settings: Settings | None = None) -> bool:
    """With sign-in on: whether this user is one of the operators (setting WORKBENCH_OPERATORS)."""
    return owner is not None and owner.strip().lower() in (settings or get_settings()).operator_emails


@dataclasses.dataclass(frozen=True)
class Visibility:
    """Which saved runs a session lists. Without sign-in (single-user or trusted network) everyone sees every
    run; with sign-in a user lists their own runs and opens anyone else's only through its share link,
    and an operator lists all."""

    login: bool
    owner: str | None
    operator: bool

    @property
    def lists_all(self) -> bool:
        return not self.login or self.operator

    def owner_filter(self, only_mine: bool = False) -> str | None:
        """The ``owner`` argument for RunStore.list_runs."""
        if self.lists_all and not only_mine:
            return None
        return self.owner or "\x00nobody"  # signed in without an e-mail: nothing is listed as theirs

    @property
    def mode(self) -> str:
        if not self.login:
            return (
                "Sign-in is off (single user or trusted network): every saved run is listed for everyone who "
                "opens this deployment."
            )
        return (
            "Sign-in is on: each user's Runs page lists their own runs; anyone else sees a run only through its "
            "share link, which its owner can revoke" + ("; you are an operator and see every run." if self.operator else ".")
        )


def visibility() -> Visibility:
    """This session's view of the saved runs."""
    login = login_enabled()
    owner = current_owner()
    return Visibility(login=login, owner=owner, operator=login and is_operator(owner))


# ---------------------------------------------------------------------------- saving and opening
@dataclasses.dataclass(frozen=True)
class OpenedRun:
    """A saved comparison held by a session, and how long reading it from the store took (None: saved here)."""

    comparison: Comparison
    load_seconds: float | None = None
    evaluation: Any = None  # the run's saved metrics.Evaluation, if it was evaluated
    masks: tuple = ()  # the ground-truth masks the evaluation used, per image (None: no mask)

    @property
    def compute_seconds(self) -> float:
        """What computing every map of the run took, as the explainers measured it."""
        return float(sum(r.seconds for row in self.comparison.results for r in row))


def saved_comparison(ws: session.Workspace, key: str, store: RunStore | None = None) -> Comparison | None:
    """The saved version of the comparison with this :func:`session.comparison_key`, if this session saved it
    (read back from the store when the session's cache let it go; None when it was deleted since)."""
    run_id = ws.saved.get(key)
    if run_id is None:
        return None
    found = ws.opened.get(run_id)
    if found is None:
        try:
            found = open_run(ws, run_id, store or run_store())
        except RunNotFound:
            forget_run(ws, run_id)
            return None
        except Exception:  # noqa: BLE001 - the page still shows the maps, without their link
            log.exception("reading back run %s failed", run_id)
            return None
    return found.comparison


def save_comparison(
    ws: session.Workspace,
    record: session.LoadedModel,
    entries: Sequence[session.ImageEntry],
    comparison: Comparison,
    key: str | None,
    *,
    store: RunStore,
    owner: str | None,
) -> Comparison:
    """Store a comparison with what re-running it needs (the uploaded model file, the images as PNG)
    -> the saved comparison, with its run id. The same comparison (same ``key``) is saved once per session;
    ``key`` None (a run that stopped early, saved as partial) saves it without it standing for its settings.

    Raises WorkbenchError subclasses (e.g. ImageRejected) with a message for the user.
    """
    if key is not None and (found := saved_comparison(ws, key)) is not None:
        return found
    from .images import image_to_png_bytes

    images = [image_to_png_bytes(entry.image.pixels) for entry in entries]
    run_id = store.save(comparison, model_bytes=record.data, image_bytes=images, owner=owner, model_name=record.name)
    saved = dataclasses.replace(comparison, run_id=run_id, owner=owner)
    if key is not None:
        ws.saved[key] = run_id
    ws.opened.put(run_id, OpenedRun(saved))
    log.info("saved run %s (%s, %d image(s), %s)", run_id, record.name, len(entries), ", ".join(comparison.methods))
    return saved


def open_run(ws: session.Workspace, run_id: object, store: RunStore) -> OpenedRun:
    """The saved run behind a link, read from the store once per session. Calls no explainer.

    Raises:
        RunNotFound: the id is malformed (anything but a run id: paths, quotes, too long) or names no run.
        RunDamaged: the run's stored arrays are missing or corrupt.
    """
    if isinstance(run_id, (list, tuple)):  # ?run=a&run=b
        run_id = run_id[-1] if run_id else None
    if not is_valid_run_id(run_id):
        raise RunNotFound(MALFORMED)
    found = ws.opened.get(run_id)
    if found is not None and not store.exists(run_id):  # revoked or deleted since this session read it
        forget_run(ws, run_id)
        raise RunNotFound(store_not_found())
    if found is None:
        started = time.perf_counter()
        comparison = store.load(run_id)
        evaluation, masks = _stored_evaluation(store, run_id)
        found = OpenedRun(comparison, time.perf_counter() - started, evaluation, masks)
        ws.opened.put(run_id, found)
    return found


def _stored_evaluation(store: RunStore, run_id: str) -> tuple[Any, tuple]:
    from .metrics import Evaluation

    data, masks = store.load_evaluation(run_id)
    if data is None:
        return None, ()
    try:
        return Evaluation.from_dict(data), tuple(masks)
    except (KeyError, TypeError, ValueError):  # saved by another version: the maps still open
        log.exception("run %s: its evaluation does not read back", run_id)
        return None, ()


def saved_evaluation(ws: session.Workspace, run_id: str | None) -> Any:
    """The evaluation stored with a run this session holds (None: not evaluated, or not held)."""
    found = ws.opened.get(run_id) if run_id else None
    return found.evaluation if found is not None else None


def save_evaluation(ws: session.Workspace, run_id: str, evaluation: Any, masks: Sequence[Any], store: RunStore) -> None:
    """Store a saved run's evaluation (and its masks) beside it, so its share link shows the metrics too."""
    masks = tuple(masks)
    store.save_evaluation(run_id, evaluation.to_dict(), masks)
    found = ws.opened.get(run_id)
    if found is not None:
        ws.opened.put(run_id, dataclasses.replace(found, evaluation=evaluation, masks=masks))
    log.info("saved the evaluation of run %s (%s)", run_id, ", ".join(evaluation.metrics))


def forget_run(ws: session.Workspace, run_id: str) -> None:
    """After a delete: this session no longer shows or links the run."""
    ws.opened.discard(run_id)
    for key in [k for k, v in ws.saved.items() if v == run_id]:
        del ws.saved[key]


def delete_run(ws: session.Workspace, run_id: str, store: RunStore, requester: str | None) -> None:
    """Delete a saved run (NotRunOwner unless it has no owner or ``requester`` owns it)."""
    store.delete(run_id, requester=requester)
    forget_run(ws, run_id)
    log.info("deleted run %s", run_id)


def revoke_link(ws: session.Workspace, run_id: str, store: RunStore, requester: str | None) -> str:
    """Revoke a run's share link (same permission as delete): the old link shows "not available", the run
    stays, under a new link -> the new run id. This session follows the run to its new id."""
    new_id = store.revoke_link(run_id, requester=requester)
    opened = ws.opened.get(run_id)
    ws.opened.discard(run_id)
    if opened is not None:
        ws.opened.put(new_id, dataclasses.replace(opened, comparison=dataclasses.replace(opened.comparison, run_id=new_id)))
    for key in [k for k, v in ws.saved.items() if v == run_id]:
        ws.saved[key] = new_id
    log.info("revoked the link of run %s (now %s)", run_id, new_id)
    return new_id


def store_not_found() -> str:
    from .store import _NOT_FOUND

    return _NOT_FOUND


def may_delete(record: RunRecord, requester: str | None) -> bool:
    """What RunStore.delete allows: runs without an owner, and one's own."""
    return record.owner is None or (requester is not None and record.owner == requester)


# ---------------------------------------------------------------------------- exports
@dataclasses.dataclass(frozen=True)
class Export:
    """One download: built only when the user asks for it (``build`` is called on click)."""

    kind: str
    label: str
    file_name: str
    mime: str
    build: Callable[[], bytes | str]


def exports(
    comparison: Comparison,
    *,
    share_url: str | None,
    alpha: float | None = None,
    normalise: str = "map",
    positive_only: bool = False,
    cmap: str | None = None,
    diverging: str | None = None,
    evaluation: Any = None,
) -> list[Export]:
    """The grid as PNG, the arrays as NPZ, the provenance as JSON and the self-contained HTML report,
    drawn with the page's display options (colormaps, opacity, normalisation: the same colour bars);
    the JSON and the report include ``evaluation`` when given."""
    from . import export

    stem = f"run-{comparison.run_id[:12]}" if comparison.run_id else "comparison"
    from .render import DEFAULT_OPACITY

    look = {"alpha": DEFAULT_OPACITY if alpha is None else alpha, "normalise": normalise, "positive_only": positive_only,
            "cmap": cmap, "diverging": diverging}
    return [
        Export("grid", "Grid .png", f"{stem}-grid.png", "image/png", functools.partial(export.grid_png, comparison, **look)),
        Export("npz", "Attributions .npz", f"{stem}-attributions.npz", "application/octet-stream",
               functools.partial(export.attributions_npz, comparison)),
        Export("provenance", "Provenance .json", f"{stem}-provenance.json", "application/json",
               functools.partial(export.provenance_json, comparison, evaluation)),
        Export("html", "Report .html", f"{stem}-report.html", "text/html",
               functools.partial(export.html_report, comparison, share_url=share_url, evaluation=evaluation, **look)),
    ]


# ---------------------------------------------------------------------------- re-running
@dataclasses.dataclass(frozen=True)
class Rerun:
    """A saved run loaded back into a workspace: what Explain & compare needs to compute it again."""

    run_id: str
    record: session.LoadedModel
    entries: tuple[session.ImageEntry, ...]
    methods: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]]
    seed: int
    background: bool  # the run used the loaded images as background
    notes: tuple[str, ...] = ()
    saved: ExplainRequest | None = None  # the request the run recorded (None: saved before requests were recorded)
    request: ExplainRequest | None = None  # the same request on the model and images loaded back here


def _how_loaded(comparison: Comparison) -> dict[str, Any]:
    """How the run's model was loaded: from its typed request, else from the older ``loaded_as`` record."""
    if comparison.request is not None:
        m = comparison.request.model
        return {"source": m.source, "filename": m.filename, "architecture": m.architecture, "input_size": m.input_size,
                "preset": m.preset, "labels": m.labels, "fingerprint": m.fingerprint, "score": m.score,
                "resize_mode": m.resize_mode}
    model = dict(comparison.model)
    loaded_as = dict(model.get("loaded_as") or {})
    size = loaded_as.get("input_size")
    return {
        "source": loaded_as.get("source"),
        "filename": str(loaded_as.get("filename") or model.get("name") or "model"),
        "architecture": loaded_as.get("architecture"),
        "input_size": tuple(size) if size else None,
        "preset": model.get("preset"),
        "labels": tuple(model["labels"]) if model.get("labels") else None,
        "fingerprint": model.get("fingerprint"),
    }


def reload(
    ws: session.Workspace,
    run_id: str,
    store: RunStore,
    *,
    loader: Callable[[session.ModelKey, bytes | None], Any] | None = None,
) -> Rerun:
    """Load a saved run's model (stored file, or the zoo model) and images into ``ws``, with the run's
    preprocessing, labels and targets; only those images stay in the comparison.

    Raises WorkbenchError with a message when the run cannot be re-run (saved without its model file
    or images, a zoo model this deployment lacks, a model that no longer loads).
    """
    import explainers
    import model_zoo

    comparison = open_run(ws, run_id, store).comparison
    how = _how_loaded(comparison)
    name = how["filename"]
    notes = []
    data = store.model_bytes(run_id)
    if data is not None:
        record = session.load_upload(
            ws, data, name, architecture=how["architecture"], input_size=how["input_size"], loader=loader
        )
    elif name in {entry.name for entry in model_zoo.entries()}:
        record = session.load_zoo(ws, name, loader=loader)
    else:
        raise WorkbenchError("This run was saved without its model file, so it can be viewed and exported but not re-run.")
    if how["fingerprint"] and record.adapter.fingerprint != how["fingerprint"]:
        notes.append(f"{record.name} is not the model file this run was computed with (its fingerprint differs); the maps may differ.")
    if how["preset"]:
        session.set_preset(record, str(how["preset"]))
    if how["labels"]:
        session.set_label_names(record, how["labels"], f"run {run_id[:12]}")
    if how.get("score"):
        session.set_score(record, str(how["score"]))
    if how.get("resize_mode"):
        session.set_resize(record, str(how["resize_mode"]))

    images = store.image_bytes(run_id)
    if images is None or len(images) != len(comparison.images):
        raise WorkbenchError("This run was saved without its images, so it can be viewed and exported but not re-run.")
    entries = []
    for image, data in zip(comparison.images, images):
        entry = session.add_image(ws, data, image.name)
        session.set_target(ws, record, entry, image.target)
        entries.append(entry)
    ws.left_out = set(ws.images) - {e.id for e in entries}

    methods = tuple(m for m in comparison.methods if m in explainers.REGISTRY)
    if len(methods) != len(comparison.methods):
        missing = ", ".join(m for m in comparison.methods if m not in explainers.REGISTRY)
        raise WorkbenchError(f"This deployment has no method {missing}, which the run used.")
    saved = comparison.request
    if saved is not None:
        params = saved.params
    else:
        params = {m: dict(comparison.results[0][j].params) for j, m in enumerate(methods)} if comparison.results else {}
    background = bool(saved.background) if saved is not None else bool(comparison.model.get("background_images"))
    used = len(saved.background) if saved is not None else len(comparison.model.get("background_images") or ())
    if background and len(ws.images) != used:
        notes.append(f"The run used {used} image(s) as background; the re-run uses the {len(ws.images)} loaded here.")
    again = None
    if saved is not None:
        again = dataclasses.replace(
            saved,
            model=record.model_record(),
            images=tuple(ImageRef(e.name, e.id) for e in entries),
            background=tuple(ImageRef(e.name, e.id) for e in ws.images.values()) if background else (),
        )
    return Rerun(run_id, record, tuple(entries), methods, params, int(comparison.seed), background, tuple(notes), saved, again)


# ---------------------------------------------------------------------------- listing and retention
def model_names(store: RunStore, owner: str | None = None) -> list[str]:
    """The model names of the stored runs (for the Runs page's filter), most recent first."""
    return list(dict.fromkeys(r.model_name for r in store.list_runs(owner=owner, limit=1000)))


_cleanups: dict[str, dict[str, Any]] = {}
_cleanups_lock = threading.Lock()


def _store_id(store: RunStore) -> str:
    return f"{store.engine.url!r}|{store.data_dir}"


def schedule_cleanup(store: RunStore, settings: Settings | None = None, *, now: float | None = None) -> bool:
    """Start the retention cleanup (runs older than WORKBENCH_RETENTION_DAYS, then unreferenced blobs)
    in a background thread, at most once a day per store in this process. A retention of 0 turns it off.

    -> whether a cleanup was started. The app calls this for each new session; no page waits for it.
    """
    settings = settings or get_settings()
    if settings.retention_days < 1 or not settings.cleanup_in_app:
        return False
    now = time.time() if now is None else now
    key = _store_id(store)
    with _cleanups_lock:
        last = _cleanups.get(key)
        if last is not None and now - last["started"] < CLEANUP_INTERVAL_S:
            return False
        state: dict[str, Any] = {"started": now, "finished": None, "report": None, "error": None, "days": settings.retention_days}
        _cleanups[key] = state

    def work() -> None:
        try:
            state["report"] = store.cleanup(settings.retention_days)
            log.info("retention cleanup (%d days): %s", settings.retention_days, state["report"])
        except Exception as error:  # noqa: BLE001 - a failed cleanup must not take the app down; it retries tomorrow
            log.exception("retention cleanup failed")
            state["error"] = f"{type(error).__name__}: {error}"
        state["finished"] = time.time()

    threading.Thread(target=work, name="workbench-retention-cleanup", daemon=True).start()
    return True


def last_cleanup(store: RunStore) -> dict[str, Any] | None:
    """The latest cleanup this process started for ``store``: started, finished, report, error, days."""
    with _cleanups_lock:
        found = _cleanups.get(_store_id(store))
        return dict(found) if found else None
