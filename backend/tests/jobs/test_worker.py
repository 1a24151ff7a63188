"""Real `manage.py worker` processes on the test database, a real SMTP server on
loopback: outages of SMTP and of the database, workers killed mid-job, failed
jobs retried by command (PostgreSQL only)."""

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from asgi_correlation_id import correlation_id
from httpx import AsyncClient
from sqlalchemy import URL, text

from app import jobs
from app.core import security
from app.core.config import BACKEND_DIR, settings
from tests.utils import factories
from tests.utils.api import client_using
from tests.utils.jobs import (
    FRONTEND,
    STALLED_SECONDS,
    Mailbox,
    Sessions,
    TcpProxy,
    poll,
    worker_env,
)

API = settings.API_V1_STR
pytestmark = [pytest.mark.queue, pytest.mark.slow]


async def query(sessions: Sessions, sql: str) -> list[Any]:
    async with sessions() as session:
        result = await session.exec(text(sql))  # type: ignore[call-overload]
        return list(result.all())


async def statuses(sessions: Sessions) -> dict[str, int]:
    rows = await query(
        sessions,
        "SELECT status::text, count(*) FROM procrastinate_jobs"
        " WHERE queue_name = 'emails' GROUP BY status",
    )
    return dict(rows)


async def attempts(sessions: Sessions) -> int:
    rows = await query(
        sessions,
        "SELECT coalesce(max(attempts), 0) FROM procrastinate_jobs"
        " WHERE queue_name = 'emails'",
    )
    return int(rows[0][0])


async def no_live_worker(sessions: Sessions) -> bool:
    """The killed worker's heartbeat is old enough for its jobs to be stalled."""
    rows = await query(
        sessions,
        "SELECT count(*) FROM procrastinate_workers WHERE last_heartbeat"
        f" > now() - interval '{STALLED_SECONDS + 1} seconds'",
    )
    return int(rows[0][0]) == 0


@pytest.fixture
async def client(sessions: Sessions) -> AsyncIterator[AsyncClient]:
    """The API with sessions that commit: its jobs go to the queue."""

    async def get_session() -> AsyncIterator[Any]:
        async with sessions() as session:
            yield session

    async with client_using(get_session) as ac:
        yield ac


async def test_recovery_survives_smtp_down_and_a_worker_restart(
    sessions: Sessions, client: AsyncClient, mailbox: Mailbox, start_worker: Any
) -> None:
    async with sessions() as session:
        user = await factories.create_user(session)
    worker = start_worker()

    started = time.perf_counter()
    response = await client.post(f"{API}/password-recovery/{user.email}")
    answered = time.perf_counter() - started
    assert response.status_code == 200
    assert answered < 0.5, f"answered in {answered:.3f} s"

    # SMTP is down: the worker tries, fails, and keeps the job for later.
    await poll(lambda: _at_least(attempts(sessions), 1), 30, "a failed try")
    worker.kill()
    mailbox.up()
    worker = start_worker()

    [message] = await poll(lambda: _messages(mailbox), 60, "the recovery email")
    assert message["To"] == user.email
    link = next(
        word
        for word in message.get_body(("plain",)).get_content().split()
        if word.startswith(f"{FRONTEND}/reset-password?token=")
    )
    token = security.decode_token(
        parse_qs(urlsplit(link).query)["token"][0], token_type="password_reset"
    )
    assert token is not None and token.user_id == user.id
    await poll(lambda: _equals(statuses(sessions), {"succeeded": 1}), 10, "success")
    # procrastinate names jobs with their arguments: the address is masked.
    assert "send_password_recovery" in worker.output()
    assert user.email not in worker.output()
    assert f"email='*@{user.email.partition('@')[2]}'" in worker.output()


async def test_an_unknown_address_gets_no_email(
    sessions: Sessions, client: AsyncClient, mailbox: Mailbox, start_worker: Any
) -> None:
    mailbox.up()
    start_worker()
    response = await client.post(f"{API}/password-recovery/nobody@example.com")
    assert response.status_code == 200

    await poll(lambda: _equals(statuses(sessions), {"succeeded": 1}), 30, "the job")
    assert mailbox.sink.messages == []


async def test_a_rolled_back_signup_sends_nothing(
    sessions: Sessions, client: AsyncClient, mailbox: Mailbox, start_worker: Any
) -> None:
    mailbox.up()
    start_worker()
    async with sessions() as session:
        taken = await factories.create_user(session)
    # The same address in other case: the insert fails, the transaction rolls back.
    response = await client.post(
        f"{API}/users/signup",
        json={"email": taken.email.upper(), "password": "a-long-password-1"},
    )
    assert response.status_code == 400
    new = factories.random_email()
    response = await client.post(
        f"{API}/users/signup", json={"email": new, "password": "a-long-password-1"}
    )
    assert response.status_code == 200

    [message] = await poll(lambda: _messages(mailbox), 30, "the verification email")
    assert message["To"] == new
    await poll(lambda: _equals(statuses(sessions), {"succeeded": 1}), 10, "one job")


