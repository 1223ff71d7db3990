"""Our nine explainers against the reference implementations, side by side in one process.

    python benchmarks/bench_explainers.py [--frameworks torch,keras] [--device cpu|cuda]
        [--model resnet-mini|resnet50] [--methods gradcam,...] [--batches 1,16] [--repeats 5]
        [--quick] [--full] [--memory] [--check] [--gradcam-reference auto|package|port]

Both arms of a case get the same model, images, targets and parameters. Models: the zoo's
resnet-mini at 224x224 in PyTorch and Keras (seeded random weights from ``model_zoo`` when the
zoo's weight files are not built yet), or ``resnet50``: a ResNet-50-sized torch model built here
without torchvision (benchmarks/bench_models.py: bottleneck blocks [3, 4, 6, 3], 25.6 M
parameters, 224x224, 1000 classes, seeded random weights). Images: seeded shapes images whose
pixel range is exactly [0, 1] (so SmoothGrad's sigma is one number for the whole batch); each
image's target is its predicted class. Torch cases (reference):

* gradcam               captum LayerGradCam (relu_attributions) + LayerAttribution.interpolate (bilinear)
* gradcam++             pytorch-grad-cam GradCAMPlusPlus     } the package (``grad-cam``, optional:
* scorecam              pytorch-grad-cam ScoreCAM, batch 16  } benchmarks/gradcam_reference.py), else its port
* saliency              captum Saliency (abs)
* smoothgrad            captum NoiseTunnel(Saliency), nt_type smoothgrad, 25 samples, the same sigma
                        (ours: noise 0.15 x (x.max() - x.min()) = 0.15 here)
* integrated_gradients  captum IntegratedGradients, 50 steps, zero baseline; once as attributions
                        only and once with return_convergence_delta=True ("+delta": ours reports the
                        completeness gap, so that is the like-for-like call)
* expected_gradients    captum GradientShap, 200 samples, stdevs 0, the same background set (black,
                        white and 8 seeded noise images); captum draws all samples in one pass, so
                        where that would exceed --max-rows it is called in equal chunks of samples
                        and the chunk results averaged (the same estimator)
* occlusion             captum Occlusion, sliding_window_shapes (3, 16, 16), strides (3, 8, 8),
                        baselines the same fill value as ours
* shap                  shap.PartitionExplainer called directly (blur(128,128) masker, max_evals 500,
                        batch size 50, one call per image with its target, as ours)

Keras cases (``--frameworks keras``, resnet-mini only): gradcam vs the keras.io Grad-CAM recipe +
tf.image.resize; integrated_gradients vs the TensorFlow IG tutorial (interpolate, tf.function'd
gradients in batches of 32, trapezoid), 50 intervals = 51 points. Both recipes explain one image;
at batch > 1 the reference runs once per image. A torch-only run never imports TensorFlow or
Keras (checked at the end), so it runs on hosts without them; captum, shap and pytorch-grad-cam
are imported per arm, and a missing package skips only the arms that need it, with the reason.

Where a reference has several settings (captum's internal_batch_size, nt_samples_batch_size,
perturbations_per_eval; GradientShap's chunk), the best is picked in a 3-round pilot among those
that fit --max-rows rows per model call (and do not fail). Each arm is warmed up; then ours and
the reference are timed ``repeats`` times, interleaved (alternating which goes first); the
median is reported with the ratio of CPU-time medians and of the fastest runs beside it (steadier
on a shared machine). Cases of a few milliseconds time several calls per sample. With
``--memory``, peak RSS above the level before the call (sampled every millisecond in a thread)
and the tracemalloc peak are measured in separate runs after the timing. Every arm ends with the
maps in host memory as numpy, as ours returns them. Torch's thread settings are left at their
defaults for both arms.

Reductions: some cases are too slow to time fully on a 2-core CPU (Score-CAM on ResNet-50's
2048-channel layer4, 200 expected-gradients samples x 16 ResNet-50 images, ...). On the CPU, unless
``--full``, the parameters in REDUCTIONS replace the defaults for BOTH arms of that case (never
for one arm only) and the table's last column says what was reduced; ``--quick`` further caps
IG steps, SHAP evaluations and samples (QUICK), also for both arms. On CUDA nothing is reduced
unless ``--quick``.

``--check`` times nothing: it runs each arm once and prints the correlation of ours and the
reference's maps per image (a check that both arms compute the same quantity).

Results: a table on stdout and JSON in benchmarks/results/<timestamp>.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's ScoreCAM draws a progress bar per image

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import warnings  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

# captum's Saliency/NoiseTunnel say so on every call: the input tensor does not require gradients
warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")

RESULTS_DIR = ROOT / "benchmarks" / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")

METHODS = (
    "gradcam",
    "gradcam++",
    "scorecam",
    "saliency",
    "smoothgrad",
    "integrated_gradients",
    "expected_gradients",
    "occlusion",
    "shap",
)
KERAS_METHODS = ("gradcam", "integrated_gradients")

# the parameters both arms use (ours gets them as params=; the references the same values)
DEFAULTS = {
    "gradcam": {},
    "gradcam++": {},
    "scorecam": {"batch_size": 16},
    "saliency": {"abs": True},
    "smoothgrad": {"samples": 25, "noise": 0.15, "abs": True},
    "integrated_gradients": {"steps": 50},
    "expected_gradients": {"samples": 200},
    "occlusion": {"window": 16, "stride": 8, "baseline": 0.0},
    "shap": {"max_evals": 500, "batch_size": 50},
}

# CPU only, unless --full: (model, batch class) -> method -> parameters for both arms. Batch class
# "1" is used for batches up to 4, "16" above. Chosen so one arm's call stays within ~10 s on 2 cores.
# ResNet-50 has no layer with fewer than 64 channels; Score-CAM runs one forward per channel per
# image, so its reduced layer is layer1's last 64-channel ReLU (56x56) instead of layer4 (2048).
REDUCTIONS = {
    ("resnet50", 1): {
        "scorecam": {"layer": "layer1.2.relu2"},
        "integrated_gradients": {"steps": 16},
        "occlusion": {"window": 56, "stride": 28},
        "shap": {"max_evals": 100},
    },
    ("resnet50", 16): {
        "scorecam": {"layer": "layer1.2.relu2"},
        "smoothgrad": {"samples": 4},
        "integrated_gradients": {"steps": 4},
        "expected_gradients": {"samples": 4},
        "occlusion": {"window": 112, "stride": 56},
        "shap": {"max_evals": 20},
    },
    ("resnet-mini", 16): {
        "shap": {"max_evals": 100},
    },
}
# --quick: upper bounds on top of the above, for both arms
QUICK = {
    "smoothgrad": {"samples": 10},
    "integrated_gradients": {"steps": 16},
    "expected_gradients": {"samples": 50},
    "shap": {"max_evals": 100},
    "occlusion": {"stride": 16},  # at least; window 2 x stride: 169 windows instead of 729 at 224 px
}
# rows per model call that references may use (their pilot candidates above it are dropped)
MAX_ROWS = {("resnet-mini", "cpu"): 800, ("resnet50", "cpu"): 64, ("resnet-mini", "cuda"): 4096, ("resnet50", "cuda"): 512}


class Skip(Exception):
    """An arm cannot run here (a reference package is missing); the case is skipped with this reason."""


# ---------------------------------------------------------------- measurement
def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRSS:
    """Highest RSS seen while the block runs, minus the RSS when it started."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval

    def __enter__(self):
        gc.collect()
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())
        self.delta = self.peak - self.start


