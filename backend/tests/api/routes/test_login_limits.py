"""Brute-force protection on login and the emailed flows, in the database and in
Redis, and login timing that does not tell registered emails apart."""

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from httpx import AsyncClient
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core import ratelimit
from app.core.config import settings
from app.models import User
from tests import factories
from tests.api.helpers import API, login

REDIS_TEST_URL = "redis://127.0.0.1:6379/9"
WRONG_PASSWORD = "not-the-password"


@pytest.fixture(params=["database", "redis"])
async def limiter_backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """Runs a test with the limits kept in the database, then in a real Redis
    (a database of its own, emptied before and after)."""
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_TEST_URL)
        await client.flushdb()
        monkeypatch.setattr(settings, "REDIS_URL", REDIS_TEST_URL)
        yield request.param
        await client.flushdb()
        await client.aclose()
    else:
        monkeypatch.setattr(settings, "REDIS_URL", None)
        yield request.param


async def recover(client: AsyncClient, email: str) -> int:
    return (await client.post(f"{API}/password-recovery/{email}")).status_code


class TestFailedLogins:
    async def test_twenty_wrong_passwords_in_a_row(
        self, client: AsyncClient, user: User, limiter_backend: str
    ) -> None:
        codes = [
            (await login(client, user.email, WRONG_PASSWORD)).status_code
            for _ in range(20)
        ]

        allowed = settings.LOGIN_MAX_FAILURES_PER_ACCOUNT
        assert codes == [400] * allowed + [429] * (20 - allowed)
        # Locked: even the right password waits until the window slides on.
        locked = await login(client, user.email, factories.DEFAULT_PASSWORD)
        assert locked.status_code == 429
        retry_after = int(locked.headers["retry-after"])
        assert 0 < retry_after <= settings.LOGIN_FAILURE_WINDOW_SECONDS
        assert locked.json() == {
            "detail": f"Too many attempts: try again in {retry_after} seconds"
        }

    async def test_parallel_guesses_are_limited_like_sequential_ones(
        self, committing_client: AsyncClient, limiter_backend: str
    ) -> None:
        """A burst sent at once: every guess is counted before its password is
        checked, so the burst gets no more tries than a sequence would."""
        email = factories.random_email()

        responses = await asyncio.gather(
            *(login(committing_client, email, WRONG_PASSWORD) for _ in range(30))
        )

        allowed = settings.LOGIN_MAX_FAILURES_PER_ACCOUNT
        codes = sorted(response.status_code for response in responses)
        assert codes == [400] * allowed + [429] * (30 - allowed)

    async def test_lock_is_per_account_and_ignores_email_case(
        self, client: AsyncClient, db: AsyncSession, user: User, limiter_backend: str
    ) -> None:
        for _ in range(settings.LOGIN_MAX_FAILURES_PER_ACCOUNT):
            await login(client, user.email.upper(), WRONG_PASSWORD)
        assert (await login(client, user.email, WRONG_PASSWORD)).status_code == 429
        other = await factories.create_user(db)
        response = await login(client, other.email, factories.DEFAULT_PASSWORD)
        assert response.status_code == 200

    async def test_success_resets_the_account_counter(
        self, client: AsyncClient, user: User, limiter_backend: str
    ) -> None:
        almost = settings.LOGIN_MAX_FAILURES_PER_ACCOUNT - 1
        for _ in range(2):
            for _ in range(almost):
                response = await login(client, user.email, WRONG_PASSWORD)
                assert response.status_code == 400
            success = await login(client, user.email, factories.DEFAULT_PASSWORD)
            assert success.status_code == 200

    async def test_unknown_emails_are_limited_like_known_ones(
        self, client: AsyncClient, limiter_backend: str
    ) -> None:
        email = factories.random_email()
        codes = [
            (await login(client, email, WRONG_PASSWORD)).status_code
            for _ in range(settings.LOGIN_MAX_FAILURES_PER_ACCOUNT + 1)
        ]
        assert codes[-2:] == [400, 429]

    async def test_per_client_address_across_accounts(
        self,
        client: AsyncClient,
        user: User,
        monkeypatch: pytest.MonkeyPatch,
        limiter_backend: str,
    ) -> None:
        monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ADDRESS", 5)
        for _ in range(5):  # one guess at each of five accounts
            await login(client, factories.random_email(), WRONG_PASSWORD)
        response = await login(client, user.email, factories.DEFAULT_PASSWORD)
        assert response.status_code == 429

    async def test_window_slides(
        self,
        client: AsyncClient,
        user: User,
        monkeypatch: pytest.MonkeyPatch,
        limiter_backend: str,
    ) -> None:
        monkeypatch.setattr(settings, "LOGIN_FAILURE_WINDOW_SECONDS", 1)
        monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 2)
        for _ in range(2):
            await login(client, user.email, WRONG_PASSWORD)
        assert (await login(client, user.email, WRONG_PASSWORD)).status_code == 429
        await asyncio.sleep(1.1)  # the failures leave the window
        response = await login(client, user.email, factories.DEFAULT_PASSWORD)
        assert response.status_code == 200


class TestEmailRequestLimits:
    async def test_recovery_limited_alike_for_known_and_unknown(
        self, client: AsyncClient, user: User, limiter_backend: str
    ) -> None:
        allowed = settings.EMAIL_REQUESTS_PER_ADDRESS
        for email in (user.email, factories.random_email()):
            codes = [await recover(client, email) for _ in range(allowed + 1)]
            assert codes == [200] * allowed + [429]

    async def test_recovery_limited_per_client(
        self,
        client: AsyncClient,
        monkeypatch: pytest.MonkeyPatch,
        limiter_backend: str,
    ) -> None:
        monkeypatch.setattr(settings, "EMAIL_REQUESTS_PER_CLIENT", 4)
        codes = [await recover(client, factories.random_email()) for _ in range(5)]
        assert codes == [200] * 4 + [429]


def test_rules_follow_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 7)
    account, address = ratelimit.login_rules()
    assert account.limit == 7
    assert address.limit == settings.LOGIN_MAX_FAILURES_PER_ADDRESS
    assert account.name != address.name


async def test_login_time_does_not_reveal_registered_emails(
    client: AsyncClient, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Median login time with an unknown email vs a wrong password for a known one:
    within 15% of each other (measured interleaved, in one run)."""
    monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 1000)
    monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ADDRESS", 1000)
    unknown_email = factories.random_email()
    timings: dict[str, list[float]] = {"unknown": [], "known": []}
    for _ in range(3):  # warm-up: connections, caches
        await login(client, unknown_email, WRONG_PASSWORD)
        await login(client, user.email, WRONG_PASSWORD)
    for _ in range(40):
        for case, email in (("unknown", unknown_email), ("known", user.email)):
            started = time.perf_counter()
            response = await login(client, email, WRONG_PASSWORD)
            timings[case].append(time.perf_counter() - started)
            assert response.status_code == 400

    unknown = statistics.median(timings["unknown"])
    known = statistics.median(timings["known"])
    gap = abs(unknown - known) / min(unknown, known)
    assert gap < 0.15, f"unknown {unknown * 1e3:.1f} ms, known {known * 1e3:.1f} ms"
