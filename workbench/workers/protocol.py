"""The messages between the server and a model worker (pickled over a pipe).

Server -> worker: :class:`Load` once, then any number of :class:`Call`; :class:`Shutdown`.
Worker -> server: :class:`Ready` when its frameworks are imported, then per request any
number of :class:`Progress` and one :class:`Loaded`, :class:`Done` or :class:`Failed`.

A :class:`Call` names a framework-neutral function ``fn(adapter, *args)`` defined at module
level (it is pickled by reference and imported in the worker); its arguments and its result
are plain picklable values: numpy arrays, frozen dataclasses (``Attribution``), dicts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..adapters.base import LayerInfo, ModelInfo
from ..settings import Settings


@dataclasses.dataclass(frozen=True)
class Ready:
    pid: int
    seconds: float  # to import the frameworks


@dataclasses.dataclass(frozen=True)
class Load:
    key: Any  # session.ModelKey
    data: bytes | None
    settings: Settings


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What the server keeps of a loaded model: enough to answer every metadata question locally."""

    info: ModelInfo
    own_labels: tuple[str, ...] | None  # the labels the model was loaded with (None: "class k")
    layers: tuple[LayerInfo, ...]
    seconds: float
    state: dict = dataclasses.field(default_factory=dict)  # the loaded adapter's VIEW_STATE and extras (own preset, ...)


# What a view of a loaded model may change (ModelAdapter.view): sent with every call, applied to a copy
VIEW_STATE = ("preset", "_labels", "score", "resize_mode", "crop_fraction", "resample")
# What the server's copy also needs from the loaded adapter
LOADED_STATE = VIEW_STATE + ("own_preset", "_softmax_head", "patch_size")


@dataclasses.dataclass(frozen=True)
class Call:
    fn: Callable[..., Any]
    args: tuple
    state: dict  # the view's VIEW_STATE
    settings: Settings
    progress: bool = False  # pass fn a progress=callable(fraction, message) keyword


@dataclasses.dataclass(frozen=True)
class Progress:
    fraction: float
    message: str


@dataclasses.dataclass(frozen=True)
class Done:
    value: Any
    seconds: float


@dataclasses.dataclass(frozen=True)
class Failed:
    kind: str  # the class name of a workbench.errors error, or "" for an unexpected exception
    message: str
    traceback: str = ""


@dataclasses.dataclass(frozen=True)
class Shutdown:
    pass
