"""The workers' Celery app (``celery -A workers.celery_app``); tasks live in :mod:`workers.tasks`."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from labelfleet.logs import configure_logging
from labelfleet.settings import Settings

app = Celery("labelfleet")


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Our format (JSON with job/item ids when LABELFLEET_LOG_JSON=true) instead of Celery's."""
    settings = Settings()
    configure_logging(settings.log_level or "INFO", as_json=settings.log_json)


app.config_from_object("workers.celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
app.autodiscover_tasks(["workers"], related_name="edit_tasks", force=True)  # issue 14: edit jobs
