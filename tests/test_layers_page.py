"""The Layers page through AppTest: graph, table, charts and feature maps for both zoo twins, and a layer
picked there becoming Explain & compare's CAM layer."""

from __future__ import annotations

import pytest

from test_app import chart_titles, load_zoo_and_sample, needs_zoo, page, start, workspace

TITLES = {
    "Activation mean and std across depth",
    "Gradient norm across depth",
    "Fraction of zeros across depth",
    "Dead channels, NaN and Inf",
}


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)


def test_layers_page_without_a_model_says_what_to_do():
    at = start()
    page(at, "pages/layers.py")
    assert at.info and "Load a model" in at.info[0].value


@needs_zoo
@pytest.mark.parametrize("model", ["shapes-cnn-torch", "shapes-cnn-keras"])
def test_layers_page_renders_graph_table_charts_and_feature_maps(model):
    at = start()
    load_zoo_and_sample(at, model)
    page(at, "pages/layers.py")
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value == "Layers"
    graphs = at.get("graphviz_chart")
    assert len(graphs) == 1 and "digraph model" in graphs[0].proto.spec and '"conv4"' in graphs[0].proto.spec
    (table,) = [d for d in at.dataframe if "grad_norm" in d.value.columns]
    assert list(table.value["name"])[:2] == ["conv1", "act1"] and len(table.value) == 13
    assert TITLES <= set(chart_titles(at))
    # feature maps: the colour bar and 16 channels of the automatic CAM layer
    assert len(at.image) == 1 + 16
    assert any("act4" in c.value and "one colour scale" in c.value for c in at.caption)
    at.slider(key="layers_k").set_value(8).run()
    assert len(at.image) == 1 + 8


@needs_zoo
def test_picking_a_layer_makes_it_the_cam_layer_of_explain():
    at = start()
    load_zoo_and_sample(at, "shapes-cnn-torch")
    record = workspace(at).model
    page(at, "pages/layers.py")
    key = f"layers_pick_{record.id}"
    assert at.selectbox(key=key).value == "act4"  # the automatic CAM layer to start with
    at.text_input(key="layers_search").set_value("conv").run()
    assert at.selectbox(key=key).options == ["conv1", "conv2", "conv3", "conv4"]
    at.selectbox(key=key).set_value("conv3").run()
    assert not at.exception
    assert '"conv3" [label=' in at.get("graphviz_chart")[0].proto.spec and "#ffd54f" in at.get("graphviz_chart")[0].proto.spec

    page(at, "pages/explain.py")
    widget = at.selectbox(key=f"explain_gradcam_layer_{record.id}")
    assert widget.value == "conv3"
    at.multiselect(key="explain_methods").set_value(["gradcam"]).run()
    at.button(key="explain_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (result,) = [value for value, _size in workspace(at).results._items.values()]
    assert result.method == "gradcam" and result.layer == "conv3"
    assert any(b.proto.id and "tensorboard" in b.proto.id for b in at.get("download_button")), "the TensorBoard download"
    # a change on Explain & compare itself stays
    at.selectbox(key=f"explain_gradcam_layer_{record.id}").set_value(None).run()
    page(at, "pages/images.py")
    page(at, "pages/explain.py")
    assert at.selectbox(key=f"explain_gradcam_layer_{record.id}").value is None
    # a layer without a spatial output is not a CAM layer
    page(at, "pages/layers.py")
    at.text_input(key="layers_search").set_value("").run()
    at.selectbox(key=key).set_value("fc").run()
    assert any("cannot be a CAM layer" in c.value for c in at.caption)


def test_a_model_that_outputs_nan_on_an_image_names_the_layer_there(tmp_path):
    """A model finite on random inputs (so it loads) but NaN on a dark image: the page names the first
    non-finite layer and the image, and still draws everything else."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from test_layers import torch_planted
    from workbench import session
    from workbench.adapters.torch_adapter import TorchAdapter

    module = torch_planted(log=True)
    with torch.no_grad():
        module.shift.bias.fill_(-0.45)  # random test inputs average 0.5: finite; a dark image: log of < 0
    adapter = TorchAdapter(module, name="planted", source_format="test", input_size=(12, 12, 3))
    at = start()
    ws = workspace(at)
    record = session.LoadedModel(
        id="planted", name="planted", source="upload", key=session.ModelKey(sha256="planted", filename="planted.pt"),
        base=adapter, adapter=adapter,
    )
    session._add_model(ws, record)
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 20, np.uint8)).save(buffer, format="PNG")
    session.add_image(ws, buffer.getvalue(), "dark.png")
    page(at, "pages/layers.py")
    assert [e.value for e in at.error] == [
        "The model's output is not finite for dark.png: layer 'log' (Log) is the first, in forward order, to output NaN. "
        "Explaining it is refused."
    ]
    (table,) = [d for d in at.dataframe if "grad_norm" in d.value.columns]
    assert int(table.value.set_index("name").loc["log", "nan_count"]) == 3
    assert TITLES <= set(chart_titles(at))
