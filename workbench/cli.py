"""Command line: ``python -m workbench inspect|predict|explain``.

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
def open_model(spec: str, *, architecture=None, preprocess=None, labels_path=None, device="auto", input_size=None):
    """A model file path or a zoo name -> (adapter, model bytes or None)."""
    from . import intake

    labels = None
    if labels_path:
        labels = intake.read_labels(Path(labels_path).read_bytes(), Path(labels_path).name)
    path = Path(spec)
    if path.is_file():
        data = path.read_bytes()
        adapter = intake.load_model(
            data,
            filename=path.name,
            architecture=architecture,
            labels=labels,
            preset=preprocess or "unit",
            device=device,
            input_size=input_size,
        )
        return adapter, data
    import model_zoo

    try:
        model_zoo.get(spec)
    except KeyError:
        names = ", ".join(e.name for e in model_zoo.entries())
        raise ParameterError(f"{spec!r} is neither a file nor a zoo model ({names}).") from None
    adapter = intake.load_zoo_model(spec, device=device)
    if preprocess:
        adapter.set_preset(preprocess)
    if labels:
        adapter.with_labels(labels)
    return adapter, None


def read_images(paths: Sequence[str], channels: int):
    from .images import load_image

    images = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ParameterError(f"No image file at {p}.")
        images.append(load_image(path.read_bytes(), name=str(path), channels=channels))
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


def softmax(rows: np.ndarray) -> np.ndarray:
    z = rows - rows.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class ProgressBar:
    """A one-line progress bar on stderr when it is a terminal."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream = stream
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


# ---------------------------------------------------------------------------- commands
def cmd_inspect(args) -> int:
    adapter, _ = open_model(args.model, architecture=args.architecture, preprocess=args.preprocess, labels_path=args.labels, device=args.device)
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
    from .analysis import model_inputs

    adapter, _ = open_model(args.model, architecture=args.architecture, preprocess=args.preprocess, labels_path=args.labels, device=args.device)
    images = read_images(args.images, adapter.input_size[2])
    _, batch = model_inputs(adapter, images)
    outputs = adapter.predict(batch)
    scores = outputs if adapter.output_kind == "probabilities" else softmax(outputs)
    labels = adapter.labels
    report = []
    for image, row in zip(images, scores):
        top = np.argsort(-row, kind="stable")[: args.top]
        report.append(
            {"image": image.name, "predictions": [{"index": int(k), "label": labels[k], "score": float(row[k])} for k in top]}
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

    from .analysis import run_comparison
    from .images import load_image

    for m in args.methods:
        explainers.get(m)  # unknown names fail before anything loads
    params = parse_params(args.params, args.methods)
    adapter, model_bytes = open_model(
        args.model, architecture=args.architecture, preprocess=args.preprocess, labels_path=args.labels, device=args.device
    )
    images = read_images(args.images, adapter.input_size[2])
    background = read_images(args.background, adapter.input_size[2]) if args.background else None
    targets = None
    if args.target is not None:
        labels = adapter.labels
        target = int(args.target) if str(args.target).lstrip("-").isdigit() else (labels.index(args.target) if args.target in labels else None)
        if target is None or not 0 <= target < adapter.num_classes:
            raise ParameterError(f"--target {args.target!r} is not a class index or label of this model.")
        targets = [target] * len(images)
    comparison = run_comparison(
        adapter, images, args.methods, params=params, targets=targets, seed=args.seed, background=background, progress=ProgressBar()
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for image, results in zip(comparison.images, comparison.results):
        stem = Path(image.name).stem
        for result in results:
            file = out / f"{stem}__{result.method}.npy"
            np.save(file, result.map)
            rows.append(
                {
                    "image": image.name,
                    "method": result.method,
                    "file": str(file),
                    **{k: v for k, v in result.summary().items() if k not in ("method", "model_fingerprint", "image_fingerprint", "shape")},
                    "image_sha256": image.sha256,
                }
            )
    summary = {"model": dict(comparison.model), "versions": dict(comparison.versions), "results": rows}
    if args.save:
        from . import store

        with store.RunStore() as run_store:
            image_bytes = [Path(p).read_bytes() for p in args.images]
            run_id = run_store.save(comparison, model_bytes=model_bytes, image_bytes=image_bytes, model_name=adapter.name)
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


def cmd_export(args) -> int:
    from .export import write_all
    from .store import RunStore, share_link

    with RunStore() as run_store:
        comparison = run_store.load(args.run_id)
    files = write_all(comparison, args.out, share_url=share_link(args.run_id, base_path=args.base_path))
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


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .preprocess import PRESETS

    parser = argparse.ArgumentParser(prog="python -m workbench", description="Interpretability workbench for image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p, positional=True):
        if positional:
            p.add_argument("model", help="model file (.keras, .h5, .onnx, .safetensors, .pt state_dict) or zoo name")
        p.add_argument("--architecture", help="zoo architecture for state_dict / safetensors files")
        p.add_argument("--preprocess", choices=list(PRESETS), help="preprocessing preset (default: unit, or the zoo model's)")
        p.add_argument("--labels", help="labels file: .txt one per line, or .json list/dict")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")

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

    p = sub.add_parser("export", help="write a stored run's grid PNG, NPZ, provenance JSON and HTML report")
    p.add_argument("run_id")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--base-path", default="")
    p.set_defaults(func=cmd_export)

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
    args = build_parser().parse_args(argv)
    try:
        check_environment()
        return args.func(args)
    except WorkbenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
