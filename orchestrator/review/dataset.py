"""Build or update the persistent FiftyOne dataset of a job from the database (idempotent).

One sample per done item (``filepath`` = local image, ``lf_item_id`` = ``items.id``,
``lf_key`` = the source key, ``metadata`` width/height from the DB). Label fields:

* ``detections``: ``fo.Detections`` from :func:`orchestrator.review.convert.to_fo_detection`
  (relative xywh, box-cropped masks, ``lf_id`` = ``detections.id``);
* ``ram_tags``: ``fo.Classifications`` of the image tags with confidence (``tags`` is
  FiftyOne's reserved sample-tag list, which reviewers use for ``accept``/``reject``).

Re-running adds no duplicate samples (keyed by ``lf_item_id``) and replaces the label
fields with the database's current rows in one batched ``set_values`` per field;
sample tags set by reviewers are kept. Job provenance goes into ``dataset.info``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelfleet.db.models import Detection, Item, ItemStatus, ItemTag, Job
from labelfleet.errors import ConfigError
from labelfleet.storage import open_source
from orchestrator.review import dataset_name, import_fiftyone
from orchestrator.review.convert import to_fo_classifications, to_fo_detection
from orchestrator.review.media import MediaCache

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTE = "random weights - labels meaningless"
_DET_COLUMNS = ("id", "x0", "y0", "x1", "y1", "score", "class_name", "phrase", "tag", "mask", "review_status")


def done_items(session: Session, job: Job) -> list[Item]:
    """The job's done items in id order (only those have labels)."""
    return list(session.scalars(select(Item).where(Item.job_id == job.id, Item.status == ItemStatus.DONE)
                                .order_by(Item.id)))


def detection_rows(session: Session, item_ids: list[int], *, include_rejected: bool = True,
                   min_score: float | None = None) -> dict[int, list[dict[str, Any]]]:
    """Detection columns per item id (ordered by ``idx``), optionally without rejected / low-score ones."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    cols = [getattr(Detection, c) for c in _DET_COLUMNS]
    for start in range(0, len(item_ids), 500):
        stmt = select(Detection.item_id, *cols).where(Detection.item_id.in_(item_ids[start:start + 500]))
        if not include_rejected:
            stmt = stmt.where((Detection.review_status.is_(None)) | (Detection.review_status != "rejected"))
        if min_score is not None:
            stmt = stmt.where(Detection.score >= min_score)
        for r in session.execute(stmt.order_by(Detection.item_id, Detection.idx)):
            out[r[0]].append(dict(zip(_DET_COLUMNS, r[1:], strict=True)))
    return out


def tag_rows(session: Session, item_ids: list[int]) -> dict[int, list[tuple[str, float]]]:
    """Image tags ``(name, score)`` per item id, best first."""
    out: dict[int, list[tuple[str, float]]] = defaultdict(list)
    for start in range(0, len(item_ids), 500):
        stmt = (select(ItemTag.item_id, ItemTag.name, ItemTag.score)
                .where(ItemTag.item_id.in_(item_ids[start:start + 500])).order_by(ItemTag.score.desc()))
        for item_id, name, score in session.execute(stmt):
            out[item_id].append((name, float(score)))
    return out


def frame_size(item: Item) -> tuple[int, int]:
    """``(width, height)`` of a done item's upright image; ValueError if the DB lacks it."""
    if not item.width or not item.height:
        raise ValueError(f"item {item.key!r} has no width/height in the database; re-label it")
    return int(item.width), int(item.height)


def job_info(job: Job) -> dict[str, Any]:
    """Provenance stored in ``dataset.info``: job name, source, models and config."""
    return {"labelfleet_job": job.name, "source": job.source, "models": job.models, "config": job.config,
            "random_weights": bool(job.models.get("random_weights", False))}


def new_samples(fo: Any, items: list[Item], cache: MediaCache, have: set[int]) -> list[Any]:
    """``fo.Sample`` objects for the items not yet in the dataset (ids in ``have``)."""
    return [fo.Sample(filepath=str(cache.path(it.key)), lf_item_id=it.id, lf_key=it.key,
                      metadata=fo.ImageMetadata(width=it.width, height=it.height))
            for it in items if it.id not in have]


def open_dataset(name: str, *, create: bool = True) -> Any:
    """Load the persistent dataset ``name``; create it when missing (``create``) or raise ConfigError."""
    fo = import_fiftyone()
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    if not create:
        raise ConfigError(f"no FiftyOne dataset {name!r}; run `labelfleet review JOB` once to build it")
    ds = fo.Dataset(name, persistent=True)
    ds.add_sample_field("lf_item_id", fo.IntField)
    ds.create_index("lf_item_id", unique=True)
    return ds


def sync_to_fiftyone(session: Session, job: Job, *, media_root: Path, name: str | None = None) -> Any:
    """Create or update the job's persistent dataset from the database; returns the ``fo.Dataset``."""
    fo = import_fiftyone()
    ds = open_dataset(name or dataset_name(job.name))
    items = [it for it in done_items(session, job) if it.width and it.height]
    cache = MediaCache(open_source(job.source), media_root, job.name)
    have = set(ds.values("lf_item_id")) if len(ds) else set()
    added = new_samples(fo, items, cache, have)
    if added:
        ds.add_samples(added, progress=False)
    ids = [it.id for it in items]
    dets, tags = detection_rows(session, ids), tag_rows(session, ids)
    ds.set_values("detections", {it.id: fo.Detections(detections=[to_fo_detection(r, frame_size(it))
                                                                   for r in dets.get(it.id, [])])
                                 for it in items}, key_field="lf_item_id", progress=False)
    ds.set_values("ram_tags", {it.id: to_fo_classifications(tags.get(it.id, [])) for it in items},
                  key_field="lf_item_id", progress=False)
    ds.info = job_info(job)
    if ds.info["random_weights"]:
        ds.description = f"labelfleet job {job.name}: {RANDOM_WEIGHTS_NOTE}"
    ds.save()
    logger.info("dataset %s: %d samples (%d new), %d detections", ds.name, len(ds), len(added),
                sum(len(v) for v in dets.values()))
    return ds
