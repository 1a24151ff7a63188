"""HTTP helpers shared by the route tests."""

from httpx import AsyncClient, Response

from app.core.config import settings

API = settings.API_V1_STR


async def login(
    client: AsyncClient, email: str, password: str, user_agent: str = "tests"
) -> Response:
    return await client.post(
        f"{API}/login/access-token",
        data={"username": email, "password": password},
        headers={"User-Agent": user_agent},
    )


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
