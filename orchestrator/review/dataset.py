"""Build or update the persistent FiftyOne dataset of a job from the database (idempotent).

One sample per done item (``filepath`` = local image, ``lf_item_id`` = ``items.id``,
``lf_key`` = the source key, ``metadata`` width/height from the DB). Label fields:

* ``detections``: ``fo.Detections`` of the job's **current view** (:mod:`labelfleet.db.labels`:
  human decisions + the newest run's uncovered predictions, rejected ones included with a
  ``reject`` tag) from :func:`orchestrator.review.convert.to_fo_detection` (relative xywh,
  box-cropped masks, ``lf_id`` = prediction id, ``lf_decision`` = decision id, ``lf_run``,
  ``review_status``, ``phrase``, ``tag``);
* ``ram_tags``: ``fo.Classifications`` of the image tags with confidence (``tags`` is
  FiftyOne's reserved sample-tag list, which reviewers use for ``accept``/``reject``).

Sample fields for the sync: ``lf_shown`` (label keys shown, so deletions can be told from
labels that were never there), ``lf_run`` (newest run shown) and ``lf_tag_run`` (the run
the sample's ``accept``/``reject`` tag was given under: it never applies to later runs).

Re-running adds no duplicate samples (keyed by ``lf_item_id``) and replaces the label
fields with the database's current view in one batched ``set_values`` per field;
sample tags set by reviewers are kept. Job provenance goes into ``dataset.info``; the
App gets per-class colours and the saved views ``lowest confidence first`` and ``unreviewed``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelfleet.db.labels import class_table, current_labels
from labelfleet.db.models import Item, ItemStatus, ItemTag, Job
from labelfleet.errors import ConfigError
from labelfleet.storage import Source, open_source
from orchestrator.review import ACCEPT_TAG, REJECT_TAG, dataset_name, import_fiftyone
from orchestrator.review.convert import REVIEW_STATUS, UNREVIEWED, to_fo_classifications, to_fo_detection
from orchestrator.review.media import MediaCache

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTE = "random weights - labels meaningless"
#: Colours given to classes in the App, by class id (cycled).
PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
           "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#800000", "#aaffc3", "#808000")
SAVED_VIEWS = ("lowest confidence first", "unreviewed")


def open_job_source(job: Job, s3_endpoint_url: str | None = None) -> Source:
    """The job's image source, opened with the job's own S3 endpoint (MinIO) when it has one."""
    endpoint = (job.config or {}).get("s3_endpoint_url") or s3_endpoint_url
    return open_source(job.source, s3_endpoint_url=endpoint if job.source.startswith("s3://") else None)


def done_items(session: Session, job: Job) -> list[Item]:
    """The job's done items in id order (only those have labels)."""
    return list(session.scalars(select(Item).where(Item.job_id == job.id, Item.status == ItemStatus.DONE)
                                .order_by(Item.id)))


def detection_rows(session: Session, item_ids: list[int], *, include_rejected: bool = True,
                   min_score: float | None = None, reviewed_only: bool = False) -> dict[int, list[dict[str, Any]]]:
    """The current view's labels per item id (see :func:`labelfleet.db.labels.current_labels`)."""
    return current_labels(session, item_ids, include_rejected=include_rejected, min_score=min_score,
                          reviewed_only=reviewed_only)


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
    random = bool(job.models.get("random_weights", False))
    return {"labelfleet_job": job.name, "source": job.source, "models": job.models, "config": job.config,
            "random_weights": random, **({"warning": RANDOM_WEIGHTS_NOTE} if random else {})}


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


