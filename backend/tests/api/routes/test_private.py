import uuid

import pytest
from httpx import AsyncClient
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import settings
from app.core.security import password_hash
from app.models import User
from tests.utils import factories
from tests.utils.api import probe_route

PRIVATE_USERS = f"{settings.API_V1_STR}/private/users/"


class TestCreateUser:
    async def test_create_user_without_auth(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        payload = {
            "email": "pollo@example.com",
            "password": "password1234",
            "full_name": "Pollo Listo",
        }

        response = await client.post(PRIVATE_USERS, json=payload)

        assert response.status_code == 200
        body = response.json()
        assert body["email"] == "pollo@example.com"
        assert body["full_name"] == "Pollo Listo"
        assert body["is_active"] is True
        assert body["is_superuser"] is False
        assert "password" not in body
        assert "hashed_password" not in body
        stored = await db.get(User, uuid.UUID(body["id"]))
        assert stored is not None
        assert stored.email == "pollo@example.com"
        assert stored.hashed_password != "password1234"
        assert password_hash.verify("password1234", stored.hashed_password)

    async def test_create_user_duplicate_400(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        existing = await factories.create_user(db)
        payload = {
            "email": existing.email,
            "password": "password1234",
            "full_name": "Someone Else",
        }

        response = await client.post(PRIVATE_USERS, json=payload)

        assert response.status_code == 400
        assert response.json() == {
            "detail": "The user with this email already exists in the system"
        }

    async def test_create_user_duplicate_other_case_400(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        existing = await factories.create_user(db, email="mixed@example.com")
        payload = {
            "email": existing.email.upper(),
            "password": "password1234",
            "full_name": "Someone Else",
        }

        response = await client.post(PRIVATE_USERS, json=payload)

        assert response.status_code == 400

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"password": "password1234", "full_name": "X"}, "email"),
            ({"email": "bad", "password": "password1234", "full_name": "X"}, "email"),
            (
                {"email": "a@example.com", "password": "short", "full_name": "X"},
                "password",
            ),
            (
                {"email": "a@example.com", "password": "p" * 129, "full_name": "X"},
                "password",
            ),
            ({"email": "a@example.com", "password": "password1234"}, "full_name"),
            (
                {
                    "email": "a@example.com",
                    "password": "password1234",
                    "full_name": "x" * 256,
                },
                "full_name",
            ),
            (
                {
                    "email": "a@example.com",
                    "password": "password1234",
                    "full_name": "a\x00",
                },
                "full_name",
            ),
        ],
    )
    async def test_create_user_bad_payload_422(
        self, client: AsyncClient, payload: dict[str, str], field: str
    ) -> None:
        response = await client.post(PRIVATE_USERS, json=payload)

        assert response.status_code == 422
        assert any(error["loc"][-1] == field for error in response.json()["detail"])


@pytest.mark.slow  # imports the app in a fresh interpreter per test
class TestPrivateRouterMounting:
    def test_private_router_absent_outside_local(self) -> None:
        probe = probe_route("POST", PRIVATE_USERS, ENVIRONMENT="production")
        assert probe == {"documented": False, "status": 404}

    def test_private_router_present_in_local(self) -> None:
        # 422: the route exists and validated the empty body.
        probe = probe_route("POST", PRIVATE_USERS, ENVIRONMENT="local")
        assert probe == {"documented": True, "status": 422}
