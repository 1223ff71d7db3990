"""Saved runs in the app: a share link opened in a second session shows the saved arrays without calling
an explainer; bad links show a message; Re-run computes the same maps; the Runs page lists, filters,
opens and deletes (owner only, with login); the daily retention cleanup; the exports.

One module-scoped run (an uploaded model, a zoo sample, Grad-CAM + Integrated Gradients + SHAP) is
computed once through the app and shared by the tests that need real maps; the others build small
comparisons from random arrays. Every test writes into its own data directory, never ./data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

import model_zoo
from workbench import session, sharing
from workbench.errors import RunNotFound
from workbench.result import Attribution, Comparison, ExplainedImage
from workbench.settings import get_settings
from workbench.store import NotRunOwner, RunStore

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 240
POSTGRES_URL = os.environ.get("WORKBENCH_TEST_POSTGRES_URL", "")
AUTH = {
    "auth": {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "test-cookie-secret-test-cookie-secret",
        "client_id": "workbench",
        "client_secret": "secret",
        "server_metadata_url": "https://login.example.org/.well-known/openid-configuration",
    }
}

needs_zoo = pytest.mark.skipif(
    not (model_zoo.get("shapes-cnn-torch").weights.is_file() and (model_zoo.SAMPLES_DIR / "index.json").is_file()),
    reason="model zoo not built (python -m model_zoo.train)",
)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_link(run_id, **attributes) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["run"] = run_id
    for name, value in attributes.items():
        setattr(at, name, value)
    return at.run()


def assert_same_arrays(a: Comparison, b: Comparison) -> None:
    assert a.methods == b.methods and a.seed == b.seed
    for image_a, image_b in zip(a.images, b.images, strict=True):
        assert (image_a.name, image_a.target) == (image_b.name, image_b.target)
        assert np.array_equal(image_a.pixels, image_b.pixels)
    for row_a, row_b in zip(a.results, b.results, strict=True):
        for x, y in zip(row_a, row_b, strict=True):
            assert x.map.dtype == y.map.dtype and x.map.tobytes() == y.map.tobytes()
            assert (x.channels is None) == (y.channels is None)
            if x.channels is not None:
                assert x.channels.tobytes() == y.channels.tobytes()
            assert x.summary() == y.summary()


def small_comparison(model: str, methods=("gradcam", "saliency"), *, seed: int = 0, created: float | None = None) -> Comparison:
    """A comparison of random arrays on a 16 x 16 image: no model involved."""
    rng = np.random.default_rng(seed)
    pixels = rng.random((16, 16, 3), dtype=np.float32)
    image = ExplainedImage(name=f"img{seed}.png", sha256=hashlib.sha256(pixels.tobytes()).hexdigest(), pixels=pixels, target=1, target_label="circle")
    row = tuple(
        Attribution(method=m, map=rng.standard_normal((16, 16)).astype(np.float32), target=1, target_label="circle", target_score=0.5,
                    signed=m != "gradcam", params={}, seconds=0.25, evaluations=2, device="cpu", seed=seed)
        for m in methods
    )
    return Comparison(model={"name": model, "fingerprint": f"fp-{model}", "labels": ["square", "circle"]}, images=(image,),
                      methods=tuple(methods), results=(row,), seed=seed, versions={"numpy": np.__version__},
                      created=time.time() if created is None else created)


def save_small(store: RunStore, model: str, methods=("gradcam", "saliency"), *, owner=None, seed=0, created=None) -> str:
    comparison = small_comparison(model, methods, seed=seed, created=created)
    return store.save(comparison, model_bytes=None, image_bytes=None, owner=owner, model_name=model)


@pytest.fixture()
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    return tmp_path / "data"


# --------------------------------------------------------------------------- one real run, computed once
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """Session A: upload the zoo's torch weights (.safetensors + architecture), add a sample, Run the
    three default methods. -> the link read from the page, the saved comparison and the compute time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_DATA_DIR", str(tmp_path_factory.mktemp("shared") / "data"))
        patch.delenv("WORKBENCH_DATABASE_URL", raising=False)
        at = ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
        weights = model_zoo.get("shapes-cnn-torch").weights.read_bytes()
        at.selectbox(key="models_architecture").set_value("shapes-cnn").run()
        at.file_uploader(key="models_upload").set_value(("shapes.safetensors", weights, "application/octet-stream")).run()
        ok(at)
        at.switch_page("pages/images.py").run()
        at.multiselect(key="images_samples").set_value([model_zoo.samples()[0].name]).run()
        ok(at.button(key="images_add_samples").click().run())
        ok(at.switch_page("pages/explain.py").run())
        started = time.perf_counter()
        ok(at.button(key="explain_run").click().run())
        compute_seconds = time.perf_counter() - started
        assert not at.error, [e.value for e in at.error]
        [code] = at.code
        link = code.value
        run_id = link.rsplit("?run=", 1)[1]
        ws = at.session_state["workspace"]
        saved = ws.opened.get(run_id).comparison
        yield {"link": link, "run_id": run_id, "comparison": saved, "compute_seconds": compute_seconds, "author": at}


