"""A tiny hookline handler plugin: records the id of every event it is given."""

from __future__ import annotations

from typing import Any

seen: list[str] = []


class EchoHandler:
    """Appends each event's id to the module-level `seen` list."""

    name = "echo"

    async def handle(self, event: Any, ctx: Any) -> None:
        seen.append(event.id)
