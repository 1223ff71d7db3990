"""Resource bombs are refused before a model runs, in little memory, with one line naming the limit.

Built here: a ``.keras`` archive with a valid model plus a junk ``.h5`` that unpacks to 2 GiB of
zeros, a ~4 MB ``.keras`` whose entry declares just under 4 GiB, an ONNX ``ConstantOfShape`` to
[45000, 45000], an ONNX with a fixed 20000 x 20000 input, an ONNX chain of twenty 8000 x 8000
``MatMul``\\ s, and a ``.keras`` holding ``UpSampling2D(size=(300, 300))``. Each is refused through
:func:`workbench.intake.load_model` (peak memory measured in a separate process) and through
``python -m workbench inspect`` (exit 2, one line on stderr).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from workbench import intake
from workbench.errors import LimitExceeded, UnsafeModel, UnsupportedFormat
from workbench.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
ZOO_KERAS = ROOT / "model_zoo" / "weights" / "shapes_cnn.keras"
PEAK_BUDGET_MB = 300
TF_LOG = re.compile(r"^([IWEF]\d{4} \S+ +\d+ \S+:\d+\] |WARNING: All log messages before absl::InitializeLog\(\))")
MiB, GiB = 2**20, 2**30


# ====================================================================== measuring
class PeakMemory:
    """The peak memory increase of this process inside a ``with`` block, in MB (``.mb`` after it).

    The kernel's peak RSS is reset on entry (/proc/self/clear_refs) and the figure is VmHWM at exit
    minus VmRSS at entry: never less than the true increase. Where the reset is not allowed, Python's
    own allocations are traced instead (tracemalloc), which still sees every chunk an archive check reads.
    """

    def __enter__(self) -> "PeakMemory":
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.traced, self.before = False, self.status("VmRSS")
        except OSError:
            import tracemalloc

            self.traced = True
            tracemalloc.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.traced:
            import tracemalloc

            self.mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        else:
            self.mb = (self.status("VmHWM") - self.before) / 2**20

    @staticmethod
    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)


def shown(value: str) -> str:
    """What a Markdown element displays for text escaped by pages.controls.plain."""
    import re

    return re.sub(r"\\(.)", r"\1", value)


# ====================================================================== builders: archives

def deflated_zeros(size: int, prefix: bytes = b"") -> tuple[bytes, int]:
    """Raw deflate data for ``prefix`` then ``size`` zero bytes, and its CRC-32, from one compressed MiB.

    After a full flush the compressor starts afresh, so every MiB of zeros compresses to the same
    bytes: the stream is that block repeated, a tail, and the end-of-stream block (~1 KB per MiB).
    """
    chunk = bytes(MiB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH) if prefix else b""
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(size, MiB)
    tail = compressor.compress(bytes(rest)) + compressor.flush() if rest else compressor.flush()
    crc = zlib.crc32(prefix)
    for _ in range(whole):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(bytes(rest), crc)
    return head + block * whole + tail, crc


def write_zip(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip from (name, stored payload, method, CRC-32, uncompressed size) entries, sizes under 4 GiB."""
    out = io.BytesIO()
    central = []
    for name, payload, method, crc, size in entries:
        offset = out.tell()
        encoded = name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), size, len(encoded), 0))
        out.write(encoded)
        out.write(payload)
        central.append(
            struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(payload), size, len(encoded), 0, 0, 0, 0, 0, offset)
            + encoded
        )
    start = out.tell()
    for record in central:
        out.write(record)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), out.tell() - start, start, 0))
    return out.getvalue()


def keras_with_junk(junk_size: int) -> bytes:
    """The zoo's Keras model, entry for entry, plus ``junk.h5``: ``junk_size`` zero bytes, deflated."""
    with zipfile.ZipFile(ZOO_KERAS) as archive:
        entries = [(name, data := archive.read(name), 0, zlib.crc32(data), len(data)) for name in archive.namelist()]
    payload, crc = deflated_zeros(junk_size)
    return write_zip([*entries, ("junk.h5", payload, 8, crc, junk_size)])


