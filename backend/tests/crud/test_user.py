from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud
from app.core.pagination import Page
from app.models import Item, User, UserCreate, UserUpdate, UserUpdateMe
from tests.utils import factories


async def test_create_user_stores_argon2_hash(db: AsyncSession) -> None:
    user = await crud.create_user(
        session=db,
        user_create=UserCreate(email="New@Example.com", password="password123"),
    )
    assert (
        user.email == "New@example.com"
    )  # the domain is normalised, the local part kept
    assert user.hashed_password.startswith("$argon2id$")
    assert user.created_at.tzinfo is not None


async def test_create_user_refuses_email_in_other_case(db: AsyncSession) -> None:
    await factories.create_user(db, email="taken@example.com")
    with pytest.raises(crud.EmailAlreadyExistsError):
        await crud.create_user(
            session=db,
            user_create=UserCreate(email="TAKEN@example.com", password="password123"),
        )


async def test_get_user_by_email_ignores_case(db: AsyncSession) -> None:
    user = await factories.create_user(db, email="Mixed.Case@Example.com")
    found = await crud.get_user_by_email(session=db, email="mixed.case@EXAMPLE.com")
    assert found is not None and found.id == user.id


class TestAuthenticate:
    async def test_right_password(self, db: AsyncSession, user: User) -> None:
        authenticated = await crud.authenticate(
            session=db, email=user.email.upper(), password=factories.DEFAULT_PASSWORD
        )
        assert authenticated is not None and authenticated.id == user.id

    async def test_wrong_password(self, db: AsyncSession, user: User) -> None:
        assert (
            await crud.authenticate(
                session=db, email=user.email, password="wrong-password"
            )
            is None
        )

    async def test_unreadable_stored_hash_fails_closed(self, db: AsyncSession) -> None:
        user = await factories.create_user(db)
        user.hashed_password = "imported-from-elsewhere"
        await db.commit()
        authenticated = await crud.authenticate(
            session=db, email=user.email, password="whatever1"
        )
        assert authenticated is None

    async def test_unknown_email(self, db: AsyncSession) -> None:
        assert (
            await crud.authenticate(
                session=db, email="nobody@example.com", password="whatever1"
            )
            is None
        )


class TestUpdateUser:
    async def test_password_is_hashed(self, db: AsyncSession, user: User) -> None:
        old_hash = user.hashed_password
        updated = await crud.update_user(
            session=db, user=user, user_in=UserUpdate(password="new-password")
        )
        assert updated.hashed_password != old_hash
        assert await crud.authenticate(
            session=db, email=user.email, password="new-password"
        )

    async def test_updated_at_moves_forward(self, db: AsyncSession, user: User) -> None:
        user.updated_at = datetime.now(UTC) - timedelta(days=1)
        db.add(user)
        await db.commit()
        before = user.updated_at
        updated = await crud.update_user(
            session=db, user=user, user_in=UserUpdateMe(full_name="New Name")
        )
        assert updated.full_name == "New Name"
        assert updated.updated_at > before

    async def test_email_of_another_user_refused(
        self, db: AsyncSession, user: User
    ) -> None:
        other = await factories.create_user(db)
        with pytest.raises(crud.EmailAlreadyExistsError):
            await crud.update_user(
                session=db, user=user, user_in=UserUpdateMe(email=other.email.upper())
            )

    async def test_own_email_in_other_case_allowed(
        self, db: AsyncSession, user: User
    ) -> None:
        local_part, domain = user.email.split("@")
        new_email = f"{local_part.upper()}@{domain}"
        updated = await crud.update_user(
            session=db, user=user, user_in=UserUpdateMe(email=new_email)
        )
        assert updated.email == new_email

    async def test_unset_fields_untouched(self, db: AsyncSession) -> None:
        user = await factories.create_user(db, full_name="Kept")
        updated = await crud.update_user(
            session=db, user=user, user_in=UserUpdate(is_active=False)
        )
        assert (updated.full_name, updated.is_active) == ("Kept", False)


async def test_delete_user_deletes_their_items(
    db: AsyncSession, user: User, item: Item
) -> None:
    await crud.delete_user(session=db, user=user)
    db.expunge_all()
    assert await db.get(User, user.id) is None
    assert await db.get(Item, item.id) is None


async def test_list_users_newest_first_with_total(db: AsyncSession) -> None:
    now = datetime.now(UTC)
    users = [await factories.create_user(db) for _ in range(3)]
    for age, user in enumerate(users):
        user.created_at = now - timedelta(minutes=age)
        db.add(user)
    await db.commit()
    page, count = await crud.list_users(session=db, page=Page(skip=1, limit=1))
    assert count == 3
    assert [u.id for u in page] == [users[1].id]
