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
    # issue 13 (throughput)
    precision: str = Field("fp32", description="fp32, bf16 or fp16: autocast for Swin, BERT and SAM's image "
                           "encoder (deformable attention, heads and mask decoding stay fp32)")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads per worker process; unset = usable "
                                      "CPUs (cgroup-aware) / worker_processes")
    worker_processes: int = Field(1, ge=1, description="Worker processes sharing this machine's CPUs "
                                  "(`worker --concurrency` sets it)")

    overwrite_reviewed: bool = Field(False, description="Re-labelling replaces labels a person reviewed too")
    lease_seconds: int = Field(2400, ge=10, description="How long a claimed item stays leased")
    max_attempts: int = Field(3, ge=1, description="Retryable failures before an item is poison")
    task_soft_time_limit: int = Field(1500, ge=1)
    task_hard_time_limit: int = Field(1800, ge=1)
    chunk_size: int = Field(32, ge=1, description="Items per Celery task")
    log_level: str | None = Field(None, description="Log level; unset = WARNING for CLI commands, INFO for workers")
    log_json: bool = False

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
    def _lease_outlives_tasks(self) -> Settings:
        if self.lease_seconds <= self.task_hard_time_limit:
            raise ValueError(f"lease_seconds ({self.lease_seconds}) must be above task_hard_time_limit "
                             f"({self.task_hard_time_limit}), or leases expire while tasks still run")
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
