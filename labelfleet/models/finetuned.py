"""Fine-tuned checkpoints a cluster job names: ``STAGE=s3://bucket/key@SHA256`` (parsing only; pure core).

Workers fetch and verify them (``workers.checkpoints``); the job records them in
``jobs.config["checkpoints"]`` as ``{stage: {"uri": ..., "sha256": ...}}``.
"""

from __future__ import annotations

from labelfleet.errors import ConfigError

STAGES = ("tagger", "detector", "segmenter")


def parse_checkpoint_option(value: str) -> tuple[str, dict[str, str]]:
    """``STAGE=s3://bucket/key@SHA256`` -> ``(stage, {"uri": ..., "sha256": ...})``; ConfigError if malformed."""
    stage, eq, rest = value.partition("=")
    uri, at, sha = rest.rpartition("@")
    if not eq or stage not in STAGES:
        raise ConfigError(f"--checkpoint {value!r}: expected STAGE=s3://bucket/key@SHA256 with STAGE one of "
                          f"{', '.join(STAGES)}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not at or not uri.startswith("s3://") or not bucket or not key or key.endswith("/"):
        raise ConfigError(f"--checkpoint {value!r}: the checkpoint must be an S3 object, s3://bucket/key@SHA256")
    sha = sha.lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ConfigError(f"--checkpoint {value!r}: {sha!r} is not a sha256 (64 hex digits)")
    return stage, {"uri": uri, "sha256": sha}
