"""Attention rollout — Abnar & Zuidema 2020, https://arxiv.org/abs/2005.00928

How much of each patch flows into the class token through every layer's attention: each
layer's attention (heads fused) is mixed half and half with the identity for the residual
connection, rows renormalised, and the layers multiplied first to last. The class token's row
over the patch tokens, on the patch grid and upsampled, is the map. It reads the attention the
forward pass computes and no gradient, so it is the same for every target class (as in the paper
and jacobgil/vit-explain, whose head fusion and discard options it offers).
"""

from __future__ import annotations

import numpy as np

from workbench.adapters.base import token_grid
from workbench.errors import LayerError
from workbench.resize import bilinear_resize

from .base import Cost, Explainer, Param, Partial, register


def rollout(attentions: list[np.ndarray], head_fusion: str = "mean", discard_ratio: float = 0.0) -> np.ndarray:
    """[N, T, T] rolled-out attention from per-layer [N, heads, T, T] weights."""
    first = attentions[0]
    n, _, tokens, _ = first.shape
    eye = np.eye(tokens, dtype=np.float64)
    result = np.broadcast_to(eye, (n, tokens, tokens)).copy()
    for attention in attentions:
        a = np.asarray(attention, dtype=np.float64)
        fused = {"mean": a.mean(axis=1), "max": a.max(axis=1), "min": a.min(axis=1)}[head_fusion]
        if discard_ratio > 0:
            # drop the weakest links, never the class token's own column (vit-explain's convention)
            flat = fused.reshape(n, -1).copy()
            k = int(flat.shape[1] * discard_ratio)
            for i in range(n):
                lowest = np.argsort(flat[i])[:k]
                lowest = lowest[lowest != 0]
                flat[i, lowest] = 0
            fused = flat.reshape(n, tokens, tokens)
        mixed = (fused + eye) / 2
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        result = mixed @ result
    return result


@register
class AttentionRollout(Explainer):
    name = "attention_rollout"
    title = "Attention rollout"
    summary = "Attention flow from the patches to the class token through every layer (vision transformers)."
    paper = "https://arxiv.org/abs/2005.00928"
    signed = False
    needs_attention = True
    params = (
        Param("head_fusion", "mean", str, "How the heads of a layer are combined.", choices=("mean", "max", "min")),
        Param("discard_ratio", 0.0, float, "Share of the weakest attention links dropped per layer.", minimum=0.0, maximum=0.99),
    )

    @classmethod
    def cost(cls, adapter, params=None, background_size=0) -> Cost:
        return Cost(forward=1, backward=0)

    def _attribute(self, calls, x, targets, params, seed, background, progress):
        adapter = calls.adapter
        batch = calls.host_batch  # attention weights come from the adapter's host primitive
        partials = []
        for block in calls.blocks(len(batch)):
            calls.forward += block.stop - block.start
            attentions = adapter.attention_maps(batch[block])
            tokens = attentions[0].shape[-1]
            if any(a.shape[-1] != tokens or a.shape[0] != block.stop - block.start for a in attentions):
                raise LayerError(
                    "This transformer attends within windows (e.g. Swin), not across all patches; attention rollout "
                    "needs global attention (ViT, DeiT, BEiT)."
                )
            grid = token_grid((tokens, 2), adapter.input_size)
            if grid is None or grid[0] < 1:
                raise LayerError(
                    f"The attention covers {tokens} tokens, which are not a class token and a patch grid of the "
                    f"{adapter.input_size[0]}x{adapter.input_size[1]} input; attention rollout needs a ViT-style model."
                )
            prefix, gh, gw = grid
            rolled = rollout(attentions, params["head_fusion"], params["discard_ratio"])
            maps = rolled[:, 0, prefix:].reshape(-1, gh, gw).astype(np.float32)
            maps = bilinear_resize(maps, adapter.input_size[:2])
            partials.extend(Partial(map=m) for m in maps)
            progress(block.stop / len(batch), f"{self.title}: {block.stop}/{len(batch)}")
        return partials
