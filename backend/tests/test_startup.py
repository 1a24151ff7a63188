"""The startup scripts on an empty database: scripts/prestart.sh and manage.py,
run as the deployment runs them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import URL
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import create_engine
from app.models import Role, User

# Each test runs the scripts on a database of its own.
pytestmark = pytest.mark.slow

BACKEND_DIR = Path(__file__).resolve().parents[1]


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
