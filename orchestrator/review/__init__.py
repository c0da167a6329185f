"""Human review of a job's labels in the FiftyOne App, corrections back into the database, export.

This package is the only place in labelfleet that imports :mod:`fiftyone`, and it
does so lazily (:func:`import_fiftyone`), so importing labelfleet or this package
never starts FiftyOne's database.

Frames: labelfleet stores absolute pixel ``xyxy`` boxes and full-frame masks;
FiftyOne wants relative ``[x, y, w, h]`` boxes and masks cropped to the box.
:mod:`orchestrator.review.convert` is the single place where one becomes the other.
"""

from __future__ import annotations

import os
import re
from types import ModuleType

#: Sample/label tags a reviewer sets in the App.
ACCEPT_TAG = "accept"
REJECT_TAG = "reject"
#: Prefix of the persistent FiftyOne dataset of a job.
DATASET_PREFIX = "labelfleet-"


def import_fiftyone() -> ModuleType:
    """``import fiftyone`` with usage tracking off (first call starts nothing; datasets start mongod)."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # bundled MongoDB 6 warning is harmless
    import fiftyone

    return fiftyone


def dataset_name(job_name: str) -> str:
    """The persistent FiftyOne dataset of a job: ``labelfleet-<job>`` (unsafe characters -> ``_``)."""
    return DATASET_PREFIX + re.sub(r"[^A-Za-z0-9._-]", "_", job_name)
