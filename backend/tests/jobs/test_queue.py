"""The queue in PostgreSQL: jobs deferred in our transactions, the clean-up of
old jobs, the procrastinate schema of our migrations (PostgreSQL only)."""

from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from app import jobs
from app.core.config import settings
from tests.utils import factories
from tests.utils.jobs import Sessions

pytestmark = pytest.mark.queue

SCHEMA = (
    Path(__file__).resolve().parents[2]
    / "app"
    / "alembic"
    / "sql"
    / "procrastinate-3.10.0.sql"
)


async def rows(session: AsyncSession, sql: str, **params: Any) -> list[Any]:
    result = await session.exec(text(sql).bindparams(**params))  # type: ignore[call-overload]
    return list(result.all())


async def queued(sessions: Sessions) -> list[tuple[str, str, dict[str, Any]]]:
    async with sessions() as session:
        return [
            (task, status, args)
            for task, status, args in await rows(
                session,
                "SELECT task_name, status::text, args FROM procrastinate_jobs"
                " WHERE queue_name = 'emails' ORDER BY id",
            )
        ]


def test_vendored_schema_is_the_installed_procrastinate_schema() -> None:
    """Upgrading procrastinate needs a migration (backend/README.md): this fails
    until its schema is vendored again with it."""
    installed = resources.files("procrastinate.sql") / "schema.sql"
    assert SCHEMA.read_text() == installed.read_text()


async def test_a_job_exists_once_its_transaction_commits(sessions: Sessions) -> None:
    async with sessions() as session:
        await jobs.defer(session, jobs.send_test_email, email="a@example.com")
        # Not visible outside the transaction yet.
        assert await queued(sessions) == []
        await session.commit()

    [(task, status, args)] = await queued(sessions)
    assert (task, status, args["email"]) == ("send_test_email", "todo", "a@example.com")
    assert len(args["job_key"]) == 32 and args["request_id"] == "-"


async def test_a_rolled_back_transaction_leaves_no_job(sessions: Sessions) -> None:
    async with sessions() as session:
        user = await factories.create_user(session)
        await jobs.defer(session, jobs.send_password_changed, user_id=str(user.id))
        await session.rollback()
    async with sessions() as session:
        await jobs.defer(session, jobs.send_test_email, email="a@example.com")
        # Closed without a commit, like a request that failed after deferring.

    assert await queued(sessions) == []


async def test_a_request_that_ends_without_commit_leaves_no_job(
    sessions: Sessions,
) -> None:
    """The request's session ends with COMMIT when it only read; a deferred job
    is a write, so a request that failed after deferring rolls it back."""
    session = sessions()
    await jobs.defer(session, jobs.send_test_email, email="a@example.com")
    await session.close()

    assert await queued(sessions) == []


@pytest.mark.usefixtures("queue")
async def test_old_finished_jobs_are_deleted_and_the_rest_kept(
    sessions: Sessions,
) -> None:
    async with sessions() as session:
        for index in range(5):
            await jobs.defer(
                session, jobs.send_test_email, email=f"{index}@example.com"
            )
        await session.commit()
        # 0: succeeded long ago, 1: succeeded recently, 2: failed long ago,
        # 3: cancelled long ago, 4: still to do.
        await session.exec(  # type: ignore[call-overload]
            text(
                "UPDATE procrastinate_jobs SET status = 'doing'"
                " WHERE args->>'email' IN ('0@example.com', '1@example.com', '2@example.com')"
            )
        )
        for email, status in (
            ("0@example.com", "succeeded"),
            ("1@example.com", "succeeded"),
            ("2@example.com", "failed"),
            ("3@example.com", "cancelled"),
        ):
            await session.exec(  # type: ignore[call-overload]
                text(
                    "UPDATE procrastinate_jobs SET status = CAST(:status AS procrastinate_job_status)"
                    " WHERE args->>'email' = :email"
                ).bindparams(status=status, email=email)
            )
        await session.exec(  # type: ignore[call-overload]
            text(
                "UPDATE procrastinate_events SET at = at - :age"
                " WHERE job_id IN (SELECT id FROM procrastinate_jobs"
                " WHERE args->>'email' <> '1@example.com')"
            ).bindparams(age=timedelta(days=settings.JOBS_KEEP_DAYS, hours=1))
        )
        await session.commit()

    await jobs.delete_old_jobs.func(timestamp=0)

    kept = sorted((args["email"], status) for _, status, args in await queued(sessions))
    assert kept == [
        ("1@example.com", "succeeded"),
        ("2@example.com", "failed"),
        ("4@example.com", "todo"),
    ]


async def test_job_counts_by_status(sessions: Sessions) -> None:
    async with sessions() as session:
        assert await jobs.count_jobs(session) == {}
        for _ in range(2):
            await jobs.defer(session, jobs.send_test_email, email="a@example.com")
        await session.commit()
        assert await jobs.count_jobs(session) == {"todo": 2}


@pytest.mark.parametrize("hours", [24, 72])
def test_email_retries_cover_the_delivery_hours(
    monkeypatch: pytest.MonkeyPatch, hours: int
) -> None:
    monkeypatch.setattr(settings, "EMAIL_DELIVERY_HOURS", hours)
    monkeypatch.setattr(settings, "EMAIL_JOB_RETRY_WAIT_SECONDS", 60)
    waits: list[timedelta] = []
    while (wait := jobs.email_retry_wait(len(waits))) is not None:
        waits.append(wait)

    assert waits[:3] == [
        timedelta(minutes=1),
        timedelta(minutes=2),
        timedelta(minutes=4),
    ]
    assert max(waits) == jobs.MAX_RETRY_WAIT
    covered = sum(waits, timedelta())
    assert timedelta(hours=hours) <= covered < timedelta(hours=hours + 1)
