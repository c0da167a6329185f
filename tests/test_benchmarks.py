"""Benchmarks run and say the right things (no timing asserts: speed is printed, never tested).

* ``benchmarks.pipeline`` on 2 tiny images: every field of the JSON record, and the pipeline's
  stored boxes equal the naive demo loop's (boxes_match == 1).
* ``benchmarks.memory``: peak RSS of a 48 MP photo stays below 2x that of a 1 MP photo (masks are
  box-cropped records, never full-frame arrays), and a mask record is bounded by its crop.
* ``benchmarks.submit`` on 1,500 moto keys: every phase reports, and the queue holds each item once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import memory
from benchmarks import pipeline as bench

KEYS = {"naive_img_s", "pipeline_img_s", "model_only_img_s", "peak_rss_mb", "boxes_match", "machine",
        "pipeline_vs_naive", "pipeline_vs_model_only", "stage_ms", "cuda_max_allocated_mb",
        "mask_bytes_per_detection", "random_weights"}


def test_pipeline_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELFLEET_TORCH_THREADS", "1")  # the builder sizes torch's threads from the settings
    out = tmp_path / "bench.json"
    bench.main(["--models", "tiny-random", "--device", "cpu", "--images", "2", "--size", "200x150",
                "--batch-size", "2", "--json", str(out)])
    record = json.loads(out.read_text())
    assert set(record) >= KEYS, KEYS - set(record)
    assert record["boxes_match"] == 1.0 and record["item_status"] == ["done"]
    assert record["detections_per_img"] > 0 and record["random_weights"] is True
    assert all(record[k] > 0 for k in ("naive_img_s", "pipeline_img_s", "model_only_img_s", "peak_rss_mb"))
    assert {"read_decode", "detect", "segment", "write"} <= set(record["stage_ms"])
    assert record["machine"]["usable_cpus"] >= 1 and record["machine"]["torch_threads"] == 1
    assert "labels are meaningless" in capsys.readouterr().out


def test_worker_scaling_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import workers

    monkeypatch.delenv("LABELFLEET_TORCH_THREADS", raising=False)  # the processes size their own threads

    out = tmp_path / "workers.json"
    workers.main(["--images", "4", "--size", "200x150", "--batch-size", "2", "--processes", "1,2",
                  "--repeats", "1", "--json", str(out)])
    record = json.loads(out.read_text())
    assert set(record["img_s"]) == {"1", "2"} and all(r[0] > 0 for r in record["img_s"].values())
    cpus = record["machine"]["usable_cpus"]  # labelfleet's share: usable CPUs divided among the processes
    assert record["threads_per_process"] == {"1": cpus, "2": max(1, cpus // 2)}
    assert len(record["ratio_vs_first"]["2"]) == 1
    assert "labels are meaningless" in capsys.readouterr().out


@pytest.mark.slow
def test_peak_rss_of_a_48mp_photo_is_below_twice_a_1mp_photo(tmp_path: Path) -> None:
    files = memory.tiny_files(tmp_path)
    small = memory.measure(1, 100, tmp_path, files)
    large = memory.measure(48, 100, tmp_path, files)
    assert small["detections"] >= 90 and large["detections"] >= 90, (small, large)
    assert (large["width"], large["height"]) == (8000, 6000)
    assert large["peak_rss_mb"] < 2 * small["peak_rss_mb"], (small, large)


def test_mask_records_scale_with_the_crop_not_the_frame() -> None:
    """A smooth 300x200 mask costs the same few hundred bytes in a 1 MP and a 48 MP frame."""
    from labelfleet.masks import encode_mask_record

    yy, xx = np.mgrid[:200, :300]
    crop = ((yy - 100) / 100) ** 2 + ((xx - 150) / 150) ** 2 <= 1
    small = json.dumps(encode_mask_record(crop, 10, 20, (866, 1155)))
    large = json.dumps(encode_mask_record(crop, 4000, 3000, (6000, 8000)))
    assert abs(len(small) - len(large)) <= 8 and len(large) < 4096, (len(small), len(large))


def test_mask_benchmark_windowed_post_processing_equals_sams(tmp_path: Path) -> None:
    """``benchmarks.masks``: labelfleet's windowed masks equal ``Sam.postprocess_masks``' for both kinds of logits,
    and a compact mask's record stays far below 4 KB."""
    from benchmarks import masks

    out = tmp_path / "masks.json"
    record = masks.main(["--masks", "4", "--repeats", "1", "--frame", "320x240", "--json", str(out)])
    assert json.loads(out.read_text()) == record
    by_kind = {r["kind"]: r for r in record["results"]}
    assert by_kind["compact"]["same_masks"] and by_kind["noisy"]["same_masks"]
    assert by_kind["compact"]["record_bytes"] < 4096


def test_submit_benchmark_smoke(tmp_path: Path, pg_admin_engine: object) -> None:
    from benchmarks import submit
    from tests.conftest import PG_ADMIN_URL

    out = tmp_path / "submit.json"
    submit.main(["--keys", "1500", "--chunk-size", "32", "--db", PG_ADMIN_URL, "--json", str(out)])
    record = json.loads(out.read_text())
    assert record["image_keys"] == 1497 and record["exactly_once"] is True  # every 500th key is not an image
    assert set(record["phases"]) == {"listing", "insert", "enqueue", "end_to_end"}
    assert all(p["keys"] == 1497 and p["keys_per_s"] > 0 for p in record["phases"].values())
    assert record["messages"] == -(-1497 // 32)
