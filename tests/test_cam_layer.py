"""The automatic CAM layer is the last layer whose output is still the feature grid, on both frameworks."""

import numpy as np
import pytest

from workbench.adapters.base import LayerInfo, choose_cam_layer, token_grid


def test_resampling_layers_are_never_the_automatic_choice():
    layers = [
        LayerInfo("block", "Sequential", (32, 32, 8), 1),
        LayerInfo("avgpool", "AdaptiveAvgPool2d", (7, 7, 8), 2, resamples=True),
        LayerInfo("head", "Sequential", (7, 7, 8), 3, resamples=True),
        LayerInfo("fc", "Linear", (3,), 4),
    ]
    assert choose_cam_layer(layers) == "block"
    # without the flag the 7x7 head would win: the flag is what decides
    assert choose_cam_layer([LayerInfo(l.name, l.kind, l.output_shape, l.order) for l in layers]) == "head"


def test_token_grid_drops_leading_tokens_and_keeps_the_aspect_ratio():
    assert token_grid((17, 8), (64, 64, 3)) == (1, 4, 4)  # ViT: class token + 4x4 patches
    assert token_grid((18, 8), (64, 64, 3)) == (2, 4, 4)  # DeiT: class + distillation tokens
    assert token_grid((16, 8), (64, 64, 3)) == (0, 4, 4)  # Swin: patches only
    assert token_grid((9, 8), (64, 128, 3)) == (1, 2, 4)  # non-square input
    assert token_grid((17, 1), (64, 64, 3)) is None  # [N, C, 1] after a 1-D pool: not tokens
    assert token_grid((13, 8), (64, 64, 3)) is None  # no patch grid of the input in 13 tokens


def test_vit_rule_takes_the_last_blocks_first_norm():
    layers = [
        LayerInfo("enc.0.norm1", "LayerNorm", (4, 4, 8), 1, prefix_tokens=1),
        LayerInfo("enc.0.norm2", "LayerNorm", (4, 4, 8), 2, prefix_tokens=1),
        LayerInfo("enc.1.norm1", "LayerNorm", (4, 4, 8), 3, prefix_tokens=1),
        LayerInfo("enc.1.norm2", "LayerNorm", (4, 4, 8), 4, prefix_tokens=1),
        LayerInfo("enc.1", "Block", (4, 4, 8), 5, prefix_tokens=1),
        LayerInfo("norm", "LayerNorm", (4, 4, 8), 6, prefix_tokens=1),
        LayerInfo("head", "Linear", (3,), 7),
    ]
    assert choose_cam_layer(layers) == "enc.1.norm1"


def vgg_torch():
    """torchvision's VGG layout, scaled down: features (ending at 32x32 on a 64x64 input), AdaptiveAvgPool2d((7, 7)), classifier."""
    import torch

    nn = torch.nn

    class VGGStyle(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64 -> 32
                nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),  # the 32x32 block
            )
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 49, 3))

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)))

    torch.manual_seed(0)
    return VGGStyle()


def test_vgg_head_at_64_picks_the_32x32_block_torch():
    from workbench.adapters.torch_adapter import TorchAdapter

    adapter = TorchAdapter(vgg_torch(), name="vgg", source_format="test", input_size=(64, 64, 3), device="cpu")
    assert adapter.layer("avgpool").output_shape == (7, 7, 8) and adapter.layer("avgpool").resamples
    chosen = adapter.default_cam_layer()
    assert chosen == "features"
    assert adapter.layer(chosen).output_shape == (32, 32, 8)
    passed = adapter.layer_gradients(adapter.test_input(1), chosen, [0])
    assert passed.activations.shape == (1, 32, 32, 8)


def test_vgg_head_at_64_picks_the_32x32_block_keras():
    import keras

    from workbench.adapters.keras_adapter import KerasAdapter

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.AdaptiveAveragePooling2D((7, 7), name="avgpool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(x))
    adapter = KerasAdapter(model, name="vgg", source_format="test", device="cpu")
    assert adapter.layer("avgpool").resamples
    assert adapter.default_cam_layer() == "conv2"
    assert adapter.layer("conv2").output_shape == (32, 32, 8)
    passed = adapter.layer_gradients(adapter.test_input(1), "conv2", [0])
    assert passed.activations.shape == (1, 32, 32, 8)
    assert np.any(passed.gradients != 0)