def keras_with_huge_config(size: int) -> bytes:
    """A ``.keras`` whose config.json unpacks to ``size`` bytes (zeros: a config no one could read)."""
    payload, crc = deflated_zeros(size)
    return write_zip([("config.json", payload, 8, crc, size), ("metadata.json", b"{}", 0, zlib.crc32(b"{}"), 2)])


# ====================================================================== builders: ONNX
def onnx_bytes(nodes, inputs, outputs, initializers=()) -> bytes:
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def image_head(x: str = "x"):
    """Nodes turning the image batch into [N, 3] scores, so every bomb is a plausible classifier."""
    from onnx import helper

    return [helper.make_node("GlobalAveragePool", [x], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["scores"])]


def image_input(dims=("n", 3, 32, 32)):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))


def scores_output():
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])


def constant_of_shape_bomb() -> bytes:
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [45000, 45000])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        *image_head(),
        helper.make_node("Add", ["scores", "total"], ["y"]),
    ]
    return onnx_bytes(nodes, [image_input()], [scores_output()], [shape])


def fixed_input_bomb() -> bytes:
    from onnx import helper

    nodes = [*image_head(), helper.make_node("Identity", ["scores"], ["y"])]
    return onnx_bytes(nodes, [image_input(("n", 3, 20000, 20000))], [scores_output()])


def dynamic_onnx() -> bytes:
    """A harmless classifier whose input sides are not fixed: the input size comes from the user."""
    from onnx import helper

    nodes = [*image_head(), helper.make_node("Identity", ["scores"], ["y"])]
    return onnx_bytes(nodes, [image_input(("n", 3, "h", "w"))], [scores_output()])


def matmul_chain_bomb(side: int = 8000, links: int = 20) -> bytes:
    """A 32 x 32 image's mean, expanded to a side x side matrix, squared ``links`` times."""
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [side, side])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=0),
        helper.make_node("Expand", ["mean", "shape"], ["m0"]),
        *[helper.make_node("MatMul", [f"m{i}", f"m{i}"], [f"m{i + 1}"]) for i in range(links)],
        helper.make_node("ReduceMean", [f"m{links}"], ["chained"], keepdims=0),
        *image_head(),
        helper.make_node("Add", ["scores", "chained"], ["y"]),
    ]
    return onnx_bytes(nodes, [image_input()], [scores_output()], [shape])


def upsampling_bomb(path: Path) -> bytes:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.UpSampling2D(size=(300, 300))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(path)
    return path.read_bytes()


# ====================================================================== the bombs, built once
# name -> (expected error, a phrase of its one line)
EXPECTED = {
    "junk-2gib.keras": (UnsupportedFormat, "'junk.h5', which is not an HDF5 file"),
    "declares-4gib.keras": (UnsupportedFormat, "'junk.h5', which is not an HDF5 file"),
    "config-1gib.keras": (UnsafeModel, "config.json of 1024 MiB, too large"),
    "constant-of-shape.onnx": (LimitExceeded, "ConstantOfShape tensor 'big' would be 45000 x 45000 (7.5 GiB)"),
    "fixed-input.onnx": (LimitExceeded, "20000 x 20000 pixel input is over the maximum input side of 2048 pixels"),
    "matmul-chain.onnx": (LimitExceeded, "would be 8000 x 8000 (244 MiB) for one image, over the limit of 128 MiB"),
    "upsampling.keras": (LimitExceeded, "UpSampling2D tensor 'up_sampling2d' would be 1 x 9600 x 9600 x 3 (1.0 GiB)"),
}
SETTING = {UnsupportedFormat: None, UnsafeModel: None, LimitExceeded: ("WORKBENCH_MAX_TENSOR_MB", "WORKBENCH_MAX_INPUT_SIDE")}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    built = {
        "junk-2gib.keras": keras_with_junk(2 * GiB),
        # with the model's own entries it stays just under the default 4 GiB unpacked limit,
        # so it passes the declared-size check and reaches the entry checks
        "declares-4gib.keras": keras_with_junk(4 * GiB - 1 * MiB),
        "config-1gib.keras": keras_with_huge_config(1 * GiB),
        "constant-of-shape.onnx": constant_of_shape_bomb(),
        "fixed-input.onnx": fixed_input_bomb(),
        "matmul-chain.onnx": matmul_chain_bomb(),
        "upsampling.keras": upsampling_bomb(folder / "upsampling-saved.keras"),
    }
    paths = {}
    for name, data in built.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


