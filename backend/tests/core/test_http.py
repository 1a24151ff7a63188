"""app/core/http.py on the app. The request body limit (BodyLimitMiddleware,
MAX_REQUEST_BODY_BYTES): a declared length over it is refused before anything
reads the body, a chunked upload as soon as it passes it, with the app's JSON
error and headers. The docs' Content-Security-Policy on the docs pages only."""

import json
from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import settings
from app.core.http import API_CSP
from app.models import User

API = settings.API_V1_STR
LIMIT = settings.MAX_REQUEST_BODY_BYTES
DETAIL = f"Request body too large: the limit is {LIMIT} bytes"


def signup_body(size: int) -> bytes:
    """A signup exactly `size` bytes long, its full name padded (so too long: 422)."""
    body = json.dumps({"email": "big@example.com", "password": "big-password"})
    padded = body[:-1] + ', "full_name": "' + "x" * size
    padded = padded[: size - 2] + '"}'
    assert len(padded) == size
    return padded.encode()


async def users(db: AsyncSession) -> int:
    return (await db.exec(select(func.count()).select_from(User))).one()


async def chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_body_over_the_declared_limit_is_413_with_the_apps_headers(
    client: AsyncClient, db: AsyncSession
) -> None:
    before = await users(db)

    response = await client.post(
        f"{API}/users/signup",
        content=signup_body(LIMIT + 1),
        headers={
            "Content-Type": "application/json",
            "X-Request-ID": "too-big",
            "Origin": settings.FRONTEND_HOST,
        },
    )

    assert response.status_code == 413
    assert response.json() == {"detail": DETAIL}
    assert response.headers["x-request-id"] == "too-big"
    assert response.headers["x-content-type-options"] == "nosniff"
    # A browser frontend can read it.
    assert response.headers["access-control-allow-origin"] == settings.FRONTEND_HOST
    assert await users(db) == before


async def test_body_at_the_limit_reaches_the_route(client: AsyncClient) -> None:
    response = await client.post(
        f"{API}/users/signup",
        content=signup_body(LIMIT),
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422  # the name's own length limit


async def test_route_without_a_body_refuses_a_huge_one_too(client: AsyncClient) -> None:
    response = await client.request(
        "GET", f"{API}/utils/health-check/", content=b"x" * (LIMIT + 1)
    )

    assert response.status_code == 413
    assert response.json() == {"detail": DETAIL}


async def test_chunked_upload_over_the_limit_is_413(
    client: AsyncClient, db: AsyncSession
) -> None:
    before = await users(db)

    response = await client.post(
        f"{API}/users/signup",
        content=chunks(signup_body(LIMIT + 1)),
        headers={"Content-Type": "application/json", "X-Request-ID": "chunked"},
    )

    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert response.json() == {"detail": DETAIL}
    assert response.headers["x-request-id"] == "chunked"
    assert await users(db) == before


async def test_chunked_upload_within_the_limit_is_served(client: AsyncClient) -> None:
    body = json.dumps(
        {"email": "chunked@example.com", "password": "chunked-password"}
    ).encode()

    response = await client.post(
        f"{API}/users/signup",
        content=chunks(body, size=7),
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["email"] == "chunked@example.com"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_docs_pages_get_the_docs_policy(client: AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert response.status_code == 200
    assert "script-src 'self' 'sha256-" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    "path", ["/docsx", "/redoc-not-docs", "/docs/", "/docs/static/swagger-ui.css"]
)
async def test_other_paths_get_the_api_policy(client: AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert response.headers["content-security-policy"] == API_CSP
