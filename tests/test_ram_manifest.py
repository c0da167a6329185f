"""RAM / RAM++ key layout: full-size models vs the upstream manifest, and official-format loading.

``tests/data/ram/manifest_{ram,ram_plus}.json`` were produced from the upstream classes by
``tests/data/ram/make_reference.py`` (see its docstring).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from labelfleet.errors import ModelUnavailableError, PermanentError
from workers.stages.ram import convert_official_key, convert_official_state_dict, create_model
from workers.stages.ram.model import VARIANT_CONFIGS
from workers.stages.ram_tagger import build_ram_model

DATA = Path(__file__).parent / "data" / "ram"


def _manifest(variant: str) -> dict:
    return json.loads((DATA / f"manifest_{variant}.json").read_text(encoding="utf-8"))


def _meta_model(variant: str) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(VARIANT_CONFIGS[variant])


@pytest.mark.parametrize(("variant", "n_official", "n_ours"), [("ram", 1007, 366), ("ram_plus", 367, 367)])
def test_full_size_state_dict_matches_upstream_manifest(variant: str, n_official: int, n_ours: int) -> None:
    manifest = _manifest(variant)
    assert len(manifest["keys"]) == n_official
    expected = convert_official_state_dict(manifest["keys"])
    ours = {k: list(v.shape) for k, v in _meta_model(variant).state_dict().items()}
    assert len(ours) == n_ours
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}


@pytest.mark.parametrize("variant", ["ram", "ram_plus"])
def test_derived_buffers_are_the_ones_the_official_loader_drops(variant: str) -> None:
    drops = _manifest(variant)["official_loader_drops"]
    assert len(drops) == 35  # 24 relative_position_index + 11 attn_mask
    model = _meta_model(variant)
    buffers = {k: list(v.shape) for k, v in model.named_buffers()}
    assert buffers == drops
    assert all(convert_official_key(k) is None for k in drops)
    assert not set(buffers) & set(model.state_dict())  # non-persistent


def test_full_size_parameter_counts() -> None:
    # RAM++: 329,493,046 unique params (ram.md section 6); RAM without tag_encoder/text_decoder is smaller.
    assert sum(p.numel() for p in _meta_model("ram_plus").parameters()) == 329_493_046
    assert _meta_model("ram").label_embed.shape == (4585, 512)
    assert _meta_model("ram_plus").label_embed.shape == (4585 * 51, 512)


def test_convert_official_key_rules() -> None:
    assert convert_official_key("visual_encoder.layers.0.blocks.1.attn_mask") is None
    assert convert_official_key("visual_encoder.layers.0.blocks.0.attn.relative_position_index") is None
    assert convert_official_key("tag_encoder.encoder.layer.0.output.dense.weight") is None
    assert convert_official_key("text_decoder.cls.predictions.bias") is None
    assert convert_official_key("vision_multi.encoder.layer.0.output.dense.weight") == (
        "tagging_head.encoder.layer.0.output.dense.weight"
    )
    table = "visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table"
    assert convert_official_key(table) == table
    assert convert_official_key("label_embed") == "label_embed"


def _official_like_state(model: torch.nn.Module, variant: str) -> dict[str, torch.Tensor]:
    """The model's weights as an official file would hold them: buffers, captioning keys, a legacy name."""
    state = dict(model.state_dict())
    state.update({k: v.clone() for k, v in model.named_buffers()})
    if variant == "ram_tiny":
        state["tag_encoder.embeddings.position_ids"] = torch.arange(32)[None]
        state["tag_encoder.encoder.layer.0.crossattention.self.query.weight"] = torch.zeros(32, 32)
        state["text_decoder.cls.predictions.bias"] = torch.zeros(64)
    key = "tagging_head.encoder.layer.1.output.LayerNorm.bias"
    state[key.replace("tagging_head", "vision_multi")] = state.pop(key)
    return state


@pytest.mark.parametrize("variant", ["ram_tiny", "ram_plus_tiny"])
def test_fake_official_checkpoint_loads_strict(variant: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model(VARIANT_CONFIGS[variant]).eval()
    with torch.no_grad():
        source.label_embed.normal_()
    path = tmp_path / "official.pth"
    extra = {"optimizer": {"state": {}}, "epoch": 3}
    torch.save({"model": _official_like_state(source, variant), **extra}, path)

    loaded = build_ram_model(variant, path)
    assert not loaded.training
    ref = source.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, ref[key]), key
    for key, value in loaded.named_buffers():
        assert torch.equal(value, dict(source.named_buffers())[key]), key
    images = torch.randn(2, 3, 384, 384)
    with torch.inference_mode():
        assert torch.allclose(loaded(images), source(images), atol=1e-6)


def test_untrusted_pickle_is_refused_and_trusted_loads(tmp_path: Path) -> None:
    model = create_model(VARIANT_CONFIGS["ram_plus_tiny"])
    path = tmp_path / "with_config.pth"
    torch.save({"model": model.state_dict(), "config": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(PermanentError, match=r"needs full unpickling.*Re-save it as plain tensors") as err:
        build_ram_model("ram_plus_tiny", path)
    assert "trusted=True" not in str(err.value) and "\x1b" not in str(err.value)  # no flag offers it
    loaded = build_ram_model("ram_plus_tiny", path, trusted=True)
    assert torch.equal(loaded.state_dict()["fc.weight"], model.state_dict()["fc.weight"])


def test_missing_or_malformed_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError):
        build_ram_model("ram_tiny", tmp_path / "nope.pth")
    bare = tmp_path / "bare.pth"
    torch.save(create_model(VARIANT_CONFIGS["ram_tiny"]).state_dict(), bare)
    with pytest.raises(PermanentError, match=r"\{'model': state_dict\}"):
        build_ram_model("ram_tiny", bare)
    for name, data in (("text.pth", b"not a checkpoint\n"), ("cut.pth", bare.read_bytes()[:1000])):
        (tmp_path / name).write_bytes(data)
        for trusted in (False, True):
            with pytest.raises(PermanentError):
                build_ram_model("ram_tiny", tmp_path / name, trusted=trusted)
