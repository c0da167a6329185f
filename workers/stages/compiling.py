"""``torch.compile`` behind a setting (``LABELFLEET_COMPILE``, default ``off``).

Only the heavy, shape-stable parts are compiled: GroundingDINO's Swin backbone
and SAM's image encoder (inputs are padded to a fixed square, so it compiles
once per batch size). Everything else runs eagerly. The first batch of each
new input shape pays the compilation (tens of seconds with ``inductor``); a
worker then keeps the compiled code for its life. ``inductor`` is the backend
that makes code faster on a GPU; other backends (``aot_eager``) only check that
a model traces, which is what the CPU tests do.
"""

from __future__ import annotations

import logging

import torch

from labelfleet.errors import ConfigError

logger = logging.getLogger(__name__)

OFF = "off"


def check_backend(backend: str) -> str:
    """``backend`` if it is ``off`` or a torch.compile backend known to this torch, else :class:`ConfigError`."""
    if backend == OFF:
        return backend
    if backend not in torch._dynamo.list_backends(exclude_tags=()):  # debugging backends (aot_eager) too
        shown = ", ".join(sorted({"aot_eager", *torch._dynamo.list_backends()}))
        raise ConfigError(f"unknown torch.compile backend {backend!r} in LABELFLEET_COMPILE "
                          f"(use off or one of: {shown})")
    return backend


def compile_module(module: torch.nn.Module, backend: str, what: str) -> torch.nn.Module:
    """``module`` itself for ``off``, else ``torch.compile(module, backend=backend)`` (same parameters)."""
    if check_backend(backend) == OFF:
        return module
    logger.info("torch.compile(%s, backend=%s): the first batch of each input shape compiles", what, backend)
    return torch.compile(module, backend=backend)  # type: ignore[return-value]
