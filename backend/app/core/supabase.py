"""Verification of Supabase access tokens, for the exchange against our own tokens.

Asymmetric tokens (RS256, ES256, EdDSA) are checked with the project's JWKS, fetched
from SUPABASE_URL; HS256 tokens only with the shared SUPABASE_JWT_SECRET. The issuer
is checked whenever SUPABASE_URL is set (with only the secret, it is unknown).
"""

import asyncio
import base64
import binascii
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import httpx
import jwt
from fastapi import Request
from pydantic import EmailStr, Field, TypeAdapter, ValidationError

from app.core.config import settings

logger = logging.getLogger(__name__)

JWKS_PATH = "/auth/v1/.well-known/jwks.json"
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
# Unknown kids refetch the JWKS (the provider may have rotated its keys), at most
# this often: made-up kids cannot make us hammer the provider.
JWKS_REFETCH_INTERVAL_SECONDS = 30.0
LEEWAY_SECONDS = 10
MISSING_TOKEN = "Missing Supabase token"
INVALID_TOKEN = "Invalid Supabase token"  # bad signature, issuer, audience, key, alg
EXPIRED_TOKEN = "Supabase token has expired"
ANONYMOUS_USER = "Anonymous Supabase users cannot sign in"
NO_EMAIL = "Supabase token carries no valid email"
REJECTIONS = (INVALID_TOKEN, EXPIRED_TOKEN, ANONYMOUS_USER, NO_EMAIL)
UNAVAILABLE = "Supabase signing keys are unavailable, try again later"

_email_adapter: TypeAdapter[str] = TypeAdapter(
    Annotated[EmailStr, Field(max_length=255)]
)


class ProviderTokenError(Exception):
    """The provider's token is unusable; `detail` is safe to show (never the token)."""

    def __init__(self, detail: str = INVALID_TOKEN) -> None:
        super().__init__(detail)
        self.detail = detail


class ProviderUnavailableError(ProviderTokenError):
    """The provider's signing keys could not be fetched."""


@dataclass(frozen=True)
class ProviderIdentity:
    subject: str
    email: str


