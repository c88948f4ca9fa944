"""Storage URLs, read the same way by the config check and by the store factory."""

from __future__ import annotations


def sqlite_path(url: str) -> str:
    """The file of a `sqlite:///path` url (`sqlite:////abs/path` for an absolute one)."""
    return url.removeprefix("sqlite://").removeprefix("/")
