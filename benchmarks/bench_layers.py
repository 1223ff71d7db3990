"""The Layers page's statistics pass against one forward + backward pass, on the same images.

    python benchmarks/bench_layers.py [--repeats 11] [--images 8] [--frameworks torch,keras] [--threads N]

Model: the zoo's resnet-mini at 224x224 (75 PyTorch modules / 73 Keras layers), 8 images (the zoo's
samples, resized). Arms, interleaved (alternating which goes first), each warmed up:

* ours       ``inspection.layer_report``: every layer's mean, std, min, max, zeros, dead channels, NaN/Inf
             counts and the gradient norm of the target scores with respect to every layer's output
             (one forward and one backward pass, reductions in the framework);
* reference  one forward + backward pass over the same batch, written here in the framework: PyTorch
             ``module(x)`` then ``autograd.grad`` of the target scores to the input; Keras: the adapter's
             compiled ``input_gradients`` (a tf.function; the statistics pass runs eagerly, as it must
             to see every layer).

Reports median seconds, the ratio of medians (target: <= 2), the ratio of CPU-time medians and of the
fastest runs (steadier on a shared machine), and the load average. JSON in benchmarks/results/.
Thread settings are the frameworks' defaults unless ``--threads`` sets PyTorch's intra-op threads for both
arms: on an oversubscribed machine every parallel region waits for descheduled threads, which costs the
statistics pass (several small reductions per layer) more than the reference.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
TARGET = 2.0


def batch_of(adapter, n: int) -> np.ndarray:
    import model_zoo
    from workbench.analysis import model_inputs
    from workbench.images import load_image

    try:
        paths = [s.image for s in model_zoo.samples()]
    except OSError:
        paths = []
    if not paths:
        return adapter.test_input(n, seed=1)
    images = [load_image(paths[i % len(paths)].read_bytes(), paths[i % len(paths)].name) for i in range(n)]
    return model_inputs(adapter, images)[1]


def reference_torch(adapter, batch, targets):
    import torch

    module = adapter.module
    index = torch.as_tensor(targets)[:, None]

    def run():
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        out = module(x)
        (grad,) = torch.autograd.grad(out.gather(1, index).sum(), x)
        return grad.permute(0, 2, 3, 1).numpy()

    return run


def reference_keras(adapter, batch, targets):
    return lambda: adapter.input_gradients(batch, targets)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(framework: str, repeats: int, n: int) -> dict:
    from workbench import inspection
    from workbench.intake import load_zoo_model

    adapter = load_zoo_model(f"resnet-mini-{framework}")
    batch = batch_of(adapter, n)
    targets = adapter.predict(batch).argmax(axis=1)
    ours = lambda: inspection.layer_report(adapter, batch, targets)  # noqa: E731
    reference = (reference_torch if framework == "torch" else reference_keras)(adapter, batch, targets)
    for _ in range(2):
        ours(), reference()
    times = {"ours": [], "reference": []}
    for r in range(repeats):
        order = ("ours", "reference") if r % 2 == 0 else ("reference", "ours")
        for arm in order:
            times[arm].append(timed(ours if arm == "ours" else reference))
    wall = {arm: statistics.median(t[0] for t in ts) for arm, ts in times.items()}
    cpu = {arm: statistics.median(t[1] for t in ts) for arm, ts in times.items()}
    best = {arm: min(t[0] for t in ts) for arm, ts in times.items()}
    return {
        "framework": framework,
        "layers": len(adapter.layers()),
        "images": n,
        "ours_s": wall["ours"],
        "reference_s": wall["reference"],
        "ratio": wall["ours"] / wall["reference"],
        "cpu_ratio": cpu["ours"] / cpu["reference"],
        "best_ratio": best["ours"] / best["reference"],
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--frameworks", default="torch,keras")
    parser.add_argument("--threads", type=int, default=0, help="PyTorch intra-op threads for both arms (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = [bench(f.strip(), args.repeats, args.images) for f in args.frameworks.split(",") if f.strip()]
    load = os.getloadavg()
    threads = f"{args.threads} PyTorch thread(s)" if args.threads else "default threads"
    print(
        f"resnet-mini, {args.images} images at 224x224, median of {args.repeats} interleaved runs, {threads}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'framework':<10} {'layers':>6} {'stats pass s':>13} {'fwd+bwd s':>10} {'ratio':>6} {'cpu ratio':>9} {'best ratio':>10}  target <= {TARGET:g}")
    for row in rows:
        print(
            f"{row['framework']:<10} {row['layers']:>6} {row['ours_s']:>13.4f} {row['reference_s']:>10.4f} {row['ratio']:>6.2f} "
            f"{row['cpu_ratio']:>9.2f} {row['best_ratio']:>10.2f}"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS_DIR / f"layers-{stamp}.json").write_text(json.dumps({"load_average": load, "threads": args.threads, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
