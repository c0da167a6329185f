"""Test helper: write a diffusers SD inpainting pipeline as ONE original-format (LDM / CompVis) checkpoint.

The inverse of diffusers' ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` /
``convert_ldm_clip_checkpoint``, written from the LDM module layout:

* UNet under ``model.diffusion_model.``: ``time_embed.{0,2}``, ``input_blocks.0.0`` (conv_in), then per down
  block ``b`` and layer ``j`` ``input_blocks.{1 + b*(L+1) + j}.{0: resnet, 1: transformer}`` and the
  downsampler ``input_blocks.{1 + b*(L+1) + L}.0.op``; ``middle_block.{0: resnet, 1: transformer, 2: resnet}``;
  per up block ``output_blocks.{b*(L+1) + j}.{0: resnet, 1: transformer}`` with the upsampler at ``.1.conv``
  (``.2.conv`` after a transformer); ``out.{0,2}``. Resnets: ``in_layers.{0,2}``, ``emb_layers.1``,
  ``out_layers.{0,3}``, ``skip_connection``. ``L`` = layers_per_block.
* VAE under ``first_stage_model.``: ``encoder.down.i.block.j`` / ``.downsample.conv``, ``{en,de}coder.mid.
  {block_1, attn_1, block_2}``, ``decoder.up.(n-1-i).block.j`` / ``.upsample.conv``, ``norm_out``,
  ``nin_shortcut``; attention ``norm``, ``q``, ``k``, ``v``, ``proj_out`` as 1x1 conv weights ``(c, c, 1, 1)``.
* CLIP text model under ``cond_stage_model.transformer.`` (its transformers state dict, ``text_model.*``).

Tensors are ``torch.Tensor`` as stored in the models (float32 for the tiny pipeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet_suffix(rest: str) -> str:
    module, _, param = rest.rpartition(".")
    return f"{_RESNET[module]}.{param}"


def _unet_key(key: str, lpb: int) -> str:
    """LDM name (without ``model.diffusion_model.``) of diffusers UNet parameter ``key``."""
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    module, _, param = key.rpartition(".")
    if module in top:
        return f"{top[module]}.{param}"
    parts = key.split(".")
    if parts[0] == "mid_block":
        kind, idx, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * idx}.{_resnet_suffix(rest)}"
        return f"middle_block.1.{rest}"
    block, kind, idx, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if parts[0] == "down_blocks":
        first = 1 + block * (lpb + 1)
        if kind == "downsamplers":
            return f"input_blocks.{first + lpb}.0.op.{rest.removeprefix('conv.')}"
        sub = "0" if kind == "resnets" else "1"
        return f"input_blocks.{first + idx}.{sub}.{_resnet_suffix(rest) if kind == 'resnets' else rest}"
    first = block * (lpb + 1)
    if kind == "upsamplers":
        return f"output_blocks.{first + lpb}.UPSAMPLE.{rest}"  # .1 or .2, fixed in unet_to_ldm
    sub = "0" if kind == "resnets" else "1"
    return f"output_blocks.{first + idx}.{sub}.{_resnet_suffix(rest) if kind == 'resnets' else rest}"


def unet_to_ldm(unet: Any) -> dict[str, torch.Tensor]:
    """The UNet's weights under LDM names (prefix ``model.diffusion_model.``)."""
    lpb = int(unet.config.layers_per_block)
    out = {_unet_key(k, lpb): v for k, v in unet.state_dict().items()}
    for key in [k for k in out if ".UPSAMPLE." in k]:
        block = key.split(".")[1]
        has_attn = any(k.startswith(f"output_blocks.{block}.1.") for k in out if ".UPSAMPLE." not in k)
        out[key.replace(".UPSAMPLE.", ".2." if has_attn else ".1.")] = out.pop(key)
    return {f"model.diffusion_model.{k}": v for k, v in out.items()}


def _vae_key(key: str, n_blocks: int) -> str:
    """LDM name (without ``first_stage_model.``) of diffusers VAE parameter ``key``."""
    parts = key.split(".")
    coder = parts[0]
    if coder in ("quant_conv", "post_quant_conv"):
        return key
    if parts[1] == "conv_norm_out":
        return f"{coder}.norm_out.{parts[2]}"
    if parts[1] in ("conv_in", "conv_out"):
        return key
    if parts[1] == "mid_block":
        kind, idx, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{coder}.mid.block_{idx + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        module, _, param = rest.rpartition(".")
        return f"{coder}.mid.attn_1.{_VAE_ATTN[module]}.{param}"
    block, kind, rest = int(parts[2]), parts[3], ".".join(parts[4:])
    ldm_block = block if coder == "encoder" else n_blocks - 1 - block
    level = "down" if coder == "encoder" else "up"
    if kind in ("downsamplers", "upsamplers"):
        return f"{coder}.{level}.{ldm_block}.{'downsample' if kind == 'downsamplers' else 'upsample'}." \
               f"{rest.removeprefix('0.')}"
    return f"{coder}.{level}.{ldm_block}.block.{rest.replace('conv_shortcut', 'nin_shortcut')}"


def vae_to_ldm(vae: Any) -> dict[str, torch.Tensor]:
    """The VAE's weights under LDM names (prefix ``first_stage_model.``); attention linears as 1x1 convs."""
    n = len(vae.config.down_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        ldm = _vae_key(key, n)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[f"first_stage_model.{ldm}"] = value
    return out


def pipeline_to_ldm(pipe: Any) -> dict[str, torch.Tensor]:
    """All weights of an SD (inpainting) pipeline as one LDM-format state dict (cloned, contiguous)."""
    sd = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    sd.update({f"cond_stage_model.transformer.{k}": v for k, v in pipe.text_encoder.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def write_ldm_checkpoint(pipe: Any, path: Path) -> Path:
    """``torch.save({"state_dict": ...}, path)`` of :func:`pipeline_to_ldm` (like the official ``.ckpt``)."""
    torch.save({"state_dict": pipeline_to_ldm(pipe)}, path)
    return path
