"""`labelfleet segment`: box / point prompts and --everything on tiny random SAM, plus bad prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from labelfleet.cli import app
from tests.imagegen import scene

runner = CliRunner()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    scene(3, 160, 120).save(path)
    return path


def test_box_and_points(image: Path, tmp_path: Path, lf_env: Path) -> None:
    out = tmp_path / "mask.png"
    result = runner.invoke(app, ["segment", str(image), "--models", "tiny-random", "--box", "10,10,100,90",
                                 "--point", "50,50,1", "--point", "5,5,0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(out))
    assert mask.shape == (120, 160) and set(np.unique(mask)) <= {0, 255}


def test_everything(image: Path, tmp_path: Path, lf_env: Path) -> None:
    out = tmp_path / "all.png"
    result = runner.invoke(app, ["segment", str(image), "--models", "tiny-random", "--everything",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    index = np.asarray(Image.open(out))
    assert index.shape == (120, 160) and int(index.max()) <= len(meta)
    assert all(set(m) == {"index", "xyxy", "score", "area"} for m in meta)


BAD = [
    (["--box", "10,10,5,90"], "--box must be x0,y0,x1,y1 in pixels with x1>x0 and y1>y0, got '10,10,5,90'"),
    (["--box", "1,2,3"], "--box must be x0,y0,x1,y1 in pixels with x1>x0 and y1>y0, got '1,2,3'"),
    (["--point", "5,5,2"], "--point must be x,y,1 (include) or x,y,0 (exclude), got '5,5,2'"),
    (["--point", "a,5,1"], "--point must be x,y,1 (include) or x,y,0 (exclude), got 'a,5,1'"),
    ([], "give --box and/or --point prompts, or --everything"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m[:25] for _, m in BAD])
def test_bad_prompts(image: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["segment", str(image), "--models", "tiny-random", *args,
                                 "--out", str(tmp_path / "m.png")])
    assert result.exit_code != 0
    assert getattr(result.exception, "message", "") == message
