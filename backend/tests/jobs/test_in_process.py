"""Jobs without a queue (SQLite, the quick start): the same functions run in the
API's process once the transaction commits, after the response; nothing runs
for a transaction rolled back. Runs on PostgreSQL and SQLite alike."""

import subprocess
import sys
from pathlib import Path

import pytest
from httpx import AsyncClient
from sqlmodel.ext.asyncio.session import AsyncSession

from app import jobs
from app.core.config import BACKEND_DIR, settings
from app.models import Role
from tests.utils import factories
from tests.utils.api import auth_headers
from tests.utils.smtp import SmtpSink

API = settings.API_V1_STR


@pytest.mark.parametrize(
    ("database_url", "in_process"),
    [("sqlite+aiosqlite:///app.db", True), ("postgresql://db/app", False)],
)
def test_jobs_run_in_process_on_sqlite_only(
    database_url: str, in_process: bool
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from app import jobs; print(jobs.in_process)"],
        cwd=BACKEND_DIR,
        env={"PATH": "", "ENVIRONMENT": "local", "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(in_process)


def test_no_worker_on_sqlite(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "worker"],
        cwd=BACKEND_DIR,
        env={
            "PATH": "",
            "ENVIRONMENT": "local",
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/app.db",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "No job queue on SQLite" in done.stderr


async def test_a_committed_job_runs_and_a_rolled_back_one_does_not(
    db: AsyncSession, smtp_server: SmtpSink
) -> None:
    await jobs.defer(db, jobs.send_test_email, email="rolled-back@example.com")
    await db.rollback()
    await jobs.defer(db, jobs.send_test_email, email="committed@example.com")
    assert smtp_server.messages == []  # not before the commit
    await db.commit()
    await jobs.wait_in_process()

    [message] = smtp_server.messages
    assert message["To"] == "committed@example.com"
    assert message["Message-ID"].endswith("@example.com>")


async def test_signup_email_sent_after_the_response(
    client: AsyncClient, smtp_server: SmtpSink
) -> None:
    email = factories.random_email()
    response = await client.post(
        f"{API}/users/signup", json={"email": email, "password": "a-long-password-1"}
    )

    assert response.status_code == 200
    [message] = smtp_server.messages
    assert message["To"] == email
    body = message.get_body(("plain",))
    assert body is not None and "/verify-email?token=" in body.get_content()


async def test_job_counts_are_for_staff(client: AsyncClient, db: AsyncSession) -> None:
    admin = await factories.create_user(db, role=Role.admin)
    user = await factories.create_user(db)

    response = await client.get(
        f"{API}/utils/jobs/", headers=await auth_headers(db, admin)
    )
    assert response.status_code == 200
    assert response.json() == {
        "todo": 0,
        "doing": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "aborted": 0,
        "in_process": True,
    }
    response = await client.get(
        f"{API}/utils/jobs/", headers=await auth_headers(db, user)
    )
    assert response.status_code == 403
