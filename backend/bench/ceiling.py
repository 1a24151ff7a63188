"""The ceilings of the benchmark: the least a request on this stack can cost.

Raw ASGI apps (no framework, no ORM, no validation), served like the API
(gunicorn, uvicorn workers), on an engine from the app's own factory
(`app.core.db.create_engine`: same driver, pool and connection settings).
bench/run.py measures each scenario in turn with its ceiling:

    gunicorn bench.ceiling:app -k uvicorn_worker.UvicornWorker -w 2    # SELECT 1
    gunicorn bench.ceiling:items -k uvicorn_worker.UvicornWorker -w 2  # the items list

`items` answers `GET /?user_id=…&session_id=…&limit=100` with exactly the
statements `GET /api/v1/items/?limit=100` runs (its token's user and session
check, the page with its count, in one transaction; tests/bench/ holds the
two to the same SQL) and the same JSON body, written with the standard library.
"""

import base64
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import text
from starlette.types import Receive, Scope, Send

from app.core.config import settings
from app.core.db import create_engine

engine = create_engine(settings.SQLALCHEMY_DATABASE_URI)
HEADERS = [(b"content-type", b"application/json")]

# Captured from the app (SQLAlchemy's echo of GET /api/v1/items/?limit=100 as
# an ordinary user), parameters in psycopg's style.
CURRENT_USER_SQL = (
    "SELECT users.email, users.is_active, users.full_name, users.id,"
    " users.hashed_password, users.role, users.email_verified_at,"
    " users.created_at, users.updated_at \n"
    "FROM users JOIN user_sessions ON user_sessions.user_id = users.id \n"
    "WHERE users.id = %(user_id)s::UUID AND user_sessions.id = %(session_id)s::UUID"
    " AND user_sessions.revoked_at IS NULL"
    " AND user_sessions.expires_at > %(now)s::TIMESTAMP WITH TIME ZONE"
)
ITEMS_PAGE_SQL = (
    "SELECT items.id, items.title, items.description, items.owner_id,"
    " items.created_at, (SELECT count(*) AS count_1 \n"
    "FROM items \n"
    "WHERE items.owner_id = %(owner_id)s::UUID) AS anon_1 \n"
    "FROM items \n"
    "WHERE items.owner_id = %(owner_id)s::UUID"
    " ORDER BY items.created_at DESC, items.id DESC \n"
    " LIMIT %(limit)s OFFSET %(skip)s"
)

Handler = Callable[[Scope], Awaitable[tuple[int, Any]]]


def asgi(handler: Handler) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A raw ASGI app answering every HTTP request with `handler`'s JSON."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
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
        status, content = await handler(scope)
        body = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()
        length = (b"content-length", str(len(body)).encode())
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*HEADERS, length],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return application


async def select_one(_scope: Scope) -> tuple[int, Any]:
    async with engine.connect() as connection:
        value = await connection.scalar(text("SELECT 1"))
    return 200, {"db": value}


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")  # pydantic's form of UTC


async def items_page(scope: Scope) -> tuple[int, Any]:
    query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
    if "user_id" not in query:  # the benchmark's readiness probe
        return 200, {"ready": True}
    limit = int(query.get("limit", 100))
    user = {
        "user_id": query["user_id"],
        "session_id": query["session_id"],
        "now": datetime.now().astimezone(),
    }
    page = {"owner_id": query["user_id"], "limit": limit, "skip": 0}
    async with engine.begin() as connection:  # BEGIN ... COMMIT, like the app
        if (await connection.exec_driver_sql(CURRENT_USER_SQL, user)).first() is None:
            return 401, {"detail": "Could not validate credentials"}
        rows = (await connection.exec_driver_sql(ITEMS_PAGE_SQL, page)).all()
    data = [
        {
            "id": str(row.id),
            "title": row.title,
            "description": row.description,
            "owner_id": str(row.owner_id),
            "created_at": iso(row.created_at),
        }
        for row in rows
    ]
    cursor = None
    if len(rows) == limit:
        position = f"{rows[-1].created_at.isoformat()}|{rows[-1].id}"
        cursor = base64.urlsafe_b64encode(position.encode()).decode()
    count = rows[0][-1] if rows else 0
    return 200, {"data": data, "count": count, "next_cursor": cursor}


app = asgi(select_one)
items = asgi(items_page)
