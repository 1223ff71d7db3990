"""The Evaluate section through AppTest: Grad-CAM + IG + SHAP on a zoo sample with its mask give the table
(with the random-map row), the deletion/insertion and randomisation curves and the mask; the evaluation is
saved with the run, reopened by its share link without computing, and in the JSON and HTML exports.
Masks uploaded on the Images page (``<stem>_mask.png`` beside the image, or the image's own uploader)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import model_zoo
from workbench import metrics, sharing
from workbench.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 300


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)


@pytest.fixture
def evaluate_calls(monkeypatch):
    """Counts evaluations sent to the model's worker (the app's only way to compute a metric; the
    metrics themselves, and the explainers they rerun on randomised copies, run in the worker)."""
    import workbench.evaluations
    import workbench.workers

    calls = []
    original = workbench.workers.call

    def counted(adapter, fn, *args, **kwargs):
        if fn is workbench.evaluations.evaluate_in_worker:
            calls.append([im.name for im in args[0].images])
        return original(adapter, fn, *args, **kwargs)

    monkeypatch.setattr(workbench.workers, "call", counted)
    return calls


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def chart_titles(at: AppTest) -> list[str]:
    titles = []
    for el in at.get("vega_lite_chart"):
        title = json.loads(el.proto.spec).get("title")
        titles.append(title.get("text") if isinstance(title, dict) else title or "")
    return titles


def table(at: AppTest):
    """The evaluation table: the one dataframe with a row per method and a column per metric."""
    [frame] = [d.value for d in at.dataframe if "method" in d.value.columns and "Deletion AUC" in d.value.columns]
    return frame


def open_explain_with_zoo_model_and_sample(at: AppTest, sample) -> None:
    """Load shapes-cnn-torch from the zoo, add one zoo sample, open Explain & compare."""
    ok(at.switch_page("pages/models.py").run())
    at.selectbox(key="models_zoo").set_value("shapes-cnn-torch")
    ok(at.button(key="models_zoo_load").click().run())
    ok(at.switch_page("pages/images.py").run())
    at.multiselect(key="images_samples").set_value([sample.name]).run()
    ok(at.button(key="images_add_samples").click().run())
    ok(at.switch_page("pages/explain.py").run())


@pytest.mark.slow
def test_evaluate_section_table_curves_mask_saved_and_reopened_without_computing(explain_calls, evaluate_calls):
    sample = model_zoo.samples()[0]
    at = ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    open_explain_with_zoo_model_and_sample(at, sample)
    assert at.multiselect(key="explain_methods").value == ["gradcam", "integrated_gradients", "shap"]
    ok(at.button(key="explain_run").click().run())
    [code] = at.code
    run_id = code.value.rsplit("?run=", 1)[1]

    # before running: every metric chosen, the cost in model passes shown
    assert at.multiselect(key="explain_metrics").value == list(metrics.names())
    assert any("model passes" in c.value and "Randomisation" in c.value for c in at.caption)
    assert explain_calls.calls == 3 and not evaluate_calls
    ok(at.button(key="explain_evaluate").click().run())
    # the reruns on 5 randomised copies per method happen in the model's worker: no explain request from here
    assert len(evaluate_calls) == 1 and explain_calls.calls == 3

    rows = table(at)
    assert list(rows["method"]) == ["Grad-CAM", "Integrated Gradients", "SHAP (Partition)", "random map (baseline)"]
    for cls in metrics.REGISTRY.values():
        assert cls.title in rows.columns
    assert rows["Pointing game"].notna().all(), "the zoo sample's mask is used"
    assert rows["Randomisation (ρ, all layers random)"].isna().tolist() == [False, False, False, True]
    titles = chart_titles(at)
    assert {"Deletion AUC", "Insertion AUC", "Randomisation: ρ with the original map"} <= set(titles)
    assert any(i.proto.imgs and "Ground-truth mask" in (i.proto.imgs[0].caption or "") for i in at.image)
    assert "explain_evaluate" not in [b.key for b in at.button], "computed: nothing left to run"
    # nothing reruns on the next interaction: the evaluation is cached with the comparison
    ok(at.run())
    assert len(evaluate_calls) == 1

    # saved with the run, in the exports
    with RunStore() as store:
        saved, masks = store.load_evaluation(run_id)
    assert saved["metrics"] == list(metrics.names()) and masks[0] is not None and masks[0].dtype == bool
    ws = at.session_state["workspace"]
    opened = ws.opened.get(run_id)
    exported = {e.kind: e for e in sharing.exports(opened.comparison, share_url=code.value, evaluation=opened.evaluation)}
    provenance = json.loads(exported["provenance"].build())
    assert {r["metric"] for r in provenance["evaluation"]["results"]} == set(metrics.names())
    report = exported["html"].build()
    assert "<h2>Evaluation</h2>" in report and "random" in report and "<svg" in report

    # the share link in another session: the same table and curves, nothing computed
    explain_calls.calls = 0
    other = AppTest.from_file(APP, default_timeout=TIMEOUT)
    other.query_params["run"] = run_id
    ok(other.run())
    assert explain_calls.calls == 0 and len(evaluate_calls) == 1
    again = table(other)
    assert list(again["method"]) == list(rows["method"])
    np.testing.assert_allclose(again["Deletion AUC"].to_numpy(float), rows["Deletion AUC"].to_numpy(float))
    assert {"Deletion AUC", "Insertion AUC", "Randomisation: ρ with the original map"} <= set(chart_titles(other))


def test_an_evaluation_comes_back_with_its_workspace_after_a_reload(explain_calls, evaluate_calls):
    """A reload (a new session with the same ``?ws=``) shows the evaluation computed before it, computing nothing."""
    cheap = ["sparseness", "complexity"]  # computed from the maps alone: no model passes
    titles = [metrics.REGISTRY[m].title for m in cheap]

    def scores(at: AppTest):
        [frame] = [d.value for d in at.dataframe if "method" in d.value.columns and titles[0] in d.value.columns]
        return frame

    sample = model_zoo.samples()[0]
    at = ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    workspace_id = at.query_params["ws"]
    open_explain_with_zoo_model_and_sample(at, sample)
    at.multiselect(key="explain_methods").set_value(["gradcam", "saliency"]).run()
    ok(at.button(key="explain_run").click().run())
    at.multiselect(key="explain_metrics").set_value(cheap).run()
    ok(at.button(key="explain_evaluate").click().run())
    assert len(evaluate_calls) == 1
    before = scores(at)
    assert list(before["method"]) == ["Grad-CAM", "Saliency", "random map (baseline)"]
    ok(at.switch_page("pages/about.py").run())  # the next run stores what changed
    assert at.query_params["ws"] == workspace_id

    explain_calls.calls = 0
    again = AppTest.from_file(APP, default_timeout=TIMEOUT)  # the reload: a new session, the same URL
    again.query_params["ws"] = workspace_id
    ok(again.run())
    assert len(again.session_state["workspace"].evaluations._items) == 1
    ok(again.switch_page("pages/explain.py").run())
    again.multiselect(key="explain_methods").set_value(["gradcam", "saliency"]).run()
    ok(again.multiselect(key="explain_metrics").set_value(cheap).run())
    assert "explain_evaluate" not in [b.key for b in again.button], "the stored evaluation is shown: nothing to run"
    assert len(evaluate_calls) == 1 and explain_calls.calls == 0
    after = scores(again)
    assert list(after["method"]) == list(before["method"])
    for title in titles:
        np.testing.assert_allclose(after[title].to_numpy(float), before[title].to_numpy(float))


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_masks_uploaded_beside_images_on_the_images_page():
    rng = np.random.default_rng(0)
    photo = _png((rng.random((20, 30, 3)) * 255).astype(np.uint8))
    mask = np.zeros((20, 30), np.uint8)
    mask[5:9, 10:20] = 7  # any non-zero value is in the mask
    at = ok(AppTest.from_file(APP, default_timeout=TIMEOUT).run())
    ok(at.switch_page("pages/images.py").run())
    at.file_uploader(key="images_upload").set_value(
        [("cat_mask.png", _png(mask), "image/png"), ("cat.png", photo, "image/png")]
    ).run()
    ok(at)
    [entry] = at.session_state["workspace"].images.values()
    assert entry.name == "cat.png" and entry.mask is not None and entry.mask.sum() == 40
    # the image's own uploader replaces it; a mask of another size is refused with its message
    other = np.zeros((20, 30), np.uint8)
    other[0, 0] = 255
    at.file_uploader(key=f"images_mask_{entry.id[:16]}").set_value(("m.png", _png(other), "image/png")).run()
    assert not at.exception
    assert at.session_state["workspace"].images[entry.id].mask.sum() == 1
    at.file_uploader(key=f"images_mask_{entry.id[:16]}").set_value(("wrong.png", _png(np.ones((4, 4), np.uint8)), "image/png")).run()
    assert any("the mask is 4x4 but its image is 30x20" in e.value for e in at.error)
    assert at.session_state["workspace"].images[entry.id].mask.sum() == 1


def test_an_evaluation_is_stored_beside_its_run_replaced_and_deleted_with_it(tmp_path):
    import hashlib
    import time

    from workbench.errors import RunNotFound
    from workbench.result import Attribution, Comparison, ExplainedImage

    rng = np.random.default_rng(3)
    pixels = rng.random((8, 8, 3), dtype=np.float32)
    image = ExplainedImage(name="a.png", sha256=hashlib.sha256(pixels.tobytes()).hexdigest(), pixels=pixels, target=0, target_label="x")
    maps = {m: rng.random((1, 8, 8)).astype(np.float32) for m in ("saliency", "gradcam")}
    row = tuple(Attribution(method=m, map=maps[m][0], target=0, target_label="x", target_score=1.0, signed=False, params={},
                            seconds=0.1, evaluations=1, device="cpu") for m in maps)
    comparison = Comparison(model={"name": "m"}, images=(image,), methods=tuple(maps), results=(row,), seed=0,
                            versions={}, created=time.time())
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    evaluation = metrics.evaluate(None, pixels[None], [0], maps, ["sparseness", "mask_energy"], masks=[mask], image_names=["a.png"])
    with RunStore(None, tmp_path / "data") as store:
        run_id = store.save(comparison, model_bytes=None, image_bytes=None, model_name="m")
        assert store.load_evaluation(run_id) == (None, [])
        store.save_evaluation(run_id, evaluation.to_dict(), [mask])
        data, masks = store.load_evaluation(run_id)
        assert metrics.Evaluation.from_dict(data).to_dict() == evaluation.to_dict()
        assert np.array_equal(masks[0], mask)
        fewer = metrics.evaluate(None, pixels[None], [0], maps, ["complexity"], image_names=["a.png"])
        store.save_evaluation(run_id, fewer.to_dict(), [None])
        data, masks = store.load_evaluation(run_id)
        assert data["metrics"] == ["complexity"] and masks == [None]
        assert store.load(run_id).methods == comparison.methods, "the comparison is untouched"
        # an evaluation computed before its comparison was saved joins the run once it has one
        import dataclasses

        from workbench import evaluations, session

        ws = session.Workspace()
        second = store.save(comparison, model_bytes=None, image_bytes=None, model_name="m")
        ws.opened.put(second, sharing.OpenedRun(dataclasses.replace(comparison, run_id=second)))
        evaluations.keep_with_run(ws, ws.opened.get(second).comparison, evaluation, [mask], store)
        assert store.load_evaluation(second)[0]["metrics"] == ["sparseness", "mask_energy"]
        assert sharing.saved_evaluation(ws, second) is evaluation
        store.delete(run_id, requester=None)
        with pytest.raises(RunNotFound):
            store.save_evaluation(run_id, fewer.to_dict())
        with pytest.raises(RunNotFound):
            store.load_evaluation(run_id)
