"""Looking inside models: per-layer statistics against hooks written here, planted dead channels and
NaNs, the explain refusal, the twins' tables, the architecture graph and the ``layers`` command."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
import keras
import tensorflow as tf

import explainers
import model_zoo
from workbench import architecture, inspection
from workbench.adapters.keras_adapter import KerasAdapter
from workbench.adapters.torch_adapter import TorchAdapter
from workbench.cli import main
from workbench.errors import LayerError, NonFiniteOutput

SAMPLES = [s.image for s in model_zoo.samples()[:2]] if (model_zoo.SAMPLES_DIR / "index.json").is_file() else []


# --------------------------------------------------------------------------- small models with planted faults
class Log(torch.nn.Module):
    def forward(self, x):
        return torch.log(x)


def torch_planted(dead: tuple[int, ...] = (), log: bool = False) -> torch.nn.Module:
    """[shift -> pool -> log ->] conv(3->6, 3x3) [-> relu] -> gap -> fc.

    Dead channels: the bias drives the ReLU to 0. ``log``: the image's mean minus 0.2 goes through a
    log, so NaN appears at the log for dark images only (random test inputs average 0.5)."""
    torch.manual_seed(0)
    layers = collections.OrderedDict()
    if log:
        shift = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            shift.weight.copy_(torch.eye(3)[:, :, None, None])
            shift.bias.fill_(-0.2)
        layers["shift"] = shift
        layers["pool"] = torch.nn.AvgPool2d(12)
        layers["log"] = Log()
    layers["conv"] = torch.nn.Conv2d(3, 6, 3, padding=1)
    if not log:  # (TensorFlow's compiled ReLU maps NaN to 0)
        layers["relu"] = torch.nn.ReLU()
    layers.update(gap=torch.nn.AdaptiveAvgPool2d(1), flat=torch.nn.Flatten(), fc=torch.nn.Linear(6, 4))
    model = torch.nn.Sequential(layers)
    with torch.no_grad():
        for c in dead:
            model.conv.bias[c] = -1e3  # weights are O(0.3) and inputs in [0, 1]: always negative before the ReLU
    return model


class KerasLog(keras.layers.Layer):
    def call(self, x):
        return keras.ops.log(x)


def keras_planted(dead: tuple[int, ...] = (), log: bool = False) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = inputs
    if log:
        shift = keras.layers.Conv2D(3, 1, name="shift")
        x = shift(x)
        shift.set_weights([np.eye(3, dtype=np.float32)[None, None], np.full(3, -0.2, np.float32)])
        x = keras.layers.AveragePooling2D(12, name="pool")(x)
        x = KerasLog(name="log")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(x)
    if not log:  # TensorFlow's compiled ReLU maps NaN to 0
        x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(x))
    kernel, bias = model.get_layer("conv").get_weights()
    bias[list(dead)] = -1e3
    model.get_layer("conv").set_weights([kernel, bias])
    return model


def adapter_for(framework: str, **planted):
    if framework == "torch":
        return TorchAdapter(torch_planted(**planted), name="planted", source_format="test", input_size=(12, 12, 3))
    return KerasAdapter(keras_planted(**planted), name="planted", source_format="test")


def bright_and_dark() -> np.ndarray:
    rng = np.random.default_rng(3)
    bright = 0.9 + 0.1 * rng.random((12, 12, 3), dtype=np.float32)
    dark = 0.1 * rng.random((12, 12, 3), dtype=np.float32)
    return np.stack([bright, dark])


# --------------------------------------------------------------------------- dead channels, NaN/Inf
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_planted_dead_channels_are_counted_exactly(framework):
    adapter = adapter_for(framework, dead=(1, 4))
    report = inspection.layer_report(adapter, adapter.test_input(4, seed=1))
    assert report.row("relu").dead_channels == 2
    assert report.row("conv").dead_channels == 0  # negative, not zero, before the ReLU
    healthy = inspection.layer_report(adapter_for(framework), adapter.test_input(4, seed=1))
    assert healthy.row("relu").dead_channels == 0
    assert report.first_nonfinite is None


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_first_nonfinite_names_the_log_layer_and_the_image(framework):
    adapter = adapter_for(framework, log=True)
    batch = bright_and_dark()
    report = inspection.layer_report(adapter, batch)
    assert report.first_nonfinite is not None
    assert (report.first_nonfinite.layer, report.first_nonfinite.image) == ("log", 1)
    assert report.row("pool").nan_count == 0 and report.row("log").nan_count == 3 and report.row("fc").nan_count == 4
    assert report.as_dict(["bright.png", "dark.png"])["first_nonfinite"] == {"layer": "log", "image": "dark.png"}
    # the finite image alone is fine
    assert inspection.find_first_nonfinite(adapter, batch[:1]) is None


@pytest.mark.parametrize("framework", ["torch", "keras"])
@pytest.mark.parametrize("method, targets", [("gradcam", None), ("saliency", [0, 0])])
def test_explaining_a_non_finite_prediction_is_refused_with_one_line(framework, method, targets):
    adapter = adapter_for(framework, log=True)
    with pytest.raises(NonFiniteOutput) as refused:
        explainers.get(method).explain(adapter, bright_and_dark(), targets)
    message = str(refused.value)
    assert "\n" not in message and "'log'" in message and "image 2" in message
    assert refused.value.layer == "log" and refused.value.image == 1
    # a finite image still explains
    (result,) = explainers.get(method).explain(adapter, bright_and_dark()[:1], None if targets is None else targets[:1])
    assert np.all(np.isfinite(result.map))


def test_results_and_the_refusal_cross_process_boundaries():
    """What runs in a model's worker process comes back through pickle intact."""
    import pickle

    adapter = adapter_for("torch", log=True)
    report = pickle.loads(pickle.dumps(inspection.layer_report(adapter, bright_and_dark())))
    assert report.first_nonfinite.layer == "log" and report.row("log").nan_count == 3
    assert set(report.channel_means) == {row.name for row in report.rows}
    arch = pickle.loads(pickle.dumps(architecture.architecture(adapter)))
    assert arch.node_for("log") == "log"
    with pytest.raises(NonFiniteOutput) as refused:
        inspection.refuse_non_finite(adapter, bright_and_dark())
    copy = pickle.loads(pickle.dumps(refused.value))
    assert (str(copy), copy.layer, copy.image) == (str(refused.value), "log", 1)


