"""What the Evaluate section does, without the widgets: plan, run and keep the metrics of a comparison.

An evaluation belongs to one comparison: it is cached in the session's workspace under a key made
of the comparison's key, the metrics and their parameters, and — once the comparison is saved — it
is stored beside the run (:func:`workbench.sharing.save_evaluation`), so the run's share link and its
exports show it without computing anything. Masks come from the workspace's images (zoo samples,
masks uploaded on the Images page), matched to the comparison's images by content hash.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import metrics, session
from .result import Comparison
from .settings import Settings, get_settings

log = logging.getLogger("workbench.app")

Progress = Callable[[float, str], None]
DEFAULT_METRICS = ("deletion", "insertion", "pointing_game", "mask_energy", "randomisation", "sparseness", "complexity")


@dataclasses.dataclass(frozen=True)
class EvaluationPlan:
    """The metrics and parameters asked for, their cost before running, and the cache key."""

    metrics: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]]
    estimate: Mapping[str, Mapping[str, float]]  # metric -> evaluations, seconds (all images and methods)
    key: str

    @property
    def evaluations(self) -> int:
        return int(sum(e["evaluations"] for e in self.estimate.values()))

    @property
    def seconds(self) -> float:
        return float(sum(e["seconds"] for e in self.estimate.values()))


def masks_for(ws: session.Workspace, comparison: Comparison) -> list[np.ndarray | None]:
    """The ground-truth mask of each image of the comparison that has one in the workspace."""
    out = []
    for image in comparison.images:
        entry = ws.images.get(image.sha256)
        out.append(entry.mask if entry is not None else None)
    return out


def plan(
    record: session.LoadedModel,
    comparison: Comparison,
    comparison_key: str,
    chosen: Sequence[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    masks: Sequence[np.ndarray | None] = (),
    settings: Settings | None = None,
) -> EvaluationPlan:
    """Check the metrics' parameters (ParameterError) and estimate the cost; nothing runs."""
    settings = settings or get_settings()
    normal = metrics.normalise_params(list(chosen), {m: (params or {}).get(m) or {} for m in chosen}, settings)
    method_params = {m: dict(comparison.results[0][j].params) for j, m in enumerate(comparison.methods)} if comparison.results else {}
    cost = metrics.estimate(
        record.adapter, len(comparison.images), comparison.methods, list(chosen), normal, method_params, session.forward_seconds(record)
    )
    mask_ids = [session.digest(np.packbits(m).tobytes().hex()) if m is not None else None for m in masks]
    key = session.digest({"comparison": comparison_key, "metrics": list(chosen), "params": normal, "masks": mask_ids})
    return EvaluationPlan(tuple(chosen), normal, cost, key)


def cached(ws: session.Workspace, work: EvaluationPlan, comparison: Comparison) -> Any:
    """The evaluation for this plan if this session computed it, else the one saved with the run when it
    used the same metrics and parameters; None otherwise. Computes nothing."""
    found = ws.evaluations.get(work.key)
    if found is not None:
        return found
    if comparison.run_id:
        opened = ws.opened.get(comparison.run_id)
        saved = opened.evaluation if opened is not None else None
        if saved is not None and tuple(saved.metrics) == work.metrics and {k: dict(v) for k, v in saved.params.items()} == dict(work.params):
            return saved
    return None


def run(
    ws: session.Workspace,
    record: session.LoadedModel,
    comparison: Comparison,
    work: EvaluationPlan,
    masks: Sequence[np.ndarray | None],
    *,
    progress: Progress | None = None,
    store=None,
    settings: Settings | None = None,
) -> Any:
    """Compute the plan's metrics on the comparison's maps with its model, cache them and, when the
    comparison is saved, store them with the run. -> the :class:`workbench.metrics.Evaluation`."""
    from . import workers

    started = time.perf_counter()
    evaluation = workers.call(
        record.adapter, evaluate_in_worker, comparison, tuple(work.metrics), dict(work.params), list(masks),
        settings or get_settings(), progress=progress, doing=f"evaluating {', '.join(work.metrics)}",
    )
    log.info("evaluated %s on %d image(s) of %s in %.2f s", ", ".join(work.metrics), len(comparison.images), record.name,
             time.perf_counter() - started)
    ws.evaluations.put(work.key, evaluation)
    if comparison.run_id and store is not None:
        from . import sharing

        sharing.save_evaluation(ws, comparison.run_id, evaluation, masks, store)
    return evaluation


