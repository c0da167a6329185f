"""Regenerate the RAM / RAM++ reference data in this folder from the *upstream* code.

Not part of labelfleet and never imported by it or by the tests: it documents how the files next to it were
made. It runs the official ``xinyu1205/recognize-anything`` classes (``RAM``, ``RAM_plus``, ``generate_tag``,
``get_transform``, ``load_checkpoint_swinlarge``) from a checkout passed on the command line.

Usage (an interpreter where the upstream code imports: torch, torchvision, transformers<4.55, timm==0.4.12,
fairscale==0.4.4, scipy)::

    python tests/data/ram/make_reference.py /path/to/recognize-anything [--out tests/data/ram]

Outputs:
* ``manifest_ram.json`` / ``manifest_ram_plus.json``: key -> shape of the FULL-size upstream models (built on
  CPU), split into the keys an official checkpoint loads (``keys``) and the derived buffers the
  official loader drops (``official_loader_drops``).
* ``ref_ram_tiny.pth`` / ``ref_ram_plus_tiny.pth``: ``{'model': state_dict}`` of the upstream classes with a
  reduced configuration (same key names; derived ``attn_mask`` / ``relative_position_index`` buffers left out
  for size, as the official loader drops them anyway) and random weights scaled as in ``shared/specs/ram.md``
  section 9. RAM++ uses 4 descriptions per class instead of 51 (``generate_tag`` derives the count from
  ``label_embed``'s shape).
* ``ref_tag_list*.txt``: the 16-tag list, thresholds and Chinese names used by both tiny models.
* ``expected_ram_tiny.json`` / ``expected_ram_plus_tiny.json``: per reference image, upstream sigmoid scores
  (captured from ``fc`` inside ``generate_tag``) and ``generate_tag``'s English / Chinese strings. Each is
  also re-checked after reloading the saved file through the official ``load_checkpoint_swinlarge``.

The upstream ``__init__`` needs the ``bert-base-uncased`` tokenizer only for ``len(tokenizer)`` and a prompt
length (neither affects tagging); it is stubbed so the script runs offline.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

SEED = 1234
TARGET_POSITIVE_RATE = 0.25
TAGS = [
    ("person", "人"), ("cat", "猫 "), ("dog", "狗"), ("car", "汽车 "), ("tree", "树"), ("house", "房子"),
    ("bird", "鸟 "), ("horse", "马"), ("bicycle", "自行车"), ("boat", "船"), ("chair", "椅子 "),
    ("table", "桌子"), ("living room", "客厅"), ("picture frame", "相框 "), ("flower", "花"), ("sky", "天空"),
]  # fmt: skip
THRESHOLDS = [(0.65, 0.65, 0.7, 0.6, 0.65, 0.75, 0.5, 0.65)[i % 8] for i in range(len(TAGS))]
TINY_SWIN = {"vision_width": 48, "image_res": 384, "window_size": 12, "embed_dim": 6,
             "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]}  # fmt: skip
TINY_Q2L = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 64,
            "max_position_embeddings": 32}  # fmt: skip
TINY_MED = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "vocab_size": 64, "max_position_embeddings": 32, "encoder_width": 32}  # fmt: skip
TINY_DES_PER_CLASS = 4
SCALES = {
    "image_proj.weight": 20.0,
    "crossattention.self.query.weight": 8.0,
    "crossattention.self.key.weight": 8.0,
    "crossattention.output.dense.weight": 0.5,
    "fc.weight": 2.5,
}


def reference_images() -> list[np.ndarray]:
    """Three deterministic uint8 RGB images (integer arithmetic only; the test has an identical copy)."""
    out = []
    for i, (h, w) in enumerate([(97, 131), (384, 384), (200, 64)]):
        y, x = np.mgrid[0:h, 0:w]
        r = (x * (5 + 2 * i) + y * (3 + i)) % 256
        g = ((x - w // (2 + i)) ** 2 + (y - h // 3) ** 2) * (2 * i + 1) // 9 % 256
        b = ((x // (6 + 3 * i)) ^ (y // (4 + i))) * (41 + 10 * i) % 256
        out.append(np.stack([r, g, b], axis=-1).astype(np.uint8))
    return out


class StubTokenizer:
    """Stands in for ``BertTokenizer('bert-base-uncased')`` + the two special tokens added upstream."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __call__(self, text: str) -> SimpleNamespace:
        return SimpleNamespace(input_ids=[101] + [1000] * len(text.split()) + [102])


