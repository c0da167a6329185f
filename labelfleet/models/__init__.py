"""Model catalog (official URLs, sizes, sha256) and the resumable downloader."""
