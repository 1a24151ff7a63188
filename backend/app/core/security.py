import hashlib
import hmac
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Literal

import anyio
import jwt
from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from app.core.config import settings

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
TokenType = Literal["access", "password_reset"]

# Argon2 for new hashes; bcrypt hashes (from older deployments of the
# template) still verify and are upgraded on the next successful login.
password_hash = PasswordHash((Argon2Hasher(), BcryptHasher()))
# Spent on unknown emails at login so both cases cost one hash verification.
DUMMY_HASH = password_hash.hash("dummy password that matches nothing")


@cache
def _hashing_limiter() -> anyio.CapacityLimiter:
    # Each Argon2 hash takes ~64 MiB; cap parallel hashes so a login flood
    # cannot exhaust memory or starve the thread pool.
    return anyio.CapacityLimiter(settings.PASSWORD_HASH_CONCURRENCY)


async def hash_password(password: str) -> str:
    return await anyio.to_thread.run_sync(
        password_hash.hash, password, limiter=_hashing_limiter()
    )


async def verify_password(
    password: str, hashed_password: str
) -> tuple[bool, str | None]:
    """Check a password; also return a new hash when the stored one is outdated."""
    try:
        return await anyio.to_thread.run_sync(
            password_hash.verify_and_update,
            password,
            hashed_password,
            limiter=_hashing_limiter(),
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
    user_id: uuid.UUID, expires_delta: timedelta | None = None
) -> str:
    delta = expires_delta or timedelta(minutes=settings.ACCESS_TOKEN_EXPIRE_MINUTES)
    return create_token(str(user_id), token_type="access", expires_delta=delta)


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    claims: dict[str, Any]


def decode_token(token: str, *, token_type: TokenType) -> TokenClaims | None:
    """The token's user and claims, or None when it is invalid, expired or of another type."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.SECRET_KEY,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp", "iat", "type"]},
        )
        user_id = uuid.UUID(claims["sub"])
    except (jwt.InvalidTokenError, TypeError, ValueError):
        return None
    return TokenClaims(user_id, claims) if claims["type"] == token_type else None


def password_fingerprint(hashed_password: str) -> str:
    """Bound into reset tokens: once the password changes, old reset tokens die."""
    key = settings.SECRET_KEY.encode()
    return hmac.new(key, hashed_password.encode(), hashlib.sha256).hexdigest()[:32]


def create_password_reset_token(user_id: uuid.UUID, hashed_password: str) -> str:
    return create_token(
        str(user_id),
        token_type="password_reset",
        expires_delta=timedelta(hours=settings.EMAIL_RESET_TOKEN_EXPIRE_HOURS),
        pwd=password_fingerprint(hashed_password),
    )
