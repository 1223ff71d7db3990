"""A saved run as TensorBoard event files: ``tensorboard --logdir DIR`` then shows it.

Written with tensorboardX's ``SummaryWriter`` (a maintained writer; no hand-made protobuf), into
``DIR/run-<id>``:

- images: every attribution map, tag ``<image>/<method>`` (overlaid on the image) and
  ``<image>/<method>/raw`` (the map alone, on its own scale);
- scalars: ``completeness_gap/<image>/<method>``, ``completeness_ratio/…``, ``seconds/…``,
  ``evaluations/…``, ``target_score/…``, ``agreement_spearman/<image>/<a>_vs_<b>`` and, for an
  evaluated run, each metric ``metrics/<metric>/<image>/<method>`` with the random map's value as
  ``metrics/<metric>/<image>/random``;
- histograms (with a layer report): ``layers/<layer>/channel_mean`` (each channel's mean on each image) and
  ``weights/<layer>``; scalars across depth (step = forward order) ``layer_statistics/<statistic>``;
- text: ``provenance``, the run's provenance JSON.

tensorboardX imports torch when it can, only to accept torch tensors; the app's server process must not
import a framework, so the app writes through :func:`event_zip`, which runs this module's writer in a
short-lived child process (the same command as ``python -m workbench tensorboard``).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import WorkbenchError
from .result import Comparison

LAYER_SCALARS = ("mean", "std", "min", "max", "fraction_zero", "dead_channels", "nan_count", "inf_count", "grad_norm")


def tag_part(text: str) -> str:
    """A name safe inside a TensorBoard tag (no slashes, which would nest it)."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(text)).strip("_") or "_"


