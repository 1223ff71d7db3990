"""PyTorch's own formats: torch.export programs (.pt2) when they load without unpickling or running their code,
and TorchScript under the operator's trusted-formats setting with every method that needs no hooks."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import explainers
from workbench.errors import LayerError, TrustedFormatRequired
from workbench.intake import load_model, sniff_model
from workbench.settings import Settings

GRADIENT_AND_PERTURBATION = ("saliency", "integrated_gradients", "smoothgrad", "occlusion", "shap", "expected_gradients")
SMALL = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 4},
    "occlusion": {"window": 8, "stride": 8},
    "shap": {"max_evals": 40, "batch_size": 40},
    "expected_gradients": {"samples": 4},
}


def tiny_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)
    ).eval()


def pt2_bytes(module, *, dynamic: bool = False) -> bytes:
    x = torch.rand(2 if dynamic else 1, 3, 16, 16)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(module, (x,), dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def rewrite(data: bytes, change) -> bytes:
    """A copy of the archive with ``change(name, bytes) -> bytes | None`` applied to every member (None: keep)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content = source.read(info.filename)
            changed = change(info.filename, content)
            target.writestr(info, content if changed is None else changed)
    return out.getvalue()


class Plant:
    """Unpickling this makes a directory: proof that a payload ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("dynamic", [False, True])
def test_exported_program_loads_and_runs_the_gradient_methods(dynamic):
    module = tiny_cnn()
    data = pt2_bytes(module, dynamic=dynamic)
    assert sniff_model(data) == "torch_export"
    adapter = load_model(data, filename="model.pt2", device="cpu")
    assert adapter.source_format == "torch_export" and adapter.input_size == (16, 16, 3)
    batch = adapter.test_input(3)
    with torch.no_grad():
        expected = module(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(adapter.predict(batch), expected, rtol=1e-5, atol=1e-6)
    (ig,) = explainers.get("integrated_gradients").explain(adapter, batch[:1], params={"steps": 32})
    assert ig.completeness_ratio < 0.02 and np.ptp(ig.map) > 0
    with pytest.raises(LayerError, match="torch.export program is one flat graph"):
        explainers.get("gradcam").explain(adapter, batch[:1])


def test_torch_export_load_runs_a_planted_payload_and_intake_refuses_it_first(tmp_path):
    data = pt2_bytes(tiny_cnn())
    marker = tmp_path / "payload-ran"
    planted = rewrite(data, lambda name, _: pickle.dumps(Plant(marker), protocol=2) if "sample_inputs" in name else None)
    # the premise, read from torch 2.13's loader: a sample-inputs file that fails weights_only=True is
    # unpickled again with weights_only=False
    with pytest.raises(Exception):  # the payload returns no tensors: the load fails, after it ran
        torch.export.load(io.BytesIO(planted))
    assert marker.is_dir(), "torch.export.load ran the planted payload"
    marker.rmdir()
    with pytest.raises(TrustedFormatRequired, match="sample inputs are pickled Python objects"):
        load_model(planted, filename="evil.pt2", device="cpu")
    assert not marker.exists()


def _edit_json(data: bytes, suffix: str, edit) -> bytes:
    def change(name, content):
        if name.endswith(suffix):
            document = json.loads(content)
            edit(document)
            return json.dumps(document).encode()
        return None

    return rewrite(data, change)


def test_exported_programs_that_would_run_their_code_are_refused():
    data = pt2_bytes(tiny_cnn())

    def pickled_weight(doc):
        first = next(iter(doc["config"].values()))
        first["use_pickle"] = True

    def os_system(doc):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

    def guards(doc):
        doc["guards_code"] = ["__import__('os').system('true')"]

    def sympy_eval(doc):
        doc["range_constraints"] = {"__import__('os')": {"min_val": 0, "max_val": None}}

    cases = [
        (_edit_json(data, "model_weights_config.json", pickled_weight), "pickled Python object"),
        (_edit_json(data, "models/model.json", os_system), "torch.os.system"),
        (_edit_json(data, "models/model.json", guards), "guard code"),
        (_edit_json(data, "models/model.json", sympy_eval), "shape expression"),
        (_with_member(data, "model/data/aotinductor/model/model.so", b"\x7fELF"), "AOTInductor"),
    ]
    for planted, reason in cases:
        with pytest.raises(TrustedFormatRequired, match=reason):
            load_model(planted, filename="model.pt2", device="cpu")


def _with_member(data: bytes, name: str, content: bytes) -> bytes:
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr(name, content)
    return out.getvalue()


def test_torchscript_runs_every_gradient_and_perturbation_method_when_trusted():
    module = tiny_cnn()
    scripted = io.BytesIO()
    torch.jit.save(torch.jit.script(module), scripted)
    adapter = load_model(
        scripted.getvalue(), filename="model.pth", input_size=(16, 16, 3), device="cpu", settings=Settings(trusted_formats=True)
    )
    assert adapter.source_format == "torchscript"
    batch = adapter.test_input(1)
    background = adapter.test_input(4, seed=1)
    for name in GRADIENT_AND_PERTURBATION:
        (result,) = explainers.get(name).explain(adapter, batch, params=SMALL.get(name), background=background)
        assert np.all(np.isfinite(result.map)) and np.ptp(result.map) > 0, name
    for name in ("gradcam", "gradcam++", "scorecam"):
        with pytest.raises(LayerError, match="TorchScript models take no Python hooks"):
            explainers.get(name).explain(adapter, batch)
