"""PyTorch definitions of the zoo architectures (NCHW input in [0, 1], logits out).

Module names are mirrored layer for layer by :mod:`model_zoo.keras_models`
(``layer1.0.conv1`` here is ``layer1_0_conv1`` there), which is what
:mod:`model_zoo.convert` relies on.
"""

from __future__ import annotations

import torch
from torch import nn


class ShapesCNN(nn.Module):
    """Plain CNN for 64x64 RGB: three conv-SiLU-avgpool blocks, a conv block, GAP, a linear head.

    SiLU and average pooling make the network smooth along any path in input space, so path
    methods converge fast on it: Integrated Gradients at 64 steps is complete to well under 0.1 %
    (a ReLU/max-pool version left gaps of up to 6.6 %, from the kinks, in captum as here).
    """

    def __init__(self, num_classes: int = 6, widths: tuple[int, int, int, int] = (16, 32, 64, 128)):
        super().__init__()
        c1, c2, c3, c4 = widths
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.act1 = nn.SiLU()
        self.pool1 = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.act2 = nn.SiLU()
        self.pool2 = nn.AvgPool2d(2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.act3 = nn.SiLU()
        self.pool3 = nn.AvgPool2d(2)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)
        self.act4 = nn.SiLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.pool3(self.act3(self.conv3(x)))
        x = self.act4(self.conv4(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, with one ReLU module per use so hooks fire once each."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNetMini(nn.Module):
    """A small ResNet-18-shaped network for 224x224 RGB, laid out like torchvision's ResNet."""

    def __init__(self, num_classes: int = 6, widths: tuple[int, int, int, int] = (16, 32, 64, 128)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = widths[0]
        for index, width in enumerate(widths, start=1):
            stride = 1 if index == 1 else 2
            stage = nn.Sequential(BasicBlock(in_channels, width, stride), BasicBlock(width, width))
            setattr(self, f"layer{index}", stage)
            in_channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


BUILDERS = {"shapes-cnn": ShapesCNN, "resnet-mini": ResNetMini}
