"""Model intake: accepted formats load and predict exactly as their framework does; refused
formats are refused with their one-line message before any of their code can run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from workbench import intake
from workbench.errors import (
    ArchitectureRequired,
    ModelRejected,
    TrustedFormatRequired,
    UnsafeEnvironment,
    UnsafeModel,
    UnsupportedFormat,
    WeightsMismatch,
)
from workbench.intake import fingerprint, load_model, read_labels, sniff_model
from workbench.settings import Settings

import torch
nn = torch.nn

SAFE = Settings()
TRUSTED = Settings(trusted_formats=True)


# ====================================================================== builders
def tiny_cnn(classes: int = 3) -> "nn.Module":
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes)
    ).eval()


class ChannelsLast(nn.Module):
    """Takes NHWC input, as models exported from TensorFlow do."""

    def __init__(self):
        super().__init__()
        self.body = tiny_cnn()

    def forward(self, x):
        return self.body(x.permute(0, 3, 1, 2))


def onnx_bytes(module: "nn.Module", example: "torch.Tensor") -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        module, example, buffer, dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}}
    )
    return buffer.getvalue()


def torch_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def nchw(batch: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def batch(h: int, w: int, n: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, h, w, 3), dtype=np.float32)


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, body in entries.items():
            archive.writestr(name, body)
    return buffer.getvalue()


@pytest.fixture
def frameworks_untouched(monkeypatch):
    """Fail the test if any framework reader is reached."""
    from workbench.adapters import loading_keras, loading_torch

    def refuse(*args, **kwargs):
        raise AssertionError("a framework loader was reached")

    for name in ("load_pickle_trusted", "load_torchscript_trusted", "onnx_to_torch", "load_safetensors"):
        monkeypatch.setattr(loading_torch, name, refuse)
    monkeypatch.setattr(loading_keras, "load_keras_model", refuse)


# ====================================================================== import hygiene
def test_importing_intake_and_images_leaves_frameworks_unimported():
    code = (
        "import sys, workbench.intake, workbench.images\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'keras', 'onnx2torch', 'onnx', 'h5py', 'PIL') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd())
    assert out.stdout.strip() == ""


def test_unsafe_environment_is_refused(monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UnsafeEnvironment, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        load_model(torch_bytes(tiny_cnn().state_dict()), filename="w.pt", architecture="shapes-cnn")


def test_fingerprint_is_sha256():
    assert fingerprint(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ====================================================================== sniffing
@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (np.random.default_rng(0).bytes(4096), "not a model format"),
        (b"just some text, not a model\n" * 20, "not a model format"),
    ],
)
def test_junk_is_unsupported(data, message):
    with pytest.raises(UnsupportedFormat, match=message):
        sniff_model(data)


def test_truncated_zip_is_unsupported(frameworks_untouched):
    data = torch_bytes(tiny_cnn().state_dict())
    with pytest.raises(UnsupportedFormat, match="damaged or truncated zip"):
        load_model(data[: len(data) // 2], filename="cut.pt", architecture="shapes-cnn")


def test_zip_with_parent_entries_is_unsafe(frameworks_untouched):
    data = zip_bytes({"config.json": b"{}", "../../etc/cron.d/evil": b"* * * * * root sh", "metadata.json": b"{}"})
    with pytest.raises(UnsafeModel, match=r"'../../etc/cron.d/evil'.*outside the archive"):
        load_model(data, filename="model.keras")


def test_zip_with_absolute_entry_is_unsafe():
    with pytest.raises(UnsafeModel, match="outside the archive"):
        sniff_model(zip_bytes({"/etc/passwd": b"x", "config.json": b"{}"}))


def test_zip_with_symlink_is_unsafe():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("config.json")
        link.external_attr = (0o120777 << 16)
        archive.writestr(link, "/etc/passwd")
        archive.writestr("metadata.json", "{}")
    with pytest.raises(UnsafeModel, match="symbolic link"):
        sniff_model(buffer.getvalue())


def test_zip_entry_limit_comes_from_settings():
    data = zip_bytes({f"f{i}": b"" for i in range(5)})
    with pytest.raises(UnsafeModel, match="5 entries, over the limit of 4"):
        sniff_model(data, settings=Settings(max_zip_entries=4))


def test_zip_size_limit_comes_from_settings():
    data = zip_bytes({"config.json": b"{" + b" " * 5000 + b"}"})
    with pytest.raises(UnsafeModel, match="unpacks to"):
        sniff_model(data, settings=Settings(max_zip_uncompressed=1000))


def test_unrelated_zip_is_unsupported():
    with pytest.raises(UnsupportedFormat, match=r"zip archive \(readme.txt\) but not"):
        sniff_model(zip_bytes({"readme.txt": b"hello"}))


def test_tflite_is_named():
    with pytest.raises(UnsupportedFormat, match="TensorFlow Lite"):
        sniff_model(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)


# ====================================================================== PyTorch weights
@pytest.fixture(scope="module")
def shapes_cnn():
    import model_zoo
    torch.manual_seed(0)
    return model_zoo.build_torch("shapes-cnn")


def assert_predicts_like(adapter, module, x_nhwc, layout="NCHW"):
    with torch.no_grad():
        x = torch.from_numpy(x_nhwc) if layout == "NHWC" else nchw(x_nhwc)
        expected = module(x).numpy()
    np.testing.assert_allclose(adapter.predict(x_nhwc), expected, rtol=1e-5, atol=1e-5)


def test_state_dict_loads_into_zoo_architecture(shapes_cnn):
    data = torch_bytes(shapes_cnn.state_dict())
    assert sniff_model(data) == "state_dict"
    adapter = load_model(data, filename="shapes.pt", architecture="shapes-cnn", settings=SAFE)
    assert adapter.source_format == "state_dict" and adapter.input_size == (64, 64, 3)
    assert adapter.num_classes == 6 and adapter.fingerprint == fingerprint(data)
    assert_predicts_like(adapter, shapes_cnn, batch(64, 64))


def test_legacy_torch_format_loads(shapes_cnn):
    data = torch_bytes(shapes_cnn.state_dict(), _use_new_zipfile_serialization=False)
    assert sniff_model(data) == "state_dict"
    adapter = load_model(data, filename="old.pth", architecture="shapes-cnn")
    assert_predicts_like(adapter, shapes_cnn, batch(64, 64))


def test_safetensors_load_and_classes_are_inferred():
    import model_zoo
    from safetensors.torch import save

    torch.manual_seed(1)
    module = model_zoo.build_torch("shapes-cnn", 3)
    data = save(module.state_dict())
    assert sniff_model(data) == "safetensors"
    adapter = load_model(data, filename="w.safetensors", architecture="shapes-cnn", labels=["a", "b", "c"])
    assert adapter.num_classes == 3 and adapter.labels == ("a", "b", "c")
    assert_predicts_like(adapter, module, batch(64, 64))


def test_training_checkpoint_with_dataparallel_prefix_loads(shapes_cnn):
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in shapes_cnn.state_dict().items()}}
    adapter = load_model(torch_bytes(wrapped), filename="ckpt.pt", architecture="shapes-cnn")
    assert_predicts_like(adapter, shapes_cnn, batch(64, 64))


def test_weights_need_an_architecture(shapes_cnn):
    with pytest.raises(ArchitectureRequired, match="shapes-cnn, resnet-mini"):
        load_model(torch_bytes(shapes_cnn.state_dict()), filename="w.pt")
    with pytest.raises(ArchitectureRequired, match="Unknown architecture 'vgg'"):
        load_model(torch_bytes(shapes_cnn.state_dict()), filename="w.pt", architecture="vgg")


def test_wrong_keys_are_listed():
    state = {f"block{i}.weight": torch.zeros(2) for i in range(12)}
    with pytest.raises(WeightsMismatch) as caught:
        load_model(torch_bytes(state), filename="other.pt", architecture="shapes-cnn")
    message = str(caught.value)
    assert "missing 10 keys: conv1.weight, conv1.bias, conv2.weight, conv2.bias, conv3.weight, ..." in message
    assert "unexpected 12 keys: block0.weight, block1.weight" in message
    assert "\n" not in message


def test_wrong_shapes_are_listed(shapes_cnn):
    state = dict(shapes_cnn.state_dict())
    state["conv2.weight"] = torch.zeros(32, 16, 5, 5)
    with pytest.raises(WeightsMismatch, match=r"conv2.weight is \(32, 16, 5, 5\) in the file but \(32, 16, 3, 3\)"):
        load_model(torch_bytes(state), filename="w.pt", architecture="shapes-cnn")


def test_not_a_state_dict_is_unsupported():
    with pytest.raises(UnsupportedFormat, match="holds a list, not a state_dict"):
        load_model(torch_bytes([1, 2, 3]), filename="w.pt", architecture="shapes-cnn")


# ====================================================================== pickles and TorchScript
class WritesMarker:
    """Unpickling this creates a file: the stand-in for any code a pickle can run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("container", ["legacy pickle", "torch zip"])
