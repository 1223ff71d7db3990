"""What every evaluation metric shares: its parameters, its cost before running, and its answer.

A metric scores maps that already exist. Each one states up front, as Quantus does, its paper,
its defaults, which way is better, what it needs (a ground-truth mask, the model, a rerun of the
method) and its cost in model evaluations per image, so a page or the CLI can show the cost
before anything runs. Metrics take a :class:`~workbench.adapters.base.ModelAdapter` and numpy
arrays and return frozen :class:`Score` s: they run wherever the model lives (its worker).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from explainers.base import Param
from ..adapters.base import ModelAdapter
from ..errors import ParameterError
from ..settings import Settings, get_settings

Progress = Callable[[float, str], None]


@dataclasses.dataclass(frozen=True)
class Score:
    """One metric's answer for one map.

    ``curve`` is a tuple of (x, y) points where the metric has one (deletion/insertion: fraction of
    pixels vs probability of the target; randomisation: layers randomised vs Spearman ρ), with
    ``curve_labels`` naming the x values where they are not numbers to read (the layers).
    """

    value: float | None
    curve: tuple[tuple[float, float], ...] | None = None
    curve_labels: tuple[str, ...] | None = None
    evaluations: int = 0
    notes: tuple[str, ...] = ()
    flagged: bool = False


@dataclasses.dataclass(frozen=True)
class Case:
    """What a metric may look at for a batch of maps of one method (numpy only, picklable).

    ``batch`` is the model input [N, H, W, C]; ``maps`` the attribution maps [N, H, W] at the
    model's input size; ``masks`` a bool [H, W] mask per image or None.
    """

    batch: np.ndarray
    targets: tuple[int, ...]
    maps: np.ndarray
    masks: tuple[np.ndarray | None, ...]
    method: str | None = None
    method_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Metric:
    """Base of every metric. Subclasses set the class attributes and implement :meth:`score`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    needs_mask: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False
    reruns_method: ClassVar[bool] = False  # randomisation: the method runs again on changed models
    has_curve: ClassVar[bool] = False
    random_baseline: ClassVar[bool] = True  # the same metric on a seeded random map is meaningful
    params: ClassVar[tuple[Param, ...]] = ()

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {p.name: p.default for p in cls.params}

    @classmethod
    def normalise_params(cls, params: Mapping[str, Any] | None = None, settings: Settings | None = None) -> dict[str, Any]:
        settings = settings or get_settings()
        given = dict(params or {})
        known = {p.name for p in cls.params}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ParameterError(
                f"Metric {cls.name} has no parameter {', '.join(unknown)}; it takes {', '.join(sorted(known)) or 'none'}."
            )
        return {p.name: p.coerce(given.get(p.name), settings) for p in cls.params}

    @classmethod
    def cost(cls, adapter: ModelAdapter | None, params: Mapping[str, Any], method: str | None = None,
             method_params: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """(forward, backward) model passes per image for one method's map, before running.
        The random-map baseline costs :meth:`baseline_cost` once per image on top."""
        return (0, 0)

    @classmethod
    def baseline_cost(cls, adapter: ModelAdapter | None, params: Mapping[str, Any]) -> tuple[int, int]:
        return cls.cost(adapter, params) if cls.random_baseline else (0, 0)

    def score(self, adapter: ModelAdapter | None, case: Case, params: Mapping[str, Any], seed: int,
              progress: Progress) -> list[Score]:
        """One :class:`Score` per image of ``case``."""
        raise NotImplementedError


REGISTRY: dict[str, type[Metric]] = {}


def register(cls: type[Metric]) -> type[Metric]:
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"metric name {cls.name!r} missing or registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> Metric:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ParameterError(f"Unknown metric {name!r}; choose from {', '.join(REGISTRY)}.") from None


def names() -> list[str]:
    return list(REGISTRY)


# ---------------------------------------------------------------------------- shared helpers
def fit_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A bool mask at ``shape`` (H, W): any non-zero value is inside; resized by nearest neighbour."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.any(axis=-1) if m.dtype == bool else (m != 0).any(axis=-1)
    m = m != 0
    h, w = int(shape[0]), int(shape[1])
    if m.shape == (h, w):
        return m
    rows = np.minimum(((np.arange(h) + 0.5) * m.shape[0] / h).astype(np.int64), m.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * m.shape[1] / w).astype(np.int64), m.shape[1] - 1)
    return m[rows][:, cols]


def random_map(shape: Sequence[int], seed: int) -> np.ndarray:
    """The seeded random map every method is compared with: uniform in [0, 1), no ties in practice."""
    return np.random.default_rng([seed, 2018]).random(tuple(shape)).astype(np.float32)
