"""Command line: ``python -m workbench inspect|predict|explain|evaluate|layers|tensorboard``.

A refusal (any WorkbenchError) exits with status 2 and its one-line message on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ParameterError, WorkbenchError
from .settings import check_environment

log = logging.getLogger("workbench")


# ---------------------------------------------------------------------------- helpers
@dataclasses.dataclass(frozen=True)
class OpenedModel:
    """A model the CLI loaded (in a worker process of its own) and how it was loaded, for provenance.

    Unpacks as ``adapter, data``, as open_model's callers did before it said how the model was loaded."""

    adapter: object  # a ModelAdapter view with the preset, labels, score and resize mode asked for
    data: bytes | None  # the model file's bytes (None for a zoo model)
    source: str  # "file" | "zoo"
    filename: str
    architecture: str | None
    input_size: tuple[int, int, int] | None
    labels: tuple[str, ...] | None
    device: str

    def __iter__(self):
        return iter((self.adapter, self.data))

    def record(self):
        from .engine import ModelRecord

        return ModelRecord.of(
            self.adapter,  # type: ignore[arg-type]
            source=self.source,
            filename=self.filename,
            architecture=self.architecture,
            input_size=self.input_size,
            labels=self.labels,
            name=self.filename,
            device=self.device,
        )


def open_model(
    spec: str, *, architecture=None, preprocess=None, labels_path=None, device="auto", input_size=None, score=None, resize=None
) -> OpenedModel:
    """A model file, a save_pretrained folder or a zoo name -> the model loaded in its worker, with how it
    was loaded; ``score``: logits / probabilities; ``resize``: how images of another shape fit."""
    from . import intake, session
    from .settings import get_settings

    labels = None
    if labels_path:
        labels = tuple(intake.read_labels(Path(labels_path).read_bytes(), Path(labels_path).name))
    size = tuple(int(v) for v in input_size) if input_size else None
    path = Path(spec)
    if path.is_file() or path.is_dir():
        # a save_pretrained folder goes through the same zip path as an upload
        data = intake.folder_zip(path) if path.is_dir() else path.read_bytes()
        key = session.ModelKey(
            sha256=session.sha256(data),
            filename=path.name,
            architecture=architecture or None,
            input_size=size,
            device=device,
            trusted_formats=get_settings().trusted_formats,
        )
        base = session.load_in_worker(key, data)
        adapter = base.view(preset=preprocess or None, labels=labels, score=score, resize=resize)
        return OpenedModel(adapter, data, "file", path.name, architecture or None, size, labels, device)
    import model_zoo

    try:
        model_zoo.get(spec)
    except KeyError:
        names = ", ".join(e.name for e in model_zoo.entries())
        raise ParameterError(f"{spec!r} is neither a file nor a zoo model ({names}).") from None
    base = session.load_in_worker(session.ModelKey(sha256=f"zoo:{spec}", filename=spec, device=device), None)
    adapter = base.view(preset=preprocess or None, labels=labels, score=score, resize=resize)
    return OpenedModel(adapter, None, "zoo", spec, None, None, labels, device)


def read_images(paths: Sequence[str], channels: int):
    from .images import load_image

    images = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ParameterError(f"No image file at {p}.")
        # the base name: results, summaries and stored runs never carry the local directory
        images.append(load_image(path.read_bytes(), name=path.name, channels=channels))
    return images


def parse_params(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, str]]:
    params: dict[str, dict[str, str]] = {m: {} for m in methods}
    for item in items or ():
        key, sep, value = item.partition("=")
        method, dot, name = key.rpartition(".")
        if not sep or not dot or not method or not name:
            raise ParameterError(f"--param {item!r} must look like METHOD.KEY=VALUE, e.g. integrated_gradients.steps=64.")
        if method not in params:
            raise ParameterError(f"--param {item!r} names method {method!r}, which is not among --method {', '.join(methods)}.")
        params[method][name] = value
    return params



