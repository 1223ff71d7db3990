"""ModelAdapter.randomised_copy: the primitive of the randomisation test, for PyTorch and Keras.

The loaded model must predict exactly as before; a copy is seeded (same seed, same copy), cascades from
the top (the classifier first) and runs every primitive the explainers use."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.errors import ParameterError
from workbench.intake import load_zoo_model


@pytest.fixture(scope="module", params=["shapes-cnn-torch", "shapes-cnn-keras"])
def adapter(request):
    return load_zoo_model(request.param, device="cpu")


def test_the_loaded_model_is_unchanged_and_the_copy_is_seeded(adapter):
    x = adapter.test_input(3)
    before = adapter.predict(x)
    names = adapter.randomisable_layers()
    assert names[0] == "fc" and names[-1] == "conv1"  # the classifier first, the first convolution last
    every = adapter.randomised_copy(len(names), seed=5)
    again = adapter.randomised_copy(len(names), seed=5)
    other = adapter.randomised_copy(len(names), seed=6)
    np.testing.assert_array_equal(adapter.predict(x), before)
    assert not np.allclose(every.predict(x), before, atol=1e-3)
    np.testing.assert_array_equal(every.predict(x), again.predict(x))
    assert not np.allclose(every.predict(x), other.predict(x), atol=1e-3)
    np.testing.assert_allclose(adapter.randomised_copy(0, seed=5).predict(x), before, atol=1e-6)
    assert every.fingerprint != adapter.fingerprint and every.lock is not adapter.lock
    # the copy answers every primitive, with the same layer names
    layer = adapter.default_cam_layer()
    assert every.layer_gradients(x, layer, [0, 1, 2]).gradients.shape == adapter.layer_gradients(x, layer, [0, 1, 2]).gradients.shape
    assert every.input_gradients(x, [0, 1, 2])[1].shape == x.shape
    np.testing.assert_array_equal(adapter.predict(x), before)


def test_only_the_top_layers_change(adapter):
    x = adapter.test_input(2)
    layer = adapter.default_cam_layer()  # conv4, below fc
    top = adapter.randomised_copy(1, seed=0)  # fc only
    np.testing.assert_allclose(top.layer_activations(x, layer)[1], adapter.layer_activations(x, layer)[1], atol=1e-6)
    assert not np.allclose(top.predict(x), adapter.predict(x), atol=1e-3)
    two = adapter.randomised_copy(2, seed=0)  # fc and conv4
    assert not np.allclose(two.layer_activations(x, layer)[1], adapter.layer_activations(x, layer)[1], atol=1e-3)


def test_counts_outside_the_layers_are_refused(adapter):
    with pytest.raises(ParameterError, match="between 0 and"):
        adapter.randomised_copy(len(adapter.randomisable_layers()) + 1, seed=0)
    with pytest.raises(ParameterError):
        adapter.randomised_copy(-1, seed=0)
