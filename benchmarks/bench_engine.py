"""What the model workers cost and need, measured in one run on this machine.

    python benchmarks/bench_engine.py overhead      # worker vs in-process, Grad-CAM + IG + SHAP comparison
    python benchmarks/bench_engine.py memory        # a worker's peak memory for a ResNet-50-sized explanation
    python benchmarks/bench_engine.py quickstart    # Quick start in Chromium, fresh and running server

overhead: the same ExplainRequest run by the engine on an in-process adapter and on the model's
worker (interleaved, median of ``--repeats``), plus the round trip of an empty call; the ratio is
what isolation costs per comparison. memory: a process set up like a worker (torch, keras and shap
imported) explains one 224 x 224 image with a ResNet-50 (25.6 M parameters, random weights) with
Grad-CAM, IG (50 steps) and SHAP (500 evaluations) at the default chunk size; its peak resident
memory is what the automatic WORKBENCH_WORKER_MEMORY_MB must fit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def noop(adapter) -> None:
    return None


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------------------- overhead
def overhead(model: str, repeats: int) -> None:
    import model_zoo
    from workbench import engine, session, workers
    from workbench.images import load_image

    key = session.ModelKey(sha256=f"zoo:{model}", filename=model)
    local = session.load_base(key, None)
    remote = session.load_in_worker(key, None)
    sample = model_zoo.samples()[0]
    image = load_image(sample.image.read_bytes(), sample.image.name)
    images = {image.sha256: image}

    def request(adapter):
        return engine.ExplainRequest.build(
            engine.ModelRecord.of(adapter, source="zoo", filename=model),
            [engine.ImageRef(image.name, image.sha256)],
            ["gradcam", "integrated_gradients", "shap"],
        )

    def cpu_seconds() -> float:
        """CPU time of this process and of the model's worker (user + system)."""
        fields = Path(f"/proc/{remote.worker_pid}/stat").read_text().rsplit(")", 1)[1].split()
        worker = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return time.process_time() + worker

    def timed(adapter, cpu: list | None = None) -> float:
        started, begun = time.perf_counter(), cpu_seconds()
        engine.Engine(adapter, images, forward_seconds=0.001).run(request(adapter))
        if cpu is not None:
            cpu.append(cpu_seconds() - begun)
        return time.perf_counter() - started

    timed(local), timed(remote)  # warm: shap kernels compiled in both processes, graphs traced
    in_process, in_worker, cpu_process, cpu_worker = [], [], [], []
    for _ in range(repeats):
        in_process.append(timed(local, cpu_process))
        in_worker.append(timed(remote, cpu_worker))
    trips = []
    import bench_engine  # noop by its importable name: the worker imports it from there

    for _ in range(50):
        started = time.perf_counter()
        workers.call(remote, bench_engine.noop)
        trips.append(time.perf_counter() - started)
    a, b, trip = statistics.median(in_process), statistics.median(in_worker), statistics.median(trips)
    print(f"{model}: Grad-CAM + IG + SHAP on one image, median of {repeats} (load average {load_average()})")
    print(f"  in process {a:.3f} s   in the worker {b:.3f} s   ratio {b / a:.3f}   (each: {', '.join(f'{x:.2f}' for x in in_process)} / {', '.join(f'{x:.2f}' for x in in_worker)})")
    print(f"  CPU seconds: in process {statistics.median(cpu_process):.2f}, server + worker {statistics.median(cpu_worker):.2f}")
    print(f"  empty round trip {trip * 1000:.2f} ms; 3 calls per comparison = {3 * trip / a:.2%} of it")


