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
    score: str = ""  # what was explained: "logits" (pre-softmax) or "probabilities" ("" in runs saved before)

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

    def __reduce__(self):
        # params is a read-only mapping proxy, which does not pickle; results cross from a model's worker
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["params"] = dict(self.params)
        return (_attribution, (values,))

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
            "score": self.score,
            "shape": list(self.map.shape),
        }

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], map: np.ndarray, channels: np.ndarray | None = None) -> "Attribution":
        keys = {f.name for f in dataclasses.fields(cls)} - {"map", "channels"}
        values = {k: summary[k] for k in keys if k in summary}
        values["notes"] = tuple(values.get("notes", ()))
        return cls(map=map, channels=channels, **values)


def _attribution(values: dict[str, Any]) -> Attribution:
    return Attribution(**values)


@dataclasses.dataclass(frozen=True, eq=False)
class ExplainedImage:
    """One image of a comparison, as the model saw it."""

    name: str
    sha256: str  # of the uploaded bytes
    pixels: np.ndarray  # float32 H x W x C in [0, 1], resized to the model's input size (for display)
    target: int
    target_label: str
    notes: tuple[str, ...] = ()
    # The image at its own size and aspect ratio, and where it landed in the model's input
    # (workbench.resize.Placement as a dict): overlays are drawn on it, the map mapped back.
    original: np.ndarray | None = None
    placement: Mapping[str, Any] | None = None

    def display(self, attribution_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pixels, map) to draw: the original image and the map mapped back onto it when known,
        else the model-resolution pixels and the raw map."""
        if self.original is None or self.placement is None:
            return self.pixels, attribution_map
        from workbench.resize import Placement, to_original

        return self.original, to_original(attribution_map, Placement.from_dict(self.placement))


@dataclasses.dataclass(frozen=True)
class Stopped:
    """A run that stopped before every method finished: what was asked, and which method was running.

    A comparison carrying one holds only the methods that finished (its request is narrowed to
    them); the rest were not computed. Saved with the run and shown wherever it opens.
    """

    reason: str  # "cancelled": the user pressed Cancel, left the page or closed it
    asked: tuple[str, ...]  # every method the run was asked for, in order
    finished: tuple[str, ...]  # those whose maps are in the comparison
    running: str | None = None  # the method that was computing when the run stopped (its maps are dropped)

    def __post_init__(self):
        object.__setattr__(self, "asked", tuple(str(m) for m in self.asked))
        object.__setattr__(self, "finished", tuple(str(m) for m in self.finished))

    @property
    def not_run(self) -> tuple[str, ...]:
        """The methods asked for that were neither finished nor running."""
        return tuple(m for m in self.asked if m not in self.finished and m != self.running)

    def line(self, title=lambda name: name) -> str:
        """One line for the user, e.g. ``Cancelled: 2 of 3 methods finished; SHAP was running and is not in this run.``"""
        text = f"{self.reason.capitalize()}: {len(self.finished)} of {len(self.asked)} methods finished"
        dropped = []
        if self.running:
            dropped.append(f"{title(self.running)} was running")
        if self.not_run:
            dropped.append(f"{', '.join(title(m) for m in self.not_run)} did not start")
        if dropped:
            text += "; " + " and ".join(dropped) + (" (not in this run)" if self.finished else "")
        return text + "."

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "asked": list(self.asked), "finished": list(self.finished), "running": self.running}

    @classmethod
    def from_json(cls, data: Any) -> "Stopped | None":
        if not isinstance(data, Mapping):
            return None
        try:
            return cls(str(data["reason"]), tuple(data["asked"]), tuple(data["finished"]), data.get("running"))
        except (KeyError, TypeError):
            return None


@dataclasses.dataclass(frozen=True, eq=False)
class Comparison:
    """Methods x images for one model: what the grid shows, the store saves and a share link reopens.

    ``results[i][j]`` is the :class:`Attribution` of ``methods[j]`` on ``images[i]``.
    ``model`` is the adapter's :class:`~workbench.adapters.ModelInfo` as a dict.
    """

    model: Mapping[str, Any]
    images: tuple[ExplainedImage, ...]
    methods: tuple[str, ...]
    results: tuple[tuple[Attribution, ...], ...]
    seed: int
    versions: Mapping[str, str]
    created: float  # unix time
    run_id: str | None = None
    owner: str | None = None
    request: Any = None  # the workbench.engine.ExplainRequest it answers (its typed provenance); None for older runs
    stopped: Stopped | None = None  # set when the run stopped before every method asked for finished

    def result(self, image_index: int, method: str) -> Attribution:
        return self.results[image_index][self.methods.index(method)]

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "owner": self.owner,
            "created": self.created,
            "seed": self.seed,
            "model": dict(self.model),
            "methods": list(self.methods),
            "versions": dict(self.versions),
            "request": self.request.to_json() if self.request is not None else None,
            "stopped": self.stopped.to_json() if self.stopped is not None else None,
            "images": [
                {
                    "name": im.name,
                    "sha256": im.sha256,
                    "target": im.target,
                    "target_label": im.target_label,
                    "notes": list(im.notes),
                    "placement": dict(im.placement) if im.placement else None,
                    "results": [r.summary() for r in row],
                }
                for im, row in zip(self.images, self.results)
            ],
        }