def import_upstream(upstream: Path) -> SimpleNamespace:
    sys.path.insert(0, str(upstream))
    # ``ram.models.ram`` is shadowed by the ``ram()`` factory in ``ram/models/__init__.py``: use importlib.
    mods = {n: importlib.import_module(f"ram.models.{n}") for n in ("ram", "ram_plus", "utils")}
    transform = importlib.import_module("ram.transform")
    return SimpleNamespace(
        ram=mods["ram"], plus=mods["ram_plus"], utils=mods["utils"], get_transform=transform.get_transform
    )


def set_upstream_env(up: SimpleNamespace, config_path: Path, vocab: int) -> None:
    for mod in (up.ram, up.plus, up.utils):
        mod.CONFIG_PATH = config_path
    for mod in (up.ram, up.plus):
        mod.init_tokenizer = lambda *_a, **_k: StubTokenizer(vocab)


def is_derived_buffer(key: str) -> bool:
    return "relative_position_index" in key or "attn_mask" in key


def write_manifests(up: SimpleNamespace, upstream: Path, out: Path) -> None:
    set_upstream_env(up, upstream / "ram", 30524)
    for name, cls in (("ram", up.ram.RAM), ("ram_plus", up.plus.RAM_plus)):
        model = cls(image_size=384, vit="swin_l")  # upstream cannot be built on the meta device (Tensor.item)
        sd = model.state_dict()
        del model
        drops = {k: list(v.shape) for k, v in sd.items() if is_derived_buffer(k)}
        keys = {k: list(v.shape) for k, v in sd.items() if k not in drops}
        doc = {
            "source": "xinyu1205/recognize-anything@7cb804a8609e9f4b1a50b7f31436d2df40bb9481, "
            f"{cls.__name__}(image_size=384, vit='swin_l').state_dict() (CPU, random init)",
            "keys": keys,
            "official_loader_drops": drops,
        }
        (out / f"manifest_{name}.json").write_text(json.dumps(doc, indent=0) + "\n", encoding="utf-8")
        print(f"manifest_{name}.json: {len(keys)} keys + {len(drops)} dropped buffers")


def write_tiny_configs(upstream: Path, root: Path) -> Path:
    (root / "configs" / "swin").mkdir(parents=True)
    (root / "data").mkdir()
    q2l = json.loads((upstream / "ram/configs/q2l_config.json").read_text()) | TINY_Q2L
    med = json.loads((upstream / "ram/configs/med_config.json").read_text()) | TINY_MED
    (root / "configs/q2l_config.json").write_text(json.dumps(q2l))
    (root / "configs/swin/config_swinL_384.json").write_text(json.dumps(TINY_SWIN))
    (root / "configs/med_config.json").write_text(json.dumps(med))
    (root / "data/ram_tag_list_threshold.txt").write_text("".join(f"{t}\n" for t in THRESHOLDS))
    return root


def write_tag_files(out: Path) -> dict[str, Path]:
    paths = {
        k: out / f"ref_tag_list{s}.txt" for k, s in (("en", ""), ("zh", "_chinese"), ("th", "_threshold"))
    }
    paths["en"].write_text(
        "\n".join(en for en, _ in TAGS), encoding="utf-8"
    )  # no final newline, like upstream
    paths["zh"].write_text("\n".join(zh for _, zh in TAGS) + "\n", encoding="utf-8")
    paths["th"].write_text("".join(f"{t}\n" for t in THRESHOLDS), encoding="utf-8")
    return paths


@torch.no_grad()
def randomize(model: Any, plus: bool) -> None:
    """ram.md section 9 scaling (+ image_proj x20 so that scores depend on the image)."""
    if plus:  # reduced description count, see module docstring
        model.label_embed = torch.nn.Parameter(torch.zeros(model.num_class * TINY_DES_PER_CLASS, 512))
        model.reweight_scale.fill_(math.log(50.0))
    emb = torch.randn_like(model.label_embed)
    model.label_embed.copy_(emb / emb.norm(dim=-1, keepdim=True))
    # RAM ties tag_encoder's lower layers to tagging_head: scale each tensor once, by its non-captioning name.
    names: dict[int, tuple[torch.nn.Parameter, list[str]]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), (p, []))[1].append(name)
    for p, aliases in names.values():
        own = [n for n in aliases if not n.startswith(("tag_encoder.", "text_decoder."))]
        factors = [f for suffix, f in SCALES.items() if any(n.endswith(suffix) for n in own)]
        if factors:
            p.mul_(factors[0])
    model.wordvec_proj.weight.mul_(30.0 if plus else 12.0)


