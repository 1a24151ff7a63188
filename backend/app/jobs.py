"""Background jobs: emails and clean-ups (procrastinate).

On PostgreSQL the queue lives in our database and `python manage.py worker` runs
it. A job is deferred in the transaction of the change that causes it (`defer`):
it exists if and only if that change is committed, and it survives restarts.
Delivery is at least once: a job whose worker died mid-way runs again, with the
same Message-ID, so a repeated email is recognisable as one.

On SQLite (the quick start: no worker) the same functions run in this process
once the transaction commits, after the response (`InProcessJobsMiddleware`).
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

import procrastinate
import psycopg_pool
from asgi_correlation_id import correlation_id
from procrastinate.jobs import Job
from procrastinate.tasks import Task
from sqlalchemy import event, text
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.types import ASGIApp, Receive, Scope, Send

from app import crud, emails
from app.core import db, ratelimit, security
from app.core.config import settings
from app.models import utcnow

logger = logging.getLogger(__name__)

# The longest wait between two tries of an email job.
MAX_RETRY_WAIT = timedelta(hours=1)


def _conninfo() -> str:
    url = settings.SQLALCHEMY_DATABASE_URI.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


# The API defers on its own connections (`defer`); the worker and the commands
# open the queue with a pool of their own (`opened`).
queue = procrastinate.App(connector=procrastinate.PsycopgConnector())

# Where job functions open their database sessions (tests point it elsewhere).
sessions: Callable[[], AsyncSession] = db.session_factory
# Run jobs in this process after the commit instead of queueing them.
in_process: bool = settings.SQLALCHEMY_DATABASE_URI.get_backend_name() == "sqlite"


# Emails


def email_retry_wait(attempts: int) -> timedelta | None:
    """The wait before the next try of an email job that failed `attempts + 1`
    times: doubling from EMAIL_JOB_RETRY_WAIT_SECONDS up to an hour, and None
    once the waits so far cover EMAIL_DELIVERY_HOURS."""
    first = timedelta(seconds=settings.EMAIL_JOB_RETRY_WAIT_SECONDS)

    def wait(attempt: int) -> timedelta:
        return min(first * (1 << min(attempt, 32)), MAX_RETRY_WAIT)

    waited = sum((wait(attempt) for attempt in range(attempts)), timedelta())
    if waited >= timedelta(hours=settings.EMAIL_DELIVERY_HOURS):
        return None
    return wait(attempts)


class EmailRetry(procrastinate.BaseRetryStrategy):
    """Transient failures (server down, 4xx replies) are retried with backoff;
    a refusal (5xx, bad credentials, TLS) fails the job at once."""

    def get_retry_decision(
        self, *, exception: BaseException, job: Job
    ) -> procrastinate.RetryDecision | None:
        wait = (
            email_retry_wait(job.attempts)
            if isinstance(exception, emails.EmailNotSent) and exception.transient
            else None
        )
        if wait is None:
            token = correlation_id.set(str(job.task_kwargs.get("request_id", "-")))
            try:
                logger.error(
                    "Email job %s (%s) failed for good after %d tries: %s",
                    job.id,
                    job.task_name,
                    job.attempts + 1,
                    exception,
                )
            finally:
                correlation_id.reset(token)
            return None
        return procrastinate.RetryDecision(retry_at=utcnow() + wait)


def message_id(job_key: str) -> str:
    """The Message-ID of a job's email: the same on every try, so that a resent
    copy is recognisable (and dropped by most mailbox providers)."""
    domain = str(settings.EMAILS_FROM_EMAIL or "localhost").rpartition("@")[2]
    return f"<{job_key}@{domain}>"


EmailBuilder = Callable[[AsyncSession], Awaitable[emails.Email | None]]


async def _send(build: EmailBuilder, *, job_key: str, request_id: str) -> None:
    """Build the email from the database as it is now (None: nothing to send),
    then deliver it; failures raise, for the retry strategy."""
    token = correlation_id.set(request_id)  # the request's id on the job's logs
    try:
        async with sessions() as session:
            email = await build(session)
        if email is None:
            return
        if in_process:  # no queue to retry later: failures are logged
            await emails.send_email(email, message_id=message_id(job_key))
        else:
            await emails.deliver(email, message_id=message_id(job_key))
    finally:
        correlation_id.reset(token)


def email_task(func: Callable[..., Awaitable[None]]) -> Task[Any, Any, Any]:
    return queue.task(name=func.__name__, queue="emails", retry=EmailRetry())(func)


@email_task
async def send_password_recovery(*, email: str, job_key: str, request_id: str) -> None:
    """The recovery link, if `email` belongs to an account."""

    async def build(session: AsyncSession) -> emails.Email | None:
        user = await crud.get_user_by_email(session=session, email=email)
        # In process (SQLite), this runs in the request's time: an unknown
        # address gets the same work, a token and an email, not sent.
        token = security.create_password_reset_token(
            user.id if user else uuid.uuid4(),
            user.hashed_password if user else security.dummy_hash(),
        )
        recovery = emails.reset_password_email(user.email if user else email, token)
        return recovery if user else None

    await _send(build, job_key=job_key, request_id=request_id)


@email_task
async def send_verification(*, email: str, job_key: str, request_id: str) -> None:
    """A verification link, if `email` belongs to an account not yet verified."""

    async def build(session: AsyncSession) -> emails.Email | None:
        user = await crud.get_user_by_email(session=session, email=email)
        address = user.email if user else email
        token = security.create_email_verification_token(
            user.id if user else uuid.uuid4(), address
        )  # the same work whatever the address (see send_password_recovery)
        verification = emails.verify_email_email(address, token)
        return verification if user and user.email_verified_at is None else None

    await _send(build, job_key=job_key, request_id=request_id)


@email_task
async def send_new_account(*, email: str, job_key: str, request_id: str) -> None:
    """The welcome email of an account created by staff, with a verification link."""

    async def build(session: AsyncSession) -> emails.Email | None:
        user = await crud.get_user_by_email(session=session, email=email)
        if user is None:
            return None
        token = security.create_email_verification_token(user.id, user.email)
        return emails.new_account_email(user.email, token)

    await _send(build, job_key=job_key, request_id=request_id)


@email_task
async def send_password_changed(*, user_id: str, job_key: str, request_id: str) -> None:
    """The notice that the account's password was changed."""

    async def build(session: AsyncSession) -> emails.Email | None:
        user = await crud.get_user(session=session, user_id=uuid.UUID(user_id))
        return emails.password_changed_email(user.email) if user else None

    await _send(build, job_key=job_key, request_id=request_id)


