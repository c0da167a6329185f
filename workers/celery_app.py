"""The workers' Celery app (``celery -A workers.celery_app``); tasks live in :mod:`workers.tasks`."""

from __future__ import annotations

from celery import Celery

app = Celery("labelfleet")
app.config_from_object("workers.celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
