"""Roles: superadmin does everything, admin manages ordinary users and all items
(never staff), user only their own data; is_superuser always agrees with role."""

import asyncio
import uuid
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, delete, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud
from app.models import Item, Role, User, UserUpdate
from tests.utils import factories
from tests.utils.api import API, auth_headers

USERS = f"{API}/users"
ONLY_SUPERADMIN = {
    "detail": "Only a superadmin can create, change or delete admins and superadmins"
}
NOT_ENOUGH_PRIVILEGES = {"detail": "The user doesn't have enough privileges"}
LAST_SUPERADMIN = {
    "detail": "At least one active superadmin must remain: promote another user first"
}


def new_user(**fields: Any) -> dict[str, Any]:
    return {"email": factories.random_email(), "password": "a-good-password", **fields}


async def stored_role(db: AsyncSession, user: User) -> Role:
    db.expunge_all()
    reloaded = await db.get(User, user.id)
    assert reloaded is not None
    return reloaded.role


class TestMassAssignment:
    @pytest.mark.parametrize(
        "extra",
        [
            {"role": "superadmin"},
            {"is_superuser": True},
            {"role": "admin", "is_active": False},
            {"email_verified_at": "2026-01-01T00:00:00Z", "id": "not-yours"},
        ],
    )
    async def test_signup_ignores_privileged_fields(
        self, client: AsyncClient, extra: dict[str, Any]
    ) -> None:
        response = await client.post(f"{USERS}/signup", json=new_user(**extra))
        assert response.status_code == 200
        body = response.json()
        assert body["role"] == "user"
        assert body["is_superuser"] is False
        assert body["is_active"] is True
        assert body["email_verified_at"] is None

    @pytest.mark.parametrize(
        "extra", [{"role": "superadmin"}, {"is_superuser": True}, {"role": "admin"}]
    )
    async def test_update_me_cannot_change_role(
        self,
        client: AsyncClient,
        db: AsyncSession,
        admin: User,
        admin_headers: dict[str, str],
        extra: dict[str, Any],
    ) -> None:
        response = await client.patch(
            f"{USERS}/me", headers=admin_headers, json={"full_name": "Me", **extra}
        )
        assert response.status_code == 200
        assert response.json()["role"] == "admin"
        assert await stored_role(db, admin) == Role.admin


class TestAdmin:
    async def test_admin_cannot_promote_itself(
        self,
        client: AsyncClient,
        db: AsyncSession,
        admin: User,
        admin_headers: dict[str, str],
    ) -> None:
        for change in ({"role": "superadmin"}, {"is_superuser": True}):
            response = await client.patch(
                f"{USERS}/{admin.id}", headers=admin_headers, json=change
            )
            assert response.status_code == 403
            assert response.json() == ONLY_SUPERADMIN
        assert await stored_role(db, admin) == Role.admin

    @pytest.mark.parametrize(
        "fields",
        [{"role": "admin"}, {"role": "superadmin"}, {"is_superuser": True}],
    )
    async def test_admin_cannot_create_staff(
        self, client: AsyncClient, admin_headers: dict[str, str], fields: dict[str, Any]
    ) -> None:
        response = await client.post(
            f"{USERS}/", headers=admin_headers, json=new_user(**fields)
        )
        assert response.status_code == 403
        assert response.json() == ONLY_SUPERADMIN

    async def test_admin_creates_and_manages_ordinary_users(
        self, client: AsyncClient, admin_headers: dict[str, str]
    ) -> None:
        created = await client.post(f"{USERS}/", headers=admin_headers, json=new_user())
        assert created.status_code == 200
        assert created.json()["role"] == "user"
        user_id = created.json()["id"]

        renamed = await client.patch(
            f"{USERS}/{user_id}", headers=admin_headers, json={"full_name": "Renamed"}
        )
        assert renamed.json()["full_name"] == "Renamed"
        listed = await client.get(f"{USERS}/", headers=admin_headers)
        assert user_id in {row["id"] for row in listed.json()["data"]}
        deleted = await client.delete(f"{USERS}/{user_id}", headers=admin_headers)
        assert deleted.json() == {"message": "User deleted successfully"}

    async def test_admin_cannot_promote_a_user(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        admin_headers: dict[str, str],
    ) -> None:
        response = await client.patch(
            f"{USERS}/{user.id}", headers=admin_headers, json={"role": "admin"}
        )
        assert response.status_code == 403
        assert await stored_role(db, user) == Role.user

    @pytest.mark.parametrize("target_role", [Role.admin, Role.superadmin])
    async def test_admin_cannot_touch_staff(
        self,
        client: AsyncClient,
        db: AsyncSession,
        admin_headers: dict[str, str],
        target_role: Role,
    ) -> None:
        target = await factories.create_user(db, role=target_role)
        url = f"{USERS}/{target.id}"

        patched = await client.patch(
            url, headers=admin_headers, json={"role": "user", "is_active": False}
        )
        assert patched.status_code == 403
        assert patched.json() == ONLY_SUPERADMIN
        deleted = await client.delete(url, headers=admin_headers)
        assert deleted.status_code == 403
        assert deleted.json() == ONLY_SUPERADMIN
        assert await stored_role(db, target) == target_role
        # Reading is allowed: admins see the whole user list.
        assert (await client.get(url, headers=admin_headers)).status_code == 200

    async def test_admin_manages_every_item(
        self, client: AsyncClient, item: Item, admin_headers: dict[str, str]
    ) -> None:
        listed = await client.get(f"{API}/items/", headers=admin_headers)
        assert str(item.id) in {row["id"] for row in listed.json()["data"]}
        url = f"{API}/items/{item.id}"
        updated = await client.put(url, headers=admin_headers, json={"title": "Admin"})
        assert updated.json()["title"] == "Admin"
        deleted = await client.delete(url, headers=admin_headers)
        assert deleted.status_code == 200

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/utils/test-email/?email_to=someone@example.com"),
            ("POST", "/password-recovery-html-content/someone@example.com"),
        ],
    )
    async def test_superadmin_only_routes(
        self,
        client: AsyncClient,
        admin_headers: dict[str, str],
        method: str,
        path: str,
    ) -> None:
        response = await client.request(method, f"{API}{path}", headers=admin_headers)
        assert response.status_code == 403
        assert response.json() == NOT_ENOUGH_PRIVILEGES


