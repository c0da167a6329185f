"""Where images come from: the :class:`Source` interface and its implementations."""

from labelfleet.storage.base import Source, open_source

__all__ = ["Source", "open_source"]