@needs_zoo
def test_a_link_opened_in_another_session_shows_the_saved_arrays_without_explaining(saved_run, explain_calls):
    run_id = saved_run["run_id"]
    assert saved_run["link"] == f"http://localhost:8501/?run={run_id}", "AppTest has no browser address: the default"
    author = saved_run["author"]
    assert len(author.get("download_button")) == 4 + 1 + 1, "grid, NPZ, provenance, HTML, TensorBoard; and the image's maps"

    spy = explain_calls
    started = time.perf_counter()
    at = ok(open_link(run_id))
    reopen_seconds = time.perf_counter() - started
    assert not at.error, [e.value for e in at.error]
    assert spy.calls == 0 and at.session_state["workspace"].explainer_runs == 0
    assert any("Read-only view of a saved run" in c.value for c in at.caption)
    assert len(at.image) == 4  # the image and three maps, as on Explain & compare
    titles = [json.loads(el.proto.spec).get("title") for el in at.get("vega_lite_chart")]
    assert any(isinstance(t, str) and t.startswith("Agreement") for t in titles) and "Time per method" in titles
    assert at.dataframe, "the completeness table"
    assert [c.value for c in at.code] == [saved_run["link"]]

    opened = at.session_state["workspace"].opened.get(run_id).comparison
    assert_same_arrays(opened, saved_run["comparison"])
    with RunStore() as store:  # and the same as what the store holds
        assert_same_arrays(store.load(run_id), saved_run["comparison"])
    print(f"\ncompute (Run, 3 methods): {saved_run['compute_seconds']:.2f} s; reopen (load + render): {reopen_seconds:.2f} s")

    # display options are the reader's own; they recompute nothing
    at.toggle(key="display_positive").set_value(True).run()
    at.segmented_control(key="shared_metric").set_value("top-k % IoU").run()
    assert ok(at) and spy.calls == 0 and len(at.image) == 4


@needs_zoo
def test_maps_computed_for_other_settings_are_saved_on_request(saved_run, explain_calls):
    """Fewer methods than were run: the maps come from the session's cache, and saving them is a choice."""
    at = saved_run["author"]
    spy = explain_calls
    ok(at.multiselect(key="explain_methods").set_value(["gradcam", "integrated_gradients"]).run())
    assert len(at.image) == 3 and not at.code, "shown, not saved"
    ok(at.button(key="explain_save").click().run())
    [code] = at.code
    run_id = code.value.rsplit("?run=", 1)[1]
    assert run_id != saved_run["run_id"] and spy.calls == 0
    with RunStore() as store:
        assert store.load(run_id).methods == ("gradcam", "integrated_gradients")
    ok(at.multiselect(key="explain_methods").set_value(list(saved_run["comparison"].methods)).run())
    assert [c.value for c in at.code] == [saved_run["link"]], "the full run keeps its own link"


