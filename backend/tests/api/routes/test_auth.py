import uuid
from datetime import datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from httpx import AsyncClient
from pydantic import HttpUrl
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import settings
from app.models import User, utcnow
from tests.utils import factories
from tests.utils.api import auth_headers, bearer, probe_route
from tests.utils.servers import free_port
from tests.utils.supabase import (
    HS_SECRET,
    FakeSupabase,
    b64url,
    ec_key,
    raw_token,
    rsa_key,
    session_cookie,
)

VERIFY = f"{settings.API_V1_STR}/auth/verify_supabase_token"
ME = f"{settings.API_V1_STR}/auth/me"


async def users_with_email(db: AsyncSession, email: str) -> int:
    statement = select(func.count()).where(func.lower(User.email) == email.lower())
    return (await db.exec(statement)).one()


async def test_verify_supabase_token_creates_user(
    client: AsyncClient, db: AsyncSession, fake_supabase: FakeSupabase
) -> None:
    email = factories.random_email()
    response = await client.get(
        VERIFY, headers=bearer(fake_supabase.token(email=email))
    )
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Token verified"
    assert body["user"]["email"] == email
    assert body["expires_in"] == settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60
    expected_expiry = utcnow() + timedelta(seconds=body["expires_in"])
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert abs(expires_at - expected_expiry) < timedelta(seconds=10)
    assert body["refresh_token"]
    user = await db.get(User, uuid.UUID(body["user"]["id"]))
    assert user is not None and user.email == email
    assert user.email_verified_at is not None

    ours = bearer(body["token"])
    me = await client.get(f"{settings.API_V1_STR}/users/me", headers=ours)
    assert me.status_code == 200
    assert me.json()["id"] == body["user"]["id"]
    auth_me = await client.get(ME, headers=ours)
    assert auth_me.status_code == 200
    assert auth_me.json() == {"user": body["user"]}


async def test_verify_supabase_token_finds_existing_user(
    client: AsyncClient, db: AsyncSession, fake_supabase: FakeSupabase
) -> None:
    email = factories.random_email()
    user = await factories.create_user(db, email=email.capitalize())
    for kid in ["rsa-1", "ec-1", "rsa-1"]:
        token = fake_supabase.token(kid, email=email)
        response = await client.get(VERIFY, headers=bearer(token))
        assert response.status_code == 200
        assert response.json()["user"]["id"] == str(user.id)
    assert await users_with_email(db, email) == 1
    assert fake_supabase.fetches == 1  # the JWKS is cached


async def test_verify_supabase_token_from_cookie(
    client: AsyncClient, fake_supabase: FakeSupabase
) -> None:
    email = factories.random_email()
    value = session_cookie(fake_supabase.token("ec-1", email=email))
    chunks = [value[i : i + 200] for i in range(0, len(value), 200)]
    for i, chunk in enumerate(chunks):
        client.cookies.set(f"sb-127-auth-token.{i}", chunk)
    response = await client.get(VERIFY)
    assert response.status_code == 200
    assert response.json()["user"]["email"] == email


async def test_verify_supabase_token_hs256_secret(
    client: AsyncClient, fake_supabase: FakeSupabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "SUPABASE_JWT_SECRET", HS_SECRET)
    claims = fake_supabase.claims()
    token = jwt.encode(claims, HS_SECRET, algorithm="HS256")
    response = await client.get(VERIFY, headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["user"]["email"] == claims["email"]
    wrong = jwt.encode(
        claims, "another-secret-of-at-least-32-characters", algorithm="HS256"
    )
    response = await client.get(VERIFY, headers=bearer(wrong))
    assert response.status_code == 401


def invalid_tokens(fake: FakeSupabase) -> dict[str, str]:
    public_pem = (
        rsa_key("a")
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return {
        "wrong audience": fake.token(aud="anon"),
        "wrong issuer": fake.token(iss="https://evil.example.com/auth/v1"),
        "other key, same kid": fake.token("rsa-1", key=rsa_key("b")),
        "other EC key, same kid": fake.token("ec-1", key=ec_key("b")),
        "unknown kid": fake.token("rsa-9", key=rsa_key("b")),
        "alg none": raw_token({"alg": "none", "kid": "rsa-1"}, fake.claims(), None),
        "HS256 with the public key": raw_token(
            {"alg": "HS256", "kid": "rsa-1"}, fake.claims(), public_pem
        ),
        "HS256 without secret": jwt.encode(fake.claims(), HS_SECRET, algorithm="HS256"),
        "not a JWT": b64url(b"hello"),
    }


async def test_verify_supabase_token_invalid(
    client: AsyncClient, db: AsyncSession, fake_supabase: FakeSupabase
) -> None:
    before = (await db.exec(select(func.count()).select_from(User))).one()
    for case, token in invalid_tokens(fake_supabase).items():
        response = await client.get(VERIFY, headers=bearer(token))
        assert response.status_code == 401, case
        assert response.json() == {"detail": "Invalid Supabase token"}, case
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await db.exec(select(func.count()).select_from(User))).one() == before


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"exp": 1_000_000_000, "iat": 999_999_000}, "Supabase token has expired"),
        ({"email": None}, "Supabase token carries no valid email"),
        ({"is_anonymous": True}, "Anonymous Supabase users cannot sign in"),
    ],
)
async def test_verify_supabase_token_rejected_claims(
    client: AsyncClient,
    fake_supabase: FakeSupabase,
    overrides: dict[str, Any],
    detail: str,
) -> None:
    response = await client.get(
        VERIFY, headers=bearer(fake_supabase.token(**overrides))
    )
    assert response.status_code == 401
    assert response.json() == {"detail": detail}