def timed(fn, number: int = 1) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) per call, over ``number`` calls."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number, (time.process_time() - cpu) / number


def calls_per_sample(seconds: float, least: float = 0.25) -> int:
    """Calls per timing sample so that one sample lasts ``least`` seconds (for millisecond cases)."""
    return max(1, min(100, int(least / max(seconds, 1e-6))))


def memory(fn) -> dict:
    with PeakRSS() as peak:
        fn()
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {"peak_rss_mb": peak.delta / 2**20, "tracemalloc_peak_mb": traced / 2**20}


def free_device_cache():
    """After a failed (out-of-memory) setting, give the CUDA caching allocator's blocks back."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}"


HEADER = (
    f"{'case':34s} {'ours ms':>9s} {'ref ms':>9s} {'ratio':>6s} {'paired':>6s} {'cpu':>6s} {'min':>6s}  "
    f"{'reference (best setting)':40s} reductions (both arms)"
)


def compare(name: str, ours, references: dict, repeats: int, *, memory_too: bool, meta: dict, pilot_rounds: int = 3) -> dict:
    """Median seconds of ours and of the best reference variant, interleaved."""
    # warm-up: ours once, each reference variant once; a variant that fails (out of memory) is dropped
    once = timed(ours)[0]
    failed = {}
    for key in list(references):
        try:
            timed(references[key])
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a large internal batch
            failed[key] = short(exc)
            del references[key]
            gc.collect()
            free_device_cache()
    if not references:
        raise Skip("every reference setting failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    number = calls_per_sample(once)
    pilot = {}
    if len(references) > 1:
        # the reference's best setting is chosen in a pilot, then timed head to head with ours: taking
        # the best of several noisy medians from the same runs would favour the reference by chance
        samples = {k: [] for k in references}
        for r in range(pilot_rounds):
            for key, fn in references.items() if r % 2 == 0 else reversed(references.items()):
                samples[key].append(timed(fn, number)[0])
        pilot = {k: statistics.median(v) for k, v in samples.items()}
    best = min(pilot, key=pilot.get) if pilot else next(iter(references))
    wall = {"ours": [], best: []}
    cpu = {"ours": [], best: []}
    arms = [("ours", ours), (best, references[best])]
    for r in range(repeats):
        for key, fn in arms if r % 2 == 0 else arms[::-1]:
            w, c = timed(fn, number)
            wall[key].append(w)
            cpu[key].append(c)
    medians = {k: statistics.median(v) for k, v in wall.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
    row = {
        "case": name,
        **meta,
        "ours_s": medians["ours"],
        "reference": best,
        "reference_s": medians[best],
        "ratio": medians["ours"] / medians[best],
        # CPU time and the fastest run are steadier than wall medians on a shared machine
        "cpu_ratio": cpu_medians["ours"] / cpu_medians[best],
        "min_ratio": min(wall["ours"]) / min(wall[best]),
        # ours and the reference run back to back in each round: the median of the rounds' ratios
        # cancels slow changes in the machine's load
        "paired_ratio": statistics.median(o / r for o, r in zip(wall["ours"], wall[best])),
        "calls_per_sample": number,
        "pilot_medians_s": pilot,
        "failed_settings": failed,
        "cpu_medians_s": cpu_medians,
        "wall_s": wall,
        "cpu_s": cpu,
    }
    if memory_too:
        row["ours_memory"] = memory(ours)
        row["reference_memory"] = memory(references[best])
    print(
        f"{name:34s} {row['ours_s'] * 1e3:9.1f} {row['reference_s'] * 1e3:9.1f} {row['ratio']:6.2f} "
        f"{row['paired_ratio']:6.2f} {row['cpu_ratio']:6.2f} {row['min_ratio']:6.2f}  "
        f"{meta['reference_label'] + ' (' + best + ')':40s} {meta['reductions'] or '-'}",
        flush=True,
    )
    if memory_too:
        print(
            f"{'':34s} peak RSS MB ours {row['ours_memory']['peak_rss_mb']:.1f} ref "
            f"{row['reference_memory']['peak_rss_mb']:.1f}; tracemalloc MB ours "
            f"{row['ours_memory']['tracemalloc_peak_mb']:.1f} ref {row['reference_memory']['tracemalloc_peak_mb']:.1f}",
            flush=True,
        )
    return row


def as_maps(out) -> list[np.ndarray]:
    """Any arm's result -> one [H, W] map per image (channels summed), to check that the arms agree."""
    if isinstance(out, tuple):  # (attributions, convergence delta)
        out = out[0]
    if isinstance(out, list) and out and hasattr(out[0], "map"):  # ours
        return [np.asarray(a.map, np.float64) for a in out]
    items = list(out) if isinstance(out, np.ndarray) else [np.squeeze(np.asarray(o)) for o in out]
    maps = []
    for m in items:
        m = np.asarray(m, np.float64)
        if m.ndim == 3:
            m = m.sum(axis=0) if m.shape[0] <= 4 else m.sum(axis=-1)
        maps.append(m)
    return maps