@needs_zoo
def test_the_exports_of_a_saved_run(saved_run):
    comparison = saved_run["comparison"]
    files = {e.kind: e for e in sharing.exports(comparison, share_url=saved_run["link"])}
    assert set(files) == {"grid", "npz", "provenance", "html"}
    assert files["grid"].build().startswith(b"\x89PNG\r\n\x1a\n")
    with np.load(io.BytesIO(files["npz"].build()), allow_pickle=False) as npz:
        for j, method in enumerate(comparison.methods):
            assert np.array_equal(npz[f"0__{method}__map"], comparison.results[0][j].map)
    assert json.loads(files["provenance"].build())["run_id"] == saved_run["run_id"]
    report = files["html"].build()
    assert "data:image/png;base64," in report and saved_run["link"] in report
    assert all(e.file_name.startswith(f"run-{saved_run['run_id'][:12]}") for e in files.values())


@needs_zoo
def test_rerun_loads_the_stored_model_and_images_and_computes_the_same_maps(saved_run, explain_calls):
    at = ok(open_link(saved_run["run_id"]))
    spy = explain_calls
    ok(at.button(key="shared_rerun").click().run())
    assert not at.error, [e.value for e in at.error]
    assert spy.calls == 3, "the three methods ran again, on Explain & compare"
    assert any("Re-run of saved run" in i.value for i in at.info)
    ws = at.session_state["workspace"]
    assert ws.model.name == "shapes.safetensors" and ws.model.data is not None and len(ws.images) == 1
    assert at.multiselect(key="explain_methods").value == list(saved_run["comparison"].methods)
    [code] = at.code
    new_id = code.value.rsplit("?run=", 1)[1]
    assert new_id != saved_run["run_id"], "the re-run is saved as a run of its own"
    again, before = ws.opened.get(new_id).comparison, saved_run["comparison"]
    for row_a, row_b in zip(again.results, before.results):
        for a, b in zip(row_a, row_b):
            np.testing.assert_allclose(a.map, b.map, rtol=1e-5, atol=1e-6, err_msg=a.method)


def test_malformed_and_unknown_links_show_a_clear_message(data_dir):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    bad = [
        "../../etc/passwd",
        "..%2F..%2Fworkbench.sqlite3",
        "/etc/passwd",
        "'; DROP TABLE runs; --",
        '"><script>alert(1)</script>',
        "A" * 65,
        "x" * 5000,
        "",
        "run id with spaces",
        secrets.token_urlsafe(24),  # well formed, but no such run
    ]
    for run_id in bad:
        at.query_params["run"] = run_id
        ok(at.run())
        assert len(at.error) == 1, (run_id, [e.value for e in at.error])
        message = at.error[0].value
        assert "not valid" in message or "not available" in message, message
        assert run_id[:20] not in message or not run_id, "the id is not echoed back"
        assert not at.image and not at.code


def test_without_a_public_url_links_use_the_address_the_browser_used(data_dir, monkeypatch):
    monkeypatch.delenv("WORKBENCH_PUBLIC_BASE_URL", raising=False)
    with RunStore() as store:
        run_id = save_small(store, "net-a")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["run"] = run_id
    at.context["url"] = "https://10.0.0.7:8765/saved"
    ok(at.run())
    assert [c.value for c in at.code] == [f"https://10.0.0.7:8765/?run={run_id}"]
    monkeypatch.setenv("WORKBENCH_PUBLIC_BASE_URL", "https://tools.example.org")
    ok(at.run())
    assert [c.value for c in at.code] == [f"https://tools.example.org/?run={run_id}"], "the operator's setting wins"


def test_share_link_follows_the_public_url_and_base_path(monkeypatch):
    from streamlit import config

    monkeypatch.setenv("WORKBENCH_PUBLIC_BASE_URL", "https://tools.example.org/")
    run_id = secrets.token_urlsafe(24)
    original = config.get_option("server.baseUrlPath")
    config.set_option("server.baseUrlPath", "/workbench/")
    try:
        assert sharing.link(run_id) == f"https://tools.example.org/workbench/?run={run_id}"
    finally:
        config.set_option("server.baseUrlPath", original)


