"""Calling the app in-process: clients, login, bearer headers, route probes."""

import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from httpx import ASGITransport, AsyncClient, Response
from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud
from app.core import security
from app.core.config import BACKEND_DIR, settings
from app.core.db import get_db
from app.main import app
from app.models import User

API = settings.API_V1_STR


@asynccontextmanager
async def client_using(
    get_session: Callable[[], AsyncIterator[AsyncSession]],
    *,
    raise_app_exceptions: bool = True,
) -> AsyncIterator[AsyncClient]:
    """An HTTP client on the app whose requests take their session from `get_session`.
    An unhandled error is raised into the test, or with `raise_app_exceptions=False`
    comes back as the bare 500 a real server sends."""
    app.dependency_overrides[get_db] = get_session
    try:
        transport = ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with AsyncClient(transport=transport, base_url="http://test") as ac:
            yield ac
    finally:
        app.dependency_overrides.clear()


async def auth_headers(session: AsyncSession, user: User) -> dict[str, str]:
    """Bearer headers of a new login session of `user` (as after a password login)."""
    user_session, _ = await crud.create_session(
        session=session, user=user, client_address="127.0.0.1", user_agent="tests"
    )
    return bearer(security.create_access_token(user.id, user_session.id))


async def login(
    client: AsyncClient, email: str, password: str, user_agent: str = "tests"
) -> Response:
    return await client.post(
        f"{API}/login/access-token",
        data={"username": email, "password": password},
        headers={"User-Agent": user_agent},
    )


@asynccontextmanager
async def client_from(address: str) -> AsyncIterator[AsyncClient]:
    """Another client of the app, from the client IP `address` (with the session
    override of the test's own `client`, which comes from 127.0.0.1)."""
    transport = ASGITransport(app=app, client=(address, 40000))
    async with AsyncClient(transport=transport, base_url="http://test") as other:
        yield other


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refresh(client: AsyncClient, refresh_token: str) -> Response:
    return await client.post(
        f"{API}/login/refresh-token", json={"refresh_token": refresh_token}
    )


async def me(client: AsyncClient, access_token: str) -> Response:
    return await client.get(f"{API}/users/me", headers=bearer(access_token))


def assert_unauthorized(response: Response) -> None:
    assert response.status_code == 401, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert response.headers["www-authenticate"] == "Bearer"


# Run in a fresh interpreter: routers are mounted (or not) when the app is imported.
ROUTE_PROBE = """
import json, sys
from fastapi.testclient import TestClient
from app.main import app
method, path = sys.argv[1:]
status = TestClient(app).request(method, path, json={}).status_code
print(json.dumps({"documented": path in app.openapi()["paths"], "status": status}))
"""


def probe_route(method: str, path: str, **environment: str) -> dict[str, object]:
    """Import the app with `environment` on top of this one's: is the route
    documented, and what does an anonymous request with an empty body get?"""
    env = {
        **os.environ,
        "SECRET_KEY": secrets.token_urlsafe(30)[:40],
        "FIRST_SUPERUSER_PASSWORD": secrets.token_urlsafe(16),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
        "SENTRY_DSN": "",
        **environment,
    }
    result = subprocess.run(
        [sys.executable, "-c", ROUTE_PROBE, method, path],
        cwd=BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    probe: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return probe