class _JwksCache:
    def __init__(self) -> None:
        self.url: str | None = None
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at = -math.inf
        self.refetched_at = -math.inf
        self.lock = asyncio.Lock()  # one fetch at a time; waiters reuse its result

    async def key(self, url: str, kid: str) -> jwt.PyJWK:
        async with self.lock:
            now = time.monotonic()
            if (
                url != self.url
                or now - self.fetched_at >= settings.SUPABASE_JWKS_CACHE_SECONDS
            ):
                await self._fetch(url, now)
            elif (
                kid not in self.keys
                and now - self.refetched_at >= JWKS_REFETCH_INTERVAL_SECONDS
            ):
                self.refetched_at = now
                await self._fetch(url, now)
        key = self.keys.get(kid)
        if key is None:
            raise ProviderTokenError()
        return key

    async def _fetch(self, url: str, now: float) -> None:
        try:
            async with httpx.AsyncClient(timeout=JWKS_FETCH_TIMEOUT_SECONDS) as client:
                response = await client.get(url)
            response.raise_for_status()
            keys = _signing_keys(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("Could not fetch the Supabase JWKS from %s: %r", url, exc)
            raise ProviderUnavailableError(UNAVAILABLE) from exc
        self.url, self.keys, self.fetched_at = url, keys, now


def _signing_keys(jwks: Any) -> dict[str, jwt.PyJWK]:
    """The usable signature keys of a JWKS document, by kid (others are skipped)."""
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a JWKS document")
    keys = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        # Only public keys: a symmetric key must never come from a public document.
        if key.algorithm_name in ASYMMETRIC_ALGORITHMS and isinstance(key.key_id, str):
            keys[key.key_id] = key
    return keys


_jwks_cache = _JwksCache()


def clear_cache() -> None:
    """Forget the fetched JWKS (for tests)."""
    global _jwks_cache
    _jwks_cache = _JwksCache()


def _base_url() -> str | None:
    return str(settings.SUPABASE_URL).rstrip("/") if settings.SUPABASE_URL else None


async def _verification_key(header: dict[str, Any]) -> jwt.PyJWK | str:
    """The key for the token's `alg`; the algorithm always matches the key type, so a
    public key can never serve as an HS256 secret (algorithm confusion)."""
    alg, kid, base_url = header.get("alg"), header.get("kid"), _base_url()
    if alg == "HS256" and settings.SUPABASE_JWT_SECRET:
        return settings.SUPABASE_JWT_SECRET
    if alg in ASYMMETRIC_ALGORITHMS and base_url and isinstance(kid, str):
        key = await _jwks_cache.key(base_url + JWKS_PATH, kid)
        if key.algorithm_name == alg:
            return key
    raise ProviderTokenError()  # "none", unconfigured or mismatched algorithms


async def verify_supabase_token(token: str) -> ProviderIdentity:
    """The identity in a Supabase access token, once its signature, issuer,
    audience and expiry are checked. Raises ProviderTokenError (or
    ProviderUnavailableError when the JWKS cannot be fetched)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise ProviderTokenError() from None
    key = await _verification_key(header)
    base_url = _base_url()
    issuer = f"{base_url}/auth/v1" if base_url else None
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[header["alg"]],
            audience=settings.SUPABASE_JWT_AUDIENCE,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={
                "require": ["exp", "iat", "sub", "aud", *(["iss"] if issuer else [])]
            },
        )
    except jwt.ExpiredSignatureError:
        raise ProviderTokenError(EXPIRED_TOKEN) from None
    except jwt.PyJWTError as exc:
        logger.info("Rejected a Supabase token: %s", exc)
        raise ProviderTokenError() from None
    if claims.get("is_anonymous") is True:
        raise ProviderTokenError(ANONYMOUS_USER)
    # We trust the provider to confirm emails (Supabase's "Confirm email" setting):
    # the exchange signs in whoever holds an account with this email.
    try:
        email = _email_adapter.validate_python(claims.get("email"))
    except ValidationError:
        raise ProviderTokenError(NO_EMAIL) from None
    return ProviderIdentity(subject=str(claims["sub"]), email=email)


def _project_ref() -> str | None:
    """The project ref naming Supabase's cookie: the first label of SUPABASE_URL's
    host ("abcd" for https://abcd.supabase.co; "127" for http://127.0.0.1:54321)."""
    host = (
        urlsplit(str(settings.SUPABASE_URL)).hostname if settings.SUPABASE_URL else None
    )
    return host.split(".")[0] if host else None


def token_from_request(request: Request) -> str | None:
    """The provider token of `Authorization: Bearer`, else of the
    `sb-<ref>-auth-token` cookie (whole or in chunks `.0`, `.1`...) set by
    @supabase/ssr. The cookie needs SUPABASE_URL to know the ref."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    ref = _project_ref()
    if ref is None:
        return None
    name = f"sb-{ref}-auth-token"
    value = request.cookies.get(name)
    if value is None:
        chunks: list[str] = []
        while (chunk := request.cookies.get(f"{name}.{len(chunks)}")) is not None:
            chunks.append(chunk)
        value = "".join(chunks) or None
    return _access_token_from_cookie(value) if value else None


def _access_token_from_cookie(value: str) -> str | None:
    """The access token of a session cookie: `base64-<base64url JSON>` or (possibly
    URL-encoded) JSON, an object with `access_token` or an array starting with it."""
    try:
        if value.startswith("base64-"):
            encoded = value.removeprefix("base64-")
            text = base64.urlsafe_b64decode(
                encoded + "=" * (-len(encoded) % 4)
            ).decode()
        else:
            text = value if value.startswith(("{", "[")) else unquote(value)
        session = json.loads(text)
    except (ValueError, binascii.Error):  # includes JSON and UTF-8 errors
        return None
    token = session.get("access_token") if isinstance(session, dict) else None
    if isinstance(session, list) and session:
        token = session[0]
    return token if isinstance(token, str) and token else None
