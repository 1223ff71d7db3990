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
    """Counts Explainer.explain calls (every method runs through it) while a test runs."""

    def __init__(self, monkeypatch):
        import explainers.base

        self.calls = 0
        original = explainers.base.Explainer.explain

        def counted(this, *args, **kwargs):
            self.calls += 1
            return original(this, *args, **kwargs)

        monkeypatch.setattr(explainers.base.Explainer, "explain", counted)


@pytest.fixture
def explain_calls(monkeypatch) -> ExplainCalls:
    return ExplainCalls(monkeypatch)
