"""Query-chunked attention in SAM's image encoder equals segment-anything's own (tiny random weights)."""

from __future__ import annotations

import copy

import pytest
import torch

from workers.stages.sam_attention import install_chunked_attention
from workers.stages.tiny import build_tiny_sam


@pytest.mark.parametrize("query_tokens", [16, 48, 100])  # one grid row, three rows, a chunk that is not whole rows
def test_chunked_encoder_equals_upstream(query_tokens: int) -> None:
    torch.manual_seed(0)
    model = build_tiny_sam().eval()
    for p in model.image_encoder.parameters():  # rel-pos tables start at zero: make them count
        p.data.normal_(0, 0.2)
    chunked = copy.deepcopy(model.image_encoder)
    assert install_chunked_attention(chunked, query_tokens=query_tokens) == 1  # the tiny encoder's one global block
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        ref, ours = model.image_encoder(x), chunked(x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_small_grids_and_windowed_blocks_are_left_alone() -> None:
    encoder = build_tiny_sam().image_encoder  # 16 x 16 tokens: at most the default chunk
    assert install_chunked_attention(encoder) == 0
    with pytest.raises(ValueError, match="query_tokens must be >= 1"):
        install_chunked_attention(encoder, query_tokens=0)
