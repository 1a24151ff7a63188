"""OWASP API Security Top 10 (2023), one class per category that applies: each test
makes the attack against the app and asserts the defence.

API1 object-level authorization, API2 authentication, API3 object property
authorization, API4 resource consumption, API5 function-level authorization, API6
sensitive business flows, API7 server-side request forgery (the identity provider's
keys), API8 security misconfiguration, API9 inventory, API10 unsafe consumption of
the identity provider's tokens and keys."""

import asyncio
import base64
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal, TypeVar

import jwt
import pytest
import time_machine
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from httpx import AsyncClient, Response
from pydantic import ValidationError
from sqlmodel import SQLModel, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud
from app.api import deps
from app.core import security, supabase
from app.core.config import BACKEND_DIR, Settings, settings
from app.main import app
from app.models import Item, Role, User, utcnow
from tests.utils import factories
from tests.utils.api import (
    API,
    assert_unauthorized,
    bearer,
    client_using,
    login,
    refresh,
)
from tests.utils.smtp import SmtpSink
from tests.utils.supabase import (
    HS_SECRET,
    FakeSupabase,
    b64url,
    raw_token,
    rsa_key,
    serve_fake_supabase,
)

T = TypeVar("T")
M = TypeVar("M", bound=SQLModel)
Level = Literal["public", "user", "staff", "superadmin"]

NOT_ENOUGH_PRIVILEGES = {"detail": "The user doesn't have enough privileges"}
ONLY_SUPERADMIN = {
    "detail": "Only a superadmin can create, change or delete admins and superadmins"
}
NOT_YOUR_ITEM = {"detail": "Not enough permissions"}
WRONG_PASSWORD = "not-the-password"
NEW_PASSWORD = "a-brand-new-password"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
USER_FIELDS = {
    "id",
    "email",
    "is_active",
    "is_superuser",
    "full_name",
    "created_at",
    "role",
    "email_verified_at",
}
ITEM_FIELDS = {"id", "title", "description", "owner_id", "created_at"}
SESSION_FIELDS = {
    "id",
    "created_at",
    "last_used_at",
    "expires_at",
    "client_address",
    "user_agent",
    "current",
}
SECRET_FIELDS = {
    "password",
    "hashed_password",
    "current_password",
    "new_password",
    "token_hash",
}
# What a leaked stack trace or internal error looks like.
INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|site-packages|sqlalchemy|psycopg|aiosqlite|pydantic_core"
)
MEGABYTE = 1024 * 1024

# Who may call each route: the function-level authorization map (API5) and the
# inventory (API9). A new route fails the tests until it is classified here.
ROUTE_ACCESS: dict[tuple[str, str], Level] = {
    ("GET", "/"): "public",
    ("POST", f"{API}/login/access-token"): "public",
    ("POST", f"{API}/login/refresh-token"): "public",
    ("POST", f"{API}/logout"): "user",
    ("POST", f"{API}/logout/all"): "user",
    ("POST", f"{API}/login/test-token"): "user",
    ("POST", f"{API}/password-recovery/{{email}}"): "public",
    ("POST", f"{API}/reset-password/"): "public",
    ("POST", f"{API}/verify-email/"): "public",
    ("POST", f"{API}/verify-email/resend"): "public",
    ("POST", f"{API}/password-recovery-html-content/{{email}}"): "superadmin",
    ("GET", f"{API}/users/"): "staff",
    ("POST", f"{API}/users/"): "staff",
    ("GET", f"{API}/users/me"): "user",
    ("PATCH", f"{API}/users/me"): "user",
    ("DELETE", f"{API}/users/me"): "user",
    ("PATCH", f"{API}/users/me/password"): "user",
    ("GET", f"{API}/users/me/sessions"): "user",
    ("DELETE", f"{API}/users/me/sessions/{{session_id}}"): "user",
    ("POST", f"{API}/users/signup"): "public",
    # Yourself as a user; anyone else only as staff (checked in the handler).
    ("GET", f"{API}/users/{{user_id}}"): "user",
    ("PATCH", f"{API}/users/{{user_id}}"): "staff",
    ("DELETE", f"{API}/users/{{user_id}}"): "staff",
    ("POST", f"{API}/utils/test-email/"): "superadmin",
    ("GET", f"{API}/utils/jobs/"): "staff",
    ("GET", f"{API}/utils/health-check/"): "public",
    ("GET", f"{API}/utils/ready/"): "public",
    ("GET", f"{API}/items/"): "user",
    ("POST", f"{API}/items/"): "user",
    ("GET", f"{API}/items/{{id}}"): "user",
    ("PUT", f"{API}/items/{{id}}"): "user",
    ("DELETE", f"{API}/items/{{id}}"): "user",
    ("GET", f"{API}/auth/verify_supabase_token"): "public",
    ("GET", f"{API}/auth/me"): "user",
    # Local environment only (the suite runs with ENVIRONMENT=local).
    ("POST", f"{API}/private/users/"): "public",
}
GUARDS: list[tuple[Callable[..., Any], Level]] = [
    (deps.get_current_active_superuser, "superadmin"),
    (deps.get_current_staff, "staff"),
    (deps.get_current_user, "user"),
]


# Helpers


async def reloaded(db: AsyncSession, model: type[M], row_id: uuid.UUID) -> M | None:
    """The row as stored now (not the copy in the session)."""
    db.expunge_all()
    return await db.get(model, row_id)


async def count_rows(db: AsyncSession, model: type[SQLModel]) -> int:
    return (await db.exec(select(func.count()).select_from(model))).one()


async def new_session(db: AsyncSession, user: User) -> tuple[uuid.UUID, str]:
    """A live login session of `user` and its access token."""
    user_session, _ = await crud.create_session(
        session=db, user=user, client_address="127.0.0.1", user_agent="tests"
    )
    return user_session.id, security.create_access_token(user.id, user_session.id)


@dataclass(frozen=True)
class ServedRoute:
    path: str
    methods: frozenset[str]
    name: str
    tags: tuple[str, ...]
    dependant: Dependant
    include_in_schema: bool


def served_routes() -> Iterator[tuple[RouteContext, str]]:
    """Every route the app serves, with its full path. FastAPI resolves included
    routers lazily: app.routes holds them unexpanded."""
    for context in iter_route_contexts(app.routes):
        assert context.path is not None
        yield context, context.path


def api_routes() -> list[ServedRoute]:
    """The API routes as served: full path, and every dependency they really run."""
    return [
        ServedRoute(
            path=path,
            methods=frozenset(context.methods or ()),
            name=str(context.name),
            tags=tuple(str(tag) for tag in context.tags),
            dependant=context.dependant,
            include_in_schema=bool(context.include_in_schema),
        )
        for context, path in served_routes()
        if isinstance(context.original_route, APIRoute) and path not in DOCS_PAGES
    ]


# The docs pages and the assets the app serves itself (app/api/routes/docs.py):
# HTML and scripts, outside the API and its OpenAPI document; and the metrics
# (app/api/routes/metrics.py), public to whoever reaches the backend directly:
# Prometheus on the internal network, never through the proxy's routers.
DOCS_PAGES = {
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/docs/static/redoc.standalone.js",
    "/metrics",
}


def route_keys() -> set[tuple[str, str]]:
    return {(method, route.path) for route in api_routes() for method in route.methods}


def fill(path: str, *, user: User, email: str | None = None) -> str:
    """A concrete URL for a route template: `user` for user ids, random other ids."""
    return path.format(
        user_id=user.id,
        email=email or user.email,
        id=uuid.uuid4(),
        session_id=uuid.uuid4(),
    )


def guard_level(route: ServedRoute) -> Level:
    """The strongest authorization dependency anywhere in the route's dependency tree."""
    calls: set[Any] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        calls.add(dependant.call)
        pending.extend(dependant.dependencies)
    for guard, level in GUARDS:
        if guard in calls:
            return level
    return "public"


def assert_no_internals(response: Response) -> None:
    assert not INTERNALS.search(response.text), response.text[:2000]
    assert str(BACKEND_DIR) not in response.text


def segment(data: dict[str, Any]) -> str:
    return b64url(json.dumps(data).encode())


