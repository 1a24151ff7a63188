import asyncio
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
from tests.conftest import alembic_config

VERSIONS_DIR = Path(__file__).resolve().parents[1] / "app" / "alembic" / "versions"


def _schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
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


def test_one_initial_migration() -> None:
    assert len(list(VERSIONS_DIR.glob("*.py"))) == 1


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
