import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from tenacity import stop_after_attempt, wait_none

from app.backend_pre_start import wait_for_database
from app.core.db import create_engine
from app.initial_data import ensure_superuser
from app.models import Role, User
from tests.utils.servers import free_port

BACKEND_DIR = Path(__file__).resolve().parents[1]


async def test_wait_for_database_returns_when_up(engine: AsyncEngine) -> None:
    await wait_for_database(engine)


async def test_wait_for_database_gives_up_after_bounded_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = create_engine(
        make_url(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    )
    bounded = wait_for_database.retry_with(stop=stop_after_attempt(3), wait=wait_none())
    with caplog.at_level(logging.WARNING), pytest.raises(OperationalError):
        await bounded(dead)
    await dead.dispose()
    assert len([r for r in caplog.records if "Retrying" in r.getMessage()]) == 2


async def test_ensure_superuser_is_idempotent(db: AsyncSession) -> None:
    first = await ensure_superuser(db, email="root@example.com", password="password123")
    again = await ensure_superuser(
        db, email="ROOT@example.com", password="other-password"
    )
    assert first.is_superuser
    assert again.id == first.id
    assert len((await db.exec(select(User))).all()) == 1


def run_backend(args: list[str], database_url: URL) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        # the scripts call `python` and `alembic`: the test's own virtualenv first
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "FIRST_SUPERUSER": "first@example.com",
        "FIRST_SUPERUSER_PASSWORD": "first-password",
    }
    return subprocess.run(
        args,
        cwd=BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _superusers(url: URL) -> list[str]:
    engine = create_engine(url)
    async with AsyncSession(engine) as session:
        users = (
            await session.exec(select(User).where(User.role == Role.superadmin))
        ).all()
    await engine.dispose()
    return [user.email for user in users]


async def test_prestart_migrates_and_seeds_twice_safely(
    scratch_database_url: URL,
) -> None:
    for _ in range(2):
        result = run_backend(["bash", "scripts/prestart.sh"], scratch_database_url)
        assert result.returncode == 0, result.stderr
    assert await _superusers(scratch_database_url) == ["first@example.com"]


async def test_manage_initdb_and_createsuperuser(scratch_database_url: URL) -> None:
    python = sys.executable
    result = run_backend([python, "manage.py", "initdb"], scratch_database_url)
    assert result.returncode == 0, result.stderr
    assert "Superuser: first@example.com" in result.stdout
    result = run_backend(
        [
            python,
            "manage.py",
            "createsuperuser",
            "--email",
            "second@example.com",
            "--password",
            "pw-second-1",
        ],
        scratch_database_url,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(await _superusers(scratch_database_url)) == [
        "first@example.com",
        "second@example.com",
    ]
    result = run_backend(
        [python, "manage.py", "downgrade", "base"], scratch_database_url
    )
    assert result.returncode == 0, result.stderr
