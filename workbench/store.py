"""Saved runs: metadata in a database, arrays and uploads as content-addressed blobs on disk.

A run is one :class:`~workbench.result.Comparison`. Saving writes every blob first
(``data_dir/blobs/ab/cdef…``, named by the sha256 of its bytes, written to a temporary
file and moved into place with ``os.replace``), then inserts the run and its blob
references in ONE committed transaction: a save that fails half-way leaves no run anyone
can see, only unreferenced blobs that the next :meth:`RunStore.cleanup` removes.

The database is SQLite (``data_dir/workbench.sqlite3``, in WAL mode with a busy timeout,
one engine per store) unless ``WORKBENCH_DATABASE_URL`` names another, e.g.
``postgresql+psycopg://user:password@host/db``; the same SQLAlchemy Core code serves both.

What is stored:

- the summary of the comparison (targets, scores, parameters, seeds, timings, device,
  versions, image fingerprints) as JSON, plus indexed columns to filter on (owner,
  created, model name and fingerprint, methods);
- every attribution map and per-channel array, and the display pixels, as ``.npy``
  bytes, so :meth:`RunStore.load` gives back the same arrays bit for bit;
- the model bytes, when given, for re-running;
- each uploaded image *re-encoded* as an 8-bit PNG of its decoded pixels
  (:func:`workbench.images.image_to_png_bytes`): EXIF (GPS position, camera serial,
  thumbnails), ICC and text chunks of the upload are never written to disk. The raw upload
  is not kept. EXIF rotation is already applied, transparency is composited on white and
  16-bit samples are reduced to 8 bits, so re-running from these bytes sees the same
  pixels for ordinary 8-bit photos; the image fingerprint in the summary stays the
  sha256 of the original upload.

Blob removal (:meth:`RunStore.delete`, :meth:`RunStore.cleanup`) and blob writing
exclude each other through ``flock`` on ``blobs/.lock`` (exclusive to remove, shared to
save), so a blob a save is about to reference is never swept away under it, across
threads and processes of one host. ``flock`` does not reach across hosts sharing a data
directory, so for several replicas: a save touches every blob it reuses, removal spares
blobs touched within ``WORKBENCH_BLOB_GRACE_SECONDS``, and after committing, a save checks
its blobs are still there and writes back any that a sweep removed in between.

Run ids come from :func:`secrets.token_urlsafe` (192 bits) and are checked against a
strict pattern before any database or disk access.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np
import sqlalchemy as sa

from .errors import ParameterError, RunNotFound, WorkbenchError
from .result import Attribution, Comparison, ExplainedImage, Stopped
from .settings import Settings, get_settings

log = logging.getLogger("workbench.store")

try:  # POSIX; elsewhere a process-local lock stands in
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None


class NotRunOwner(WorkbenchError, PermissionError):
    """Someone other than a run's owner asked to delete it."""


class StoreUnavailable(WorkbenchError):
    """The data directory or the run database cannot be used (a file where a folder should be, a damaged
    database, no permission): an operator's problem, told in one line."""


class RunDamaged(WorkbenchError):
    """A stored run references blob data that is missing or does not match its hash."""


RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
_BLOB_NAME = re.compile(r"[0-9a-f]{62}")
_ID_BYTES = 24  # 192 bits
_MAX_TEXT = 255
DEFAULT_BASE_URL = "http://localhost:8501"  # links made without a browser (CLI) when no public URL is set
_NOT_FOUND = (
    "This run is not available: no saved run has this id. The link may be incomplete, or its owner "
    "revoked the link or deleted the run."
)

metadata = sa.MetaData()

runs_table = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created", sa.Float, nullable=False, index=True),  # the comparison's unix time
    sa.Column("saved", sa.Float, nullable=False),  # when it was stored
    sa.Column("owner", sa.String(_MAX_TEXT), nullable=True, index=True),
    sa.Column("model_name", sa.String(_MAX_TEXT), nullable=False, index=True),
    sa.Column("model_fingerprint", sa.String(128), nullable=False, index=True),
    sa.Column("methods", sa.Text, nullable=False),  # " a b c ": space-delimited, for LIKE filters
    sa.Column("image_count", sa.Integer, nullable=False),
    sa.Column("has_model", sa.Boolean, nullable=False),
    sa.Column("has_images", sa.Boolean, nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
)

