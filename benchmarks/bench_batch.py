"""Batch throughput: Grad-CAM + IG over zoo images, local worker pool vs Ray local, 1 and 2 workers.

    python benchmarks/bench_batch.py [--images 200] [--model shapes-cnn-torch] [--workers 1 2]

Prints images/s for each configuration and Ray's overhead per image against the local pool with the
same number of workers (target: at most 10 % at 200 images). Worker start-up and model loading are
included for both engines, as a user running the command would see them; starting the local Ray
cluster itself is timed once, apart (on an existing cluster it is already running).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="shapes-cnn-torch")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    from PIL import Image

    import model_zoo
    from workbench import batch

    folder = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    pixels, _, _ = model_zoo.shapes.generate(args.images, seed=3, size=args.size)
    (folder / "images").mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / "images" / f"{i:04d}.png")
    images = batch.list_images(str(folder / "images"))
    job = batch.BatchJob(model=batch.ModelSpec(args.model), methods=("gradcam", "integrated_gradients"), chunk_size=16)
    print(f"{len(images)} images, {args.model}, Grad-CAM + IG (50 steps), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    seconds: dict[tuple[str, int], float] = {}
    # Ray's own start (the local cluster's processes) is timed apart: on an existing cluster it is already up.
    # Worker processes / actors and their model loads are inside every timed run, for both engines.
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"ray.init (local cluster start, once): {time.perf_counter() - started:.1f} s")
    for engine in ("local", "ray", "local", "ray"):  # twice, interleaved; the faster of the two counts
        for workers in args.workers:
            out = folder / f"{engine}-{workers}-{time.time_ns()}"
            started = time.perf_counter()
            summary = batch.run_batch(job, images, out, workers=workers, ray="local" if engine == "ray" else None)
            elapsed = time.perf_counter() - started
            seconds[engine, workers] = min(elapsed, seconds.get((engine, workers), elapsed))
            assert summary["images_explained"] == len(images), summary["failures"][:3]
            print(f"{engine:5s} {workers} worker(s): {elapsed:7.1f} s, {len(images) / elapsed:6.2f} images/s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for workers in args.workers:
        overhead = (seconds["ray", workers] - seconds["local", workers]) / len(images)
        ratio = seconds["ray", workers] / seconds["local", workers]
        print(f"Ray overhead, {workers} worker(s): {overhead * 1000:+.1f} ms per image ({ratio - 1:+.1%} vs the local pool)")


if __name__ == "__main__":
    main()
