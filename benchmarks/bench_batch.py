"""Batch throughput: Grad-CAM + IG over zoo images, local worker pool vs Ray local, 1 and 2 workers.

    python benchmarks/bench_batch.py [--images 200] [--model shapes-cnn-torch] [--workers 1 2] [--rounds 2] [--trace]

For each number of workers, each round runs, in this order: the local pool; a fresh local Ray
started (``start_ray``: import Ray Data, ``ray.init``) and at once its first job, as
``batch --ray local`` runs; the local pool again; a second Ray job on the Ray already running, as on
an existing cluster; then Ray is shut down. The fastest of the rounds counts for each figure.

Printed: images/s of each, and Ray's overhead per image against the local pool with the same
workers (target: at most 10 % at 200 images), two ways:

- *running cluster* -- the job alone, on a Ray that is already up (an existing cluster, ``--ray
  ADDRESS``): Ray's actors, their model loads and Ray Data's executor are in it, the cluster is not;
- *with start-up* -- ``start_ray`` plus the first job of a fresh local Ray, what ``--ray local``
  costs from the command line (the cluster's processes, Ray Data's helper actors).

Worker processes / actors and their model loads are in every timed run, for both engines.
``--trace`` also prints where each run's time went (from ``WORKBENCH_BATCH_TRACE`` events).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def phases(events: list[dict], job_start: float) -> str:
    """Where a run's time went: seconds after the job's start."""
    workers = [e for e in events if e["event"] == "worker.init"]
    ready = [e["t"] for e in events if e["event"] == "worker.ready"]
    chunks = [e for e in events if e["event"] == "chunk"]
    rows = [e["t"] for e in events if e["event"] == "rows"]
    end = [e["t"] for e in events if e["event"] == "job.end"]
    started = [e["process_started"] for e in workers if e.get("process_started")]
    per_chunk = sorted(e["t"] - e["started"] for e in chunks)

    def at(values, pick=min):
        return f"{pick(values) - job_start:5.2f}" if values else "  -  "

    return (f"process up {at(started, max)} (its start {at(started)}), model loading {at([e['t'] for e in workers], max)}"
            f"-{at(ready, max)}, first chunk done {at([e['t'] for e in chunks])}, last rows {at(rows, max)}, end {at(end)}; "
            f"{len(chunks)} chunks, median {per_chunk[len(per_chunk) // 2]:.3f} s" if per_chunk else "no chunks")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="shapes-cnn-torch")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trace", action="store_true", help="print where each run's time went")
    args = parser.parse_args()

    from PIL import Image

    import model_zoo
    from workbench import batch

    folder = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    trace_file = folder / "trace.jsonl"
    if args.trace:
        os.environ[batch.TRACE_VARIABLE] = str(trace_file)  # inherited by pool workers and by Ray's processes
    pixels, _, _ = model_zoo.shapes.generate(args.images, seed=3, size=args.size)
    (folder / "images").mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / "images" / f"{i:04d}.png")
    images = batch.list_images(str(folder / "images"))
    job = batch.BatchJob(model=batch.ModelSpec(args.model), methods=("gradcam", "integrated_gradients"), chunk_size=args.chunk_size)
    print(f"{len(images)} images, {args.model}, Grad-CAM + IG (50 steps), chunks of {args.chunk_size}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")

    started = time.time()
    import ray
    import ray.data  # noqa: F401 - once per process: added to every start-up below

    imports = time.time() - started
    print(f"import ray, ray.data: {imports:.2f} s (added to each start-up)")
    best: dict[tuple[str, int], float] = {}

    def run(name: str, workers: int, engine: str | None) -> float:
        trace_file.write_text("")
        out = folder / f"{name}-{workers}-{time.time_ns()}"
        started = time.time()
        summary = batch.run_batch(job, images, out, workers=workers, ray=engine)
        elapsed = time.time() - started
        assert summary["images_explained"] == len(images), summary["failures"][:3]
        best[name, workers] = min(elapsed, best.get((name, workers), elapsed))
        print(f"  {name:13s} {workers} worker(s): {elapsed:6.2f} s, {len(images) / elapsed:6.2f} images/s")
        if args.trace:
            events = [json.loads(line) for line in trace_file.read_text().splitlines()]
            print(f"    {phases(events, started)}")
        return elapsed

    for round_ in range(args.rounds):
        for workers in args.workers:
            print(f"round {round_ + 1}, {workers} worker(s), load {os.getloadavg()[0]:.2f}")
            run("local", workers, None)
            started = time.time()
            batch.start_ray("local")
            start = imports + time.time() - started
            print(f"  start_ray     (imports, ray.init): {start:6.2f} s")
            first = run("ray-first", workers, "local")
            best["ray-started", workers] = min(start + first, best.get(("ray-started", workers), start + first))
            run("local", workers, None)
            run("ray-running", workers, "local")
            ray.shutdown()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    n = len(images)
    for workers in args.workers:
        local = best["local", workers]
        for name, what in (("ray-running", "on a running cluster"), ("ray-started", "with start-up (start_ray + first job)")):
            overhead = best[name, workers] - local
            print(f"Ray overhead, {workers} worker(s), {what:38s}: {overhead / n * 1000:+6.1f} ms per image, "
                  f"{overhead / local:+6.1%} vs the local pool ({n / best[name, workers]:.2f} vs {n / local:.2f} images/s)")


if __name__ == "__main__":
    main()
