"""Sessions: short-lived access tokens, rotating refresh tokens, logout, and every
event that must end sessions at once (ASVS V3)."""

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

import jwt
import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core import security
from app.core.config import settings
from app.models import RefreshToken, User, UserSession, utcnow
from tests.utils import factories
from tests.utils.api import (
    API,
    assert_unauthorized,
    auth_headers,
    bearer,
    login,
    me,
    refresh,
)


async def log_in(
    client: AsyncClient, user: User, user_agent: str = "tests"
) -> dict[str, Any]:
    response = await login(client, user.email, factories.DEFAULT_PASSWORD, user_agent)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def user_sessions(db: AsyncSession, user: User) -> list[UserSession]:
    db.expunge_all()
    statement = select(UserSession).where(UserSession.user_id == user.id)
    return list((await db.exec(statement)).all())


class TestLoginTokens:
    async def test_login_returns_short_lived_access_and_refresh_token(
        self, client: AsyncClient, user: User
    ) -> None:
        body = await log_in(client, user)
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60 == 1800
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == body["expires_in"]
        assert len(body["refresh_token"]) >= 43  # 256 random bits, base64

    async def test_refresh_token_stored_only_as_hash(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        body = await log_in(client, user, user_agent="Firefox on a laptop")
        stored = (await db.exec(select(RefreshToken))).all()
        expected = hashlib.sha256(body["refresh_token"].encode()).hexdigest()
        assert [row.token_hash for row in stored] == [expected]
        (session_row,) = await user_sessions(db, user)
        assert session_row.user_agent == "Firefox on a laptop"
        assert session_row.client_address == "127.0.0.1"


class TestRefresh:
    async def test_refresh_rotates_both_tokens(
        self, client: AsyncClient, user: User
    ) -> None:
        first = await log_in(client, user)
        response = await refresh(client, first["refresh_token"])
        assert response.status_code == 200
        second = response.json()
        assert second["refresh_token"] != first["refresh_token"]
        assert second["expires_in"] == first["expires_in"]
        assert (await me(client, second["access_token"])).json()["id"] == str(user.id)
        # Still the same session: the first access token lives on until it expires.
        assert (await me(client, first["access_token"])).status_code == 200

    async def test_replayed_refresh_token_revokes_the_session(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        stolen = await log_in(client, user)
        rotated = (await refresh(client, stolen["refresh_token"])).json()

        assert_unauthorized(await refresh(client, stolen["refresh_token"]))

        # The legitimate holder's tokens of that session die too.
        assert_unauthorized(await refresh(client, rotated["refresh_token"]))
        assert_unauthorized(await me(client, rotated["access_token"]))
        (session_row,) = await user_sessions(db, user)
        assert session_row.revoked_at is not None

    async def test_replay_spares_other_sessions(
        self, client: AsyncClient, user: User
    ) -> None:
        stolen = await log_in(client, user)
        other = await log_in(client, user)
        await refresh(client, stolen["refresh_token"])
        await refresh(client, stolen["refresh_token"])
        assert (await me(client, other["access_token"])).status_code == 200
        assert (await refresh(client, other["refresh_token"])).status_code == 200

    @pytest.mark.parametrize("token", ["", "garbage", "x" * 256])
    async def test_unknown_refresh_token(self, client: AsyncClient, token: str) -> None:
        assert_unauthorized(await refresh(client, token))

    async def test_oversized_refresh_token_is_a_validation_error(
        self, client: AsyncClient
    ) -> None:
        response = await refresh(client, "x" * 513)
        assert response.status_code == 422

    async def test_access_token_is_not_a_refresh_token(
        self, client: AsyncClient, user: User
    ) -> None:
        body = await log_in(client, user)
        assert_unauthorized(await refresh(client, body["access_token"]))

    async def test_expired_session_cannot_refresh(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        body = await log_in(client, user)
        (session_row,) = await user_sessions(db, user)
        session_row.expires_at = utcnow() - timedelta(seconds=1)
        db.add(session_row)
        await db.commit()
        assert_unauthorized(await refresh(client, body["refresh_token"]))
        assert_unauthorized(await me(client, body["access_token"]))

    async def test_refresh_never_outlives_the_absolute_session_age(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        body = await log_in(client, user)
        (session_row,) = await user_sessions(db, user)
        max_age = timedelta(days=settings.SESSION_MAX_AGE_DAYS)
        session_row.created_at = utcnow() - max_age + timedelta(hours=1)
        db.add(session_row)
        await db.commit()

        assert (await refresh(client, body["refresh_token"])).status_code == 200
        (session_row,) = await user_sessions(db, user)
        assert session_row.expires_at <= session_row.created_at + max_age

    async def test_inactive_user_cannot_refresh(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        body = await log_in(client, user)
        user.is_active = False
        db.add(user)
        await db.commit()
        assert_unauthorized(await refresh(client, body["refresh_token"]))

    async def test_parallel_refreshes_of_one_token_one_success_at_most(
        self, committing_client: AsyncClient, engine: AsyncEngine
    ) -> None:
        sessions = async_sessionmaker(
            engine, class_=AsyncSession, expire_on_commit=False
        )
        async with sessions() as session:
            user = await factories.create_user(session)
        body = await log_in(committing_client, user)

        responses = await asyncio.gather(
            *(refresh(committing_client, body["refresh_token"]) for _ in range(50))
        )

        codes = sorted(response.status_code for response in responses)
        assert codes.count(200) <= 1
        assert set(codes) <= {200, 401}


class TestLogout:
    async def test_logout_ends_this_session_only(
        self, client: AsyncClient, user: User
    ) -> None:
        laptop = await log_in(client, user)
        phone = await log_in(client, user)

        response = await client.post(
            f"{API}/logout", headers=bearer(laptop["access_token"])
        )
        assert response.json() == {"message": "Logged out"}

        assert_unauthorized(await me(client, laptop["access_token"]))
        assert_unauthorized(await refresh(client, laptop["refresh_token"]))
        assert (await me(client, phone["access_token"])).status_code == 200

    async def test_logout_everywhere(self, client: AsyncClient, user: User) -> None:
        laptop = await log_in(client, user)
        phone = await log_in(client, user)

        response = await client.post(
            f"{API}/logout/all", headers=bearer(laptop["access_token"])
        )
        assert response.json() == {"message": "Logged out of all sessions"}

        for tokens in (laptop, phone):
            assert_unauthorized(await me(client, tokens["access_token"]))
            assert_unauthorized(await refresh(client, tokens["refresh_token"]))
        assert (await log_in(client, user))["access_token"]  # logging in still works

    @pytest.mark.parametrize("path", ["/logout", "/logout/all"])
    async def test_logout_needs_a_token(self, client: AsyncClient, path: str) -> None:
        assert_unauthorized(await client.post(f"{API}{path}"))


class TestMySessions:
    async def test_list_my_sessions(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        await log_in(client, user, user_agent="phone")
        laptop = await log_in(client, user, user_agent="laptop")
        await auth_headers(db, await factories.create_user(db))  # someone else's

        response = await client.get(
            f"{API}/users/me/sessions", headers=bearer(laptop["access_token"])
        )

        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 2
        by_agent = {row["user_agent"]: row for row in body["data"]}
        assert by_agent["laptop"]["current"] is True
        assert by_agent["phone"]["current"] is False
        assert by_agent["laptop"]["client_address"] == "127.0.0.1"
        assert "refresh_token" not in response.text

    async def test_revoked_sessions_are_not_listed(
        self, client: AsyncClient, user: User
    ) -> None:
        gone = await log_in(client, user)
        await client.post(f"{API}/logout", headers=bearer(gone["access_token"]))
        current = await log_in(client, user)
        response = await client.get(
            f"{API}/users/me/sessions", headers=bearer(current["access_token"])
        )
        assert response.json()["count"] == 1

    async def test_revoke_one_of_my_sessions(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        lost_phone = await log_in(client, user, user_agent="phone")
        laptop = await log_in(client, user, user_agent="laptop")
        phone_row = next(
            row for row in await user_sessions(db, user) if row.user_agent == "phone"
        )

        response = await client.delete(
            f"{API}/users/me/sessions/{phone_row.id}",
            headers=bearer(laptop["access_token"]),
        )

        assert response.json() == {"message": "Session revoked"}
        assert_unauthorized(await me(client, lost_phone["access_token"]))
        assert_unauthorized(await refresh(client, lost_phone["refresh_token"]))
        assert (await me(client, laptop["access_token"])).status_code == 200

    async def test_cannot_revoke_someone_elses_session(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        victim = await factories.create_user(db)
        victim_headers = await auth_headers(db, victim)
        (victim_session,) = await user_sessions(db, victim)
        mine = await log_in(client, user)

        response = await client.delete(
            f"{API}/users/me/sessions/{victim_session.id}",
            headers=bearer(mine["access_token"]),
        )

        assert response.status_code == 404
        assert response.json() == {"detail": "Session not found"}
        assert (
            await client.get(f"{API}/users/me", headers=victim_headers)
        ).status_code == 200


class TestEventsThatEndSessions:
    async def test_password_change_ends_other_sessions_keeps_this_one(
        self, client: AsyncClient, user: User
    ) -> None:
        attacker = await log_in(client, user)
        owner = await log_in(client, user)

        response = await client.patch(
            f"{API}/users/me/password",
            headers=bearer(owner["access_token"]),
            json={
                "current_password": factories.DEFAULT_PASSWORD,
                "new_password": "a-brand-new-password",
            },
        )

        assert response.status_code == 200
        assert_unauthorized(await me(client, attacker["access_token"]))
        assert_unauthorized(await refresh(client, attacker["refresh_token"]))
        assert (await me(client, owner["access_token"])).status_code == 200
        assert (await refresh(client, owner["refresh_token"])).status_code == 200

    async def test_password_reset_ends_every_session(
        self, client: AsyncClient, user: User
    ) -> None:
        old = await log_in(client, user)
        token = security.create_password_reset_token(user.id, user.hashed_password)
        response = await client.post(
            f"{API}/reset-password/",
            json={"token": token, "new_password": "a-brand-new-password"},
        )
        assert response.status_code == 200
        assert_unauthorized(await me(client, old["access_token"]))
        assert_unauthorized(await refresh(client, old["refresh_token"]))

    @pytest.mark.parametrize(
        "change",
        [{"password": "set-by-the-admin"}, {"is_active": False}],
        ids=["admin-sets-password", "deactivation"],
    )
    async def test_admin_change_ends_the_users_sessions(
        self,
        client: AsyncClient,
        user: User,
        superuser_headers: dict[str, str],
        change: dict[str, object],
    ) -> None:
        old = await log_in(client, user)
        response = await client.patch(
            f"{API}/users/{user.id}", headers=superuser_headers, json=change
        )
        assert response.status_code == 200
        assert_unauthorized(await me(client, old["access_token"]))
        assert_unauthorized(await refresh(client, old["refresh_token"]))

    async def test_deletion_ends_sessions(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        old = await log_in(client, user)
        response = await client.delete(
            f"{API}/users/me", headers=bearer(old["access_token"])
        )
        assert response.status_code == 200
        assert_unauthorized(await me(client, old["access_token"]))
        assert_unauthorized(await refresh(client, old["refresh_token"]))
        remaining = await db.exec(
            select(UserSession).where(col(UserSession.user_id) == user.id)
        )
        assert remaining.all() == []