def test_finite_outputs_cost_no_tracing_pass(monkeypatch):
    adapter = adapter_for("torch")
    calls = []
    monkeypatch.setattr(adapter, "layer_statistics", lambda *a, **k: calls.append(1))
    explainers.get("saliency").explain(adapter, adapter.test_input(2))
    assert calls == []


# --------------------------------------------------------------------------- statistics against hooks written here
def direct_torch(module: torch.nn.Module, batch: np.ndarray, targets) -> dict[str, dict]:
    """Every module's output and d score / d output, with plain forward hooks and autograd."""
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, sub in module.named_modules():
        if name:

            def hook(_m, _i, out, name=name):
                outputs[name] = out
                return out.clone()  # so in-place ops downstream leave the kept output alone

            handles.append(sub.register_forward_hook(hook))
    try:
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).requires_grad_(True)
        out = module(x)
        score = out.gather(1, torch.as_tensor(targets)[:, None]).sum()
        names = list(outputs)
        grads = torch.autograd.grad(score, [outputs[n] for n in names], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    found = {}
    for name, grad in zip(names, grads):
        value = outputs[name].detach()
        if value.ndim == 4:
            value = value.permute(0, 2, 3, 1)
        v = value.double().numpy()
        g = np.zeros(len(batch)) if grad is None else grad.detach().double().reshape(len(batch), -1).norm(dim=1).numpy()
        found[name] = stats_of(v, g)
    return found


def stats_of(v: np.ndarray, grad_norms: np.ndarray) -> dict:
    channels = v.reshape(-1, v.shape[-1]) if v.ndim > 1 else v.reshape(-1, 1)
    return {
        "mean": v.mean(),
        "std": v.std(),
        "min": v.min(),
        "max": v.max(),
        "fraction_zero": np.mean(v == 0),
        "dead_channels": int(np.sum(np.all(channels == 0, axis=0))),
        "grad_norm": grad_norms.mean(),
    }


def assert_rows_match(report, expected: dict, names=None, rtol=1e-5):
    names = names or {row.name: row.name for row in report.rows}
    checked = 0
    for row in report.rows:
        if row.name not in names or names[row.name] not in expected:
            continue
        want = expected[names[row.name]]
        scale = max(abs(want["std"]), abs(want["mean"]), 1e-12)
        for key in ("mean", "std", "min", "max"):
            assert getattr(row, key) == pytest.approx(want[key], rel=rtol, abs=rtol * scale), (row.name, key)
        assert row.fraction_zero == pytest.approx(want["fraction_zero"], abs=1e-9), row.name
        assert row.dead_channels == want["dead_channels"], row.name
        assert row.grad_norm == pytest.approx(want["grad_norm"], rel=rtol, abs=1e-12), row.name
        checked += 1
    return checked


def zoo_batch(adapter, n=3):
    from workbench.analysis import model_inputs
    from workbench.images import load_image

    paths = [s.image for s in model_zoo.samples()[:n]]
    _, batch = model_inputs(adapter, [load_image(p.read_bytes(), p.name) for p in paths])
    return batch


needs_zoo = pytest.mark.skipif(not SAMPLES, reason="model zoo not built (python -m model_zoo.train)")


@needs_zoo
def test_torch_statistics_equal_hooks_on_resnet_mini():
    from workbench.intake import load_zoo_model

    adapter = load_zoo_model("resnet-mini-torch")
    batch = zoo_batch(adapter)
    report = inspection.layer_report(adapter, batch, [1, 2, 3])
    expected = direct_torch(adapter.module, batch, [1, 2, 3])
    assert assert_rows_match(report, expected) == len(expected) == len(report.rows)
    assert [r.name for r in report.rows] == [l.name for l in sorted(adapter.layers(), key=lambda l: l.order)]
    for module in adapter.module.modules():
        assert not module._forward_hooks
    assert all(p.grad is None for p in adapter.module.parameters())


def test_in_place_relu_gets_the_gradient_of_the_layer_before_it():
    torch.manual_seed(1)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(5, 4, 3), torch.nn.ReLU(inplace=True), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    )
    module.eval()
    adapter = TorchAdapter(module, name="inplace", source_format="test", input_size=(10, 10, 3))
    batch = adapter.test_input(2, seed=4)
    report = inspection.layer_report(adapter, batch, [0, 2])
    expected = direct_torch(module, batch, [0, 2])
    assert assert_rows_match(report, expected) == len(report.rows)
    assert report.row("1").min < 0 < report.row("2").fraction_zero  # the norm's output kept its negative values