def unsigned_token(claims: dict[str, Any], alg: str = "none") -> str:
    return f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims)}."


def sign(claims: dict[str, Any], key: str | None = None, alg: str = "HS256") -> str:
    with warnings.catch_warnings():  # PyJWT warns about short keys for HS512
        warnings.simplefilter("ignore")
        return jwt.encode(claims, key or settings.SECRET_KEY, algorithm=alg)


def future_cursor() -> str:
    """A hand-made keyset cursor placed after every row."""
    position = f"{datetime(9999, 1, 1, tzinfo=UTC).isoformat()}|{uuid.uuid4()}"
    return base64.urlsafe_b64encode(position.encode()).decode()


@dataclass
class HashingProbe:
    """Counts password hashes (and checks) and the most run at once."""

    calls: int = 0
    running: int = 0
    peak: int = 0
    hold_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, function: Callable[..., T]) -> Callable[..., T]:
        def tracked(*args: Any) -> T:
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                time.sleep(self.hold_seconds)
                return function(*args)
            finally:
                with self.lock:
                    self.running -= 1

        return tracked


@pytest.fixture
def hashing(monkeypatch: pytest.MonkeyPatch) -> HashingProbe:
    probe = HashingProbe()
    run_hashing = security._run_hashing

    async def counted(function: Callable[..., T], *args: str) -> T:
        probe.calls += 1
        return await run_hashing(probe.track(function), *args)

    monkeypatch.setattr(security, "_run_hashing", counted)
    return probe


def server_like_client(
    get_session: Callable[[], AsyncIterator[AsyncSession]],
) -> AbstractAsyncContextManager[AsyncClient]:
    """A client on the app whose unhandled errors come back as the 500 a real server
    sends (conftest's client raises them into the test instead)."""
    return client_using(get_session, raise_app_exceptions=False)


@pytest.fixture
async def server_client(db: AsyncSession) -> AsyncIterator[AsyncClient]:
    async def get_test_db() -> AsyncIterator[AsyncSession]:
        yield db

    async with server_like_client(get_test_db) as ac:
        yield ac


@pytest.fixture
async def victim(db: AsyncSession) -> User:
    return await factories.create_user(db, full_name="Victim")


@pytest.fixture
async def victim_item(db: AsyncSession, victim: User) -> Item:
    return await factories.create_item(db, owner=victim)


