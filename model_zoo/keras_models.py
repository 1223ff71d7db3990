"""Keras 3 twins of :mod:`model_zoo.torch_models` (NHWC input in [0, 1], logits out).

The twins compute the same function as the PyTorch modules once weights are copied
with :mod:`model_zoo.convert`. Two details make that exact:

* BatchNormalization uses ``epsilon=1e-5`` (PyTorch's default; Keras defaults to 1e-3).
* Strided convolutions and the stem max-pool use explicit ``ZeroPadding2D`` and
  ``padding="valid"``: Keras' ``"same"`` pads only the bottom/right when the stride
  is 2 and the input is even, PyTorch pads both sides. Zero padding the max-pool is
  exact because it follows a ReLU (inputs >= 0).

Only built-in layers are used, so ``keras.saving.load_model(path, safe_mode=True)``
loads the saved models without custom objects. Layer names are the PyTorch module
names with ``.`` replaced by ``_``; each residual block ends in a ReLU named
``layer<i>_<j>_out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import layers  # noqa: E402

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # PyTorch's momentum=0.1 in Keras' convention


def shapes_cnn(num_classes: int = 6, widths: tuple[int, int, int, int] = (16, 32, 64, 128)) -> keras.Model:
    inputs = keras.Input((64, 64, 3), name="input")
    x = inputs
    for index, width in enumerate(widths, start=1):
        x = layers.Conv2D(width, 3, padding="same", name=f"conv{index}")(x)
        x = layers.Activation("silu", name=f"act{index}")(x)
        if index < len(widths):
            x = layers.AveragePooling2D(2, name=f"pool{index}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="shapes_cnn")


def _conv(x, filters: int, kernel: int, stride: int, name: str):
    """A bias-free conv with PyTorch's symmetric padding of kernel // 2."""
    pad = kernel // 2
    if stride == 1:
        return layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=name)(x)
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)


def _batch_norm(x, name: str):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _basic_block(x, channels: int, stride: int, name: str):
    identity = x
    if stride != 1 or x.shape[-1] != channels:
        identity = _conv(x, channels, 1, stride, f"{name}_downsample_0")
        identity = _batch_norm(identity, f"{name}_downsample_1")
    out = _conv(x, channels, 3, stride, f"{name}_conv1")
    out = _batch_norm(out, f"{name}_bn1")
    out = layers.ReLU(name=f"{name}_relu1")(out)
    out = _conv(out, channels, 3, 1, f"{name}_conv2")
    out = _batch_norm(out, f"{name}_bn2")
    out = layers.Add(name=f"{name}_add")([out, identity])
    return layers.ReLU(name=f"{name}_out")(out)


def resnet_mini(num_classes: int = 6, widths: tuple[int, int, int, int] = (16, 32, 64, 128)) -> keras.Model:
    inputs = keras.Input((224, 224, 3), name="input")
    x = _conv(inputs, widths[0], 7, 2, "conv1")
    x = _batch_norm(x, "bn1")
    x = layers.ReLU(name="relu")(x)
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    for index, width in enumerate(widths, start=1):
        stride = 1 if index == 1 else 2
        x = _basic_block(x, width, stride, f"layer{index}_0")
        x = _basic_block(x, width, 1, f"layer{index}_1")
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    outputs = layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="resnet_mini")


BUILDERS = {"shapes-cnn": shapes_cnn, "resnet-mini": resnet_mini}