@pytest.mark.slow
@needs_zoo
def test_keras_statistics_equal_a_probe_model_on_resnet_mini():
    from workbench.intake import load_zoo_model

    adapter = load_zoo_model("resnet-mini-keras")
    model = adapter.model
    batch = zoo_batch(adapter)
    targets = np.array([1, 2, 3], np.int32)
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [l.output for l in layers])
    x = tf.constant(batch)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        values = probe(x)
        score = tf.reduce_sum(tf.gather(values[-1], targets, axis=1, batch_dims=1))
    grads = tape.gradient(score, values, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    expected = {
        l.name: stats_of(v.numpy().astype(np.float64), tf.norm(tf.reshape(tf.cast(g, tf.float64), (3, -1)), axis=1).numpy())
        for l, v, g in zip(layers, values, grads)
    }
    report = inspection.layer_report(adapter, batch, targets)
    assert assert_rows_match(report, expected, rtol=1e-5) == len(expected) == len(report.rows)
    assert all("call" not in layer.__dict__ for layer in model.layers)


@pytest.mark.slow
@needs_zoo
def test_torch_and_keras_twins_give_the_same_table():
    from workbench.intake import load_zoo_model

    tables = {}
    for name in ("resnet-mini-torch", "resnet-mini-keras"):
        adapter = load_zoo_model(name)
        tables[name] = {row.name.replace(".", "_"): row for row in inspection.layer_report(adapter, zoo_batch(adapter, 2), [0, 4]).rows}
    torch_rows, keras_rows = tables["resnet-mini-torch"], tables["resnet-mini-keras"]
    common = sorted(set(torch_rows) & set(keras_rows))
    assert len(common) >= 50, common
    for name in common:
        a, b = torch_rows[name], keras_rows[name]
        squeezed = [tuple(d for d in row.output_shape if d != 1) for row in (a, b)]  # torch pools to 1x1xC, Keras to C
        assert squeezed[0] == squeezed[1] and a.parameters == b.parameters and a.dead_channels == b.dead_channels, name
        for key in ("mean", "std", "min", "max"):
            scale = max(abs(a.std), 1e-6)
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-4, abs=1e-4 * scale), (name, key)
        # Before the stem's max-pool the gradients differ where a window ties: the ReLU's zeros against
        # Keras' zero padding (PyTorch pads with -inf), so the gradient goes to a different tied position.
        before_pool = name in ("conv1", "bn1", "relu", "maxpool_pad")
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-2 if before_pool else 1e-4), name
        assert a.fraction_zero == pytest.approx(b.fraction_zero, abs=1e-4), name
    # a residual block's output is its last ReLU's, under both names
    assert torch_rows["layer4_1"].mean == torch_rows["layer4_1_relu2"].mean
    assert torch_rows["layer4_1_relu2"].mean == pytest.approx(keras_rows["layer4_1_out"].mean, rel=1e-4)