@pytest.mark.usefixtures("fake_supabase")
async def test_verify_supabase_token_missing(client: AsyncClient) -> None:
    for headers in [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic eA=="}]:
        response = await client.get(VERIFY, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "Missing Supabase token"}
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_verify_supabase_token_inactive_user(
    client: AsyncClient, db: AsyncSession, fake_supabase: FakeSupabase
) -> None:
    user = await factories.create_user(db, is_active=False)
    response = await client.get(
        VERIFY, headers=bearer(fake_supabase.token(email=user.email))
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "Inactive user"}


async def test_verify_supabase_token_unverified_user_when_required(
    client: AsyncClient,
    db: AsyncSession,
    fake_supabase: FakeSupabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exchange follows the same account rules as a password login."""
    monkeypatch.setattr(settings, "REQUIRE_EMAIL_VERIFICATION", True)
    user = await factories.create_user(db, verified=False)
    response = await client.get(
        VERIFY, headers=bearer(fake_supabase.token(email=user.email))
    )
    assert response.status_code == 403
    new_user = await client.get(
        VERIFY, headers=bearer(fake_supabase.token(email=factories.random_email()))
    )
    assert new_user.status_code == 200  # created verified: the provider vouches


async def test_verify_supabase_token_jwks_down(
    client: AsyncClient, fake_supabase: FakeSupabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = fake_supabase.token()
    monkeypatch.setattr(
        settings, "SUPABASE_URL", HttpUrl(f"http://127.0.0.1:{free_port()}")
    )
    response = await client.get(VERIFY, headers=bearer(token))
    assert response.status_code == 503
    assert response.json() == {
        "detail": "Supabase signing keys are unavailable, try again later"
    }


@pytest.mark.slow  # imports the app in two fresh interpreters per path
@pytest.mark.parametrize("path", [VERIFY, ME])
def test_auth_routes_absent_when_not_configured(path: str) -> None:
    """Not a 5xx for a feature that is merely switched off: not mounted at all."""
    unconfigured = probe_route("GET", path, SUPABASE_URL="", SUPABASE_JWT_SECRET="")
    assert unconfigured == {"documented": False, "status": 404}
    configured = probe_route("GET", path, SUPABASE_JWT_SECRET=HS_SECRET)
    assert configured == {"documented": True, "status": 401}


@pytest.mark.usefixtures("fake_supabase")
async def test_auth_me(
    client: AsyncClient, user: User, user_headers: dict[str, str]
) -> None:
    response = await client.get(ME, headers=user_headers)
    assert response.status_code == 200
    assert response.json() == {"user": {"id": str(user.id), "email": user.email}}


@pytest.mark.usefixtures("fake_supabase")
async def test_auth_me_requires_our_token(client: AsyncClient) -> None:
    assert (await client.get(ME)).status_code == 401
    response = await client.get(ME, headers=bearer("not-our-token"))
    assert response.status_code == 401
    assert response.json() == {"detail": "Could not validate credentials"}


@pytest.mark.usefixtures("fake_supabase")
async def test_auth_me_inactive_user(client: AsyncClient, db: AsyncSession) -> None:
    user = await factories.create_user(db, is_active=False)
    headers = await auth_headers(db, user)
    response = await client.get(ME, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"detail": "Inactive user"}


async def test_auth_routes_documented(client: AsyncClient) -> None:
    openapi = (await client.get(f"{settings.API_V1_STR}/openapi.json")).json()
    verify = openapi["paths"][VERIFY]["get"]
    me = openapi["paths"][ME]["get"]
    assert verify["operationId"] == "auth-verify_supabase_token"
    assert me["operationId"] == "auth-read_me"
    assert set(verify["responses"]) >= {"200", "400", "401", "503"}
    assert set(me["responses"]) >= {"200", "401"}
    example = verify["responses"]["200"]["content"]["application/json"]["example"]
    assert set(example) == {
        "message",
        "token",
        "user",
        "expires_at",
        "refresh_token",
        "expires_in",
    }
