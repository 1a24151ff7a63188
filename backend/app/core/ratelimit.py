"""Sliding-window rate limits for the auth flows, shared by all workers and replicas:
kept in the database (table auth_attempts), or in Redis when REDIS_URL is set.

Both backends timestamp events with this process's clock, so replicas need
synchronised clocks (NTP); a skew only shifts windows by that much."""

import hashlib
import logging
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import ColumnElement
from sqlmodel import col, delete, func, insert, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import settings
from app.models import AuthAttempt, utcnow

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 320  # auth_attempts.key
PRUNE_BATCH = 500  # expired rows deleted at most per attempt


@dataclass(frozen=True)
class Rule:
    name: str  # key prefix, e.g. "login:account"
    limit: int  # events allowed within the window
    window_seconds: int


class TooManyAttempts(Exception):
    def __init__(self, rule: Rule, retry_after: int) -> None:
        super().__init__(f"Too many attempts; retry after {retry_after} seconds")
        self.rule = rule
        self.retry_after = retry_after


class RateLimiter(Protocol):
    async def attempt(self, rule: Rule, key: str) -> str:
        """Count one event for `key` now and return its id, or raise TooManyAttempts
        (counting nothing) when `key` already has `rule.limit` events in the window.
        Atomic: of concurrent attempts, at most the allowed number get through."""

    async def forgive(self, rule: Rule, key: str, event_id: str) -> None:
        """Take back one counted event (an attempt that turned out legitimate)."""

    async def reset(self, rule: Rule, key: str) -> None:
        """Forget the events of `key` (e.g. after a successful login)."""


@dataclass(frozen=True)
class Counted:
    rule: Rule
    key: str
    event_id: str


Limit = tuple[Rule, str]  # a rule and the key it counts under


async def attempt_all(limiter: RateLimiter, limits: Iterable[Limit]) -> list[Counted]:
    """Count one attempt under every (rule, key), or under none of them when one
    refuses it (TooManyAttempts)."""
    counted: list[Counted] = []
    try:
        for rule, key in limits:
            counted.append(Counted(rule, key, await limiter.attempt(rule, key)))
    except TooManyAttempts:
        await forgive_all(limiter, counted)
        raise
    return counted


async def forgive_all(limiter: RateLimiter, counted: Iterable[Counted]) -> None:
    for event in counted:
        await limiter.forgive(event.rule, event.key, event.event_id)


# The rules, read from the settings when they are applied. Keys are lower-cased
# email addresses and client IP addresses.


def login_limits(account: str, client: str) -> tuple[Limit, Limit, Limit]:
    """Failed password checks for `account` from `client`: (per account and
    client, per account, per client)."""
    window = settings.LOGIN_FAILURE_WINDOW_SECONDS
    per_account = settings.LOGIN_MAX_FAILURES_PER_ACCOUNT_ALL_ADDRESSES
    return (
        (
            Rule(
                "login:account-client", settings.LOGIN_MAX_FAILURES_PER_ACCOUNT, window
            ),
            f"{account}|{client}",
        ),
        (Rule("login:account", per_account, window), account),
        (Rule("login:client", settings.LOGIN_MAX_FAILURES_PER_ADDRESS, window), client),
    )


def login_alert_rule() -> Rule:
    """One email to an account's owner per window while logins to it are refused."""
    return Rule("login:alert", 1, settings.LOGIN_FAILURE_WINDOW_SECONDS)


def signup_limit(client: str) -> Limit:
    return Rule(
        "signup:client", settings.SIGNUPS_PER_CLIENT, settings.SIGNUP_WINDOW_SECONDS
    ), client


EmailPurpose = Literal["recovery", "verification"]