def check(name: str, ours, references: dict, meta: dict) -> dict:
    """One call of each arm: Pearson correlation of ours and the reference's maps, image by image
    (1.0 for the deterministic methods; the sampling methods draw different noise), and the ratio of
    their norms (both sides' scale conventions differ for the min-max-scaled CAMs)."""
    setting, reference = next(iter(references.items()))
    a, b = as_maps(ours()), as_maps(reference())
    corr = [float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, b)]
    scale = [float(np.linalg.norm(x) / max(np.linalg.norm(y), 1e-30)) for x, y in zip(a, b)]
    print(f"{name:34s} agreement: correlation min {min(corr):.4f} mean {np.mean(corr):.4f}; norm ratio "
          f"{min(scale):.3g}..{max(scale):.3g}  {meta['reference_label']} ({setting})  {meta['reductions'] or '-'}", flush=True)
    return {"case": name, **meta, "check": True, "correlation": corr, "norm_ratio": scale, "reference": setting}


# ---------------------------------------------------------------- parameters
def case_params(method: str, model: str, device: str, batch: int, quick: bool, full: bool) -> tuple[dict, str]:
    """-> (parameters for both arms, what was reduced from the defaults, '' if nothing)."""
    params = dict(DEFAULTS[method])
    changed = {}
    if device == "cpu" and not full:
        for key, value in REDUCTIONS.get((model, 1 if batch <= 4 else 16), {}).get(method, {}).items():
            changed[key] = (params.get(key, "default"), value)
            params[key] = value
    if quick:
        caps = dict(QUICK.get(method, {}))
        if method == "occlusion":  # a lower bound on the stride; the window stays twice the stride
            stride = caps.pop("stride")
            if params["stride"] < stride:
                caps = {"window": max(params["window"], 2 * stride), "stride": stride}
        else:
            caps = {key: value for key, value in caps.items() if params[key] > value}
        for key, value in caps.items():
            changed[key] = (changed.get(key, (params[key],))[0], value)
            params[key] = value
    return params, ", ".join(f"{k} {old}->{new}" for k, (old, new) in changed.items())


