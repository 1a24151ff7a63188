"""The list queries the API really runs are answered from indexes: no full scan
of `items` or `audit_events` once the table is large (checked with EXPLAIN on
both databases)."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import event, insert
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models import AuditAction, AuditEvent, Item, User
from tests.utils.api import auth_headers

OWNERS = 200
ITEMS_PER_OWNER = 100


async def seed_items(db: AsyncSession, user: User) -> None:
    owners = [
        User(email=f"owner-{n}@example.com", hashed_password="x") for n in range(OWNERS)
    ]
    db.add_all(owners)
    await db.commit()
    start = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "title": f"item {n}",
            "owner_id": owner.id,
            "created_at": start - timedelta(seconds=n),
            "updated_at": start,
        }
        for owner in [*owners, user]
        for n in range(ITEMS_PER_OWNER)
    ]
    await db.exec(insert(Item), params=rows)
    await db.commit()
    await (await db.connection()).exec_driver_sql("ANALYZE")


@contextmanager
def recorded_statements(
    db: AsyncSession, table: str = "FROM items"
) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []
    connection = db.bind.sync_connection  # type: ignore[union-attr]

    def record(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any
    ) -> None:
        if table in statement:
            statements.append((statement, parameters))

    event.listen(connection, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(connection, "before_cursor_execute", record)


async def plan(db: AsyncSession, statement: str, parameters: Any) -> str:
    connection = await db.connection()
    explain = (
        "EXPLAIN QUERY PLAN " if connection.dialect.name == "sqlite" else "EXPLAIN "
    )
    result = await connection.exec_driver_sql(explain + statement, parameters)
    return "\n".join(" ".join(str(column) for column in row) for row in result)


def assert_no_full_scan_of_items(query_plan: str) -> None:
    assert "Seq Scan on items" not in query_plan  # PostgreSQL
    assert "SCAN items" not in query_plan.replace("SCAN items USING", "")  # SQLite
    assert "ix_items_owner_id_created_at_id" in query_plan


async def test_item_list_pages_use_the_owner_index(
    client: AsyncClient, db: AsyncSession, user: User
) -> None:
    await seed_items(db, user)
    headers = await auth_headers(db, user)
    with recorded_statements(db) as statements:
        first = await client.get("/api/v1/items/?limit=10", headers=headers)
        cursor = first.json()["next_cursor"]
        second = await client.get(
            f"/api/v1/items/?limit=10&cursor={cursor}", headers=headers
        )
    assert first.json()["count"] == second.json()["count"] == ITEMS_PER_OWNER
    assert len(statements) == 2  # one page with its total, twice
    for statement, parameters in statements:
        assert_no_full_scan_of_items(await plan(db, statement, parameters))


async def seed_audit_events(db: AsyncSession, targets: list[User]) -> None:
    start = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "id": uuid.uuid4(),
            "created_at": start - timedelta(seconds=n),
            "action": AuditAction.login_succeeded if n % 50 else AuditAction.logout,
            "actor_id": target.id,
            "target_id": target.id,
            "target_role": target.role,
            "details": {},
        }
        for target in targets
        for n in range(ITEMS_PER_OWNER)
    ]
    await db.exec(insert(AuditEvent), params=rows)
    await db.commit()
    await (await db.connection()).exec_driver_sql("ANALYZE")


@pytest.mark.parametrize(
    ("filters", "count", "index"),
    [
        # Actor or target: each index answers its side of the OR.
        ("user_id={user}", ITEMS_PER_OWNER, "ix_audit_events_target_id_created_at_id"),
        ("action=logout", OWNERS * 2, "ix_audit_events_action_created_at_id"),
    ],
)
async def test_audit_event_filters_use_their_index(
    client: AsyncClient,
    db: AsyncSession,
    superuser: User,
    filters: str,
    count: int,
    index: str,
) -> None:
    targets = [
        User(email=f"target-{n}@example.com", hashed_password="x")
        for n in range(OWNERS)
    ]
    db.add_all(targets)
    await db.commit()
    await seed_audit_events(db, targets)
    headers = await auth_headers(db, superuser)
    query = filters.format(user=targets[0].id)
    with recorded_statements(db, "FROM audit_events") as statements:
        response = await client.get(
            f"/api/v1/audit-events/?limit=10&{query}", headers=headers
        )
    assert response.status_code == 200
    assert response.json()["count"] == count
    [(statement, parameters)] = statements
    query_plan = await plan(db, statement, parameters)
    assert "Seq Scan on audit_events" not in query_plan  # PostgreSQL
    assert "SCAN audit_events" not in query_plan.replace("SCAN audit_events USING", "")
    assert index in query_plan