@contextmanager
def serving(fake: FakeSupabase) -> Iterator[FakeSupabase]:
    thread = threading.Thread(
        target=partial(fake.server.serve_forever, poll_interval=0.01), daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join()


@pytest.fixture
def supabase_project(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSupabase]:
    """The configured identity provider (SUPABASE_URL points at it)."""
    yield from serve_fake_supabase(monkeypatch)


@pytest.fixture
def attacker_host() -> Iterator[FakeSupabase]:
    """A server the attacker controls, publishing keys of its own."""
    fake = FakeSupabase()
    fake.keys = {"evil-1": rsa_key("attacker")}
    fake.published = dict(fake.keys)
    with serving(fake) as running:
        yield running


# Settings that take effect at import (docs, CORS, mounted routers) are checked in
# another interpreter, which imports the app afresh under each configuration.
APP_PROBE = """
import json, os, sys, warnings
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlmodel import SQLModel
warnings.simplefilter("ignore")
configurations, origins = json.loads(sys.argv[1]), json.loads(sys.argv[2])
varied = {name for environment in configurations.values() for name in environment}
docs = ["/docs", "/docs/oauth2-redirect", "/redoc", "/api/v1/openapi.json",
        "/docs/static/swagger-ui-bundle.js", "/docs/static/redoc.standalone.js"]
results = {}
for configuration, environment in configurations.items():
    for name in varied:
        os.environ.pop(name, None)
    os.environ.update(environment)
    for module in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        del sys.modules[module]
    SQLModel.metadata.clear()  # the tables are defined again
    for metric in set(REGISTRY._names_to_collectors.values()):  # and the metrics
        REGISTRY.unregister(metric)
    from app.main import app
    client = TestClient(app)
    def cors(origin):
        response = client.options("/api/v1/users/me", headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        })
        return response.headers.get("access-control-allow-origin")
    results[configuration] = {
        "status": {path: client.get(path).status_code for path in docs},
        "root": client.get("/").json(),
        "debug": app.debug,
        "routes": sorted(
            method + " " + context.path
            for context in iter_route_contexts(app.routes)
            if isinstance(context.original_route, APIRoute)
            for method in context.methods
        ),
        "private_status": client.post("/api/v1/private/users/", json={}).status_code,
        "cors": {origin: cors(origin) for origin in origins},
    }
print("PROBE " + json.dumps(results))
"""
PROBED_ORIGINS = [
    "https://app.example.com",
    "https://dashboard.example.com",
    "https://evil.example",
    "https://app.example.com.evil.example",
    "http://app.example.com",
    "null",
]
PROBES: dict[str, dict[str, str]] = {
    "production": {
        "ENVIRONMENT": "production",
        "BACKEND_CORS_ORIGINS": "https://app.example.com",
        "FRONTEND_HOST": "https://dashboard.example.com",
    },
    "production_docs_on": {"ENVIRONMENT": "production", "DOCS_ENABLED": "true"},
    "local_docs_off": {"ENVIRONMENT": "local", "DOCS_ENABLED": "false"},
}


@pytest.fixture(scope="module", autouse=True)
def app_probe_process() -> Iterator[subprocess.Popen[str]]:
    """Started with the module's first test, so that it runs beside the others."""
    env = {
        **os.environ,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "FIRST_SUPERUSER_PASSWORD": secrets.token_urlsafe(16),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
        "SENTRY_DSN": "",
    }
    arguments = [json.dumps(PROBES), json.dumps(PROBED_ORIGINS)]
    with subprocess.Popen(
        [sys.executable, "-c", APP_PROBE, *arguments],
        cwd=BACKEND_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        yield process
        process.kill()


@pytest.fixture(scope="module")
def app_probes(
    app_probe_process: subprocess.Popen[str],
) -> dict[str, dict[str, Any]]:
    """What the app serves when imported under each of PROBES."""
    stdout, stderr = app_probe_process.communicate(timeout=120)
    assert app_probe_process.returncode == 0, stderr
    (line,) = [line for line in stdout.splitlines() if line.startswith("PROBE ")]
    results: dict[str, dict[str, Any]] = json.loads(line.removeprefix("PROBE "))
    return results


class TestAPI1BrokenObjectLevelAuthorization:
    """Ids are easy to learn: every object is checked against the caller."""

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
    async def test_user_cannot_read_change_or_delete_another_users_item(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user_headers: dict[str, str],
        victim_item: Item,
        method: str,
    ) -> None:
        title = victim_item.title

        response = await client.request(
            method,
            f"{API}/items/{victim_item.id}",
            headers=user_headers,
            json={"title": "pwned"} if method == "PUT" else None,
        )

        assert response.status_code == 403
        assert response.json() == NOT_YOUR_ITEM
        stored = await reloaded(db, Item, victim_item.id)
        assert stored is not None and stored.title == title

    async def test_item_list_holds_only_own_items_whatever_the_cursor(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
        victim_item: Item,
    ) -> None:
        own = await factories.create_item(db, owner=user)

        for params in ({}, {"cursor": future_cursor()}, {"skip": 0, "limit": 100}):
            response = await client.get(
                f"{API}/items/", headers=user_headers, params=params
            )

            assert response.status_code == 200
            body = response.json()
            assert [row["id"] for row in body["data"]] == [str(own.id)]
            assert body["count"] == 1
            assert str(victim_item.id) not in response.text

    async def test_user_cannot_read_another_user_nor_tell_which_ids_exist(
        self, client: AsyncClient, user_headers: dict[str, str], victim: User
    ) -> None:
        existing = await client.get(f"{API}/users/{victim.id}", headers=user_headers)
        unknown = await client.get(f"{API}/users/{uuid.uuid4()}", headers=user_headers)

        assert existing.status_code == unknown.status_code == 403
        assert existing.json() == unknown.json() == NOT_ENOUGH_PRIVILEGES

    @pytest.mark.parametrize(
        ("method", "body"),
        [
            ("PATCH", {"full_name": "pwned"}),
            ("PATCH", {"password": "attacker-password", "is_active": False}),
            ("DELETE", None),
        ],
    )
    async def test_user_cannot_change_or_delete_another_user(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user_headers: dict[str, str],
        victim: User,
        method: str,
        body: dict[str, Any] | None,
    ) -> None:
        hashed_password = victim.hashed_password

        response = await client.request(
            method, f"{API}/users/{victim.id}", headers=user_headers, json=body
        )

        assert response.status_code == 403
        assert response.json() == NOT_ENOUGH_PRIVILEGES
        stored = await reloaded(db, User, victim.id)
        assert stored is not None
        assert (stored.full_name, stored.is_active) == ("Victim", True)
        assert stored.hashed_password == hashed_password

    @pytest.mark.parametrize("target_role", [Role.admin, Role.superadmin])
    @pytest.mark.parametrize(
        ("method", "body"),
        [
            ("PATCH", {"full_name": "pwned"}),
            ("PATCH", {"password": "attacker-password"}),
            ("PATCH", {"is_active": False}),
            ("PATCH", {"email": "takeover@example.com"}),
            ("DELETE", None),
        ],
    )
    async def test_admin_cannot_change_or_delete_staff(
        self,
        client: AsyncClient,
        db: AsyncSession,
        admin_headers: dict[str, str],
        target_role: Role,
        method: str,
        body: dict[str, Any] | None,
    ) -> None:
        target = await factories.create_user(db, role=target_role, full_name="Staff")
        email, hashed_password = target.email, target.hashed_password

        response = await client.request(
            method, f"{API}/users/{target.id}", headers=admin_headers, json=body
        )

        assert response.status_code == 403
        assert response.json() == ONLY_SUPERADMIN
        stored = await reloaded(db, User, target.id)
        assert stored is not None
        assert (stored.email, stored.full_name, stored.is_active) == (
            email,
            "Staff",
            True,
        )
        assert (stored.role, stored.hashed_password) == (target_role, hashed_password)

    @pytest.mark.parametrize("attacker_role", [Role.user, Role.admin])
    async def test_nobody_can_end_another_users_session(
        self,
        client: AsyncClient,
        db: AsyncSession,
        victim: User,
        attacker_role: Role,
    ) -> None:
        attacker = await factories.create_user(db, role=attacker_role)
        _, attacker_token = await new_session(db, attacker)
        victim_session_id, victim_token = await new_session(db, victim)

        response = await client.delete(
            f"{API}/users/me/sessions/{victim_session_id}",
            headers=bearer(attacker_token),
        )

        assert response.status_code == 404
        assert response.json() == {"detail": "Session not found"}
        still_in = await client.get(f"{API}/users/me", headers=bearer(victim_token))
        assert still_in.status_code == 200


@dataclass
class TokenTarget:
    """A superadmin with a live session: what a forged token would impersonate."""

    victim: User
    session_id: uuid.UUID
    attacker_token: str  # a genuine token of an ordinary user

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid access claims for the victim's live session; None drops a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": str(self.victim.id),
            "type": "access",
            "sid": str(self.session_id),
            "iat": now,
            "exp": now + 600,
        }
        merged = claims | overrides
        return {name: value for name, value in merged.items() if value is not None}


def tampered_payload(target: TokenTarget) -> str:
    header, _, signature = target.attacker_token.split(".")
    return f"{header}.{segment(target.claims())}.{signature}"


def signed_with_another_key(target: TokenTarget) -> str:
    return sign(target.claims(), key="an-attackers-guess-at-the-secret-0123456789")


def alg_none(target: TokenTarget) -> str:
    return unsigned_token(target.claims())


def alg_none_capitalised(target: TokenTarget) -> str:
    return unsigned_token(target.claims(), alg="None")


def signature_stripped(target: TokenTarget) -> str:
    header, payload, _ = sign(target.claims()).split(".")
    return f"{header}.{payload}."


def hs512_with_the_real_key(target: TokenTarget) -> str:
    return sign(target.claims(), alg="HS512")


def expired(target: TokenTarget) -> str:
    now = int(time.time())
    return sign(target.claims(iat=now - 3600, exp=now - 60))


def without_expiry(target: TokenTarget) -> str:
    return sign(target.claims(exp=None))


def without_session(target: TokenTarget) -> str:
    return sign(target.claims(sid=None))


def session_of_another_user(target: TokenTarget) -> str:
    attacker_claims = jwt.decode(
        target.attacker_token, options={"verify_signature": False}
    )
    return sign(target.claims(sid=attacker_claims["sid"]))


def password_reset_token(target: TokenTarget) -> str:
    return security.create_password_reset_token(
        target.victim.id, target.victim.hashed_password
    )


def email_verification_token(target: TokenTarget) -> str:
    return security.create_email_verification_token(
        target.victim.id, target.victim.email
    )


FORGERIES = [
    tampered_payload,
    signed_with_another_key,
    alg_none,
    alg_none_capitalised,
    signature_stripped,
    hs512_with_the_real_key,
    expired,
    without_expiry,
    without_session,
    session_of_another_user,
    password_reset_token,
    email_verification_token,
]


@pytest.fixture
async def token_target(
    db: AsyncSession, superuser: User, user: User
) -> AsyncIterator[TokenTarget]:
    session_id, _ = await new_session(db, superuser)
    _, attacker_token = await new_session(db, user)
    yield TokenTarget(superuser, session_id, attacker_token)


class TestAPI2BrokenAuthentication:
    """Only a token this API signed, of type access, unexpired and bound to a live
    session of its subject, authenticates; every other one gets 401."""

    async def test_well_formed_claims_for_the_victim_do_work(
        self, client: AsyncClient, token_target: TokenTarget
    ) -> None:
        """Control: the claims the forgeries carry are enough, when properly signed."""
        response = await client.get(
            f"{API}/users/", headers=bearer(sign(token_target.claims()))
        )

        assert response.status_code == 200

    @pytest.mark.parametrize("forge", FORGERIES, ids=[f.__name__ for f in FORGERIES])
    async def test_forged_tokens_are_rejected(
        self,
        client: AsyncClient,
        token_target: TokenTarget,
        forge: Callable[[TokenTarget], str],
    ) -> None:
        response = await client.get(
            f"{API}/users/", headers=bearer(forge(token_target))
        )

        assert_unauthorized(response)
        assert token_target.victim.email not in response.text

    @pytest.mark.parametrize(
        "place",
        ["query access_token", "query token", "cookie", "basic scheme", "no scheme"],
    )
    async def test_token_only_accepted_as_bearer_header(
        self, client: AsyncClient, db: AsyncSession, user: User, place: str
    ) -> None:
        """Tokens in URLs end up in logs and browser history; other schemes are not ours."""
        _, token = await new_session(db, user)
        requests: dict[str, dict[str, Any]] = {
            "query access_token": {"params": {"access_token": token}},
            "query token": {"params": {"token": token}},
            "cookie": {"headers": {"Cookie": f"access_token={token}; token={token}"}},
            "basic scheme": {"headers": {"Authorization": f"Basic {token}"}},
            "no scheme": {"headers": {"Authorization": token}},
        }
        response = await client.get(f"{API}/users/me", **requests[place])

        assert_unauthorized(response)

    async def test_token_dies_with_its_session(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        _, token = await new_session(db, user)
        assert (await client.post(f"{API}/logout", headers=bearer(token))).is_success

        assert_unauthorized(await client.get(f"{API}/users/me", headers=bearer(token)))

    async def test_replayed_refresh_token_ends_the_session(
        self, client: AsyncClient, user: User
    ) -> None:
        first = (await login(client, user.email, factories.DEFAULT_PASSWORD)).json()
        second = (await refresh(client, first["refresh_token"])).json()

        replay = await refresh(client, first["refresh_token"])

        assert_unauthorized(replay)
        for token in (first["access_token"], second["access_token"]):
            assert_unauthorized(
                await client.get(f"{API}/users/me", headers=bearer(token))
            )
        assert_unauthorized(await refresh(client, second["refresh_token"]))

    async def test_refresh_token_is_no_access_token(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        _, refresh_token = await crud.create_session(
            session=db, user=user, client_address="127.0.0.1", user_agent="tests"
        )

        response = await client.get(f"{API}/users/me", headers=bearer(refresh_token))

        assert_unauthorized(response)

    async def test_login_failure_tells_nothing_about_accounts(
        self, client: AsyncClient, user: User
    ) -> None:
        wrong_password = await login(client, user.email, WRONG_PASSWORD)
        unknown_email = await login(client, factories.random_email(), WRONG_PASSWORD)

        assert wrong_password.status_code == unknown_email.status_code == 400
        assert wrong_password.json() == unknown_email.json()
        assert wrong_password.json() == {"detail": "Incorrect email or password"}

    async def test_password_change_guesses_are_rate_limited(
        self,
        client: AsyncClient,
        user_headers: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A stolen access token must not become an unthrottled oracle for the
        account's password: wrong current passwords count like failed logins."""
        monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 2)
        guesses = [f"guess-number-{n}" for n in range(3)]

        codes = [
            (
                await client.patch(
                    f"{API}/users/me/password",
                    headers=user_headers,
                    json={"current_password": guess, "new_password": NEW_PASSWORD},
                )
            ).status_code
            for guess in guesses
        ]

        assert codes == [400, 400, 429]


class TestAPI3BrokenObjectPropertyLevelAuthorization:
    """Clients set only the fields their role may set, and see only public fields."""

    PRIVILEGED_USER_FIELDS: dict[str, Any] = {
        "role": "superadmin",
        "is_superuser": True,
        "id": str(uuid.UUID(int=1)),
        "created_at": "2000-01-01T00:00:00Z",
        "email_verified_at": "2000-01-01T00:00:00Z",
        "hashed_password": "$argon2id$v=19$m=65536,t=3,p=4$forged",
    }

    async def test_signup_ignores_privileged_fields(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        email = factories.random_email()

        response = await client.post(
            f"{API}/users/signup",
            json={
                "email": email,
                "password": NEW_PASSWORD,
                "is_active": False,
                **self.PRIVILEGED_USER_FIELDS,
            },
        )

        assert response.status_code == 200
        body = response.json()
        assert (body["role"], body["is_superuser"], body["is_active"]) == (
            "user",
            False,
            True,
        )
        assert body["id"] != self.PRIVILEGED_USER_FIELDS["id"]
        assert body["email_verified_at"] is None
        assert datetime.fromisoformat(body["created_at"]) > utcnow() - timedelta(
            minutes=5
        )
        stored = await reloaded(db, User, uuid.UUID(body["id"]))
        assert stored is not None
        assert security.password_hash.verify(NEW_PASSWORD, stored.hashed_password)

    @pytest.mark.parametrize("role", [Role.user, Role.admin])
    async def test_update_me_ignores_privileged_fields(
        self, client: AsyncClient, db: AsyncSession, role: Role
    ) -> None:
        attacker = await factories.create_user(db, role=role, verified=False)
        created_at, hashed_password = attacker.created_at, attacker.hashed_password
        _, token = await new_session(db, attacker)

        response = await client.patch(
            f"{API}/users/me",
            headers=bearer(token),
            json={"full_name": "New Name", **self.PRIVILEGED_USER_FIELDS},
        )

        assert response.status_code == 200
        assert response.json()["full_name"] == "New Name"
        stored = await reloaded(db, User, attacker.id)
        assert stored is not None
        assert (stored.role, stored.created_at, stored.email_verified_at) == (
            role,
            created_at,
            None,
        )
        assert stored.hashed_password == hashed_password

    async def test_item_create_ignores_owner_id_id_and_created_at(
        self,
        client: AsyncClient,
        user: User,
        user_headers: dict[str, str],
        victim: User,
    ) -> None:
        chosen_id = str(uuid.uuid4())

        response = await client.post(
            f"{API}/items/",
            headers=user_headers,
            json={
                "title": "Planted",
                "owner_id": str(victim.id),
                "id": chosen_id,
                "created_at": "2000-01-01T00:00:00Z",
            },
        )

        assert response.status_code == 200
        body = response.json()
        assert body["owner_id"] == str(user.id)
        assert body["id"] != chosen_id
        assert datetime.fromisoformat(body["created_at"]).year > 2000

    @pytest.mark.parametrize("role", [Role.user, Role.admin])
    async def test_item_update_cannot_move_or_rename_the_row(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        victim: User,
        role: Role,
    ) -> None:
        """The owner (or an admin, who manages every item) changes only title and description."""
        item = await factories.create_item(db, owner=user)
        item_id, created_at = item.id, item.created_at
        editor = (
            user if role == Role.user else await factories.create_user(db, role=role)
        )
        _, token = await new_session(db, editor)

        response = await client.put(
            f"{API}/items/{item_id}",
            headers=bearer(token),
            json={
                "title": "Renamed",
                "owner_id": str(victim.id),
                "id": str(uuid.uuid4()),
                "created_at": "2000-01-01T00:00:00Z",
            },
        )

        assert response.status_code == 200
        stored = await reloaded(db, Item, item_id)
        assert stored is not None
        assert (stored.title, stored.owner_id, stored.created_at) == (
            "Renamed",
            user.id,
            created_at,
        )

    @pytest.mark.parametrize(
        "fields",
        [{"role": "admin"}, {"role": "superadmin"}, {"is_superuser": True}],
    )
    async def test_admin_cannot_grant_staff_roles(
        self,
        client: AsyncClient,
        db: AsyncSession,
        admin_headers: dict[str, str],
        victim: User,
        fields: dict[str, Any],
    ) -> None:
        users_before = await count_rows(db, User)

        created = await client.post(
            f"{API}/users/",
            headers=admin_headers,
            json={
                "email": factories.random_email(),
                "password": NEW_PASSWORD,
                **fields,
            },
        )
        promoted = await client.patch(
            f"{API}/users/{victim.id}", headers=admin_headers, json=fields
        )

        for response in (created, promoted):
            assert response.status_code == 403
            assert response.json() == ONLY_SUPERADMIN
        assert await count_rows(db, User) == users_before
        stored = await reloaded(db, User, victim.id)
        assert stored is not None and stored.role == Role.user

    async def test_responses_expose_only_public_fields(
        self,
        client: AsyncClient,
        user: User,
        admin_headers: dict[str, str],
        item: Item,
    ) -> None:
        token = (await login(client, user.email, factories.DEFAULT_PASSWORD)).json()
        headers = bearer(token["access_token"])

        me = (await client.get(f"{API}/users/me", headers=headers)).json()
        users = (await client.get(f"{API}/users/", headers=admin_headers)).json()
        items = (await client.get(f"{API}/items/", headers=headers)).json()
        sessions = (
            await client.get(f"{API}/users/me/sessions", headers=headers)
        ).json()

        assert set(token) == {
            "access_token",
            "token_type",
            "refresh_token",
            "expires_in",
        }
        assert set(me) == USER_FIELDS
        assert users["data"] and all(set(row) == USER_FIELDS for row in users["data"])
        assert [set(row) for row in items["data"]] == [ITEM_FIELDS]
        assert [set(row) for row in sessions["data"]] == [SESSION_FIELDS]

    async def test_no_response_schema_holds_a_secret(self, client: AsyncClient) -> None:
        document = (await client.get(f"{API}/openapi.json")).json()
        schemas = document["components"]["schemas"]

        def properties(node: Any, seen: set[str]) -> set[str]:
            """Every property name reachable from a schema node."""
            found: set[str] = set()
            if isinstance(node, dict):
                reference = node.get("$ref")
                if isinstance(reference, str):
                    name = reference.rsplit("/", 1)[-1]
                    if name not in seen:
                        seen.add(name)
                        found |= properties(schemas[name], seen)
                found |= set(node.get("properties", {}))
                for value in node.values():
                    found |= properties(value, seen)
            elif isinstance(node, list):
                for value in node:
                    found |= properties(value, seen)
            return found

        responses = [
            operation["responses"]
            for operations in document["paths"].values()
            for operation in operations.values()
        ]
        exposed = properties(responses, set())
        assert "email" in exposed  # the walk reaches the response models
        assert not exposed & SECRET_FIELDS


class TestAPI4UnrestrictedResourceConsumption:
    """Every input is bounded and rejected before expensive work; password hashing,
    the expensive work, is bounded and never done for a blocked client."""

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": settings.MAX_PAGE_SIZE + 1},
            {"limit": 10**9},
            {"limit": 0},
            {"limit": -1},
            {"skip": -1},
            {"skip": 2**31},
            {"skip": 10**30},
            {"cursor": "A" * 201},
            {"cursor": "not-a-cursor"},
        ],
    )
    async def test_page_bounds(
        self,
        client: AsyncClient,
        admin_headers: dict[str, str],
        params: dict[str, Any],
    ) -> None:
        for path in (f"{API}/items/", f"{API}/users/"):
            response = await client.get(path, headers=admin_headers, params=params)

            assert response.status_code == 422, (path, response.text)

    async def test_every_string_input_is_bounded(self, client: AsyncClient) -> None:
        """Each string a client sends (parameter, JSON or form field) has a maximum
        length, or a format or pattern that bounds it."""
        document = (await client.get(f"{API}/openapi.json")).json()
        schemas = document["components"]["schemas"]
        unbounded: list[str] = []

        def check(where: str, schema: dict[str, Any]) -> None:
            if "$ref" in schema:
                check(where, schemas[schema["$ref"].rsplit("/", 1)[-1]])
                return
            for option in schema.get("anyOf", []) + schema.get("allOf", []):
                check(where, option)
            for name, child in schema.get("properties", {}).items():
                check(f"{where}.{name}", child)
            if "items" in schema:
                unbounded.append(f"{where}: an array")  # no list inputs today
            bounded = "maxLength" in schema or "enum" in schema or "const" in schema
            bounded |= schema.get("format") in {"uuid", "date-time"}
            bounded |= str(schema.get("pattern", "")).endswith("$")
            if schema.get("type") == "string" and not bounded:
                unbounded.append(where)

        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                where = f"{method.upper()} {path}"
                for parameter in operation.get("parameters", []):
                    check(f"{where} {parameter['name']}", parameter["schema"])
                for media in (
                    operation.get("requestBody", {}).get("content", {}).values()
                ):
                    check(f"{where} body", media["schema"])
        assert unbounded == []

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            (f"{API}/items/", {"title": "x" * 256}),
            (f"{API}/items/", {"title": "ok", "description": "x" * 256}),
            (f"{API}/users/me", {"full_name": "x" * 256}),
            (
                f"{API}/users/me",
                {"email": f"{'x' * 64}@{'y' * 63}.{'z' * 63}.{'w' * 60}.com"},
            ),
        ],
    )
    async def test_oversized_strings_are_rejected(
        self,
        server_client: AsyncClient,
        db: AsyncSession,
        user_headers: dict[str, str],
        path: str,
        body: dict[str, Any],
    ) -> None:
        items_before = await count_rows(db, Item)
        method = "POST" if path.endswith("/items/") else "PATCH"

        response = await server_client.request(
            method, path, headers=user_headers, json=body
        )

        assert response.status_code == 422
        assert await count_rows(db, Item) == items_before

    async def test_megabyte_passwords_are_refused_before_hashing(
        self,
        server_client: AsyncClient,
        user: User,
        user_headers: dict[str, str],
        hashing: HashingProbe,
    ) -> None:
        huge = "p" * MEGABYTE
        token = security.create_password_reset_token(user.id, user.hashed_password)

        signup = await server_client.post(
            f"{API}/users/signup",
            json={"email": factories.random_email(), "password": huge},
        )
        reset = await server_client.post(
            f"{API}/reset-password/", json={"token": token, "new_password": huge}
        )
        change = await server_client.patch(
            f"{API}/users/me/password",
            headers=user_headers,
            json={"current_password": huge, "new_password": NEW_PASSWORD},
        )
        form_login = await login(server_client, user.email, huge)

        # Each body is over MAX_REQUEST_BODY_BYTES (1 MiB): refused unread.
        for response in (signup, reset, change, form_login):
            assert response.status_code == 413
        assert hashing.calls == 0

    async def test_multi_megabyte_json_body_is_413(
        self, server_client: AsyncClient, db: AsyncSession, user_headers: dict[str, str]
    ) -> None:
        """The app's own body limit (MAX_REQUEST_BODY_BYTES), with or without the
        proxy in front."""
        items_before = await count_rows(db, Item)

        response = await server_client.post(
            f"{API}/items/",
            headers=user_headers,
            json={"title": "t" * (4 * MEGABYTE), "description": "d" * MEGABYTE},
        )

        assert response.status_code == 413
        assert response.json()["detail"].startswith("Request body too large")
        assert await count_rows(db, Item) == items_before

    async def test_deeply_nested_json_is_refused_not_a_crash(
        self, server_client: AsyncClient, user_headers: dict[str, str]
    ) -> None:
        depth = 100_000
        body = b'{"title": ' + b"[" * depth + b"]" * depth + b"}"

        response = await server_client.post(
            f"{API}/items/",
            headers={**user_headers, "Content-Type": "application/json"},
            content=body,
        )

        assert response.status_code in (400, 422)
        assert_no_internals(response)

    async def test_hashing_runs_at_most_password_hash_concurrency_at_once(
        self, committing_client: AsyncClient, hashing: HashingProbe
    ) -> None:
        """A burst of logins and signups queues for the hashing pool instead of
        taking every core (and ~64 MiB of memory per hash)."""
        hashing.hold_seconds = 0.05  # hashes overlap for sure if nothing bounds them
        burst = [
            login(committing_client, factories.random_email(), WRONG_PASSWORD)
            for _ in range(3)
        ] + [
            committing_client.post(
                f"{API}/users/signup",
                json={"email": factories.random_email(), "password": NEW_PASSWORD},
            )
            for _ in range(3)
        ]

        responses = await asyncio.gather(*burst)

        assert [r.status_code for r in responses] == [400] * 3 + [200] * 3
        assert hashing.calls == 6
        assert 1 <= hashing.peak <= settings.PASSWORD_HASH_CONCURRENCY

    async def test_blocked_login_costs_no_hash(
        self,
        client: AsyncClient,
        monkeypatch: pytest.MonkeyPatch,
        hashing: HashingProbe,
    ) -> None:
        """Rate limits are checked before the password: a 429 hashes nothing, a
        400 hashes once (the hashing threads' own count, interleaved, in one run).
        Counted rather than timed: a timing on this shared machine was flaky."""
        monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 2)
        monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ADDRESS", 1000)
        blocked = factories.random_email()
        for _ in range(3):
            await login(client, blocked, WRONG_PASSWORD)
        hashes_by_status: dict[int, list[int]] = {400: [], 429: []}

        for _ in range(5):
            for email in (blocked, factories.random_email()):
                hashes_before = hashing.calls
                response = await login(client, email, WRONG_PASSWORD)
                hashes_by_status[response.status_code].append(
                    hashing.calls - hashes_before
                )

        assert hashes_by_status == {400: [1] * 5, 429: [0] * 5}


