import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import jwt
import pytest
from httpx import AsyncClient, Response
from pwdlib.hashers.bcrypt import BcryptHasher
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core import security
from app.core.config import settings
from app.models import User
from tests.utils import factories
from tests.utils.api import auth_headers
from tests.utils.smtp import SmtpSink

API = settings.API_V1_STR
RECOVERY_LINK = f"{settings.FRONTEND_HOST}/reset-password?token="
TOKEN_IN_LINK = re.compile(re.escape(RECOVERY_LINK) + r"([A-Za-z0-9_\-.]+)")


async def login(client: AsyncClient, email: str, password: str) -> Response:
    return await client.post(
        f"{API}/login/access-token", data={"username": email, "password": password}
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_test_token(
    client: AsyncClient, headers: dict[str, str] | None = None
) -> Response:
    return await client.post(f"{API}/login/test-token", headers=headers)


async def reset_password(
    client: AsyncClient, token: str, new_password: str = "brand-new-password"
) -> Response:
    return await client.post(
        f"{API}/reset-password/", json={"token": token, "new_password": new_password}
    )


async def recovery_html(
    client: AsyncClient, email: str, headers: dict[str, str] | None = None
) -> Response:
    return await client.post(
        f"{API}/password-recovery-html-content/{email}", headers=headers
    )


def access_claims(user: User) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "sub": str(user.id),
        "type": "access",
        "iat": now,
        "exp": now + timedelta(hours=1),
    }


# Tokens made for `user`, good and bad.
def access_token(user: User) -> str:
    """Well signed, but of no session (as if its session had been deleted)."""
    return security.create_access_token(user.id, uuid.uuid4())


def password_reset_token(user: User) -> str:
    return security.create_password_reset_token(user.id, user.hashed_password)


def expired_token(user: User) -> str:
    return security.create_access_token(
        user.id, uuid.uuid4(), expires_delta=timedelta(seconds=-1)
    )


def token_signed_with_another_key(user: User) -> str:
    return jwt.encode(
        access_claims(user), "another-secret-key-" + "x" * 32, algorithm="HS256"
    )


def token_with_alg_none(user: User) -> str:
    return jwt.encode(access_claims(user), "", algorithm="none")


async def deleted_user_token(
    db: AsyncSession, make_token: Callable[[User], str]
) -> str:
    """A token made for a user who has been deleted since."""
    doomed = await factories.create_user(db)
    token = make_token(doomed)
    await db.delete(doomed)
    await db.commit()
    return token


@pytest.fixture
async def inactive_user(db: AsyncSession) -> User:
    return await factories.create_user(db, is_active=False)


def html_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    content: str = part.get_content()
    return content


def assert_unauthorized(response: Response) -> None:
    assert response.status_code == 401
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert response.headers["www-authenticate"] == "Bearer"


