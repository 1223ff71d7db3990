"""The device path, checked on the CPU: what crosses from the model's device to the host per request.

An instrumented torch adapter counts every byte its ``to_host`` hands over, and a torch function
mode fails any other way a tensor could reach the host (``.item()``, ``.numpy()``, ``.cpu()``,
``float(t)``, ``bool(t)``, ``np.asarray(t)``...) while an explainer runs. On a GPU these are the
transfers; on the CPU they are the same calls, so the CPU run is the proxy for the device.

For every method the bytes are at most the final maps and channel arrays plus a few numbers per
image (targets, scores), and they do not change with steps, samples or channels. SHAP is the one
exception by design: shap's Partition explainer ranks regions on the host by every output of every
masked image, so its scores (not its images) cross, max_evals x classes per image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import explainers
from workbench.adapters.torch_adapter import TorchAdapter

SIZE = (16, 16, 3)
# per image: target (int64), target score, reference score, a finiteness flag: 64 bytes is ample
NUMBERS_PER_IMAGE = 64
HOST_CALLS = {"item", "numpy", "tolist", "cpu", "__float__", "__int__", "__bool__", "__index__", "__array__"}


class NoHiddenTransfers(TorchFunctionMode):
    """Fails a tensor-to-host call made outside the adapter's ``to_host``."""

    def __init__(self, adapter):
        super().__init__()
        self.adapter = adapter
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_CALLS and not self.adapter.in_to_host:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


class CountingAdapter(TorchAdapter):
    in_to_host = False

    def to_host(self, array):
        self.in_to_host = True
        try:
            return super().to_host(array)
        finally:
            self.in_to_host = False


def small_cnn(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, channels, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, 5),
    ).eval()
    with torch.no_grad():
        model[-1].weight.abs_()
    return model


def adapter_for(channels: int = 6) -> CountingAdapter:
    return CountingAdapter(small_cnn(channels), name="counting", source_format="test", input_size=SIZE)


def images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(1).random((n, *SIZE), dtype=np.float32)


# each method at a small and a larger amount of work: the bytes must not change between them
WORK = {
    "gradcam": ({}, {}),
    "gradcam++": ({}, {}),
    "scorecam": ({"batch_size": 2}, {"batch_size": 5}),  # more channels: test_cam_bytes_do_not_grow_with_the_layers_channels
    "saliency": ({}, {}),
    "smoothgrad": ({"samples": 2}, {"samples": 9}),
    "integrated_gradients": ({"steps": 4}, {"steps": 17}),
    "expected_gradients": ({"samples": 3}, {"samples": 14}),
    "occlusion": ({"window": 8, "stride": 8}, {"window": 4, "stride": 2}),
}


def run(adapter, name, params, targets=None):
    batch = images()
    adapter.layers()  # validation and layer tracing, once per model, are not part of a request
    adapter.host_bytes = 0
    with NoHiddenTransfers(adapter) as mode:
        results = explainers.get(name).explain(adapter, batch, targets, params=params, seed=3)
    return results, adapter.host_bytes, mode.seen


def final_bytes(results) -> int:
    return sum(r.map.nbytes + (r.channels.nbytes if r.channels is not None else 0) for r in results)


def test_every_device_method_is_in_the_table():
    device_methods = {n for n, cls in explainers.REGISTRY.items() if not getattr(cls, "needs_attention", False)} - {"shap"}
    assert device_methods == set(WORK)


@pytest.mark.parametrize("name", list(WORK))
@pytest.mark.parametrize("given_targets", [False, True])
def test_only_the_final_maps_and_a_few_numbers_per_image_reach_the_host(name, given_targets):
    adapter = adapter_for()
    targets = [0, 2, 4] if given_targets else None
    small, large = WORK[name]
    results, bytes_small, hidden = run(adapter, name, small, targets)
    assert hidden == [], f"{name} moved tensors to the host outside to_host: {hidden}"
    assert final_bytes(results) <= bytes_small <= final_bytes(results) + NUMBERS_PER_IMAGE * len(results), bytes_small
    results_large, bytes_large, hidden = run(adapter, name, large, targets)
    assert hidden == []
    assert bytes_large == bytes_small, f"{name}: {bytes_small} bytes with {small}, {bytes_large} with {large}"
    assert results_large[0].evaluations > results[0].evaluations or name in ("gradcam", "gradcam++", "saliency", "scorecam")


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "scorecam"])
def test_cam_bytes_do_not_grow_with_the_layers_channels(name):
    _, narrow, _ = run(adapter_for(channels=4), name, WORK[name][0], [0, 1, 2])
    _, wide, _ = run(adapter_for(channels=32), name, WORK[name][0], [0, 1, 2])
    assert narrow == wide


def test_shap_hands_over_scores_not_images():
    adapter = adapter_for()
    results, sent, hidden = run(adapter, "shap", {"max_evals": 40, "batch_size": 10}, [0, 2, 4])
    assert hidden == []
    classes, evaluations = 5, results[0].evaluations
    scores = len(results) * evaluations * classes * 4
    assert sent <= final_bytes(results) + scores + NUMBERS_PER_IMAGE * len(results)
    image_bytes = int(np.prod(SIZE)) * 4
    assert sent < len(results) * evaluations * image_bytes / 2  # far below sending the masked images


def test_the_hidden_transfer_guard_can_fail():
    adapter = adapter_for()
    with NoHiddenTransfers(adapter) as mode:
        float(torch.ones(()) * 2)
        torch.ones(2).numpy()
    assert mode.seen == ["__float__", "numpy"]