async def test_100_emails_with_a_worker_killed_midway(
    sessions: Sessions,
    mailbox: Mailbox,
    start_worker: Any,
    record_property: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each email arrives at least once; copies sent again after the kill carry
    the same Message-ID (counted and reported)."""
    count = 100
    async with sessions() as session:
        for index in range(count):
            await jobs.defer(
                session, jobs.send_test_email, email=f"user-{index}@example.com"
            )
        await session.commit()
    mailbox.delay = 0.05  # a slow server: the kill lands on sends in flight
    mailbox.up()
    worker = start_worker()

    await poll(lambda: _at_least(_count(mailbox), 30), 60, "30 deliveries")
    worker.kill()
    delivered_before_kill = len(mailbox.sink.messages)
    in_flight = (await statuses(sessions)).get("doing", 0)
    await poll(lambda: no_live_worker(sessions), 30, "the heartbeat to go stale")
    start_worker()

    await poll(
        lambda: _equals(statuses(sessions), {"succeeded": count}), 120, "every job"
    )
    ids = mailbox.message_ids()
    unique = set(ids)
    duplicates = len(ids) - len(unique)
    record_property("delivered", len(ids))
    record_property("duplicates", duplicates)
    with capsys.disabled():
        sys.stdout.write(
            f"\n100 emails, worker killed after {delivered_before_kill} deliveries"
            f" with {in_flight} jobs running: {len(unique)} distinct delivered,"
            f" {duplicates} duplicates\n"
        )
    assert len(unique) == count
    recipients = {str(message["To"]) for message in mailbox.sink.messages}
    assert recipients == {f"user-{index}@example.com" for index in range(count)}
    # Only a job running at the kill can be sent twice.
    assert duplicates <= in_flight


async def test_failed_email_is_logged_and_retried_by_command(
    sessions: Sessions,
    mailbox: Mailbox,
    start_worker: Any,
    migrated_database_url: URL,
) -> None:
    token = correlation_id.set("req-outage-42")
    try:
        async with sessions() as session:
            await jobs.defer(session, jobs.send_test_email, email="late@example.com")
            await session.commit()
    finally:
        correlation_id.reset(token)
    # Delivery given up after about a second of outage.
    worker = start_worker(EMAIL_DELIVERY_HOURS="0.0003")

    await poll(lambda: _equals(statuses(sessions), {"failed": 1}), 30, "failure")
    failure = next(
        line for line in worker.output().splitlines() if "failed for good" in line
    )
    assert "[req-outage-42]" in failure and "send_test_email" in failure

    env = worker_env(migrated_database_url, mailbox)
    listed = _manage(env, "jobs", "failed")
    assert "send_test_email" in listed and "request_id=req-outage-42" in listed
    assert "1 failed job(s)" in listed

    mailbox.up()
    assert "1 job(s) queued again" in _manage(env, "jobs", "retry", "--all-failed")
    [message] = await poll(lambda: _messages(mailbox), 30, "the email")
    assert message["To"] == "late@example.com"
    assert "0 failed job(s)" in _manage(env, "jobs", "failed")


async def test_worker_waits_for_the_database_and_recovers(
    sessions: Sessions,
    mailbox: Mailbox,
    start_worker: Any,
    migrated_database_url: URL,
) -> None:
    proxy = TcpProxy(migrated_database_url.port or 5432)
    through_proxy = migrated_database_url.set(host="127.0.0.1", port=proxy.port)
    mailbox.up()
    worker = start_worker(through_proxy, DB_CONNECT_TIMEOUT="2")

    # No database at start: the worker says so and keeps trying.
    await poll(lambda: _true("Database unreachable" in worker.output()), 30, "a retry")
    assert not worker.alive_file.exists()  # unhealthy
    await proxy.up()
    await _send_and_receive(sessions, mailbox, "first@example.com")
    assert time.time() - worker.alive_file.stat().st_mtime < 30

    # The database goes away under a running worker, then comes back.
    await proxy.down()
    await asyncio.sleep(1)  # the worker notices on its next poll
    await proxy.up()
    await _send_and_receive(sessions, mailbox, "second@example.com")
    await proxy.down()


async def _send_and_receive(sessions: Sessions, mailbox: Mailbox, to: str) -> None:
    async with sessions() as session:
        await jobs.defer(session, jobs.send_test_email, email=to)
        await session.commit()
    await poll(lambda: _true(to in [m["To"] for m in mailbox.sink.messages]), 60, to)


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _true(value: bool) -> bool:
    return value


async def _messages(mailbox: Mailbox) -> list[Any]:
    return list(mailbox.sink.messages)


async def _count(mailbox: Mailbox) -> int:
    return len(mailbox.sink.messages)


async def _at_least(value: Any, least: int) -> bool:
    return bool(await value >= least)


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
