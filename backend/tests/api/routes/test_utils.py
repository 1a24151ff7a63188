import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpx import AsyncClient
from sqlalchemy import URL
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import settings
from app.core.db import create_engine
from tests.utils.api import client_using
from tests.utils.servers import free_port
from tests.utils.smtp import SmtpSink

HEALTH_CHECK = f"{settings.API_V1_STR}/utils/health-check/"
READY = f"{settings.API_V1_STR}/utils/ready/"
TEST_EMAIL = f"{settings.API_V1_STR}/utils/test-email/"


class TestHealthCheck:
    async def test_health_check_anonymous_true(self, client: AsyncClient) -> None:
        response = await client.get(HEALTH_CHECK)

        assert response.status_code == 200
        assert response.json() is True


class TestReadiness:
    async def test_ready_when_the_database_answers(self, client: AsyncClient) -> None:
        response = await client.get(READY)
        assert response.status_code == 200
        assert response.json() is True

    async def test_not_ready_when_the_database_is_unreachable(
        self, database_url: URL, tmp_path: Path
    ) -> None:
        if database_url.get_backend_name() == "sqlite":
            unreachable = database_url.set(database=str(tmp_path / "no" / "app.db"))
        else:
            unreachable = database_url.set(host="127.0.0.1", port=free_port())
        engine = create_engine(unreachable)

        async def unreachable_session() -> AsyncIterator[AsyncSession]:
            async with AsyncSession(engine) as session:
                yield session

        async with client_using(unreachable_session) as client:
            ready = await client.get(READY)
            alive = await client.get(HEALTH_CHECK)
        await engine.dispose()
        assert ready.status_code == 503
        assert ready.json() == {"detail": "Database unavailable"}
        assert alive.status_code == 200


class TestTestEmail:
    async def test_test_email_superuser_delivered(
        self,
        client: AsyncClient,
        smtp_server: SmtpSink,
        superuser_headers: dict[str, str],
    ) -> None:
        response = await client.post(
            TEST_EMAIL,
            params={"email_to": "someone@example.com"},
            headers=superuser_headers,
        )

        assert response.status_code == 201
        assert response.json() == {"message": "Test email sent"}
        assert smtp_server.recipients == [["someone@example.com"]]
        (message,) = smtp_server.messages
        assert message["To"] == "someone@example.com"
        assert message["Subject"] == f"{settings.PROJECT_NAME} - Test email"

    async def test_test_email_not_configured_503(
        self, client: AsyncClient, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.post(
            TEST_EMAIL,
            params={"email_to": "someone@example.com"},
            headers=superuser_headers,
        )

        assert response.status_code == 503
        assert "SMTP" in response.json()["detail"]

    async def test_test_email_normal_user_403(
        self, client: AsyncClient, smtp_server: SmtpSink, user_headers: dict[str, str]
    ) -> None:
        response = await client.post(
            TEST_EMAIL, params={"email_to": "someone@example.com"}, headers=user_headers
        )

        assert response.status_code == 403
        assert response.json() == {"detail": "The user doesn't have enough privileges"}
        assert smtp_server.messages == []

    async def test_test_email_anonymous_401(
        self, client: AsyncClient, smtp_server: SmtpSink
    ) -> None:
        response = await client.post(
            TEST_EMAIL, params={"email_to": "someone@example.com"}
        )

        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated"}
        assert smtp_server.messages == []

    @pytest.mark.parametrize(
        "params",
        [
            {"email_to": "not-an-email"},
            {"email_to": f"{'a' * 250}@example.com"},
            {},
        ],
    )
    async def test_test_email_invalid_address_422(
        self,
        client: AsyncClient,
        smtp_server: SmtpSink,
        superuser_headers: dict[str, str],
        params: dict[str, str],
    ) -> None:
        response = await client.post(
            TEST_EMAIL, params=params, headers=superuser_headers
        )

        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "email_to"]
        assert smtp_server.messages == []

    async def test_test_email_smtp_down_still_201_and_logged(
        self,
        client: AsyncClient,
        smtp_server: SmtpSink,
        superuser_headers: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        monkeypatch.setattr(settings, "SMTP_PORT", free_port())

        with caplog.at_level(logging.INFO):
            response = await client.post(
                TEST_EMAIL,
                params={"email_to": "someone@example.com"},
                headers={**superuser_headers, "X-Request-ID": "req-smtp-down"},
            )

        assert response.status_code == 201
        assert response.json() == {"message": "Test email sent"}
        assert response.headers["X-Request-ID"] == "req-smtp-down"
        errors = [
            record
            for record in caplog.records
            if record.name == "app.emails" and record.levelno == logging.ERROR
        ]
        assert len(errors) == 1
        assert "not sent" in errors[0].getMessage()
        # The delivery runs after the answer, still under the request's id.
        assert getattr(errors[0], "correlation_id", None) == "req-smtp-down"
        assert smtp_server.messages == []
