import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest
from httpx import AsyncClient, Response
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import settings
from app.models import Item, User
from tests.utils import factories
from tests.utils.api import auth_headers
from tests.utils.smtp import SmtpSink

API = settings.API_V1_STR
USERS = f"{API}/users"
NOT_ENOUGH_PRIVILEGES = {"detail": "The user doesn't have enough privileges"}
EMAIL_TAKEN = {"detail": "User with this email already exists"}
USER_DELETED = {"message": "User deleted successfully"}
SUPERUSER_SELF_DELETE = {"detail": "Super users are not allowed to delete themselves"}
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

# Payloads every user-creating endpoint must refuse with 422.
BAD_USER_PAYLOADS: list[dict[str, Any]] = [
    {"email": "not-an-email", "password": "long-enough-password"},
    {"email": "bad@", "password": "long-enough-password"},
    {"email": "short@example.com", "password": "short"},
    {"email": "long@example.com", "password": "x" * 129},
    {
        "email": "name@example.com",
        "password": "long-enough-password",
        "full_name": "x" * 256,
    },
    {
        "email": "nul@example.com",
        "password": "long-enough-password",
        "full_name": "a\x00b",
    },
    {"email": "nopassword@example.com"},
    {"password": "long-enough-password"},
]


async def login(client: AsyncClient, email: str, password: str) -> Response:
    return await client.post(
        f"{API}/login/access-token", data={"username": email, "password": password}
    )


def assert_unauthorized(response: Response) -> None:
    assert response.status_code == 401
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail


def assert_validation_error(response: Response) -> None:
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


def assert_user_public(body: dict[str, Any]) -> None:
    assert USER_FIELDS <= set(body)
    assert "hashed_password" not in body
    assert "password" not in body


def upper_local_part(email: str) -> str:
    """The same address in another case (the email validator lowercases domains)."""
    local, domain = email.split("@")
    return f"{local.upper()}@{domain}"


async def reload(
    db: AsyncSession, model: type[User] | type[Item], id_: uuid.UUID
) -> Any:
    """The row as the database has it now (not the session's cached object)."""
    db.expunge_all()
    return await db.get(model, id_)


async def user_route(
    db: AsyncSession, route: str, target: User, superuser: User
) -> tuple[str, dict[str, str]]:
    """URL and headers to act on `target`: /me as itself, or /{id} as `superuser`."""
    if route == "me":
        return f"{USERS}/me", await auth_headers(db, target)
    return f"{USERS}/{target.id}", await auth_headers(db, superuser)


async def change_password(
    client: AsyncClient, headers: dict[str, str] | None, current: str, new: str
) -> Response:
    return await client.patch(
        f"{USERS}/me/password",
        json={"current_password": current, "new_password": new},
        headers=headers,
    )


async def assert_user_created(
    client: AsyncClient,
    db: AsyncSession,
    response: Response,
    payload: dict[str, Any],
    *,
    is_superuser: bool,
) -> None:
    """The response, the stored row and a login show the account `payload` asked for."""
    assert response.status_code == 200
    body = response.json()
    assert_user_public(body)
    assert body["email"] == payload["email"]
    assert body["full_name"] == payload["full_name"]
    assert body["is_superuser"] is is_superuser
    assert body["is_active"] is True
    assert body["created_at"] is not None
    stored = await reload(db, User, uuid.UUID(body["id"]))
    assert stored is not None
    assert stored.email == payload["email"]
    assert stored.hashed_password.startswith("$argon2")
    login_response = await login(client, payload["email"], payload["password"])
    assert login_response.status_code == 200


