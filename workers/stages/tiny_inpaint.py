"""A tiny random-weight Stable Diffusion *inpainting* pipeline built from the real diffusers classes.

It powers ``--models tiny-random`` for ``labelfleet edit`` and the tests: a
``UNet2DConditionModel`` with 9 input channels (4 latent + 1 mask + 4 masked-image
latent, exactly like the official inpainting UNet), an ``AutoencoderKL``, a
``CLIPTextModel`` and a ``CLIPTokenizer`` with our own tiny byte-level BPE vocab
(no third-party vocab file; same idea as the tiny WordPiece vocab of
:mod:`workers.stages.tiny`), saved with ``save_pretrained`` as a standard diffusers
folder and loaded back through the same code path as the official weights.

Outputs are meaningless: the weights are random. Native resolution: 64 px
(UNet sample size 32 x VAE scale factor 2), so a CPU runs a 4-step edit in well
under a second.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from workers.stages.tiny import _WORDS

logger = logging.getLogger(__name__)

#: Side in pixels the tiny pipeline works at (``unet.sample_size * vae_scale_factor``).
TINY_NATIVE_SIZE = 64
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (the base alphabet of the BPE vocab)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tiny_bpe() -> tuple[dict[str, int], list[str]]:
    """``(vocab, merges)`` of a tiny CLIP BPE: every byte symbol (alone and word-final ``</w>``),
    left-to-right merges that spell each word of the tiny word list, and the two special tokens."""
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in sorted(set(_WORDS)):
        if len(word) < 2:
            continue
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + "</w>" if i == len(word) - 1 else ch
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            left = left + right
            if left not in tokens:
                tokens.append(left)
    tokens += [_BOS, _EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tiny_clip_tokenizer(out_dir: Path) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` of the tiny CLIP tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_bpe()
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    cfg = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": _BOS, "eos_token": _EOS,
           "unk_token": _EOS, "pad_token": _EOS, "do_lower_case": True}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return out_dir


def build_tiny_inpaint_pipeline(tokenizer_dir: Path, seed: int = 0) -> object:
    """Random-init tiny ``StableDiffusionInpaintPipeline`` (no safety checker), float32, CPU."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=4)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
                            sample_size=TINY_NATIVE_SIZE)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)


def make_tiny_inpaint_files(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny pipeline as a diffusers folder: ``{"pipeline_dir": out_dir / "pipeline"}``."""
    out_dir = Path(out_dir)
    tok_dir = write_tiny_clip_tokenizer(out_dir / "tokenizer-src")
    pipe = build_tiny_inpaint_pipeline(tok_dir, seed)
    target = out_dir / "pipeline"
    pipe.save_pretrained(str(target), safe_serialization=True)  # type: ignore[attr-defined]
    logger.info("wrote tiny inpainting pipeline to %s", target)
    return {"pipeline_dir": target}
