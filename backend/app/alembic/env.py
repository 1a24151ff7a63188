import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, make_url
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from app.core.config import settings
from app.core.db import create_engine

config = context.config
if config.config_file_name is not None and config.attributes.get(
    "configure_logger", True
):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata
# The advisory lock that migrations of this database hold ("alembic" in ASCII).
MIGRATIONS_LOCK_ID = 0x616C656D626963


def include_name(name: str | None, type_: str, _parents: object) -> bool:
    """Autogenerate compares our tables only: procrastinate's come from its SQL."""
    return not (type_ == "table" and (name or "").startswith("procrastinate_"))


def database_url() -> str:
    """The URL given with `sqlalchemy.url` (tests do), else the app's own."""
    return config.get_main_option(
        "sqlalchemy.url"
    ) or settings.SQLALCHEMY_DATABASE_URI.render_as_string(hide_password=False)


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=include_name,
        # SQLite can only ALTER a table by copying it: batch mode does that.
        render_as_batch=connection.dialect.name == "sqlite",
        # All migrations in one transaction on SQLite too (its DDL is
        # transactional; Alembic assumes not and commits after each one, which
        # let concurrent starts interleave: "duplicate column name").
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Starts at once (replicas, --scale, Swarm, Kubernetes) take turns: the
            # first migrates, the others wait here until it commits, then find
            # nothing left to do. (SQLite's BEGIN IMMEDIATE, app/core/db.py, does
            # the same.)
            connection.exec_driver_sql(
                f"SELECT pg_advisory_xact_lock({MIGRATIONS_LOCK_ID})"
            )
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_engine(make_url(database_url()))
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        include_name=include_name,
        render_as_batch=make_url(database_url()).get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
