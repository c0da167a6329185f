"""Regenerate docs/edit-tiny-random.png: original | mask | 2 variants from TINY RANDOM weights (meaningless).

    LABELFLEET_MODEL_DIR=/tmp/lf-models python docs/make_edit_example.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from labelfleet.edit import EditParams
from labelfleet.settings import Settings
from tests.imagegen import scene
from workers.inpaint import get_inpainter, prepare_mask, resolve_inpainter

OUT = Path(__file__).with_name("edit-tiny-random.png")


def main() -> None:
    settings = Settings(device="cpu")
    inp = get_inpainter(resolve_inpainter("sd_inpaint_tiny", settings), settings)
    image = np.asarray(scene(3, 320, 240))
    y, x = np.mgrid[0:240, 0:320]
    mask = (x - 200) ** 2 + (y - 110) ** 2 < 50 ** 2
    params = EditParams(prompt="a corgi, photo", out="-", targets=("dog",), steps=8, dilate=6, feather=6)
    variants = inp.edit(image, mask, params, [0, 1])
    region, _ = prepare_mask(mask, params.dilate, params.feather)
    tiles = [image, np.repeat(region[..., None].astype(np.uint8) * 255, 3, axis=2), *variants]
    sheet = Image.new("RGB", (320 * len(tiles), 240 + 28), "white")
    for i, t in enumerate(tiles):
        sheet.paste(Image.fromarray(t), (320 * i, 28))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 8), "TINY RANDOM WEIGHTS - MEANINGLESS EDIT (only shows the pipeline: original | mask | "
              "variant seed 0 | variant seed 1; pixels outside the mask unchanged)", fill="red")
    sheet.save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
