"""Vision transformers in every method: token layers on the patch grid, Grad-CAM as pytorch-grad-cam
computes it with its ViT reshape_transform, attention rollout, occlusion by patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import explainers
import hf_tiny
from workbench import intake
from workbench.errors import LayerError


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    out = {}
    for name in ("vit", "deit", "swin", "resnet"):
        folder = hf_tiny.save(name, root / name, seed=3)
        out[name] = intake.load_model(intake.folder_zip(folder), filename=f"{name}.zip", device="cpu")
    return out


def pytorch_grad_cam_gradcam(model, target_layer, input_tensor, categories, reshape_transform):
    """pytorch-grad-cam's GradCAM(model, [target_layer], reshape_transform)(input, [ClassifierOutputTarget(c)]),
    written out from its base_cam.py / activations_and_gradients.py / grad_cam.py / utils/image.py (the package
    itself imports torchvision, which does not load beside this torch)."""
    import cv2

    store = {}

    def save_activation(module, inputs, output):
        store["activations"] = reshape_transform(output).cpu().detach()

        def store_grad(grad):
            store["gradients"] = reshape_transform(grad).cpu().detach()

        output.register_hook(store_grad)

    handle = target_layer.register_forward_hook(save_activation)
    try:
        outputs = model(input_tensor)
        model.zero_grad()
        loss = sum(output[c] for c, output in zip(categories, outputs))  # ClassifierOutputTarget
        loss.backward(retain_graph=True)
    finally:
        handle.remove()
    activations = store["activations"].numpy()
    grads = store["gradients"].numpy()
    weights = np.mean(grads, axis=(2, 3))  # GradCAM.get_cam_weights
    cam = (weights[:, :, None, None] * activations).sum(axis=1)
    cam = np.maximum(cam, 0)

    def scale_cam_image(cams, target_size=None):
        result = []
        for img in cams:
            img = img - np.min(img)
            img = img / (1e-7 + np.max(img))
            if target_size is not None:
                img = cv2.resize(img, target_size)
            result.append(img)
        return np.float32(result)

    width, height = input_tensor.size(-1), input_tensor.size(-2)
    scaled = scale_cam_image(cam, (width, height))[:, None, :]  # compute_cam_per_layer
    per_layer = np.maximum(np.concatenate([scaled], axis=1), 0)  # aggregate_multi_layers
    return scale_cam_image(np.mean(per_layer, axis=1))


def same_normalisation(maps):
    out = []
    for img in maps:
        img = img - np.min(img)
        out.append(img / (1e-7 + np.max(img)))
    return np.float32(out)


def test_automatic_layer_is_the_last_blocks_first_norm(loaded):
    vit = loaded["vit"]
    layer = vit.default_cam_layer()
    assert layer.endswith("layers.1.layernorm_before")  # the last of 2 blocks
    info = vit.layer(layer)
    assert info.prefix_tokens == 1 and info.output_shape == (4, 4, 16)
    deit = loaded["deit"]
    assert deit.layer(deit.default_cam_layer()).prefix_tokens == 2  # class + distillation tokens dropped
    swin = loaded["swin"]
    assert swin.default_cam_layer().endswith("layers.1.blocks.0.layernorm_before")
    assert swin.layer(swin.default_cam_layer()).prefix_tokens == 0


@pytest.mark.parametrize("name, prefix", [("vit", 1), ("deit", 2)])
def test_vit_gradcam_equals_pytorch_grad_cam_with_its_reshape_transform(name, prefix, tmp_path):
    folder = hf_tiny.save(name, tmp_path / name, seed=3)
    adapter = intake.load_model(intake.folder_zip(folder), filename=f"{name}.zip", device="cpu")
    # pytorch-grad-cam min-max normalises with a 1e-7 epsilon before upsampling, which at a random tiny
    # model's CAM scale (~1e-3) moves values by 4e-5: a larger head brings the CAM to the scale of a
    # trained model's, where that epsilon is negligible. Both sides run this same model.
    with torch.no_grad():
        for head in (m for n, m in adapter.module.named_modules() if n.endswith("classifier") and hasattr(m, "weight")):
            head.weight.mul_(1000.0)
    layer = adapter.default_cam_layer()
    batch = adapter.prepare(np.random.default_rng(5).random((2, 32, 32, 3), dtype=np.float32))
    targets = [0, 2]
    ours = explainers.get("gradcam").explain(adapter, batch, targets)
    assert all(r.layer == layer for r in ours)

    def reshape_transform(tensor, height=4, width=4):  # vit_example.py's, with DeiT's two leading tokens
        result = tensor[:, prefix:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    module = dict(adapter.module.named_modules())[layer]
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
    expected = pytorch_grad_cam_gradcam(adapter.module, module, x, targets, reshape_transform)
    got = same_normalisation(np.stack([r.map for r in ours]))
    assert np.ptp(expected) > 0
    np.testing.assert_allclose(got, expected, atol=1e-5)


def independent_rollout(attentions, head_fusion="mean"):
    """jacobgil/vit-explain's rollout in torch, on the attentions transformers returns."""
    result = torch.eye(attentions[0].size(-1))
    with torch.no_grad():
        for attention in attentions:
            fused = {"mean": attention.mean(axis=1), "max": attention.max(axis=1)[0], "min": attention.min(axis=1)[0]}[head_fusion]
            eye = torch.eye(fused.size(-1))
            a = (fused + 1.0 * eye) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            result = torch.matmul(a, result)
    return result


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_attention_rollout_equals_an_independent_implementation(loaded, fusion):
    from workbench.resize import bilinear_resize

    adapter = loaded["vit"]
    batch = adapter.prepare(np.random.default_rng(6).random((2, 32, 32, 3), dtype=np.float32))
    ours = explainers.get("attention_rollout").explain(adapter, batch, params={"head_fusion": fusion})
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        attentions = adapter.module.model(pixel_values=x, output_attentions=True).attentions
    assert len(attentions) == 2
    for i, result in enumerate(ours):
        rolled = independent_rollout([a[i : i + 1] for a in attentions], fusion)
        mask = rolled[0, 0, 1:].reshape(4, 4).numpy()
        expected = bilinear_resize(mask[None], (32, 32))[0]
        np.testing.assert_allclose(result.map, expected, rtol=1e-5, atol=1e-7)
        assert result.map.max() > result.map.min()


