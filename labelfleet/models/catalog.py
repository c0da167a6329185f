"""The models labelfleet knows: official files with pinned size and sha256, and presets.

(Only small config files of a repository pinned by commit may lack a digest, see :data:`NO_DIGEST`.)

Pure data, no torch. A *model* is the set of files one stage needs (for
GroundingDINO: the checkpoint plus the BERT tokenizer files; its BERT weights
live inside the checkpoint). ``generator`` models (``*_tiny``) are not
downloaded: tiny random-weight models are generated from the real
architecture classes into the cache, then loaded through the same path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from labelfleet.errors import ConfigError

RAM_COMMIT = "7cb804a8609e9f4b1a50b7f31436d2df40bb9481"
_RAM_RAW = f"https://raw.githubusercontent.com/xinyu1205/recognize-anything/{RAM_COMMIT}/ram/data"
_BERT = "https://huggingface.co/google-bert/bert-base-uncased/resolve/86b5e0934494bd15c9632b12f734a8a67f723594"
_GD = "https://github.com/IDEA-Research/GroundingDINO/releases/download"
_SAM = "https://dl.fbaipublicfiles.com/segment_anything"


@dataclass(frozen=True)
class ModelFile:
    """One downloadable file. ``role`` names what it is for the stage builder."""

    role: str
    filename: str
    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    """A model: the stage it serves, the builder key and its files."""

    key: str
    stage: str  # "tagger" | "detector" | "segmenter" | "inpainter"
    description: str
    files: tuple[ModelFile, ...] = ()
    generated: bool = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


_RAM_TAGS = (
    ModelFile("tag_list", "ram_tag_list.txt", f"{_RAM_RAW}/ram_tag_list.txt", 41904,
              "5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b"),
    ModelFile("tag_list_chinese", "ram_tag_list_chinese.txt", f"{_RAM_RAW}/ram_tag_list_chinese.txt", 44181,
              "c912657a0f30be7b2f5df6ccffa17e1d84561d0bea508528e38b6d0d711bcfbe"),
    ModelFile("thresholds", "ram_tag_list_threshold.txt", f"{_RAM_RAW}/ram_tag_list_threshold.txt", 22016,
              "b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447"),
)
_BERT_TOKENIZER = (
    ModelFile("tokenizer/vocab.txt", "bert-base-uncased/vocab.txt", f"{_BERT}/vocab.txt", 231508,
              "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
    ModelFile("tokenizer/tokenizer_config.json", "bert-base-uncased/tokenizer_config.json",
              f"{_BERT}/tokenizer_config.json", 48,
              "a025160ef0431f1a392f6f050c1310f4c5d9fb6f275932dbccba73c4d214bf10"),
    ModelFile("tokenizer/tokenizer.json", "bert-base-uncased/tokenizer.json", f"{_BERT}/tokenizer.json", 466062,
              "ce64fce797c24f68df90b40a3f74f579b336a493db14bd583fd520ea0d8c9a98"),
    ModelFile("tokenizer/config.json", "bert-base-uncased/config.json", f"{_BERT}/config.json", 570,
              "7160e1553ad2ca51d8c1cb066be533db31826e12d173824c1bb0cb1a4f187d20"),
)

# --- issue 14: Stable Diffusion inpainting (one pinned LDM checkpoint + diffusers config files) ----------
#: The official SD 1.5 inpainting weights (runwayml's release, mirrored by the stable-diffusion-v1-5 org after
#: runwayml's repo was withdrawn), pinned by git commit. The weights are the single original-format (LDM) file
#: ``sd-v1-5-inpainting.ckpt`` with its published size and sha256 (A1111 short hash c6bbc15e32); the small
#: diffusers config files of the same commit describe the pipeline it is loaded into.
SD_INPAINT_REPO = "stable-diffusion-v1-5/stable-diffusion-inpainting"
SD_INPAINT_REVISION = "8a4288a76071f7280aedbdb3253bdb9e9d5d84bb"
#: ``sha256`` (and ``size`` 0) of a file whose digest the catalog does not know. Allowed ONLY for small config
#: files (``role`` ``config/...``, ``.json``/``.txt``) of a repository pinned by a commit in the URL
#: (``.../resolve/<40 hex>/...``): the commit fixes their content. Every weight file has size and sha256.
NO_DIGEST = ""
CONFIG_SUFFIXES = (".json", ".txt")
_COMMIT_URL = re.compile(r"/resolve/[0-9a-f]{40}/")
_SDI = f"https://huggingface.co/{SD_INPAINT_REPO}/resolve/{SD_INPAINT_REVISION}"
_SD_INPAINT_CONFIGS = ("model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                       "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
                       "tokenizer/vocab.json", "unet/config.json", "vae/config.json")
_SD_INPAINT_FILES = (
    ModelFile("checkpoint", "sd15-inpainting/sd-v1-5-inpainting.ckpt", f"{_SDI}/sd-v1-5-inpainting.ckpt",
              4265437280, "c6bbc15e3224e6973459ba78de4998b80b50112b0ae5b5c67113d56b4e366b19"),
    *(ModelFile(f"config/{rel}", f"sd15-inpainting/config/{rel}", f"{_SDI}/{rel}", 0, NO_DIGEST)
      for rel in _SD_INPAINT_CONFIGS),
)


def revision_pinned_config(mf: ModelFile) -> bool:
    """True for a file that may lack a digest: a small config file of a commit-pinned repository."""
    return (mf.sha256 == NO_DIGEST and mf.role.startswith("config/") and mf.filename.endswith(CONFIG_SUFFIXES)
            and _COMMIT_URL.search(mf.url) is not None)


#: Labelling preset -> inpainting model used by `labelfleet edit` (tiny-random pairs with tiny random weights).
EDIT_INPAINTERS = {"tiny-random": "sd_inpaint_tiny"}
DEFAULT_INPAINTER = "sd15_inpaint"
RANDOM_EDITS_WARNING = (
    "WARNING: these edits come from tiny RANDOM-WEIGHT models (--models tiny-random). "
    "The images are meaningless and only prove the pipeline runs."
)

MODELS: dict[str, ModelSpec] = {
    m.key: m
    for m in (
        ModelSpec("ram", "tagger", "RAM Swin-L 14M (Recognize Anything)", (
            ModelFile("checkpoint", "ram_swin_large_14m.pth",
                      "https://huggingface.co/xinyu1205/recognize_anything_model/resolve/main/ram_swin_large_14m.pth",
                      5625634877, "15c729c793af28b9d107c69f85836a1356d76ea830d4714699fb62e55fcc08ed"),
            *_RAM_TAGS)),
        ModelSpec("ram_plus", "tagger", "RAM++ Swin-L 14M (Recognize Anything Plus)", (
            ModelFile("checkpoint", "ram_plus_swin_large_14m.pth",
                      "https://huggingface.co/xinyu1205/recognize-anything-plus-model/resolve/main/"
                      "ram_plus_swin_large_14m.pth",
                      3010210801, "497c178836ba66698ca226c7895317e6e800034be986452dbd2593298d50e87d"),
            *_RAM_TAGS)),
        ModelSpec("gdino_swint_ogc", "detector", "GroundingDINO Swin-T OGC", (
            ModelFile("checkpoint", "groundingdino_swint_ogc.pth",
                      f"{_GD}/v0.1.0-alpha/groundingdino_swint_ogc.pth",
                      693997677, "3b3ca2563c77c69f651d7bd133e97139c186df06231157a64c507099c52bc799"),
            *_BERT_TOKENIZER)),
        ModelSpec("gdino_swinb_cogcoor", "detector", "GroundingDINO Swin-B COGCOOR", (
            ModelFile("checkpoint", "groundingdino_swinb_cogcoor.pth",
                      f"{_GD}/v0.1.0-alpha2/groundingdino_swinb_cogcoor.pth",
                      938057991, "46270f7a822e6906b655b729c90613e48929d0f2bb8b9b76fd10a856f3ac6ab7"),
            *_BERT_TOKENIZER)),
        ModelSpec("sam_vit_h", "segmenter", "Segment Anything ViT-H", (
            ModelFile("checkpoint", "sam_vit_h_4b8939.pth", f"{_SAM}/sam_vit_h_4b8939.pth",
                      2564550879, "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),)),
        ModelSpec("sam_vit_l", "segmenter", "Segment Anything ViT-L", (
            ModelFile("checkpoint", "sam_vit_l_0b3195.pth", f"{_SAM}/sam_vit_l_0b3195.pth",
                      1249524607, "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),)),
        ModelSpec("sam_vit_b", "segmenter", "Segment Anything ViT-B", (
            ModelFile("checkpoint", "sam_vit_b_01ec64.pth", f"{_SAM}/sam_vit_b_01ec64.pth",
                      375042383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),)),
        ModelSpec("ram_tiny", "tagger", "tiny random-weight RAM (tests only; labels are meaningless)",
                  generated=True),
        ModelSpec("ram_plus_tiny", "tagger", "tiny random-weight RAM++ (tests only; labels are meaningless)",
                  generated=True),
        ModelSpec("gdino_tiny", "detector", "tiny random-weight GroundingDINO (tests only; labels are meaningless)",
                  generated=True),
        ModelSpec("sam_tiny", "segmenter", "tiny random-weight SAM (tests only; labels are meaningless)",
                  generated=True),
        # --- issue 14: inpainting models for `labelfleet edit` -------------------------------------
        ModelSpec("sd15_inpaint", "inpainter", "Stable Diffusion 1.5 inpainting (sd-v1-5-inpainting.ckpt, "
                  f"revision {SD_INPAINT_REVISION[:10]})", _SD_INPAINT_FILES),
        ModelSpec("sd_inpaint_tiny", "inpainter", "tiny random-weight SD inpainting (tests only; edits are "
                  "meaningless)", generated=True),
    )
}


@dataclass(frozen=True)
class Preset:
    """A named choice of one model per stage."""

    name: str
    tagger: str
    detector: str
    segmenter: str
    description: str

    @property
    def random_weights(self) -> bool:
        return any(MODELS[k].generated for k in (self.tagger, self.detector, self.segmenter))

    def with_overrides(self, tagger: str | None = None, detector: str | None = None,
                       segmenter: str | None = None) -> Preset:
        """A copy with some stages replaced (each key is checked against the catalog)."""
        new = Preset(self.name, tagger or self.tagger, detector or self.detector,
                     segmenter or self.segmenter, self.description)
        for stage, key in (("tagger", new.tagger), ("detector", new.detector), ("segmenter", new.segmenter)):
            get_model(key, stage)
        return new


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("default", "ram_plus", "gdino_swint_ogc", "sam_vit_h", "RAM++ -> GroundingDINO-T -> SAM ViT-H"),
        Preset("fast", "ram_plus", "gdino_swint_ogc", "sam_vit_b", "RAM++ -> GroundingDINO-T -> SAM ViT-B"),
        Preset("quality", "ram_plus", "gdino_swinb_cogcoor", "sam_vit_h", "RAM++ -> GroundingDINO-B -> SAM ViT-H"),
        Preset("tiny-random", "ram_plus_tiny", "gdino_tiny", "sam_tiny",
               "tiny random-weight models for offline tests; labels are MEANINGLESS"),
    )
}

RANDOM_WEIGHTS_WARNING = (
    "WARNING: these labels come from tiny RANDOM-WEIGHT models (--models tiny-random). "
    "They are meaningless and only prove the pipeline runs."
)


def get_preset(name: str) -> Preset:
    """Look up a preset; unknown names raise :class:`ConfigError` listing the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def get_model(key: str, stage: str | None = None) -> ModelSpec:
    """Look up a model key, optionally checking that it serves ``stage``."""
    spec = MODELS.get(key)
    if spec is None or (stage is not None and spec.stage != stage):
        valid = [k for k, m in MODELS.items() if stage is None or m.stage == stage]
        what = f"{stage} model" if stage else "model"
        raise ConfigError(f"unknown {what} {key!r}; choose one of: {', '.join(valid)}")
    return spec