# The measuring process (a fresh one, so no other test's memory is in the figures): frameworks
# imported and one model loaded first, as on a running server; then each bomb inside PeakMemory.
MEASURE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import keras, torch, onnx, h5py
    from workbench.adapters import loading_keras, loading_torch
    from workbench import intake
    from workbench.errors import WorkbenchError
    from test_intake_limits import PeakMemory

    intake.load_zoo_model("shapes-cnn-keras", device="cpu")
    results = {}
    for path in map(Path, sys.argv[1:]):
        data = path.read_bytes()
        started = time.perf_counter()
        error = message = None
        with PeakMemory() as peak:
            try:
                intake.load_model(data, filename=path.name, device="cpu")
            except WorkbenchError as exc:
                error, message = type(exc).__name__, str(exc)
        results[path.name] = {"error": error, "message": message, "seconds": time.perf_counter() - started,
                              "peak_increase_mb": peak.mb, "upload_bytes": len(data)}
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def measured(bombs) -> dict[str, dict]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, bombs.values())],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for name, row in results.items():  # the figures, for the record (pytest -s)
        print(f"{name}: {row['upload_bytes']:,} bytes uploaded, peak +{row['peak_increase_mb']:.0f} MB, {row['seconds']:.3f} s")
    return results


# ====================================================================== refusals
@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_bomb_is_refused_by_intake_in_bounded_memory(name, measured):
    error, phrase = EXPECTED[name]
    row = measured[name]
    assert row["error"] == error.__name__, row
    assert phrase in row["message"], row["message"]
    if SETTING[error]:
        assert any(setting in row["message"] for setting in SETTING[error]), row["message"]
    assert row["peak_increase_mb"] < PEAK_BUDGET_MB, row


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_bomb_is_refused_by_the_cli_in_one_line(name, bombs):
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "inspect", str(bombs[name])],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 2, (out.returncode, out.stderr[-1000:])
    # TensorFlow's C++ start-up log (absl, glog format) is not ours: it comes with importing TensorFlow
    lines = [line for line in out.stderr.splitlines() if line.strip() and not TF_LOG.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and EXPECTED[name][1] in lines[0], out.stderr[-1000:]
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_zip_bombs_are_within_the_declared_limits():
    """The junk archives pass the declared-size check: what refuses them is the streamed entry check."""
    for data in (keras_with_junk(4 * GiB - MiB),):
        assert len(data) < 5 * MiB
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            total = sum(info.file_size for info in archive.infolist())
        assert 4 * GiB - MiB < total <= Settings().max_zip_uncompressed
        assert intake.sniff_model(data) == "keras"


def test_deflated_zeros_unpack_to_zeros():
    payload, crc = deflated_zeros(3 * MiB + 5)
    data = zlib.decompress(payload, -15)
    assert len(data) == 3 * MiB + 5 and not any(data) and zlib.crc32(data) == crc
    payload, crc = deflated_zeros(2 * MiB, prefix=b"header")
    data = zlib.decompress(payload, -15)
    assert data == b"header" + bytes(2 * MiB) and zlib.crc32(data) == crc


def test_a_large_hdf5_entry_is_checked_from_a_spooled_copy_in_bounded_memory(tmp_path):
    """A real HDF5 file followed by 256 MiB of zeros: h5py reads it from a copy on disk, written a
    chunk at a time, and still finds what it must refuse (an external link)."""
    import h5py
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        f["layers/dense/vars/0"] = h5py.ExternalLink("/etc/hostname", "/")
    prefix = path.read_bytes()
    payload, crc = deflated_zeros(256 * MiB, prefix=prefix)
    with zipfile.ZipFile(ZOO_KERAS) as archive:
        entries = [(name, data := archive.read(name), 0, zlib.crc32(data), len(data)) for name in archive.namelist()]
    data = write_zip([*entries, ("extra.weights.h5", payload, 8, crc, len(prefix) + 256 * MiB)])
    assert len(data) < 2 * MiB
    with PeakMemory() as peak, pytest.raises(UnsafeModel, match="links 'layers/dense/vars/0' to the external file '/etc/hostname'"):
        intake.check_keras_archive(data, "m.keras", Settings())
    assert peak.mb < 64


# ====================================================================== the limits are the operator's
@pytest.fixture
def loaders_untouched(monkeypatch):
    from workbench.adapters import loading_torch

    def refuse(*args, **kwargs):
        raise AssertionError("the ONNX converter was reached")

    monkeypatch.setattr(loading_torch, "onnx_to_torch", refuse)


def test_onnx_bombs_are_refused_before_conversion(loaders_untouched):
    for data in (constant_of_shape_bomb(), fixed_input_bomb(), matmul_chain_bomb()):
        with pytest.raises(LimitExceeded):
            intake.load_model(data, filename="bomb.onnx")


def test_raising_the_tensor_limit_lets_the_model_past_the_static_check(loaders_untouched):
    with pytest.raises(LimitExceeded, match="WORKBENCH_MAX_TENSOR_MB"):
        intake.load_model(matmul_chain_bomb(), filename="chain.onnx", settings=Settings(max_tensor_mb=200))
    with pytest.raises(AssertionError, match="converter was reached"):
        intake.load_model(matmul_chain_bomb(), filename="chain.onnx", settings=Settings(max_tensor_mb=300))


def test_tensor_limit_comes_from_the_environment(monkeypatch, loaders_untouched):
    small = matmul_chain_bomb(side=1024, links=2)  # 4 MiB tensors
    monkeypatch.setenv("WORKBENCH_MAX_TENSOR_MB", "2")
    with pytest.raises(LimitExceeded, match=r"1024 x 1024 \(4 MiB\) for one image, over the limit of 2 MiB per tensor"):
        intake.load_model(small, filename="chain.onnx")
    monkeypatch.setenv("WORKBENCH_MAX_TENSOR_MB", "8")
    with pytest.raises(AssertionError, match="converter was reached"):
        intake.load_model(small, filename="chain.onnx")


def weight_model(weight) -> bytes:
    """A classifier whose scores are offset by the sum of one weight tensor."""
    from onnx import helper

    nodes = [helper.make_node("ReduceSum", [weight.name], ["offset"], keepdims=0), *image_head(), helper.make_node("Add", ["scores", "offset"], ["y"])]
    return onnx_bytes(nodes, [image_input()], [scores_output()], [weight])


def test_weights_stored_in_the_file_count_against_the_upload_limit_not_the_tensor_limit(monkeypatch, loaders_untouched):
    import onnx
    from onnx import TensorProto, numpy_helper

    from workbench import size_checks

    monkeypatch.setenv("WORKBENCH_MAX_TENSOR_MB", "1")
    stored = numpy_helper.from_array(np.ones((1024, 1024), np.float32), "w")  # 4 MiB, all of it in the file
    with pytest.raises(AssertionError, match="converter was reached"):
        intake.load_model(weight_model(stored), filename="weights.onnx")
    # (onnx's checker refuses this one too; the size check does not rely on it)
    declared = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[45000, 45000], raw_data=bytes(4))
    proto = onnx.load_model_from_string(weight_model(declared))
    with pytest.raises(LimitExceeded, match="initializer tensor 'w' would be 45000 x 45000"):
        size_checks.check_onnx_sizes(proto, "declared.onnx", layout="NCHW", size=(32, 32, 3), settings=Settings())


