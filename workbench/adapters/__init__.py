"""Model adapters. Only the framework-specific modules here import torch or tensorflow."""

from .base import LayerInfo, LayerPass, ModelAdapter, ModelInfo, choose_cam_layer

__all__ = ["LayerInfo", "LayerPass", "ModelAdapter", "ModelInfo", "choose_cam_layer"]
