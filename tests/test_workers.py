"""Model workers: a model lives in its own process; limits, crashes and kills cost one line, not the server.

The worker tests use the zoo's small shapes CNNs. Memory figures of this (the server) process are
read from /proc: its peak resident memory is reset before the refused upload and read after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import model_zoo
from workbench import engine, session, workers
from workbench.images import load_image
from workbench.store import RunStore
from workbench.workers import LimitExceeded

from worker_functions import allocate, input_shape, slow

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 240
MB = 2**20
TEST_MEMORY_MB = 2500  # a worker with torch, keras and shap imported holds ~1.2 GiB
# intake's static size check refuses the bomb below before any forward pass; with it raised out of
# the way, the worker's memory limit is what must refuse it (the backstop for what static checks miss)
STATIC_CHECKS_OFF = "100000"


def zoo_built() -> bool:
    return all(e.weights.is_file() for e in model_zoo.entries() if e.name.startswith("shapes-cnn")) and (
        model_zoo.SAMPLES_DIR / "index.json"
    ).is_file()


needs_zoo = pytest.mark.skipif(not zoo_built(), reason="model zoo not built (python -m model_zoo.train)")


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)


def own_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def reset_peak() -> int:
    """Reset this process's peak resident memory (VmHWM) to now; -> resident memory now."""
    Path("/proc/self/clear_refs").write_text("5")
    return own_status("VmRSS")


def zoo_key(name: str) -> session.ModelKey:
    return session.ModelKey(sha256=f"zoo:{name}", filename=name)


def sample_images(n: int = 2):
    return [load_image(s.image.read_bytes(), s.image.name) for s in model_zoo.samples()[:n]]