class TestSuperadmin:
    @pytest.mark.parametrize(
        ("fields", "role", "is_superuser"),
        [
            ({"role": "admin"}, "admin", False),
            ({"is_superuser": True}, "superadmin", True),
            ({"role": "superadmin", "is_superuser": True}, "superadmin", True),
            ({}, "user", False),
        ],
    )
    async def test_create_any_role(
        self,
        client: AsyncClient,
        superuser_headers: dict[str, str],
        fields: dict[str, Any],
        role: str,
        is_superuser: bool,
    ) -> None:
        response = await client.post(
            f"{USERS}/", headers=superuser_headers, json=new_user(**fields)
        )
        assert response.status_code == 200
        assert (response.json()["role"], response.json()["is_superuser"]) == (
            role,
            is_superuser,
        )

    async def test_role_and_is_superuser_must_agree(
        self, client: AsyncClient, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.post(
            f"{USERS}/",
            headers=superuser_headers,
            json=new_user(role="admin", is_superuser=True),
        )
        assert response.status_code == 422

    async def test_promote_and_demote(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        superuser_headers: dict[str, str],
    ) -> None:
        url = f"{USERS}/{user.id}"
        steps = [
            ({"is_superuser": True}, Role.superadmin),
            ({"is_superuser": False}, Role.user),
            ({"role": "admin"}, Role.admin),
            ({"is_superuser": False}, Role.admin),  # not a superadmin: stays admin
            ({"role": "user"}, Role.user),
        ]
        for change, expected in steps:
            response = await client.patch(url, headers=superuser_headers, json=change)
            assert response.status_code == 200
            assert response.json()["role"] == expected.value
            assert response.json()["is_superuser"] is (expected == Role.superadmin)
            assert await stored_role(db, user) == expected

    async def test_superadmin_deletes_an_admin(
        self, client: AsyncClient, admin: User, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.delete(f"{USERS}/{admin.id}", headers=superuser_headers)
        assert response.status_code == 200


class TestLastSuperadmin:
    """At least one active superadmin always remains, by any route."""

    @pytest.mark.parametrize(
        "change",
        [
            {"role": "user"},
            {"role": "admin"},
            {"is_superuser": False},
            {"is_active": False},
        ],
    )
    async def test_the_last_superadmin_cannot_step_down(
        self,
        client: AsyncClient,
        db: AsyncSession,
        superuser: User,
        superuser_headers: dict[str, str],
        change: dict[str, Any],
    ) -> None:
        url = f"{USERS}/{superuser.id}"
        response = await client.patch(url, headers=superuser_headers, json=change)
        assert response.status_code == 409
        assert response.json() == LAST_SUPERADMIN
        assert await stored_role(db, superuser) == Role.superadmin
        # The probe's path: demoted, then deleted as an ordinary user.
        deleted = await client.delete(f"{USERS}/me", headers=superuser_headers)
        assert deleted.status_code == 403

    async def test_with_another_superadmin_it_can(
        self,
        client: AsyncClient,
        db: AsyncSession,
        superuser: User,
        superuser_headers: dict[str, str],
    ) -> None:
        other = await factories.create_user(db, role=Role.superadmin)
        url = f"{USERS}/{superuser.id}"
        response = await client.patch(
            url, headers=superuser_headers, json={"role": "user"}
        )
        assert response.status_code == 200
        assert await stored_role(db, superuser) == Role.user
        # Now the other is the last one.
        other_headers = await auth_headers(db, other)
        response = await client.patch(
            f"{USERS}/{other.id}", headers=other_headers, json={"is_active": False}
        )
        assert response.status_code == 409

    async def test_an_inactive_superadmin_does_not_count(
        self,
        client: AsyncClient,
        db: AsyncSession,
        superuser: User,
        superuser_headers: dict[str, str],
    ) -> None:
        await factories.create_user(db, role=Role.superadmin, is_active=False)
        url = f"{USERS}/{superuser.id}"
        response = await client.patch(
            url, headers=superuser_headers, json={"role": "user"}
        )
        assert response.status_code == 409

    async def test_crud_refuses_to_delete_the_last_one(
        self, db: AsyncSession, superuser: User
    ) -> None:
        with pytest.raises(crud.LastSuperadminError):
            await crud.delete_user(session=db, user=superuser)

    async def test_two_superadmins_demoting_each_other_at_once_leave_one(
        self, committing_client: AsyncClient, engine: AsyncEngine
    ) -> None:
        sessions = async_sessionmaker(
            engine, class_=AsyncSession, expire_on_commit=False
        )
        async with sessions() as session:
            first = await factories.create_user(session, role=Role.superadmin)
            second = await factories.create_user(session, role=Role.superadmin)
            first_headers = await auth_headers(session, first)
            second_headers = await auth_headers(session, second)

        results = await asyncio.gather(
            committing_client.patch(
                f"{USERS}/{second.id}", headers=first_headers, json={"role": "user"}
            ),
            committing_client.patch(
                f"{USERS}/{first.id}", headers=second_headers, json={"role": "user"}
            ),
        )

        # The loser sees the winner's change: 409 when it runs beside it (the lock),
        # 403 when it starts after (it is no superadmin any more).
        codes = sorted(result.status_code for result in results)
        assert codes in ([200, 403], [200, 409])
        async with sessions() as session:
            active = await session.exec(
                select(func.count()).where(
                    col(User.role) == Role.superadmin, col(User.is_active)
                )
            )
            assert active.one() == 1


async def test_concurrent_demotions_in_crud_leave_one_superadmin(
    engine: AsyncEngine,
) -> None:
    """Two superadmins demoting each other in two transactions at once: the lock
    makes the second see the first's change."""
    sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    async with sessions() as setup:
        first = await factories.create_user(setup, role=Role.superadmin)
        second = await factories.create_user(setup, role=Role.superadmin)

    # On PostgreSQL both transactions read before either writes. SQLite runs one
    # write transaction at a time (BEGIN IMMEDIATE): the second starts after the
    # first's commit, and waiting for it there would deadlock.
    both_read = asyncio.Barrier(2 if engine.dialect.name == "postgresql" else 1)

    async def demote(user_id: uuid.UUID) -> str:
        async with sessions() as session:
            user = await session.get(User, user_id)
            assert user is not None
            await both_read.wait()
            try:
                await crud.update_user(
                    session=session, user=user, user_in=UserUpdate(role=Role.user)
                )
            except crud.LastSuperadminError:
                return "refused"
            return "demoted"

    try:
        outcomes = await asyncio.gather(demote(first.id), demote(second.id))
        assert sorted(outcomes) == ["demoted", "refused"]
    finally:
        async with sessions() as cleanup:
            await cleanup.exec(
                delete(User).where(col(User.id).in_([first.id, second.id]))
            )
            await cleanup.commit()


class TestOrdinaryUser:
    async def test_user_manages_nobody(
        self, client: AsyncClient, db: AsyncSession, user_headers: dict[str, str]
    ) -> None:
        other = await factories.create_user(db)
        requests = [
            ("GET", f"{USERS}/", None),
            ("POST", f"{USERS}/", new_user()),
            ("GET", f"{USERS}/{other.id}", None),
            ("PATCH", f"{USERS}/{other.id}", {"full_name": "x"}),
            ("DELETE", f"{USERS}/{other.id}", None),
        ]
        for method, url, body in requests:
            response = await client.request(
                method, url, headers=user_headers, json=body
            )
            assert response.status_code == 403, (method, url)
            assert response.json() == NOT_ENOUGH_PRIVILEGES

    async def test_user_sees_only_own_items(
        self, client: AsyncClient, db: AsyncSession, item: Item
    ) -> None:
        other = await factories.create_user(db)
        headers = await auth_headers(db, other)
        listed = await client.get(f"{API}/items/", headers=headers)
        assert listed.json()["count"] == 0
        response = await client.get(f"{API}/items/{item.id}", headers=headers)
        assert response.status_code == 403
