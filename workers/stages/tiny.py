"""Tiny random-weight GroundingDINO and SAM built from the *real* architecture classes.

They power the ``tiny-random`` model preset and the tests: files are written in
the official checkpoint formats (``{"model": state_dict}`` for GroundingDINO, a
bare state dict for SAM) and loaded back through the same registry builders as
real weights. Outputs are deterministic for a seed. Recipes:
``shared/specs/tiny-models.md`` §2a, §2b, §4.

The tiny text encoder dir holds our own small WordPiece vocab (no third-party
vocab file), a tiny BERT ``config.json`` and ``tokenizer_config.json`` — the
same layout as the real ``bert-base-uncased`` dir minus the size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import string
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch

from workers.stages.grounding_dino import build_gdino_model, config_path

logger = logging.getLogger(__name__)

#: Short side the tiny GroundingDINO runs at (the real models use 800).
TINY_GDINO_IMAGE_SIZE = 256
#: Long-side cap for the tiny GroundingDINO (1333 scaled like the short side).
TINY_GDINO_MAX_SIZE = 427
#: SLConfig overrides of the tiny GroundingDINO (SwinT-OGC config otherwise).
TINY_GDINO_OVERRIDES: dict[str, Any] = {
    "enc_layers": 1,
    "dec_layers": 1,
    "num_queries": 30,
    "dim_feedforward": 64,
    "use_checkpoint": False,
    "use_transformer_ckpt": False,
}
#: Swin size of the tiny backbone (passed through the wrapper, see :func:`_tiny_swin`).
TINY_SWIN_KWARGS: dict[str, Any] = {"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}
#: Scale of ``transformer.decoder.norm`` in the saved tiny checkpoint: random
#: weights otherwise give every query a score of 1.0 (tiny-models.md §4).
DECODER_NORM_SCALE = 0.08

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_PUNCTUATION = [".", "?", ",", "-", "'", "/", "(", ")", "&"]
_WORDS = (  # noqa: SIM905 - a word list reads better as text
    "person man woman child boy girl people cat dog horse bird cow sheep bear zebra giraffe "
    "elephant car bus truck bicycle motorcycle train boat airplane traffic light sign stop bench "
    "chair couch table bed toilet tv laptop phone book clock vase bottle cup bowl fork knife spoon "
    "banana apple orange pizza cake tree grass sky road building house window door wall floor water "
    "sea beach mountain snow flower plant field street fence bag umbrella hat shirt shoe ball kite "
).split()


def tiny_vocab() -> list[str]:
    """Our small WordPiece vocab: specials, punctuation, letters, digits, ``##`` pieces, common words."""
    chars = list(string.ascii_lowercase) + list(string.digits)
    vocab = _SPECIAL_TOKENS + _PUNCTUATION + chars + [f"##{c}" for c in chars]
    return vocab + sorted(set(_WORDS) - set(vocab))


def write_tiny_text_encoder_dir(out_dir: Path) -> Path:
    """Write ``vocab.txt``, ``tokenizer_config.json`` and a tiny BERT ``config.json`` to ``out_dir``."""
    from transformers import BertConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok_cfg = {"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    (out_dir / "config.json").write_text(cfg.to_json_string(use_diff=False), encoding="utf-8")
    return out_dir


@contextlib.contextmanager
def _tiny_swin() -> Iterator[None]:
    """Scoped patch shrinking the Swin backbone; GroundingDINO's SLConfig cannot size it."""
    from workers.stages.gdino_import import import_gdino_models

    import_gdino_models()  # first, so the backbone import below does not pull matplotlib
    from groundingdino.models.GroundingDINO.backbone import backbone as bb

    original = bb.build_swin_transformer

    def tiny(modelname: str, pretrain_img_size: int, **kwargs: Any) -> Any:
        return original(modelname, pretrain_img_size, **TINY_SWIN_KWARGS, **kwargs)

    bb.build_swin_transformer = tiny
    try:
        yield
    finally:
        bb.build_swin_transformer = original


def build_tiny_gdino_model(text_encoder_dir: Path) -> torch.nn.Module:
    """Random-init tiny GroundingDINO (SwinT-OGC config, tiny Swin/BERT/transformer), eval mode."""
    with _tiny_swin():
        return build_gdino_model(
            config_path("GroundingDINO_SwinT_OGC.py"), text_encoder_dir, TINY_GDINO_OVERRIDES
        )


def build_tiny_sam(embed_dim: int = 32, img_size: int = 256) -> torch.nn.Module:
    """Random-init tiny SAM with the real ``segment_anything.modeling`` classes, eval mode.

    Same structure as ``segment_anything.build_sam._build_sam``; key names match
    the official checkpoints (fewer ``blocks.N``).
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=32,
            img_size=img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),
            window_size=8,
            out_chans=embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=(img_size // 16, img_size // 16),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=64, num_heads=2),
            transformer_dim=embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def make_tiny_gdino_files(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write a tiny random GroundingDINO: ``{"checkpoint": .pth, "text_encoder_dir": dir}``.

    The checkpoint is ``{"model": state_dict}`` (official format) with
    ``transformer.decoder.norm`` scaled by :data:`DECODER_NORM_SCALE` so scores spread.
    """
    out_dir = Path(out_dir)
    text_dir = write_tiny_text_encoder_dir(out_dir / "text_encoder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_tiny_gdino_model(text_dir)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in ("transformer.decoder.norm.weight", "transformer.decoder.norm.bias"):
        state[name] = state[name] * DECODER_NORM_SCALE
    checkpoint = out_dir / "gdino_tiny.pth"
    torch.save({"model": state}, checkpoint)
    logger.info("wrote tiny GroundingDINO to %s", checkpoint)
    return {"checkpoint": checkpoint, "text_encoder_dir": text_dir}


def make_tiny_sam_files(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write a tiny random SAM as a bare state dict (official format): ``{"checkpoint": .pth}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = build_tiny_sam().state_dict()
    checkpoint = out_dir / "sam_tiny.pth"
    torch.save(state, checkpoint)
    logger.info("wrote tiny SAM to %s", checkpoint)
    return {"checkpoint": checkpoint}