def email_request_limits(
    purpose: EmailPurpose, recipient: str, client: str
) -> list[Limit]:
    """An email of kind `purpose` to `recipient`, asked for by `client`."""
    window = settings.EMAIL_REQUEST_WINDOW_SECONDS
    per_address_and_client = settings.EMAIL_REQUESTS_PER_ADDRESS_AND_CLIENT
    return [
        (
            Rule("email:cooldown", 1, settings.EMAIL_COOLDOWN_SECONDS),
            f"{purpose}:{recipient}",
        ),
        (
            Rule("email:recipient-client", per_address_and_client, window),
            f"{recipient}|{client}",
        ),
        (
            Rule("email:recipient", settings.EMAIL_REQUESTS_PER_ADDRESS, window),
            recipient,
        ),
        (Rule("email:client", settings.EMAIL_REQUESTS_PER_CLIENT, window), client),
    ]


def storage_key(rule: Rule, key: str) -> str:
    full = f"{rule.name}:{key}"
    if len(full) <= MAX_KEY_LENGTH:
        return full
    return f"{rule.name}:{hashlib.sha256(key.encode()).hexdigest()}"


def _retry_after(seconds: float, rule: Rule) -> int:
    return min(max(math.ceil(seconds), 1), rule.window_seconds)


def _window(rule: Rule) -> timedelta:
    return timedelta(seconds=rule.window_seconds)


# With `count` events in the window, one more is allowed once the event at
# ascending position (count - limit) has left it: both backends read just that one.


def longest_window_seconds() -> int:
    """Events older than this count under no rule."""
    return max(
        settings.LOGIN_FAILURE_WINDOW_SECONDS,
        settings.EMAIL_REQUEST_WINDOW_SECONDS,
        settings.EMAIL_COOLDOWN_SECONDS,
        settings.SIGNUP_WINDOW_SECONDS,
    )


async def delete_expired_attempts(session: AsyncSession, *, now: datetime) -> int:
    """Delete the rows of auth_attempts older than every window (a periodic job:
    `attempt` prunes only a batch at a time); commits, returns their number."""
    deleted = await session.exec(
        delete(AuthAttempt).where(
            col(AuthAttempt.attempted_at)
            <= now - timedelta(seconds=longest_window_seconds())
        )
    )
    await session.commit()
    return int(deleted.rowcount)


class DatabaseRateLimiter:
    """Events as rows of auth_attempts, in (and committing) the caller's session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def attempt(self, rule: Rule, key: str) -> str:
        now = utcnow()
        name = storage_key(rule, key)
        if self.session.get_bind().dialect.name == "postgresql":
            # Attempts on one key take turns until their commit, so the count
            # below cannot miss a concurrent one. (SQLite's BEGIN IMMEDIATE
            # serialises every write transaction anyway.)
            await self.session.exec(select(func.pg_advisory_xact_lock(_lock_id(name))))
        statement = (
            select(AuthAttempt.attempted_at)
            .where(
                col(AuthAttempt.key) == name,
                col(AuthAttempt.attempted_at) > now - _window(rule),
            )
            .order_by(col(AuthAttempt.attempted_at).desc())
            .offset(rule.limit - 1)
            .limit(1)
        )
        blocking: datetime | None = (await self.session.exec(statement)).first()
        if blocking is not None:
            await self.session.commit()  # ends the transaction, and the lock
            wait = blocking + _window(rule) - now
            raise TooManyAttempts(rule, _retry_after(wait.total_seconds(), rule))
        await self._prune(rule, name, now)
        inserted = await self.session.exec(
            insert(AuthAttempt)
            .values(key=name, attempted_at=now)
            .returning(col(AuthAttempt.id))
        )
        event_id = inserted.scalar_one()
        await self.session.commit()
        return str(event_id)

    async def _prune(self, rule: Rule, name: str, now: datetime) -> None:
        await self.session.exec(
            delete(AuthAttempt)
            .where(
                col(AuthAttempt.key) == name,
                col(AuthAttempt.attempted_at) <= now - _window(rule),
            )
            .execution_options(synchronize_session=False)
        )
        # Keys never seen again: a bounded batch of the oldest rows, on the
        # attempted_at index. SKIP LOCKED (PostgreSQL; SQLite has no row locks and
        # serialises writers) lets concurrent attempts prune without waiting or deadlocks.
        longest = max(rule.window_seconds, longest_window_seconds())
        expired = (
            select(AuthAttempt.id)
            .where(col(AuthAttempt.attempted_at) <= now - timedelta(seconds=longest))
            .order_by(col(AuthAttempt.attempted_at))
            .limit(PRUNE_BATCH)
            .with_for_update(skip_locked=True)
        )
        await self.session.exec(
            delete(AuthAttempt)
            .where(col(AuthAttempt.id).in_(expired))
            .execution_options(synchronize_session=False)
        )

    async def forgive(self, rule: Rule, key: str, event_id: str) -> None:
        await self._delete(
            col(AuthAttempt.key) == storage_key(rule, key),
            col(AuthAttempt.id) == int(event_id),
        )

    async def reset(self, rule: Rule, key: str) -> None:
        await self._delete(col(AuthAttempt.key) == storage_key(rule, key))

    async def _delete(self, *conditions: ColumnElement[bool]) -> None:
        await self.session.exec(
            delete(AuthAttempt)
            .where(*conditions)
            .execution_options(synchronize_session=False)
        )
        await self.session.commit()


def _lock_id(name: str) -> int:
    """A 64-bit advisory lock id for a key."""
    return int.from_bytes(
        hashlib.sha256(name.encode()).digest()[:8], "big", signed=True
    )


# KEYS[1]: the key's sorted set; ARGV: now, window seconds, limit, new member.
# Returns nil once the event is counted, else the score of the blocking event.
ATTEMPT_SCRIPT = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  return redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')[2]
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], window)
return nil
"""


