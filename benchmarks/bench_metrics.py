"""What each evaluation metric costs, on the zoo's shapes-cnn (64x64) and resnet-mini (224x224), PyTorch,
beside Quantus 0.6 configured to the same computation and timed in the same run.

    python benchmarks/bench_metrics.py [--repeats 3] [--images 2] [--device cpu]

For each model: the Grad-CAM maps of ``--images`` zoo samples are computed once; then every metric is
timed on them (``metrics.evaluate`` with one method, the random-map baseline included, so a model metric
runs twice per image), median of ``repeats``, and its model evaluations are counted. Beside it, where
Quantus has the same metric, Quantus on the same maps and model (one map per image, no random baseline),
configured as in tests/test_metrics.py: PixelFlipping (16 steps of equal pixel sets, black written by the
perturbation), Sparseness, Complexity, PointingGame, RelevanceMassAccuracy, MPRT (top_down, our Grad-CAM
as explain_func). The ratio compares ours per map with Quantus per map (ours / 2 for model metrics, which
also score the random map). Deletion and insertion use 16 steps here so Quantus's feature steps divide evenly.

Results: a table on stdout and JSON in benchmarks/results/metrics-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
STEPS = 16


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def put_back(arr, indices, source, **kwargs):
    out = arr.copy()
    rows = np.arange(arr.shape[0])[:, None]
    out[rows, indices] = source.reshape(arr.shape[0], -1)[rows, indices]
    return out


def quantus_arms(adapter, batch, targets, maps, masks):
    """name -> a callable running Quantus's counterpart on all images (None where Quantus has none)."""
    import quantus

    from workbench.adapters.torch_adapter import TorchAdapter
    from workbench.metrics.pixel_flipping import gaussian_blur
    import explainers

    class PixelFlippingOverChannels(quantus.PixelFlipping):
        def custom_preprocess(self, *args, **kwargs):  # see tests/test_metrics.py
            return None

    h, w, c = adapter.input_size
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    y = np.asarray(targets)
    a = maps[:, None].astype(np.float64)
    s = np.stack([m[None] for m in masks]).astype(np.float32)
    black = np.zeros_like(x)
    blurred = np.ascontiguousarray(gaussian_blur(batch, 5.0, 5).transpose(0, 3, 1, 2))
    common = dict(normalise=False, disable_warnings=True)

    def flip(start, source):
        metric = PixelFlippingOverChannels(features_in_step=c * h * w // STEPS, abs=False,
                                           perturb_func=functools.partial(put_back, source=source), **common)
        return lambda: metric(model=adapter.module, x_batch=start, y_batch=y, a_batch=a.copy(), channel_first=True, softmax=True, device="cpu")

    gradcam = explainers.get("gradcam")

    def explain(model, inputs, targets, **kwargs):
        view = TorchAdapter(model, name="copy", source_format="bench", input_size=adapter.input_size, device="cpu")
        return np.stack([r.map for r in gradcam.explain(view, np.transpose(np.asarray(inputs), (0, 2, 3, 1)), [int(t) for t in targets])])[:, None]

    def mprt():
        metric = quantus.MPRT(layer_order="top_down", seed=0, similarity_func=quantus.similarity_func.correlation_spearman,
                              abs=True, normalise=True, disable_warnings=True)
        return metric(model=adapter.module, x_batch=x, y_batch=y, a_batch=a.copy(), explain_func=explain, channel_first=True, device="cpu")

    return {
        "deletion": flip(x, black),
        "insertion": flip(blurred, x),
        "pointing_game": lambda: quantus.PointingGame(abs=False, **common)(model=None, x_batch=x, y_batch=y, a_batch=a.copy(), s_batch=s),
        "mask_energy": lambda: quantus.RelevanceMassAccuracy(abs=False, **common)(
            model=None, x_batch=x, y_batch=y, a_batch=np.clip(a, 0, None), s_batch=s),
        "randomisation": mprt,
        "sparseness": lambda: quantus.Sparseness(abs=True, **common)(model=None, x_batch=x, y_batch=y, a_batch=a.copy()),
        "complexity": lambda: quantus.Complexity(abs=True, **common)(model=None, x_batch=x, y_batch=y, a_batch=a.copy()),
    }


def bench_model(name: str, n_images: int, repeats: int, device: str) -> list[dict]:
    import explainers
    import model_zoo
    from workbench import metrics
    from workbench.analysis import measure_forward_seconds
    from workbench.intake import load_zoo_model
    from workbench.metrics.base import fit_mask

    adapter = load_zoo_model(name, device=device)
    h, w, _ = adapter.input_size
    samples = model_zoo.samples()[:n_images]
    loaded = [model_zoo.load_sample(s) for s in samples]
    from workbench.images import resize_for_model

    pixels = np.stack([resize_for_model(p, (h, w)) for p, _ in loaded]).astype(np.float32)
    masks = [fit_mask(m, (h, w)) for _, m in loaded]
    batch = adapter.prepare(pixels)
    targets = tuple(int(t) for t in adapter.predict(batch).argmax(axis=1))
    maps = np.stack([r.map for r in explainers.get("gradcam").explain(adapter, batch, targets)])
    forward = measure_forward_seconds(adapter)
    references = quantus_arms(adapter, batch, targets, maps, masks)
    rows = []
    for metric in metrics.names():
        params = {metric: {"steps": STEPS}} if metric in ("deletion", "insertion") else None
        holder = {}

        def ours():
            holder["evaluation"] = metrics.evaluate(adapter, batch, targets, {"gradcam": maps}, [metric], params=params, masks=masks,
                                                    method_params={"gradcam": {}}, seed=0)

        ours()  # warm-up
        seconds = median_seconds(ours, repeats) / n_images
        evaluation = holder["evaluation"]
        evaluations = sum(r.evaluations for r in evaluation.results) / n_images
        cls = metrics.REGISTRY[metric]
        baseline = 2 if cls.random_baseline and cls.needs_model else 1
        reference = references.get(metric)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference()
            theirs = median_seconds(reference, repeats) / n_images
        ours_per_map = seconds / baseline
        rows.append({
            "model": name, "metric": metric, "seconds_per_image": seconds, "evaluations_per_map": evaluations,
            "estimate_seconds_per_image": metrics.estimate(adapter, 1, ["gradcam"], [metric], evaluation.params, {"gradcam": {}}, forward)[metric]["seconds"],
            "quantus_seconds_per_image": theirs, "ratio_ours_per_map_to_quantus": ours_per_map / theirs if theirs > 0 else None,
        })
        print(f"{name:<18} {metric:<14} ours {seconds * 1000:9.2f} ms/image ({evaluations:6.0f} passes/map) · "
              f"quantus {theirs * 1000:9.2f} ms/image · ours per map / quantus {ours_per_map / theirs:6.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["shapes-cnn-torch", "resnet-mini-torch"])
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} · {os.cpu_count()} CPUs · {platform.processor() or platform.machine()}")
    rows = []
    for name in args.models:
        rows += bench_model(name, args.images, args.repeats, args.device)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"metrics-{stamp}.json"
    out.write_text(json.dumps({"rows": rows, "load_before": load, "load_after": load_after, "args": vars(args)}, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