def test_attention_rollout_explains_why_it_cannot_run(loaded):
    with pytest.raises(LayerError, match="windows"):
        explainers.get("attention_rollout").explain(loaded["swin"], loaded["swin"].test_input(1))
    with pytest.raises(LayerError, match="does not expose attention"):
        explainers.get("attention_rollout").explain(loaded["resnet"], loaded["resnet"].test_input(1))


def test_occlusion_windows_default_to_the_patch_size_on_vits_only(loaded):
    vit = loaded["vit"]
    (result,) = explainers.get("occlusion").explain(vit, vit.test_input(1))
    assert (result.params["window"], result.params["stride"]) == (8, 8)
    assert result.evaluations == 16 + 1 + 1  # one pass per patch, the clean image, the target score
    (chosen,) = explainers.get("occlusion").explain(vit, vit.test_input(1), params={"window": 4, "stride": 4})
    assert (chosen.params["window"], chosen.params["stride"]) == (4, 4)
    resnet = loaded["resnet"]
    assert resnet.token_patch_size() is None
    (cnn,) = explainers.get("occlusion").explain(resnet, resnet.test_input(1))
    assert (cnn.params["window"], cnn.params["stride"]) == (16, 8)


def test_gradcam_on_swin_tokens_and_convnext_channels_last(loaded, tmp_path):
    swin = loaded["swin"]
    (result,) = explainers.get("gradcam").explain(swin, swin.test_input(1))
    assert result.map.shape == (32, 32) and np.ptp(result.map) > 0
    # ConvNeXt blocks run LayerNorm / Linear on [N, H, W, C]: those layers read as channels-last grids
    folder = hf_tiny.save("convnext", tmp_path / "convnext")
    convnext = intake.load_model(intake.folder_zip(folder), filename="c.zip", device="cpu")
    norms = [l for l in convnext.layers() if l.kind == "Linear" and l.spatial]
    assert norms, "pointwise Linear layers on [N, H, W, C] are spatial layers"
    passed = convnext.layer_gradients(convnext.test_input(1), norms[-1].name, [0])
    assert passed.activations.shape[1:] == norms[-1].output_shape


def keras_tiny_vit(blocks: int = 2):
    """A flat Keras ViT: 8 px patches of a 32 px image (4 x 4), a class token in front, pre-norm blocks."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    patches = layers.Reshape((16, 16), name="tokens")(layers.Conv2D(16, 8, strides=8, name="patch_embed")(inp))
    cls = layers.Reshape((1, 16), name="cls")(layers.Dense(16, name="cls_proj")(layers.GlobalAveragePooling1D(name="cls_pool")(patches)))
    x = layers.Concatenate(axis=1, name="with_cls")([cls, patches])
    for b in range(blocks):
        h = layers.LayerNormalization(name=f"b{b}_norm1")(x)
        x = layers.Add(name=f"b{b}_add1")([x, layers.MultiHeadAttention(2, 8, name=f"b{b}_attn")(h, h)])
        h = layers.LayerNormalization(name=f"b{b}_norm2")(x)
        x = layers.Add(name=f"b{b}_add2")([x, layers.Dense(16, activation="gelu", name=f"b{b}_mlp")(h)])
    x = layers.LayerNormalization(name="final_norm")(x)
    head = layers.Dense(3, name="head")(layers.Flatten(name="flat")(layers.Cropping1D((0, 16), name="take_cls")(x)))
    return keras.Model(inp, head)


def test_keras_token_layers_and_gradcam_as_pytorch_grad_cam_computes_it():
    import tensorflow as tf

    from workbench.adapters.keras_adapter import KerasAdapter

    model = keras_tiny_vit()
    adapter = KerasAdapter(model, name="kvit", source_format="test", device="cpu")
    assert adapter.default_cam_layer() == "b1_norm1"
    info = adapter.layer("b1_norm1")
    assert info.prefix_tokens == 1 and info.output_shape == (4, 4, 16)
    batch = adapter.test_input(2, seed=4)
    (result, _) = explainers.get("gradcam").explain(adapter, batch, [1, 2])
    # by hand: gradients of the class score at the layer's tokens, class token dropped, on the 4 x 4 grid
    sub = tf.keras.Model(model.inputs, [model.get_layer("b1_norm1").output, model.output])
    with tf.GradientTape() as tape:
        act, out = sub(batch[:1])
        score = out[0, 1]
    grads = tape.gradient(score, act).numpy()[0, 1:].reshape(4, 4, 16)
    act = act.numpy()[0, 1:].reshape(4, 4, 16)
    cam = np.maximum((act * grads.mean(axis=(0, 1))).sum(-1), 0)
    from workbench.resize import bilinear_resize

    np.testing.assert_allclose(result.map, bilinear_resize(cam[None], (32, 32))[0], rtol=1e-4, atol=1e-7)
