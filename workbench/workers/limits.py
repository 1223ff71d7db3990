"""What a model worker may use, as operator settings, and the one-line errors when it goes over.

Memory is enforced by watching the worker's resident set size (``VmRSS`` in
``/proc/<pid>/status``) from a thread in the server and killing the worker when it goes
over. ``RLIMIT_AS`` is not used: an idle worker holding a small Keras model maps about three
times the address space it has resident (3.3 GiB for 1.1 GiB, measured), so an address-space
cap at the memory limit would refuse ordinary models. Time is a deadline on each request.
"""

from __future__ import annotations

import dataclasses
import os

from ..errors import WorkbenchError
from ..settings import Settings, get_settings

# The automatic memory limit: this fraction of the machine's memory, but never under the floor,
# which fits a worker with both frameworks and shap imported (~1.2 GiB) plus a ResNet-50-sized
# explanation at the default chunk size (measured: benchmarks/bench_engine.py --memory).
AUTO_MEMORY_FRACTION = 0.25
AUTO_MEMORY_FLOOR_MB = 4096


class LimitExceeded(WorkbenchError):
    """A model worker went over one of the deployment's limits and was stopped."""

    def __init__(self, message: str, *, limit: str, figure: float, setting: str):
        super().__init__(message)
        self.limit = limit
        self.figure = figure
        self.setting = setting


class WorkerCrashed(WorkbenchError):
    """A model worker stopped (crashed or was killed) while it worked on a request."""


class Cancelled(WorkbenchError):
    """The user cancelled a run."""


def machine_memory_mb() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 8192


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process, from /proc (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


@dataclasses.dataclass(frozen=True)
class Limits:
    memory_mb: int
    load_seconds: float
    explain_seconds: float
    max_input_side: int

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "Limits":
        settings = settings or get_settings()
        memory = settings.worker_memory_mb or max(AUTO_MEMORY_FLOOR_MB, int(machine_memory_mb() * AUTO_MEMORY_FRACTION))
        return cls(
            memory_mb=int(memory),
            load_seconds=float(settings.load_timeout_s),
            explain_seconds=float(settings.explain_timeout_s),
            max_input_side=int(settings.max_input_side),
        )

    @property
    def memory_bytes(self) -> int:
        return self.memory_mb * 1024 * 1024


def memory_exceeded(used_bytes: int, limits: Limits, doing: str) -> LimitExceeded:
    return LimitExceeded(
        f"Stopped while {doing}: the model's worker used {used_bytes / 2**20:,.0f} MiB, over this deployment's "
        f"memory limit of {limits.memory_mb:,} MiB per model (setting WORKBENCH_WORKER_MEMORY_MB raises it).",
        limit="memory",
        figure=used_bytes / 2**20,
        setting="WORKBENCH_WORKER_MEMORY_MB",
    )


def time_exceeded(seconds: float, setting: str, doing: str) -> LimitExceeded:
    return LimitExceeded(
        f"Stopped while {doing}: it took over {seconds:g} s, this deployment's time limit "
        f"(setting {setting} raises it).",
        limit="time",
        figure=seconds,
        setting=setting,
    )


def check_input_side(input_size, limits: Limits, what: str) -> None:
    """Refuse a model input whose height or width is over WORKBENCH_MAX_INPUT_SIDE."""
    if not input_size:
        return
    side = max(int(v) for v in tuple(input_size)[:2])
    if side > limits.max_input_side:
        raise LimitExceeded(
            f"{what} is {side} pixels on a side, over this deployment's limit of {limits.max_input_side} "
            "(setting WORKBENCH_MAX_INPUT_SIDE raises it).",
            limit="input side",
            figure=side,
            setting="WORKBENCH_MAX_INPUT_SIDE",
        )


def signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        import signal

        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


def worker_env() -> dict[str, str]:
    """Environment a spawned worker starts with (quiet TensorFlow; Keras on TensorFlow; numba's cache directory)."""
    env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    env["KERAS_BACKEND"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    # numba compiles only shap's small partition-tree kernels here: at LLVM's -O0 that took 3.5 s instead of
    # 5.3 s on this 2-core machine (a new data directory's first SHAP run waits for it), and three 500-evaluation
    # SHAP runs on a 224 x 224 image took the same time (1.73 vs 1.75 s; the masking dominates)
    env["NUMBA_OPT"] = os.environ.get("NUMBA_OPT", "0")
    if os.environ.get("NUMBA_CACHE_DIR"):
        env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
    else:  # shap's compiled kernels (workbench.warmup) outlive the server: only its first start compiles them
        try:
            env["NUMBA_CACHE_DIR"] = str(get_settings().data_path.resolve() / "numba-cache")
        except Exception:  # noqa: BLE001 - a data directory setting that does not read: workers compile each time
            pass
    return env