class TestReadUsers:
    async def test_read_users_count_and_newest_first(
        self,
        client: AsyncClient,
        db: AsyncSession,
        superuser: User,
        superuser_headers: dict[str, str],
    ) -> None:
        base = datetime(2024, 1, 1, tzinfo=UTC)
        others = [await factories.create_user(db) for _ in range(3)]
        # Creation order differs from created_at order on purpose.
        offsets = [(superuser, 10), (others[0], 1), (others[1], 30), (others[2], 20)]
        for row, minutes in offsets:
            row.created_at = base + timedelta(minutes=minutes)
            db.add(row)
        await db.commit()
        newest_first = sorted(offsets, key=lambda pair: pair[1], reverse=True)
        expected = [str(row.id) for row, _ in newest_first]

        response = await client.get(f"{USERS}/", headers=superuser_headers)
        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 4
        assert [u["id"] for u in body["data"]] == expected
        for user_body in body["data"]:
            assert_user_public(user_body)

        page = await client.get(
            f"{USERS}/", params={"skip": 1, "limit": 2}, headers=superuser_headers
        )
        assert page.status_code == 200
        assert page.json()["count"] == 4
        assert [u["id"] for u in page.json()["data"]] == expected[1:3]

        tail = await client.get(
            f"{USERS}/", params={"skip": 3, "limit": 100}, headers=superuser_headers
        )
        assert tail.status_code == 200
        assert tail.json()["count"] == 4
        assert [u["id"] for u in tail.json()["data"]] == expected[3:]

        beyond = await client.get(
            f"{USERS}/", params={"skip": 10}, headers=superuser_headers
        )
        assert beyond.status_code == 200
        assert beyond.json() == {"data": [], "count": 4, "next_cursor": None}

    async def test_read_users_single_user(
        self, client: AsyncClient, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.get(f"{USERS}/", headers=superuser_headers)
        assert response.status_code == 200
        assert response.json()["count"] == 1
        assert len(response.json()["data"]) == 1

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": 0},
            {"limit": 101},
            {"limit": -1},
            {"skip": -1},
            {"skip": "99999999999999999999"},
            {"skip": "abc"},
        ],
    )
    async def test_read_users_bad_paging(
        self,
        client: AsyncClient,
        superuser_headers: dict[str, str],
        params: dict[str, Any],
    ) -> None:
        response = await client.get(
            f"{USERS}/", params=params, headers=superuser_headers
        )
        assert_validation_error(response)

    async def test_read_users_limit_100_allowed(
        self, client: AsyncClient, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.get(
            f"{USERS}/", params={"limit": 100}, headers=superuser_headers
        )
        assert response.status_code == 200

    async def test_read_users_normal_user(
        self, client: AsyncClient, user_headers: dict[str, str]
    ) -> None:
        response = await client.get(f"{USERS}/", headers=user_headers)
        assert response.status_code == 403
        assert response.json() == NOT_ENOUGH_PRIVILEGES

    async def test_read_users_anonymous(self, client: AsyncClient) -> None:
        assert_unauthorized(await client.get(f"{USERS}/"))


class TestCreateUser:
    async def test_create_user_success(
        self, client: AsyncClient, db: AsyncSession, superuser_headers: dict[str, str]
    ) -> None:
        payload = {
            "email": factories.random_email(),
            "password": "new-user-password",
            "full_name": "New User",
            "is_superuser": True,
        }
        response = await client.post(
            f"{USERS}/", json=payload, headers=superuser_headers
        )
        await assert_user_created(client, db, response, payload, is_superuser=True)

    async def test_create_user_sends_new_account_email(
        self,
        client: AsyncClient,
        superuser_headers: dict[str, str],
        smtp_server: SmtpSink,
    ) -> None:
        email = factories.random_email()
        response = await client.post(
            f"{USERS}/",
            json={"email": email, "password": "new-user-password"},
            headers=superuser_headers,
        )
        assert response.status_code == 200
        assert smtp_server.recipients == [[email]]
        assert len(smtp_server.messages) == 1
        assert smtp_server.messages[0]["To"] == email
        assert email in smtp_server.messages[0]["Subject"]

    @pytest.mark.parametrize("transform", [str.lower, str.upper, str.title])
    async def test_create_user_duplicate_email(
        self,
        client: AsyncClient,
        superuser_headers: dict[str, str],
        user: User,
        transform: Any,
    ) -> None:
        response = await client.post(
            f"{USERS}/",
            json={"email": transform(user.email), "password": "new-user-password"},
            headers=superuser_headers,
        )
        assert response.status_code == 400
        assert response.json() == {
            "detail": "The user with this email already exists in the system."
        }

    async def test_create_user_normal_user(
        self, client: AsyncClient, user_headers: dict[str, str]
    ) -> None:
        response = await client.post(
            f"{USERS}/",
            json={"email": factories.random_email(), "password": "new-user-password"},
            headers=user_headers,
        )
        assert response.status_code == 403
        assert response.json() == NOT_ENOUGH_PRIVILEGES

    async def test_create_user_anonymous(self, client: AsyncClient) -> None:
        response = await client.post(
            f"{USERS}/",
            json={"email": factories.random_email(), "password": "new-user-password"},
        )
        assert_unauthorized(response)

    @pytest.mark.parametrize("payload", BAD_USER_PAYLOADS)
    async def test_create_user_bad_payload(
        self,
        client: AsyncClient,
        superuser_headers: dict[str, str],
        payload: dict[str, Any],
    ) -> None:
        response = await client.post(
            f"{USERS}/", json=payload, headers=superuser_headers
        )
        assert_validation_error(response)


class TestReadUserMe:
    async def test_read_user_me(
        self, client: AsyncClient, user: User, user_headers: dict[str, str]
    ) -> None:
        response = await client.get(f"{USERS}/me", headers=user_headers)
        assert response.status_code == 200
        body = response.json()
        assert_user_public(body)
        assert body["id"] == str(user.id)
        assert body["email"] == user.email
        assert body["is_superuser"] is False

    async def test_read_user_me_superuser(
        self, client: AsyncClient, superuser: User, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.get(f"{USERS}/me", headers=superuser_headers)
        assert response.status_code == 200
        assert response.json()["id"] == str(superuser.id)
        assert response.json()["is_superuser"] is True

    async def test_read_user_me_anonymous(self, client: AsyncClient) -> None:
        assert_unauthorized(await client.get(f"{USERS}/me"))


class TestUpdateUserMe:
    async def test_update_user_me_full_name_and_email(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
    ) -> None:
        new_email = factories.random_email()
        response = await client.patch(
            f"{USERS}/me",
            json={"full_name": "Renamed", "email": new_email},
            headers=user_headers,
        )
        assert response.status_code == 200
        body = response.json()
        assert body["full_name"] == "Renamed"
        assert body["email"] == new_email

        stored = await reload(db, User, user.id)
        assert stored.full_name == "Renamed"
        assert stored.email == new_email
        assert (
            await login(client, new_email, factories.DEFAULT_PASSWORD)
        ).status_code == 200

    async def test_update_user_me_full_name_only_keeps_email(
        self, client: AsyncClient, user: User, user_headers: dict[str, str]
    ) -> None:
        response = await client.patch(
            f"{USERS}/me", json={"full_name": "Only Name"}, headers=user_headers
        )
        assert response.status_code == 200
        assert response.json()["full_name"] == "Only Name"
        assert response.json()["email"] == user.email

    async def test_update_user_me_anonymous(self, client: AsyncClient) -> None:
        assert_unauthorized(await client.patch(f"{USERS}/me", json={"full_name": "X"}))


class TestUpdatePasswordMe:
    async def test_update_password_me_success(
        self, client: AsyncClient, user: User, user_headers: dict[str, str]
    ) -> None:
        response = await change_password(
            client, user_headers, factories.DEFAULT_PASSWORD, "changed-password-1"
        )
        assert response.status_code == 200
        assert response.json() == {"message": "Password updated successfully"}
        assert (
            await login(client, user.email, "changed-password-1")
        ).status_code == 200
        old = await login(client, user.email, factories.DEFAULT_PASSWORD)
        assert old.status_code == 400
        assert old.json() == {"detail": "Incorrect email or password"}

    async def test_update_password_me_wrong_current(
        self, client: AsyncClient, user: User, user_headers: dict[str, str]
    ) -> None:
        response = await change_password(
            client, user_headers, "not-my-password", "changed-password-1"
        )
        assert response.status_code == 400
        assert response.json() == {"detail": "Incorrect password"}
        assert (
            await login(client, user.email, factories.DEFAULT_PASSWORD)
        ).status_code == 200

    async def test_update_password_me_same_as_current(
        self, client: AsyncClient, user_headers: dict[str, str]
    ) -> None:
        response = await change_password(
            client, user_headers, factories.DEFAULT_PASSWORD, factories.DEFAULT_PASSWORD
        )
        assert response.status_code == 400
        assert response.json() == {
            "detail": "New password cannot be the same as the current one"
        }

    @pytest.mark.parametrize(
        "payload",
        [
            {"current_password": factories.DEFAULT_PASSWORD, "new_password": "short"},
            {"current_password": factories.DEFAULT_PASSWORD},
            {"new_password": "changed-password-1"},
        ],
    )
    async def test_update_password_me_bad_payload(
        self, client: AsyncClient, user_headers: dict[str, str], payload: dict[str, Any]
    ) -> None:
        response = await client.patch(
            f"{USERS}/me/password", json=payload, headers=user_headers
        )
        assert_validation_error(response)

    async def test_update_password_me_anonymous(self, client: AsyncClient) -> None:
        response = await change_password(
            client, None, factories.DEFAULT_PASSWORD, "changed-password-1"
        )
        assert_unauthorized(response)


class TestDeleteUserMe:
    async def test_delete_user_me_keeps_other_users_items(
        self, client: AsyncClient, db: AsyncSession, item: Item
    ) -> None:
        other = await factories.create_user(db)
        response = await client.delete(
            f"{USERS}/me", headers=await auth_headers(db, other)
        )
        assert response.status_code == 200
        assert await reload(db, Item, item.id) is not None

    async def test_delete_user_me_anonymous(self, client: AsyncClient) -> None:
        assert_unauthorized(await client.delete(f"{USERS}/me"))


class TestRegisterUser:
    async def test_register_user_success(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        payload = {
            "email": factories.random_email(),
            "password": "signup-password",
            "full_name": "Signed Up",
        }
        response = await client.post(f"{USERS}/signup", json=payload)
        await assert_user_created(client, db, response, payload, is_superuser=False)

    async def test_register_user_ignores_is_superuser(
        self, client: AsyncClient, db: AsyncSession
    ) -> None:
        response = await client.post(
            f"{USERS}/signup",
            json={
                "email": factories.random_email(),
                "password": "signup-password",
                "is_superuser": True,
            },
        )
        assert response.status_code == 200
        assert response.json()["is_superuser"] is False
        stored = await reload(db, User, uuid.UUID(response.json()["id"]))
        assert stored.is_superuser is False

    @pytest.mark.parametrize("transform", [str.lower, str.upper, str.title])
    async def test_register_user_duplicate_email(
        self, client: AsyncClient, user: User, transform: Any
    ) -> None:
        response = await client.post(
            f"{USERS}/signup",
            json={"email": transform(user.email), "password": "signup-password"},
        )
        assert response.status_code == 400
        assert response.json() == {
            "detail": "The user with this email already exists in the system"
        }

    @pytest.mark.parametrize("payload", BAD_USER_PAYLOADS)
    async def test_register_user_bad_payload(
        self, client: AsyncClient, payload: dict[str, Any]
    ) -> None:
        response = await client.post(f"{USERS}/signup", json=payload)
        assert_validation_error(response)

    async def test_register_user_concurrent_same_email(
        self,
        committing_client: AsyncClient,
        engine: AsyncEngine,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # One client: lift its signup limit, the race is the point here.
        monkeypatch.setattr(settings, "SIGNUPS_PER_CLIENT", 100)
        email = f"signup-race-{factories.random_string(8)}@example.com"
        letters = [pos for pos, ch in enumerate(email.split("@")[0]) if ch.isalpha()]
        # Fifty spellings of one address, differing only in the case of letters.
        variants = [
            "".join(
                ch.upper() if pos in letters and (i >> letters.index(pos)) & 1 else ch
                for pos, ch in enumerate(email)
            )
            for i in range(50)
        ]
        assert len({v.lower() for v in variants}) == 1
        assert len(set(variants)) == 50

        # return_exceptions: every request finishes before the checks, and an
        # unhandled error in the app (a 500 in production) is reported, not raised.
        results = await asyncio.gather(
            *(
                committing_client.post(
                    f"{USERS}/signup",
                    json={"email": variant, "password": "signup-password"},
                )
                for variant in variants
            ),
            return_exceptions=True,
        )
        errors = [repr(r) for r in results if not isinstance(r, Response)]
        assert errors == [], "unhandled errors (500)"
        responses = [r for r in results if isinstance(r, Response)]
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [400] * 49, [
            (r.status_code, r.text) for r in responses
        ]
        for response in responses:
            if response.status_code == 400:
                assert response.json() == {
                    "detail": "The user with this email already exists in the system"
                }

        async with AsyncSession(engine) as session:
            count = await session.scalar(
                select(func.count())
                .select_from(User)
                .where(func.lower(User.email) == email.lower())
            )
        assert count == 1
        logged_in = await login(committing_client, email, "signup-password")
        assert logged_in.status_code == 200


# /me and /{id} as a superuser: both edit or delete one user, by the same rules.
ME_OR_BY_ID = [
    pytest.param("me", id="me"),
    pytest.param("by_id", id="by_id"),
]


@pytest.mark.parametrize("route", ME_OR_BY_ID)
class TestUserMeOrById:
    async def test_update_user_full_name_null(
        self, client: AsyncClient, db: AsyncSession, superuser: User, route: str
    ) -> None:
        named = await factories.create_user(db, full_name="Has A Name")
        url, headers = await user_route(db, route, named, superuser)
        response = await client.patch(url, json={"full_name": None}, headers=headers)
        assert response.status_code == 200
        assert response.json()["full_name"] is None
        assert response.json()["email"] == named.email

    @pytest.mark.parametrize("transform", [str.lower, str.upper])
    async def test_update_user_email_taken(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        superuser: User,
        route: str,
        transform: Any,
    ) -> None:
        original_email = user.email
        other = await factories.create_user(db)
        url, headers = await user_route(db, route, user, superuser)
        response = await client.patch(
            url, json={"email": transform(other.email)}, headers=headers
        )
        assert response.status_code == 409
        assert response.json() == EMAIL_TAKEN
        stored = await reload(db, User, user.id)
        assert stored.email == original_email

    async def test_update_user_own_email_case_change(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        superuser: User,
        route: str,
    ) -> None:
        recased = upper_local_part(user.email)
        url, headers = await user_route(db, route, user, superuser)
        response = await client.patch(url, json={"email": recased}, headers=headers)
        assert response.status_code == 200
        assert response.json()["email"] == recased

    @pytest.mark.parametrize(
        "payload",
        [
            {"email": None},
            {"email": "not-an-email"},
            {"full_name": "x" * 256},
            {"full_name": "a\x00b"},
        ],
    )
    async def test_update_user_bad_email_or_name(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        superuser: User,
        route: str,
        payload: dict[str, Any],
    ) -> None:
        url, headers = await user_route(db, route, user, superuser)
        response = await client.patch(url, json=payload, headers=headers)
        assert_validation_error(response)

    async def test_delete_user_with_items(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        item: Item,
        superuser: User,
        route: str,
    ) -> None:
        user_id, item_id = user.id, item.id
        user_headers = await auth_headers(db, user)
        url, headers = await user_route(db, route, user, superuser)
        response = await client.delete(url, headers=headers)
        assert response.status_code == 200
        assert response.json() == USER_DELETED
        assert await reload(db, User, user_id) is None
        assert await reload(db, Item, item_id) is None

        assert_unauthorized(await client.get(f"{USERS}/me", headers=user_headers))
        again = await client.get(
            f"{USERS}/{user_id}", headers=await auth_headers(db, superuser)
        )
        assert again.status_code == 404

    async def test_delete_user_superuser_self(
        self, client: AsyncClient, db: AsyncSession, superuser: User, route: str
    ) -> None:
        url, headers = await user_route(db, route, superuser, superuser)
        response = await client.delete(url, headers=headers)
        assert response.status_code == 403
        assert response.json() == SUPERUSER_SELF_DELETE
        assert await reload(db, User, superuser.id) is not None


class UserByIdRoute(NamedTuple):
    """One of GET, PATCH (with a valid body) and DELETE /users/{id}, and its 404
    detail."""

    method: str
    unknown_detail: str
    body: dict[str, str] | None = None

    async def send(
        self, client: AsyncClient, url: str, headers: dict[str, str] | None = None
    ) -> Response:
        return await client.request(self.method, url, json=self.body, headers=headers)


USER_BY_ID_ROUTES = [
    pytest.param(UserByIdRoute("GET", "User not found"), id="read_user_by_id"),
    pytest.param(
        UserByIdRoute(
            "PATCH",
            "The user with this id does not exist in the system",
            {"full_name": "Hacked"},
        ),
        id="update_user",
    ),
    pytest.param(UserByIdRoute("DELETE", "User not found"), id="delete_user"),
]


@pytest.mark.parametrize("route", USER_BY_ID_ROUTES)
class TestUserByIdAccess:
    async def test_user_by_id_unknown_as_superuser(
        self,
        client: AsyncClient,
        route: UserByIdRoute,
        superuser_headers: dict[str, str],
    ) -> None:
        response = await route.send(
            client, f"{USERS}/{uuid.uuid4()}", superuser_headers
        )
        assert response.status_code == 404
        assert response.json() == {"detail": route.unknown_detail}

    async def test_user_by_id_unknown_as_normal_user_forbidden(
        self, client: AsyncClient, route: UserByIdRoute, user_headers: dict[str, str]
    ) -> None:
        response = await route.send(client, f"{USERS}/{uuid.uuid4()}", user_headers)
        assert response.status_code == 403
        assert response.json() == NOT_ENOUGH_PRIVILEGES

    @pytest.mark.parametrize(
        "target_is_superuser", [False, True], ids=["user", "superuser"]
    )
    async def test_user_by_id_other_user_forbidden(
        self,
        client: AsyncClient,
        db: AsyncSession,
        route: UserByIdRoute,
        user_headers: dict[str, str],
        target_is_superuser: bool,
    ) -> None:
        other = await factories.create_user(db, is_superuser=target_is_superuser)
        response = await route.send(client, f"{USERS}/{other.id}", user_headers)
        assert response.status_code == 403
        assert response.json() == NOT_ENOUGH_PRIVILEGES
        stored = await reload(db, User, other.id)
        assert stored is not None
        assert stored.full_name is None

    async def test_user_by_id_malformed(
        self,
        client: AsyncClient,
        route: UserByIdRoute,
        superuser_headers: dict[str, str],
    ) -> None:
        response = await route.send(client, f"{USERS}/not-a-uuid", superuser_headers)
        assert_validation_error(response)

    async def test_user_by_id_anonymous(
        self, client: AsyncClient, db: AsyncSession, route: UserByIdRoute, user: User
    ) -> None:
        assert_unauthorized(await route.send(client, f"{USERS}/{user.id}"))
        stored = await reload(db, User, user.id)
        assert stored is not None
        assert stored.full_name is None


class TestReadUserById:
    async def test_read_user_by_id_self(
        self, client: AsyncClient, user: User, user_headers: dict[str, str]
    ) -> None:
        response = await client.get(f"{USERS}/{user.id}", headers=user_headers)
        assert response.status_code == 200
        assert_user_public(response.json())
        assert response.json()["id"] == str(user.id)
        assert response.json()["email"] == user.email

    async def test_read_user_by_id_superuser_reads_other(
        self, client: AsyncClient, user: User, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.get(f"{USERS}/{user.id}", headers=superuser_headers)
        assert response.status_code == 200
        assert response.json()["id"] == str(user.id)
        assert response.json()["email"] == user.email


class TestUpdateUser:
    async def test_update_user_fields(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        superuser_headers: dict[str, str],
    ) -> None:
        new_email = factories.random_email()
        response = await client.patch(
            f"{USERS}/{user.id}",
            json={"email": new_email, "full_name": "Edited", "is_superuser": True},
            headers=superuser_headers,
        )
        assert response.status_code == 200
        body = response.json()
        assert_user_public(body)
        assert body["id"] == str(user.id)
        assert body["email"] == new_email
        assert body["full_name"] == "Edited"
        assert body["is_superuser"] is True
        stored = await reload(db, User, user.id)
        assert stored.email == new_email
        assert stored.is_superuser is True

    async def test_update_user_password(
        self, client: AsyncClient, user: User, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.patch(
            f"{USERS}/{user.id}",
            json={"password": "set-by-admin-password"},
            headers=superuser_headers,
        )
        assert response.status_code == 200
        assert_user_public(response.json())
        assert (
            await login(client, user.email, "set-by-admin-password")
        ).status_code == 200
        assert (
            await login(client, user.email, factories.DEFAULT_PASSWORD)
        ).status_code == 400

    async def test_update_user_deactivate(
        self,
        client: AsyncClient,
        user: User,
        user_headers: dict[str, str],
        superuser_headers: dict[str, str],
    ) -> None:
        response = await client.patch(
            f"{USERS}/{user.id}", json={"is_active": False}, headers=superuser_headers
        )
        assert response.status_code == 200
        assert response.json()["is_active"] is False
        # Deactivation ends the user's sessions: the contract allows 401 here.
        me = await client.get(f"{USERS}/me", headers=user_headers)
        assert me.status_code == 401

    @pytest.mark.parametrize(
        "payload",
        [
            {"is_active": None},
            {"is_superuser": None},
            {"password": None},
            {"password": "short"},
        ],
    )
    async def test_update_user_bad_payload(
        self,
        client: AsyncClient,
        user: User,
        superuser_headers: dict[str, str],
        payload: dict[str, Any],
    ) -> None:
        response = await client.patch(
            f"{USERS}/{user.id}", json=payload, headers=superuser_headers
        )
        assert_validation_error(response)


class TestDeleteUser:
    async def test_delete_user_other_superuser(
        self, client: AsyncClient, db: AsyncSession, superuser_headers: dict[str, str]
    ) -> None:
        other_admin = await factories.create_user(db, is_superuser=True)
        response = await client.delete(
            f"{USERS}/{other_admin.id}", headers=superuser_headers
        )
        assert response.status_code == 200
        assert response.json() == USER_DELETED
        assert await reload(db, User, other_admin.id) is None