# ---------------------------------------------------------------- models and images
def torch_model(name: str, device: str):
    """(TorchAdapter, where it came from)."""
    from workbench.adapters.torch_adapter import TorchAdapter

    if name == "resnet50":
        from bench_models import build_resnet50, parameter_count

        module = build_resnet50(seed=0)
        source = f"benchmarks/bench_models.py ResNet-50 layout, {parameter_count(module) / 1e6:.2f} M parameters, seeded random"
        adapter = TorchAdapter(
            module, name="resnet50 (seeded)", source_format="benchmark-architecture", input_size=(224, 224, 3), device=device
        )
        return adapter, source
    try:
        from workbench.intake import load_zoo_model

        return load_zoo_model("resnet-mini-torch", device=device), "zoo"
    except Exception as exc:  # noqa: BLE001 - the zoo's files may not be built yet
        print(f"zoo weights unavailable ({short(exc)}); using seeded random resnet-mini", file=sys.stderr)
    import torch

    import model_zoo

    torch.manual_seed(0)
    module = model_zoo.build_torch("resnet-mini")
    size = model_zoo.ARCHITECTURES["resnet-mini"].input_size
    adapter = TorchAdapter(module, name="resnet-mini (seeded)", source_format="zoo-architecture", input_size=size, device=device)
    return adapter, "model_zoo.build_torch, seeded random weights"


def keras_model(device: str):
    """(KerasAdapter for resnet-mini, where it came from)."""
    from workbench.adapters.keras_adapter import KerasAdapter

    try:
        from workbench.intake import load_zoo_model

        return load_zoo_model("resnet-mini-keras", device=device), "zoo"
    except Exception as exc:  # noqa: BLE001 - the zoo's files may not be built yet
        print(f"zoo weights unavailable ({short(exc)}); using seeded random resnet-mini", file=sys.stderr)
    import torch

    import model_zoo
    from model_zoo.convert import torch_to_keras

    torch.manual_seed(0)
    keras_model_ = torch_to_keras(model_zoo.build_torch("resnet-mini"), model_zoo.build_keras("resnet-mini"))
    adapter = KerasAdapter(keras_model_, name="resnet-mini (seeded)", source_format="zoo-architecture", device=device)
    return adapter, "model_zoo.build_keras (converted twin of the seeded torch model)"


def sample_images(n: int, size: int) -> np.ndarray:
    """``n`` seeded shapes images in [0, 1] whose own range is exactly [0, 1]."""
    from model_zoo.shapes import generate

    images, _, _ = generate(max(4 * n, 16), seed=7, size=size)
    unit = images.astype(np.float32) / 255.0
    full = [im for im in unit if im.min() == 0.0 and im.max() == 1.0]
    if len(full) < n:
        raise SystemExit(f"only {len(full)} shapes images span [0, 1]; cannot make a batch of {n}")
    return np.stack(full[:n])