def test_malicious_pickle_never_runs(tmp_path, container, frameworks_untouched):
    marker = tmp_path / "pwned"
    if container == "legacy pickle":
        import pickle

        data = pickle.dumps({"weight": WritesMarker(str(marker))}, protocol=2)
    else:
        data = torch_bytes({"weight": WritesMarker(str(marker))})
    assert not marker.exists()
    with pytest.raises(TrustedFormatRequired, match=r"(io|builtins)\.open.*could run code.*torch.onnx.export"):
        load_model(data, filename="weights.pt", architecture="shapes-cnn", settings=SAFE)
    assert not marker.exists()


def test_pickled_module_is_refused(frameworks_untouched):
    with pytest.raises(TrustedFormatRequired) as caught:
        load_model(torch_bytes(tiny_cnn()), filename="model.pt", architecture="shapes-cnn", settings=SAFE)
    message = str(caught.value)
    assert "pickled Python object" in message and "torch.nn.modules" in message
    assert "torch.save(model.state_dict()" in message and "WORKBENCH_TRUSTED_FORMATS=1" in message


def test_torchscript_renamed_pth_is_refused(frameworks_untouched):
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(tiny_cnn()), buffer)
    assert sniff_model(buffer.getvalue()) == "torchscript"
    with pytest.raises(TrustedFormatRequired, match="model.pth is a TorchScript archive.*torch.onnx.export"):
        load_model(buffer.getvalue(), filename="model.pth", settings=SAFE)


