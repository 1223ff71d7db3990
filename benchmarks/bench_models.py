"""Torch models for the explainer benchmark, built without torchvision (it is not installed everywhere).

``resnet50``: torchvision's ResNet-50 layout (bottleneck blocks [3, 4, 6, 3], widths 64..512 x 4,
projection shortcuts, stride on the 3x3 convolution as in torchvision >= 0.13), 224x224 RGB,
1000 classes, 25.56 M parameters. One ReLU module per use, so layer hooks (ours, captum's,
pytorch-grad-cam's) fire once per forward. Weights are seeded random (kaiming, as torchvision
initialises), with BatchNorm statistics calibrated on a few seeded noise images so the logits
stay finite and differ between images; no weights are downloaded.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu3 = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu3(y + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            stride = 1 if index == 1 else 2
            layers = [Bottleneck(in_channels, width, stride)]
            in_channels = width * Bottleneck.expansion
            layers += [Bottleneck(in_channels, width) for _ in range(count - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet50(seed: int = 0, calibration_images: int = 4) -> ResNet50:
    """Seeded random ResNet-50 in eval mode, BatchNorm statistics calibrated on noise images in [0, 1]."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = ResNet50()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # cumulative average over the calibration pass
        model.train()
        with torch.no_grad():
            model(torch.rand(calibration_images, 3, 224, 224))
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
