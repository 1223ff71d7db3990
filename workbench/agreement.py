"""Agreement between attribution maps: Spearman rank correlation and top-k % IoU."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .result import Attribution


def _ranks(values: np.ndarray) -> np.ndarray:
    flat = values.ravel()
    order = np.argsort(flat, kind="mergesort")
    ranks = np.empty(flat.size, np.float64)
    sorted_vals = flat[order]
    # average ranks for ties
    boundaries = np.flatnonzero(np.diff(sorted_vals)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [flat.size]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + e - 1)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(np.asarray(a)), _ranks(np.asarray(b))
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def top_k_mask(a: np.ndarray, percent: float) -> np.ndarray:
    flat = np.asarray(a, dtype=np.float64).ravel()
    k = max(1, int(round(flat.size * percent / 100.0)))
    mask = np.zeros(flat.size, bool)
    mask[np.argsort(-flat, kind="mergesort")[:k]] = True
    return mask.reshape(np.shape(a))


def top_k_iou(a: np.ndarray, b: np.ndarray, percent: float = 10.0) -> float:
    ma, mb = top_k_mask(a, percent), top_k_mask(b, percent)
    union = np.logical_or(ma, mb).sum()
    return float(np.logical_and(ma, mb).sum() / union) if union else 0.0


def agreement_matrix(results: Sequence[Attribution], percent: float = 10.0) -> dict[str, np.ndarray]:
    """Pairwise Spearman and top-k IoU over the maps (signed maps compared by magnitude of evidence for the target)."""
    maps = [r.map for r in results]
    n = len(maps)
    rho = np.eye(n)
    iou = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            rho[i, j] = rho[j, i] = spearman(maps[i], maps[j])
            iou[i, j] = iou[j, i] = top_k_iou(maps[i], maps[j], percent)
    return {"spearman": rho, "iou": iou}