def test_trusted_mode_loads_pickled_module_and_torchscript(monkeypatch):
    module = tiny_cnn()
    scripted = io.BytesIO()
    torch.jit.save(torch.jit.script(module), scripted)
    monkeypatch.setenv("WORKBENCH_TRUSTED_FORMATS", "1")  # as an operator would
    pickled = load_model(torch_bytes(module), filename="model.pt", input_size=(16, 16, 3))
    assert pickled.source_format == "pickled_module" and pickled.input_size == (16, 16, 3)
    assert_predicts_like(pickled, module, batch(16, 16))
    script = load_model(scripted.getvalue(), filename="model.pth", input_size=(16, 16, 3))
    assert script.source_format == "torchscript"
    assert_predicts_like(script, module, batch(16, 16))


# ====================================================================== ONNX
def test_onnx_loads_and_predicts_like_torch():
    module = tiny_cnn()
    data = onnx_bytes(module, torch.rand(1, 3, 20, 24))
    assert sniff_model(data) == "onnx"
    adapter = load_model(data, filename="model.onnx")
    assert adapter.source_format == "onnx" and adapter.layout == "NCHW" and adapter.input_size == (20, 24, 3)
    assert_predicts_like(adapter, module, batch(20, 24))


def test_onnx_channels_last_layout_is_read_from_the_graph():
    module = ChannelsLast().eval()
    data = onnx_bytes(module, torch.rand(1, 20, 24, 3))
    adapter = load_model(data, filename="nhwc.onnx")
    assert adapter.layout == "NHWC" and adapter.input_size == (20, 24, 3)
    assert_predicts_like(adapter, module, batch(20, 24), layout="NHWC")


