"""Supabase token verification against a real local HTTP server publishing a JWKS."""

import json
import time
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import Request
from pydantic import HttpUrl

from app.core import supabase
from app.core.config import settings
from app.core.supabase import ProviderTokenError, ProviderUnavailableError
from tests.utils.servers import free_port
from tests.utils.supabase import (
    HS_SECRET,
    FakeSupabase,
    b64url,
    ec_key,
    public_jwk,
    raw_token,
    rsa_key,
    session_cookie,
)


async def rejected(token: str) -> str:
    with pytest.raises(ProviderTokenError) as excinfo:
        await supabase.verify_supabase_token(token)
    assert type(excinfo.value) is ProviderTokenError
    return excinfo.value.detail


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"])
async def test_verify_valid_token(fake_supabase: FakeSupabase, kid: str) -> None:
    token = fake_supabase.token(kid, sub="abc", email="ada@example.com")
    identity = await supabase.verify_supabase_token(token)
    assert identity == supabase.ProviderIdentity(subject="abc", email="ada@example.com")


async def test_verify_caches_jwks(fake_supabase: FakeSupabase) -> None:
    for kid in ["rsa-1", "ec-1", "rsa-1"]:
        await supabase.verify_supabase_token(fake_supabase.token(kid))
    assert fake_supabase.fetches == 1


async def test_verify_refetches_expired_cache(
    fake_supabase: FakeSupabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "SUPABASE_JWKS_CACHE_SECONDS", 0)
    for _ in range(2):
        await supabase.verify_supabase_token(fake_supabase.token())
    assert fake_supabase.fetches == 2


async def test_verify_unknown_kid_refetches_at_most_once(
    fake_supabase: FakeSupabase,
) -> None:
    await supabase.verify_supabase_token(fake_supabase.token())
    unknown = fake_supabase.token("rsa-2", key=rsa_key("b"))
    assert await rejected(unknown) == "Invalid Supabase token"
    assert fake_supabase.fetches == 2
    # Within the refetch interval, made-up kids no longer reach the provider.
    assert await rejected(unknown) == "Invalid Supabase token"
    assert fake_supabase.fetches == 2


async def test_verify_rotated_key_after_refetch(fake_supabase: FakeSupabase) -> None:
    await supabase.verify_supabase_token(fake_supabase.token())
    fake_supabase.keys["rsa-2"] = rsa_key("b")
    fake_supabase.published = {"rsa-2": rsa_key("b")}
    await supabase.verify_supabase_token(fake_supabase.token("rsa-2"))
    assert fake_supabase.fetches == 2


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"exp": int(time.time()) - 60}, "Supabase token has expired"),
        ({"aud": "anon"}, "Invalid Supabase token"),
        ({"aud": None}, "Invalid Supabase token"),
        ({"iss": "https://evil.example.com/auth/v1"}, "Invalid Supabase token"),
        ({"iss": None}, "Invalid Supabase token"),
        ({"sub": None}, "Invalid Supabase token"),
        ({"iat": None}, "Invalid Supabase token"),
        ({"email": None}, "Supabase token carries no valid email"),
        ({"email": ""}, "Supabase token carries no valid email"),
        ({"email": "not-an-email"}, "Supabase token carries no valid email"),
        ({"is_anonymous": True}, "Anonymous Supabase users cannot sign in"),
    ],
)
async def test_verify_rejects_claims(
    fake_supabase: FakeSupabase, overrides: dict[str, Any], detail: str
) -> None:
    assert await rejected(fake_supabase.token(**overrides)) == detail


async def test_verify_accepts_expiry_within_leeway(fake_supabase: FakeSupabase) -> None:
    token = fake_supabase.token(exp=int(time.time()) - 2)
    assert await supabase.verify_supabase_token(token)


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"])
async def test_verify_rejects_other_key_with_same_kid(
    fake_supabase: FakeSupabase, kid: str
) -> None:
    other = rsa_key("b") if kid == "rsa-1" else ec_key("b")
    assert (
        await rejected(fake_supabase.token(kid, key=other)) == "Invalid Supabase token"
    )


async def test_verify_rejects_algorithm_not_matching_key(
    fake_supabase: FakeSupabase,
) -> None:
    # An ES256 token naming the RSA key's kid.
    assert await rejected(fake_supabase.token("rsa-1", key=ec_key("a")))


async def test_verify_rejects_alg_none(fake_supabase: FakeSupabase) -> None:
    claims = fake_supabase.claims()
    for alg in ["none", "None", "NONE"]:
        token = raw_token({"alg": alg, "typ": "JWT", "kid": "rsa-1"}, claims, None)
        assert await rejected(token) == "Invalid Supabase token"


async def test_verify_rejects_hs256_signed_with_public_key(
    fake_supabase: FakeSupabase,
) -> None:
    """Algorithm confusion: the public key (PEM or JWK JSON) as an HMAC secret."""
    public = rsa_key("a").public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.dumps(public_jwk("rsa-1", rsa_key("a"))).encode()
    claims = fake_supabase.claims()
    for secret in [pem, jwk]:
        token = raw_token({"alg": "HS256", "kid": "rsa-1"}, claims, secret)
        assert await rejected(token) == "Invalid Supabase token"
    assert fake_supabase.fetches == 0


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "e30.e30.e30"])
@pytest.mark.usefixtures("fake_supabase")
async def test_verify_rejects_malformed_token(token: str) -> None:
    assert await rejected(token) == "Invalid Supabase token"


async def test_verify_hs256_with_secret(
    fake_supabase: FakeSupabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "SUPABASE_JWT_SECRET", HS_SECRET)
    claims = fake_supabase.claims(email="ada@example.com")
    token = jwt.encode(claims, HS_SECRET, algorithm="HS256")
    identity = await supabase.verify_supabase_token(token)
    assert identity.email == "ada@example.com"
    wrong = jwt.encode(claims, HS_SECRET + "x", algorithm="HS256")
    assert await rejected(wrong) == "Invalid Supabase token"
    # The issuer is still checked while SUPABASE_URL is set.
    other_issuer = {**claims, "iss": "https://evil.example.com/auth/v1"}
    assert await rejected(jwt.encode(other_issuer, HS_SECRET, algorithm="HS256"))


async def test_verify_hs256_secret_only_skips_issuer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "SUPABASE_URL", None)
    monkeypatch.setattr(settings, "SUPABASE_JWT_SECRET", HS_SECRET)
    now = int(time.time())
    claims = {"sub": "abc", "aud": "authenticated", "iat": now, "exp": now + 60}
    token = jwt.encode({**claims, "email": "ada@example.com"}, HS_SECRET)
    assert (await supabase.verify_supabase_token(token)).subject == "abc"
    # Asymmetric tokens need the JWKS, hence SUPABASE_URL.
    rs256 = jwt.encode(claims, rsa_key("a"), algorithm="RS256", headers={"kid": "k"})
    assert await rejected(rs256) == "Invalid Supabase token"


async def test_verify_hs256_without_secret_is_rejected(
    fake_supabase: FakeSupabase,
) -> None:
    token = jwt.encode(fake_supabase.claims(), HS_SECRET, algorithm="HS256")
    assert await rejected(token) == "Invalid Supabase token"


async def test_verify_jwks_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        settings, "SUPABASE_URL", HttpUrl(f"http://127.0.0.1:{free_port()}")
    )
    token = jwt.encode(
        {"sub": "x"}, rsa_key("a"), algorithm="RS256", headers={"kid": "k"}
    )
    with pytest.raises(ProviderUnavailableError) as excinfo:
        await supabase.verify_supabase_token(token)
    assert excinfo.value.detail == supabase.UNAVAILABLE


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, None), (200, b"not json"), (200, b'{"keys": {}}'), (200, b"[]")],
)
async def test_verify_jwks_broken(
    fake_supabase: FakeSupabase, status: int, body: bytes | None
) -> None:
    fake_supabase.status, fake_supabase.body = status, body
    with pytest.raises(ProviderUnavailableError):
        await supabase.verify_supabase_token(fake_supabase.token())


async def test_verify_skips_unusable_jwks_entries(fake_supabase: FakeSupabase) -> None:
    entries: list[Any] = [
        "junk",
        {"kty": "oct", "k": b64url(HS_SECRET.encode()), "kid": "hs", "alg": "HS256"},
        {**public_jwk("enc", rsa_key("a")), "use": "enc"},
        {"kty": "RSA", "kid": "broken"},
        public_jwk("rsa-1", rsa_key("a")),
    ]
    fake_supabase.body = json.dumps({"keys": entries}).encode()
    assert await supabase.verify_supabase_token(fake_supabase.token())
    hs = raw_token(
        {"alg": "HS256", "kid": "hs"}, fake_supabase.claims(), HS_SECRET.encode()
    )
    assert await rejected(hs)
    assert await rejected(fake_supabase.token("enc", key=rsa_key("a")))


def request_with(headers: dict[str, str]) -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "headers": raw})


COOKIE = "sb-127-auth-token"
NOT_UTF8 = b64url(b"\xff")


@pytest.mark.usefixtures("fake_supabase")
def test_token_from_request_bearer() -> None:
    headers = {
        "Authorization": "Bearer abc",
        "Cookie": f"{COOKIE}={session_cookie('c')}",
    }
    assert supabase.token_from_request(request_with(headers)) == "abc"
    assert (
        supabase.token_from_request(request_with({"Authorization": "Basic abc"}))
        is None
    )
    assert supabase.token_from_request(request_with({})) is None


@pytest.mark.parametrize(
    "value",
    [
        session_cookie("tok"),
        quote(json.dumps({"access_token": "tok"})),
        quote(json.dumps(["tok", "refresh", None])),
    ],
)
@pytest.mark.usefixtures("fake_supabase")
def test_token_from_request_cookie(value: str) -> None:
    request = request_with({"Cookie": f"{COOKIE}={value}"})
    assert supabase.token_from_request(request) == "tok"


@pytest.mark.usefixtures("fake_supabase")
def test_token_from_request_chunked_cookie() -> None:
    value = session_cookie("t" * 5000)
    chunks = [value[i : i + 3000] for i in range(0, len(value), 3000)]
    cookie = "; ".join(f"{COOKIE}.{i}={chunk}" for i, chunk in enumerate(chunks))
    request = request_with({"Cookie": f"{cookie}; {COOKIE}.9=ignored"})
    assert supabase.token_from_request(request) == "t" * 5000


@pytest.mark.parametrize(
    "cookie",
    [
        f"{COOKIE}=base64-!!!",
        f"{COOKIE}=base64-{NOT_UTF8}",
        f"{COOKIE}=not-json",
        f"{COOKIE}={quote(json.dumps({'access_token': 5}))}",
        f"{COOKIE}={quote(json.dumps([]))}",
        f"{COOKIE}={quote(json.dumps('tok'))}",
        f"sb-other-auth-token={session_cookie('tok')}",
    ],
)
@pytest.mark.usefixtures("fake_supabase")
def test_token_from_request_bad_cookie(cookie: str) -> None:
    assert supabase.token_from_request(request_with({"Cookie": cookie})) is None


def test_token_from_request_cookie_needs_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "SUPABASE_URL", None)
    request = request_with({"Cookie": f"{COOKIE}={session_cookie('tok')}"})
    assert supabase.token_from_request(request) is None


def test_project_ref_is_first_host_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "SUPABASE_URL", HttpUrl("https://abcd.supabase.co"))
    request = request_with({"Cookie": f"sb-abcd-auth-token={session_cookie('tok')}"})
    assert supabase.token_from_request(request) == "tok"