class ProgressBar:
    """A one-line progress bar on stderr when it is a terminal."""

    def __init__(self, stream=None, width: int = 30):
        # sys.stderr when called, not when this module was imported: it may have been replaced since (and closed)
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.enabled = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        filled = int(round(self.width * min(max(fraction, 0.0), 1.0)))
        self.stream.write(f"\r[{'#' * filled}{' ' * (self.width - filled)}] {fraction:4.0%} {message[:50]:<50}")
        if fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def resolve_target(target: str | None, labels: Sequence[str]) -> int | None:
    """``--target``: None or "predicted" (each image's predicted class), a class index or a label."""
    if target is None or str(target) == "predicted":
        return None
    text = str(target)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(labels):
        return int(text)
    if text in labels:
        return list(labels).index(text)
    raise ParameterError(f"--target {text!r} is not 'predicted', a class index (0..{len(labels) - 1}) or a label of this model.")


# ---------------------------------------------------------------------------- commands
def cmd_inspect(args) -> int:
    adapter = open_model(args.model, architecture=args.architecture, preprocess=args.preprocess, labels_path=args.labels, device=args.device, score=args.score, resize=args.resize).adapter
    info = adapter.info()
    layers = adapter.layers()
    try:
        cam_layer = adapter.default_cam_layer()
    except WorkbenchError:
        cam_layer = None
    report = {
        "name": info.name,
        "format": info.source_format,
        "framework": info.framework,
        "input_size": list(info.input_size),
        "layout": info.layout,
        "preprocess": info.preset,
        "classes": info.num_classes,
        "labels": list(info.labels),
        "output": info.output_kind,
        "softmax_head": info.softmax_head,
        "resize_mode": info.resize_mode,
        "parameters": info.parameters,
        "device": info.device,
        "fingerprint": info.fingerprint,
        "default_cam_layer": cam_layer,
        "layers": [{"name": l.name, "type": l.kind, "output_shape": list(l.output_shape)} for l in layers],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    h, w, c = info.input_size
    print(f"{info.name}: {info.framework} model from {info.source_format}, {info.parameters:,} parameters")
    print(f"input: {h}x{w}x{c} ({info.layout}), preprocess {info.preset}; device {info.device}")
    print(f"output: {info.num_classes} classes, {info.output_kind}")
    print(f"default CAM layer: {cam_layer}")
    print("layers:")
    for l in layers:
        mark = "  <- default CAM layer" if l.name == cam_layer else ""
        print(f"  {l.name:<40} {l.kind:<24} {'x'.join(map(str, l.output_shape))}{mark}")
    return 0


def cmd_predict(args) -> int:
    from .adapters.base import probabilities
    from .analysis import model_inputs

    adapter = open_model(args.model, architecture=args.architecture, preprocess=args.preprocess, labels_path=args.labels, device=args.device, score=args.score, resize=args.resize).adapter
    images = read_images(args.images, adapter.input_size[2])
    _, batch = model_inputs(adapter, images)
    outputs = adapter.predict(batch)
    scores = probabilities(outputs, adapter.output_kind)
    labels = adapter.labels
    report = []
    for path, row in zip(args.images, scores):
        top = np.argsort(-row, kind="stable")[: args.top]
        report.append(
            {"image": path, "predictions": [{"index": int(k), "label": labels[k], "score": float(row[k])} for k in top]}
        )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for item in report:
        print(item["image"])
        for p in item["predictions"]:
            print(f"  {p['score']:7.3f}  {p['label']} ({p['index']})")
    return 0


def cmd_explain(args) -> int:
    import explainers

    from .engine import Engine, ExplainRequest, ImageRef

    for m in args.methods:
        explainers.get(m)  # unknown names fail before anything loads
    params = parse_params(args.params, args.methods)
    opened = open_model(
        args.model, architecture=args.architecture, preprocess=args.preprocess, labels_path=args.labels, device=args.device, score=args.score, resize=args.resize
    )
    adapter = opened.adapter
    model_bytes = opened.data
    images = read_images(args.images, adapter.input_size[2])
    background = read_images(args.background, adapter.input_size[2]) if args.background else []
    target = resolve_target(args.target, adapter.labels)
    targets = None if target is None else [target] * len(images)
    request = ExplainRequest.build(
        opened.record(),
        [ImageRef(im.name, im.sha256) for im in images],
        args.methods,
        params,
        targets=targets,
        seed=args.seed,
        background=[ImageRef(im.name, im.sha256) for im in background],
    )
    engine = Engine(adapter, {im.sha256: im for im in [*images, *background]})
    comparison = engine.run(request, progress=ProgressBar())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for image, results in zip(comparison.images, comparison.results):
        stem = Path(image.name).stem
        for result in results:
            file = out / f"{stem}__{result.method}.npy"
            np.save(file, result.map)
            # the map on the original image's pixels, mapped back through the resize (stretch / crop / letterbox)
            original_file = out / f"{stem}__{result.method}__original.npy"
            np.save(original_file, image.display(result.map)[1])
            rows.append(
                {
                    "image": image.name,
                    "method": result.method,
                    "file": str(file),
                    "file_original": str(original_file),
                    "placement": dict(image.placement) if image.placement else None,
                    **{k: v for k, v in result.summary().items() if k not in ("method", "model_fingerprint", "image_fingerprint", "shape")},
                    "image_sha256": image.sha256,
                }
            )
    summary = {"model": dict(comparison.model), "versions": dict(comparison.versions), "request": request.to_json(), "results": rows}
    if args.save:
        from . import store

        with store.RunStore() as run_store:
            image_bytes = [Path(p).read_bytes() for p in args.images]
            run_id = run_store.save(comparison, model_bytes=model_bytes, image_bytes=image_bytes, model_name=opened.filename)
        summary["run_id"] = run_id
        summary["share_link"] = store.share_link(run_id, base_path=args.base_path)
    if args.export:
        from .export import write_all

        files = write_all(comparison, out, share_url=summary.get("share_link"))
        summary["exports"] = {kind: str(path) for kind, path in files.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for row in rows:
        gap = f", completeness gap {row['completeness_gap']:.3g}" if row["completeness_gap"] is not None else ""
        print(f"{row['image']} {row['method']}: target {row['target_label']} ({row['target_score']:.3f}), {row['seconds']:.2f}s{gap} -> {row['file']}")
    for kind, path in summary.get("exports", {}).items():
        print(f"{kind}: {path}")
    print(f"summary: {out / 'summary.json'}")
    if args.save:
        print(f"share link: {summary['share_link']}")
    return 0


def cmd_batch(args) -> int:
    import explainers

    from . import batch

    for m in args.methods:
        explainers.get(m)  # unknown names fail before any worker starts
    params = parse_params(args.params, args.methods)
    metric_params = parse_params(args.metric_params, args.metrics) if args.metrics else {}
    job = batch.BatchJob(
        model=batch.ModelSpec(args.model, args.architecture, args.preprocess, args.labels, args.device),
        methods=tuple(args.methods),
        params=params,
        target=args.target,
        metrics=tuple(args.metrics or ()),
        metric_params=metric_params,
        seed=args.seed,
        chunk_size=args.chunk_size,
    )
    images = batch.list_images(args.images)
    summary = batch.run_batch(
        job, images, args.out, workers=args.workers, ray=args.ray, gpus_per_worker=args.gpus_per_worker, resume=args.resume,
        progress=batch.ProgressLine(),
    )
    rate = summary["throughput_images_per_second"]
    print(
        f"{summary['images_explained']} images explained, {summary['images_failed']} failed, {summary['results']} maps"
        + (f", {rate:.2f} images/s" if rate else "")
    )
    for failure in summary["failures"]:
        print(f"failed: {failure['image']}: {failure['error']}")
    out = Path(args.out)
    print(f"results: {out / 'results.parquet'}\nsummary: {out / 'summary.json'}")
    return 0


def _split_params(items: Sequence[str], metric_names: Sequence[str], methods: Sequence[str]) -> tuple[dict, dict]:
    """--param NAME.KEY=VALUE -> (metric params, method params): NAME is a --metric, or a --method whose maps are computed."""
    metric_params: dict[str, dict[str, str]] = {m: {} for m in metric_names}
    method_params: dict[str, dict[str, str]] = {m: {} for m in methods}
    for item in items or ():
        key, sep, value = item.partition("=")
        owner, dot, name = key.rpartition(".")
        if not sep or not dot or not owner or not name:
            raise ParameterError(f"--param {item!r} must look like METRIC.KEY=VALUE, e.g. deletion.steps=50.")
        if owner in metric_params:
            metric_params[owner][name] = value
        elif owner in method_params:
            method_params[owner][name] = value
        else:
            raise ParameterError(f"--param {item!r} names {owner!r}, which is not among --metric {', '.join(metric_names)}.")
    return metric_params, method_params


def _maps_from(directory: str, images, methods: Sequence[str] | None):
    """An ``explain --out DIR``: its summary.json rows (image, method, file, target) matched to the images
    by the name explain recorded (the path as given), else the resolved path, else the file name."""
    root = Path(directory)
    try:
        rows = json.loads((root / "summary.json").read_text())["results"]
    except FileNotFoundError:
        raise ParameterError(f"--maps {directory}: no summary.json there; give the --out directory of an explain run.") from None
    except (ValueError, KeyError, TypeError):
        raise ParameterError(f"--maps {directory}: summary.json is not an explain summary (no results list).") from None

    def keys(name: str) -> tuple[str, str, str]:
        path = Path(name)
        return name, str(path.resolve()), path.name

    wanted = list(dict.fromkeys(methods or [row.get("method") for row in rows]))
    found: dict[tuple[int, str], dict] = {}
    for row in rows:
        if not isinstance(row, dict) or row.get("method") not in wanted:
            continue
        for i, image in enumerate(images):
            if any(a == b for a, b in zip(keys(str(row.get("image", ""))), keys(image.name))):
                found.setdefault((i, row["method"]), row)
                break
    maps, targets, params = {}, [None] * len(images), {}
    for method in wanted:
        stack = []
        for i, image in enumerate(images):
            row = found.get((i, method))
            if row is None:
                raise ParameterError(f"--maps {directory}: no {method} map for {image.name}; run explain on it with --method {method}.")
            file = Path(row["file"])
            file = file if file.is_file() else root / file.name
            try:
                array = np.load(file, allow_pickle=False)
            except (OSError, ValueError):
                raise ParameterError(f"--maps {directory}: {file} is not a readable .npy map.") from None
            if array.ndim != 2:
                raise ParameterError(f"--maps {directory}: {file} has shape {array.shape}; a map is H x W.")
            stack.append(array.astype(np.float32))
            if row.get("target") is not None:
                if targets[i] is not None and targets[i] != int(row["target"]):
                    raise ParameterError(f"--maps {directory}: the maps of {image.name} explain different targets.")
                targets[i] = int(row["target"])
            params.setdefault(method, dict(row.get("params") or {}))
        shapes = {a.shape for a in stack}
        if len(shapes) > 1:
            raise ParameterError(f"--maps {directory}: the {method} maps have different sizes {sorted(shapes)}.")
        maps[method] = np.stack(stack)
    return maps, targets, params


def cmd_evaluate(args) -> int:
    from . import evaluations, workers
    from .settings import get_settings

    import explainers

    from . import metrics
    from .analysis import model_inputs, run_comparison
    from .masks import mask_beside, read_mask

    metric_names = list(dict.fromkeys(args.metrics))
    for name in metric_names:
        metrics.get(name)  # unknown names fail before anything loads
    if not args.methods and not args.maps:
        raise ParameterError("Give --method NAME (maps computed here) or --maps DIR (maps of an explain run).")
    methods = list(dict.fromkeys(args.methods or []))
    if not args.maps:
        for m in methods:
            explainers.get(m)
    metric_params, method_params = _split_params(args.params, metric_names, [] if args.maps else methods)
    metric_params = metrics.normalise_params(metric_names, metric_params)
    if args.masks and len(args.masks) != len(args.images):
        raise ParameterError(f"Got {len(args.masks)} --mask for {len(args.images)} --image; give one per image, in the same order.")
    adapter, _ = open_model(args.model, architecture=args.architecture, preprocess=args.preprocess, labels_path=args.labels, device=args.device)
    images = read_images(args.images, adapter.input_size[2])
    masks = []
    for i, path in enumerate(args.images):
        mask_path = Path(args.masks[i]) if args.masks else mask_beside(path)
        if mask_path is None:
            masks.append(None)
            continue
        if not mask_path.is_file():
            raise ParameterError(f"No mask file at {mask_path}.")
        masks.append(read_mask(mask_path.read_bytes(), str(mask_path), size=images[i].original_size))
    missing = [Path(p).name for p, m in zip(args.images, masks) if m is None]
    needing = [m for m in metric_names if metrics.REGISTRY[m].needs_mask]
    if missing and needing:
        print(f"note: no mask for {', '.join(missing)} (give --mask or put <stem>_mask.png beside it): "
              f"{', '.join(needing)} left empty there", file=sys.stderr)

    progress = ProgressBar()
    if args.maps:
        maps, targets, method_params = _maps_from(args.maps, images, methods or None)
        _, batch = model_inputs(adapter, images)
        predicted = adapter.predict(batch).argmax(axis=1)
        targets = [int(predicted[i]) if t is None else t for i, t in enumerate(targets)]
        evaluation = workers.call(  # the metrics run where the model lives: its worker
            adapter, evaluations.evaluate_maps_in_worker, batch, targets, maps, metric_names, metric_params, masks,
            [im.name for im in images], method_params, args.seed, progress=progress,
        )
    else:
        comparison = run_comparison(adapter, images, methods, params=method_params, seed=args.seed,
                                    progress=lambda f, m: progress(0.5 * f, m))
        evaluation = workers.call(
            adapter, evaluations.evaluate_in_worker, comparison, metric_names, metric_params, masks, get_settings(),
            progress=lambda f, m: progress(0.5 + 0.5 * f, m),
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"results": [r.row() for r in evaluation.results]}, indent=2))
    for row in evaluation.results:
        value = "n/a" if row.value is None else f"{row.value:.4f}"
        base = "" if row.random_baseline is None else f" (random map {row.random_baseline:.4f})"
        flag = "  [flagged]" if row.flagged else ""
        print(f"{row.image} {row.method} {row.metric}: {value}{base}{flag}")
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def cmd_export(args) -> int:
    from .export import write_all
    from .store import RunStore, share_link

    with RunStore() as run_store:
        comparison = run_store.load(args.run_id)
        evaluation, _ = run_store.load_evaluation(args.run_id)
    if evaluation is not None:
        from .metrics import Evaluation

        evaluation = Evaluation.from_dict(evaluation)
    files = write_all(comparison, args.out, share_url=share_link(args.run_id, base_path=args.base_path), evaluation=evaluation)
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