def keep_with_run(ws: session.Workspace, comparison: Comparison, evaluation: Any, masks: Sequence[np.ndarray | None], store) -> None:
    """An evaluation computed before its comparison was saved (Save & share later) is stored with the run too."""
    if comparison.run_id and evaluation is not None:
        from . import sharing

        if sharing.saved_evaluation(ws, comparison.run_id) is None:
            sharing.save_evaluation(ws, comparison.run_id, evaluation, masks, store)


# ---------------------------------------------------------------------------- what the charts show
def curve_rows(evaluation: Any, metric: str, image_index: int) -> list[dict[str, Any]]:
    """Long-form points of one metric's curves for one image: each method and the random map."""
    rows = []
    for r in evaluation.results:
        if r.metric != metric or r.image_index != image_index or not r.curve:
            continue
        labels = r.curve_labels or ()
        for k, (x, y) in enumerate(r.curve):
            rows.append({"method": r.method, "x": x, "y": y, "layer": labels[k] if k < len(labels) else "", "random": False})
        if r.method == evaluation.methods[0] and r.random_curve:
            rows += [{"method": metrics.RANDOM, "x": x, "y": y, "layer": "", "random": True} for x, y in r.random_curve]
    return rows


def table_rows(evaluation: Any) -> list[dict[str, Any]]:
    """Methods x metrics (mean over images; titles as column names), the random-map row last."""
    titles = {m: metrics.REGISTRY[m].title if m in metrics.REGISTRY else m for m in evaluation.metrics}
    return [{"method": row["method"], **{titles[m]: row[m] for m in evaluation.metrics}} for row in evaluation.table()]


def mask_picture(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 RGB: the image with its ground-truth mask tinted green and outlined (mask fitted to the image)."""
    from .metrics.base import fit_mask

    rgb = np.asarray(pixels, np.float32)
    if rgb.ndim == 2 or rgb.shape[-1] == 1:
        rgb = np.repeat(rgb.reshape(*rgb.shape[:2], 1), 3, axis=-1)
    inside = fit_mask(mask, rgb.shape[:2])
    padded = np.pad(inside, 1, mode="edge")
    eroded = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = inside & ~eroded
    green = np.array([0.1, 0.85, 0.3], np.float32)
    out = np.where(inside[..., None], 0.6 * rgb + 0.4 * green, 0.6 * rgb)
    out[edge] = green
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------- masks on the Images page
MASK_SUFFIX = "_mask"


def attach_mask(ws: session.Workspace, image_id: str, data: bytes, name: str) -> None:
    """A mask PNG uploaded for one image (any non-zero pixel is in the mask). Raises ImageRejected."""
    from .masks import read_mask

    entry = ws.images[image_id]
    entry.mask = read_mask(data, name, size=entry.image.original_size)


def mask_target(ws: session.Workspace, filename: str) -> str | None:
    """The image a ``<stem>_mask.png`` upload belongs to (by the image's file stem), if one is loaded."""
    stem, dot, extension = filename.rpartition(".")
    if not dot or extension.lower() != "png" or not stem.endswith(MASK_SUFFIX):
        return None
    wanted = stem[: -len(MASK_SUFFIX)]
    for entry in ws.images.values():
        if entry.name.rpartition(".")[0] == wanted or entry.name == wanted:
            return entry.id
    return None


def evaluate_in_worker(adapter, comparison: Comparison, names, params, masks, settings: Settings, progress: Progress | None = None):
    """The metrics on a comparison's maps, where the model lives (its worker): randomised copies included."""
    return metrics.evaluate_comparison(adapter, comparison, list(names), params=params, masks=masks, progress=progress, settings=settings)


def evaluate_maps_in_worker(adapter, batch, targets, maps, names, params, masks, image_names, method_params, seed: int,
                            progress: Progress | None = None):
    """The metrics on given maps (the CLI's ``evaluate --maps``), where the model lives."""
    return metrics.evaluate(
        adapter, batch, targets, maps, list(names), params=params, masks=masks, image_names=image_names,
        method_params=method_params, seed=seed, progress=progress,
    )
