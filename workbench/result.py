"""The one result type. Grid, charts, store, export and CLI all read :class:`Attribution`."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Attribution:
    """One explainer's answer for one image and one target.

    ``map`` is float32 H x W at the model's input resolution, channels summed and sign kept
    for signed methods; ``channels`` is the per-channel H x W x C array where the method has one.
    ``reference_score`` is the score the attribution explains the difference from
    (IG: f(baseline); SHAP: the base value; expected gradients: mean f(background)).
    """

    method: str
    map: np.ndarray
    target: int
    target_label: str
    target_score: float
    signed: bool
    params: Mapping[str, Any]
    seconds: float
    evaluations: int  # forward + backward passes, counted per image
    device: str
    channels: np.ndarray | None = None
    reference_score: float | None = None
    completeness_gap: float | None = None  # |sum(attr) - (f(x) - reference)|
    completeness_ratio: float | None = None  # gap / |f(x) - reference|
    layer: str | None = None
    seed: int | None = None
    notes: tuple[str, ...] = ()  # e.g. "chunk halved to 8 after an out-of-memory error"
    model_fingerprint: str = ""
    image_fingerprint: str = ""

    def __post_init__(self):
        m = np.asarray(self.map, dtype=np.float32)
        if m.ndim != 2:
            raise ValueError(f"attribution map must be H x W, got {m.shape}")
        m.setflags(write=False)
        object.__setattr__(self, "map", m)
        if self.channels is not None:
            c = np.asarray(self.channels, dtype=np.float32)
            c.setflags(write=False)
            object.__setattr__(self, "channels", c)
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def summary(self) -> dict[str, Any]:
        """JSON-ready metadata (everything but the arrays)."""
        return {
            "method": self.method,
            "target": self.target,
            "target_label": self.target_label,
            "target_score": self.target_score,
            "reference_score": self.reference_score,
            "completeness_gap": self.completeness_gap,
            "completeness_ratio": self.completeness_ratio,
            "signed": self.signed,
            "params": dict(self.params),
            "seed": self.seed,
            "layer": self.layer,
            "seconds": self.seconds,
            "evaluations": self.evaluations,
            "device": self.device,
            "notes": list(self.notes),
            "model_fingerprint": self.model_fingerprint,
            "image_fingerprint": self.image_fingerprint,
            "shape": list(self.map.shape),
        }

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], map: np.ndarray, channels: np.ndarray | None = None) -> "Attribution":
        keys = {f.name for f in dataclasses.fields(cls)} - {"map", "channels"}
        values = {k: summary[k] for k in keys if k in summary}
        values["notes"] = tuple(values.get("notes", ()))
        return cls(map=map, channels=channels, **values)
