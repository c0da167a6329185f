"""Review of an edit job in FiftyOne (issue 14): grouped original | mask | variants, keep/discard, export.

Edits come from tiny RANDOM weights (meaningless); the COCO export is read back with pycocotools.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from sqlalchemy import select
from typer.testing import CliRunner

from labelfleet.cli import app
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import EditOutput
from labelfleet.db.repository import get_job
from tests.imagegen import write_scenes
from tests.test_edit_local import _cli, _det, _disk, _source_job
from tests.test_review_support import unique_job

runner = CliRunner()


def _decisions(db: str, job: str) -> dict[str, str | None]:
    engine = make_engine(db)
    with session_factory(engine)() as s:
        rows = s.execute(select(EditOutput.output_key, EditOutput.review_status)
                         .where(EditOutput.job_id == get_job(s, job).id)).tuples().all()
    engine.dispose()
    return dict(rows)


def test_review_shows_originals_masks_variants_and_exports_kept(tmp_path: Path, sqlite_url: str,
                                                                 lf_env: Path) -> None:
    from orchestrator.review.edits import edit_dataset_name

    src = tmp_path / "photos"
    write_scenes(src, 2)
    shape = (240, 320)
    _source_job(sqlite_url, src, {"img_0000.jpg": [_det(_disk(*shape, 80, 80, 30), "dog", "accepted"),
                                                  _det(_disk(*shape, 240, 150, 30), "cat", None)],
                                  "img_0001.jpg": [_det(_disk(*shape, 160, 120, 40), "dog", None)]})
    job = unique_job("edrev")
    _cli("edit", str(src), "--from-job", "src", "--prompt", "a corgi", "--db", sqlite_url, "--out",
         str(tmp_path / "out"), "--job", job, "--models", "tiny-random", "--variants", "3", "--steps", "2",
         "--new-class", "corgi")
    result = runner.invoke(app, ["edit-review", job, "--db", sqlite_url, "--sync"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "RANDOM-WEIGHT" in result.output and "review saved: 0 kept, 0 discarded" in result.output

    import fiftyone as fo

    ds = fo.load_dataset(edit_dataset_name(job))
    assert ds.media_type == "group"
    assert sorted(ds.group_slices) == ["mask", "original", "v0", "v1", "v2"]
    assert "random weights" in ds.description
    originals = ds.select_group_slices("original")
    assert sorted(Path(p).name for p in originals.values("filepath")) == ["img_0000.jpg", "img_0001.jpg"]
    variants = ds.select_group_slices(["v0", "v1", "v2"])
    assert len(variants) == 6 and all(Path(p).is_file() for p in variants.values("filepath"))
    masks = ds.select_group_slices("mask")
    assert all(set(np.unique(np.asarray(Image.open(p)))) <= {0, 255} for p in masks.values("filepath"))
    keys = sorted(_decisions(sqlite_url, job))
    by_path = {Path(s.filepath).name: s for s in variants}
    by_path[Path(keys[0]).name].tags = ["accept"]
    by_path[Path(keys[0]).name].save()
    by_path[Path(keys[1]).name].tags = ["reject"]
    by_path[Path(keys[1]).name].save()
    by_path[Path(keys[4]).name].tags = ["accept"]
    by_path[Path(keys[4]).name].save()
    # re-running the review stores the tags first, and the rebuilt dataset shows them again
    result = runner.invoke(app, ["edit-review", job, "--db", sqlite_url, "--sync"], catch_exceptions=False)
    assert "review saved: 2 kept, 1 discarded" in result.output
    decisions = _decisions(sqlite_url, job)
    assert [decisions[k] for k in keys] == ["kept", "discarded", None, None, "kept", None]
    rebuilt = fo.load_dataset(edit_dataset_name(job)).select_group_slices(["v0", "v1", "v2"])
    assert sorted(t for tags in rebuilt.values("tags") for t in tags) == ["accept", "accept", "reject"]

    out = tmp_path / "coco"
    result = runner.invoke(app, ["edit-export", job, "--db", sqlite_url, "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    coco = COCO(str(out / "labels.json"))
    names = sorted(img["file_name"] for img in coco.dataset["images"])
    assert names == sorted(Path(keys[i]).name for i in (0, 4))
    cats = {cid: c["name"] for cid, c in coco.cats.items()}
    per_image = {img["file_name"]: sorted(cats[a["category_id"]] for a in coco.imgToAnns[img["id"]])
                 for img in coco.dataset["images"]}
    # img_0000: the accepted dog was edited -> corgi (the unreviewed cat is not usable: reviewed labels win)
    # img_0001: its one unreviewed dog was edited -> corgi
    assert sorted(per_image.values()) == [["corgi"], ["corgi"]]
    assert json.loads((out / "labels.json").read_text())["annotations"][0]["segmentation"]
