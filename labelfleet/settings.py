"""Settings: every option the CLI takes is also an env var ``LABELFLEET_<NAME>``.

CLI flags override env vars, env vars override defaults. Secrets (URLs that
may carry passwords) are :class:`pydantic.SecretStr` so they never show up in
logs or ``repr``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DB_URL = "sqlite:///labelfleet.db"


class Settings(BaseSettings):
    """Process-wide configuration (env prefix ``LABELFLEET_``)."""

    model_config = SettingsConfigDict(env_prefix="LABELFLEET_", extra="ignore")

    db_url: SecretStr = Field(SecretStr(DEFAULT_DB_URL), description="SQLAlchemy URL of the label database")
    broker_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"), description="Celery broker URL")
    model_dir: Path = Field(Path("~/.cache/labelfleet"), description="Cache of model weights and tokenizers")
    models: str = Field("default", description="Model preset: default, fast, tiny-random")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO); None = AWS")

    box_threshold: float = Field(0.25, ge=0, le=1)
    text_threshold: float = Field(0.2, ge=0, le=1)
    nms_iou: float = Field(0.5, ge=0, le=1)
    tag_threshold: float | None = Field(None, ge=0, le=1, description="Override RAM's per-class thresholds")
    max_tags: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1, description="Images per model batch")
    decode_workers: int = Field(4, ge=1, description="Threads that read and decode images ahead of the models")
    max_image_pixels: int = Field(100_000_000, ge=1, description="Larger images fail as decompression bombs")
    read_timeout_s: float = Field(120.0, gt=0, description="A local file read taking longer fails (retried)")
    # issue 13 (throughput)
    precision: str = Field("fp32", description="fp32, bf16 or fp16: autocast for Swin, BERT and SAM's image "
                           "encoder (deformable attention, heads and mask decoding stay fp32)")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads per worker process; unset = usable "
                                      "CPUs (cgroup-aware) / worker_processes")
    compile: str = Field("off", description="torch.compile GroundingDINO's Swin backbone and SAM's image encoder "
                         "with this backend (inductor on a GPU); off = eager")
    overlap_stages: bool = Field(True, description="Segment one batch (SAM, mask records) in a second thread "
                                 "while the next batch is tagged and detected")
    worker_processes: int = Field(1, ge=1, description="Worker processes sharing this machine's CPUs "
                                  "(`worker --concurrency` sets it)")

    overwrite_reviewed: bool = Field(False, description="Re-labelling replaces labels a person reviewed too")
    lease_seconds: int = Field(60, ge=10, description="Lease TTL of a claimed item; the worker renews it every "
                               "TTL/4 while it works, so a dead worker's items are free again within one TTL")
    max_attempts: int = Field(3, ge=1, description="Retryable failures before an item is poison")
    task_soft_time_limit: int = Field(1500, ge=1)
    task_hard_time_limit: int = Field(1800, ge=1)
    chunk_size: int = Field(32, ge=1, le=1000, description="Items per Celery task (at most 1000)")
    log_level: str | None = Field(None, description="Log level; unset = WARNING for CLI commands, INFO for workers")
    log_json: bool = False
    health_dir: Path = Field(Path("/tmp/labelfleet-health"), description="Where a worker writes `ready` (models "
                             "loaded) and touches `alive` (at least every 30 s while healthy)")

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        v = v.strip().lower()
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")

    @field_validator("precision")
    @classmethod
    def _check_precision(cls, v: str) -> str:
        v = v.strip().lower()
        if v in ("fp32", "bf16", "fp16"):
            return v
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {v!r}")

    @model_validator(mode="after")
    def _check_time_limits(self) -> Settings:
        if self.task_soft_time_limit >= self.task_hard_time_limit:
            raise ValueError("task_soft_time_limit must be below task_hard_time_limit")
        return self

    @property
    def model_path(self) -> Path:
        """``model_dir`` with ``~`` expanded."""
        return self.model_dir.expanduser()


def resolve_device(device: str) -> str:
    """Turn ``auto`` into ``cuda`` when a GPU is visible, else ``cpu`` (imports torch lazily)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """:func:`resolve_device`, then make sure the device exists (before any model is loaded).

    Raises :class:`~labelfleet.errors.ConfigError` for ``cuda``/``cuda:N`` without such a GPU
    and ``mps`` without Apple's backend. Imports torch lazily.
    """
    import os

    from labelfleet.errors import ConfigError

    if device == "cpu":
        return device
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # fork-safe check (Celery forks after it)
    resolved = resolve_device(device)
    if resolved.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(resolved[5:]) if resolved.startswith("cuda:") else 0
        if count == 0:
            raise ConfigError(f"--device {device}: no CUDA GPU is visible to torch (CUDA_VISIBLE_DEVICES="
                              f"{_env('CUDA_VISIBLE_DEVICES')}); use --device cpu or auto")
        if index >= count:
            raise ConfigError(f"--device {device}: only {count} CUDA GPU(s) visible (cuda:0..cuda:{count - 1})")
    if resolved == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError("--device mps: Apple's MPS backend is not available here; use --device cpu or auto")
    return resolved


def _env(name: str) -> str:
    import os

    value = os.environ.get(name)
    return "unset" if value is None else repr(value)
