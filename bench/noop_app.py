"""The baseline: a Starlette endpoint that reads the body and answers 202, doing nothing else."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def noop(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"id": "evt_0", "type": "noop", "duplicate": False}, status_code=202)


app = Starlette(routes=[Route("/webhooks/{source}", noop, methods=["POST"])])