# --------------------------------------------------------------------------- the Runs page
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not POSTGRES_URL, reason="WORKBENCH_TEST_POSTGRES_URL is not set"))])
def app_store(request, data_dir, monkeypatch):
    """The store the app will use: SQLite in the data directory, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        with RunStore() as store:
            yield store
        return
    schema = f"wb_app_{secrets.token_hex(6)}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    monkeypatch.setenv("WORKBENCH_DATABASE_URL", url)
    try:
        with RunStore() as store:
            yield store
    finally:
        sharing.run_store().engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def open_buttons(at: AppTest) -> list[str]:
    return [b.key.removeprefix("runs_open_") for b in at.button if b.key and b.key.startswith("runs_open_")]


def test_runs_page_lists_newest_first_filters_opens_and_deletes(app_store):
    now = time.time()
    old = save_small(app_store, "net-a", ("gradcam", "saliency"), seed=1, created=now - 60)
    new = save_small(app_store, "net-b", ("integrated_gradients",), seed=2, created=now)
    owned = save_small(app_store, "net-a", ("shap",), seed=3, created=now - 30, owner="bob@example.org")

    at = ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    ok(at.switch_page("pages/runs.py").run())
    assert open_buttons(at) == [new, owned, old]
    assert not any(t.label == "Only my runs" for t in at.toggle), "no login, no owners to filter by"
    ok(at.selectbox(key="runs_model").set_value("net-a").run())
    assert open_buttons(at) == [owned, old]
    ok(at.selectbox(key="runs_method").set_value("saliency").run())
    assert open_buttons(at) == [old]
    ok(at.selectbox(key="runs_model").set_value(None).run())
    ok(at.selectbox(key="runs_method").set_value(None).run())

    # someone else's run: the store refuses, the page says why
    ok(at.button(key=f"runs_delete_{owned}").click().run())
    assert any("Only the person who saved this run" in e.value for e in at.error)
    assert open_buttons(at) == [new, owned, old]
    # a run without an owner: anyone may delete it (login is off)
    ok(at.button(key=f"runs_delete_{old}").click().run())
    assert open_buttons(at) == [new, owned] and not at.error
    with pytest.raises(RunNotFound):
        app_store.load(old)

    ok(at.button(key=f"runs_open_{new}").click().run())
    assert at.query_params.get("run") == new
    assert any("Read-only view of a saved run" in c.value for c in at.caption)
    assert len(at.image) == 2  # the image and its one map


@needs_zoo
def test_login_gates_the_app_records_the_owner_and_only_the_owner_deletes(data_dir):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets = dict(AUTH)
    at.user = {"is_logged_in": False}
    at.query_params["run"] = secrets.token_urlsafe(24)
    ok(at.run())
    assert [b.label for b in at.button] == ["Sign in"]
    assert "workspace" not in at.session_state, "nothing but the sign-in before login"
    assert any("open the link again" in c.value for c in at.caption)

    at.query_params.clear()
    at.user = {"is_logged_in": True, "email": "alice@example.org", "name": "Alice"}
    ok(at.run())
    assert any("Signed in as alice@example.org" == re.sub(r"\\(.)", r"\1", c.value) for c in at.sidebar.caption)

    # a real run, saved with the signed-in user as its owner
    ws: session.Workspace = at.session_state["workspace"]
    session.load_zoo(ws, "shapes-cnn-torch", loader=session.load_base)
    session.add_sample(ws, model_zoo.samples()[0])
    ok(at.switch_page("pages/explain.py").run())
    ok(at.multiselect(key="explain_methods").set_value(["gradcam"]).run())
    ok(at.button(key="explain_run").click().run())
    mine = at.code[0].value.rsplit("?run=", 1)[1]
    store = sharing.run_store()
    bob = save_small(store, "net-b", seed=5, owner="bob@example.org")
    assert {r.run_id: r.owner for r in store.list_runs()} == {mine: "alice@example.org", bob: "bob@example.org"}

    ok(at.switch_page("pages/runs.py").run())
    assert open_buttons(at) == [mine], "with sign-in, a user lists their own runs"
    assert not any(t.label == "Only my runs" for t in at.toggle), "nothing but one's own to filter"
    ok(at.button(key=f"runs_delete_{mine}").click().run())
    assert open_buttons(at) == [] and not at.error
    with pytest.raises(NotRunOwner):
        store.delete(bob, requester="alice@example.org")


def signed_in_as(email: str, run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets = dict(AUTH)
    at.user = {"is_logged_in": True, "email": email, "name": email.split("@")[0]}
    if run_id is not None:
        at.query_params["run"] = run_id
    return ok(at.run())


def test_with_sign_in_runs_are_private_links_open_them_and_the_owner_revokes_a_link(data_dir, monkeypatch):
    monkeypatch.setenv("WORKBENCH_OPERATORS", "Ops@Example.org")
    with RunStore() as store:
        alices = save_small(store, "net-a", owner="alice@example.org", seed=1)
        bobs = save_small(store, "net-b", owner="bob@example.org", seed=2)

    bob = signed_in_as("bob@example.org")
    ok(bob.switch_page("pages/runs.py").run())
    assert open_buttons(bob) == [bobs], "Alice's run is not listed for Bob"
    assert [o for o in bob.selectbox(key="runs_model").options] == ["All models", "net-b"], "nor its model's name"
    # Bob opens Alice's run through its link, the capability
    linked = signed_in_as("bob@example.org", alices)
    assert not linked.error, [e.value for e in linked.error]
    assert any("Read-only view of a saved run" in c.value for c in linked.caption) and len(linked.image) == 3

    alice = signed_in_as("alice@example.org")
    ok(alice.switch_page("pages/runs.py").run())
    assert open_buttons(alice) == [alices]
    ok(alice.button(key=f"runs_revoke_{alices}").click().run())
    assert not alice.error, [e.value for e in alice.error]
    [moved] = open_buttons(alice)
    assert moved != alices, "the run stays, under a new link"

    # the old link: not available, in Bob's session that had it open and in a fresh one
    for at in (ok(linked.run()), signed_in_as("bob@example.org", alices)):
        assert len(at.error) == 1 and "not available" in at.error[0].value, [e.value for e in at.error]
        assert not at.image
    again = signed_in_as("bob@example.org", moved)
    assert not again.error and len(again.image) == 3, "the new link works"

    # an operator lists everyone's runs and may narrow to their own; About says which mode is on
    ops = signed_in_as("ops@example.org")
    ok(ops.switch_page("pages/runs.py").run())
    assert open_buttons(ops) == [bobs, moved]
    assert any(t.label == "Only my runs" for t in ops.toggle)
    ok(ops.switch_page("pages/about.py").run())
    assert [m.value for m in ops.metric if m.label == "Sign-in"] == ["on"]
    assert any("you are an operator" in c.value for c in ops.caption)
    with RunStore() as store, pytest.raises(NotRunOwner):
        store.revoke_link(bobs, requester="alice@example.org")


# --------------------------------------------------------------------------- retention
def test_daily_cleanup_removes_old_runs_and_unreferenced_files_once_a_day(tmp_path):
    from workbench.settings import Settings

    store = RunStore(data_dir=tmp_path / "data")
    now = time.time()
    old = save_small(store, "net-a", seed=1, created=now - 40 * 86400)
    fresh = save_small(store, "net-a", seed=2, created=now)
    orphan = store.blob_path("ab" + "0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a save that failed")
    settings = Settings(retention_days=30)

    assert sharing.schedule_cleanup(store, settings, now=now)
    deadline = time.monotonic() + 30
    while (sharing.last_cleanup(store) or {}).get("finished") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    state = sharing.last_cleanup(store)
    assert state["error"] is None and state["report"]["runs_deleted"] == 1
    assert [r.run_id for r in store.list_runs()] == [fresh] and not orphan.exists()
    with pytest.raises(RunNotFound):
        store.load(old)
    assert not sharing.schedule_cleanup(store, settings, now=now + 3600), "once a day"
    assert not sharing.schedule_cleanup(store, Settings(retention_days=0), now=now + 2 * 86400), "0 keeps runs"
    assert not sharing.schedule_cleanup(store, Settings(retention_days=30, cleanup_in_app=False), now=now + 3 * 86400), (
        "a replica that is not the cleanup owner"
    )
    store.close()
