import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, Literal, TypeVar

import jwt
from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from app.core.config import settings

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
HASHING_NICENESS = 10  # hashing yields the CPU to serving requests, without starving
T = TypeVar("T")
TokenType = Literal["access", "password_reset", "email_verification"]

# Argon2 for new hashes; bcrypt hashes (from older deployments of the
# template) still verify and are upgraded on the next successful login.
password_hash = PasswordHash(
    (
        Argon2Hasher(
            time_cost=settings.ARGON2_TIME_COST,
            memory_cost=settings.ARGON2_MEMORY_KIB,
            parallelism=settings.ARGON2_PARALLELISM,
        ),
        BcryptHasher(),
    )
)


@cache
def dummy_hash() -> str:
    """Checked against on unknown emails at login, so both cases cost one hash check."""
    return password_hash.hash("dummy password that matches nothing")


def _lower_thread_priority() -> None:
    # Linux niceness is per thread and Argon2's lane threads inherit it: under a
    # login burst the event loop's thread keeps most of the CPU and other
    # requests stay fast. At 19 (or SCHED_IDLE) the logins themselves starved:
    # waits of 5-10 s and timeouts during a burst (benchmark).
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


@cache
def _hashing_executor() -> ThreadPoolExecutor:
    # Each Argon2 hash takes ARGON2_MEMORY_KIB: a small dedicated pool caps parallel hashes
    # so a login flood can exhaust neither memory nor the shared thread pool.
    return ThreadPoolExecutor(
        max_workers=settings.PASSWORD_HASH_CONCURRENCY,
        thread_name_prefix="password-hashing",
        initializer=_lower_thread_priority,
    )


async def _run_hashing(function: Callable[..., T], *args: str) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_hashing_executor(), function, *args)


async def hash_password(password: str) -> str:
    return await _run_hashing(password_hash.hash, password)


async def verify_password(
    password: str, hashed_password: str
) -> tuple[bool, str | None]:
    """Check a password; also return a new hash when the stored one is outdated."""
    try:
        return await _run_hashing(
            password_hash.verify_and_update, password, hashed_password
        )
    except UnknownHashError:
        logger.warning("A stored password hash has an unknown format; the check fails")
        return False, None


def create_token(
    subject: str, *, token_type: TokenType, expires_delta: timedelta, **claims: Any
) -> str:
    now = datetime.now(UTC)
    payload = {
        "sub": subject,
        "type": token_type,
        "iat": now,
        "exp": now + expires_delta,
    }
    return jwt.encode({**payload, **claims}, settings.SECRET_KEY, algorithm=ALGORITHM)


def create_access_token(
    user_id: uuid.UUID, session_id: uuid.UUID, expires_delta: timedelta | None = None
) -> str:
    """An access token bound to a session: it dies with the session (logout, revocation)."""
    delta = expires_delta or timedelta(minutes=settings.ACCESS_TOKEN_EXPIRE_MINUTES)
    return create_token(
        str(user_id), token_type="access", expires_delta=delta, sid=str(session_id)
    )


def new_refresh_token() -> tuple[str, str]:
    """A random refresh token and its hash (only the hash is stored)."""
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    # 256 random bits need no slow hash: SHA-256 cannot be brute-forced back.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    claims: dict[str, Any]

    @property
    def session_id(self) -> uuid.UUID | None:
        try:
            return uuid.UUID(self.claims["sid"])
        except (KeyError, TypeError, ValueError):
            return None


def decode_token(token: str, *, token_type: TokenType) -> TokenClaims | None:
    """The token's user and claims, or None when it is invalid, expired or of another type."""
    signed = _signed_claims(token, settings.SECRET_KEY)
    if signed is None or signed.claims["type"] != token_type:
        return None
    return signed if signed.claims["exp"] > time.time() else None


@lru_cache(maxsize=4096)
def _signed_claims(token: str, key: str) -> TokenClaims | None:
    """Signature and shape of a token, checked once per token string: a client
    sends the same access token with every request, and checking it was a tenth
    of the cost of `GET /users/me`. The expiry is checked on every use."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp", "iat", "type"]},
        )
        user_id = uuid.UUID(claims["sub"])
    except (jwt.InvalidTokenError, TypeError, ValueError):
        return None
    return TokenClaims(user_id, claims)


def fingerprint(value: str) -> str:
    """A keyed digest bound into emailed tokens, so they die when `value` changes."""
    key = settings.SECRET_KEY.encode()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def password_fingerprint(hashed_password: str) -> str:
    """Bound into reset tokens: once the password changes, old reset tokens die."""
    return fingerprint(hashed_password)


def create_password_reset_token(user_id: uuid.UUID, hashed_password: str) -> str:
    return create_token(
        str(user_id),
        token_type="password_reset",
        expires_delta=timedelta(hours=settings.EMAIL_RESET_TOKEN_EXPIRE_HOURS),
        pwd=password_fingerprint(hashed_password),
    )


def create_email_verification_token(user_id: uuid.UUID, email: str) -> str:
    """Proves control of `email`; useless once the account's email changes."""
    return create_token(
        str(user_id),
        token_type="email_verification",
        expires_delta=timedelta(hours=settings.EMAIL_VERIFY_TOKEN_EXPIRE_HOURS),
        eml=fingerprint(email.lower()),
    )