def test_input_side_limit_covers_a_given_input_size(monkeypatch, loaders_untouched):
    dynamic = dynamic_onnx()
    with pytest.raises(LimitExceeded, match="a 4096 x 300 pixel input is over the maximum input side of 2048 pixels"):
        intake.load_model(dynamic, filename="dynamic.onnx", input_size=(4096, 300, 3))
    monkeypatch.setenv("WORKBENCH_MAX_INPUT_SIDE", "5000")
    with pytest.raises(AssertionError, match="converter was reached"):
        intake.load_model(dynamic, filename="dynamic.onnx", input_size=(4096, 300, 3))


def test_the_about_page_lists_the_limits():
    from workbench.session import settings_rows

    rows = {row["environment variable"]: row["value"] for row in settings_rows(Settings())}
    assert rows["WORKBENCH_MAX_TENSOR_MB"] == "128" and rows["WORKBENCH_MAX_INPUT_SIDE"] == "2048"


# ====================================================================== ordinary models still load
def test_zoo_models_and_an_onnx_export_still_load(tmp_path):
    import torch
    for name in ("shapes-cnn-torch", "shapes-cnn-keras", "resnet-mini-torch", "resnet-mini-keras"):
        adapter = intake.load_zoo_model(name, device="cpu")
        assert adapter.num_classes == 6
    zoo = intake.load_zoo_model("resnet-mini-torch", device="cpu")
    buffer = io.BytesIO()
    torch.onnx.export(zoo.module, torch.zeros(1, 3, 224, 224), buffer, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}})
    exported = intake.load_model(buffer.getvalue(), filename="resnet-mini.onnx", device="cpu")
    batch = zoo.test_input(2)
    np.testing.assert_allclose(exported.predict(batch), zoo.predict(batch), rtol=1e-4, atol=1e-4)