def test_onnx_dynamic_sides_take_the_requested_input_size():
    module = tiny_cnn()
    buffer = io.BytesIO()
    torch.onnx.export(
        module, torch.rand(1, 3, 16, 16), buffer, dynamo=False, input_names=["x"],
        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
    )
    adapter = load_model(buffer.getvalue(), filename="any.onnx", input_size=(40, 30, 3))
    assert adapter.input_size == (40, 30, 3)
    assert_predicts_like(adapter, module, batch(40, 30))


def test_four_d_output_is_rejected():
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    with pytest.raises(ModelRejected, match=r"outputs shape \(2, 4, 16, 16\).*\[batch, classes\]"):
        load_model(onnx_bytes(module, torch.rand(1, 3, 16, 16)), filename="seg.onnx")


def test_onnx_with_external_data_is_unsafe(tmp_path, frameworks_untouched):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    proto = onnx.load_model_from_string(onnx_bytes(tiny_cnn(), torch.rand(1, 3, 16, 16)))
    convert_model_to_external_data(proto, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    for tensor in proto.graph.initializer:  # the converter checks the disk; an attacker writes any path
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    with pytest.raises(UnsafeModel, match="external file '../../etc/passwd'.*save_as_external_data=False"):
        load_model(proto.SerializeToString(), filename="split.onnx")


def test_onnx_custom_domain_op_is_refused(frameworks_untouched):
    from onnx import TensorProto, helper

    node = helper.make_node("Backdoor", ["x"], ["y"], domain="com.evil")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
    with pytest.raises(UnsupportedFormat, match="'com.evil'"):
        load_model(proto.SerializeToString(), filename="custom.onnx")


def test_torchvision_stand_in_refuses_detection_ops():
    from workbench.adapters import loading_torch

    loading_torch.ensure_torchvision()
    import torchvision

    if not getattr(torchvision, "__spec__", None) or torchvision.__spec__.loader is not None:
        pytest.skip("a working torchvision is installed")
    with pytest.raises(UnsupportedFormat, match="NMS/RoiAlign"):
        torchvision.ops.nms(None, None, 0.5)


# ====================================================================== TensorFlow SavedModel
def test_zipped_savedmodel_is_refused(frameworks_untouched):
    data = zip_bytes({"my_model/saved_model.pb": b"\x08\x01", "my_model/variables/variables.index": b""})
    assert sniff_model(data) == "savedmodel"
    with pytest.raises(TrustedFormatRequired, match="TensorFlow SavedModel.*model.save\\('model.keras'\\)"):
        load_model(data, filename="exported.zip", settings=SAFE)
    with pytest.raises(UnsupportedFormat, match="does not load even for trusted"):
        load_model(data, filename="exported.zip", settings=TRUSTED)


def test_tarred_savedmodel_is_refused():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("export/saved_model.pb")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"\x08\x01"))
    assert sniff_model(buffer.getvalue()) == "savedmodel"
    with pytest.raises(TrustedFormatRequired):
        load_model(buffer.getvalue(), filename="export.tar.gz", settings=SAFE)


# ====================================================================== Keras
@pytest.fixture(scope="module")
def keras_model():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="fc")(x)
    return keras.Model(inputs, outputs)


def keras_bytes(model, tmp_path, suffix=".keras") -> bytes:
    path = tmp_path / f"saved{suffix}"
    model.save(path)
    return path.read_bytes()