def background_set(shape, preset, seed: int = 0) -> np.ndarray:
    """Black, white and 8 seeded uniform-noise images (the expected-gradients default), in model input space."""
    rng = np.random.default_rng(seed)
    unit = np.concatenate(
        [np.zeros((1, *shape), np.float32), np.ones((1, *shape), np.float32), rng.random((8, *shape), np.float32)]
    )
    return preset.apply(unit).astype(np.float32)


def fits(rows: int, max_rows: int) -> bool:
    return rows <= max_rows


# ---------------------------------------------------------------- torch arms
class TorchContext:
    def __init__(self, adapter, x: np.ndarray, targets: list[int], max_rows: int, gradcam_reference: str):
        import torch

        self.adapter = adapter
        self.model = adapter.module
        self.device = next(self.model.parameters()).device
        self.x = x
        self.targets = targets
        self.xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.background = background_set(x.shape[1:], adapter.preset)
        self.background_t = torch.from_numpy(self.background).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.max_rows = max_rows
        self.gradcam_reference = gradcam_reference
        self._grad_cam = None

    def module(self, layer: str):
        return dict(self.model.named_modules())[layer]

    def grad_cam_classes(self):
        if self._grad_cam is None:
            import gradcam_reference

            self._grad_cam = gradcam_reference.load(self.gradcam_reference)
            print(f"Grad-CAM++ / Score-CAM reference: {self._grad_cam[2]}", flush=True)
        return self._grad_cam