def _sample_runs(ds: Any, items: list[Item], labels: dict[int, list[dict[str, Any]]]) -> dict[str, dict]:
    """New ``lf_run`` / ``lf_tag_run`` / ``lf_shown`` values per item id.

    A sample that carries an ``accept``/``reject`` tag while its labels move to a newer run
    keeps the run it was tagged under in ``lf_tag_run``.
    """
    old = dict(zip(*ds.values(["lf_item_id", "lf_run"]), strict=True)) if ds.has_field("lf_run") else {}
    old_tag = dict(zip(*ds.values(["lf_item_id", "lf_tag_run"]), strict=True)) if ds.has_field("lf_tag_run") else {}
    tags = dict(zip(*ds.values(["lf_item_id", "tags"]), strict=True))
    out: dict[str, dict] = {"lf_run": {}, "lf_tag_run": {}, "lf_shown": {}}
    for it in items:
        rows = labels.get(it.id, [])
        run = max((r["run_id"] or 0 for r in rows if r["prediction_id"] is not None), default=old.get(it.id) or 0)
        tagged = bool({ACCEPT_TAG, REJECT_TAG} & set(tags.get(it.id) or []))
        tag_run = old_tag.get(it.id) or (old.get(it.id) if tagged and old.get(it.id) else None)
        out["lf_run"][it.id] = run
        out["lf_tag_run"][it.id] = tag_run if tagged else None
        out["lf_shown"][it.id] = [r["key"] for r in rows]
    return out


def configure_app(fo: Any, ds: Any, classes: list[str]) -> None:
    """Label schema (review_status, phrase, tag), per-class colours and the reviewer's saved views."""
    from fiftyone import ViewField as F

    for attr in (REVIEW_STATUS, "phrase", "tag"):
        path = f"detections.detections.{attr}"
        if not ds.has_field(path):
            ds.add_sample_field(path, fo.StringField)
    colors = [{"value": c, "color": PALETTE[i % len(PALETTE)]} for i, c in enumerate(classes)]
    ds.app_config.color_scheme = fo.ColorScheme(
        color_by="value", fields=[{"path": "detections", "colorByAttribute": "label", "valueColors": colors}])
    views = {"lowest confidence first": ds.sort_by(F("detections.detections.confidence").min()),
             "unreviewed": ds.filter_labels("detections", F(REVIEW_STATUS) == UNREVIEWED)}
    for name, view in views.items():
        if ds.has_saved_view(name):
            ds.delete_saved_view(name)
        ds.save_view(name, view)


def sync_to_fiftyone(session: Session, job: Job, *, media_root: Path, name: str | None = None,
                     s3_endpoint_url: str | None = None) -> Any:
    """Create or update the job's persistent dataset from the database's current view; returns it."""
    fo = import_fiftyone()
    ds = open_dataset(name or dataset_name(job.name))
    items = [it for it in done_items(session, job) if it.width and it.height]
    cache = MediaCache(open_job_source(job, s3_endpoint_url), media_root, job.name)
    have = set(ds.values("lf_item_id")) if len(ds) else set()
    added = new_samples(fo, items, cache, have)
    if added:
        ds.add_samples(added, progress=False)
    ids = [it.id for it in items]
    dets, tags = detection_rows(session, ids), tag_rows(session, ids)
    classes = class_table(session, job.id, job.config)
    session.commit()
    ds.set_values("detections", {it.id: fo.Detections(detections=[to_fo_detection(r, frame_size(it))
                                                                   for r in dets.get(it.id, [])])
                                 for it in items}, key_field="lf_item_id", progress=False)
    ds.set_values("ram_tags", {it.id: to_fo_classifications(tags.get(it.id, [])) for it in items},
                  key_field="lf_item_id", progress=False)
    for field, kind in (("lf_run", fo.IntField), ("lf_tag_run", fo.IntField)):
        if not ds.has_field(field):
            ds.add_sample_field(field, kind)
    if not ds.has_field("lf_shown"):
        ds.add_sample_field("lf_shown", fo.ListField, subfield=fo.StringField)
    for field, values in _sample_runs(ds, items, dets).items():
        ds.set_values(field, values, key_field="lf_item_id", progress=False)
    ds.info = job_info(job)
    if ds.info["random_weights"]:
        ds.description = f"labelfleet job {job.name}: {RANDOM_WEIGHTS_NOTE}"
    configure_app(fo, ds, classes)
    ds.save()
    logger.info("dataset %s: %d samples (%d new), %d labels", ds.name, len(ds), len(added),
                sum(len(v) for v in dets.values()))
    return ds