def test_keras_file_loads_and_predicts_like_keras(keras_model, tmp_path, monkeypatch):
    import tempfile

    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(real_mkdtemp(*a, **k)) or made[-1])
    data = keras_bytes(keras_model, tmp_path)
    assert sniff_model(data) == "keras"
    adapter = load_model(data, filename="m.keras")
    assert adapter.source_format == "keras" and adapter.input_size == (12, 12, 3)
    x = batch(12, 12)
    np.testing.assert_allclose(adapter.predict(x), keras_model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert made and not any(os.path.exists(path) for path in made)  # the private copy is gone


def test_h5_loads_and_predicts_like_keras(keras_model, tmp_path):
    data = keras_bytes(keras_model, tmp_path, ".h5")
    assert sniff_model(data) == "h5"
    adapter = load_model(data, filename="m.h5")
    assert adapter.source_format == "h5"
    x = batch(12, 12)
    np.testing.assert_allclose(adapter.predict(x), keras_model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_keras_labels_must_match_classes(keras_model, tmp_path):
    with pytest.raises(ModelRejected, match="2 labels but the model has 3 classes"):
        load_model(keras_bytes(keras_model, tmp_path), filename="m.keras", labels=["a", "b"])


def test_keras_lambda_layer_is_refused(tmp_path, frameworks_untouched):
    import keras
    inputs = keras.Input((12, 12, 3))
    outputs = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(outputs)))
    with pytest.raises(UnsafeModel, match=r"Lambda layer \(doubler\), which holds Python code"):
        load_model(keras_bytes(model, tmp_path), filename="lambda.keras")


def test_keras_custom_class_is_refused(tmp_path, frameworks_untouched):
    import keras
    built = []

    class Doubler(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            built.append(self)

        def call(self, t):
            return t * 2.0

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Doubler(name="twice")(inputs)))
    data = keras_bytes(model, tmp_path)
    count = len(built)
    with pytest.raises(UnsafeModel, match=r"custom class .*Doubler \(twice\), which is code outside Keras"):
        load_model(data, filename="custom.keras")
    assert len(built) == count


def test_keras_config_with_foreign_module_is_refused(keras_model, tmp_path, frameworks_untouched):
    data = keras_bytes(keras_model, tmp_path)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(entries["config.json"])
    config["config"]["layers"][1]["module"] = "os"
    entries["config.json"] = json.dumps(config).encode()
    with pytest.raises(UnsafeModel, match=r"custom class os.Conv2D \(conv\)"):
        load_model(zip_bytes(entries), filename="edited.keras")


def test_h5_with_external_dataset_is_refused(tmp_path, frameworks_untouched):
    import h5py
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 64)
    path = tmp_path / "external.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": []}})
        f.create_dataset("model_weights/dense/kernel", shape=(16,), dtype="f4", external=[(str(secret), 0, 64)])
    with pytest.raises(UnsafeModel, match="dataset 'model_weights/dense/kernel' in an external file"):
        load_model(path.read_bytes(), filename="external.h5")


def test_keras_weights_with_external_dataset_are_refused(keras_model, tmp_path, frameworks_untouched):
    import h5py
    data = keras_bytes(keras_model, tmp_path)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    weights = tmp_path / "weights.h5"
    with h5py.File(weights, "w") as f:
        f.create_dataset("layers/conv/vars/0", shape=(4,), dtype="f4", external=[("/etc/hostname", 0, 16)])
    entries["model.weights.h5"] = weights.read_bytes()
    with pytest.raises(UnsafeModel, match="external file"):
        load_model(zip_bytes(entries), filename="m.keras")


def test_h5_with_external_link_or_virtual_dataset_is_refused(tmp_path, frameworks_untouched):
    import h5py
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.zeros(4, "f4")
    linked = tmp_path / "linked.h5"
    with h5py.File(linked, "w") as f:
        f.attrs["model_config"] = "{}"
        f["weights"] = h5py.ExternalLink(str(other), "/data")
    with pytest.raises(UnsafeModel, match="external file"):
        load_model(linked.read_bytes(), filename="linked.h5")
    virtual = tmp_path / "virtual.h5"
    layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "data", shape=(4,))
    with h5py.File(virtual, "w") as f:
        f.attrs["model_config"] = "{}"
        f.create_virtual_dataset("weights", layout)
    with pytest.raises(UnsafeModel, match="virtual dataset 'weights'"):
        load_model(virtual.read_bytes(), filename="virtual.h5")


def test_h5_without_model_config_is_unsupported(tmp_path):
    import h5py
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.zeros(3)
    with pytest.raises(UnsupportedFormat, match="without a model config"):
        load_model(path.read_bytes(), filename="weights.h5")


