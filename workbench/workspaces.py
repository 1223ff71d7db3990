"""A browser's workspace kept in the store, so a page reload or a server restart finds it again.

The app puts a workspace id (a 192-bit token, like a run id) in the page's URL (``?ws=<id>``) and
saves the workspace whenever it changed: the loaded models (an upload's bytes, a zoo model's name,
the preset and labels), the images (their decoded pixels and fingerprints, never the raw upload),
the chosen targets, every computed map in the session's cache and every evaluation computed on the
Evaluate section. Opening the URL again rebuilds the same workspace, so the same maps and metrics are
found by the same keys and nothing is computed again.
With sign-in on, a workspace opens only for the user who saved it. Cleanup deletes workspaces not
saved for ``WORKBENCH_RETENTION_DAYS``, like old runs.

Plain functions over a :class:`~workbench.session.Workspace`; no widget, no Streamlit.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any, Callable

import numpy as np

from . import session
from .images import LoadedImage
from .result import Attribution
from .store import RunStore, is_valid_run_id, new_run_id

log = logging.getLogger("workbench.app")


def new_id() -> str:
    return new_run_id()


def is_valid_id(value: object) -> bool:
    return is_valid_run_id(value)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _entries(cache: session.BoundedCache) -> list[tuple[str, Any]]:
    with cache._lock:  # oldest first, so a restore keeps the same least-recently-used order
        return [(key, value) for key, (value, _) in cache._items.items()]


def _results(ws: session.Workspace) -> list[tuple[str, Attribution]]:
    return _entries(ws.results)


def fingerprint(ws: session.Workspace) -> str:
    """Changes whenever anything :func:`snapshot` stores changes (cheap: no arrays are read)."""
    return session.digest(
        [
            [(m.id, m.key.text, m.preset, list(m.labels or ()), m.labels_file) for m in ws.models.values()],
            ws.active,
            list(ws.images),
            sorted(f"{a}|{b}|{c}" for (a, b), c in ws.targets.items()),
            sorted(ws.left_out),
            [key for key, _ in _results(ws)],
            [key for key, _ in _entries(ws.evaluations)],
            sorted(ws.saved.items()),
        ]
    )


def snapshot(ws: session.Workspace) -> tuple[dict[str, Any], dict[str, bytes]]:
    """-> (JSON-able state, blobs by role) of everything a reload should find again."""
    blobs: dict[str, bytes] = {}
    models = []
    for n, record in enumerate(ws.models.values()):
        key = dataclasses.asdict(record.key)
        models.append({"id": record.id, "name": record.name, "source": record.source, "key": key,
                       "preset": record.preset, "labels": list(record.labels) if record.labels else None,
                       "labels_file": record.labels_file})
        if record.source != "zoo" and record.data is not None:
            blobs[f"model/{n}"] = record.data
    images = []
    for n, entry in enumerate(ws.images.values()):
        image = entry.image
        images.append({"id": entry.id, "name": image.name, "source": entry.source, "label": entry.label,
                       "format": image.format, "original_size": list(image.original_size), "notes": list(image.notes)})
        blobs[f"pixels/{n}"] = _npy(image.pixels)
        if entry.mask is not None:
            blobs[f"mask/{n}"] = _npy(entry.mask)
    results = []
    for n, (key, result) in enumerate(_results(ws)):
        results.append({"key": key, "summary": result.summary()})
        blobs[f"map/{n}"] = _npy(result.map)
        if result.channels is not None:
            blobs[f"channels/{n}"] = _npy(result.channels)
    state = {
        "version": 1,
        "models": models,
        "active": ws.active,
        "images": images,
        "targets": [[a, b, c] for (a, b), c in ws.targets.items()],
        "left_out": sorted(ws.left_out),
        "results": results,
        "saved": dict(ws.saved),
        # metrics.Evaluation as plain JSON (small: numbers and curves of a few dozen points)
        "evaluations": [{"key": key, "evaluation": evaluation.to_dict()} for key, evaluation in _entries(ws.evaluations)],
    }
    return state, blobs


def restore(
    state: dict[str, Any],
    blobs: dict[str, bytes],
    *,
    loader: Callable[[session.ModelKey, bytes | None], Any] | None = None,
) -> tuple[session.Workspace, list[str]]:
    """Rebuild a workspace from :func:`snapshot`'s output -> (workspace, notes about what could not come back)."""
    ws = session.Workspace()
    notes = []
    for n, item in enumerate(state.get("models", [])):
        fields = dict(item["key"])
        if fields.get("input_size"):
            fields["input_size"] = tuple(fields["input_size"])
        key = session.ModelKey(**fields)
        data = blobs.get(f"model/{n}")
        try:
            base = (loader or session.shared_loader())(key, data)
        except Exception as error:  # noqa: BLE001 - the rest of the workspace still comes back
            log.warning("workspace model %s did not load again: %s", item["name"], error)
            notes.append(f"{item['name']} could not be loaded again ({type(error).__name__}).")
            continue
        record = session.LoadedModel(id=item["id"], name=item["name"], source=item["source"], key=key, base=base,
                                     adapter=session.configured(base), size_bytes=len(data or b""), data=data,
                                     preset=item.get("preset"), labels=tuple(item["labels"]) if item.get("labels") else None,
                                     labels_file=item.get("labels_file"))
        record.reconfigure()
        ws.models[record.id] = record
    ws.active = state.get("active") if state.get("active") in ws.models else next(iter(ws.models), None)
    for n, item in enumerate(state.get("images", [])):
        image = LoadedImage(name=item["name"], pixels=_array(blobs[f"pixels/{n}"]), sha256=item["id"], format=item.get("format", ""),
                            original_size=tuple(item.get("original_size") or (0, 0)), notes=tuple(item.get("notes", ())))
        mask = _array(blobs[f"mask/{n}"]) if f"mask/{n}" in blobs else None
        ws.images[image.sha256] = session.ImageEntry(image=image, source=item["source"], mask=mask, label=item.get("label"))
    ws.targets = {(a, b): int(c) for a, b, c in state.get("targets", [])}
    ws.left_out = set(state.get("left_out", [])) & set(ws.images)
    for n, item in enumerate(state.get("results", [])):
        channels = _array(blobs[f"channels/{n}"]) if f"channels/{n}" in blobs else None
        ws.results.put(item["key"], Attribution.from_summary(item["summary"], _array(blobs[f"map/{n}"]), channels))
    ws.saved = dict(state.get("saved", {}))
    if state.get("evaluations"):
        from . import metrics

        for item in state["evaluations"]:
            ws.evaluations.put(item["key"], metrics.Evaluation.from_dict(item["evaluation"]))
    return ws, notes


def save(store: RunStore, workspace_id: str, ws: session.Workspace, owner: str | None) -> None:
    state, blobs = snapshot(ws)
    # an uploaded model's key is the sha256 of its bytes: a large file is not hashed again on every save
    known = {f"model/{n}": record.key.sha256 for n, record in enumerate(ws.models.values()) if f"model/{n}" in blobs}
    store.save_workspace(workspace_id, state, blobs, owner=owner, digests=known)


def load(
    store: RunStore,
    workspace_id: object,
    owner: str | None,
    *,
    loader: Callable[[session.ModelKey, bytes | None], Any] | None = None,
) -> tuple[session.Workspace, list[str]] | None:
    """The stored workspace with this id, or None (unknown, expired, or saved by another signed-in user)."""
    if not is_valid_id(workspace_id):
        return None
    found = store.load_workspace(workspace_id)  # type: ignore[arg-type]
    if found is None:
        return None
    saved_by, state, blobs = found
    if saved_by is not None and saved_by != owner:
        return None
    return restore(state, blobs, loader=loader)
