"""Tiny random Hugging Face image classifiers (save_pretrained folders) for the tests: nothing is downloaded."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

SIZE = 32
LABELS = {0: "cat", 1: "dog", 2: "bird"}

# model_type -> (config class name, tiny config arguments)
TINY = {
    "vit": ("ViTConfig", dict(image_size=SIZE, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)),
    "deit": ("DeiTConfig", dict(image_size=SIZE, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)),
    "beit": ("BeitConfig", dict(image_size=SIZE, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, use_mean_pooling=True)),
    "swin": ("SwinConfig", dict(image_size=SIZE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4)),
    "convnext": ("ConvNextConfig", dict(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=SIZE)),
    "resnet": ("ResNetConfig", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")),
    # the mobile nets reduce by 32: 64 px keeps a 2x2 grid
    "mobilenet_v1": ("MobileNetV1Config", dict(image_size=64, depth_multiplier=0.25)),
    "mobilenet_v2": ("MobileNetV2Config", dict(image_size=64, depth_multiplier=0.25)),
    # hidden_dim must be round_filters(1280) at this width
    "efficientnet": ("EfficientNetConfig", dict(image_size=64, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320)),
    "regnet": ("RegNetConfig", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8)),
}

PREPROCESSOR = {
    "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
    "size": {"height": SIZE, "width": SIZE}, "image_processor_type": "ViTImageProcessor",
}


def size_of(model_type: str) -> int:
    return TINY[model_type][1].get("image_size", SIZE)


def build(model_type: str, seed: int = 0):
    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    from workbench.adapters.loading_hf import _without_torchvision_stand_in

    name, kwargs = TINY[model_type]
    config = getattr(transformers, name)(num_labels=len(LABELS), id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **kwargs)
    classes = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    with _without_torchvision_stand_in():  # an ONNX test earlier in the run may have put it in place
        cls = getattr(transformers, classes[0] if isinstance(classes, (list, tuple)) else classes)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # some inits scale norms by 0.02: with random weights the signal would vanish
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.weight is not None:
                module.weight.fill_(1.0)
                module.bias.zero_()
    return model


def save(model_type: str, folder: Path, *, preprocessor: dict | None = PREPROCESSOR, seed: int = 0) -> Path:
    model = build(model_type, seed)
    model.save_pretrained(folder)
    if preprocessor is not None:
        size = size_of(model_type)
        pre = dict(preprocessor, size={"height": size, "width": size})
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(pre))
    return Path(folder)


def zipped(folder: Path, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(Path(folder).iterdir()):
            archive.writestr(f"{prefix}{path.name}", path.read_bytes())
    return buffer.getvalue()
