"""The ceiling of the benchmark: the least an API request on this stack can cost.

A raw ASGI app, served like the API (gunicorn, uvicorn workers), that runs one
`SELECT 1` per request on an engine from the app's own factory
(`app.core.db.create_engine`: same driver, pool and connection settings) and
answers a tiny JSON body. bench/run.py compares every scenario with it:

    gunicorn bench.ceiling:app -k uvicorn_worker.UvicornWorker -w 2
"""

import json

from sqlalchemy import text
from starlette.types import Receive, Scope, Send

from app.core.config import settings
from app.core.db import create_engine

engine = create_engine(settings.SQLALCHEMY_DATABASE_URI)
HEADERS = [(b"content-type", b"application/json")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await engine.dispose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    async with engine.connect() as connection:
        value = await connection.scalar(text("SELECT 1"))
    body = json.dumps({"db": value}).encode()
    length = (b"content-length", str(len(body)).encode())
    await send(
        {"type": "http.response.start", "status": 200, "headers": [*HEADERS, length]}
    )
    await send({"type": "http.response.body", "body": body})