def need(package: str):
    """Import a reference package (``captum.attr``, ``shap``), or skip the case saying why."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise Skip(f"{package} is not installed ({short(exc)})") from None


def ours_fn(adapter, method, x, targets, params, background=None):
    import explainers

    explainer = explainers.get(method)
    if background is None:
        return lambda: explainer.explain(adapter, x, targets, params=params, seed=0)
    return lambda: explainer.explain(adapter, x, targets, params=params, seed=0, background=background)


def torch_arms(method: str, ctx: TorchContext, params: dict):
    """-> (ours, {setting: reference}, reference label)."""
    import torch

    model, xt, targets, n = ctx.model, ctx.xt, ctx.targets, len(ctx.targets)
    host = lambda t: t.detach().cpu().numpy()  # noqa: E731
    ours = ours_fn(ctx.adapter, method.replace("+delta", ""), ctx.x, targets, params)

    if method == "gradcam":
        attr = need("captum.attr")
        module = ctx.module(params["layer"])

        def captum_gradcam():
            cam = attr.LayerGradCam(model, module).attribute(xt, target=targets, relu_attributions=True)
            return host(attr.LayerAttribution.interpolate(cam, xt.shape[-2:], interpolate_mode="bilinear"))

        return ours, {"default": captum_gradcam}, "captum LayerGradCam"

    if method in ("gradcam++", "scorecam"):
        plus_plus, score, label = ctx.grad_cam_classes()
        module = ctx.module(params["layer"])
        cls = plus_plus if method == "gradcam++" else score

        def grad_cam():
            with cls(model, target_layers=[module]) as cam:
                if method == "scorecam":
                    cam.batch_size = params["batch_size"]
                return cam(xt, targets)

        return ours, {f"batch {params['batch_size']}" if method == "scorecam" else "default": grad_cam}, label

    attr = need("captum.attr") if method != "shap" else None
    if method == "saliency":

        def captum_saliency():
            return host(attr.Saliency(model).attribute(xt, target=targets, abs=params["abs"]))

        return ours, {"default": captum_saliency}, "captum Saliency"

    if method == "smoothgrad":
        samples = params["samples"]
        ranges = {float(im.max() - im.min()) for im in ctx.x}
        if len(ranges) != 1:
            raise Skip(f"images have different ranges {sorted(ranges)}: captum takes one sigma per batch")
        sigma = params["noise"] * ranges.pop()

        def captum_smoothgrad(batch):
            def run():
                nt = attr.NoiseTunnel(attr.Saliency(model))
                out = nt.attribute(
                    xt, nt_type="smoothgrad", nt_samples=samples, stdevs=sigma, target=targets,
                    nt_samples_batch_size=batch, abs=params["abs"],
                )
                return host(out)

            return run

        choices = [b for b in (None, 5, 1) if fits(n * (b or samples), ctx.max_rows)] or [1]
        return ours, {f"nt_samples_batch_size={b}": captum_smoothgrad(b) for b in choices}, f"captum NoiseTunnel sigma {sigma:.3g}"

    if method in ("integrated_gradients", "integrated_gradients+delta"):
        steps = params["steps"]
        delta = method.endswith("+delta")
        ours = ours_fn(ctx.adapter, "integrated_gradients", ctx.x, targets, params)

        def captum_ig(batch):
            def run():
                ig = attr.IntegratedGradients(model)
                out = ig.attribute(
                    xt, baselines=0.0, target=targets, n_steps=steps, internal_batch_size=batch,
                    return_convergence_delta=delta,
                )
                return (host(out[0]), host(out[1])) if delta else host(out)

            return run

        # captum raises an internal batch below the number of images to that number (with a warning)
        choices = [b for b in (None, 10, 25, 50) if (b is None or b >= n) and fits(b or n * steps, ctx.max_rows)]
        choices = choices or [max(n, min(50, ctx.max_rows))]
        label = "captum IG" + (" +delta" if delta else "")
        return ours, {f"ibs={b}": captum_ig(b) for b in choices}, label

    if method == "expected_gradients":
        samples = params["samples"]
        ours = ours_fn(ctx.adapter, method, ctx.x, targets, params, background=ctx.background)

        def captum_gradient_shap(chunk):
            def run():
                gs = attr.GradientShap(model)
                total = None
                for start in range(0, samples, chunk):
                    k = min(chunk, samples - start)
                    out = gs.attribute(xt, baselines=ctx.background_t, n_samples=k, stdevs=0.0, target=targets) * k
                    total = out if total is None else total + out
                return host(total / samples)

            return run

        choices = [c for c in dict.fromkeys((samples, 50, 10)) if c <= samples and fits(n * c, ctx.max_rows)]
        choices = choices or [max(1, ctx.max_rows // n)]
        return ours, {f"n_samples/call={c}": captum_gradient_shap(c) for c in choices}, "captum GradientShap"

    if method == "occlusion":
        win, stride = params["window"], params["stride"]
        fill = ctx.adapter.preset.apply(np.full(ctx.x.shape[1:], params["baseline"], np.float32))
        if not np.all(fill == fill.flat[0]):
            raise Skip("the preset makes the fill value differ per channel; captum takes one scalar baseline here")
        fill_value = float(fill.flat[0])
        channels = xt.shape[1]

        def captum_occlusion(per_eval):
            def run():
                out = attr.Occlusion(model).attribute(
                    xt, sliding_window_shapes=(channels, win, win), strides=(channels, stride, stride),
                    baselines=fill_value, target=targets, perturbations_per_eval=per_eval,
                )
                return host(out)

            return run

        choices = [p for p in (1, 8, 32) if fits(n * p, ctx.max_rows)] or [1]
        return ours, {f"perturbations_per_eval={p}": captum_occlusion(p) for p in choices}, "captum Occlusion"

    if method == "shap":
        shap = need("shap")
        evals, batch_size = params["max_evals"], params["batch_size"]
        device = ctx.device

        def f(pixels):
            with torch.inference_mode():
                t = torch.from_numpy(np.asarray(pixels, np.float32) / 255.0).permute(0, 3, 1, 2).contiguous().to(device)
                return model(t).float().cpu().numpy()

        pixels = np.clip(ctx.adapter.preset.invert(ctx.x), 0.0, 1.0) * 255.0

        def shap_direct():
            masker = shap.maskers.Image("blur(128,128)", pixels.shape[1:])
            explainer = shap.PartitionExplainer(f, masker)
            return [
                explainer(pixels[i : i + 1], max_evals=evals, batch_size=batch_size, outputs=np.array([t]), silent=True).values
                for i, t in enumerate(targets)
            ]

        return ours, {"default": shap_direct}, "shap.PartitionExplainer"

    raise ValueError(method)


# ---------------------------------------------------------------- keras arms
def keras_arms(method: str, adapter, x: np.ndarray, targets: list[int], params: dict):
    import keras
    import tensorflow as tf

    model = adapter.model
    ours = ours_fn(adapter, method, x, targets, params)

    if method == "gradcam":
        layer = params["layer"]

        def keras_io_gradcam():
            # https://keras.io/examples/vision/grad_cam/ make_gradcam_heatmap, as written there (one image)
            grad_model = keras.models.Model(model.inputs, [model.get_layer(layer).output, model.output])
            maps = []
            for i, target in enumerate(targets):
                with tf.GradientTape() as tape:
                    last_conv_layer_output, preds = grad_model(x[i : i + 1])
                    class_channel = preds[:, target]
                grads = tape.gradient(class_channel, last_conv_layer_output)
                pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
                heatmap = last_conv_layer_output[0] @ pooled_grads[..., tf.newaxis]
                heatmap = tf.squeeze(heatmap)
                heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
                maps.append(tf.image.resize(heatmap[..., None], x.shape[1:3], method="bilinear").numpy())
            return maps

        return ours, {"default": keras_io_gradcam}, "keras.io Grad-CAM recipe"

    if method == "integrated_gradients":
        m_steps = params["steps"] - 1  # intervals; the tutorial evaluates m_steps + 1 points
        ours = ours_fn(adapter, method, x, targets, {**params, "method": "riemann_trapezoid"})

        def interpolate_images(baseline, image, alphas):
            alphas_x = alphas[:, tf.newaxis, tf.newaxis, tf.newaxis]
            baseline_x = tf.expand_dims(baseline, axis=0)
            input_x = tf.expand_dims(image, axis=0)
            delta = input_x - baseline_x
            return baseline_x + alphas_x * delta

        def compute_gradients(images, target_class_idx):
            with tf.GradientTape() as tape:
                tape.watch(images)
                logits = model(images)
                # the tutorial explains the softmax probability; both arms here explain the logit
                score = logits[:, target_class_idx]
            return tape.gradient(score, images)

        @tf.function
        def one_batch(baseline, image, alpha_batch, target_class_idx):
            interpolated = interpolate_images(baseline=baseline, image=image, alphas=alpha_batch)
            return compute_gradients(images=interpolated, target_class_idx=target_class_idx)

        def integral_approximation(gradients):
            grads = (gradients[:-1] + gradients[1:]) / tf.constant(2.0)
            return tf.math.reduce_mean(grads, axis=0)

        images = [tf.constant(im) for im in x]

        def tutorial_ig(batch_size=32):
            out = []
            for image, target in zip(images, targets):
                baseline = tf.zeros_like(image)
                alphas = tf.linspace(start=0.0, stop=1.0, num=m_steps + 1)
                gradient_batches = []
                for from_ in range(0, m_steps + 1, batch_size):
                    to = min(from_ + batch_size, m_steps + 1)
                    gradient_batches.append(one_batch(baseline, image, alphas[from_:to], tf.constant(target)))
                total_gradients = tf.concat(gradient_batches, axis=0)
                avg_gradients = integral_approximation(gradients=total_gradients)
                out.append(((image - baseline) * avg_gradients).numpy())
            return out

        return ours, {"default": tutorial_ig}, "TF IG tutorial"

    raise Skip(f"no Keras reference for {method}")


# ---------------------------------------------------------------- main
def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_cases(framework: str, adapter, model_name: str, images: np.ndarray, args, rows: list, skipped: list, write_report):
    batches = [b for b in args.batches]
    predicted = adapter.predict(adapter.prepare(images)).argmax(axis=1)
    methods = [m for m in args.methods if framework == "torch" or m in KERAS_METHODS]
    if framework == "torch" and "integrated_gradients" in methods:
        methods.insert(methods.index("integrated_gradients") + 1, "integrated_gradients+delta")
    for batch in batches:
        x = adapter.prepare(images[:batch]).astype(np.float32)
        targets = [int(t) for t in predicted[:batch]]
        ctx = TorchContext(adapter, x, targets, args.max_rows, args.gradcam_reference) if framework == "torch" else None
        for method in methods:
            base = "integrated_gradients" if method == "integrated_gradients+delta" else method
            params, reductions = case_params(base, model_name, args.device, batch, args.quick, args.full)
            if base in ("gradcam", "gradcam++", "scorecam"):
                params.setdefault("layer", adapter.default_cam_layer())
            name = f"{framework} {method} b{batch}"
            try:
                if framework == "torch":
                    ours, refs, label = torch_arms(method, ctx, params)
                else:
                    ours, refs, label = keras_arms(method, adapter, x, targets, params)
                meta = {"framework": framework, "method": method, "batch": batch, "params": params,
                        "reductions": reductions, "reference_label": label}
                if args.check:
                    rows.append(check(name, ours, refs, meta))
                else:
                    rows.append(compare(name, ours, refs, args.repeats, memory_too=args.memory, meta=meta,
                                        pilot_rounds=1 if args.quick else 3))
            except Skip as exc:
                print(f"{name:34s} skipped: {exc}", flush=True)
                skipped.append({"case": name, "reason": str(exc)})
            except Exception as exc:  # noqa: BLE001 - one failing case (ours out of memory) must not end the run
                print(f"{name:34s} failed: {short(exc)}", flush=True)
                skipped.append({"case": name, "reason": "failed: " + short(exc)})
                free_device_cache()
            write_report()  # after every case: a run cut short still leaves its rows
            gc.collect()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("resnet-mini", "resnet50"), default="resnet-mini")
    parser.add_argument("--frameworks", default="torch,keras", help="comma-separated: torch, keras")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="at most 2 repeats and the QUICK caps on steps/samples/evals")
    parser.add_argument("--full", action="store_true", help="no CPU reductions (REDUCTIONS)")
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS and tracemalloc peaks (two more runs per arm)")
    parser.add_argument("--max-rows", type=int, default=None, help="rows per model call allowed for reference settings")
    parser.add_argument("--check", action="store_true",
                        help="no timing: run each arm once and print how well ours and the reference agree")
    parser.add_argument("--gradcam-reference", choices=("auto", "package", "port"), default="auto")
    args = parser.parse_args(argv)
    args.frameworks = [f for f in args.frameworks.split(",") if f]
    args.methods = [m for m in args.methods.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    unknown = set(args.methods) - set(METHODS) or set(args.frameworks) - {"torch", "keras"}
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    if "keras" in args.frameworks and args.model != "resnet-mini":
        parser.error("the Keras arms run on resnet-mini only (--frameworks torch for --model resnet50)")
    if args.quick:
        args.repeats = min(args.repeats, 2)
    if args.max_rows is None:
        args.max_rows = MAX_ROWS[(args.model, args.device)]
    if args.device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

    import torch  # the torch arms need it, and the zoo's Keras fallback converts from torch

    load_start = os.getloadavg()
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}; cpus {os.cpu_count()}; repeats {args.repeats}; "
          f"max rows per reference call {args.max_rows}; load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    images = sample_images(max(args.batches), 224)
    rows: list[dict] = []
    skipped: list[dict] = []
    models = {}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{args.model}-{'+'.join(args.frameworks)}.json"
    created = _dt.datetime.now(_dt.timezone.utc).isoformat()

    def write_report() -> dict:
        grad_cam = next((r["reference_label"] for r in rows if r["method"] in ("gradcam++", "scorecam")), None)
        report = {
            "created": created,
            "args": vars(args),
            "models": models,
            "device": {"requested": args.device, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "cuda": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                       "machine": platform.machine(), "python": platform.python_version()},
            "versions": {d: version(d) for d in ("torch", "numpy", "captum", "shap", "grad-cam", "tensorflow", "keras")},
            "pytorch_grad_cam_arm": grad_cam,
            "reductions": {f"{k[0]} batch class {k[1]}": v for k, v in REDUCTIONS.items()}
            if args.device == "cpu" and not args.full else {},
            "quick_caps": QUICK if args.quick else {},
            "rows": rows,
            "skipped": skipped,
            "worst_ratio": max((r["ratio"] for r in rows if "ratio" in r), default=None),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        }
        path.write_text(json.dumps(report, indent=2, default=str))
        return report

    for framework in args.frameworks:
        adapter, source = torch_model(args.model, args.device) if framework == "torch" else keras_model(args.device)
        models[framework] = {"name": args.model, "source": source, "device": adapter.device, "input_size": list(adapter.input_size)}
        print(f"{framework}: {args.model} {tuple(adapter.input_size)} from {source}; device {adapter.device}")
        print(HEADER, flush=True)
        run_cases(framework, adapter, args.model, images, args, rows, skipped, write_report)

    report = write_report()
    end = report["load_average_end"]
    worst = f"{report['worst_ratio']:.2f}" if report["worst_ratio"] is not None else "-"
    print(f"worst ratio {worst}; load average at end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}; written {path.relative_to(ROOT)}")
    if "keras" not in args.frameworks:
        loaded = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
        assert not loaded, f"a torch-only run imported {loaded}"
    return report


if __name__ == "__main__":
    main()
