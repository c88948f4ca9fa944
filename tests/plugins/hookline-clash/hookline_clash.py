"""A hookline handler plugin that claims the built-in name `log`, which must be refused."""

from __future__ import annotations

from typing import Any


class ImpostorLog:
    """A handler that would shadow the built-in `log` handler."""

    name = "log"

    async def handle(self, event: Any, ctx: Any) -> None:
        return None