class TestAPI5BrokenFunctionLevelAuthorization:
    """Every route has an access level, enforced by a dependency: anonymous callers,
    users and admins are refused what is above them."""

    def test_every_route_is_classified(self) -> None:
        assert route_keys() == set(ROUTE_ACCESS)

    def test_guards_match_the_access_map(self) -> None:
        actual = {
            (method, route.path): guard_level(route)
            for route in api_routes()
            for method in route.methods
        }

        assert actual == ROUTE_ACCESS

    async def test_anonymous_callers_get_401_everywhere_but_public_routes(
        self,
        client: AsyncClient,
        victim: User,
    ) -> None:
        protected = [key for key, level in ROUTE_ACCESS.items() if level != "public"]

        for method, path in protected:
            response = await client.request(method, fill(path, user=victim))

            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"

    def privileged_calls(self, victim: User) -> dict[tuple[str, str], dict[str, Any]]:
        """A request to each staff and superadmin route that a superadmin could make."""
        return {
            ("GET", f"{API}/users/"): {},
            ("POST", f"{API}/users/"): {
                "json": {"email": factories.random_email(), "password": NEW_PASSWORD}
            },
            ("GET", f"{API}/users/{{user_id}}"): {},
            ("PATCH", f"{API}/users/{{user_id}}"): {
                "json": {"full_name": "pwned", "is_active": False}
            },
            ("DELETE", f"{API}/users/{{user_id}}"): {},
            ("POST", f"{API}/password-recovery-html-content/{{email}}"): {},
            ("POST", f"{API}/utils/test-email/"): {
                "params": {"email_to": victim.email}
            },
            ("GET", f"{API}/utils/jobs/"): {},
        }

    async def test_user_is_refused_every_admin_route(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user_headers: dict[str, str],
        victim: User,
    ) -> None:
        calls = self.privileged_calls(victim)
        staff_routes = {
            k for k, level in ROUTE_ACCESS.items() if level in ("staff", "superadmin")
        }
        assert set(calls) == staff_routes | {("GET", f"{API}/users/{{user_id}}")}
        users_before = await count_rows(db, User)

        for (method, path), request in calls.items():
            response = await client.request(
                method, fill(path, user=victim), headers=user_headers, **request
            )

            assert response.status_code == 403, (method, path, response.text)
            assert response.json() == NOT_ENOUGH_PRIVILEGES
            assert victim.email not in response.text
        assert await count_rows(db, User) == users_before
        stored = await reloaded(db, User, victim.id)
        assert stored is not None and (stored.full_name, stored.is_active) == (
            "Victim",
            True,
        )

    async def test_admin_is_refused_every_superadmin_route(
        self,
        client: AsyncClient,
        admin_headers: dict[str, str],
        victim: User,
    ) -> None:
        calls = self.privileged_calls(victim)
        superadmin_routes = [
            k for k, level in ROUTE_ACCESS.items() if level == "superadmin"
        ]
        assert superadmin_routes

        for method, path in superadmin_routes:
            response = await client.request(
                method,
                fill(path, user=victim),
                headers=admin_headers,
                **calls[(method, path)],
            )

            assert response.status_code == 403, (method, path, response.text)
            assert response.json() == NOT_ENOUGH_PRIVILEGES

    @pytest.mark.parametrize(
        "header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"]
    )
    async def test_method_override_headers_are_ignored(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
        header: str,
    ) -> None:
        """A GET the user may make (their own record) does not become a DELETE."""
        headers = {**user_headers, header: "DELETE"}

        read = await client.get(f"{API}/users/{user.id}", headers=headers)
        posted = await client.post(f"{API}/users/me", headers=headers)

        assert read.status_code == 200
        assert read.json()["id"] == str(user.id)
        assert posted.status_code == 405
        assert await reloaded(db, User, user.id) is not None