def image_tags(comparison: Comparison) -> list[str]:
    """Each image's tag prefix: its file name (without folders), numbered when two share one."""
    names = [tag_part(Path(im.name).name) for im in comparison.images]
    return [f"{n}_{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def run_dir(comparison: Comparison, logdir: str | Path) -> Path:
    name = f"run-{comparison.run_id[:12]}" if comparison.run_id else "comparison"
    return Path(logdir) / name


def write_run(comparison: Comparison, logdir: str | Path, *, layers=None, weights=None, evaluation=None) -> Path:
    """Write the run's maps, scalars and provenance (and, given a LayerReport / weight statistics,
    their histograms; given the run's :class:`~workbench.metrics.Evaluation`, its metrics) as one
    event file under ``logdir``; -> that run's directory."""
    from tensorboardX import SummaryWriter

    from . import render
    from .agreement import spearman
    from .export import provenance_json

    target = run_dir(comparison, logdir)
    target.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(logdir=str(target), flush_secs=3600)
    try:
        for name, image, row in zip(image_tags(comparison), comparison.images, comparison.results):
            for result in row:
                method = tag_part(result.method)
                overlay = render.overlay(image.pixels, result.map, signed=result.signed)
                writer.add_image(f"{name}/{method}", overlay, 0, dataformats="HWC")
                values = render.normalise(result.map, result.signed)
                raw = render.colormap(values, render.default_cmap(result.signed), result.signed)
                writer.add_image(f"{name}/{method}/raw", (raw * 255).round().astype(np.uint8), 0, dataformats="HWC")
                for key in ("completeness_gap", "completeness_ratio", "seconds", "evaluations", "target_score"):
                    value = getattr(result, key)
                    if value is not None:
                        writer.add_scalar(f"{key}/{name}/{method}", float(value), 0)
            for i, a in enumerate(row):
                for b in row[i + 1 :]:
                    writer.add_scalar(
                        f"agreement_spearman/{name}/{tag_part(a.method)}_vs_{tag_part(b.method)}", spearman(a.map, b.map), 0
                    )
        if evaluation is not None:
            write_evaluation(writer, evaluation, image_tags(comparison))
        writer.add_text("provenance", "```json\n" + provenance_json(comparison, evaluation) + "\n```", 0)
        if layers is not None:
            write_layers(writer, layers)
        if weights is not None:
            for row in weights:
                if row.count and np.isfinite(row.mean):
                    writer.add_histogram_raw(
                        f"weights/{tag_part(row.name)}", min=row.min, max=row.max, num=row.count,
                        sum=float(row.mean * row.count), sum_squares=float((row.std**2 + row.mean**2) * row.count),
                        bucket_limits=row.edges[1:].tolist(), bucket_counts=row.histogram.tolist(), global_step=0,
                    )
                    writer.add_scalar(f"weight_norm/{tag_part(row.name)}", row.norm, 0)
    finally:
        writer.close()
    return target


def write_evaluation(writer, evaluation, names: Sequence[str]) -> None:
    """Each metric of each image and method, and beside it the metric on the seeded random map."""
    for result in evaluation.results:
        name = names[result.image_index] if 0 <= result.image_index < len(names) else tag_part(result.image)
        metric = tag_part(result.metric)
        if result.value is not None and np.isfinite(result.value):
            writer.add_scalar(f"metrics/{metric}/{name}/{tag_part(result.method)}", float(result.value), 0)
        if result.random_baseline is not None and np.isfinite(result.random_baseline):
            writer.add_scalar(f"metrics/{metric}/{name}/random", float(result.random_baseline), 0)


def write_layers(writer, report) -> None:
    """A LayerReport: each layer's channel means as a histogram, and every statistic as a curve over depth."""
    for row in report.rows:
        means = np.asarray(report.channel_means.get(row.name, ()), dtype=np.float64).ravel()
        means = means[np.isfinite(means)]
        if means.size:
            writer.add_histogram(f"layers/{tag_part(row.name)}/channel_mean", means, 0)
        for key in LAYER_SCALARS:
            value = getattr(row, key)
            if value is not None and np.isfinite(value):
                writer.add_scalar(f"layer_statistics/{key}", float(value), row.order)


# ---------------------------------------------------------------------------- a stored run's layers
def run_layer_report(store, run_id: str, comparison: Comparison):
    """(LayerReport, weight statistics) of a stored run's model on its images and targets, loading the model
    again from the stored file or the zoo; (None, None) when the run kept neither."""
    import model_zoo

    from .analysis import model_inputs
    from .images import load_image
    from .inspection import layer_report, weight_statistics
    from .intake import load_model, load_zoo_model

    model = dict(comparison.model)
    loaded_as = dict(model.get("loaded_as") or {})
    name = str(loaded_as.get("filename") or model.get("name") or "model")
    data = store.model_bytes(run_id)
    if data is not None:
        size = loaded_as.get("input_size")
        adapter = load_model(data, filename=name, architecture=loaded_as.get("architecture"), input_size=tuple(size) if size else None)
    elif name in {entry.name for entry in model_zoo.entries()}:
        adapter = load_zoo_model(name)
    else:
        return None, None
    if model.get("preset"):
        adapter.set_preset(str(model["preset"]))
    images = store.image_bytes(run_id)
    if not images or len(images) != len(comparison.images):
        return None, weight_statistics(adapter)
    loaded = [load_image(data, im.name, channels=adapter.input_size[2]) for data, im in zip(images, comparison.images)]
    _, batch = model_inputs(adapter, loaded)
    return layer_report(adapter, batch, [im.target for im in comparison.images]), weight_statistics(adapter)


# ---------------------------------------------------------------------------- the app's download
def event_zip(run_id: str, *, layers: bool = True, timeout: float = 300.0) -> bytes:
    """The run's event files as a zip (a folder ``run-<id>/`` to unpack into a log directory), written by
    ``python -m workbench tensorboard`` in a child process so that this process imports no framework."""
    with tempfile.TemporaryDirectory(prefix="workbench-tb-") as tmp:
        command = [sys.executable, "-m", "workbench", "tensorboard", run_id, "--logdir", tmp]
        if not layers:
            command.append("--no-layers")
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=str(Path(__file__).resolve().parents[1]), env=os.environ.copy()
        )
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise WorkbenchError(lines[-1].removeprefix("error: ") if lines else "Writing the TensorBoard files failed.")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(tmp).as_posix())
        return buffer.getvalue()


def read_back(run_path: str | Path) -> Mapping[str, Any]:
    """What TensorBoard itself reads from a run directory (its EventAccumulator): tags by kind."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_path), size_guidance={"images": 0, "scalars": 0, "histograms": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator
