"""A Supabase stand-in on loopback publishing a JWKS, and tokens made for it."""

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from functools import cache, partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import HttpUrl

from app.core import supabase
from app.core.config import settings
from tests.utils.servers import free_port

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
HS_SECRET = "super-secret-jwt-token-with-at-least-32-characters"


@cache
def rsa_key(_label: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key(_label: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(kid: str, key: SigningKey) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(
    header: dict[str, Any], claims: dict[str, Any], secret: bytes | None
) -> str:
    """A JWT built by hand: unsigned (alg none) or HMAC-SHA256 with any bytes."""
    signing_input = (
        f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    )
    if secret is None:
        return signing_input + "."
    digest = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(digest)}"


class FakeSupabase:
    """A Supabase stand-in: serves the JWKS of its published keys, mints tokens."""

    def __init__(self) -> None:
        self.keys: dict[str, SigningKey] = {"rsa-1": rsa_key("a"), "ec-1": ec_key("a")}
        self.published = dict(self.keys)
        self.fetches = 0
        self.status = 200
        self.body: bytes | None = None  # served instead of the JWKS when set
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != supabase.JWKS_PATH:
                    self.send_error(404)
                    return
                fake.fetches += 1
                jwks = [public_jwk(kid, key) for kid, key in fake.published.items()]
                body = fake.body or json.dumps({"keys": jwks}).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        host, port = self.server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self.issuer = f"{self.url}/auth/v1"

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Supabase-like claims; an override of None drops the claim."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": "authenticated",
            "sub": str(uuid.uuid4()),
            "email": f"user-{uuid.uuid4().hex[:12]}@example.com",
            "role": "authenticated",
            "is_anonymous": False,
            "iat": now,
            "exp": now + 3600,
        }
        return {k: v for k, v in (claims | overrides).items() if v is not None}

    def token(
        self, kid: str = "rsa-1", *, key: SigningKey | None = None, **overrides: Any
    ) -> str:
        key = key or self.keys[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        claims = self.claims(**overrides)
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def serve_fake_supabase(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSupabase]:
    """A running FakeSupabase, with SUPABASE_URL pointed at it (JWKS mode only)."""
    fake = FakeSupabase()
    # A short poll interval: shutdown() waits for it.
    serve = partial(fake.server.serve_forever, poll_interval=0.01)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setattr(settings, "SUPABASE_URL", HttpUrl(fake.url))
    monkeypatch.setattr(settings, "SUPABASE_JWT_SECRET", None)
    supabase.clear_cache()
    yield fake
    supabase.clear_cache()
    fake.server.shutdown()
    fake.server.server_close()
    thread.join()


def session_cookie(token: str) -> str:
    session = {"access_token": token, "refresh_token": "r", "token_type": "bearer"}
    return "base64-" + b64url(json.dumps(session).encode())