# ====================================================================== through the app
@pytest.mark.slow
def test_bombs_uploaded_in_the_app_are_refused_and_quick_start_still_works(bombs, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    intake.load_zoo_model("shapes-cnn-keras", device="cpu")  # frameworks warm, as on a running server
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    assert not at.exception
    for name, (error, phrase) in EXPECTED.items():
        data = bombs[name].read_bytes()
        with PeakMemory() as peak:
            at.file_uploader(key="models_upload").set_value((name, data, "application/octet-stream")).run()
        increase_mb = peak.mb
        assert not at.exception, [e.value for e in at.exception]
        # the page shows messages as plain text (Markdown characters escaped): compare what it displays
        assert len(at.error) == 1 and phrase in shown(at.error[0].value) and "\n" not in at.error[0].value, [e.value for e in at.error]
        print(f"app upload {name}: peak +{increase_mb:.0f} MB")
        assert increase_mb < PEAK_BUDGET_MB, (name, increase_mb)
        assert at.session_state["workspace"].model is None
    at.file_uploader(key="models_upload").set_value(None).run()
    at.button(key="models_quick_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert at.title[0].value == "Explain & compare" and len(at.image) == 4


def test_the_models_page_refuses_an_input_size_over_the_limit():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    box = at.text_input(key="models_input_size")
    assert "WORKBENCH_MAX_INPUT_SIDE" in box.help and "2048" in box.help
    box.set_value("5000 x 5000").run()
    at.file_uploader(key="models_upload").set_value(("dynamic.onnx", dynamic_onnx(), "application/octet-stream")).run()
    assert not at.exception
    assert len(at.error) == 1 and "Input size: a 5000 x 5000 pixel input is over the maximum input side of 2048" in shown(at.error[0].value)
