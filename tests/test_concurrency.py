"""Several sessions on one loaded model at once: Grad-CAM in one thread, Saliency in another,
on the same adapter. Grad-CAM registers a hook on the model for the length of its call; every
other call on that model must wait for it, or its forward pass runs through the hook (whose
detached output cuts the input out of the graph) and its gradients are wrong or fail."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import explainers
import model_zoo
from workbench.errors import ModelRejected
from workbench.intake import load_zoo_model

CALLS = 50
TWINS = ("shapes-cnn-torch", "shapes-cnn-keras")


def zoo_adapter(name: str):
    try:
        return load_zoo_model(name, device="cpu")
    except ModelRejected as exc:
        pytest.skip(f"zoo model {name} not available: {exc}")


def sample_batch(adapter, n: int = 2) -> np.ndarray:
    pixels = np.stack([model_zoo.load_sample(sample)[0] for sample in model_zoo.samples()[:n]])
    return adapter.prepare(pixels.astype(np.float32))


def run_together(adapter, batch, targets, calls: int) -> tuple[dict[str, list], dict[str, list[str]]]:
    """Grad-CAM and Saliency, ``calls`` times each, in two threads released at the same moment."""
    maps: dict[str, list] = {"gradcam": [], "saliency": []}
    failures: dict[str, list[str]] = {"gradcam": [], "saliency": []}
    start = threading.Barrier(2)

    def worker(method: str) -> None:
        explainer = explainers.get(method)
        start.wait(timeout=60)
        for _ in range(calls):
            try:
                maps[method].append([r.map for r in explainer.explain(adapter, batch, targets)])
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                failures[method].append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    threads = [threading.Thread(target=worker, args=(method,), daemon=True) for method in maps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in 10 minutes"
    return maps, failures


@pytest.mark.slow
@pytest.mark.parametrize("name", TWINS)
def test_gradcam_and_saliency_in_two_threads_on_one_model(name):
    adapter = zoo_adapter(name)
    batch = sample_batch(adapter)
    targets = [0, 0]
    alone = {method: [r.map for r in explainers.get(method).explain(adapter, batch, targets)] for method in ("gradcam", "saliency")}

    maps, failures = run_together(adapter, batch, targets, CALLS)

    assert failures == {"gradcam": [], "saliency": []}, {m: (len(f), f[:1]) for m, f in failures.items()}
    for method, runs in maps.items():
        assert len(runs) == CALLS
        for run in runs:
            for together, single in zip(run, alone[method]):
                np.testing.assert_allclose(together, single, rtol=1e-5, atol=1e-6 * float(np.abs(single).max()))
    # the model is left as it was: no hook or patched layer outlives the calls
    if adapter.framework == "pytorch":
        assert all(not module._forward_hooks for module in adapter.module.modules())
    else:
        assert all("call" not in layer.__dict__ for layer in adapter._layers_by_path.values())
