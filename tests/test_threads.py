"""Torch CPU threads sized to the worker's share of the machine (cgroup v1/v2, affinity, settings)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labelfleet.settings import Settings
from workers.threads import configure_torch_threads, torch_threads, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(("files", "expected"), [
    ({}, AFFINITY),
    ({"cpu.max": "max 100000\n"}, AFFINITY),
    ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU rounds up to one
    ({"cpu.max": "100000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1),
    ({"cpu.max": "garbage\n"}, AFFINITY),
])
def test_usable_cpus_honours_the_cgroup_quota(tmp_path: Path, files: dict[str, str], expected: int) -> None:
    assert usable_cpus(_cgroup(tmp_path, files)) == expected


@pytest.mark.parametrize(("env", "expected"), [
    ({}, AFFINITY),
    ({"worker_processes": AFFINITY}, 1),
    ({"worker_processes": AFFINITY * 4}, 1),  # never 0
    ({"torch_threads": 3, "worker_processes": 8}, 3),  # an explicit setting wins
])
def test_threads_per_worker(tmp_path: Path, env: dict, expected: int) -> None:
    assert torch_threads(Settings(**env), cgroup_root=tmp_path) == expected


def test_configure_sets_torch_and_env_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("LABELFLEET_TORCH_THREADS", "1")
    try:
        assert configure_torch_threads(Settings()) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        Settings(precision="int8")
