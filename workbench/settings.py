"""Operator settings, read from the environment or a TOML file — never from the UI.

Every setting has an environment variable ``WORKBENCH_<NAME>`` and a key in the
optional TOML file named by ``WORKBENCH_CONFIG`` (default ``./workbench.toml``)::

    trusted_formats = false      # allow pickled nn.Module, TorchScript, SavedModel
    max_images_per_run = 16
    ...

The environment wins over the file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

from .errors import UnsafeEnvironment


@dataclasses.dataclass(frozen=True)
class Settings:
    trusted_formats: bool = False
    # image intake
    max_image_pixels: int = 40_000_000
    min_image_side: int = 16
    # model intake
    max_model_bytes: int = 1024 * 1024 * 1024
    max_zip_entries: int = 10_000
    max_zip_uncompressed: int = 4 * 1024 * 1024 * 1024
    # static size checks before a model's first forward pass, for one image: the longest input
    # side in pixels, and the largest tensor (input, weight or intermediate) in MiB
    max_input_side: int = 2048
    max_tensor_mb: int = 128
    # explainer caps
    max_images_per_run: int = 16
    max_ig_steps: int = 512
    max_shap_evals: int = 5000
    max_smoothgrad_samples: int = 200
    max_expected_gradients_samples: int = 2000
    # memory budget for one chunk of model calls, in MiB of input tensors
    chunk_budget_mb: int = 256
    # storage and sharing
    data_dir: str = "./data"
    database_url: str = ""
    public_base_url: str = ""  # blank: share links use the address the browser used (the CLI: localhost:8501)
    retention_days: int = 30
    # several replicas on one data directory: blobs younger than this are never swept (a save on another
    # host may be about to reference them; flock does not reach across hosts), and only one replica
    # runs the daily cleanup (WORKBENCH_CLEANUP_IN_APP=0 on the others)
    blob_grace_seconds: int = 0
    cleanup_in_app: bool = True
    operators: str = ""  # comma-separated e-mails who, with sign-in on, see every user's runs

    @property
    def operator_emails(self) -> frozenset[str]:
        return frozenset(e.strip().lower() for e in self.operators.split(",") if e.strip())
    # model workers: every loaded model lives in its own process, with these limits
    model_workers: bool = True  # false: models load in the server process (debugging only; no limits)
    worker_memory_mb: int = 0  # resident memory per model worker; 0: automatic (see workbench.workers.limits)
    load_timeout_s: int = 60  # loading + the test forward pass + layer tracing
    explain_timeout_s: int = 600  # one explain request (one method on a run's images)
    max_model_workers: int = 4  # loaded models kept in workers at once; the least recently used one unloads

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_path / 'workbench.sqlite3').resolve()}"


def _coerce(field: dataclasses.Field, raw):
    kind = type(field.default)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        return str(raw).strip().lower() in {"1", "true", "yes", "on"}
    if kind is int:
        return int(raw)
    return str(raw)


def load_settings(environ: dict | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict = {}
    config = Path(env.get("WORKBENCH_CONFIG", "workbench.toml"))
    if config.is_file():
        with config.open("rb") as fh:
            values.update(tomllib.load(fh))
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for name, field in fields.items():
        key = f"WORKBENCH_{name.upper()}"
        if key in env:
            values[name] = env[key]
    return Settings(**{k: _coerce(fields[k], v) for k, v in values.items() if k in fields})


_fixed: Settings | None = None  # a model worker runs with the settings its server sent with the request


def use_settings(settings: Settings | None) -> None:
    """In a model worker: answer get_settings() with the server's settings (None: read them again)."""
    global _fixed
    _fixed = settings


def get_settings() -> Settings:
    """Settings as of now (cheap; re-read so tests and operators can change the environment)."""
    return _fixed if _fixed is not None else load_settings()


def check_environment(environ: dict | None = None) -> None:
    """Refuse to start when the environment disables PyTorch's safe loading."""
    env = os.environ if environ is None else environ
    if env.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        raise UnsafeEnvironment(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, which lets any uploaded .pt file run code; "
            "unset it to start the workbench."
        )