# --------------------------------------------------------------------------- weights, feature maps
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_weight_statistics_and_feature_maps(framework):
    adapter = adapter_for(framework, dead=(1,))
    rows = {row.name: row for row in inspection.weight_statistics(adapter)}
    assert set(rows) == {"conv", "fc"}
    conv = rows["conv"]
    assert conv.count == 3 * 3 * 3 * 6 + 6 and conv.histogram.sum() == conv.count
    assert conv.min == -1e3 and conv.norm >= 1e3
    batch = adapter.test_input(2, seed=2)
    fm = inspection.feature_maps(adapter, batch, "relu", k=4)
    assert fm.maps.shape == (2, 4, 12, 12) and fm.channels.shape == (2, 4)
    assert 1 not in fm.channels  # the dead channel is never among the strongest
    assert np.all(np.diff(fm.means, axis=1) <= 0)
    np.testing.assert_allclose(fm.means, fm.maps.mean(axis=(2, 3)), rtol=1e-5)
    assert fm.vmin == pytest.approx(fm.maps.min()) and fm.vmax == pytest.approx(fm.maps.max())
    with pytest.raises(LayerError):
        inspection.feature_maps(adapter, batch, "fc")


# --------------------------------------------------------------------------- the architecture graph
@needs_zoo
@pytest.mark.parametrize("name", ["resnet-mini-torch", "resnet-mini-keras"])
def test_resnet_graph_shows_residual_branches(name):
    from workbench.intake import load_zoo_model

    adapter = load_zoo_model(name)
    arch = architecture.architecture(adapter)
    assert arch.traced
    inputs = collections.Counter(b for _, b in arch.edges)
    merges = [n.name for n in arch.nodes if inputs[n.name] == 2]
    assert len(merges) == 8, merges  # one addition per residual block
    assert len(arch.skips()) >= 8
    conv1 = next(n for n in arch.nodes if n.name == "conv1")
    assert conv1.output_shape == (112, 112, 16) and conv1.parameters == 7 * 7 * 3 * 16
    cam = adapter.default_cam_layer()
    dot = architecture.to_dot(arch, selected=cam)
    drawn = arch.node_for(cam)
    assert drawn == ("layer4.1.relu2" if name.endswith("torch") else cam)  # a block is drawn by its last layer
    assert f'"{drawn}" [label=' in dot and architecture.SKIP_COLOUR in dot
    statement = dot.split(f'"{drawn}" [label=')[1].split("];")[0]
    assert dot.count(architecture.SELECTED_FILL) == 1 and architecture.SELECTED_FILL in statement
    collapsed = architecture.to_dot(arch, collapse=True)
    assert "identical blocks" in collapsed and collapsed.count("->") < dot.count("->")


class Looping(torch.nn.Module):
    """Data-dependent control flow, which symbolic tracing (torch.fx) cannot follow."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x.mean(dim=(2, 3)))


def test_graph_follows_data_dependent_control_flow_and_operations_between_layers():
    torch.manual_seed(0)
    module = Looping()
    with torch.no_grad():
        module.conv.bias.fill_(10.0)  # the branch is taken
    arch = architecture.architecture(TorchAdapter(module, name="loop", source_format="test", input_size=(8, 8, 3)))
    assert arch.traced
    assert [n.name for n in arch.nodes] == ["input", "conv", "mul", "mean", "fc", "output"]
    assert arch.edges == (("input", "conv"), ("conv", "mul"), ("mul", "mean"), ("mean", "fc"), ("fc", "output"))
    assert arch.node_for("conv") == "conv" and arch.nodes[1].parameters == 3 * 3 * 3 * 4 + 4


def test_a_model_without_hooks_is_drawn_in_layer_order():
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()))
    arch = architecture.architecture(TorchAdapter(scripted, name="script", source_format="test", input_size=(8, 8, 3)))
    assert not arch.traced and [n.name for n in arch.nodes] == ["input"]


def test_drawing_one_model_leaves_another_models_calls_alone():
    """The graph is recorded with this model's hooks and a thread-local mode, nothing process-wide."""
    import threading

    drawn = TorchAdapter(torch_planted(), name="drawn", source_format="test", input_size=(12, 12, 3))
    other = TorchAdapter(torch_planted(dead=(2,)), name="other", source_format="test", input_size=(12, 12, 3))
    x = other.test_input(2)
    expected = other.predict(x)
    stop, seen, errors = threading.Event(), [], []

    def predict_meanwhile():
        while not stop.is_set():
            try:
                seen.append(np.array_equal(other.predict(x), expected))
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                errors.append(exc)

    worker = threading.Thread(target=predict_meanwhile)
    worker.start()
    try:
        for _ in range(20):
            drawn.layer_graph()
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not errors and seen and all(seen)


