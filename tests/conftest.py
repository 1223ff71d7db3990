"""Shared test setup: quiet TensorFlow, repo root importable, operator settings isolated per test."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


class ExplainCalls:
    """Counts explainer calls while a test runs: the engine's calls into a model's worker (one per
    method and run, the explainers themselves run in the worker process)."""

    def __init__(self, monkeypatch):
        import workbench.engine

        self.calls = 0
        original = workbench.engine.Engine._explain

        def counted(this, *args, **kwargs):
            self.calls += 1
            return original(this, *args, **kwargs)

        monkeypatch.setattr(workbench.engine.Engine, "_explain", counted)


@pytest.fixture
def explain_calls(monkeypatch) -> ExplainCalls:
    return ExplainCalls(monkeypatch)


def shap_called_directly(adapter, batch, targets, *, max_evals: int, batch_size: int, seed: int):
    """shap's own PartitionExplainer with the blur(128,128) image masker on ``adapter``, per image,
    seeded as the workbench seeds it: the reference a SHAP map is compared with.

    The torch and Keras twins are not compared with each other for SHAP: the Partition explainer
    expands the regions whose output changes most, so float-level differences between the twins can
    legitimately expand other regions within a fixed ``max_evals`` (seen: Pearson 0.994 on one run).
    Each twin equal to shap on that twin is the sound, deterministic property."""
    import numpy as np
    import shap

    preset = adapter.preset
    pixels = np.clip(preset.invert(batch), 0.0, 1.0) * 255.0

    def f(masked):
        return adapter.predict(preset.apply(np.asarray(masked, np.float32) / 255.0))

    explainer = shap.PartitionExplainer(f, shap.maskers.Image("blur(128,128)", pixels.shape[1:]))
    values, bases = [], []
    for i, target in enumerate(targets):
        saved = np.random.get_state()
        np.random.seed(seed)  # shap breaks ties with numpy's global generator
        try:
            explanation = explainer(
                pixels[i : i + 1], max_evals=max_evals, batch_size=batch_size, outputs=np.array([target]), silent=True
            )
        finally:
            np.random.set_state(saved)
        values.append(np.asarray(explanation.values[0, ..., 0]))
        bases.append(float(np.ravel(explanation.base_values)[0]))
    return values, bases


def pytest_collection_modifyitems(config, items):
    """WORKBENCH_TEST_ORDER=reverse runs the suite backwards, to catch tests that lean on an earlier test's state."""
    if os.environ.get("WORKBENCH_TEST_ORDER") == "reverse":
        items.reverse()
