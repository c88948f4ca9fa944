"""The `log` handler: writes one line per event; useful as a first route and in tests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from handlers import Context, Event


class LogHandler:
    name = "log"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        level: str = "info"

    async def handle(self, event: Event, ctx: Context[Options]) -> None:
        level = ctx.options.level.upper()
        ctx.log.log(
            getattr(__import__("logging"), level, 20),
            "event %s %s from %s", event.id, event.type, event.source,
        )