run_blobs_table = sa.Table(
    "run_blobs",
    metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("role", sa.String(64), primary_key=True),  # model | image/i | pixels/i | map/i/j | channels/i/j
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
)


# A browser's workspace (models, images, computed maps), kept so that a reload or a server restart finds it
# again (workbench/workspaces.py). Replaced whole on every save; deleted by cleanup like an old run.
workspaces_table = sa.Table(
    "workspaces",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(_MAX_TEXT), nullable=True),
    sa.Column("updated", sa.Float, nullable=False, index=True),
    sa.Column("state", sa.JSON, nullable=False),
)

workspace_blobs_table = sa.Table(
    "workspace_blobs",
    metadata,
    sa.Column("workspace_id", sa.String(64), sa.ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("role", sa.String(160), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One row of :meth:`RunStore.list_runs`: enough to show a list, not the arrays."""

    run_id: str
    created: float
    owner: str | None
    model_name: str
    model_fingerprint: str
    methods: tuple[str, ...]
    image_count: int
    has_model: bool
    has_images: bool
    stopped: str | None = None  # why a partial run stopped early ("cancelled"); None for a complete run


def new_run_id() -> str:
    # never a leading "-": the id is a command-line argument too (``export RUN_ID``), where one reads as an option
    while True:
        run_id = secrets.token_urlsafe(_ID_BYTES)
        if not run_id.startswith("-"):
            return run_id


def is_valid_run_id(run_id: object) -> bool:
    return isinstance(run_id, str) and RUN_ID_PATTERN.fullmatch(run_id) is not None


def _checked_id(run_id: object) -> str:
    if not is_valid_run_id(run_id):
        raise RunNotFound(_NOT_FOUND)
    return run_id  # type: ignore[return-value]


def share_link(run_id: str, *, base_url: str | None = None, base_path: str | None = None) -> str:
    """The URL that reopens a run: ``<public base URL>/<server.baseUrlPath>/?run=<id>``.

    ``base_url`` defaults to the ``WORKBENCH_PUBLIC_BASE_URL`` setting, else ``http://localhost:8501``
    (the app passes the address the browser used instead, see :func:`workbench.sharing.link`); ``base_path`` is
    Streamlit's ``server.baseUrlPath`` (pass ``st.get_option("server.baseUrlPath")``).
    Slashes are normalised, and a base URL that already ends with the base path is not
    given it twice.
    """
    run_id = _checked_id(run_id)
    base = (base_url or get_settings().public_base_url or DEFAULT_BASE_URL).strip().rstrip("/")
    path = "/".join(part for part in (base_path or "").split("/") if part)
    if path and not urlsplit(base).path.rstrip("/").endswith("/" + path):
        base = f"{base}/{path}"
    return f"{base}/?run={run_id}"


# -- JSON: the summary must survive PostgreSQL's JSON type, which has no NaN or infinity --------

_FLOAT_TAG = "$float"


def _to_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist())
    if isinstance(value, np.generic):
        return _to_json(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT_TAG: repr(value)}  # 'nan', 'inf', '-inf'
    if isinstance(value, str):
        return value.replace("\x00", "")  # PostgreSQL text cannot hold NUL
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_FLOAT_TAG}:
            return float(value[_FLOAT_TAG])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def base_name(name: object) -> str:
    """A file name without its directories (either separator): a stored run never records where a file
    lay on the machine that saved it (``explain --save /home/me/cases/x.png`` stores ``x.png``)."""
    text = str(name).replace("\\", "/").rstrip("/")
    return text.rsplit("/", 1)[-1] or "file"


def _stored_names(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with base names for the model and every image."""
    model = dict(summary.get("model") or {})
    if "name" in model:
        model["name"] = base_name(model["name"])
    if isinstance(model.get("loaded_as"), Mapping) and model["loaded_as"].get("filename"):
        model["loaded_as"] = {**model["loaded_as"], "filename": base_name(model["loaded_as"]["filename"])}
    images = [{**item, "name": base_name(item["name"])} for item in summary.get("images", [])]
    stored = {**summary, "model": model, "images": images}
    if isinstance(summary.get("request"), Mapping):  # the typed request says the same, by base names too
        request = dict(summary["request"])
        request["model"] = {**request["model"], "name": base_name(request["model"]["name"]),
                            "filename": base_name(request["model"]["filename"])}
        for key in ("images", "background"):
            request[key] = [{**item, "name": base_name(item["name"])} for item in request.get(key) or ()]
        stored["request"] = request
    return stored
def _request(data: Any):
    """The run's typed request, or None for runs saved before requests were recorded (or unreadable)."""
    if not data:
        return None
    from .engine import ExplainRequest

    try:
        return ExplainRequest.from_json(data)
    except (KeyError, TypeError, ValueError):
        log.warning("a stored run's request could not be read; it opens without one")
        return None


def _text(value: object, limit: int = _MAX_TEXT) -> str:
    return str(value).replace("\x00", "")[:limit]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def clean_image_png(data: bytes, name: str = "image", settings: Settings | None = None) -> bytes:
    """An upload re-encoded as PNG of its decoded pixels, with none of its metadata."""
    from .images import image_to_png_bytes, load_image

    return image_to_png_bytes(load_image(data, name, settings=settings).pixels)


class RunStore:
    """Save, list, load and delete comparisons. Safe to share between threads.

    Args:
        database_url: a SQLAlchemy URL; defaults to ``WORKBENCH_DATABASE_URL``, else a
            SQLite file ``workbench.sqlite3`` in the data directory.
        data_dir: where blobs live; defaults to ``WORKBENCH_DATA_DIR`` (``./data``).
    """

    def __init__(self, database_url: str | None = None, data_dir: str | Path | None = None):
        self.settings = get_settings()
        self.data_dir = Path(data_dir if data_dir is not None else self.settings.data_dir).resolve()
        self.blob_dir = self.data_dir / "blobs"
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise StoreUnavailable(
                f"The data directory {self.data_dir} is a file, not a folder; point WORKBENCH_DATA_DIR at a folder."
            )
        try:
            self.blob_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"The data directory {self.data_dir} cannot be used ({exc.strerror or type(exc).__name__}); "
                "point WORKBENCH_DATA_DIR at a folder this process can write."
            ) from None
        url = database_url or self.settings.database_url or f"sqlite:///{self.data_dir / 'workbench.sqlite3'}"
        self.engine = _make_engine(url)
        self._local_lock = threading.Lock()  # stands in for flock where fcntl is missing
        try:
            metadata.create_all(self.engine)
        except sa.exc.DatabaseError as exc:
            self.engine.dispose()
            where = sa.make_url(url).render_as_string(hide_password=True)
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
            raise StoreUnavailable(
                f"The run database {where} cannot be used ({reason}); restore it from a backup, or move the "
                "file away to start with an empty one."
            ) from None

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({self.engine.url!r}, data_dir={str(self.data_dir)!r})"

    # -- saving ---------------------------------------------------------------------------------

    def save(
        self,
        comparison: Comparison,
        *,
        model_bytes: bytes | None,
        image_bytes: Sequence[bytes] | None,
        owner: str | None = None,
        model_name: str,
    ) -> str:
        """Store a comparison (and, when given, the model and images to re-run it); -> its new id.

        ``image_bytes`` are the uploads, one per image in order; they are stored re-encoded
        without metadata (see the module docstring).

        Raises:
            ParameterError: ``image_bytes`` does not have one entry per image.
            ImageRejected: an image does not decode.
        """
        if image_bytes is not None and len(image_bytes) != len(comparison.images):
            raise ParameterError(
                f"{len(image_bytes)} image uploads were given for a comparison of {len(comparison.images)} images."
            )
        run_id = new_run_id()
        blobs: dict[str, bytes] = {}
        if model_bytes is not None:
            blobs["model"] = bytes(model_bytes)
        for i, image in enumerate(comparison.images):
            if image_bytes is not None:
                blobs[f"image/{i}"] = clean_image_png(image_bytes[i], image.name, self.settings)
            blobs[f"pixels/{i}"] = _npy(np.asarray(image.pixels))
            if image.original is not None:
                blobs[f"original/{i}"] = _npy(np.asarray(image.original))
            for j, attribution in enumerate(comparison.results[i]):
                blobs[f"map/{i}/{j}"] = _npy(attribution.map)
                if attribution.channels is not None:
                    blobs[f"channels/{i}/{j}"] = _npy(attribution.channels)

        summary = _stored_names(comparison.summary())
        summary["run_id"] = run_id
        summary["owner"] = owner
        created = float(comparison.created) if comparison.created and math.isfinite(comparison.created) else time.time()
        row = {
            "id": run_id,
            "created": created,
            "saved": time.time(),
            "owner": None if owner is None else _text(owner),
            "model_name": _text(base_name(model_name)),
            "model_fingerprint": _text(comparison.model.get("fingerprint", ""), 128),
            "methods": " " + " ".join(_text(m, 64) for m in comparison.methods) + " ",
            "image_count": len(comparison.images),
            "has_model": model_bytes is not None,
            "has_images": image_bytes is not None,
            "summary": _to_json(summary),
        }
        with self._blob_lock(exclusive=False):
            refs = [
                {"run_id": run_id, "role": role, "sha256": self._put_blob(data), "size": len(data)}
                for role, data in blobs.items()
            ]
            with self.engine.begin() as conn:
                conn.execute(runs_table.insert(), [row])
                conn.execute(run_blobs_table.insert(), refs)
            # another host's sweep may have removed a blob between its write and the commit: now that the
            # run references it no sweep will, so writing it back makes the run whole
            for ref in refs:
                if not self.blob_path(ref["sha256"]).is_file():
                    self._put_blob(blobs[ref["role"]])
        return run_id

    def save_evaluation(self, run_id: str, evaluation: Mapping[str, Any], masks: Sequence[np.ndarray | None] = ()) -> None:
        """Attach a run's evaluation (the metrics as JSON, see :mod:`workbench.metrics`) and the ground-truth
        masks it used, replacing an earlier one; the comparison itself is not touched.

        Raises RunNotFound when the run does not exist (or was deleted meanwhile).
        """
        run_id = _checked_id(run_id)
        blobs = {"evaluation": json.dumps(_to_json(dict(evaluation)), allow_nan=False).encode()}
        for i, mask in enumerate(masks):
            if mask is not None:
                blobs[f"mask/{i}"] = _npy(np.asarray(mask, dtype=bool))
        replaced = sa.or_(run_blobs_table.c.role == "evaluation", run_blobs_table.c.role.like("mask/%"))
        with self._blob_lock(exclusive=False):
            refs = [
                {"run_id": run_id, "role": role, "sha256": self._put_blob(data), "size": len(data)}
                for role, data in blobs.items()
            ]
            with self.engine.begin() as conn:
                if not conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == run_id)).first():
                    raise RunNotFound(_NOT_FOUND)
                conn.execute(run_blobs_table.delete().where(run_blobs_table.c.run_id == run_id, replaced))
                conn.execute(run_blobs_table.insert(), refs)

    def load_evaluation(self, run_id: str) -> tuple[dict[str, Any] | None, list[np.ndarray | None]]:
        """A run's evaluation as saved and its masks per image (None where an image had none);
        (None, []) when the run was never evaluated."""
        run_id = _checked_id(run_id)
        refs = self._refs(run_id)
        if "evaluation" not in refs:
            return None, []
        evaluation = _from_json(json.loads(self._read_ref(run_id, "evaluation", refs)))
        count = int(max((int(r.split("/")[1]) for r in refs if r.startswith("mask/")), default=-1)) + 1
        count = max(count, len(evaluation.get("images", ())))
        masks = [_from_npy(self._read_ref(run_id, f"mask/{i}", refs)) if f"mask/{i}" in refs else None for i in range(count)]
        return evaluation, masks

    # -- reading --------------------------------------------------------------------------------

    def load(self, run_id: str) -> Comparison:
        """The stored comparison, arrays equal bit for bit to those saved.

        Raises:
            RunNotFound: the id is malformed or names no stored run.
            RunDamaged: a blob of the run is missing or corrupt on disk.
        """
        run_id = _checked_id(run_id)
        with self.engine.connect() as conn:
            summary = conn.execute(sa.select(runs_table.c.summary).where(runs_table.c.id == run_id)).scalar_one_or_none()
            refs = dict(
                conn.execute(
                    sa.select(run_blobs_table.c.role, run_blobs_table.c.sha256).where(run_blobs_table.c.run_id == run_id)
                ).all()
            )
        if summary is None:
            raise RunNotFound(_NOT_FOUND)
        summary = _from_json(summary)

        def array(role: str) -> np.ndarray:
            return _from_npy(self._read_ref(run_id, role, refs))

        images, results = [], []
        for i, item in enumerate(summary["images"]):
            images.append(
                ExplainedImage(
                    name=item["name"],
                    sha256=item["sha256"],
                    pixels=array(f"pixels/{i}"),
                    target=item["target"],
                    target_label=item["target_label"],
                    notes=tuple(item.get("notes", ())),
                    original=array(f"original/{i}") if f"original/{i}" in refs else None,
                    placement=item.get("placement"),
                )
            )
            results.append(
                tuple(
                    Attribution.from_summary(
                        r,
                        array(f"map/{i}/{j}"),
                        array(f"channels/{i}/{j}") if f"channels/{i}/{j}" in refs else None,
                    )
                    for j, r in enumerate(item["results"])
                )
            )
        return Comparison(
            model=summary["model"],
            images=tuple(images),
            methods=tuple(summary["methods"]),
            results=tuple(results),
            seed=summary["seed"],
            versions=summary["versions"],
            created=summary["created"],
            run_id=run_id,
            owner=summary.get("owner"),
            request=_request(summary.get("request")),
            stopped=Stopped.from_json(summary.get("stopped")),
        )

    def model_bytes(self, run_id: str) -> bytes | None:
        """The uploaded model file of a run, or None when it was saved without one."""
        run_id = _checked_id(run_id)
        refs = self._refs(run_id)
        return self._read_ref(run_id, "model", refs) if "model" in refs else None

    def image_bytes(self, run_id: str) -> list[bytes] | None:
        """The run's images as metadata-free PNGs, in order, or None when saved without them."""
        run_id = _checked_id(run_id)
        refs = self._refs(run_id)
        roles = sorted((r for r in refs if r.startswith("image/")), key=lambda r: int(r.split("/")[1]))
        return [self._read_ref(run_id, role, refs) for role in roles] if roles else None

    def list_runs(
        self,
        model: str | None = None,
        method: str | None = None,
        owner: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Stored runs, newest first. ``model`` matches the model name or fingerprint."""
        limit = max(1, min(int(limit), 1000))
        query = sa.select(
            runs_table.c.id,
            runs_table.c.created,
            runs_table.c.owner,
            runs_table.c.model_name,
            runs_table.c.model_fingerprint,
            runs_table.c.methods,
            runs_table.c.image_count,
            runs_table.c.has_model,
            runs_table.c.has_images,
            runs_table.c.summary["stopped"]["reason"].as_string().label("stopped"),
        )
        if model is not None:
            query = query.where(sa.or_(runs_table.c.model_name == model, runs_table.c.model_fingerprint == model))
        if method is not None:
            query = query.where(runs_table.c.methods.contains(f" {method} ", autoescape=True))
        if owner is not None:
            query = query.where(runs_table.c.owner == owner)
        query = query.order_by(runs_table.c.created.desc(), runs_table.c.id).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            RunRecord(
                run_id=r.id,
                created=r.created,
                owner=r.owner,
                model_name=r.model_name,
                model_fingerprint=r.model_fingerprint,
                methods=tuple(r.methods.split()),
                image_count=r.image_count,
                has_model=bool(r.has_model),
                has_images=bool(r.has_images),
                stopped=r.stopped or None,
            )
            for r in rows
        ]

    def exists(self, run_id: str) -> bool:
        """Whether a run with this id is stored now (False for malformed ids, revoked links, deleted runs)."""
        return is_valid_run_id(run_id) and self._exists(run_id)

    def owner(self, run_id: str) -> str | None:
        """The run's owner (None: saved without sign-in). Raises RunNotFound."""
        run_id = _checked_id(run_id)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs_table.c.owner).where(runs_table.c.id == run_id)).first()
        if row is None:
            raise RunNotFound(_NOT_FOUND)
        return row.owner

    # -- workspaces -----------------------------------------------------------------------------

    def save_workspace(
        self,
        workspace_id: str,
        state: Mapping[str, Any],
        blobs: Mapping[str, bytes],
        *,
        owner: str | None,
        digests: Mapping[str, str] | None = None,
    ) -> None:
        """Store a workspace's state (JSON) and blobs under its id, replacing what was there, in one transaction.

        ``digests``: sha256 of blobs the caller knows already (an uploaded model's), not hashed again on every save."""
        digests = digests or {}
        workspace_id = _checked_id(workspace_id)
        row = {"id": workspace_id, "owner": None if owner is None else _text(owner), "updated": time.time(), "state": _to_json(dict(state))}
        with self._blob_lock(exclusive=False):
            refs = [
                {"workspace_id": workspace_id, "role": _text(role, 160), "sha256": self._put_blob(data, digests.get(role)), "size": len(data)}
                for role, data in blobs.items()
            ]
            with self.engine.begin() as conn:
                conn.execute(workspace_blobs_table.delete().where(workspace_blobs_table.c.workspace_id == workspace_id))
                conn.execute(workspaces_table.delete().where(workspaces_table.c.id == workspace_id))
                conn.execute(workspaces_table.insert(), [row])
                if refs:
                    conn.execute(workspace_blobs_table.insert(), refs)
            for ref in refs:  # see save(): a sweep on another host may have removed one before the commit
                if not self.blob_path(ref["sha256"]).is_file():
                    self._put_blob(blobs[ref["role"]], digests.get(ref["role"]))
        # the blobs the previous version used and this one does not are left to cleanup

    def load_workspace(self, workspace_id: str) -> tuple[str | None, dict[str, Any], dict[str, bytes]] | None:
        """-> (owner, state, blobs by role) of a stored workspace, or None (unknown, expired, malformed id).

        Raises RunDamaged when a blob it references is missing or corrupt."""
        if not is_valid_run_id(workspace_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(workspaces_table).where(workspaces_table.c.id == workspace_id)).mappings().first()
            if row is None:
                return None
            refs = dict(
                conn.execute(
                    sa.select(workspace_blobs_table.c.role, workspace_blobs_table.c.sha256).where(
                        workspace_blobs_table.c.workspace_id == workspace_id
                    )
                ).all()
            )
        blobs = {}
        for role, digest in refs.items():
            data = None
            with contextlib.suppress(FileNotFoundError):
                data = self.blob_path(digest).read_bytes()
            if data is None or hashlib.sha256(data).hexdigest() != digest:
                raise RunDamaged(f"The saved workspace's {role.split('/')[0]} data is missing or damaged.")
            blobs[role] = data
        return row["owner"], _from_json(row["state"]), blobs

    # -- removing -------------------------------------------------------------------------------

    def revoke_link(self, run_id: str, *, requester: str | None) -> str:
        """Revoke a run's share link: the run moves to a new id (-> the new id), so the old link shows
        "not available" while the owner keeps the run and can share it again. Same permission as delete.

        Raises:
            RunNotFound: the id is malformed or names no stored run.
            NotRunOwner: the run has an owner and ``requester`` is someone else.
        """
        run_id = _checked_id(run_id)
        new_id = new_run_id()
        may_change = runs_table.c.owner.is_(None)
        if requester is not None:
            may_change = sa.or_(may_change, runs_table.c.owner == requester)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(runs_table).where(runs_table.c.id == run_id, may_change)).mappings().first()
            if row is None:
                if conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == run_id)).first():
                    raise NotRunOwner("Only the person who saved this run can revoke its link.")
                raise RunNotFound(_NOT_FOUND)
            moved = dict(row)
            moved["id"] = new_id
            summary = dict(_from_json(moved["summary"]))
            summary["run_id"] = new_id
            moved["summary"] = _to_json(summary)
            # one transaction: the new row, the blob references moved over, the old row gone
            conn.execute(runs_table.insert(), [moved])
            conn.execute(run_blobs_table.update().where(run_blobs_table.c.run_id == run_id).values(run_id=new_id))
            deleted = conn.execute(runs_table.delete().where(runs_table.c.id == run_id, may_change)).rowcount
            if deleted != 1:  # changed hands or vanished in between: leave everything as it was
                raise RunNotFound(_NOT_FOUND)
        return new_id

    def delete(self, run_id: str, *, requester: str | None) -> None:
        """Delete a run and the blobs no other run uses. A run with an owner is deletable by that owner only.

        Raises:
            RunNotFound: the id is malformed or names no stored run.
            NotRunOwner: the run has an owner and ``requester`` is someone else.
        """
        run_id = _checked_id(run_id)
        digests = set(self._refs(run_id).values())
        may_delete = runs_table.c.owner.is_(None)
        if requester is not None:
            may_delete = sa.or_(may_delete, runs_table.c.owner == requester)
        with self.engine.begin() as conn:
            # one statement decides and deletes, so ownership cannot change in between
            deleted = conn.execute(runs_table.delete().where(runs_table.c.id == run_id, may_delete)).rowcount
        if not deleted:
            with self.engine.connect() as conn:
                exists = conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == run_id)).first()
            if exists:
                raise NotRunOwner("Only the person who saved this run can delete it.")
            raise RunNotFound(_NOT_FOUND)
        self._sweep(digests)

    def cleanup(self, retention_days: int, now: float | None = None) -> dict[str, int]:
        """Delete runs created more than ``retention_days`` ago, then every blob no run references.

        Also removes blobs left by saves that failed, and stray temporary files.
        -> ``{"runs_deleted": n, "blobs_deleted": n, "bytes_freed": n}``.
        """
        if int(retention_days) < 1:
            raise ParameterError(
                f"Retention must be at least one day, got {retention_days!r}; to keep runs forever, do not run cleanup."
            )
        cutoff = (time.time() if now is None else float(now)) - int(retention_days) * 86400.0
        with self.engine.begin() as conn:
            runs_deleted = conn.execute(runs_table.delete().where(runs_table.c.created < cutoff)).rowcount
            conn.execute(workspaces_table.delete().where(workspaces_table.c.updated < cutoff))
        blobs_deleted, bytes_freed = self._sweep(None)
        return {"runs_deleted": int(runs_deleted), "blobs_deleted": blobs_deleted, "bytes_freed": bytes_freed}

    # -- blobs ----------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blob_dir / digest[:2] / digest[2:]

    def _put_blob(self, data: bytes, digest: str | None = None) -> str:
        """Write a blob (atomically) unless it is there -> its sha256. ``digest``: the caller already knows it."""
        digest = digest or hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == len(data):
                os.utime(path)  # "in use now": a sweep on another host spares it for the grace period
                return digest
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return digest

    def _read_ref(self, run_id: str, role: str, refs: Mapping[str, str]) -> bytes:
        digest = refs.get(role)
        data = None
        if digest is not None:
            with contextlib.suppress(FileNotFoundError):
                data = self.blob_path(digest).read_bytes()
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            if not self._exists(run_id):  # deleted while we read it
                raise RunNotFound(_NOT_FOUND)
            raise RunDamaged(
                f"Run {run_id}: its stored {role.split('/')[0]} data is missing or damaged; "
                "restore the data directory from a backup."
            )
        return data

    def _refs(self, run_id: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            if not conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == run_id)).first():
                raise RunNotFound(_NOT_FOUND)
            return dict(
                conn.execute(
                    sa.select(run_blobs_table.c.role, run_blobs_table.c.sha256).where(run_blobs_table.c.run_id == run_id)
                ).all()
            )

    def _exists(self, run_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(runs_table.c.id).where(runs_table.c.id == run_id)).first() is not None

    def _sweep(self, candidates: set[str] | None) -> tuple[int, int]:
        """Remove blobs no run references: the given digests, or (None) every blob on disk."""
        removed = freed = 0
        grace = float(getattr(self.settings, "blob_grace_seconds", 0) or 0)
        with self._blob_lock(exclusive=True):
            with self.engine.connect() as conn:
                referenced = set()
                for column in (run_blobs_table.c.sha256, workspace_blobs_table.c.sha256):
                    query = sa.select(column).distinct()
                    if candidates is not None:
                        if not candidates:
                            return 0, 0
                        query = query.where(column.in_(sorted(candidates)))
                    referenced |= set(conn.execute(query).scalars())
            for path, digest in self._blob_files(candidates):
                if digest in referenced:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    info = path.stat()
                    if grace and time.time() - info.st_mtime < grace:
                        continue  # written or reused lately: a save elsewhere may be about to reference it
                    size = info.st_size
                    path.unlink()
                    removed += 1
                    freed += size
        return removed, freed

    def _blob_files(self, candidates: set[str] | None) -> Iterator[tuple[Path, str | None]]:
        if candidates is not None:
            for digest in candidates:
                yield self.blob_path(digest), digest
            return
        for folder in self.blob_dir.iterdir():
            if not (folder.is_dir() and len(folder.name) == 2):
                continue
            for path in folder.iterdir():
                if _BLOB_NAME.fullmatch(path.name):
                    yield path, folder.name + path.name
                elif path.name.startswith(".tmp-"):  # a write that died; no save runs under the lock
                    yield path, None

    @contextlib.contextmanager
    def _blob_lock(self, *, exclusive: bool) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover
            with self._local_lock:
                yield
            return
        # one open file per holder: flock locks belong to the open file, so threads exclude each other too
        with open(self.blob_dir / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _make_engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed, pool_pre_ping=True)
    engine = sa.create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA foreign_keys = ON")  # ON DELETE CASCADE for run_blobs
        if parsed.database and parsed.database != ":memory:":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    return engine
