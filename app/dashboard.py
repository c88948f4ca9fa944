"""The built-in dashboard: one page and its assets, served from `app/static/` as they are.

The page needs no build step and loads nothing from elsewhere; it talks to the read API with the
token the person gives it, so serving it needs no authentication of its own.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

STATIC = resources.files("app") / "static"


async def index(request: Request) -> Response:
    return FileResponse(str(STATIC / "index.html"), headers={"cache-control": "no-cache"})


def assets() -> StaticFiles:
    """`/static/*`: the page's script and style sheet."""
    return StaticFiles(directory=str(STATIC))
