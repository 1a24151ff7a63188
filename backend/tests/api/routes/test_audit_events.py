"""The audit trail: each audited action writes exactly one event with the right
fields and no secret; who reads which events; filters and pages; an event
commits with its change (a failed login on its own)."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from httpx import AsyncClient, Response
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud
from app.core import security
from app.core.config import settings
from app.models import AuditAction, AuditContext, AuditEvent, Role, User, utcnow
from tests.utils import factories
from tests.utils.api import API, auth_headers, bearer, client_from, login, refresh
from tests.utils.supabase import FakeSupabase

EVENTS = f"{API}/audit-events/"
USER_AGENT = "audit-tests/1.0"
REQUEST_ID = "audit-request-0001"
CONTEXT = {"User-Agent": USER_AGENT, "X-Request-ID": REQUEST_ID}
WRONG_PASSWORD = "not-the-password"
NEW_PASSWORD = "a-brand-new-password"
NEW_EMAIL = "new-address@example.com"


async def stored_events(db: AsyncSession) -> list[AuditEvent]:
    statement = select(AuditEvent).order_by(
        col(AuditEvent.created_at), col(AuditEvent.id)
    )
    return list((await db.exec(statement)).all())


async def only_event(
    db: AsyncSession,
    action: AuditAction,
    *,
    actor: User | None,
    target: User | None,
    role: Role = Role.user,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """The one event stored, checked to be `action` by `actor` about `target`
    (then of `role`) from this test's client, with `details` (default none)."""
    events = await stored_events(db)
    assert [event.action for event in events] == [action]
    event = events[0]
    assert event.actor_id == (actor.id if actor else None)
    assert event.target_id == (target.id if target else None)
    assert event.target_role == (role if target else None)
    assert event.client_address == "127.0.0.1"
    assert event.user_agent == USER_AGENT
    assert event.request_id == REQUEST_ID
    assert event.created_at.tzinfo is not None
    assert abs(utcnow() - event.created_at) < timedelta(minutes=1)
    assert event.details == (details or {})
    return event


async def own_event(
    db: AsyncSession, action: AuditAction, user: User | None, **details: Any
) -> AuditEvent:
    """The one event stored: `user` acting on their own account (None: no
    account, no known actor)."""
    return await only_event(db, action, actor=user, target=user, details=details)


async def log_in(client: AsyncClient, email: str, password: str) -> Response:
    return await client.post(
        f"{API}/login/access-token",
        data={"username": email, "password": password},
        headers=CONTEXT,
    )


def with_context(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, **CONTEXT}