def test_large_model_collapses_repeated_blocks_and_search_expands():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(4)
            self.act = torch.nn.ReLU()

        def forward(self, x):
            return self.act(self.norm(self.conv(x))) + x

    blocks = torch.nn.Sequential(*[Block() for _ in range(70)])
    module = torch.nn.Sequential(collections.OrderedDict(stem=torch.nn.Conv2d(3, 4, 1), blocks=blocks, pool=torch.nn.AdaptiveAvgPool2d(1), flat=torch.nn.Flatten(), fc=torch.nn.Linear(4, 2)))
    arch = architecture.architecture(TorchAdapter(module, name="deep", source_format="test", input_size=(8, 8, 3)))
    assert arch.layer_count >= architecture.COLLAPSE_FROM
    dot = architecture.to_dot(arch)
    assert dot.count("[label=") < 20 and "× 70 identical blocks" in dot
    assert arch.search("blocks.41.NORM") == ["blocks.41.norm"]
    found = architecture.to_dot(arch, search="blocks.41.norm")
    assert '"blocks.41.norm" [label=' in found and architecture.MATCH_FILL in found
    assert "× 41 identical blocks" in found and "× 28 identical blocks" in found


# --------------------------------------------------------------------------- the command
@needs_zoo
def test_layers_command_json(capsys):
    image = str(SAMPLES[0])
    assert main(["layers", "shapes-cnn-torch", "--image", image, "--image", str(SAMPLES[1]), "--target", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"layers", "first_nonfinite"} and report["first_nonfinite"] is None
    keys = {"name", "kind", "output_shape", "parameters", "mean", "std", "min", "max", "fraction_zero", "dead_channels", "nan_count", "inf_count", "grad_norm"}
    assert all(set(row) == keys for row in report["layers"])
    assert [row["name"] for row in report["layers"]][:3] == ["conv1", "act1", "pool1"]
    assert report["layers"][-1]["grad_norm"] == pytest.approx(1.0)  # d score / d logits is one-hot
    assert main(["layers", "shapes-cnn-torch", "--image", image]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["layer", "kind", "output"] and "conv4" in table
    assert main(["layers", "shapes-cnn-torch", "--image", image, "--target", "99"]) == 2
    assert "--target" in capsys.readouterr().err


def test_keras_compiled_and_eager_passes_agree():
    """Keras runs the statistics pass as one compiled function, falling back to the eager pass (which also
    counts NaN/Inf) when an output is not finite: both give the same numbers, and no wrapper stays."""
    adapter = adapter_for("keras", dead=(0,))
    batch = adapter.test_input(3, seed=7)
    compiled = adapter.layer_statistics(batch, [1, 2, 3])
    eager = adapter._eager_statistics(batch, [1, 2, 3])
    assert [l.name for l in compiled.layers] == [l.name for l in eager.layers] == ["conv", "relu", "gap", "fc"]
    for a, b in zip(compiled.layers, eager.layers):
        for key in ("mean", "std", "minimum", "maximum", "zeros"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-5, abs=1e-7), (a.name, key)
        np.testing.assert_allclose(a.grad_norm, b.grad_norm, rtol=1e-5)
        np.testing.assert_array_equal(a.channel_max_abs == 0, b.channel_max_abs == 0)
    assert compiled.targets.tolist() == [1, 2, 3]
    assert adapter.layer_statistics(batch).targets.tolist() == adapter.predict(batch).argmax(axis=1).tolist()
    assert all("call" not in layer.__dict__ for layer in adapter.model.layers)
    view = adapter.view(preset="imagenet")  # another session's view of the same model: its own compiled pass
    seen = view.layer_statistics(batch, [1, 2, 3])
    assert [l.name for l in seen.layers] == ["conv", "relu", "gap", "fc"] and view._statistics_fn[1] is not adapter._statistics_fn[1]
