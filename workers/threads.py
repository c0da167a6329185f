"""CPU threads per worker process, sized to its share of the machine (``LABELFLEET_TORCH_THREADS``).

Torch's default uses every core in every process, so N CPU workers on N cores
oversubscribe the CPU and spend their time in libgomp waits. Each process
takes ``usable_cpus() // worker_processes`` threads instead, where usable CPUs
honour the CPU affinity mask and the cgroup CPU quota (containers).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from labelfleet.settings import Settings

logger = logging.getLogger(__name__)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota under ``root`` (v2 ``cpu.max`` or v1 ``cfs_quota_us``), None = no limit."""
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        for d in (root / "cpu", root / "cpu,cpuacct"):
            q, p = d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us"
            if q.is_file() and p.is_file():
                quota_us = int(q.read_text().strip())
                return None if quota_us <= 0 else quota_us / int(p.read_text().strip())
    except (OSError, ValueError) as exc:
        logger.debug("cannot read the cgroup CPU quota under %s: %s", root, exc)
    return None


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: min(affinity mask, ceil(cgroup quota)), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def torch_threads(settings: Settings, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """``settings.torch_threads``, else usable CPUs divided among ``settings.worker_processes`` (>= 1)."""
    if settings.torch_threads is not None:
        return settings.torch_threads
    return max(1, usable_cpus(cgroup_root) // settings.worker_processes)


def configure_torch_threads(settings: Settings) -> int:
    """Apply :func:`torch_threads` to torch (intra-op threads) in this process; returns the count."""
    import torch

    n = torch_threads(settings)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    logger.info("torch uses %d CPU threads (%d worker processes)", n, settings.worker_processes)
    return n