@email_task
async def send_email_changed(
    *, old_email: str, new_email: str, job_key: str, request_id: str
) -> None:
    """The notice to an account's previous address that its email changed."""

    async def build(_session: AsyncSession) -> emails.Email:
        return emails.email_changed_email(old_email, new_email)

    await _send(build, job_key=job_key, request_id=request_id)


@email_task
async def send_login_alert(*, email: str, job_key: str, request_id: str) -> None:
    """The warning to an account's owner that logins to it are being refused."""

    async def build(session: AsyncSession) -> emails.Email | None:
        user = await crud.get_user_by_email(session=session, email=email)
        return emails.login_attempts_email(user.email) if user else None

    await _send(build, job_key=job_key, request_id=request_id)


@email_task
async def send_test_email(*, email: str, job_key: str, request_id: str) -> None:
    """The test email a superuser asked for."""

    async def build(_session: AsyncSession) -> emails.Email:
        return emails.test_email(email)

    await _send(build, job_key=job_key, request_id=request_id)


# Deferring


async def defer(
    session: AsyncSession, task: Task[Any, Any, Any], **kwargs: Any
) -> None:
    """Enqueue `task(**kwargs)` in the session's transaction: it runs once the
    transaction commits, and never if it rolls back. The caller commits."""
    kwargs |= {"job_key": uuid.uuid4().hex, "request_id": correlation_id.get() or "-"}
    connection = await session.connection()  # begins the transaction, if none
    if in_process:
        _run_after_commit(session, task.name, lambda: task.func(**kwargs))
        return
    # procrastinate's documented way to defer within a transaction of ours: its
    # INSERT on the psycopg connection under the session.
    raw_connection = await connection.get_raw_connection()
    await task.configure(connection=raw_connection.driver_connection).defer_async(
        **kwargs
    )
    # Written outside the ORM: the request's end must not commit it alone.
    db.mark_written(session)


async def send_soon(
    session: AsyncSession, task: Task[Any, Any, Any], **kwargs: Any
) -> None:
    """Defer `task` and commit: for a job that no other change comes with."""
    await defer(session, task, **kwargs)
    await session.commit()


# In process (SQLite)

_PENDING = "app.jobs.pending"
# The jobs a request's commits released, run after its response.
_after_response: ContextVar[list[tuple[str, Callable[[], Awaitable[None]]]] | None] = (
    ContextVar("after_response", default=None)
)
_running: set[asyncio.Task[None]] = set()


def _run_after_commit(
    session: AsyncSession, name: str, call: Callable[[], Awaitable[None]]
) -> None:
    sync_session = session.sync_session
    if _PENDING not in sync_session.info:
        sync_session.info[_PENDING] = []
        # Listeners on this session object only, not on every session.
        event.listen(sync_session, "after_commit", _release)
        event.listen(sync_session, "after_transaction_end", _forget)
    sync_session.info[_PENDING].append((name, call))


