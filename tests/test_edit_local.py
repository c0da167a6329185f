"""Edit jobs in local mode with tiny random models (issue 14): outputs, provenance, determinism, --from-job.

Edits from tiny random weights are MEANINGLESS; these tests prove the machinery only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from labelfleet.cli import app
from labelfleet.db import migrate
from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Detection, EditOutput, Item, Job, ReviewAction, ReviewDecision
from labelfleet.masks import encode_mask_record, mask_record_full
from labelfleet.storage import open_source
from tests.imagegen import scene, write_scenes

runner = CliRunner()
FAST = ["--models", "tiny-random", "--variants", "2", "--steps", "2"]


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _outputs(db: str, job: str) -> list[EditOutput]:
    engine = make_engine(db)
    with session_factory(engine)() as s:
        job_id = repo.get_job(s, job).id
        rows = list(s.scalars(select(EditOutput).where(EditOutput.job_id == job_id).order_by(EditOutput.output_key)))
        s.expunge_all()
    engine.dispose()
    return rows


def _status(db: str, job: str) -> dict:
    return json.loads(_cli("status", job, "--db", db, "--json").strip().splitlines()[-1])


def _pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_local_edit_of_a_folder_writes_outputs_with_provenance(tmp_path: Path, db_url: str, lf_env: Path) -> None:
    src = tmp_path / "photos"
    write_scenes(src, 3)
    write_scenes(src / "nested", 1, start=7, fmt="png")
    out = tmp_path / "out"
    args = ["edit", str(src), "--target", "cat,dog", "--prompt", "a corgi, photo", "--negative-prompt", "blurry",
            "--db", db_url, "--out", str(out), "--job", "ed", *FAST]
    text = _cli(*args)
    assert "RANDOM-WEIGHT" in text
    st = _status(db_url, "ed")
    assert st["state"] == "done" and st["done"] + st["skipped"] == 4 and st["done"] >= 1, st
    rows = _outputs(db_url, "ed")
    assert len(rows) == 2 * st["done"]  # union mode: one edit per image, two variants
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(r.output_key for r in rows)
    for r in rows:
        assert r.output_uri == str(out / r.output_key) and r.instance == "all" and r.seed == r.variant
        assert (r.prompt, r.negative_prompt, r.steps, r.guidance, r.strength) == ("a corgi, photo", "blurry", 2,
                                                                                  7.5, 1.0)
        assert r.model == "sd_inpaint_tiny" and len(r.model_sha256 or "") == 64 and r.random_weights
        png = Image.open(r.output_uri)
        assert png.text["Comment"] == "random weights - this edit is meaningless"
        assert json.loads(png.text["labelfleet"])["seed"] == r.seed
        key = r.output_key.split("__")[0]
        original = _pixels(next(src.glob(f"{key}.*")))
        assert png.size == (original.shape[1], original.shape[0])
        assert mask_record_full(r.mask).shape == original.shape[:2]
    # a re-run continues the job: nothing is rewritten, nothing added
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.png")}
    _cli(*args)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.png")} == stamps
    assert [r.id for r in _outputs(db_url, "ed")] == [r.id for r in rows]


def test_same_seed_same_image_other_seed_other_image(tmp_path: Path, sqlite_url: str, lf_env: Path) -> None:
    src = tmp_path / "photos"
    write_scenes(src, 2)
    common = ["edit", str(src), "--target", "cat", "--prompt", "a corgi", "--db", sqlite_url, *FAST]
    _cli(*common, "--out", str(tmp_path / "a"), "--job", "a")
    _cli(*common, "--out", str(tmp_path / "b"), "--job", "b")
    _cli(*common, "--out", str(tmp_path / "c"), "--job", "c", "--seed", "5")
    a, b, c = (_outputs(sqlite_url, j) for j in "abc")
    assert a and [r.output_key for r in a] == [r.output_key for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert np.array_equal(_pixels(ra.output_uri), _pixels(rb.output_uri)), ra.output_key
    for ra, rc in zip(a, c, strict=True):
        assert rc.seed == ra.seed + 5
        assert not np.array_equal(_pixels(ra.output_uri), _pixels(rc.output_uri))


def _disk(h: int, w: int, cx: int, cy: int, r: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (x - cx) ** 2 + (y - cy) ** 2 < r * r


def _det(mask: np.ndarray, cls: str, review: str | None) -> dict:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "score": 0.9, "class_name": cls, "phrase": cls, "tag": None,
            "mask": encode_mask_record(mask[y0:y1, x0:x1], x0, y0, mask.shape), "area": int(mask.sum()),
            "review_status": review, "reviewed_by": "ann" if review else None}


def _source_job(db: str, folder: Path, labels: dict[str, list[dict]]) -> None:
    """A done labelling job over ``folder`` whose detections (and review decisions) are ``labels``."""
    engine = make_engine(db)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    with factory() as s:
        job, _ = repo.get_or_create_job(s, "src", str(folder.resolve()), {"classes": ["dog", "cat"]},
                                        {"preset": "tiny-random", "random_weights": True})
        s.commit()
        repo.add_items(s, job, open_source(str(folder)).list())
        ids = repo.claim_items(s, job.id, "me", limit=10, lease_seconds=60)
        for item_id in ids:
            key = s.get(Item, item_id).key
            assert repo.finish_item(s, item_id, "me", repo.LabelRows(), facts={})
            for i, d in enumerate(labels[key]):
                review = d.get("review_status")
                pred = {k: v for k, v in d.items() if k not in ("review_status", "reviewed_by")}
                det = Detection(**pred, item_id=item_id, idx=i)
                s.add(det)
                s.flush()
                if review:  # a reviewer's decision on that prediction, as review --sync records it
                    action = {"accepted": ReviewAction.ACCEPT, "rejected": ReviewAction.REJECT}[review]
                    s.add(ReviewDecision(item_id=item_id, prediction_id=det.id, action=action,
                                         reviewer=d["reviewed_by"], decided_at=repo.utcnow(),
                                         **{k: pred[k] for k in ("x0", "y0", "x1", "y1", "class_name", "score",
                                                                 "phrase", "tag", "mask", "area")}))
            s.commit()
    engine.dispose()


def test_from_job_uses_reviewed_labels_and_never_rejected_ones(tmp_path: Path, sqlite_url: str,
                                                              lf_env: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    big = (600, 800)  # larger than the tiny model's 64 px: crop around the object, paste back
    for name, seed, (h, w) in (("a.png", 1, big), ("b.png", 2, (240, 320)), ("c.png", 3, (240, 320))):
        scene(seed, w, h).save(src / name)
    m = {"a0": _disk(*big, 200, 300, 60), "a1": _disk(*big, 600, 300, 60), "a2": _disk(*big, 400, 100, 40),
         "b0": _disk(240, 320, 100, 100, 30), "c0": _disk(240, 320, 80, 120, 30), "c1": _disk(240, 320, 240, 120, 30)}
    _source_job(sqlite_url, src, {
        "a.png": [_det(m["a0"], "dog", "accepted"), _det(m["a1"], "dog", None), _det(m["a2"], "dog", "rejected")],
        "b.png": [_det(m["b0"], "dog", "rejected")],
        "c.png": [_det(m["c0"], "dog", None), _det(m["c1"], "cat", None)]})
    out = tmp_path / "out"
    _cli("edit", str(src), "--from-job", "src", "--prompt", "a corgi", "--db", sqlite_url, "--out", str(out),
         "--job", "fj", "--per-instance", "--dilate", "0", "--new-class", "corgi", *FAST)
    rows = _outputs(sqlite_url, "fj")
    got = {(r.output_key.split("__")[0], r.instance, r.variant) for r in rows}
    assert got == {("a", "i0", 0), ("a", "i0", 1), ("c", "i0", 0), ("c", "i0", 1), ("c", "i1", 0), ("c", "i1", 1)}
    expected_mask = {("a", "i0"): m["a0"], ("c", "i0"): m["c0"], ("c", "i1"): m["c1"]}
    for r in rows:
        stem = r.output_key.split("__")[0]
        mask = expected_mask[(stem, r.instance)]
        assert np.array_equal(mask_record_full(r.mask), mask)
        before, after = _pixels(src / f"{stem}.png"), _pixels(r.output_uri)
        assert after.shape == before.shape
        assert np.array_equal(after[~mask], before[~mask])  # nothing outside the edited instance changed
        assert not np.array_equal(after[mask], before[mask])
    st = _status(sqlite_url, "fj")
    assert (st["done"], st["skipped"]) == (2, 1)
    assert st["failures"] == [{"status": "skipped", "reason": "nothing to edit: no usable labels with a mask in "
                               "this image", "count": 1}]
    engine = make_engine(sqlite_url)
    with session_factory(engine)() as s:  # the usable labels are carried over to the edit job's items
        fj = s.scalar(select(Job.id).where(Job.name == "fj"))
        carried = s.execute(select(Item.key, Detection.class_name).join(Detection, Detection.item_id == Item.id)
                            .where(Item.job_id == fj).order_by(Item.key, Detection.idx)).all()
    engine.dispose()
    assert [tuple(c) for c in carried] == [("a.png", "dog"), ("c.png", "dog"), ("c.png", "cat")]


def test_from_job_must_have_labelled_the_same_source(tmp_path: Path, sqlite_url: str, lf_env: Path) -> None:
    write_scenes(tmp_path / "labelled", 1)
    write_scenes(tmp_path / "other", 1)
    _source_job(sqlite_url, tmp_path / "labelled", {"img_0000.jpg": []})
    result = runner.invoke(app, ["edit", str(tmp_path / "other"), "--from-job", "src", "--prompt", "x", "--db",
                                 sqlite_url, "--out", str(tmp_path / "o"), "--models", "tiny-random"])
    assert getattr(result.exception, "message", "") == (
        f"--from-job 'src' labelled {(tmp_path / 'labelled').resolve()}, not {(tmp_path / 'other').resolve()}; "
        "edit the same source")


def test_from_job_bad_labels_are_recorded_per_image(tmp_path: Path, sqlite_url: str, lf_env: Path) -> None:
    write_scenes(tmp_path / "p", 2)
    empty = _det(_disk(240, 320, 100, 100, 20), "dog", None)
    empty["mask"] = encode_mask_record(np.zeros((5, 5), bool), 0, 0, (240, 320))
    _source_job(sqlite_url, tmp_path / "p", {"img_0000.jpg": [_det(_disk(100, 100, 50, 50, 20), "dog", None)],
                                             "img_0001.jpg": [empty]})
    _cli("edit", str(tmp_path / "p"), "--from-job", "src", "--prompt", "x", "--db", sqlite_url, "--out",
         str(tmp_path / "o"), "--job", "bad", *FAST)
    st = _status(sqlite_url, "bad")
    assert sorted((f["status"], f["reason"]) for f in st["failures"]) == [
        ("failed", "label 0: its mask is for a 100x100 image, this image is 320x240; re-label the image"),
        ("skipped", "nothing to edit: no usable labels with a mask in this image")]


BAD = [
    (["--target", "dog", "--prompt", "  "], "--prompt is empty; say what to paint inside the mask, e.g. "
     "'a corgi, photo'"),
    (["--prompt", "a corgi"], "--target is empty; name the objects to edit, e.g. --target dog"),
    (["--target", "dog", "--prompt", "x", "--dtype", "fp8"], "--dtype must be auto, fp32, fp16 or bf16, got 'fp8'"),
    (["--target", "dog", "--prompt", "x", "--edit-checkpoint", "/nonexistent"],
     "--edit-checkpoint /nonexistent is not a diffusers folder (no model_index.json)"),
    (["--prompt", "x", "--from-job", "nope"], "--from-job 'nope': no such job in this database"),
    (["--target", "dog", "--prompt", "x", "--out", "ftp://h/x"],
     "unsupported --out 'ftp://h/x': use a local folder or s3://bucket/prefix"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_edit_arguments(tmp_path: Path, sqlite_url: str, lf_env: Path, args: list[str], message: str) -> None:
    write_scenes(tmp_path / "p", 1)
    extra = [] if "--out" in args else ["--out", str(tmp_path / "o")]
    result = runner.invoke(app, ["edit", str(tmp_path / "p"), "--db", sqlite_url, "--models", "tiny-random",
                                 *args, *extra])
    assert result.exit_code != 0
    assert getattr(result.exception, "message", "") == message


def test_console_error_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "labelfleet", "edit", str(tmp_path), "--prompt", "x",
                          "--out", str(tmp_path / "o"), "--db", f"sqlite:///{tmp_path / 'x.db'}"],
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"}, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --target is empty; name the objects to edit, e.g. --target dog"


def _official_layout(tmp_path: Path, model_dir: Path) -> Path:
    """The tiny pipeline saved like the official SD inpainting repo: fp16 variant files only, a
    model_index.json naming a safety checker and feature extractor whose folders are not downloaded."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    from labelfleet.settings import Settings
    from workers.inpaint import resolve_inpainter

    tiny = resolve_inpainter("sd_inpaint_tiny", Settings(model_dir=model_dir)).files["pipeline_dir"]
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(tiny), local_files_only=True).to(torch.float16)
    folder = tmp_path / "official-like"
    pipe.save_pretrained(str(folder), variant="fp16", safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"], requires_safety_checker=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    assert sorted(p.name for p in (folder / "unet").iterdir()) == ["config.json",
                                                                   "diffusion_pytorch_model.fp16.safetensors"]
    return folder


def test_edit_checkpoint_in_the_official_layout(tmp_path: Path, sqlite_url: str, lf_env: Path) -> None:
    folder = _official_layout(tmp_path, lf_env)
    src = tmp_path / "photos"
    write_scenes(src, 2)
    _source_job(sqlite_url, src, {"img_0000.jpg": [_det(_disk(240, 320, 100, 100, 30), "dog", None)],
                                  "img_0001.jpg": [_det(_disk(240, 320, 200, 100, 30), "dog", None)]})
    text = _cli("edit", str(src), "--from-job", "src", "--prompt", "a corgi", "--db", sqlite_url, "--out",
                str(tmp_path / "out"), "--job", "ck", "--edit-checkpoint", str(folder), "--variants", "1",
                "--steps", "2")
    assert "RANDOM-WEIGHT" not in text  # a local checkpoint is not known to be random
    rows = _outputs(sqlite_url, "ck")
    assert len(rows) == 2 and all(r.model == f"local:{folder}" and not r.random_weights for r in rows)
    assert all(r.params["dtype"] == "torch.float32" and r.params["device"] == "cpu" for r in rows)
    from workers.inpaint import folder_sha256

    assert {r.model_sha256 for r in rows} == {folder_sha256(folder)}
