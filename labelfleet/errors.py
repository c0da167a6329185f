"""Error hierarchy of labelfleet.

Every error raised on purpose descends from :class:`LabelfleetError`. The two
branches that matter for control flow are:

* :class:`RetryableError` -- the same call may succeed later (network blip,
  throttled storage, database restart). Workers retry these with backoff.
* :class:`PermanentError` -- retrying cannot help (undecodable image, unknown
  model key, bad configuration). The item is recorded as failed at once.
"""

from __future__ import annotations


class LabelfleetError(Exception):
    """Base class of all labelfleet errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RetryableError(LabelfleetError):
    """Raised when an operation failed for a reason that may go away by itself.

    ``delay_s`` is a hint for how long to wait before the next try.
    """

    def __init__(self, message: str, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


#: Alias used by the Celery layer (dramatiq/onyx naming).
TransientError = RetryableError


class PermanentError(LabelfleetError):
    """Raised when an operation can never succeed for this input."""


class BadImageError(PermanentError):
    """Raised when image bytes cannot be turned into an RGB array."""


class ItemSkipped(PermanentError):
    """Raised when a listed object is gone (deleted between listing and fetch)."""


class StorageError(RetryableError):
    """Raised when a storage backend fails transiently."""


class ConfigError(PermanentError):
    """Raised when settings, presets or model keys are wrong."""


class ModelUnavailableError(ConfigError):
    """Raised when a model file is missing and cannot be downloaded."""


class ChecksumError(PermanentError):
    """Raised when a downloaded file does not match its pinned sha256."""


class InfrastructureError(LabelfleetError):
    """Raised when the worker's environment failed, not the item (database, broker, device, model files).

    Items affected by an infrastructure error are given back without counting
    the attempt: retrying them elsewhere (or later) is expected to succeed.
    """


class DatabaseUnavailable(InfrastructureError):
    """Raised when the label database cannot be reached; the task is retried, no item is charged."""


class WorkerUnhealthy(InfrastructureError):
    """Raised when this worker can no longer label anything (models do not load, the device faulted).

    The worker gives its items back uncharged, reports unhealthy, stops
    consuming and exits non-zero so its supervisor restarts or replaces it.
    """