class TestLoginAccessToken:
    async def test_login_success_returns_bearer_token(
        self, client: AsyncClient, user: User
    ) -> None:
        response = await login(client, user.email, factories.DEFAULT_PASSWORD)
        assert response.status_code == 200
        body = response.json()
        assert body["token_type"] == "bearer"
        assert body["access_token"]

        me = await post_test_token(client, bearer(body["access_token"]))
        assert me.status_code == 200
        assert me.json()["id"] == str(user.id)
        assert me.json()["email"] == user.email

    async def test_login_email_is_case_insensitive(
        self, client: AsyncClient, user: User
    ) -> None:
        response = await login(client, user.email.upper(), factories.DEFAULT_PASSWORD)
        assert response.status_code == 200
        token = response.json()["access_token"]
        me = await post_test_token(client, bearer(token))
        assert me.json()["id"] == str(user.id)

    async def test_login_wrong_password(self, client: AsyncClient, user: User) -> None:
        response = await login(client, user.email, "wrong-password-123")
        assert response.status_code == 400
        assert response.json() == {"detail": "Incorrect email or password"}

    async def test_login_unknown_email(self, client: AsyncClient) -> None:
        response = await login(
            client, factories.random_email(), factories.DEFAULT_PASSWORD
        )
        assert response.status_code == 400
        assert response.json() == {"detail": "Incorrect email or password"}

    async def test_login_inactive_user(
        self, client: AsyncClient, inactive_user: User
    ) -> None:
        response = await login(client, inactive_user.email, factories.DEFAULT_PASSWORD)
        assert response.status_code == 400
        assert response.json() == {"detail": "Inactive user"}

    @pytest.mark.parametrize("field", ["username", "password"])
    async def test_login_nul_byte_rejected(
        self, client: AsyncClient, user: User, field: str
    ) -> None:
        data = {"username": user.email, "password": factories.DEFAULT_PASSWORD}
        data[field] += "\x00"
        response = await client.post(f"{API}/login/access-token", data=data)
        assert response.status_code == 422
        assert isinstance(response.json()["detail"], list)

    @pytest.mark.parametrize(
        "data",
        [
            {},
            {"username": "someone@example.com"},
            {"password": factories.DEFAULT_PASSWORD},
        ],
    )
    async def test_login_missing_fields(
        self, client: AsyncClient, data: dict[str, str]
    ) -> None:
        response = await client.post(f"{API}/login/access-token", data=data)
        assert response.status_code == 422
        assert isinstance(response.json()["detail"], list)

    async def test_login_rehashes_bcrypt_password(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        password = "legacy-bcrypt-password"
        legacy = await factories.create_user(db)
        legacy.hashed_password = BcryptHasher().hash(password)
        db.add(legacy)
        await db.commit()
        assert legacy.hashed_password.startswith("$2")

        response = await login(client, legacy.email, password)
        assert response.status_code == 200

        await db.refresh(legacy)
        assert legacy.hashed_password.startswith("$argon2")
        again = await login(client, legacy.email, password)
        assert again.status_code == 200


class TestTestToken:
    async def test_test_token_valid(
        self, client: AsyncClient, user: User, user_headers: dict[str, str]
    ) -> None:
        response = await post_test_token(client, user_headers)
        assert response.status_code == 200
        body = response.json()
        assert body["id"] == str(user.id)
        assert body["email"] == user.email
        assert body["is_active"] is True
        assert body["is_superuser"] is False
        assert "hashed_password" not in body

    async def test_test_token_missing(self, client: AsyncClient) -> None:
        assert_unauthorized(await post_test_token(client))

    @pytest.mark.parametrize("token", ["garbage", "a.b.c", ""])
    async def test_test_token_garbage(self, client: AsyncClient, token: str) -> None:
        assert_unauthorized(await post_test_token(client, bearer(token)))

    @pytest.mark.parametrize(
        "make_token",
        [
            pytest.param(expired_token, id="expired"),
            pytest.param(token_signed_with_another_key, id="signed_with_another_key"),
            pytest.param(token_with_alg_none, id="alg_none"),
            pytest.param(password_reset_token, id="password_reset_token"),
        ],
    )
    async def test_test_token_rejected(
        self, client: AsyncClient, user: User, make_token: Callable[[User], str]
    ) -> None:
        assert_unauthorized(await post_test_token(client, bearer(make_token(user))))

    async def test_test_token_deleted_user(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        token = await deleted_user_token(db, access_token)
        assert_unauthorized(await post_test_token(client, bearer(token)))

    async def test_test_token_inactive_user(
        self, client: AsyncClient, db: AsyncSession, inactive_user: User
    ) -> None:
        response = await post_test_token(client, await auth_headers(db, inactive_user))
        assert response.status_code == 400
        assert response.json() == {"detail": "Inactive user"}


class TestPasswordRecovery:
    async def test_recover_password_same_message_known_and_unknown(
        self, client: AsyncClient, user: User
    ) -> None:
        known = await client.post(f"{API}/password-recovery/{user.email}")
        unknown = await client.post(
            f"{API}/password-recovery/{factories.random_email()}"
        )
        assert known.status_code == 200
        assert unknown.status_code == 200
        assert known.json() == unknown.json()
        assert set(known.json()) == {"message"}
        assert known.json()["message"]

    async def test_recover_password_sends_one_email_with_link(
        self, client: AsyncClient, user: User, smtp_server: SmtpSink
    ) -> None:
        response = await client.post(f"{API}/password-recovery/{user.email}")
        assert response.status_code == 200
        assert smtp_server.recipients == [[user.email]]
        assert len(smtp_server.messages) == 1
        message = smtp_server.messages[0]
        assert message["To"] == user.email
        assert RECOVERY_LINK in html_body(message)

    async def test_recover_password_unknown_email_sends_nothing(
        self, client: AsyncClient, smtp_server: SmtpSink
    ) -> None:
        response = await client.post(
            f"{API}/password-recovery/{factories.random_email()}"
        )
        assert response.status_code == 200
        assert smtp_server.messages == []
        assert smtp_server.recipients == []

    async def test_recover_password_case_insensitive_email(
        self, client: AsyncClient, user: User, smtp_server: SmtpSink
    ) -> None:
        response = await client.post(f"{API}/password-recovery/{user.email.upper()}")
        assert response.status_code == 200
        assert len(smtp_server.messages) == 1
        assert RECOVERY_LINK in html_body(smtp_server.messages[0])

    async def test_recover_password_without_smtp(
        self, client: AsyncClient, user: User
    ) -> None:
        assert not settings.emails_enabled
        response = await client.post(f"{API}/password-recovery/{user.email}")
        assert response.status_code == 200
        assert response.json()["message"]

    @pytest.mark.parametrize("email", ["not-an-email", "a@", "@example.com"])
    async def test_recover_password_invalid_email(
        self, client: AsyncClient, email: str
    ) -> None:
        response = await client.post(f"{API}/password-recovery/{email}")
        assert response.status_code == 422
        assert isinstance(response.json()["detail"], list)


class TestResetPassword:
    async def test_reset_password_with_emailed_token(
        self, client: AsyncClient, user: User, smtp_server: SmtpSink
    ) -> None:
        await client.post(f"{API}/password-recovery/{user.email}")
        assert len(smtp_server.messages) == 1
        match = TOKEN_IN_LINK.search(html_body(smtp_server.messages[0]))
        assert match is not None
        new_password = "brand-new-password-1"

        response = await reset_password(client, match.group(1), new_password)
        assert response.status_code == 200
        assert response.json() == {"message": "Password updated successfully"}

        assert (await login(client, user.email, new_password)).status_code == 200
        old = await login(client, user.email, factories.DEFAULT_PASSWORD)
        assert old.status_code == 400
        assert old.json() == {"detail": "Incorrect email or password"}

    async def test_reset_password_token_single_use(
        self, client: AsyncClient, user: User
    ) -> None:
        token = password_reset_token(user)
        first = await reset_password(client, token, "first-new-password")
        assert first.status_code == 200

        second = await reset_password(client, token, "second-new-password")
        assert second.status_code == 400
        assert second.json() == {"detail": "Invalid token"}
        assert (
            await login(client, user.email, "first-new-password")
        ).status_code == 200
        assert (
            await login(client, user.email, "second-new-password")
        ).status_code == 400

    @pytest.mark.parametrize(
        "make_token",
        [
            pytest.param(lambda _user: "garbage", id="garbage"),
            pytest.param(access_token, id="access_token"),
        ],
    )
    async def test_reset_password_invalid_token(
        self, client: AsyncClient, user: User, make_token: Callable[[User], str]
    ) -> None:
        response = await reset_password(client, make_token(user))
        assert response.status_code == 400
        assert response.json() == {"detail": "Invalid token"}
        old = await login(client, user.email, factories.DEFAULT_PASSWORD)
        assert old.status_code == 200

    async def test_reset_password_deleted_user(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        token = await deleted_user_token(db, password_reset_token)
        response = await reset_password(client, token)
        assert response.status_code == 400
        assert response.json() == {"detail": "Invalid token"}

    async def test_reset_password_inactive_user(
        self, client: AsyncClient, inactive_user: User
    ) -> None:
        response = await reset_password(client, password_reset_token(inactive_user))
        assert response.status_code == 400
        assert response.json() == {"detail": "Inactive user"}

    async def test_reset_password_short_password(
        self, client: AsyncClient, user: User
    ) -> None:
        response = await reset_password(client, password_reset_token(user), "short")
        assert response.status_code == 422
        assert isinstance(response.json()["detail"], list)
        old = await login(client, user.email, factories.DEFAULT_PASSWORD)
        assert old.status_code == 200


class TestPasswordRecoveryHtmlContent:
    async def test_recover_password_html_content_superuser(
        self, client: AsyncClient, user: User, superuser_headers: dict[str, str]
    ) -> None:
        response = await recovery_html(client, user.email, superuser_headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert RECOVERY_LINK in response.text
        assert user.email in response.headers["subject"]

    async def test_recover_password_html_content_unknown_email(
        self, client: AsyncClient, superuser_headers: dict[str, str]
    ) -> None:
        response = await recovery_html(
            client, factories.random_email(), superuser_headers
        )
        assert response.status_code == 404
        assert response.json() == {
            "detail": "The user with this username does not exist in the system."
        }

    async def test_recover_password_html_content_normal_user(
        self, client: AsyncClient, user: User, user_headers: dict[str, str]
    ) -> None:
        response = await recovery_html(client, user.email, user_headers)
        assert response.status_code == 403
        assert response.json() == {"detail": "The user doesn't have enough privileges"}

    async def test_recover_password_html_content_anonymous(
        self, client: AsyncClient, user: User
    ) -> None:
        assert_unauthorized(await recovery_html(client, user.email))