class TestLogins:
    async def test_success(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        response = await log_in(client, user.email, factories.DEFAULT_PASSWORD)

        assert response.status_code == 200
        await own_event(db, AuditAction.login_succeeded, user)

    @pytest.mark.parametrize(
        ("account", "password", "status", "reason"),
        [
            ("verified", WRONG_PASSWORD, 400, "wrong_password"),
            ("inactive", factories.DEFAULT_PASSWORD, 400, "inactive"),
            ("unverified", factories.DEFAULT_PASSWORD, 403, "unverified"),
        ],
    )
    async def test_refused(
        self,
        client: AsyncClient,
        db: AsyncSession,
        monkeypatch: pytest.MonkeyPatch,
        account: str,
        password: str,
        status: int,
        reason: str,
    ) -> None:
        monkeypatch.setattr(settings, "REQUIRE_EMAIL_VERIFICATION", True)
        user = await factories.create_user(
            db, is_active=account != "inactive", verified=account != "unverified"
        )

        response = await log_in(client, user.email, password)

        assert response.status_code == status
        await only_event(
            db,
            AuditAction.login_failed,
            actor=None,
            target=user,
            details={"reason": reason, "method": "password"},
        )

    async def test_unknown_user(self, client: AsyncClient, db: AsyncSession) -> None:
        email = factories.random_email()

        response = await log_in(client, email, WRONG_PASSWORD)

        assert response.status_code == 400
        await own_event(
            db,
            AuditAction.login_failed,
            None,
            reason="unknown_user",
            method="password",
            email=email,
        )

    async def test_rate_limited(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 1)
        await log_in(client, user.email, WRONG_PASSWORD)

        response = await log_in(client, user.email, factories.DEFAULT_PASSWORD)

        assert response.status_code == 429
        events = await stored_events(db)
        assert [event.details["reason"] for event in events] == [
            "wrong_password",
            "rate_limited",
        ]
        assert (events[1].actor_id, events[1].target_id) == (None, user.id)

    async def test_locked_for_new_addresses(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Past the limit of all addresses together the account is locked for
        addresses it was never signed in from."""
        monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ACCOUNT_ALL_ADDRESSES", 2)
        for attacker in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            async with client_from(attacker) as bot:
                await login(bot, user.email, WRONG_PASSWORD)

        events = await stored_events(db)
        assert [event.details["reason"] for event in events] == [
            "wrong_password",
            "wrong_password",
            "locked",
        ]
        assert events[2].client_address == "203.0.113.3"
        assert events[2].target_id == user.id

    async def test_supabase_exchange(
        self, client: AsyncClient, db: AsyncSession, fake_supabase: FakeSupabase
    ) -> None:
        email = factories.random_email()

        response = await client.get(
            f"{API}/auth/verify_supabase_token",
            headers=with_context(bearer(fake_supabase.token(email=email))),
        )

        assert response.status_code == 200
        user = await crud.get_user_by_email(session=db, email=email)
        assert user is not None
        await own_event(db, AuditAction.supabase_exchange, user)

    async def test_supabase_token_rejected(
        self, client: AsyncClient, db: AsyncSession, fake_supabase: FakeSupabase
    ) -> None:
        token = fake_supabase.token(email=factories.random_email(), aud="elsewhere")

        response = await client.get(
            f"{API}/auth/verify_supabase_token", headers=with_context(bearer(token))
        )

        assert response.status_code == 401
        await own_event(
            db,
            AuditAction.login_failed,
            None,
            reason="provider_token_rejected",
            method="supabase",
        )


class TestSessions:
    async def test_logout(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        user_session, _ = await crud.create_session(
            session=db, user=user, client_address="127.0.0.1", user_agent="tests"
        )
        token = security.create_access_token(user.id, user_session.id)

        response = await client.post(
            f"{API}/logout", headers=with_context(bearer(token))
        )

        assert response.status_code == 200
        await own_event(db, AuditAction.logout, user, session_id=str(user_session.id))

    async def test_session_revoked(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        headers = with_context(await auth_headers(db, user))
        lost, _ = await crud.create_session(
            session=db, user=user, client_address="192.0.2.9", user_agent="old phone"
        )

        response = await client.delete(
            f"{API}/users/me/sessions/{lost.id}", headers=headers
        )

        assert response.status_code == 200
        await own_event(db, AuditAction.session_revoked, user, session_id=str(lost.id))

    async def test_refresh_reuse_detected(
        self, client: AsyncClient, db: AsyncSession, admin: User
    ) -> None:
        tokens = (await login(client, admin.email, factories.DEFAULT_PASSWORD)).json()
        assert (await refresh(client, tokens["refresh_token"])).status_code == 200
        await db.exec(delete(AuditEvent))  # the login's

        replay = await client.post(
            f"{API}/login/refresh-token",
            json={"refresh_token": tokens["refresh_token"]},
            headers=CONTEXT,
        )

        assert replay.status_code == 401
        claims = security.decode_token(tokens["access_token"], token_type="access")
        assert claims is not None
        await only_event(
            db,
            AuditAction.refresh_reuse_detected,
            actor=None,
            target=admin,
            role=Role.admin,
            details={"session_id": str(claims.session_id)},
        )

    async def test_a_refresh_is_not_recorded(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        tokens = (await login(client, user.email, factories.DEFAULT_PASSWORD)).json()

        assert (await refresh(client, tokens["refresh_token"])).status_code == 200

        assert [event.action for event in await stored_events(db)] == [
            AuditAction.login_succeeded
        ]


class TestAccountChanges:
    async def test_password_reset(
        self, client: AsyncClient, db: AsyncSession, user: User
    ) -> None:
        token = security.create_password_reset_token(user.id, user.hashed_password)

        response = await client.post(
            f"{API}/reset-password/",
            json={"token": token, "new_password": NEW_PASSWORD},
            headers=CONTEXT,
        )

        assert response.status_code == 200
        await own_event(db, AuditAction.password_reset, user)

    async def test_name_change_is_not_recorded(
        self, client: AsyncClient, db: AsyncSession, user_headers: dict[str, str]
    ) -> None:
        response = await client.patch(
            f"{API}/users/me", headers=user_headers, json={"full_name": "Ada"}
        )

        assert response.status_code == 200
        assert await stored_events(db) == []

    async def test_email_verification(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        user = await factories.create_user(db, verified=False)
        token = security.create_email_verification_token(user.id, user.email)

        for _ in range(2):  # the second changes nothing: no event
            response = await client.post(
                f"{API}/verify-email/", json={"token": token}, headers=CONTEXT
            )
            assert response.status_code == 200

        await own_event(db, AuditAction.email_verified, user, email=user.email)

    @pytest.mark.parametrize(
        ("change", "action", "details"),
        [
            (
                {"role": "admin"},
                AuditAction.role_changed,
                {"old_role": "user", "new_role": "admin"},
            ),
            (
                {"is_superuser": True},
                AuditAction.role_changed,
                {"old_role": "user", "new_role": "superadmin"},
            ),
            ({"is_active": False}, AuditAction.user_deactivated, {}),
            ({"password": NEW_PASSWORD}, AuditAction.password_changed, {}),
        ],
    )
    async def test_staff_change(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        superuser: User,
        superuser_headers: dict[str, str],
        change: dict[str, Any],
        action: AuditAction,
        details: dict[str, Any],
    ) -> None:
        response = await client.patch(
            f"{API}/users/{user.id}",
            headers=with_context(superuser_headers),
            json=change,
        )

        assert response.status_code == 200
        await only_event(db, action, actor=superuser, target=user, details=details)

    async def test_activation_by_an_admin(
        self,
        client: AsyncClient,
        db: AsyncSession,
        admin: User,
        admin_headers: dict[str, str],
    ) -> None:
        user = await factories.create_user(db, is_active=False)

        response = await client.patch(
            f"{API}/users/{user.id}",
            headers=with_context(admin_headers),
            json={"is_active": True, "full_name": "Back"},
        )

        assert response.status_code == 200
        await only_event(db, AuditAction.user_activated, actor=admin, target=user)

    async def test_several_changes_one_event_each(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        superuser_headers: dict[str, str],
    ) -> None:
        change = {
            "email": factories.random_email(),
            "role": "admin",
            "is_active": False,
            "full_name": "New",
        }

        response = await client.patch(
            f"{API}/users/{user.id}", headers=superuser_headers, json=change
        )

        assert response.status_code == 200
        actions = sorted(event.action for event in await stored_events(db))
        assert actions == sorted(
            [
                AuditAction.email_changed,
                AuditAction.role_changed,
                AuditAction.user_deactivated,
            ]
        )

    async def test_unchanged_values_are_not_recorded(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        superuser_headers: dict[str, str],
    ) -> None:
        response = await client.patch(
            f"{API}/users/{user.id}",
            headers=superuser_headers,
            json={"email": user.email.upper(), "role": "user", "is_active": True},
        )

        assert response.status_code == 200
        assert await stored_events(db) == []

    async def test_deletion_by_staff_keeps_the_id(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        admin: User,
        admin_headers: dict[str, str],
    ) -> None:
        response = await client.delete(
            f"{API}/users/{user.id}", headers=with_context(admin_headers)
        )

        assert response.status_code == 200
        assert await db.get(User, user.id, populate_existing=True) is None
        await only_event(
            db,
            AuditAction.user_deleted,
            actor=admin,
            target=user,
            details={"email": user.email},
        )


class TestOwnAccount:
    """A user's own request, one event about themselves; `{email}` in the
    details stands for their address before the request."""

    @pytest.mark.parametrize(
        ("method", "path", "body", "action", "details"),
        [
            ("POST", "/logout/all", None, AuditAction.logout, {"all_sessions": True}),
            (
                "PATCH",
                "/users/me/password",
                {
                    "current_password": factories.DEFAULT_PASSWORD,
                    "new_password": NEW_PASSWORD,
                },
                AuditAction.password_changed,
                {},
            ),
            (
                "PATCH",
                "/users/me",
                {"email": NEW_EMAIL},
                AuditAction.email_changed,
                {"old_email": "{email}", "new_email": NEW_EMAIL},
            ),
            (
                "DELETE",
                "/users/me",
                None,
                AuditAction.user_deleted,
                {"email": "{email}"},
            ),
        ],
    )
    async def test_recorded(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        method: str,
        path: str,
        body: dict[str, str] | None,
        action: AuditAction,
        details: dict[str, Any],
    ) -> None:
        email = user.email
        headers = with_context(await auth_headers(db, user))

        response = await client.request(method, API + path, headers=headers, json=body)

        assert response.status_code == 200
        await own_event(
            db,
            action,
            user,
            **{
                key: value.format(email=email) if isinstance(value, str) else value
                for key, value in details.items()
            },
        )


async def test_no_event_holds_a_password_or_token(
    client: AsyncClient,
    db: AsyncSession,
    superuser_headers: dict[str, str],
    fake_supabase: FakeSupabase,
) -> None:
    """Every audited flow, with every secret it used collected; then no stored
    event (every column) and no answer of the endpoint contains any of them."""
    email = factories.random_email()
    password, second, third = "first-password-1", "second-password-2", "third-pw-3"
    wrong = "wrong-password-zz"
    secrets_used = [password, second, third, wrong]
    signup = await client.post(
        f"{API}/users/signup", json={"email": email, "password": password}
    )
    assert signup.status_code == 200
    user = await db.get(User, uuid.UUID(signup.json()["id"]))
    assert user is not None
    verification = security.create_email_verification_token(user.id, user.email)
    assert (
        await client.post(f"{API}/verify-email/", json={"token": verification})
    ).status_code == 200
    assert (await login(client, email, wrong)).status_code == 400
    assert (await login(client, factories.random_email(), wrong)).status_code == 400
    first = (await login(client, email, password)).json()
    rotated = (await refresh(client, first["refresh_token"])).json()
    assert (await refresh(client, first["refresh_token"])).status_code == 401
    second_login = (await login(client, email, password)).json()
    headers = bearer(second_login["access_token"])
    assert (
        await client.patch(
            f"{API}/users/me/password",
            headers=headers,
            json={"current_password": password, "new_password": second},
        )
    ).status_code == 200
    await db.refresh(user)
    reset = security.create_password_reset_token(user.id, user.hashed_password)
    assert (
        await client.post(
            f"{API}/reset-password/", json={"token": reset, "new_password": third}
        )
    ).status_code == 200
    await db.refresh(user)
    third_login = (await login(client, email, third)).json()
    headers = bearer(third_login["access_token"])
    assert (
        await client.patch(
            f"{API}/users/me", headers=headers, json={"email": factories.random_email()}
        )
    ).status_code == 200
    provider_token = fake_supabase.token(email=factories.random_email())
    exchange = (
        await client.get(
            f"{API}/auth/verify_supabase_token", headers=bearer(provider_token)
        )
    ).json()
    assert (await client.post(f"{API}/logout", headers=headers)).status_code == 200
    secrets_used += [
        verification,
        reset,
        provider_token,
        user.hashed_password,
        *(
            tokens[key]
            for tokens in (first, rotated, second_login, third_login)
            for key in ("access_token", "refresh_token")
        ),
        exchange["token"],
        exchange["refresh_token"],
        security.hash_refresh_token(first["refresh_token"]),
        superuser_headers["Authorization"].removeprefix("Bearer "),
    ]

    events = await stored_events(db)
    listed = await client.get(EVENTS, headers=superuser_headers)

    assert {event.action for event in events} >= {
        AuditAction.email_verified,
        AuditAction.login_failed,
        AuditAction.login_succeeded,
        AuditAction.refresh_reuse_detected,
        AuditAction.password_changed,
        AuditAction.password_reset,
        AuditAction.email_changed,
        AuditAction.supabase_exchange,
        AuditAction.logout,
    }
    assert listed.status_code == 200
    assert listed.json()["count"] == len(events)
    stored = [event.model_dump_json() for event in events]
    for secret in secrets_used:
        assert len(secret) >= 8
        for row in stored:
            assert secret not in row
        assert secret not in listed.text


# Reading the events


async def add_event(
    db: AsyncSession,
    action: AuditAction = AuditAction.login_succeeded,
    *,
    target: User | None = None,
    actor: User | None = None,
    created_at: datetime | None = None,
) -> AuditEvent:
    event = AuditEvent.about(
        target,
        action,
        context=AuditContext(client_address="192.0.2.1"),
        actor_id=actor.id if actor else None,
    )
    if created_at is not None:
        event.created_at = created_at
    crud.add_audit_event(session=db, event=event)
    await db.commit()
    return event


def ids(response: Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [event["id"] for event in response.json()["data"]]


class TestReadAccess:
    @pytest.fixture
    async def by_role(
        self, db: AsyncSession, user: User, admin: User, superuser: User
    ) -> dict[Role | None, AuditEvent]:
        return {
            Role.user: await add_event(db, target=user),
            Role.admin: await add_event(db, target=admin),
            Role.superadmin: await add_event(db, target=superuser),
            None: await add_event(db, AuditAction.login_failed),
        }

    @pytest.mark.parametrize(
        ("reader", "visible"),
        [
            (Role.superadmin, [Role.user, Role.admin, Role.superadmin, None]),
            # Never events about staff, nor those about no account.
            (Role.admin, [Role.user]),
        ],
    )
    async def test_reader_sees(
        self,
        client: AsyncClient,
        db: AsyncSession,
        admin: User,
        by_role: dict[Role | None, AuditEvent],
        reader: Role,
        visible: list[Role | None],
    ) -> None:
        headers = await auth_headers(db, await factories.create_user(db, role=reader))

        everything = await client.get(EVENTS, headers=headers)
        about_admin = await client.get(
            EVENTS, headers=headers, params={"user_id": str(admin.id)}
        )

        assert set(ids(everything)) == {str(by_role[role].id) for role in visible}
        assert everything.json()["count"] == len(visible)
        assert bool(ids(about_admin)) == (Role.admin in visible)

    async def test_an_admin_demoted_stays_hidden_from_admins(
        self,
        client: AsyncClient,
        db: AsyncSession,
        admin_headers: dict[str, str],
        superuser_headers: dict[str, str],
    ) -> None:
        """The target's role at the time counts: events of an admin stay hidden
        after a demotion (the demotion itself is about an admin)."""
        other_admin = await factories.create_user(db, role=Role.admin)
        await add_event(db, target=other_admin)
        demoted = await client.patch(
            f"{API}/users/{other_admin.id}",
            headers=superuser_headers,
            json={"role": "user"},
        )
        assert demoted.status_code == 200

        assert ids(await client.get(EVENTS, headers=admin_headers)) == []

    async def test_user_is_refused(
        self, client: AsyncClient, user_headers: dict[str, str]
    ) -> None:
        response = await client.get(EVENTS, headers=user_headers)

        assert response.status_code == 403
        assert response.json() == {"detail": "The user doesn't have enough privileges"}

    async def test_anonymous_is_refused(self, client: AsyncClient) -> None:
        response = await client.get(EVENTS)

        assert response.status_code == 401


class TestFilters:
    async def test_action_user_and_time(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        admin: User,
        superuser_headers: dict[str, str],
    ) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        by_admin = await add_event(
            db,
            AuditAction.user_deactivated,
            actor=admin,
            target=user,
            created_at=start,
        )
        own_login = await add_event(
            db, target=admin, actor=admin, created_at=start + timedelta(hours=1)
        )
        other = await add_event(
            db, AuditAction.login_failed, created_at=start + timedelta(hours=2)
        )

        async def read(**params: str) -> list[str]:
            return ids(
                await client.get(EVENTS, headers=superuser_headers, params=params)
            )

        assert await read() == [str(other.id), str(own_login.id), str(by_admin.id)]
        assert await read(action="user_deactivated") == [str(by_admin.id)]
        assert await read(user_id=str(admin.id)) == [
            str(own_login.id),
            str(by_admin.id),
        ]
        assert await read(user_id=str(user.id)) == [str(by_admin.id)]
        hour = (start + timedelta(hours=1)).isoformat()
        assert await read(since=hour) == [str(other.id), str(own_login.id)]
        assert await read(until=hour) == [str(by_admin.id)]
        assert await read(since=hour, until="2026-01-01T02:00:00+00:00") == [
            str(own_login.id)
        ]
        # The same instant in another offset.
        assert await read(since="2026-01-01T03:00:00+02:00") == [
            str(other.id),
            str(own_login.id),
        ]
        assert await read(action="login_failed", user_id=str(admin.id)) == []

    @pytest.mark.parametrize(
        ("params", "field", "message"),
        [
            ({"action": "password_guessed"}, "action", "Input should be"),
            ({"user_id": "42"}, "user_id", "valid UUID"),
            ({"since": "yesterday"}, "since", "valid datetime"),
            ({"since": "2026-01-01T00:00:00"}, "since", "timezone"),
            (
                {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
                "until",
                "until must be after since",
            ),
            ({"cursor": "not-a-cursor"}, "cursor", "Invalid cursor"),
            ({"limit": "0"}, "limit", "greater than or equal to 1"),
        ],
    )
    async def test_bad_filters_are_422(
        self,
        client: AsyncClient,
        superuser_headers: dict[str, str],
        params: dict[str, str],
        field: str,
        message: str,
    ) -> None:
        response = await client.get(EVENTS, headers=superuser_headers, params=params)

        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["query", field]
        assert message in error["msg"]

    async def test_pages_newest_first(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        superuser_headers: dict[str, str],
    ) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        events = [
            await add_event(db, target=user, created_at=start + timedelta(minutes=n))
            for n in range(5)
        ]
        # Two events at one instant: the id breaks the tie.
        events.append(
            await add_event(db, target=user, created_at=events[-1].created_at)
        )
        newest_first = sorted(
            events, key=lambda event: (event.created_at, event.id), reverse=True
        )
        seen: list[str] = []
        params = {"limit": "2", "user_id": str(user.id)}

        while True:
            response = await client.get(
                EVENTS, headers=superuser_headers, params=params
            )
            seen += ids(response)
            assert response.json()["count"] == 6
            cursor = response.json()["next_cursor"]
            if cursor is None:
                break
            params["cursor"] = cursor

        assert seen == [str(event.id) for event in newest_first]


# One transaction with the change


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that really commit, beside `committing_client` (which deletes
    the rows afterwards)."""
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


async def committed_events(
    sessions: async_sessionmaker[AsyncSession],
) -> list[AuditEvent]:
    async with sessions() as session:
        return await stored_events(session)


class TestTransactions:
    async def test_failed_login_is_committed_alone(
        self,
        committing_client: AsyncClient,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        async with sessions() as session:
            user = await factories.create_user(session)

        response = await log_in(committing_client, user.email, WRONG_PASSWORD)

        assert response.status_code == 400
        [event] = await committed_events(sessions)
        assert (event.action, event.target_id) == (AuditAction.login_failed, user.id)

    async def test_refused_change_writes_no_event(
        self,
        committing_client: AsyncClient,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        """Deactivating the last active superadmin is refused after the event
        was added: it goes with the change."""
        async with sessions() as session:
            await session.exec(delete(User).where(col(User.role) == Role.superadmin))
            superuser = await factories.create_user(session, is_superuser=True)
            headers = await auth_headers(session, superuser)

        response = await committing_client.patch(
            f"{API}/users/{superuser.id}", headers=headers, json={"is_active": False}
        )

        assert response.status_code == 409
        assert await committed_events(sessions) == []

    async def test_change_rolled_back_by_the_database_writes_no_event(
        self,
        committing_client: AsyncClient,
        sessions: async_sessionmaker[AsyncSession],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Two users taking one email at once: the unique index refuses the
        second at commit, and its event is rolled back with it."""
        async with sessions() as session:
            taken = await factories.create_user(session)
            user = await factories.create_user(session)
            headers = await auth_headers(session, user)

        async def email_looks_free(**_: Any) -> None:
            return None  # the friendly check raced the other request

        monkeypatch.setattr(crud, "get_user_by_email", email_looks_free)
        response = await committing_client.patch(
            f"{API}/users/me", headers=headers, json={"email": taken.email}
        )

        assert response.status_code == 409
        assert await committed_events(sessions) == []

    async def test_committed_change_writes_its_event(
        self,
        committing_client: AsyncClient,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        async with sessions() as session:
            user = await factories.create_user(session)
            headers = await auth_headers(session, user)

        response = await committing_client.patch(
            f"{API}/users/me", headers=headers, json={"email": factories.random_email()}
        )

        assert response.status_code == 200
        [event] = await committed_events(sessions)
        assert (event.action, event.target_id) == (AuditAction.email_changed, user.id)