def bomb_keras(tmp_path: Path) -> bytes:
    """An 18 KB .keras that passes the archive and config checks and whose forward pass allocates
    ~4.4 GB per image: UpSampling2D(size=(300, 300)) on a 64 x 64 x 3 input (the static tensor-size
    check refuses it unless WORKBENCH_MAX_TENSOR_MB is raised)."""
    script = textwrap.dedent(
        f"""
        import keras
        x = keras.Input((64, 64, 3))
        y = keras.layers.UpSampling2D(size=(300, 300))(x)
        y = keras.layers.GlobalAveragePooling2D()(y)
        y = keras.layers.Dense(3)(y)
        keras.Model(x, y).save({str(tmp_path / "bomb.keras")!r})
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300, capture_output=True)
    return (tmp_path / "bomb.keras").read_bytes()


# --------------------------------------------------------------------------- the worker itself
@needs_zoo
def test_model_lives_in_its_worker_and_generic_calls_run_there():
    adapter = session.load_in_worker(zoo_key("shapes-cnn-torch"), None)
    assert isinstance(adapter, workers.RemoteAdapter) and adapter.worker_pid not in (None, os.getpid())
    assert adapter.input_size == (64, 64, 3) and adapter.num_classes == 6 and adapter.default_cam_layer()
    assert workers.call(adapter, input_shape) == (64, 64, 3)
    view = adapter.view(preset="imagenet")
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    direct = session.load_base(zoo_key("shapes-cnn-torch"), None)
    assert np.allclose(adapter.predict(x), direct.predict(x), atol=1e-5)
    assert view.preset.name == "imagenet" and adapter.preset.name == "unit", "views send their own preset"


@needs_zoo
def test_memory_limit_stops_the_worker_with_one_line_and_the_model_reloads(monkeypatch):
    monkeypatch.setenv("WORKBENCH_WORKER_MEMORY_MB", str(TEST_MEMORY_MB))
    adapter = session.load_in_worker(zoo_key("shapes-cnn-torch"), None)
    first = adapter.worker_pid
    before = reset_peak()
    with pytest.raises(LimitExceeded) as caught:
        workers.call(adapter, allocate, 6000)
    message = str(caught.value)
    assert "\n" not in message and "memory limit of 2,500 MiB" in message and "WORKBENCH_WORKER_MEMORY_MB" in message
    assert caught.value.limit == "memory" and caught.value.figure > TEST_MEMORY_MB
    assert own_status("VmHWM") - before < 300 * MB, "the server process itself never held the allocation"
    x = np.zeros((1, 64, 64, 3), np.float32)
    assert adapter.predict(x).shape == (1, 6), "the next call reloads the model on a fresh worker"
    assert adapter.worker_pid not in (None, first)


@needs_zoo
def test_time_limit_stops_a_request(monkeypatch):
    monkeypatch.setenv("WORKBENCH_EXPLAIN_TIMEOUT_S", "5")
    adapter = session.load_in_worker(zoo_key("shapes-cnn-torch"), None)
    with pytest.raises(LimitExceeded, match=r"over 5 s.*WORKBENCH_EXPLAIN_TIMEOUT_S") as caught:
        workers.call(adapter, slow, 30.0)
    assert "\n" not in str(caught.value)
    assert adapter.predict(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 6), "the model reloads for the next call"


def test_input_side_limit_is_refused_before_loading(monkeypatch):
    monkeypatch.setenv("WORKBENCH_MAX_INPUT_SIDE", "512")
    key = session.ModelKey(sha256="x", filename="m.onnx", input_size=(20000, 20000, 3))
    with pytest.raises(LimitExceeded, match="20000 pixels on a side.*WORKBENCH_MAX_INPUT_SIDE"):
        session.load_in_worker(key, b"not loaded")


def test_limits_come_from_settings(monkeypatch):
    monkeypatch.setenv("WORKBENCH_WORKER_MEMORY_MB", "3000")
    monkeypatch.setenv("WORKBENCH_LOAD_TIMEOUT_S", "45")
    limits = workers.Limits.from_settings(session.get_settings())
    assert (limits.memory_mb, limits.load_seconds) == (3000, 45.0)
    monkeypatch.delenv("WORKBENCH_WORKER_MEMORY_MB")
    assert workers.Limits.from_settings(session.get_settings()).memory_mb >= 4096, "automatic: a fraction of the machine, with a floor"


# --------------------------------------------------------------------------- a bomb, through the CLI and the app
@needs_zoo
@pytest.mark.slow
def test_forward_pass_bomb_is_refused_by_the_cli_with_one_line(tmp_path):
    path = tmp_path / "bomb.keras"
    path.write_bytes(bomb_keras(tmp_path))
    env = {**os.environ, "WORKBENCH_WORKER_MEMORY_MB": str(TEST_MEMORY_MB), "WORKBENCH_MAX_TENSOR_MB": STATIC_CHECKS_OFF}
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "inspect", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "memory limit of 2,500 MiB" in lines[0] and "WORKBENCH_WORKER_MEMORY_MB" in lines[0], lines[0]


@needs_zoo
@pytest.mark.slow
def test_forward_pass_bomb_is_refused_in_the_app_and_quick_start_still_works(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_WORKER_MEMORY_MB", str(TEST_MEMORY_MB))
    monkeypatch.setenv("WORKBENCH_MAX_TENSOR_MB", STATIC_CHECKS_OFF)
    data = bomb_keras(tmp_path)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    before = reset_peak()
    at.file_uploader(key="models_upload").set_value(("bomb.keras", data, "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value.replace("\\", "") for e in at.error]  # the page escapes Markdown in messages
    assert len(errors) == 1 and "\n" not in errors[0] and "bomb.keras" not in session.Workspace().models, errors
    assert "memory limit of 2,500 MiB" in errors[0] and "WORKBENCH_WORKER_MEMORY_MB" in errors[0], errors[0]
    assert own_status("VmHWM") - before < 300 * MB
    at.button(key="models_quick_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) == 4, "the Quick start maps render after the refusal"


# --------------------------------------------------------------------------- killed mid-run
@needs_zoo
def test_worker_killed_mid_run_one_line_next_run_works_nothing_half_saved(monkeypatch, tmp_path):
    original = engine.Engine._explain
    killed = []

    def kill_on_first_progress(this, method, *args, progress, cancel, doing):
        def report(fraction, message):
            if not killed:
                killed.append(this.adapter.worker_pid)
                os.kill(this.adapter.worker_pid, signal.SIGKILL)
            progress(fraction, message)

        return original(this, method, *args, progress=report, cancel=cancel, doing=doing)

    monkeypatch.setattr(engine.Engine, "_explain", kill_on_first_progress)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.button(key="models_quick_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert killed, "the worker was killed while it explained"
    failed = [s.label for s in at.status if "stopped" in s.label]
    assert len(failed) == 1 and "SIGKILL" in failed[0] and "\n" not in failed[0], [s.label for s in at.status]
    with RunStore() as store:
        assert store.list_runs() == [], "nothing half-saved is listed"

    monkeypatch.setattr(engine.Engine, "_explain", original)
    at.run()  # the page's next run sees the failed run ended and enables Run again
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.image) == 4
    with RunStore() as store:
        assert len(store.list_runs()) == 1


# --------------------------------------------------------------------------- concurrency
@needs_zoo
@pytest.mark.slow
@pytest.mark.parametrize("name", ["shapes-cnn-torch", "shapes-cnn-keras"])
def test_two_threads_gradcam_and_saliency_fifty_calls_each(name):
    adapter = session.load_in_worker(zoo_key(name), None)
    images = sample_images(2)
    lookup = {im.sha256: im for im in images}
    record = engine.ModelRecord.of(adapter, source="zoo", filename=name)
    requests = {
        m: engine.ExplainRequest.build(record, [engine.ImageRef(im.name, im.sha256) for im in images], [m])
        for m in ("gradcam", "saliency")
    }
    expected = {m: [row[0].map for row in engine.Engine(adapter, lookup).run(req).results] for m, req in requests.items()}
    failures, mismatches = [], []

    def session_thread(method: str) -> None:
        for _ in range(50):
            try:
                comparison = engine.Engine(adapter, lookup).run(requests[method])
            except Exception as error:  # noqa: BLE001 - counted, the assertion names it
                failures.append(f"{method}: {type(error).__name__}: {error}")
                continue
            if not all(np.array_equal(row[0].map, want) for row, want in zip(comparison.results, expected[method])):
                mismatches.append(method)

    threads = [threading.Thread(target=session_thread, args=(m,)) for m in ("gradcam", "saliency")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not any(t.is_alive() for t in threads)
    assert failures == [] and mismatches == []


# --------------------------------------------------------------------------- the server never imports a framework
@needs_zoo
@pytest.mark.slow
def test_the_app_process_never_imports_torch_or_tensorflow():
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({APP!r}, default_timeout={TIMEOUT}).run()
        at.button(key="models_quick_start").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert len(at.image) == 4, "a comparison was run"
        assert at.session_state["workspace"].models, "a model is loaded"
        loaded = sorted(m for m in ("torch", "tensorflow", "keras", "shap", "numba") if m in sys.modules)
        print("LOADED", loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout, result.stdout


@needs_zoo
def test_the_cli_parent_never_imports_torch_or_tensorflow(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from workbench.cli import main
        code = main(["explain", "--model", "shapes-cnn-torch", "--image", {str(model_zoo.samples()[0].image)!r},
                     "--method", "gradcam", "--out", {str(tmp_path / "out")!r}])
        loaded = sorted(m for m in ("torch", "tensorflow", "keras", "shap") if m in sys.modules)
        print("CODE", code, "LOADED", loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "CODE 0 LOADED []" in result.stdout, result.stdout + result.stderr[-2000:]
    assert (tmp_path / "out" / "summary.json").is_file()


# --------------------------------------------------------------------------- cancel reaches the worker
def reaped(pid: int) -> bool:
    """The process is gone and waited for: no /proc entry, or (pid reused) not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state != "Z"


@needs_zoo
def test_cancel_stops_a_running_worker_call_within_two_seconds_and_the_model_reloads():
    adapter = session.load_in_worker(zoo_key("shapes-cnn-torch"), None)
    first = adapter.worker_pid
    asked = threading.Event()
    threading.Timer(1.0, asked.set).start()
    started = time.monotonic()
    with pytest.raises(workers.Cancelled) as caught:
        workers.call(adapter, slow, 60.0, cancel=asked.is_set)
    late = time.monotonic() - started - 1.0
    assert late < 2.0, f"the call ended {late:.2f} s after cancel"
    assert "\n" not in str(caught.value)
    assert reaped(first), "the cancelled worker is killed and waited for"
    x = np.zeros((1, 64, 64, 3), np.float32)
    assert adapter.predict(x).shape == (1, 6), "the next call reloads the model on a fresh worker"
    assert adapter.worker_pid not in (None, first)


@needs_zoo
def test_a_progress_callback_that_raises_abandons_the_worker_so_no_stale_answer_is_read(monkeypatch):
    """Streamlit interrupts a script for a rerun by raising at its next st call, e.g. inside a progress
    callback: the worker, still computing, must never answer the next request with the old result."""
    adapter = session.load_in_worker(zoo_key("shapes-cnn-torch"), None)
    first = adapter.worker_pid

    class Interrupted(BaseException):
        pass

    def progress(fraction, message):
        raise Interrupted()

    images = sample_images(1)
    request = engine.ExplainRequest.build(
        engine.ModelRecord.of(adapter, source="zoo", filename="shapes-cnn-torch"),
        [engine.ImageRef(im.name, im.sha256) for im in images], ["saliency"],
    )
    with pytest.raises(Interrupted):
        engine.Engine(adapter, {im.sha256: im for im in images}, forward_seconds=0.001).run(request, progress)
    assert reaped(first)
    assert workers.call(adapter, input_shape) == (64, 64, 3), "the next call gets its own answer"
    assert adapter.worker_pid not in (None, first)


@needs_zoo
def test_engine_cancel_returns_the_methods_that_finished_flagged_as_cancelled(monkeypatch):
    from worker_functions import explain_stalling_on

    adapter = session.load_in_worker(zoo_key("shapes-cnn-torch"), None)
    first = adapter.worker_pid
    images = sample_images(2)
    lookup = {im.sha256: im for im in images}
    request = engine.ExplainRequest.build(
        engine.ModelRecord.of(adapter, source="zoo", filename="shapes-cnn-torch"),
        [engine.ImageRef(im.name, im.sha256) for im in images], ["gradcam", "saliency", "integrated_gradients"],
    )
    original = engine.Engine._explain

    def stalling(self, method, *args, progress, cancel, doing):
        self.explainer_calls += 1
        return workers.call(self.adapter, explain_stalling_on, "saliency", method, *args, progress=progress, cancel=cancel, doing=doing)

    monkeypatch.setattr(engine.Engine, "_explain", stalling)
    asked = {}

    def progress(fraction, message):
        if "stalling" in message and "at" not in asked:
            asked["at"] = time.monotonic() + 0.5  # cancel half a second into the stalled method

    runner = engine.Engine(adapter, lookup, forward_seconds=0.001)
    comparison = runner.run(request, progress, cancel=lambda: "at" in asked and time.monotonic() >= asked["at"])
    late = time.monotonic() - asked["at"]
    assert late < 2.0, f"run returned {late:.2f} s after cancel"
    assert comparison.methods == ("gradcam",) and len(comparison.results) == 2
    assert comparison.request.method_names == ("gradcam",), "the provenance says what the maps are"
    stopped = comparison.stopped
    assert stopped is not None and stopped.running == "saliency" and stopped.not_run == ("integrated_gradients",)
    assert engine.stopped_line(stopped) == (
        "Cancelled: 1 of 3 methods finished; Saliency was running and Integrated Gradients did not start (not in this run)."
    )
    assert reaped(first)

    from workbench import export

    with RunStore() as store:  # saved, it stays marked as partial: in the list, when reopened and in its report
        run_id = store.save(comparison, model_bytes=None, image_bytes=None, model_name="shapes-cnn-torch")
        assert [run.stopped for run in store.list_runs()] == ["cancelled"]
        loaded = store.load(run_id)
    assert loaded.stopped == stopped and loaded.methods == ("gradcam",) and loaded.request == comparison.request
    assert "<strong>Partial run.</strong> Cancelled: 1 of 3 methods finished" in export.html_report(loaded)

    monkeypatch.setattr(engine.Engine, "_explain", original)
    again = engine.Engine(adapter, lookup, forward_seconds=0.001).run(request)
    assert again.methods == request.method_names and again.stopped is None, "the next request on the model works"
    assert np.array_equal(again.results[0][0].map, comparison.results[0][0].map)


# --------------------------------------------------------------------------- shap's kernels compile once per data directory
SHAP_IN_A_WORKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    import numpy as np
    from workbench import warmup
    from workbench.workers.limits import worker_env
    import os
    os.environ.update(worker_env())
    warmup.warm_up_shap()
    import shap
    masker = shap.maskers.Image("blur(8,8)", (12, 12, 3))
    f = lambda z: z.reshape(len(z), -1)[:, :3].astype(np.float64) * np.array([1.0, -2.0, 0.5])
    np.random.seed(0)
    values = shap.PartitionExplainer(f, masker)(np.random.default_rng(1).random((1, 12, 12, 3)) * 255, max_evals=60,
                                                 batch_size=10, outputs=np.array([1]), silent=True).values
    kernels = [(sys.modules[a], b) for a, b in warmup.CACHED_KERNELS]
    kernels += [(sys.modules["workbench.shap_kernels"], b) for b in ("_multi_output_identity", "_lower_credit_2d")]
    hits = sum(sum(getattr(m, n).stats.cache_hits.values()) for m, n in kernels)
    misses = sum(sum(getattr(m, n).stats.cache_misses.values()) for m, n in kernels)
    print("HITS", hits, misses, "VALUES", repr(np.asarray(values).ravel().tolist()))
    """
)


@pytest.mark.slow
def test_shap_kernels_are_compiled_once_per_data_directory_with_the_same_results(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    env = {**os.environ, "WORKBENCH_DATA_DIR": str(tmp_path / "data")}
    env.pop("NUMBA_CACHE_DIR", None)

    def run() -> tuple[int, int, str]:
        result = subprocess.run([sys.executable, "-c", SHAP_IN_A_WORKER.format(root=str(ROOT))], env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        line = next(x for x in result.stdout.splitlines() if x.startswith("HITS"))
        return int(line.split()[1]), int(line.split()[2]), line.split(" VALUES ")[1]

    first_hits, first_misses, first = run()
    assert first_hits == 0 and first_misses >= 5, "the first worker compiles all five kernels"
    assert (tmp_path / "data" / "numba-cache").is_dir(), "... and keeps the code"
    second_hits, second_misses, second = run()
    assert second_misses == 0 and second_hits == first_misses, "the next one loads every kernel and compiles none"
    assert second == first, "the same SHAP values from the cached kernels"


def test_a_taken_spare_is_replaced_once_idle_not_at_the_next_page_run(monkeypatch):
    """The app calls ensure_spare() on every page run; right after a load took the spare, a new spare
    (framework imports and shap's compile on the same cores) must wait for replenish(), not start then."""
    from workbench.workers import process

    class FakeWorker:
        alive, busy = True, False

        def __init__(self, limits):
            self.limits = limits

        def close(self):
            self.alive = False

    monkeypatch.setattr(process, "ModelWorker", FakeWorker)
    monkeypatch.setattr(process, "SPARE_AFTER_IDLE_S", 0.3)
    pool = process.WorkerPool()
    limits = process.Limits.from_settings()
    pool.ensure_spare(limits)
    spare = pool.take(limits)
    assert pool.started == 1 and spare.limits == limits
    for _ in range(3):  # page runs while the model loads and explains
        pool.ensure_spare(limits)
    assert pool.started == 1, "no spare started beside the run that took the last one"
    pool.replenish(limits)
    pool.ensure_spare(limits)
    assert pool.started == 1
    for _ in range(100):  # bounded: the replenisher starts the next spare once idle
        if pool.started == 2:
            break
        time.sleep(0.05)
    assert pool.started == 2
    pool.ensure_spare(limits)
    assert pool.started == 2, "the replenished spare is the one kept"