def run_generate_tag(up: SimpleNamespace, model: Any, images: list[np.ndarray]) -> list[dict]:
    """Official preprocessing + ``generate_tag`` on each image, capturing sigmoid(fc output)."""
    transform = up.get_transform(image_size=384)
    captured: list[torch.Tensor] = []
    hook = model.fc.register_forward_hook(lambda _m, _i, o: captured.append(torch.sigmoid(o.squeeze(-1))))
    results = []
    with torch.no_grad():
        for img in images:
            x = transform(Image.fromarray(img)).unsqueeze(0)
            en, zh = model.generate_tag(x)
            results.append({"scores": captured[-1][0].tolist(), "tags": en[0], "tags_chinese": zh[0]})
    hook.remove()
    return results


@torch.no_grad()
def calibrate(up: SimpleNamespace, model: Any, images: list[np.ndarray]) -> float:
    model.fc.bias.zero_()
    scores = torch.tensor([r["scores"] for r in run_generate_tag(up, model, images)], dtype=torch.float64)
    margin = torch.logit(scores) - torch.logit(torch.tensor(THRESHOLDS, dtype=torch.float64))
    base = -torch.quantile(margin.flatten(), 1 - TARGET_POSITIVE_RATE).item()
    best = max((base + d for d in np.linspace(-0.3, 0.3, 61)), key=lambda b: (margin + b).abs().min().item())
    model.fc.bias.fill_(best)
    return float(best)


def build_tiny(up: SimpleNamespace, plus: bool, cfg_root: Path, tags: dict[str, Path]) -> Any:
    torch.manual_seed(SEED)
    kw = {
        "image_size": 384,
        "vit": "swin_l",
        "tag_list": str(tags["en"]),
        "tag_list_chinese": str(tags["zh"]),
    }
    if plus:
        return up.plus.RAM_plus(**kw).eval()
    return up.ram.RAM(med_config=str(cfg_root / "configs/med_config.json"), **kw).eval()


def reload_official(up, plus: bool, cfg_root: Path, tags: dict[str, Path], ckpt: Path) -> Any:
    model = build_tiny(up, plus, cfg_root, tags)
    if plus:
        model.label_embed = torch.nn.Parameter(torch.zeros(model.num_class * TINY_DES_PER_CLASS, 512))
    model, msg = up.utils.load_checkpoint_swinlarge(model, str(ckpt), {"image_size": 384, "vit": "swin_l"})
    bad_missing = [k for k in msg.missing_keys if not is_derived_buffer(k)]
    if bad_missing or msg.unexpected_keys:
        raise SystemExit(f"official loader: missing {bad_missing} unexpected {msg.unexpected_keys}")
    return model.eval()


def make_tiny_reference(up: SimpleNamespace, upstream: Path, out: Path) -> None:
    images = reference_images()
    tags = write_tag_files(out)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_root = write_tiny_configs(upstream, Path(tmp))
        set_upstream_env(up, cfg_root, TINY_Q2L["vocab_size"])
        for name, plus in (("ram_tiny", False), ("ram_plus_tiny", True)):
            model = build_tiny(up, plus, cfg_root, tags)
            randomize(model, plus)
            bias = calibrate(up, model, images)
            results = run_generate_tag(up, model, images)
            sd = {k: v for k, v in model.state_dict().items() if not is_derived_buffer(k)}
            ckpt = out / f"ref_{name}.pth"
            torch.save({"model": sd}, ckpt)
            again = run_generate_tag(up, reload_official(up, plus, cfg_root, tags, ckpt), images)
            if [r["tags"] for r in again] != [r["tags"] for r in results]:
                raise SystemExit(f"{name}: tags changed after reloading through the official loader")
            for r, img in zip(results, images, strict=True):
                r["image_sha256"] = hashlib.sha256(img.tobytes()).hexdigest()
                r["image_shape"] = list(img.shape)
            doc = {
                "variant": name,
                "seed": SEED,
                "fc_bias": bias,
                "torch": torch.__version__,
                "images": results,
            }
            (out / f"expected_{name}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
            print(name, ckpt.stat().st_size, "bytes;", [r["tags"] for r in results])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstream", type=Path, help="checkout of xinyu1205/recognize-anything")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    torch.set_num_threads(1)
    up = import_upstream(args.upstream.resolve())
    write_manifests(up, args.upstream.resolve(), args.out)
    make_tiny_reference(up, args.upstream.resolve(), args.out)


if __name__ == "__main__":
    main()
