import asyncio
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import URL, Connection, inspect
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import create_engine
from app.models import User
from tests.utils.database import alembic_config

BACKEND_DIR = Path(__file__).resolve().parents[1]
VERSIONS_DIR = BACKEND_DIR / "app" / "alembic" / "versions"


def _schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            # procrastinate's tables (migration 0003) are not in our models.
            "include_name": lambda name, type_, _parents: (
                not (type_ == "table" and name.startswith("procrastinate_"))
            ),
        },
    )
    with warnings.catch_warnings():
        # SQLite cannot reflect the lower(email) index; its uniqueness is
        # checked by behaviour in test_email_unique_whatever_the_case.
        warnings.simplefilter("ignore")
        differences: list[Any] = compare_metadata(context, SQLModel.metadata)
        return differences


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def _inspect(url: URL) -> tuple[list[Any], set[str]]:
    engine = create_engine(url)
    async with engine.connect() as connection:
        differences = await connection.run_sync(_schema_differences)
        tables = await connection.run_sync(_table_names)
    await engine.dispose()
    return differences, tables


def test_migrations_form_one_line() -> None:
    revisions = sorted(
        path.name.split("-")[1][:4] for path in VERSIONS_DIR.glob("*.py")
    )
    assert revisions == [f"{number:04d}" for number in range(1, len(revisions) + 1)]


async def _execute(url: URL, sql: str) -> list[Any]:
    engine = create_engine(url)
    async with engine.begin() as connection:
        result = await connection.exec_driver_sql(sql)
        rows = list(result.all()) if result.returns_rows else []
    await engine.dispose()
    return rows


async def test_roles_migration_keeps_superusers(scratch_database_url: URL) -> None:
    config = alembic_config(scratch_database_url)
    await asyncio.to_thread(command.upgrade, config, "0001")
    await _execute(
        scratch_database_url,
        "INSERT INTO users (id, email, is_active, is_superuser, hashed_password,"
        " created_at, updated_at) VALUES"
        " ('00000000-0000-0000-0000-000000000001', 'boss@example.com', true, true,"
        " 'x', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00'),"
        " ('00000000-0000-0000-0000-000000000002', 'staff@example.com', true, false,"
        " 'x', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
    )

    await asyncio.to_thread(command.upgrade, config, "head")
    roles = await _execute(scratch_database_url, "SELECT email, role FROM users")
    assert sorted(roles) == [
        ("boss@example.com", "superadmin"),
        ("staff@example.com", "user"),
    ]
    with pytest.raises(IntegrityError):  # the CHECK constraint on role
        await _execute(scratch_database_url, "UPDATE users SET role = 'root'")

    with pytest.raises(IntegrityError):  # lower(email) is still unique
        await _execute(
            scratch_database_url,
            "UPDATE users SET email = 'BOSS@example.com' WHERE email = 'staff@example.com'",
        )

    await asyncio.to_thread(command.downgrade, config, "0001")
    flags = await _execute(
        scratch_database_url, "SELECT email, is_superuser FROM users"
    )
    assert sorted(flags) == [("boss@example.com", True), ("staff@example.com", False)]


async def test_upgrade_downgrade_upgrade_matches_models(
    scratch_database_url: URL,
) -> None:
    config = alembic_config(scratch_database_url)

    # Alembic's env.py runs its own event loop, so drive it from a thread.
    await asyncio.to_thread(command.upgrade, config, "head")
    differences, tables = await _inspect(scratch_database_url)
    assert differences == []
    assert {"users", "items", "alembic_version"} <= tables

    await asyncio.to_thread(command.downgrade, config, "base")
    _, tables = await _inspect(scratch_database_url)
    assert tables == {"alembic_version"}

    await asyncio.to_thread(command.upgrade, config, "head")
    differences, tables = await _inspect(scratch_database_url)
    assert differences == []
    assert {"users", "items"} <= tables


async def test_email_unique_whatever_the_case(db: AsyncSession) -> None:
    db.add(User(email="Case@Example.com", hashed_password="x"))
    await db.commit()
    db.add(User(email="case@example.COM", hashed_password="x"))
    with pytest.raises(IntegrityError):
        await db.commit()
    await db.rollback()


def _prestarts(url: URL, count: int) -> list[subprocess.CompletedProcess[str]]:
    """`scripts/prestart.sh` started `count` times at once, as replicas do."""
    env = {
        **os.environ,
        # the script calls `python` and `alembic`: the test's own virtualenv first
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "FIRST_SUPERUSER": "first@example.com",
        "FIRST_SUPERUSER_PASSWORD": "first-password",
    }
    started = [
        subprocess.Popen(
            ["bash", "scripts/prestart.sh"],
            cwd=BACKEND_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]
    return [
        subprocess.CompletedProcess(process.args, process.wait(timeout=300), output)
        for process in started
        for output, _ in [process.communicate(timeout=300)]
    ]


@pytest.mark.slow  # starts 13 interpreters
@pytest.mark.parametrize("starts", [3, 10])
async def test_concurrent_starts_migrate_once(
    scratch_database_url: URL, starts: int
) -> None:
    """Replicas starting together on an empty database (--scale, Swarm,
    Kubernetes): one applies the migrations, the others wait, then find nothing
    left to do; the first superuser is created once."""
    finished = await asyncio.to_thread(_prestarts, scratch_database_url, starts)

    assert [run.returncode for run in finished] == [0] * starts, [
        run.stdout for run in finished if run.returncode
    ]
    applied = sum(run.stdout.count("Running upgrade") for run in finished)
    assert applied == len(list(VERSIONS_DIR.glob("*.py")))
    users = await _execute(scratch_database_url, "SELECT email, role FROM users")
    assert users == [("first@example.com", "superadmin")]
