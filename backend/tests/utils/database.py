"""Databases of the tests' own beside the app's, never the app's database itself."""

from collections.abc import Iterator
from pathlib import Path

import psycopg
from alembic.config import Config
from sqlalchemy import URL

from app.core.config import BACKEND_DIR, settings


def _postgres_admin_dsn(url: URL) -> str:
    admin = url.set(drivername="postgresql", database="postgres")
    return admin.render_as_string(hide_password=False)


def _recreate_postgres_database(url: URL) -> None:
    assert url.database
    with psycopg.connect(_postgres_admin_dsn(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{url.database}"')


def _drop_postgres_database(url: URL) -> None:
    with psycopg.connect(_postgres_admin_dsn(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


def alembic_config(url: URL) -> Config:
    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    config.attributes["configure_logger"] = False
    return config


def empty_database(suffix: str, tmp_dir: Path) -> Iterator[URL]:
    """A new, empty database beside the configured one (`<name>_<suffix>`, or a temp
    SQLite file), dropped afterwards. The app's own database is never touched."""
    app_url = settings.SQLALCHEMY_DATABASE_URI
    if app_url.get_backend_name() == "sqlite":
        yield app_url.set(database=str(tmp_dir / f"{suffix}.db"))
        return
    url = app_url.set(database=f"{app_url.database}_{suffix}")
    _recreate_postgres_database(url)
    yield url
    _drop_postgres_database(url)