# ====================================================================== zoo
def test_zoo_torch_entry_goes_through_the_safe_path(tmp_path, monkeypatch):
    import model_zoo
    from safetensors.torch import save_file

    torch.manual_seed(2)
    module = model_zoo.build_torch("shapes-cnn")
    weights = tmp_path / "shapes_cnn.safetensors"
    save_file(module.state_dict(), str(weights))
    real = model_zoo.get("shapes-cnn-torch")
    monkeypatch.setattr(model_zoo, "get", lambda name: real.__class__(**{**real.__dict__, "weights": weights}))
    adapter = intake.load_zoo_model("shapes-cnn-torch", device="cpu")
    assert adapter.source_format == "zoo" and adapter.name == "shapes-cnn-torch"
    assert adapter.labels == tuple(real.labels) and adapter.fingerprint.startswith("zoo:shapes-cnn-torch:")
    assert_predicts_like(adapter, module, batch(64, 64))


def test_zoo_keras_entry_goes_through_the_safe_path(tmp_path, monkeypatch, keras_model):
    import model_zoo
    model = model_zoo.build_keras("shapes-cnn")
    weights = tmp_path / "shapes_cnn.keras"
    model.save(weights)
    real = model_zoo.get("shapes-cnn-keras")
    monkeypatch.setattr(model_zoo, "get", lambda name: real.__class__(**{**real.__dict__, "weights": weights}))
    adapter = intake.load_zoo_model("shapes-cnn-keras", device="cpu")
    assert adapter.source_format == "zoo" and adapter.framework == "keras" and adapter.input_size == (64, 64, 3)
    x = batch(64, 64, n=2)
    np.testing.assert_allclose(adapter.predict(x), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_zoo_weights_that_are_not_the_expected_format_are_refused(tmp_path, monkeypatch):
    import model_zoo
    weights = tmp_path / "shapes_cnn.safetensors"
    weights.write_bytes(torch_bytes(tiny_cnn()))  # a pickle where safetensors belong
    real = model_zoo.get("shapes-cnn-torch")
    monkeypatch.setattr(model_zoo, "get", lambda name: real.__class__(**{**real.__dict__, "weights": weights}))
    with pytest.raises(ModelRejected, match="not weights in safetensors format"):
        intake.load_zoo_model("shapes-cnn-torch")


def test_shipped_zoo_models_load_when_built():
    import model_zoo
    built = [entry for entry in model_zoo.entries() if entry.weights.exists()]
    if not built:
        pytest.skip("zoo weights not built yet (python -m model_zoo.train)")
    for entry in built:
        adapter = intake.load_zoo_model(entry.name, device="cpu")
        assert adapter.num_classes == len(entry.labels) and adapter.input_size == tuple(entry.input_size)


def test_zoo_unknown_name_is_refused():
    import model_zoo  # noqa: F401
    with pytest.raises(ModelRejected, match="No zoo model 'nope'"):
        intake.load_zoo_model("nope")


# ====================================================================== labels
@pytest.mark.parametrize(
    "data, expected",
    [
        (b"cat\ndog\n\nbird\n", ["cat", "dog", "bird"]),
        ("\ufeffchat\r\nchien\r\n".encode("utf-8"), ["chat", "chien"]),
        (b'["cat", "dog"]', ["cat", "dog"]),
        (b'{"1": "dog", "0": "cat"}', ["cat", "dog"]),
        (b'{"dog": 1, "cat": 0}', ["cat", "dog"]),
        (b'{"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}', ["tench", "goldfish"]),
        (b'  {"classes": ["a", "b"]}', ["a", "b"]),
        (b"[unused]\nperson\n", ["[unused]", "person"]),
    ],
)
def test_read_labels(data, expected):
    assert read_labels(data, "labels.txt") == expected


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"\xff\xfe\x00c", "not UTF-8"),
        (b'{"0": "cat", "2": "bird"}', "no label for index 1"),
        (b'{"cat": 0, "dog": 0}', "index 0 to two labels"),
        (b'{"cat": "x"}', "must map indices"),
        (b"[1, {}]", "not text"),
    ],
)
def test_read_labels_refusals(data, message):
    with pytest.raises(UnsupportedFormat, match=message):
        read_labels(data, "labels.json")
