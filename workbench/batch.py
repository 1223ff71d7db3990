"""Explain whole datasets: the comparison engine over chunks of images, locally or on Ray.

A :class:`BatchJob` is one explain request stretched over a list of images. The images are cut
into chunks; a :class:`ChunkRunner` (one per worker process or Ray actor, the model loaded once
in its ``__init__``) runs every method on every image of a chunk and hands back plain rows, one
per image x method, each with its map as ``.npy`` bytes. Only the driver writes to the output
directory, so a Ray cluster needs no shared file system:

- ``maps/<key>__<method>.npy`` -- the H x W float32 map, as ``explain`` writes it
- ``parts/*.json`` -- the finished images' rows, written atomically as results arrive; ``--resume``
  skips every image already in a part, so a killed job loses at most the chunks in flight
- ``results.parquet`` -- every row (one per image x method; one per failed image)
- ``summary.json`` -- totals, throughput, per-class aggregates of timings, scores and metrics

The parent process never imports a framework: locally the chunks run in a pool of spawned
worker processes (``workers``), with ``ray`` as a Ray Data pipeline whose ``map_batches`` uses a
callable class (one model per actor, ``num_gpus`` when asked).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import io
import json
import math
import multiprocessing
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import ParameterError, WorkbenchError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
DEFAULT_CHUNK = 8
Progress = Callable[[int, int, float], None]  # images done, images total, seconds elapsed
TRACE_VARIABLE = "WORKBENCH_BATCH_TRACE"  # a file: driver, workers and actors append timed events to it


def trace(event: str, **info: Any) -> None:
    """One JSON line (wall-clock time, process, event) in ``$WORKBENCH_BATCH_TRACE``, if set; what
    ``benchmarks/bench_batch.py --trace`` reads to tell where a job's time goes."""
    path = os.environ.get(TRACE_VARIABLE)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"t": time.time(), "pid": os.getpid(), "event": event, **info}) + "\n")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: a file path or zoo name and the same options as ``explain``."""

    spec: str
    architecture: str | None = None
    preprocess: str | None = None
    labels_path: str | None = None
    device: str = "auto"


@dataclasses.dataclass(frozen=True)
class BatchJob:
    model: ModelSpec
    methods: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    target: str | None = None  # None or "predicted": each image's predicted class; else a class index or label
    metrics: tuple[str, ...] = ()
    metric_params: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    seed: int = 0
    chunk_size: int = DEFAULT_CHUNK

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"methods": list(self.methods), "metrics": list(self.metrics)}


# ---------------------------------------------------------------------------- the image list
def list_images(source: str) -> list[str]:
    """A directory (searched recursively), a glob pattern or a ``.txt`` list (one path a line,
    relative to the list's folder) -> sorted image paths."""
    path = Path(source)
    if path.is_dir():
        found = [str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    elif path.is_file() and path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines()]
        found = [str(p if (p := Path(line)).is_absolute() else path.parent / p) for line in lines if line and not line.startswith("#")]
    else:
        found = sorted(p for p in glob.glob(source, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    found = [p for p in found if not is_mask_beside_image(p)]
    if not found:
        raise ParameterError(f"No images found at {source!r}: give a folder, a glob such as 'val/*.png', or a .txt list.")
    return found


def is_mask_beside_image(path: str) -> bool:
    """``<stem>_mask.png`` beside ``<stem>.<ext>`` is that image's ground-truth mask, not an image."""
    p = Path(path)
    if not p.stem.endswith("_mask"):
        return False
    stem = p.stem[: -len("_mask")]
    return any((p.parent / f"{stem}{suffix}").is_file() for suffix in IMAGE_SUFFIXES)


def image_keys(paths: Sequence[str]) -> list[str]:
    """File names for the maps: the image's stem, as ``explain`` names them; where two images share a
    stem (class folders), the path relative to their common folder with '/' written as '-'."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))
    return [str(Path(p).resolve().relative_to(root).with_suffix("")).replace(os.sep, "-") for p in paths]


def _process_started() -> float | None:
    """When this process started (wall clock), for the trace; None where it cannot be told."""
    if not os.environ.get(TRACE_VARIABLE):
        return None
    try:
        import psutil  # a dependency of Ray, not of the workbench

        return psutil.Process().create_time()
    except ImportError:
        return None


# ---------------------------------------------------------------------------- one chunk, in a worker
def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if not isinstance(error, WorkbenchError) else text


class ChunkRunner:
    """Loads the model once; each call explains one chunk of images (dicts with ``path`` and ``key``)."""

    def __init__(self, job: BatchJob):
        trace("worker.init", process_started=_process_started())
        import explainers

        from .cli import open_model, resolve_target  # the same loading path and target rule as ``explain``

        # this process (a pool worker or a Ray actor) is itself the model's worker: load in it, not in another
        os.environ["WORKBENCH_MODEL_WORKERS"] = "0"

        for name in job.methods:
            explainers.get(name)
        self.job = job
        m = job.model
        self.opened = open_model(m.spec, architecture=m.architecture, preprocess=m.preprocess, labels_path=m.labels_path, device=m.device)
        self.adapter = self.opened.adapter
        self.target = resolve_target(job.target, self.adapter.labels)
        self.params = {name: explainers.REGISTRY[name].normalise_params(job.params.get(name)) for name in job.methods}
        self.evaluate = metric_evaluator(job.metrics, job.metric_params, seed=job.seed) if job.metrics else None
        trace("worker.ready")

    def __call__(self, items: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
        from .images import load_image

        started = time.time()
        rows: list[dict[str, Any]] = []
        loaded = []
        for item in items:
            try:
                image = load_image(Path(item["path"]).read_bytes(), name=Path(item["path"]).name, channels=self.adapter.input_size[2])
            except (WorkbenchError, OSError) as error:
                rows.append(failure_row(item, _one_line(error)))
                continue
            loaded.append((item, image))
        if not loaded:
            return rows
        try:
            rows += self._explain(loaded)
        except Exception:  # noqa: BLE001 - isolate the image that fails, the others go on
            for pair in loaded:
                try:
                    rows += self._explain([pair])
                except Exception as error:  # noqa: BLE001
                    rows.append(failure_row(pair[0], _one_line(error)))
        trace("chunk", started=started, images=len(items))
        return rows

    def _explain(self, loaded) -> list[dict[str, Any]]:
        from .engine import Engine, ExplainRequest, ImageRef

        images = [image for _, image in loaded]
        targets = None if self.target is None else [self.target] * len(images)
        # one typed request per chunk, with how the model was loaded, as ``explain`` builds it
        request = ExplainRequest.build(
            self.opened.record(), [ImageRef(im.name, im.sha256) for im in images], self.job.methods, self.params,
            targets=targets, seed=self.job.seed,
        )
        comparison = Engine(self.adapter, {im.sha256: im for im in images}).run(request)
        metrics = self.evaluate(self.adapter, comparison, read_masks(loaded)) if self.evaluate else None
        rows = []
        for i, ((item, image), explained, results) in enumerate(zip(loaded, comparison.images, comparison.results)):
            for j, result in enumerate(results):
                summary = result.summary()
                row = {
                    "image": image.name,
                    "path": item["path"],
                    "key": item["key"],
                    "method": result.method,
                    "status": "ok",
                    "error": None,
                    "file": f"maps/{item['key']}__{result.method}.npy",
                    "image_sha256": image.sha256,
                    **{k: summary[k] for k in ("target", "target_label", "target_score", "reference_score", "completeness_gap",
                                               "completeness_ratio", "signed", "seed", "layer", "seconds", "evaluations", "device")},
                    "params": json.dumps(summary["params"], sort_keys=True),
                    "notes": json.dumps(summary["notes"]),
                    "map_npy": _npy_bytes(result.map),
                }
                if metrics is not None:
                    row.update({f"metric.{name}": value for name, value in metrics[i][j].items()})
                rows.append(row)
        return rows


def metric_evaluator(names: Sequence[str], params: Mapping[str, Mapping[str, Any]], *, seed: int):
    """-> fn(adapter, comparison, masks) -> per image, per method, {metric: value} (:mod:`workbench.metrics`;
    the comparison's seed seeds the random map and the randomisation; an image without a mask gets no
    value for the localisation metrics)."""
    from . import metrics

    chosen = list(names)
    normal = metrics.normalise_params(chosen, {m: (params or {}).get(m) or {} for m in chosen})  # refused before any image

    def evaluate(adapter, comparison, masks=None):
        evaluation = metrics.evaluate_comparison(adapter, comparison, chosen, params=normal, masks=masks)
        out = [[{} for _ in comparison.methods] for _ in comparison.images]
        for r in evaluation.results:
            out[r.image_index][comparison.methods.index(r.method)][r.metric] = r.value
        return out

    return evaluate


def read_masks(loaded) -> list[np.ndarray | None]:
    """``<stem>_mask.png`` beside each image, as ``evaluate`` finds them; a mask that does not read is no mask."""
    from .masks import mask_beside, read_mask

    masks = []
    for item, image in loaded:
        path = mask_beside(item["path"])
        try:
            masks.append(read_mask(path.read_bytes(), path.name, size=image.original_size) if path else None)
        except WorkbenchError:
            masks.append(None)
    return masks


def failure_row(item: Mapping[str, str], reason: str) -> dict[str, Any]:
    return {"image": Path(item["path"]).name, "path": item["path"], "key": item["key"], "method": None, "status": "failed",
            "error": reason, "file": None, "map_npy": b""}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


# ---------------------------------------------------------------------------- local pool
_RUNNER: ChunkRunner | None = None


def _init_worker(job: BatchJob, threads: int) -> None:
    # before any framework is imported in this process: share the cores between the workers
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    global _RUNNER
    _RUNNER = ChunkRunner(job)


def _run_chunk(items):
    assert _RUNNER is not None
    return _RUNNER(items)


def run_local(job: BatchJob, chunks: Sequence[list[dict]], workers: int) -> Iterator[list[dict[str, Any]]]:
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(job, threads)) as pool:
        pending: set[concurrent.futures.Future] = set()
        queue = iter(chunks)
        try:
            for chunk in queue:  # at most two chunks a worker in flight, so results stream back as they finish
                pending.add(pool.submit(_run_chunk, chunk))
                if len(pending) >= 2 * workers:
                    done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        yield _result(future)
            while pending:
                done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    yield _result(future)
        finally:
            for future in pending:
                future.cancel()


def _result(future: concurrent.futures.Future) -> list[dict[str, Any]]:
    try:
        return future.result()
    except concurrent.futures.process.BrokenProcessPool:
        raise WorkbenchError("A batch worker process died (out of memory?); rerun with --resume to go on where it stopped.") from None


# ---------------------------------------------------------------------------- Ray
class RayChunkRunner:
    """The callable class Ray Data's ``map_batches`` runs: one model per actor, one chunk per call."""

    def __init__(self, job: BatchJob):
        self.runner = ChunkRunner(job)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        items = [{"path": str(p), "key": str(k)} for p, k in zip(batch["path"], batch["key"])]
        rows = self.runner(items)
        columns = sorted({k for row in rows for k in row})
        return {c: [_plain(row.get(c)) for row in rows] for c in columns}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


RAY_LOCAL_OPTIONS: dict[str, Any] = {
    "include_dashboard": False,
    "log_to_driver": False,
    "configure_logging": False,
    "_system_config": {
        # Ray's idle worker processes import Ray Data before they are needed, as the local pool's fresh
        # processes need not: otherwise each actor imports it (0.4 s and more) before it loads the model
        "preload_python_modules": ["ray.data"],
        # nothing reads Ray's metrics or task timeline from a local Ray that lives for one command
        "enable_metrics_collection": False,
        "enable_timeline": False,
    },
}


def start_ray(address: str) -> None:
    """Connect to Ray (``local``: start one on this machine) and load Ray Data, once per process."""
    import ray
    import ray.data  # noqa: F401 - its import (about 0.4 s) belongs to starting Ray, not to the job

    if not ray.is_initialized():
        if address == "local":
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address="local", num_cpus=os.cpu_count(), **RAY_LOCAL_OPTIONS)  # a new one, whatever else runs here
        else:
            ray.init(address=None if address == "auto" else address, log_to_driver=False)
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our own progress line tells the progress
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False


def run_ray(job: BatchJob, items: Sequence[dict], workers: int, gpus_per_worker: float, address: str) -> Iterator[list[dict[str, Any]]]:
    import ray.data

    start_ray(address)
    # one block per chunk: each block is one map_batches call, with no re-bundling of 1-row blocks
    dataset = ray.data.from_items(list(items), override_num_blocks=math.ceil(len(items) / job.chunk_size))
    kwargs: dict[str, Any] = {"num_gpus": gpus_per_worker} if gpus_per_worker else {"num_cpus": max(1, (os.cpu_count() or 1) // workers)}
    explained = dataset.map_batches(
        RayChunkRunner, fn_constructor_args=(job,), batch_size=job.chunk_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers), **kwargs,
    )
    for batch in explained.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield batch.to_pylist()


# ---------------------------------------------------------------------------- the driver
class ResultWriter:
    """Writes maps and parts as rows arrive; an image's rows are written together once all arrived."""

    def __init__(self, out: Path, methods: Sequence[str]):
        self.out = out
        self.methods = list(methods)
        self.waiting: dict[str, list[dict]] = {}
        (out / "maps").mkdir(parents=True, exist_ok=True)
        (out / "parts").mkdir(parents=True, exist_ok=True)

    def add(self, rows: Iterable[dict[str, Any]]) -> int:
        """-> images completed by these rows."""
        finished: list[dict] = []
        images = 0
        for row in rows:
            bucket = self.waiting.setdefault(row["path"], [])
            bucket.append(row)
            if row["status"] == "failed" or len(bucket) == len(self.methods):
                finished += self.waiting.pop(row["path"])
                images += 1
        if finished:
            for row in finished:
                data = row.pop("map_npy", b"")
                if row["status"] == "ok":
                    _atomic_write(self.out / row["file"], data)
            _atomic_write(self.out / "parts" / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json", json.dumps(finished).encode())
        return images


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def read_parts(out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for part in sorted((out / "parts").glob("*.json")):
        rows += json.loads(part.read_text())
    return rows


def run_batch(
    job: BatchJob,
    images: Sequence[str],
    out: str | Path,
    *,
    workers: int = 1,
    ray: str | None = None,
    gpus_per_worker: float = 0.0,
    resume: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Explain ``images`` into ``out``; returns the summary (also written to ``out/summary.json``)."""
    from .settings import get_settings

    if workers < 1:
        raise ParameterError("--workers must be at least 1.")
    if not 1 <= job.chunk_size <= get_settings().max_images_per_run:
        raise ParameterError(f"The chunk size must be 1..{get_settings().max_images_per_run} images (setting WORKBENCH_MAX_IMAGES_PER_RUN).")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [str(Path(p)) for p in images]
    items = [{"path": p, "key": k} for p, k in zip(paths, image_keys(paths))]
    job_file = out / "job.json"
    done_rows = read_parts(out) if (out / "parts").is_dir() else []
    if done_rows and not resume:
        raise ParameterError(f"{out} already holds results of a batch job: add --resume to go on with it, or give a new --out.")
    if resume and job_file.is_file() and not same_results(json.loads(job_file.read_text()), job.to_json()):
        raise ParameterError(f"{out} holds a batch job with other settings; --resume needs the same model, methods and parameters.")
    _atomic_write(job_file, json.dumps(job.to_json(), indent=2).encode())
    done = {row["path"] for row in done_rows}
    todo = [item for item in items if item["path"] not in done]
    writer = ResultWriter(out, job.methods)
    trace("job.start", engine="ray" if ray else "local", workers=workers)
    started = time.perf_counter()
    completed = 0
    if progress:
        progress(len(done), len(items), 0.0)
    if todo:
        if ray:
            stream = run_ray(job, todo, workers, gpus_per_worker, ray)
        else:
            chunks = [todo[i : i + job.chunk_size] for i in range(0, len(todo), job.chunk_size)]
            stream = run_local(job, chunks, workers)
        for rows in stream:
            trace("rows", rows=len(rows))
            completed += writer.add(rows)
            if progress:
                progress(len(done) + completed, len(items), time.perf_counter() - started)
    seconds = time.perf_counter() - started
    rows = read_parts(out)
    write_parquet(rows, out / "results.parquet")
    summary = summarise(rows, job, seconds=seconds, images_this_run=completed, engine="ray" if ray else "local", workers=workers)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    trace("job.end")
    return summary


def same_results(saved: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
    """Whether two jobs give the same rows: everything but how the images are cut into chunks."""
    def key(j):
        return json.dumps({k: v for k, v in j.items() if k != "chunk_size"}, sort_keys=True)

    return key(saved) == key(json.loads(json.dumps(job)))


def write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = sorted({k for row in rows for k in row}, key=lambda c: (c.startswith("metric."), c))
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]) if rows else pa.table({})
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def summarise(rows: Sequence[dict[str, Any]], job: BatchJob, *, seconds: float, images_this_run: int, engine: str, workers: int) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    metric_names = sorted({k for r in ok for k in r if k.startswith("metric.")})
    per_class: dict[str, dict[str, Any]] = {}
    for row in ok:
        entry = per_class.setdefault(row["target_label"], {"images": set(), "methods": {}})
        entry["images"].add(row["path"])
        values = entry["methods"].setdefault(row["method"], {"seconds": [], "target_score": [], **{m: [] for m in metric_names}})
        values["seconds"].append(row["seconds"])
        values["target_score"].append(row["target_score"])
        for m in metric_names:
            if row.get(m) is not None:
                values[m].append(row[m])
    aggregates = {
        label: {
            "images": len(entry["images"]),
            "methods": {
                method: {f"mean_{k.removeprefix('metric.')}": (float(np.mean(v)) if v else None) for k, v in values.items()}
                for method, values in sorted(entry["methods"].items())
            },
        }
        for label, entry in sorted(per_class.items())
    }
    images_ok = len({r["path"] for r in ok})
    return {
        "job": job.to_json(),
        "engine": engine,
        "workers": workers,
        "images": images_ok + len(failed),
        "images_explained": images_ok,
        "images_failed": len(failed),
        "results": len(ok),
        "failures": [{"image": r["path"], "error": r["error"]} for r in failed],
        "seconds": seconds,
        "images_this_run": images_this_run,
        "throughput_images_per_second": images_this_run / seconds if seconds > 0 and images_this_run else None,
        "per_class": aggregates,
    }


class ProgressLine:
    """``[####    ] 40/100 images, 3.1 img/s, ETA 19 s`` on stderr (a terminal), or nothing."""

    def __init__(self, stream=None, width: int = 30):
        # sys.stderr when called, not when this module was imported: it may have been replaced since (and closed)
        self.stream, self.width = sys.stderr if stream is None else stream, width
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.first: int | None = None

    def __call__(self, done: int, total: int, seconds: float) -> None:
        if self.first is None:
            self.first = done
        if not self.enabled:
            return
        rate = (done - self.first) / seconds if seconds > 0 else 0.0
        eta = f"ETA {(total - done) / rate:.0f} s" if rate > 0 else "ETA --"
        filled = int(round(self.width * done / max(total, 1)))
        self.stream.write(f"\r[{'#' * filled}{' ' * (self.width - filled)}] {done}/{total} images, {rate:.2f} img/s, {eta}   ")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


# ---------------------------------------------------------------------------- reading a result in the app
@dataclasses.dataclass(frozen=True)
class BatchResult:
    """A finished (or interrupted) batch directory, read without any framework."""

    folder: Path
    rows: tuple[dict[str, Any], ...]
    summary: Mapping[str, Any]

    @property
    def classes(self) -> list[str]:
        return sorted({r["target_label"] for r in self.rows if r["status"] == "ok"})

    @property
    def methods(self) -> list[str]:
        return sorted({r["method"] for r in self.rows if r["status"] == "ok"})

    @property
    def metrics(self) -> list[str]:
        return sorted({k.removeprefix("metric.") for r in self.rows for k in r if k.startswith("metric.")})

    def table(self, *, classes: Sequence[str] = (), methods: Sequence[str] = (), metric: str | None = None,
              metric_range: tuple[float, float] | None = None) -> list[dict[str, Any]]:
        """The explained rows that pass the filters, with the columns the table shows."""
        out = []
        for row in self.rows:
            if row["status"] != "ok" or (classes and row["target_label"] not in classes) or (methods and row["method"] not in methods):
                continue
            if metric and metric_range is not None:
                value = row.get(f"metric.{metric}")
                if value is None or not metric_range[0] <= value <= metric_range[1]:
                    continue
            out.append({
                "image": row["image"], "method": row["method"], "class": row["target_label"], "score": row["target_score"],
                "seconds": row["seconds"], "completeness gap": row["completeness_ratio"],
                **{m: row.get(f"metric.{m}") for m in self.metrics}, "key": row["key"],
            })
        return out

    def failures(self) -> list[dict[str, str]]:
        return [{"image": r["image"], "reason": r["error"]} for r in self.rows if r["status"] == "failed"]

    def metric_range(self, metric: str) -> tuple[float, float] | None:
        values = [r[f"metric.{metric}"] for r in self.rows if r.get(f"metric.{metric}") is not None]
        return (float(min(values)), float(max(values))) if values else None

    def overlay(self, key: str, method: str, size: tuple[int, int] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """(uint8 overlay of the stored map on the image, its row); the image is read through the same
        sniffing loader as uploads, so a path in a results file can only ever be shown as an image."""
        from .images import load_image, resize_for_model
        from .render import overlay

        row = next(r for r in self.rows if r["key"] == key and r["method"] == method and r["status"] == "ok")
        attribution = np.load(self.folder / row["file"], allow_pickle=False)
        image = load_image(Path(row["path"]).read_bytes(), name=row["image"], channels=3)
        pixels = resize_for_model(image.pixels, attribution.shape)
        return overlay(pixels, attribution, signed=bool(row["signed"])), row


def batch_root() -> Path:
    """Where the app looks for batch result folders: ``<data dir>/batches`` (write there with ``--out``)."""
    from .settings import get_settings

    return get_settings().data_path / "batches"


def result_folders(root: Path | None = None) -> list[str]:
    root = root or batch_root()
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if (p / "results.parquet").is_file()), reverse=True)


def open_result(name: str, root: Path | None = None) -> BatchResult:
    import pyarrow.parquet as pq

    root = (root or batch_root()).resolve()
    folder = (root / name).resolve()
    if folder.parent != root or not (folder / "results.parquet").is_file():
        raise ParameterError(f"No batch result named {name!r} under {root}.")
    rows = tuple(pq.read_table(folder / "results.parquet").to_pylist())
    summary_file = folder / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return BatchResult(folder=folder, rows=rows, summary=summary)
