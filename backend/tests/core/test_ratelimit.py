"""The sliding-window rate limiter, on the real database (through the `db` fixture)
and on the real Redis at 127.0.0.1:6379 (keys under a random prefix, deleted after)."""

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from uuid import uuid4

import pytest
import redis.asyncio as redis
import time_machine
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core import ratelimit
from app.core.config import settings
from app.core.db import create_engine
from app.core.ratelimit import (
    DatabaseRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    Rule,
    TooManyAttempts,
    storage_key,
)
from app.models import AuthAttempt, utcnow
from tests.utils.servers import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
LimiterPair = tuple[RateLimiter, RateLimiter]


def new_key() -> str:
    return f"{uuid4().hex}@example.com"


async def delete_redis_keys(client: redis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    """This process's clock, stopped: both limiters timestamp events with it."""
    with time_machine.travel(utcnow(), tick=False) as traveller:
        yield traveller


@pytest.fixture
def redis_prefix() -> str:
    return f"test:{uuid4().hex}:"


@pytest.fixture
async def redis_client(redis_prefix: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    await delete_redis_keys(client, redis_prefix)
    await client.aclose()


@pytest.fixture
def database_limiter(db: AsyncSession) -> RateLimiter:
    return DatabaseRateLimiter(db)


@pytest.fixture
def redis_limiter(redis_client: redis.Redis, redis_prefix: str) -> RateLimiter:
    return RedisRateLimiter(redis_client, prefix=redis_prefix)


@pytest.fixture(params=["database", "redis"])
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    limiter: RateLimiter = request.getfixturevalue(f"{request.param}_limiter")
    return limiter


class SessionPerCall:
    """A database limiter as a worker uses it: each call in a request's own session."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sessions = async_sessionmaker(
            engine, class_=AsyncSession, expire_on_commit=False
        )

    async def attempt(self, rule: Rule, key: str) -> str:
        async with self.sessions() as session:
            return await DatabaseRateLimiter(session).attempt(rule, key)

    async def forgive(self, rule: Rule, key: str, event_id: str) -> None:
        async with self.sessions() as session:
            await DatabaseRateLimiter(session).forgive(rule, key, event_id)

    async def reset(self, rule: Rule, key: str) -> None:
        async with self.sessions() as session:
            await DatabaseRateLimiter(session).reset(rule, key)


@pytest.fixture
def shared_rule() -> Rule:
    return Rule(f"shared-{uuid4().hex}", limit=2, window_seconds=60)


@pytest.fixture
async def database_pair(
    engine: AsyncEngine, migrated_database_url: URL, shared_rule: Rule
) -> AsyncIterator[LimiterPair]:
    """Two workers with engines of their own. They really commit: their rows
    (all under `shared_rule`) are deleted afterwards."""
    other_engine = create_engine(migrated_database_url)
    yield SessionPerCall(engine), SessionPerCall(other_engine)
    await other_engine.dispose()
    async with AsyncSession(engine) as session:
        await session.exec(
            delete(AuthAttempt).where(
                col(AuthAttempt.key).startswith(f"{shared_rule.name}:", autoescape=True)
            )
        )
        await session.commit()


@pytest.fixture
async def redis_pair(redis_prefix: str) -> AsyncIterator[LimiterPair]:
    first, second = redis.Redis.from_url(REDIS_URL), redis.Redis.from_url(REDIS_URL)
    yield (
        RedisRateLimiter(first, prefix=redis_prefix),
        RedisRateLimiter(second, prefix=redis_prefix),
    )
    await delete_redis_keys(first, redis_prefix)
    await first.aclose()
    await second.aclose()


@pytest.fixture(params=["database", "redis"])
def limiter_pair(request: pytest.FixtureRequest) -> LimiterPair:
    pair: LimiterPair = request.getfixturevalue(f"{request.param}_pair")
    return pair


async def attempt_times(
    limiter: RateLimiter, rule: Rule, key: str, times: int
) -> list[str]:
    return [await limiter.attempt(rule, key) for _ in range(times)]


async def test_limit_events_then_too_many_attempts(limiter: RateLimiter) -> None:
    rule = Rule("test:login", limit=3, window_seconds=60)
    key = new_key()
    await attempt_times(limiter, rule, key, 3)

    with pytest.raises(TooManyAttempts) as blocked:
        await limiter.attempt(rule, key)
    # The oldest event was just now: it leaves the window in about a minute.
    assert rule.window_seconds - 2 <= blocked.value.retry_after <= rule.window_seconds


async def test_refused_attempts_do_not_count(
    limiter: RateLimiter, clock: time_machine.Traveller
) -> None:
    rule = Rule("test:refused", limit=2, window_seconds=2)
    key = new_key()
    await attempt_times(limiter, rule, key, 2)
    for _ in range(5):
        clock.shift(0.1)  # later than the counted two: still in the window after them
        with pytest.raises(TooManyAttempts):
            await limiter.attempt(rule, key)

    # Once the two counted events are out of the window, two more get through.
    clock.shift(1.6)
    await attempt_times(limiter, rule, key, 2)
    with pytest.raises(TooManyAttempts):
        await limiter.attempt(rule, key)


async def test_forgiven_events_no_longer_count(limiter: RateLimiter) -> None:
    rule = Rule("test:forgive", limit=2, window_seconds=60)
    key, other_key = new_key(), new_key()
    first, _ = await attempt_times(limiter, rule, key, 2)
    (other,) = await attempt_times(limiter, rule, other_key, 1)

    await limiter.forgive(rule, key, first)
    await limiter.forgive(rule, key, other)  # another key's event: nothing happens

    await limiter.attempt(rule, key)
    with pytest.raises(TooManyAttempts):
        await limiter.attempt(rule, key)
    await limiter.attempt(rule, other_key)
    with pytest.raises(TooManyAttempts):
        await limiter.attempt(rule, other_key)


async def test_attempt_all_counts_under_every_rule_or_none(
    limiter: RateLimiter,
) -> None:
    open_rule = Rule("test:open", limit=5, window_seconds=60)
    full_rule = Rule("test:full", limit=1, window_seconds=60)
    key = new_key()
    await limiter.attempt(full_rule, key)

    for _ in range(3):
        with pytest.raises(TooManyAttempts):
            await ratelimit.attempt_all(limiter, [(open_rule, key), (full_rule, key)])

    # The refused attempts were taken back from open_rule too.
    await attempt_times(limiter, open_rule, key, 5)
    with pytest.raises(TooManyAttempts):
        await limiter.attempt(open_rule, key)


async def test_keys_and_rules_are_independent(limiter: RateLimiter) -> None:
    rule = Rule("test:login", limit=2, window_seconds=60)
    key = new_key()
    await attempt_times(limiter, rule, key, 2)

    await limiter.attempt(rule, new_key())
    await limiter.attempt(Rule("test:other", limit=2, window_seconds=60), key)
    with pytest.raises(TooManyAttempts):
        await limiter.attempt(rule, key)


async def test_long_keys_are_hashed_and_still_distinct(limiter: RateLimiter) -> None:
    rule = Rule("test:long", limit=1, window_seconds=60)
    long_key, other_long_key = "a" * 400, "a" * 399 + "b"
    assert len(storage_key(rule, long_key)) <= ratelimit.MAX_KEY_LENGTH

    await limiter.attempt(rule, long_key)
    with pytest.raises(TooManyAttempts):
        await limiter.attempt(rule, long_key)
    await limiter.attempt(rule, other_long_key)


async def test_reset_clears_only_that_key(limiter: RateLimiter) -> None:
    rule = Rule("test:login", limit=2, window_seconds=60)
    key, other_key = new_key(), new_key()
    await attempt_times(limiter, rule, key, 2)
    await attempt_times(limiter, rule, other_key, 2)

    await limiter.reset(rule, key)

    await attempt_times(limiter, rule, key, 2)
    with pytest.raises(TooManyAttempts):
        await limiter.attempt(rule, other_key)


async def test_the_window_slides(
    limiter: RateLimiter, clock: time_machine.Traveller
) -> None:
    rule = Rule("test:slide", limit=3, window_seconds=2)
    key = new_key()
    await limiter.attempt(rule, key)
    clock.shift(1.5)
    await attempt_times(limiter, rule, key, 2)

    with pytest.raises(TooManyAttempts) as blocked:
        await limiter.attempt(rule, key)
    # Until the first event leaves the window (at 2 s), not the last ones (3.5 s).
    assert blocked.value.retry_after == 1

    clock.shift(0.6)  # 2.1 s after the first event
    await limiter.attempt(rule, key)  # only the two later events were left
    with pytest.raises(TooManyAttempts) as blocked_again:
        await limiter.attempt(rule, key)
    assert blocked_again.value.retry_after == 2  # the events of 1.5 s leave at 3.5 s


async def test_workers_share_the_state(
    limiter_pair: LimiterPair, shared_rule: Rule
) -> None:
    first, second = limiter_pair
    key = new_key()
    await first.attempt(shared_rule, key)
    await second.attempt(shared_rule, key)

    for limiter in (first, second):
        with pytest.raises(TooManyAttempts):
            await limiter.attempt(shared_rule, key)

    await first.reset(shared_rule, key)
    await second.attempt(shared_rule, key)


async def test_parallel_attempts_get_exactly_the_limit_through(
    limiter_pair: LimiterPair, shared_rule: Rule
) -> None:
    """A burst of parallel guesses from two workers: all are counted before any
    is answered, so no more than the limit get through (a check-then-count
    limiter lets the whole burst pass)."""
    rule = Rule(shared_rule.name, limit=7, window_seconds=60)
    key = new_key()

    async def attempt(limiter: RateLimiter) -> bool:
        try:
            await limiter.attempt(rule, key)
        except TooManyAttempts:
            return False
        return True

    outcomes = await asyncio.gather(
        *(attempt(limiter) for limiter in limiter_pair for _ in range(20))
    )

    assert outcomes.count(True) == rule.limit


async def test_database_concurrent_hits_prune_old_rows(
    database_pair: LimiterPair, shared_rule: Rule, engine: AsyncEngine
) -> None:
    """Hits on many keys at once, each pruning the same expired rows: no deadlock,
    no error, and the expired rows are gone."""
    longest = max(
        settings.LOGIN_FAILURE_WINDOW_SECONDS, settings.EMAIL_REQUEST_WINDOW_SECONDS
    )
    expired_at = utcnow() - timedelta(seconds=longest + 10)
    old_keys = [f"{shared_rule.name}:old-{i}" for i in range(100)]
    async with AsyncSession(engine) as session:
        session.add_all(AuthAttempt(key=k, attempted_at=expired_at) for k in old_keys)
        await session.commit()

    await asyncio.gather(
        *(
            limiter.attempt(shared_rule, new_key())
            for limiter in database_pair
            for _ in range(10)
        )
    )

    async with AsyncSession(engine) as session:
        left = await session.exec(
            select(AuthAttempt.key).where(col(AuthAttempt.key).in_(old_keys))
        )
        assert left.all() == []


async def test_database_attempt_prunes_rows_that_left_the_window(
    db: AsyncSession,
) -> None:
    rule = Rule("test:prune", limit=5, window_seconds=60)
    key, other_key = new_key(), new_key()
    longest = max(
        settings.LOGIN_FAILURE_WINDOW_SECONDS, settings.EMAIL_REQUEST_WINDOW_SECONDS
    )
    now = utcnow()

    def ago(seconds: int) -> datetime:
        return now - timedelta(seconds=seconds)

    forgotten = f"test:gone:{new_key()}"
    db.add_all(
        [
            AuthAttempt(key=storage_key(rule, key), attempted_at=ago(61)),
            AuthAttempt(key=storage_key(rule, key), attempted_at=ago(30)),
            # Out of its window too, but another key's rows wait for its own hit...
            AuthAttempt(key=storage_key(rule, other_key), attempted_at=ago(61)),
            # ...or to be older than every window.
            AuthAttempt(key=forgotten, attempted_at=ago(longest + 1)),
        ]
    )
    await db.commit()

    await DatabaseRateLimiter(db).attempt(rule, key)

    rows = (
        await db.exec(
            select(AuthAttempt.key, AuthAttempt.attempted_at).where(
                col(AuthAttempt.key).in_(
                    [storage_key(rule, key), storage_key(rule, other_key), forgotten]
                )
            )
        )
    ).all()
    remaining = sorted((k, round((now - at).total_seconds())) for k, at in rows)
    assert remaining == sorted(
        [
            (storage_key(rule, key), 30),
            (storage_key(rule, key), 0),
            (storage_key(rule, other_key), 61),
        ]
    )


async def test_redis_keys_expire_with_the_window(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    limiter = RedisRateLimiter(redis_client, prefix=redis_prefix)
    rule = Rule("test:ttl", limit=5, window_seconds=30)
    key = new_key()
    await limiter.attempt(rule, key)

    ttl = await redis_client.ttl(redis_prefix + storage_key(rule, key))
    assert 0 < ttl <= rule.window_seconds


async def test_rate_limiter_for_follows_the_settings(
    db: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "_redis_clients", {})
    monkeypatch.setattr(settings, "REDIS_URL", None)
    assert isinstance(ratelimit.rate_limiter_for(db), DatabaseRateLimiter)

    monkeypatch.setattr(settings, "REDIS_URL", REDIS_URL)
    limiter = ratelimit.rate_limiter_for(db)
    again = ratelimit.rate_limiter_for(db)
    assert isinstance(limiter, RedisRateLimiter)
    assert isinstance(again, RedisRateLimiter)
    assert again.client is limiter.client  # one client per process
    rule, key = Rule(f"test:{uuid4().hex}", limit=1, window_seconds=60), new_key()
    try:
        await limiter.attempt(rule, key)
        with pytest.raises(TooManyAttempts):
            await again.attempt(rule, key)
    finally:
        await limiter.reset(rule, key)
        await limiter.client.aclose()


async def test_unreachable_redis_fails_open_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    limiter = RedisRateLimiter(client)
    rule, key = Rule("test:down", limit=1, window_seconds=60), new_key()

    with caplog.at_level(logging.WARNING, logger=ratelimit.__name__):
        event_id = await limiter.attempt(rule, key)
        await limiter.attempt(rule, key)
        await limiter.forgive(rule, key, event_id)
        await limiter.reset(rule, key)
    await client.aclose()

    messages = [r.getMessage() for r in caplog.records if r.name == ratelimit.__name__]
    assert len(messages) == 4
    for message in messages:
        assert "ConnectionError" in message and rule.name in message
        assert key not in message
