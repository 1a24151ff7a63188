"""Email verification and the emailed-token flows: links that arrive by real SMTP,
tokens that are typed, single-purpose and die when the address changes."""

import re
import uuid
from datetime import timedelta

import pytest
from httpx import AsyncClient
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core import security
from app.core.config import settings
from app.models import User
from tests.utils import factories
from tests.utils.api import API, login
from tests.utils.smtp import SmtpSink

VERIFY_LINK = re.compile(
    re.escape(f"{settings.FRONTEND_HOST}/verify-email?token=") + r"([\w\-.]+)"
)
VERIFIED = {"message": "Email verified successfully"}
INVALID_TOKEN = {"detail": "Invalid token"}
RESEND_MESSAGE = {
    "message": "If that email is registered and not yet verified, "
    "we sent a verification link"
}


def verification_token_in(sink: SmtpSink, to: str) -> str:
    for message, recipients in zip(sink.messages, sink.recipients, strict=True):
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        found = VERIFY_LINK.search(body.get_content())
        if recipients == [to] and found:
            return found.group(1)
    raise AssertionError(f"no verification link sent to {to}")


async def verify(client: AsyncClient, token: str) -> dict[str, str]:
    response = await client.post(f"{API}/verify-email/", json={"token": token})
    body: dict[str, str] = response.json()
    return body


async def reload(db: AsyncSession, user_id: uuid.UUID) -> User:
    db.expunge_all()
    user = await db.get(User, user_id)
    assert user is not None
    return user


class TestSignupVerification:
    async def test_signup_sends_a_link_that_verifies(
        self, client: AsyncClient, db: AsyncSession, smtp_server: SmtpSink
    ) -> None:
        email = factories.random_email()
        signup = await client.post(
            f"{API}/users/signup", json={"email": email, "password": "a-good-password"}
        )
        assert signup.json()["email_verified_at"] is None
        (message,) = smtp_server.messages
        assert message["Subject"] == f"{settings.PROJECT_NAME} - Verify your email"

        assert await verify(client, verification_token_in(smtp_server, email)) == (
            VERIFIED
        )
        user = await reload(db, uuid.UUID(signup.json()["id"]))
        assert user.email_verified_at is not None

    async def test_account_created_by_an_admin_gets_the_link_too(
        self,
        client: AsyncClient,
        superuser_headers: dict[str, str],
        smtp_server: SmtpSink,
    ) -> None:
        email = factories.random_email()
        await client.post(
            f"{API}/users/",
            headers=superuser_headers,
            json={"email": email, "password": "a-good-password"},
        )
        assert await verify(client, verification_token_in(smtp_server, email)) == (
            VERIFIED
        )

    @pytest.mark.parametrize("kind", ["access", "password_reset", "garbage", "expired"])
    async def test_other_tokens_do_not_verify(
        self, client: AsyncClient, db: AsyncSession, kind: str
    ) -> None:
        user = await factories.create_user(db, verified=False)
        token = {
            "access": security.create_access_token(user.id, user.id),
            "password_reset": security.create_password_reset_token(
                user.id, user.hashed_password
            ),
            "garbage": "not-a-token",
            "expired": security.create_token(
                str(user.id),
                token_type="email_verification",
                expires_delta=timedelta(seconds=-1),
                eml=security.fingerprint(user.email.lower()),
            ),
        }[kind]
        assert await verify(client, token) == INVALID_TOKEN
        assert (await reload(db, user.id)).email_verified_at is None

    async def test_verification_token_is_no_access_token(
        self, client: AsyncClient, user: User
    ) -> None:
        token = security.create_email_verification_token(user.id, user.email)
        response = await client.get(
            f"{API}/users/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401


class TestEmailChange:
    async def test_new_email_must_be_verified_again(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
        smtp_server: SmtpSink,
    ) -> None:
        old_email = user.email
        old_token = security.create_email_verification_token(user.id, user.email)
        new_email = factories.random_email()

        response = await client.patch(
            f"{API}/users/me", headers=user_headers, json={"email": new_email}
        )

        assert response.json()["email_verified_at"] is None
        assert await verify(client, old_token) == INVALID_TOKEN  # proves the old one
        notice = next(
            message
            for message, to in zip(
                smtp_server.messages, smtp_server.recipients, strict=True
            )
            if to == [old_email]
        )
        assert "email address was changed" in notice["Subject"]
        assert await verify(client, verification_token_in(smtp_server, new_email)) == (
            VERIFIED
        )
        assert (await reload(db, user.id)).email_verified_at is not None

    async def test_same_email_in_another_case_stays_verified(
        self, client: AsyncClient, user: User, user_headers: dict[str, str]
    ) -> None:
        local, domain = user.email.split("@")
        response = await client.patch(
            f"{API}/users/me",
            headers=user_headers,
            json={"email": f"{local.upper()}@{domain}"},
        )
        assert response.json()["email_verified_at"] is not None


class TestRequireVerification:
    async def test_unverified_users_may_log_in_by_default(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        user = await factories.create_user(db, verified=False)
        response = await login(client, user.email, factories.DEFAULT_PASSWORD)
        assert response.status_code == 200

    async def test_unverified_users_blocked_when_required(
        self, client: AsyncClient, db: AsyncSession, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(settings, "REQUIRE_EMAIL_VERIFICATION", True)
        unverified = await factories.create_user(db, verified=False)
        verified = await factories.create_user(db)

        blocked = await login(client, unverified.email, factories.DEFAULT_PASSWORD)
        assert blocked.status_code == 403
        assert blocked.json() == {
            "detail": "Email not verified: use the link we sent, or ask for a new one"
        }
        wrong = await login(client, unverified.email, "a-wrong-password")
        assert wrong.status_code == 400  # the password is checked first
        allowed = await login(client, verified.email, factories.DEFAULT_PASSWORD)
        assert allowed.status_code == 200


class TestResend:
    async def test_resend_only_to_unverified_accounts_same_answer(
        self, client: AsyncClient, db: AsyncSession, smtp_server: SmtpSink
    ) -> None:
        unverified = await factories.create_user(db, verified=False)
        verified = await factories.create_user(db)
        for email in (unverified.email, verified.email, factories.random_email()):
            response = await client.post(
                f"{API}/verify-email/resend", json={"email": email}
            )
            assert response.status_code == 200
            assert response.json() == RESEND_MESSAGE
        assert smtp_server.recipients == [[unverified.email]]
        token = verification_token_in(smtp_server, unverified.email)
        assert await verify(client, token) == VERIFIED

    async def test_resend_is_rate_limited_per_address(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        user = await factories.create_user(db, verified=False)
        first = await client.post(
            f"{API}/verify-email/resend", json={"email": user.email}
        )
        assert first.status_code == 200
        # One verification email per address per cooldown, whatever its case.
        limited = await client.post(
            f"{API}/verify-email/resend", json={"email": user.email.upper()}
        )
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == str(settings.EMAIL_COOLDOWN_SECONDS)