def cmd_runs(args) -> int:
    from .store import RunStore, share_link

    with RunStore() as run_store:
        records = run_store.list_runs(model=args.model, method=args.method, limit=args.limit)
    rows = [{**dataclasses.asdict(r), "share_link": share_link(r.run_id, base_path=args.base_path)} for r in records]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created"]))
        print(f"{created}  {row['model_name']}  {', '.join(row['methods'])}  {row['share_link']}")
    return 0


def cmd_cleanup(args) -> int:
    from .settings import get_settings
    from .store import RunStore

    days = args.days if args.days is not None else get_settings().retention_days
    with RunStore() as run_store:
        report = run_store.cleanup(days)
    print(json.dumps(report))
    return 0


def cmd_layers(args) -> int:
    from .analysis import model_inputs
    from .inspection import layer_report

    adapter, _ = open_model(args.model, architecture=args.architecture, preprocess=args.preprocess, labels_path=args.labels, device=args.device)
    images = read_images(args.images, adapter.input_size[2])
    _, batch = model_inputs(adapter, images)
    target = resolve_target(args.target, adapter.labels)
    targets = None if target is None else [target] * len(images)
    report = layer_report(adapter, batch, targets)
    names = [image.name for image in images]
    if args.json:
        print(json.dumps(report.as_dict(names), indent=2))
        return 0

    def number(value, spec=".4g"):
        return "-" if value is None else format(value, spec)

    header = f"{'layer':<32} {'kind':<20} {'output':<14} {'params':>9} {'mean':>10} {'std':>10} {'min':>10} {'max':>10} {'zero':>6} {'dead':>5} {'nan':>5} {'inf':>5} {'grad norm':>10}"
    print(header)
    for row in report.rows:
        print(
            f"{row.name[:32]:<32} {row.kind[:20]:<20} {'x'.join(map(str, row.output_shape)):<14} {row.parameters:>9,} "
            f"{number(row.mean):>10} {number(row.std):>10} {number(row.min):>10} {number(row.max):>10} "
            f"{row.fraction_zero:>6.1%} {row.dead_channels:>5} {row.nan_count:>5} {row.inf_count:>5} {number(row.grad_norm):>10}"
        )
    if report.first_nonfinite:
        print(report.first_nonfinite.describe(names))
    return 0