def _release(sync_session: Session) -> None:
    released = sync_session.info[_PENDING]
    sync_session.info[_PENDING] = []
    after_response = _after_response.get()
    if after_response is not None:
        after_response.extend(released)
        return
    for name, call in released:  # outside a request: now, in the background
        task = asyncio.get_running_loop().create_task(_run_logged(name, call))
        _running.add(task)
        task.add_done_callback(_running.discard)


def _forget(sync_session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # rolled back or closed without a commit
        sync_session.info[_PENDING] = []


async def _run_logged(name: str, call: Callable[[], Awaitable[None]]) -> None:
    try:
        await call()
    except Exception:
        logger.exception("Job %s failed (in process)", name)


async def wait_in_process() -> None:
    """Wait for the jobs running in this process outside requests."""
    while _running:
        await asyncio.gather(*_running)


class InProcessJobsMiddleware:
    """Runs the in-process jobs a request released, after its response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not in_process:
            await self.app(scope, receive, send)
            return
        released: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        token = _after_response.set(released)
        try:
            await self.app(scope, receive, send)
        finally:
            _after_response.reset(token)
            for name, call in released:
                await _run_logged(name, call)


# Periodic clean-ups


@queue.periodic(cron="* * * * *")
@queue.task(name="retry_stalled_jobs", queueing_lock="retry_stalled_jobs")
async def retry_stalled_jobs(timestamp: int) -> None:  # noqa: ARG001
    """Run again the jobs of workers that stopped beating (killed mid-job)."""
    await retry_stalled()


async def retry_stalled() -> int:
    manager = queue.job_manager
    stalled = await manager.get_stalled_jobs(
        seconds_since_heartbeat=settings.JOBS_STALLED_SECONDS
    )
    for job in stalled:
        logger.warning("Job %s (%s) stalled: running it again", job.id, job.task_name)
        await manager.retry_job(job)
    return len(list(stalled))


@queue.periodic(cron="17 * * * *")
@queue.task(name="delete_expired_rows", queueing_lock="delete_expired_rows")
async def delete_expired_rows(timestamp: int) -> None:  # noqa: ARG001
    """Delete ended sessions and their refresh tokens, and rate-limit rows
    older than every window."""
    async with sessions() as session:
        tokens, old_sessions = await crud.delete_ended_sessions(
            session=session, now=utcnow()
        )
        attempts = await ratelimit.delete_expired_attempts(session, now=utcnow())
    logger.info(
        "Deleted %d refresh tokens, %d sessions, %d rate-limit rows",
        tokens,
        old_sessions,
        attempts,
    )


@queue.periodic(cron="42 3 * * *")
@queue.task(name="delete_old_jobs", queueing_lock="delete_old_jobs")
async def delete_old_jobs(timestamp: int) -> None:  # noqa: ARG001
    """Delete jobs that succeeded or were cancelled JOBS_KEEP_DAYS ago (failed
    ones stay, to be retried or looked into)."""
    await queue.job_manager.delete_old_jobs(
        nb_hours=settings.JOBS_KEEP_DAYS * 24, include_cancelled=True
    )


@queue.periodic(cron="51 3 * * *")
@queue.task(name="delete_old_audit_events", queueing_lock="delete_old_audit_events")
async def delete_old_audit_events(timestamp: int) -> None:  # noqa: ARG001
    """Delete audit events older than AUDIT_RETENTION_DAYS."""
    async with sessions() as session:
        deleted = await crud.delete_old_audit_events(session=session, now=utcnow())
    logger.info("Deleted %d audit events", deleted)


# Operability


async def count_jobs(session: AsyncSession) -> dict[str, int]:
    """Jobs by status (todo, doing, succeeded, failed...); none on SQLite."""
    if in_process:
        return {}
    rows = await session.exec(  # type: ignore[call-overload]
        text("SELECT status, count(*) FROM procrastinate_jobs GROUP BY status")
    )
    return {str(status): int(count) for status, count in rows}


@asynccontextmanager
async def opened(conninfo: str | None = None) -> AsyncIterator[procrastinate.App]:
    """The queue with a connection pool open on the database (the app's, or
    `conninfo`); psycopg_pool.PoolTimeout when it cannot be reached."""
    async with psycopg_pool.AsyncConnectionPool(
        conninfo or _conninfo(),
        open=False,
        min_size=1,
        max_size=settings.JOBS_WORKER_CONCURRENCY + 4,
        kwargs={"connect_timeout": settings.DB_CONNECT_TIMEOUT},
        # A connection the database dropped is replaced, not handed out.
        check=psycopg_pool.AsyncConnectionPool.check_connection,
    ) as pool:
        await pool.wait(timeout=settings.DB_CONNECT_TIMEOUT * 2)
        # A connector per opening: one given a pool keeps it after closing.
        with queue.replace_connector(procrastinate.PsycopgConnector()):
            async with queue.open_async(pool=pool):
                yield queue
