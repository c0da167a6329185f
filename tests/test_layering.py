"""Layering rules, checked in fresh interpreters: pure core, torch-free orchestrator, registered tasks."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CORE = ["labelfleet.types", "labelfleet.errors", "labelfleet.settings", "labelfleet.images", "labelfleet.masks",
        "labelfleet.captions", "labelfleet.stages", "labelfleet.pipeline_config", "labelfleet.tasknames",
        "labelfleet.storage", "labelfleet.storage.s3", "labelfleet.storage.local", "labelfleet.db.models",
        "labelfleet.db.repository", "labelfleet.db.queries", "labelfleet.db.migrate", "labelfleet.models.catalog",
        "labelfleet.models.download", "labelfleet.logs", "labelfleet.cli", "labelfleet.db.labels"]
ORCHESTRATOR = ["orchestrator.jobs", "orchestrator.dispatch", "orchestrator.sweeper", "orchestrator.broker",
                "orchestrator.deadletter",
                "orchestrator.review", "orchestrator.review.convert", "orchestrator.review.sync",
                "orchestrator.review.export", "orchestrator.review.formats"]


def _loaded_after(modules: list[str]) -> set[str]:
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_imports_no_heavy_dependency() -> None:
    loaded = _loaded_after(CORE)
    assert not loaded & {"torch", "celery", "boto3", "fiftyone", "workers", "orchestrator"}, loaded


def test_orchestrator_never_imports_torch_or_workers() -> None:
    loaded = _loaded_after(ORCHESTRATOR)
    assert not loaded & {"torch", "workers", "fiftyone", "torchvision"}, loaded


def test_every_task_name_is_registered() -> None:
    code = ("from workers.celery_app import app\nfrom labelfleet.tasknames import TaskName\n"
            "app.loader.import_default_modules()\n"
            "missing = {str(t) for t in TaskName} - set(app.tasks)\nprint(sorted(missing))\n"
            "assert app.conf.task_serializer == 'json' and app.conf.accept_content == ['json']\n"
            "assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
