"""Query-chunked attention for SAM's image encoder: the same math, bounded memory.

segment-anything's ``image_encoder.Attention`` materialises the whole attention map
``(B * heads, HW, HW)`` float32 and, with relative positions, two more of the same size
while adding them. In the global-attention blocks of ViT-B/L/H (``HW = 64 * 64 = 4096``
tokens, 12-16 heads) that is 0.8-1.1 GB per map, ~2.5 GB at the peak for one image. Here the
queries are taken a few rows of the token grid at a time: each chunk's map is
``(B * heads, rows * W, HW)``, with the decomposed relative positions added exactly as
``add_decomposed_rel_pos`` does for those rows. Outputs equal upstream's up to float
rounding (matmul blocking); windowed blocks (14 x 14 tokens) are small and stay as they are.
"""

from __future__ import annotations

import types
from typing import Any

import torch

#: Query tokens per chunk (rows of the token grid x its width); 1,024 of 4,096 keeps a global
#: block's map at 1/4 of its full size.
DEFAULT_QUERY_TOKENS = 1024


def _chunked_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` with queries in chunks of ``self._lf_query_tokens`` tokens (whole grid rows).

    ``x``: ``(B, H, W, C)`` float; returns ``(B, H, W, C)``.
    """
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    n = self.num_heads
    qkv = self.qkv(x).reshape(b, h * w, 3, n, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * n, h * w, -1).unbind(0)
    dim = q.shape[-1]
    kt = k.transpose(-2, -1)
    rh = get_rel_pos(h, h, self.rel_pos_h) if self.use_rel_pos else None
    rw = get_rel_pos(w, w, self.rel_pos_w) if self.use_rel_pos else None
    out = torch.empty_like(q)
    rows = max(1, self._lf_query_tokens // w)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        qs = q[:, r0 * w : r1 * w]
        attn = (qs * self.scale) @ kt
        if rh is not None and rw is not None:
            r_q = qs.reshape(b * n, r1 - r0, w, dim)
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh[r0:r1])
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
            attn = (attn.view(b * n, r1 - r0, w, h, w) + rel_h[:, :, :, :, None]
                    + rel_w[:, :, :, None, :]).view(b * n, (r1 - r0) * w, h * w)
        out[:, r0 * w : r1 * w] = attn.softmax(dim=-1) @ v
    y = out.view(b, n, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(y)


def install_chunked_attention(image_encoder: torch.nn.Module, query_tokens: int = DEFAULT_QUERY_TOKENS) -> int:
    """Give every global-attention block of a SAM ``ImageEncoderViT`` the chunked forward.

    A block is global when its ``window_size`` is 0 (it attends over the whole token grid).
    Returns how many blocks were changed (0 for encoders whose grid is at most ``query_tokens``).
    """
    if query_tokens < 1:
        raise ValueError(f"query_tokens must be >= 1, got {query_tokens}")
    grid = getattr(getattr(image_encoder, "patch_embed", None), "proj", None)
    size = int(getattr(image_encoder, "img_size", 0)) // int(grid.stride[0]) if grid is not None else 0
    changed = 0
    for block in getattr(image_encoder, "blocks", []):
        if getattr(block, "window_size", 1) != 0 or size * size <= query_tokens:
            continue
        attn = block.attn
        attn._lf_query_tokens = query_tokens
        attn.forward = types.MethodType(_chunked_forward, attn)
        changed += 1
    return changed
