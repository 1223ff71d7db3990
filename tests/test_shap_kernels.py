"""The cacheable stand-ins for two of shap's numba kernels give shap's own results, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

shap = pytest.importorskip("shap")

from workbench import shap_kernels  # noqa: E402


@pytest.fixture
def shaps_own_kernels(monkeypatch):
    """shap's modules with its own two kernels in place (and put back as they were after the test)."""
    import shap.explainers._partition as partition
    import shap.utils._masked_model as masked_model

    for module, name in ((masked_model, "_build_fixed_multi_output"), (partition, "lower_credit")):
        current = getattr(module, name)
        monkeypatch.setattr(module, name, getattr(current, "shaps", current))
    return masked_model, partition


def partition_values(outputs: np.ndarray, n_outputs: int = 4) -> np.ndarray:
    masker = shap.maskers.Image("blur(6,6)", (14, 14, 3))
    weights = np.random.default_rng(3).normal(size=(14 * 14 * 3, n_outputs))

    def f(z):  # a non-linear model with several outputs, float32 like the workbench's
        flat = z.reshape(len(z), -1) / 255.0
        return np.tanh(flat @ weights / 20.0).astype(np.float32) + (flat[:, :n_outputs] ** 2).astype(np.float32)

    image = np.random.default_rng(1).random((1, 14, 14, 3)) * 255
    explainer = shap.PartitionExplainer(f, masker)
    return explainer(image, max_evals=300, batch_size=37, outputs=outputs, silent=True).values


@pytest.mark.parametrize("outputs", [np.array([2]), np.array([0, 3])])
def test_partition_values_are_bit_identical_with_the_cacheable_kernels(shaps_own_kernels, outputs):
    masked_model, partition = shaps_own_kernels
    theirs = partition_values(outputs)
    assert shap_kernels.install()
    assert getattr(masked_model._build_fixed_multi_output, "_workbench", False)
    assert getattr(partition.lower_credit, "_workbench", False)
    ours = partition_values(outputs)
    assert np.abs(theirs).max() > 0
    np.testing.assert_array_equal(ours, theirs)


def test_lower_credit_matches_shaps_recursion_on_a_deep_tree(shaps_own_kernels):
    _, partition = shaps_own_kernels
    masker = shap.maskers.Image("blur(4,4)", (9, 11, 3))
    clustering = masker.clustering
    M = 9 * 11 * 3
    rng = np.random.default_rng(5)
    start = rng.normal(size=(2 * M - 1, 3))
    theirs, ours = start.copy(), start.copy()
    partition.lower_credit(len(start) - 1, 0, M, theirs, clustering)
    shap_kernels._lower_credit_2d(len(start) - 1, 0, M, ours, clustering)
    assert not np.array_equal(theirs, start)
    np.testing.assert_array_equal(ours, theirs)


def test_other_links_and_arrays_go_to_shaps_own_code(shaps_own_kernels, monkeypatch):
    masked_model, partition = shaps_own_kernels
    called = []
    monkeypatch.setattr(shap_kernels, "_multi_output_identity", lambda *a: called.append("ours"))
    monkeypatch.setattr(shap_kernels, "_lower_credit_2d", lambda *a: called.append("ours"))
    shap_kernels.install()
    averaged, last = np.zeros((2, 2)), np.zeros((3, 2))
    outputs = np.full((3, 2), 0.25, np.float32)
    args = (averaged, last, outputs, np.array([0, 3, 3]), np.ones((2, 3), bool), np.array([3, 0]))
    masked_model._build_fixed_multi_output(*args, shap.links.logit, None)
    np.testing.assert_allclose(averaged[0], shap.links.logit(0.25), rtol=1e-6)
    values = np.array([0, 0, 4], np.float32)  # not shap's float64 values: its own (Python) recursion
    partition.lower_credit(2, 0, 2, values, np.array([[0.0, 1.0, 0.0, 2.0]]))
    np.testing.assert_array_equal(values, [2.0, 2.0, 4.0])
    assert called == []
    masked_model._build_fixed_multi_output(*args, shap.links.identity, None)
    assert called == ["ours"]


def test_one_output_values_get_the_same_credit(shaps_own_kernels):
    _, partition = shaps_own_kernels
    masker = shap.maskers.Image("blur(4,4)", (5, 6, 3))
    M = 5 * 6 * 3
    start = np.random.default_rng(2).normal(size=2 * M - 1)
    theirs, ours = start.copy(), start.copy()
    partition.lower_credit(len(start) - 1, 0, M, theirs, masker.clustering)
    shap_kernels.install()
    partition.lower_credit(len(start) - 1, 0, M, ours, masker.clustering)
    np.testing.assert_array_equal(ours, theirs)


def test_both_keep_their_compiled_code_on_disk():
    for kernel in (shap_kernels._multi_output_identity, shap_kernels._lower_credit_2d):
        assert type(kernel._cache).__name__ != "NullCache"


def test_workers_take_turns_compiling_and_a_cache_that_cannot_be_made_is_no_lock(tmp_path, monkeypatch):
    import threading
    import time

    from workbench import warmup

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    order, entered = [], threading.Event()

    def first():
        with warmup._compile_lock():
            entered.set()
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(10)
    with warmup._compile_lock():  # waits for the first to finish
        order.append("second in")
    thread.join(10)
    assert order == ["first done", "second in"]
    assert (tmp_path / "cache" / ".compile.lock").is_file()

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(blocked / "cache"))  # below a file: cannot be made
    with warmup._compile_lock():
        order.append("unlocked")
    assert order[-1] == "unlocked"
