"""The benchmark's list ceiling (bench/ceiling.py) runs exactly the SQL of
GET /items/: change the list's queries and this fails until the ceiling follows."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from httpx import AsyncClient
from sqlalchemy import event
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import User
from bench.ceiling import CURRENT_USER_SQL, ITEMS_PAGE_SQL
from tests.utils.api import auth_headers


@contextmanager
def recorded_statements(db: AsyncSession) -> Iterator[list[str]]:
    statements: list[str] = []
    connection = db.bind.sync_connection  # type: ignore[union-attr]

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "SAVEPOINT" not in statement:  # the tests' rolled-back transaction
            statements.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(connection, "before_cursor_execute", record)


def without_casts_and_names(statement: str) -> str:
    """A statement without PostgreSQL's casts, its parameters as SQLite's `?`,
    its whitespace as single spaces (the dialects break lines differently)."""
    statement = re.sub(r"::(UUID|INTEGER|TIMESTAMP WITH TIME ZONE)", "", statement)
    return " ".join(re.sub(r"%\(\w+\)s", "?", statement).split())


async def test_list_ceiling_runs_the_items_list_sql(
    client: AsyncClient, db: AsyncSession, user: User
) -> None:
    headers = await auth_headers(db, user)
    with recorded_statements(db) as statements:
        response = await client.get("/api/v1/items/?limit=100", headers=headers)
    assert response.status_code == 200
    expected = [CURRENT_USER_SQL, ITEMS_PAGE_SQL]
    if (await db.connection()).dialect.name == "sqlite":  # the ceiling: PostgreSQL
        statements = [" ".join(statement.split()) for statement in statements]
        expected = [without_casts_and_names(statement) for statement in expected]
    assert statements == expected