def cmd_tensorboard(args) -> int:
    from .store import RunStore
    from .tensorboard import write_run

    with RunStore() as run_store:
        comparison = run_store.load(args.run_id)
        evaluation, _ = run_store.load_evaluation(args.run_id)
        layers = weights = None
        if not args.no_layers:
            from .tensorboard import run_layer_report

            layers, weights = run_layer_report(run_store, args.run_id, comparison)
    if evaluation is not None:
        from .metrics import Evaluation

        evaluation = Evaluation.from_dict(evaluation)
    path = write_run(comparison, args.logdir, layers=layers, weights=weights, evaluation=evaluation)
    print(f"event file: {path}")
    print(f"view with: tensorboard --logdir {args.logdir}")
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .preprocess import PRESETS

    parser = argparse.ArgumentParser(prog="python -m workbench", description="Interpretability workbench for image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p, positional=True):
        if positional:
            p.add_argument(
                "model",
                help="model file (.keras, .h5, .onnx, .safetensors, .pt state_dict), a Hugging Face save_pretrained "
                "folder or its zip, or a zoo name",
            )
        p.add_argument("--architecture", help="zoo architecture for state_dict / safetensors files")
        p.add_argument("--preprocess", choices=list(PRESETS), help="preprocessing preset (default: unit, or the zoo model's)")
        p.add_argument("--labels", help="labels file: .txt one per line, or .json list/dict")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")
        p.add_argument(
            "--resize", choices=["stretch", "center-crop", "letterbox"],
            help="how an image of another aspect ratio fits the input (default: the preprocessing config's, else stretch)",
        )
        p.add_argument(
            "--score", choices=["logits", "probabilities"],
            help="what to explain (default: logits where a final softmax can be peeled off, else the model's output)",
        )

    p = sub.add_parser("inspect", help="format, framework, input, classes, layers, default CAM layer")
    model_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("predict", help="top-5 predictions per image")
    model_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="attribution maps for every image x method")
    p.add_argument("--model", required=True, help="model file or zoo name")
    model_options(p, positional=False)
    p.add_argument("--image", dest="images", action="append", required=True, metavar="PATH")
    p.add_argument("--method", dest="methods", action="append", required=True, metavar="NAME")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="METHOD.KEY=VALUE")
    p.add_argument("--target", help="class index or label (default: each image's predicted class)")
    p.add_argument("--background", action="append", metavar="PATH", help="background image (expected_gradients, IG 'background')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--save", action="store_true", help="store the run and print its share link")
    p.add_argument("--export", action="store_true", help="also write grid.png, attributions.npz, provenance.json, report.html")
    p.add_argument("--base-path", default="", help="the deployment's server.baseUrlPath, for share links")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("batch", help="explain a whole folder, glob or list of images (local worker pool, or Ray)")
    p.add_argument("--model", required=True, help="model file or zoo name")
    model_options(p, positional=False)
    p.add_argument("--images", required=True, metavar="DIR|GLOB|LIST.txt")
    p.add_argument("--method", dest="methods", action="append", required=True, metavar="NAME")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="METHOD.KEY=VALUE")
    p.add_argument("--metric", dest="metrics", action="append", metavar="NAME")
    p.add_argument("--metric-param", dest="metric_params", action="append", default=[], metavar="METRIC.KEY=VALUE")
    p.add_argument("--target", default="predicted", help="'predicted' (default), a class index or a label")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--ray", metavar="auto|local|ADDRESS", help="run on Ray: a local Ray, RAY_ADDRESS (auto) or a cluster address")
    p.add_argument("--workers", type=int, default=1, help="model workers (processes or Ray actors), each loading the model once")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --ray: GPUs per actor (e.g. 1 or 0.5)")
    p.add_argument("--chunk-size", type=int, default=8, help="images per request to a worker")
    p.add_argument("--resume", action="store_true", help="go on with an interrupted job in --out, skipping what is written")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("evaluate", help="faithfulness, sanity, localisation and complexity metrics of the maps")
    p.add_argument("--model", required=True, help="model file or zoo name")
    model_options(p, positional=False)
    p.add_argument("--image", dest="images", action="append", required=True, metavar="PATH")
    p.add_argument("--mask", dest="masks", action="append", metavar="PATH",
                   help="ground-truth mask PNG per --image, same order (default: <stem>_mask.png beside the image)")
    p.add_argument("--method", dest="methods", action="append", metavar="NAME", help="method whose maps are computed (or picked from --maps)")
    p.add_argument("--metric", dest="metrics", action="append", required=True, metavar="NAME")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="METRIC.KEY=VALUE",
                   help="a metric's parameter, e.g. deletion.steps=50 (METHOD.KEY=VALUE sets a computed method's)")
    p.add_argument("--maps", metavar="DIR", help="evaluate the maps of an explain --out DIR (its summary.json) instead of computing them")
    p.add_argument("--seed", type=int, default=0, help="seeds the random-map baseline, the randomisation and stochastic methods")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a stored run's grid PNG, NPZ, provenance JSON and HTML report")
    p.add_argument("run_id")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--base-path", default="")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("layers", help="per-layer statistics, dead channels, gradient norms and the first NaN/Inf layer")
    model_options(p)
    p.add_argument("--image", dest="images", action="append", required=True, metavar="PATH")
    p.add_argument("--target", help="class index or label (default: each image's predicted class)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("tensorboard", help="write a stored run as TensorBoard event files")
    p.add_argument("run_id")
    p.add_argument("--logdir", required=True, metavar="DIR")
    p.add_argument("--no-layers", action="store_true", help="skip the layer statistics (they reload the run's model)")
    p.set_defaults(func=cmd_tensorboard)

    p = sub.add_parser("runs", help="stored runs, newest first")
    p.add_argument("--model")
    p.add_argument("--method")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--base-path", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("cleanup", help="delete runs older than the retention and blobs no run references")
    p.add_argument("--days", type=int, help="default: WORKBENCH_RETENTION_DAYS")
    p.set_defaults(func=cmd_cleanup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("WORKBENCH_LOG_LEVEL", "WARNING"))
    # a stopped model worker is reported as the command's one error line; the server logs it as a warning
    logging.getLogger("workbench.workers").setLevel(os.environ.get("WORKBENCH_LOG_LEVEL", "ERROR"))
    args = build_parser().parse_args(argv)
    try:
        check_environment()
        return args.func(args)
    except WorkbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RecursionError:
        # e.g. a model config nested thousands of levels deep: refused, never a traceback
        log.debug("nested too deeply", exc_info=True)
        print("error: the input is nested too deeply to read (a model config thousands of levels deep?); it is refused.", file=sys.stderr)
        return 2
    except OSError as error:  # the environment: a path that is a file, no permission, a full disk
        log.debug("environment problem", exc_info=True)
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {' '.join((error.strerror or str(error)).split())}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
