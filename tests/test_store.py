"""Run store: exact round trips on SQLite and PostgreSQL, atomic saves, concurrency, retention,
strict ids, owner-only deletion, metadata-free images and share links.

PostgreSQL tests run when ``WORKBENCH_TEST_POSTGRES_URL`` names a database the tests may
create schemas in, e.g. ``postgresql+psycopg://workbench:workbench@127.0.0.1:5432/workbench_test``.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from workbench import store as store_module
from workbench.errors import RunNotFound, WorkbenchError
from workbench.images import load_image
from workbench.result import Attribution, Comparison, ExplainedImage
from workbench.store import NotRunOwner, RunDamaged, RunStore, share_link

POSTGRES_URL = os.environ.get("WORKBENCH_TEST_POSTGRES_URL", "")
DAY = 86400.0


def make_comparison(seed: int, *, n_images: int = 2, methods=("saliency", "integrated_gradients", "gradcam"), created=None, size=(12, 10)) -> Comparison:
    """A small comparison built from random arrays: no model involved."""
    rng = np.random.default_rng(seed)
    h, w = size
    images, rows = [], []
    for i in range(n_images):
        pixels = rng.random((h, w, 3), dtype=np.float32)
        target = int(rng.integers(0, 5))
        images.append(ExplainedImage(name=f"img{seed}-{i}.png", sha256=hashlib.sha256(pixels.tobytes()).hexdigest(), pixels=pixels, target=target, target_label=f"class {target}", notes=("EXIF orientation applied",) if i else ()))
        row = []
        for j, method in enumerate(methods):
            signed = method != "gradcam"
            channels = rng.standard_normal((h, w, 3)).astype(np.float32) if method == "integrated_gradients" else None
            attribution_map = channels.sum(axis=-1) if channels is not None else rng.standard_normal((h, w)).astype(np.float32)
            row.append(
                Attribution(
                    method=method,
                    map=attribution_map,
                    target=target,
                    target_label=f"class {target}",
                    target_score=float(rng.standard_normal()),
                    signed=signed,
                    params={"steps": 32, "baseline": "black", "sigma": 0.15} if channels is not None else {},
                    seconds=float(rng.random()),
                    evaluations=int(rng.integers(1, 100)),
                    device="cpu",
                    channels=channels,
                    reference_score=0.25 if channels is not None else None,
                    completeness_gap=float(rng.random() * 1e-3) if channels is not None else None,
                    completeness_ratio=float(rng.random() * 1e-2) if channels is not None else None,
                    layer="layer4" if method == "gradcam" else None,
                    seed=seed,
                    notes=("chunk halved to 8",) if j == 1 else (),
                    model_fingerprint=f"model-{seed % 3}",
                    image_fingerprint=images[-1].sha256,
                )
            )
        rows.append(tuple(row))
    model = {"name": f"net{seed % 3}", "framework": "pytorch", "input_size": [h, w, 3], "num_classes": 5, "labels": [f"class {k}" for k in range(5)], "fingerprint": f"model-{seed % 3}", "device": "cpu"}
    return Comparison(
        model=model,
        images=tuple(images),
        methods=tuple(methods),
        results=tuple(rows),
        seed=seed,
        versions={"workbench": "0.1.0", "numpy": np.__version__},
        created=time.time() if created is None else created,
    )


def png_bytes(seed: int, size=(20, 24)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def save(store: RunStore, comparison: Comparison, *, model: bytes | None = b"model-weights", images=True, owner=None) -> str:
    uploads = [png_bytes(k) for k in range(len(comparison.images))] if images else None
    return store.save(comparison, model_bytes=model, image_bytes=uploads, owner=owner, model_name=comparison.model["name"])


def blob_files(store: RunStore) -> set[str]:
    return {p.parent.name + p.name for p in store.blob_dir.glob("??/*") if not p.name.startswith(".")}


def assert_same(loaded: Comparison, original: Comparison) -> None:
    assert loaded.methods == original.methods
    assert loaded.seed == original.seed and loaded.created == original.created
    assert dict(loaded.model) == dict(original.model)
    assert dict(loaded.versions) == dict(original.versions)
    for a, b in zip(loaded.images, original.images):
        assert (a.name, a.sha256, a.target, a.target_label, a.notes) == (b.name, b.sha256, b.target, b.target_label, b.notes)
        assert a.pixels.dtype == b.pixels.dtype and a.pixels.shape == b.pixels.shape
        assert a.pixels.tobytes() == b.pixels.tobytes()
    for row_a, row_b in zip(loaded.results, original.results):
        for a, b in zip(row_a, row_b):
            assert a.summary() == b.summary()
            assert a.map.dtype == np.float32 and a.map.tobytes() == b.map.tobytes()
            if b.channels is None:
                assert a.channels is None
            else:
                assert a.channels.shape == b.channels.shape and a.channels.tobytes() == b.channels.tobytes()


# -- fixtures: one store per test, on SQLite and (when configured) PostgreSQL -----------------


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                not POSTGRES_URL,
                reason="WORKBENCH_TEST_POSTGRES_URL is not set (e.g. postgresql+psycopg://workbench:workbench@127.0.0.1:5432/workbench_test)",
            ),
        ),
    ]
)
def store(request, tmp_path):
    if request.param == "sqlite":
        with RunStore(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'runs.sqlite3'}") as s:
            yield s
        return
    # a schema per test keeps tests independent of each other and of earlier runs
    schema = f"wb_test_{secrets.token_hex(6)}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        with RunStore(database_url=url.render_as_string(hide_password=False), data_dir=tmp_path / "data") as s:
            yield s
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


# -- round trips ---------------------------------------------------------------------------------


def test_round_trip_is_exact(store):
    original = make_comparison(1)
    run_id = save(store, original, owner="ada@example.org")
    assert store_module.RUN_ID_PATTERN.fullmatch(run_id) and len(run_id) >= 22  # >= 128 bits
    loaded = store.load(run_id)
    assert_same(loaded, original)
    assert loaded.run_id == run_id and loaded.owner == "ada@example.org"
    assert store.model_bytes(run_id) == b"model-weights"
    stored_images = store.image_bytes(run_id)
    assert len(stored_images) == 2
    for k, data in enumerate(stored_images):
        assert np.array_equal(load_image(data).pixels, load_image(png_bytes(k)).pixels)


def test_runs_saved_without_uploads_still_load(store):
    original = make_comparison(2)
    run_id = save(store, original, model=None, images=False)
    assert_same(store.load(run_id), original)
    assert store.model_bytes(run_id) is None and store.image_bytes(run_id) is None
    [record] = store.list_runs()
    assert (record.has_model, record.has_images) == (False, False)


def test_non_finite_scores_survive(store):
    base = make_comparison(3, n_images=1, methods=("saliency",))
    weird = dataclasses_replace_result(base, target_score=float("nan"), completeness_gap=float("inf"), params={"noise": float("-inf"), "sizes": (1, 2)})
    loaded = store.load(save(store, weird))
    r = loaded.results[0][0]
    assert np.isnan(r.target_score) and r.completeness_gap == float("inf") and r.params["noise"] == float("-inf")
    assert list(r.params["sizes"]) == [1, 2]


def dataclasses_replace_result(comparison: Comparison, **changes) -> Comparison:
    import dataclasses

    old = comparison.results[0][0]
    new = dataclasses.replace(old, **changes)
    return dataclasses.replace(comparison, results=((new,),))


def test_same_content_is_stored_once(store):
    first = make_comparison(4)
    save(store, first)
    count = len(blob_files(store))
    save(store, first)
    assert len(blob_files(store)) == count


def test_list_runs_filters_and_orders_newest_first(store):
    now = time.time()
    ids = {}
    ids["old"] = save(store, make_comparison(0, created=now - 30, methods=("saliency",)), owner="ada")
    ids["mid"] = save(store, make_comparison(1, created=now - 20, methods=("integrated_gradients", "gradcam")), owner="bob")
    ids["new"] = save(store, make_comparison(3, created=now - 10, methods=("saliency", "gradcam")), owner=None)
    assert [r.run_id for r in store.list_runs()] == [ids["new"], ids["mid"], ids["old"]]
    assert [r.run_id for r in store.list_runs(limit=2)] == [ids["new"], ids["mid"]]
    # model by name or fingerprint: seeds 0 and 3 share net0 / model-0
    assert [r.run_id for r in store.list_runs(model="net0")] == [ids["new"], ids["old"]]
    assert [r.run_id for r in store.list_runs(model="model-1")] == [ids["mid"]]
    assert [r.run_id for r in store.list_runs(method="gradcam")] == [ids["new"], ids["mid"]]
    # '_' is a LIKE wildcard: it must match only itself, and a method name only whole
    assert [r.run_id for r in store.list_runs(method="integrated_gradients")] == [ids["mid"]]
    assert store.list_runs(method="integratedXgradients") == []
    assert store.list_runs(method="grad") == []
    assert [r.run_id for r in store.list_runs(owner="bob")] == [ids["mid"]]
    record = store.list_runs(owner="bob")[0]
    assert record.methods == ("integrated_gradients", "gradcam") and record.image_count == 2
    assert record.model_name == "net1" and record.model_fingerprint == "model-1"


# -- concurrency and atomicity -------------------------------------------------------------------


def test_concurrent_saves_lose_nothing(store):
    saved: dict[str, Comparison] = {}
    errors = []
    lock = threading.Lock()

    def worker(t: int):
        try:
            for k in range(5):
                comparison = make_comparison(100 + t * 5 + k, n_images=1)
                run_id = save(store, comparison)  # every run shares the model blob
                with lock:
                    saved[run_id] = comparison
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(saved) == 40
    assert {r.run_id for r in store.list_runs(limit=1000)} == set(saved)
    for run_id, comparison in saved.items():
        assert_same(store.load(run_id), comparison)


def test_a_delete_cannot_remove_a_blob_a_save_is_about_to_reference(store, monkeypatch):
    """The delete of the only run using a blob starts while a save has written that blob but not committed."""
    comparison = make_comparison(7, n_images=1)
    doomed = save(store, comparison)
    real_put = store._put_blob
    deleter_done = threading.Event()
    errors = []

    def delete_doomed():
        try:
            store.delete(doomed, requester=None)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        deleter_done.set()

    deleter = threading.Thread(target=delete_doomed)

    def put_then_race(data: bytes) -> str:
        digest = real_put(data)
        if not deleter.is_alive() and not deleter_done.is_set():
            deleter.start()
            # without the blob lock the delete finishes now and removes what this save reuses
            deleter_done.wait(timeout=0.5)
        return digest

    monkeypatch.setattr(store, "_put_blob", put_then_race)
    kept = save(store, comparison)
    deleter.join()
    assert not errors
    with pytest.raises(RunNotFound):
        store.load(doomed)
    assert_same(store.load(kept), comparison)
    assert store.model_bytes(kept) == b"model-weights"


def test_failed_database_insert_leaves_no_run(store):
    kept = make_comparison(10)
    before = save(store, kept)
    listed = store.list_runs()

    def fail_on_blob_refs(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO RUN_BLOBS"):
            raise RuntimeError("disk full")

    sa.event.listen(store.engine, "before_cursor_execute", fail_on_blob_refs)
    try:
        with pytest.raises(Exception, match="disk full"):
            save(store, make_comparison(11))
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", fail_on_blob_refs)
    # the run row went in first, in the same transaction: it must be gone with the rollback
    assert store.list_runs() == listed
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store_module.runs_table)).scalar() == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(store_module.run_blobs_table).where(store_module.run_blobs_table.c.run_id != before)).scalar() == 0
    # the blobs it wrote are orphans, which cleanup removes; the surviving run is untouched
    referenced = blob_files(store)
    result = store.cleanup(retention_days=30)
    assert result["runs_deleted"] == 0 and result["blobs_deleted"] > 0
    assert blob_files(store) < referenced
    assert_same(store.load(before), kept)


def test_failed_blob_write_leaves_no_run_and_no_temp_file(store, monkeypatch):
    listed = store.list_runs()
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="I/O error"):
        save(store, make_comparison(12))
    monkeypatch.undo()
    assert len(calls) == 3
    assert store.list_runs() == listed
    assert not list(store.blob_dir.glob("??/.tmp-*"))


# -- retention -----------------------------------------------------------------------------------


def test_cleanup_removes_old_runs_and_their_blobs_but_keeps_shared_ones(store):
    now = time.time()
    old = make_comparison(20, created=now - 40 * DAY)
    young = make_comparison(21, created=now - 2 * DAY)
    old_id = store.save(old, model_bytes=b"shared model", image_bytes=[png_bytes(1), png_bytes(2)], model_name="net")
    young_id = store.save(young, model_bytes=b"shared model", image_bytes=[png_bytes(2), png_bytes(3)], model_name="net")
    with store.engine.connect() as conn:
        table = store_module.run_blobs_table
        old_blobs = set(conn.execute(sa.select(table.c.sha256).where(table.c.run_id == old_id)).scalars())
        young_blobs = set(conn.execute(sa.select(table.c.sha256).where(table.c.run_id == young_id)).scalars())
    shared = old_blobs & young_blobs
    assert hashlib.sha256(b"shared model").hexdigest() in shared and len(shared) == 2  # model + png_bytes(2)
    assert old_blobs <= blob_files(store)

    result = store.cleanup(retention_days=30, now=now)

    assert result["runs_deleted"] == 1 and result["blobs_deleted"] == len(old_blobs - shared)
    assert result["bytes_freed"] > 0
    assert [r.run_id for r in store.list_runs()] == [young_id]
    with pytest.raises(RunNotFound):
        store.load(old_id)
    assert blob_files(store) == young_blobs
    assert_same(store.load(young_id), young)
    assert store.model_bytes(young_id) == b"shared model"
    # nothing is older than a year: a second pass removes nothing
    assert store.cleanup(retention_days=365, now=now) == {"runs_deleted": 0, "blobs_deleted": 0, "bytes_freed": 0}


def test_cleanup_refuses_a_retention_below_one_day(store):
    save(store, make_comparison(22))
    with pytest.raises(WorkbenchError, match="at least one day"):
        store.cleanup(retention_days=0)
    assert len(store.list_runs()) == 1


# -- ids -----------------------------------------------------------------------------------------

MALFORMED_IDS = [
    "../../etc/passwd",
    "'; DROP TABLE runs;--",
    '"',
    "A" * 10_000,
    "",
    "ünïcødé-ÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅ",
    "abcdefghijklmnopqrstuvwxyz012345\n",
    "abcdefghijklmnop/qrstuvwxyz012345",
    "abcdefghijklmnopqrstuvwxyz０１２３",  # full-width digits
    "short",
    None,
    12345678901234567890,
]


@pytest.mark.parametrize("bad_id", MALFORMED_IDS, ids=lambda v: repr(v)[:20])
def test_malformed_ids_are_refused_before_any_database_or_disk_access(store, monkeypatch, bad_id):
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"touched {name} for a malformed id")

    monkeypatch.setattr(store, "engine", Untouchable())
    monkeypatch.setattr(store, "blob_dir", Untouchable())
    monkeypatch.setattr(store, "data_dir", Untouchable())
    for call in (store.load, store.model_bytes, store.image_bytes, lambda i: store.delete(i, requester="x"), share_link):
        with pytest.raises(RunNotFound) as info:
            call(bad_id)
        assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_unknown_well_formed_id_is_not_found(store):
    save(store, make_comparison(30))
    unknown = secrets.token_urlsafe(24)
    for call in (store.load, store.model_bytes, store.image_bytes, lambda i: store.delete(i, requester=None)):
        with pytest.raises(RunNotFound):
            call(unknown)


def test_injection_text_in_metadata_is_only_data(store):
    name = "'; DROP TABLE runs;--"
    run_id = store.save(make_comparison(31), model_bytes=None, image_bytes=None, owner=name, model_name=name)
    assert [r.run_id for r in store.list_runs(model=name, owner=name, method="%")] == []
    assert [r.run_id for r in store.list_runs(model=name, owner=name)] == [run_id]


# -- deletion ------------------------------------------------------------------------------------


def test_only_the_owner_may_delete(store):
    run_id = save(store, make_comparison(40), owner="ada")
    for stranger in ("bob", None, "ADA"):
        with pytest.raises(NotRunOwner) as info:
            store.delete(run_id, requester=stranger)
        assert isinstance(info.value, PermissionError) and isinstance(info.value, WorkbenchError)
    assert store.load(run_id).owner == "ada"
    store.delete(run_id, requester="ada")
    with pytest.raises(RunNotFound):
        store.load(run_id)
    with pytest.raises(RunNotFound):
        store.delete(run_id, requester="ada")
    assert blob_files(store) == set()  # no other run used its blobs


def test_a_run_without_owner_may_be_deleted_by_anyone_and_shared_blobs_stay(store):
    comparison = make_comparison(41)
    kept = save(store, comparison, owner="ada")
    gone = save(store, comparison)  # same arrays, same uploads
    files = blob_files(store)
    store.delete(gone, requester="bob")
    assert blob_files(store) == files
    assert_same(store.load(kept), comparison)


def test_damaged_blob_is_reported(store):
    run_id = save(store, make_comparison(42))
    with store.engine.connect() as conn:
        table = store_module.run_blobs_table
        digest = conn.execute(sa.select(table.c.sha256).where(table.c.run_id == run_id, table.c.role == "map/0/0")).scalar_one()
    store.blob_path(digest).write_bytes(b"not the array")
    with pytest.raises(RunDamaged, match="restore the data directory"):
        store.load(run_id)


# -- privacy -------------------------------------------------------------------------------------


def jpeg_with_exif() -> bytes:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam Inc"  # Make
    exif[0x0131] = "SecretSoftware 1.0"  # Software
    exif[0x0112] = 6  # orientation: rotate 90
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 0.0)  # GPS latitude
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def png_with_text() -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "SecretPerson")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_exif_and_text_metadata_are_not_stored(store):
    uploads = [jpeg_with_exif(), png_with_text()]
    assert b"SecretCam" in uploads[0] and b"SecretPerson" in uploads[1]
    run_id = store.save(make_comparison(50), model_bytes=None, image_bytes=uploads, model_name="net")
    stored = store.image_bytes(run_id)
    for upload, data in zip(uploads, stored):
        assert data.startswith(b"\x89PNG")
        for secret in (b"SecretCam", b"SecretSoftware", b"SecretPerson", b"Exif", b"eXIf", b"tEXt", b"iTXt", b"zTXt"):
            assert secret not in data
        with Image.open(io.BytesIO(data)) as im:
            assert len(im.getexif()) == 0 and "exif" not in im.info
        # the pixels are those the workbench decoded, rotation included
        assert np.array_equal(load_image(data).pixels, load_image(upload).pixels)
    assert load_image(stored[0]).pixels.shape[:2] == (48, 32)
    # and the raw upload never reached the blob store
    for path in store.blob_dir.glob("??/*"):
        assert b"SecretCam" not in path.read_bytes() and b"SecretPerson" not in path.read_bytes()


def test_image_count_must_match(store):
    with pytest.raises(WorkbenchError, match="3 image uploads"):
        store.save(make_comparison(51), model_bytes=None, image_bytes=[png_bytes(0)] * 3, model_name="net")
    assert store.list_runs() == []


# -- defaults and links --------------------------------------------------------------------------


def test_defaults_come_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    monkeypatch.setenv("WORKBENCH_CONFIG", str(tmp_path / "absent.toml"))
    with RunStore() as store:
        run_id = save(store, make_comparison(60))
        assert (tmp_path / "from-env" / "workbench.sqlite3").is_file()
        assert store.blob_dir == (tmp_path / "from-env" / "blobs").resolve()
        assert store.load(run_id).run_id == run_id
    with RunStore() as again:  # a second process sees the same runs
        assert [r.run_id for r in again.list_runs()] == [run_id]
        with again.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.mark.parametrize(
    "base_url, base_path, expected",
    [
        ("https://wb.example.org", None, "https://wb.example.org/?run={id}"),
        ("https://wb.example.org/", "", "https://wb.example.org/?run={id}"),
        ("https://wb.example.org", "workbench", "https://wb.example.org/workbench/?run={id}"),
        ("https://wb.example.org/", "/workbench/", "https://wb.example.org/workbench/?run={id}"),
        ("https://wb.example.org", "/team//workbench", "https://wb.example.org/team/workbench/?run={id}"),
        ("https://wb.example.org/workbench/", "workbench", "https://wb.example.org/workbench/?run={id}"),
    ],
)
def test_share_link_normalises_slashes(base_url, base_path, expected):
    run_id = secrets.token_urlsafe(24)
    assert share_link(run_id, base_url=base_url, base_path=base_path) == expected.format(id=run_id)


def test_share_link_defaults_to_the_public_base_url(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("WORKBENCH_PUBLIC_BASE_URL", "https://interp.internal/")
    run_id = secrets.token_urlsafe(24)
    assert share_link(run_id, base_path="wb") == f"https://interp.internal/wb/?run={run_id}"


# -- several replicas on one data directory, and revoked links --------------------------------------


def test_with_a_grace_period_a_sweep_spares_fresh_blobs_and_removes_old_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_BLOB_GRACE_SECONDS", "3600")
    with RunStore(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'runs.sqlite3'}") as store:
        fresh = store._put_blob(b"written by a save on another host, not referenced yet")
        old = store._put_blob(b"left by a save that died yesterday")
        os.utime(store.blob_path(old), (time.time() - 86400, time.time() - 86400))
        assert store.cleanup(retention_days=30)["blobs_deleted"] == 1
        assert store.blob_path(fresh).is_file() and not store.blob_path(old).exists()
        # reusing an old blob marks it in use: a sweep elsewhere spares it while the save finishes
        os.utime(store.blob_path(fresh), (time.time() - 86400, time.time() - 86400))
        store._put_blob(b"written by a save on another host, not referenced yet")
        assert store.cleanup(retention_days=30)["blobs_deleted"] == 0


def test_a_blob_swept_by_another_host_before_the_commit_is_written_back(store, monkeypatch):
    """flock does not reach other hosts: simulate their sweep removing every blob between write and commit."""
    written: list[Path] = []
    put = store._put_blob

    def recorded(data):
        digest = put(data)
        written.append(store.blob_path(digest))
        return digest

    engine = store.engine

    class SweptBeforeCommit:
        def begin(self):
            for path in written:
                path.unlink(missing_ok=True)
            return engine.begin()

        def __getattr__(self, name):
            return getattr(engine, name)

    monkeypatch.setattr(store, "_put_blob", recorded)
    monkeypatch.setattr(store, "engine", SweptBeforeCommit())
    original = make_comparison(40)
    run_id = save(store, original)
    monkeypatch.setattr(store, "engine", engine)
    assert_same(store.load(run_id), original)


def test_revoking_a_link_moves_the_run_to_a_new_id(store):
    original = make_comparison(41)
    run_id = save(store, original, owner="ada@example.org")
    with pytest.raises(store_module.NotRunOwner):
        store.revoke_link(run_id, requester="eve@example.org")
    new_id = store.revoke_link(run_id, requester="ada@example.org")
    assert new_id != run_id and store_module.is_valid_run_id(new_id)
    with pytest.raises(RunNotFound, match="not available"):
        store.load(run_id)
    assert not store.exists(run_id) and store.exists(new_id) and store.owner(new_id) == "ada@example.org"
    moved = store.load(new_id)
    assert_same(moved, original)
    assert moved.run_id == new_id and store.model_bytes(new_id) == b"model-weights"
    assert [r.run_id for r in store.list_runs()] == [new_id]


def test_a_workspace_is_kept_until_cleanup_and_opens_only_for_its_owner(store):
    from workbench import session, workspaces

    ws = session.Workspace()
    entry = session.add_image(ws, png_bytes(4), "mine.png")
    ws.left_out = {entry.id}
    from workbench import metrics

    maps = {"saliency": np.random.default_rng(4).random((1, 8, 8)).astype(np.float32)}
    evaluation = metrics.evaluate(None, entry.image.pixels[None, :8, :8], [0], maps, ["sparseness", "complexity"], image_names=["mine.png"])
    ws.evaluations.put("evaluation-key", evaluation)
    workspace_id = workspaces.new_id()
    workspaces.save(store, workspace_id, ws, "ada@example.org")
    restored, notes = workspaces.load(store, workspace_id, "ada@example.org")
    assert notes == [] and list(restored.images) == [entry.id] and restored.left_out == {entry.id}
    assert restored.evaluations.get("evaluation-key").to_dict() == evaluation.to_dict(), "the evaluation comes back"
    assert workspaces.fingerprint(restored) == workspaces.fingerprint(ws)
    assert np.array_equal(restored.images[entry.id].image.pixels, entry.image.pixels)
    assert workspaces.load(store, workspace_id, "eve@example.org") is None, "another user's workspace"
    assert workspaces.load(store, workspace_id, None) is None
    assert workspaces.load(store, "../../etc/passwd", None) is None

    blobs = blob_files(store)
    assert blobs, "the pixels are a blob"
    assert store.cleanup(retention_days=30)["blobs_deleted"] == 0, "a fresh workspace and its blobs stay"
    report = store.cleanup(retention_days=1, now=time.time() + 3 * DAY)
    assert report["blobs_deleted"] == len(blobs) and store.load_workspace(workspace_id) is None
