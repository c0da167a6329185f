"""Layering rules, checked in fresh interpreters: pure core, torch-free orchestrator, registered tasks."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CORE = ["labelfleet.types", "labelfleet.errors", "labelfleet.settings", "labelfleet.images", "labelfleet.masks",
        "labelfleet.captions", "labelfleet.stages", "labelfleet.pipeline_config", "labelfleet.tasknames",
        "labelfleet.storage", "labelfleet.storage.s3", "labelfleet.storage.local", "labelfleet.db.models",
        "labelfleet.db.repository", "labelfleet.db.queries", "labelfleet.db.migrate", "labelfleet.models.catalog",
        "labelfleet.models.download", "labelfleet.logs", "labelfleet.cli", "labelfleet.db.labels",
        "labelfleet.db.bulk", "labelfleet.storage.s3_listing"]
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


def _loaded_by_cli(args: list[str]) -> set[str]:
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom labelfleet.cli import app\n"
            f"r = CliRunner().invoke(app, {args!r})\nassert r.exit_code == 0, r.output\n"
            "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


HEAVY = {"torch", "torchvision", "numpy", "celery", "kombu", "boto3", "botocore", "sqlalchemy", "alembic",
         "workers", "orchestrator", "transformers", "groundingdino", "PIL"}


def test_help_imports_no_torch_database_or_broker() -> None:
    """``labelfleet --help`` stays fast: typer and rich only, not even pydantic (issue 13). A command's
    --help also reads the settings (the global options run first), still without torch, DB or broker."""
    loaded = _loaded_by_cli(["--help"])
    assert not loaded & (HEAVY | {"pydantic"}), loaded & (HEAVY | {"pydantic"})
    for command in ("submit", "worker", "status", "label"):
        loaded = _loaded_by_cli([command, "--help"])
        assert not loaded & HEAVY, (command, loaded & HEAVY)


def test_groundingdino_models_import_without_matplotlib() -> None:
    """The worker imports GroundingDINO's model code without its unused visualizer (matplotlib, cv2)."""
    code = ("import sys, warnings\nwarnings.simplefilter('ignore')\n"
            "from workers.stages.gdino_import import import_gdino_models\n"
            "m = import_gdino_models()\nassert callable(m.build_model)\n"
            "gd = sys.modules['groundingdino.models.GroundingDINO.groundingdino']\n"
            "print('matplotlib' in sys.modules, 'cv2' in sys.modules, 'groundingdino.util.visualizer' in sys.modules)\n"
            "import groundingdino.util.visualizer as v\n"  # a later explicit import gets the real module
            "print(hasattr(v, 'renorm'), gd.COCOVisualizer.__name__ if hasattr(gd.COCOVisualizer, '__name__') "
            "else type(gd.COCOVisualizer).__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split("\n")[:2]
    assert first == "False False False" and second.startswith("True"), out.stdout