class RedisRateLimiter:
    """Events as members of one sorted set per key, scored by their Unix time; an
    attempt is one Lua script, atomic in Redis.

    When Redis cannot be reached the limits fail open: a logged warning, and the
    request goes on. An outage of the limiter's store then costs brute-force
    protection for its duration instead of every login and recovery email."""

    def __init__(self, client: redis.Redis, prefix: str = "ratelimit:") -> None:
        self.client = client
        self.prefix = prefix
        self._attempt = client.register_script(ATTEMPT_SCRIPT)

    def _name(self, rule: Rule, key: str) -> str:
        return self.prefix + storage_key(rule, key)

    async def attempt(self, rule: Rule, key: str) -> str:
        now = time.time()
        event_id = f"{now!r}:{uuid.uuid4().hex}"
        args: list[str | int] = [repr(now), rule.window_seconds, rule.limit, event_id]
        try:
            blocking = await self._attempt(keys=[self._name(rule, key)], args=args)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            _warn_unavailable("attempt", rule, exc)
            return event_id
        if blocking is not None:
            wait = float(blocking) + rule.window_seconds - now
            raise TooManyAttempts(rule, _retry_after(wait, rule))
        return event_id

    async def forgive(self, rule: Rule, key: str, event_id: str) -> None:
        try:
            await self.client.zrem(self._name(rule, key), event_id)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            _warn_unavailable("forgive", rule, exc)

    async def reset(self, rule: Rule, key: str) -> None:
        try:
            await self.client.delete(self._name(rule, key))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            _warn_unavailable("reset", rule, exc)


def _warn_unavailable(operation: str, rule: Rule, exc: Exception) -> None:
    # The rule's name only: keys are email and client addresses.
    logger.warning(
        "Rate limit %s not enforced (%s): Redis unavailable: %s: %s",
        rule.name,
        operation,
        type(exc).__name__,
        exc,
    )


_redis_clients: dict[str, redis.Redis] = {}


def _redis_client(url: str) -> redis.Redis:
    client = _redis_clients.get(url)
    if client is None:
        # Short timeouts and one quick retry: an unreachable Redis must not
        # stall logins (the limits fail open).
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=1,
            socket_timeout=1,
            retry=Retry(NoBackoff(), 1),
        )
        _redis_clients[url] = client
    return client


def rate_limiter_for(session: AsyncSession) -> RateLimiter:
    """Redis when settings.REDIS_URL is set (one client per process, created lazily
    and cached), else the database through `session`."""
    if settings.REDIS_URL:
        return RedisRateLimiter(_redis_client(settings.REDIS_URL))
    return DatabaseRateLimiter(session)