# ---------------------------------------------------------------------------- memory
RESNET50 = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    import numpy as np, torch, keras, shap  # what a worker holds
    from torch import nn
    from workbench import warmup
    warmup.warm_up_shap()

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
            self.relu = nn.ReLU()
        def forward(self, x):
            return self.relu(self.body(x) + self.skip(x))

    def resnet50(classes=1000):
        layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for b in range(blocks):
                layers.append(Bottleneck(cin, width, stride if b == 0 else 1)); cin = width * 4
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    from workbench.adapters.torch_adapter import TorchAdapter
    import explainers
    adapter = TorchAdapter(resnet50().eval(), name="resnet50", source_format="bench", input_size=(224, 224, 3),
                           preset="imagenet", device="cpu")
    adapter.validate(); adapter.layers()
    idle = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    batch = adapter.prepare(np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32))
    for method in ("gradcam", "integrated_gradients", "shap"):
        started = time.perf_counter()
        explainers.get(method).explain(adapter, batch)
        print(f"  {{method}}: {{time.perf_counter() - started:.1f}} s, peak so far {{status('VmHWM')}} MiB")
    print(f"RESULT idle {{idle}} MiB, peak {{status('VmHWM')}} MiB")
    """
)


def memory() -> None:
    from workbench.workers.limits import AUTO_MEMORY_FLOOR_MB, Limits, machine_memory_mb

    print(f"ResNet-50, 224 x 224, Grad-CAM + IG (50 steps) + SHAP (500 evaluations), default chunk (load average {load_average()})")
    result = subprocess.run([sys.executable, "-c", RESNET50.format(root=str(ROOT))], capture_output=True, text=True, timeout=1800)
    print("\n".join(line for line in result.stdout.splitlines()))
    if result.returncode:
        print(result.stderr[-2000:])
    print(f"machine memory {machine_memory_mb()} MiB; automatic limit {Limits.from_settings().memory_mb} MiB (floor {AUTO_MEMORY_FLOOR_MB})")


# ---------------------------------------------------------------------------- Quick start
def quickstart(root: Path) -> None:
    """Quick start in Chromium on a server started a second before (its first ever on a new data directory,
    then again after a restart on the same one: what the data directory keeps, shap's compiled kernels
    included, is what a redeployed or restarted server starts with), and on the running server."""
    import tempfile

    from playwright.sync_api import sync_playwright

    data = tempfile.mkdtemp(prefix="bench-engine-")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )

        def one_click(url: str) -> float:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            begun = time.perf_counter()
            page.goto(url)
            page.get_by_role("button", name="Quick start").click(timeout=120_000)
            page.get_by_text("Agreement", exact=False).first.wait_for(timeout=300_000)
            page.locator("[data-testid='stVegaLiteChart']").first.wait_for(timeout=300_000)
            took = time.perf_counter() - begun
            context.close()
            return took

        loads = [load_average()]
        with _server(root, data) as (url, healthy):
            first = one_click(url)
            running = [one_click(url) for _ in range(3)]
        loads.append(load_average())
        with _server(root, data) as (url, _):
            restarted = one_click(url)
        loads.append(load_average())
        browser.close()
    print(f"{root}: Quick start in Chromium (open the page, one click, Grad-CAM + IG + SHAP, agreement chart drawn); "
          f"load average {' -> '.join(loads)}")
    print(f"  server healthy after {healthy:.1f} s; fresh server, new data directory: {first:.1f} s; "
          f"fresh server, restarted on it: {restarted:.1f} s; running server: median {statistics.median(running):.1f} s "
          f"({', '.join(f'{t:.1f}' for t in running)})")


@contextlib.contextmanager
def _server(root: Path, data: str):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "WORKBENCH_DATA_DIR": data, "WORKBENCH_PUBLIC_BASE_URL": url, "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        yield url, time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["overhead", "memory", "quickstart"])
    parser.add_argument("--model", default="shapes-cnn-torch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", type=Path, nargs="*", default=[ROOT], help="quickstart: the checkouts to serve, one after the other")
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(args.model, args.repeats)
    elif args.what == "memory":
        memory()
    else:
        for root in args.root:
            quickstart(root)


if __name__ == "__main__":
    main()