class TestAPI6UnrestrictedAccessToSensitiveBusinessFlows:
    """Flows that cost a password hash or send an email are limited per account
    (or target address) and per client: 429 with Retry-After."""

    async def test_login_brute_force_locks_the_account(
        self, client: AsyncClient, user: User, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 2)

        codes = [
            (await login(client, user.email, f"guess-{n}")).status_code
            for n in range(3)
        ]
        right_password = await login(client, user.email, factories.DEFAULT_PASSWORD)

        assert codes == [400, 400, 429]
        assert right_password.status_code == 429
        retry_after = int(right_password.headers["retry-after"])
        assert 0 < retry_after <= settings.LOGIN_FAILURE_WINDOW_SECONDS

    async def test_password_spraying_locks_the_client_whatever_it_claims(
        self, client: AsyncClient, user: User, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One guess at many accounts; X-Forwarded-For from a client is no new address
        (only the proxy's, trusted by uvicorn, is)."""
        monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ADDRESS", 2)

        async def spoofed_login(email: str, password: str, n: int) -> Response:
            return await client.post(
                f"{API}/login/access-token",
                data={"username": email, "password": password},
                headers={
                    "X-Forwarded-For": f"198.51.100.{n}",
                    "X-Real-IP": f"198.51.100.{n}",
                    "Forwarded": f"for=198.51.100.{n}",
                },
            )

        for n in range(2):
            guess = await spoofed_login(factories.random_email(), WRONG_PASSWORD, n)
            assert guess.status_code == 400

        response = await spoofed_login(user.email, factories.DEFAULT_PASSWORD, 3)

        assert response.status_code == 429
        assert int(response.headers["retry-after"]) > 0

    async def test_recovery_emails_limited_per_address(
        self, client: AsyncClient, user: User, smtp_server: SmtpSink
    ) -> None:
        """A burst for one address gets one email through (the cooldown); spaced
        out, the requests of one client get EMAIL_REQUESTS_PER_ADDRESS_AND_CLIENT."""
        allowed = settings.EMAIL_REQUESTS_PER_ADDRESS_AND_CLIENT
        codes = []
        with time_machine.travel(utcnow(), tick=False) as clock:
            for _ in range(allowed + 1):
                for _ in range(2):
                    response = await client.post(
                        f"{API}/password-recovery/{user.email}"
                    )
                    codes.append(response.status_code)
                clock.shift(settings.EMAIL_COOLDOWN_SECONDS)

        assert codes == [200, 429] * allowed + [429, 429]
        assert len(smtp_server.messages) == allowed

    async def test_emailing_flows_share_a_budget_per_client(
        self, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Recovery and verification resends to ever new addresses, from one client."""
        monkeypatch.setattr(settings, "EMAIL_REQUESTS_PER_CLIENT", 3)

        async def recover() -> int:
            email = factories.random_email()
            return (await client.post(f"{API}/password-recovery/{email}")).status_code

        async def resend() -> int:
            body = {"email": factories.random_email()}
            return (
                await client.post(f"{API}/verify-email/resend", json=body)
            ).status_code

        codes = [await recover(), await resend(), await recover(), await resend()]

        assert codes == [200, 200, 200, 429]

    async def test_signup_is_rate_limited_per_client(
        self,
        client: AsyncClient,
        db: AsyncSession,
        monkeypatch: pytest.MonkeyPatch,
        hashing: HashingProbe,
    ) -> None:
        """Signup hashes a password and emails a verification link to any address: a
        script must not create accounts, burn CPU or mail strangers without limit
        (SIGNUPS_PER_CLIENT)."""
        monkeypatch.setattr(settings, "SIGNUPS_PER_CLIENT", 2)
        users_before = await count_rows(db, User)

        codes = []
        for _ in range(3):
            hashes_before = hashing.calls
            response = await client.post(
                f"{API}/users/signup",
                json={"email": factories.random_email(), "password": NEW_PASSWORD},
            )
            codes.append(response.status_code)

        assert codes == [200, 200, 429]
        assert hashing.calls == hashes_before  # the refused signup hashed nothing
        assert await count_rows(db, User) == users_before + 2

    async def test_email_changes_are_rate_limited(
        self,
        client: AsyncClient,
        user_headers: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        smtp_server: SmtpSink,
    ) -> None:
        """Each email change mails a verification link to the new address: changing
        it over and over must not turn the account into a mailer to strangers."""
        monkeypatch.setattr(settings, "EMAIL_REQUESTS_PER_CLIENT", 2)
        addresses = [factories.random_email() for _ in range(3)]

        codes = [
            (
                await client.patch(
                    f"{API}/users/me", headers=user_headers, json={"email": address}
                )
            ).status_code
            for address in addresses
        ]

        assert codes == [200, 200, 429]
        mailed = {rcpt for recipients in smtp_server.recipients for rcpt in recipients}
        assert addresses[-1] not in mailed


class TestAPI7ServerSideRequestForgery:
    """The only outbound request (the provider's signing keys) goes to the configured
    SUPABASE_URL: nothing in a client's token chooses where the server connects."""

    def attacker_token(self, attacker_host: FakeSupabase) -> str:
        claims = attacker_host.claims(iss=attacker_host.issuer)
        return jwt.encode(
            claims,
            attacker_host.keys["evil-1"],
            algorithm="RS256",
            headers={
                "kid": "evil-1",
                "jku": attacker_host.url + supabase.JWKS_PATH,
                "x5u": attacker_host.url + "/cert.pem",
            },
        )

    async def test_token_headers_and_issuer_choose_no_key_url(
        self,
        client: AsyncClient,
        supabase_project: FakeSupabase,
        attacker_host: FakeSupabase,
    ) -> None:
        response = await client.get(
            f"{API}/auth/verify_supabase_token",
            headers=bearer(self.attacker_token(attacker_host)),
        )

        assert_unauthorized(response)
        assert attacker_host.fetches == 0
        assert supabase_project.fetches == 1  # its own keys, from the configured URL

    async def test_secret_only_configuration_fetches_nothing(
        self,
        client: AsyncClient,
        attacker_host: FakeSupabase,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(settings, "SUPABASE_URL", None)
        monkeypatch.setattr(settings, "SUPABASE_JWT_SECRET", HS_SECRET)
        supabase.clear_cache()

        response = await client.get(
            f"{API}/auth/verify_supabase_token",
            headers=bearer(self.attacker_token(attacker_host)),
        )

        assert_unauthorized(response)
        assert attacker_host.fetches == 0


class TestAPI8SecurityMisconfiguration:
    """CORS, headers, error bodies and documentation are safe by default."""

    def lookalike_origins(self) -> list[str]:
        candidates = ["https://evil.example", "null"]
        for origin in settings.all_cors_origins:
            scheme, rest = origin.split("://", 1)
            other = "https" if scheme == "http" else "http"
            candidates += [
                f"{origin}.evil.example",
                f"{other}://{rest}",
                f"{scheme}://evil.{rest}",
            ]
        return [
            origin for origin in candidates if origin not in settings.all_cors_origins
        ]

    async def preflight(self, client: AsyncClient, origin: str) -> Response:
        return await client.options(
            f"{API}/users/me",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )

    async def test_cors_answers_configured_origins_only(
        self, client: AsyncClient, user_headers: dict[str, str]
    ) -> None:
        assert "*" not in settings.all_cors_origins
        for origin in settings.all_cors_origins:
            preflight = await self.preflight(client, origin)
            simple = await client.get(
                f"{API}/users/me", headers={**user_headers, "Origin": origin}
            )

            for response in (preflight, simple):
                assert response.headers["access-control-allow-origin"] == origin
                assert response.headers["access-control-allow-credentials"] == "true"
                assert "origin" in response.headers["vary"].lower()
        lookalikes = self.lookalike_origins()
        assert lookalikes
        for origin in lookalikes:
            preflight = await self.preflight(client, origin)
            simple = await client.get(
                f"{API}/users/me", headers={**user_headers, "Origin": origin}
            )

            assert preflight.status_code == 400, origin
            for response in (preflight, simple):
                assert "access-control-allow-origin" not in response.headers, origin

    def test_cors_follows_the_configuration(
        self, app_probes: dict[str, dict[str, Any]]
    ) -> None:
        """BACKEND_CORS_ORIGINS and FRONTEND_HOST, exactly: no lookalikes, no http."""
        assert app_probes["production"]["cors"] == {
            "https://app.example.com": "https://app.example.com",
            "https://dashboard.example.com": "https://dashboard.example.com",
            "https://evil.example": None,
            "https://app.example.com.evil.example": None,
            "http://app.example.com": None,
            "null": None,
        }

    @pytest.mark.parametrize(
        ("method", "path", "status"),
        [
            ("GET", f"{API}/utils/health-check/", 200),
            ("GET", f"{API}/users/me", 401),
            ("GET", f"{API}/nowhere", 404),
            ("PUT", f"{API}/utils/health-check/", 405),
            ("POST", f"{API}/users/signup", 422),
            ("GET", "/", 200),
            ("GET", "/docs", 200),
            ("GET", "/nowhere", 404),
        ],
    )
    async def test_security_headers_on_every_response(
        self, client: AsyncClient, method: str, path: str, status: int
    ) -> None:
        response = await client.request(
            method, path, json={} if method == "POST" else None
        )

        assert response.status_code == status
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value
        if path.startswith(API):
            assert response.headers["cache-control"] == "no-store"

    async def test_tokens_and_rate_limit_answers_are_never_cached(
        self, client: AsyncClient, user: User, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 1)
        tokens = await login(client, user.email, factories.DEFAULT_PASSWORD)
        refreshed = await refresh(client, tokens.json()["refresh_token"])
        await login(client, user.email, WRONG_PASSWORD)
        limited = await login(client, user.email, WRONG_PASSWORD)

        assert [r.status_code for r in (tokens, refreshed, limited)] == [200, 200, 429]
        for response in (tokens, refreshed, limited):
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["x-content-type-options"] == "nosniff"

    @pytest.mark.parametrize(
        ("method", "path", "request_args", "status"),
        [
            pytest.param("GET", f"{API}/nowhere", {}, 404, id="unknown route"),
            pytest.param("DELETE", f"{API}/utils/health-check/", {}, 405, id="method"),
            pytest.param("TRACE", f"{API}/users/me", {}, 405, id="trace"),
            pytest.param(
                "GET",
                f"{API}/users/me",
                {"headers": {"Authorization": "Bearer x.y.z"}},
                401,
                id="bad token",
            ),
            pytest.param(
                "POST",
                f"{API}/users/signup",
                {
                    "content": b'{"email": ',
                    "headers": {"Content-Type": "application/json"},
                },
                422,
                id="malformed json",
            ),
            pytest.param(
                "POST",
                f"{API}/users/signup",
                {
                    "content": b"\xff\xfe{}",
                    "headers": {"Content-Type": "application/json"},
                },
                422,
                id="invalid utf-8",
            ),
            pytest.param(
                "POST",
                f"{API}/users/signup",
                {"content": b"email=a@b.c", "headers": {"Content-Type": "text/plain"}},
                422,
                id="wrong content type",
            ),
            pytest.param(
                "POST",
                f"{API}/users/signup",
                {"content": b"<user/>", "headers": {"Content-Type": "application/xml"}},
                422,
                id="xml",
            ),
            pytest.param(
                "POST",
                f"{API}/login/access-token",
                {"json": {"username": "a@example.com", "password": "x"}},
                422,
                id="json to a form route",
            ),
            pytest.param(
                "POST",
                f"{API}/login/access-token",
                {
                    "files": {
                        "username": ("u.txt", b"a@example.com"),
                        "password": ("p.txt", b"x"),
                    }
                },
                422,
                id="files to a form route",
            ),
            pytest.param(
                "POST",
                f"{API}/reset-password/",
                {"json": {"token": "not.a.token", "new_password": NEW_PASSWORD}},
                400,
                id="bad reset token",
            ),
            pytest.param(
                "POST", f"{API}/password-recovery/not-an-email", {}, 422, id="bad email"
            ),
            pytest.param(
                "GET",
                f"{API}/users/%00",
                {"headers": {"Authorization": "Bearer x"}},
                401,
                id="nul",
            ),
        ],
    )
    async def test_error_answers_leak_no_internals(
        self,
        server_client: AsyncClient,
        method: str,
        path: str,
        request_args: dict[str, Any],
        status: int,
    ) -> None:
        response = await server_client.request(method, path, **request_args)

        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert "detail" in response.json()
        assert_no_internals(response)

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            pytest.param(f"{API}/items/", b"NaN", id="NaN body"),
            pytest.param(f"{API}/items/", b'{"title": Infinity}', id="Infinity"),
            pytest.param(
                f"{API}/items/", b'{"title": "ok", "description": -Infinity}', id="-Inf"
            ),
            pytest.param(f"{API}/items/", b'{"title": "\\ud800"}', id="surrogate"),
            pytest.param(
                f"{API}/login/refresh-token",
                b'{"refresh_token": "\\udfff"}',
                id="surrogate anonymous",
            ),
        ],
    )
    async def test_unencodable_inputs_are_422_not_500(
        self,
        server_client: AsyncClient,
        user_headers: dict[str, str],
        path: str,
        body: bytes,
    ) -> None:
        """Python's JSON parser accepts NaN, Infinity and lone surrogates (\\ud800),
        which pydantic refuses; the 422 echoing them must still encode as JSON."""
        response = await server_client.post(
            path,
            headers={**user_headers, "Content-Type": "application/json"},
            content=body,
        )

        assert response.status_code == 422, response.text
        assert_no_internals(response)

    async def test_unexpected_error_is_a_bare_500(self) -> None:
        assert app.debug is False

        async def broken_db() -> AsyncIterator[AsyncSession]:
            raise RuntimeError(f"boom in {BACKEND_DIR}/app/secret.py")
            yield  # pragma: no cover

        async with server_like_client(broken_db) as client:
            response = await client.get(f"{API}/utils/ready/")

        assert response.status_code == 500
        assert response.text == "Internal Server Error"
        assert_no_internals(response)

    def test_docs_follow_the_settings(
        self, app_probes: dict[str, dict[str, Any]]
    ) -> None:
        hidden = app_probes["production"]
        assert set(hidden["status"].values()) == {404}
        assert hidden["root"] == {"message": "Hello, world!"}

        shown = app_probes["production_docs_on"]
        assert set(shown["status"].values()) == {200}
        assert shown["root"]["docs"] == "/docs"

        assert set(app_probes["local_docs_off"]["status"].values()) == {404}
        assert all(probe["debug"] is False for probe in app_probes.values())

    @pytest.mark.parametrize(
        "secret_key",
        ["", "changethis", "short-but-not-placeholder"],
    )
    def test_production_refuses_weak_secret_keys(
        self, monkeypatch: pytest.MonkeyPatch, secret_key: str
    ) -> None:
        strong = secrets.token_urlsafe(32)
        monkeypatch.delenv("SECRET_KEY", raising=False)
        values = {
            "ENVIRONMENT": "production",
            "FIRST_SUPERUSER_PASSWORD": strong,
            "POSTGRES_PASSWORD": strong,
        }
        Settings(_env_file=None, SECRET_KEY=strong, **values)  # type: ignore[arg-type]

        with pytest.raises(ValidationError, match="SECRET_KEY"):
            Settings(_env_file=None, SECRET_KEY=secret_key, **values)  # type: ignore[arg-type]


class TestAPI9ImproperInventoryManagement:
    """Every route is documented, versioned, tagged and identified; nothing is
    served that the document does not list; local-only routes stay local."""

    async def test_every_route_is_documented_and_nothing_else(
        self, client: AsyncClient
    ) -> None:
        document = (await client.get(f"{API}/openapi.json")).json()

        documented = {
            (method.upper(), path)
            for path, operations in document["paths"].items()
            for method in operations
        }
        assert documented == route_keys()
        assert all(route.include_in_schema for route in api_routes())

    async def test_operations_are_tagged_identified_and_described(
        self, client: AsyncClient
    ) -> None:
        document = (await client.get(f"{API}/openapi.json")).json()
        by_key = {
            (method, route.path): route
            for route in api_routes()
            for method in route.methods
        }

        operation_ids = []
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                route = by_key[(method.upper(), path)]
                assert operation["tags"] == list(route.tags), (method, path)
                assert operation["tags"], (method, path)
                assert (
                    operation["operationId"] == f"{operation['tags'][0]}-{route.name}"
                )
                assert operation.get("description") or operation.get("summary")
                operation_ids.append(operation["operationId"])
        assert len(operation_ids) == len(set(operation_ids))

    async def test_documented_security_matches_the_access_map(
        self, client: AsyncClient
    ) -> None:
        document = (await client.get(f"{API}/openapi.json")).json()

        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                needs_token = ROUTE_ACCESS[(method.upper(), path)] != "public"
                assert ("security" in operation) == needs_token, (method, path)

    def test_no_route_outside_the_versioned_api_but_root_and_docs(self) -> None:
        docs = {app.openapi_url, "/docs/static", *DOCS_PAGES}
        others = {
            path
            for context, path in served_routes()
            if not isinstance(context.original_route, APIRoute) or path in DOCS_PAGES
        }

        assert others <= docs
        for route in api_routes():
            assert route.path == "/" or route.path.startswith(f"{API}/"), route.path

    def test_local_only_routes_are_absent_outside_local(
        self, app_probes: dict[str, dict[str, Any]]
    ) -> None:
        def private(routes: list[str]) -> list[str]:
            return [route for route in routes if f" {API}/private/" in route]

        assert private(app_probes["production"]["routes"]) == []
        assert private(app_probes["production_docs_on"]["routes"]) == []
        assert private(app_probes["local_docs_off"]["routes"]) == [
            f"POST {API}/private/users/"
        ]
        assert app_probes["production"]["private_status"] == 404
        assert app_probes["local_docs_off"]["private_status"] == 422


class TestAPI10UnsafeConsumptionOfAPIs:
    """What the identity provider sends (tokens, keys) is validated like user input:
    it proves an email address, nothing more."""

    async def test_provider_claims_grant_no_privileges(
        self,
        client: AsyncClient,
        db: AsyncSession,
        supabase_project: FakeSupabase,
    ) -> None:
        token = supabase_project.token(
            role="service_role",
            is_superuser=True,
            app_metadata={"role": "superadmin", "is_superuser": True},
            user_metadata={"role": "admin"},
        )

        response = await client.get(
            f"{API}/auth/verify_supabase_token", headers=bearer(token)
        )

        assert response.status_code == 200
        body = response.json()
        stored = await reloaded(db, User, uuid.UUID(body["user"]["id"]))
        assert stored is not None and stored.role == Role.user
        users = await client.get(f"{API}/users/", headers=bearer(body["token"]))
        assert users.status_code == 403

    @pytest.mark.parametrize(
        "email",
        [
            "victim@example.com\r\nBcc: everyone@example.com",
            "<script>alert(1)</script>@example.com",
            "x" * 250 + "@example.com",
            12345,
            ["victim@example.com"],
        ],
    )
    async def test_provider_email_claim_is_validated(
        self,
        client: AsyncClient,
        db: AsyncSession,
        supabase_project: FakeSupabase,
        email: Any,
    ) -> None:
        users_before = await count_rows(db, User)

        response = await client.get(
            f"{API}/auth/verify_supabase_token",
            headers=bearer(supabase_project.token(email=email)),
        )

        assert_unauthorized(response)
        assert response.json() == {"detail": "Supabase token carries no valid email"}
        assert await count_rows(db, User) == users_before

    @pytest.mark.parametrize(
        ("document", "status", "detail"),
        [
            (b"<html>not json</html>", 503, supabase.UNAVAILABLE),
            (b'{"keys": "none"}', 503, supabase.UNAVAILABLE),
            (b"[]", 503, supabase.UNAVAILABLE),
            (
                b'{"keys": [{"kty": 1}, "junk", {"kty": "RSA"}]}',
                401,
                supabase.INVALID_TOKEN,
            ),
        ],
    )
    async def test_broken_key_documents_are_refused_not_500(
        self,
        server_client: AsyncClient,
        supabase_project: FakeSupabase,
        document: bytes,
        status: int,
        detail: str,
    ) -> None:
        supabase_project.body = document

        response = await server_client.get(
            f"{API}/auth/verify_supabase_token",
            headers=bearer(supabase_project.token()),
        )

        assert response.status_code == status, response.text
        assert response.json() == {"detail": detail}
        assert supabase_project.fetches == 1

    async def test_symmetric_key_in_the_published_keys_is_not_trusted(
        self, client: AsyncClient, supabase_project: FakeSupabase
    ) -> None:
        """A JWKS entry of type "oct" would let anyone who reads it mint tokens."""
        secret = secrets.token_bytes(32)
        jwks = {
            "keys": [
                {"kty": "oct", "k": b64url(secret), "kid": "oct-1", "alg": "HS256"}
            ]
        }
        supabase_project.body = json.dumps(jwks).encode()
        claims = supabase_project.claims()
        forgeries = [
            raw_token({"alg": alg, "kid": "oct-1"}, claims, secret)
            for alg in ("RS256", "ES256", "HS256")
        ]

        for forged in forgeries:
            response = await client.get(
                f"{API}/auth/verify_supabase_token", headers=bearer(forged)
            )

            assert_unauthorized(response)
        assert supabase_project.fetches >= 1  # the published keys were read
