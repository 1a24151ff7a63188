import uuid
from datetime import datetime
from typing import NamedTuple, TypeVar

from sqlalchemy import tuple_
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from app.core.security import dummy_hash, hash_password, verify_password
from app.models import (
    Item,
    ItemCreate,
    ItemUpdate,
    User,
    UserCreate,
    UserUpdate,
    UserUpdateMe,
)

T = TypeVar("T", Item, User)


class EmailAlreadyExistsError(Exception):
    pass


class Position(NamedTuple):
    """Where a list page ends, for keyset pagination: lists sort newest first."""

    created_at: datetime
    id: uuid.UUID


class Page(NamedTuple):
    skip: int
    limit: int
    after: Position | None = None


async def _paginate(
    session: AsyncSession, statement: SelectOfScalar[T], *, model: type[T], page: Page
) -> tuple[list[T], int]:
    """One page of `statement`, newest first, plus the total it matches (cursor or not)."""
    count = await session.scalar(select(func.count()).select_from(statement.subquery()))
    if page.after is not None:
        # A row comparison the (…, created_at, id) indexes answer without a scan.
        statement = statement.where(
            tuple_(col(model.created_at), col(model.id)) < page.after
        )
    statement = statement.order_by(col(model.created_at).desc(), col(model.id).desc())
    rows = await session.exec(statement.offset(page.skip).limit(page.limit))
    return list(rows.all()), count or 0


async def _commit_user(session: AsyncSession, user: User) -> User:
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:
        # The lower(email) unique index settles races the friendly check cannot.
        await session.rollback()
        raise EmailAlreadyExistsError(user.email) from exc
    return user


# Users


async def get_user(*, session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_email(*, session: AsyncSession, email: str) -> User | None:
    statement = select(User).where(func.lower(User.email) == email.lower())
    return (await session.exec(statement)).first()


async def list_users(*, session: AsyncSession, page: Page) -> tuple[list[User], int]:
    return await _paginate(session, select(User), model=User, page=page)


async def create_user(*, session: AsyncSession, user_create: UserCreate) -> User:
    """Raises EmailAlreadyExistsError when the email is taken, whatever its case."""
    if await get_user_by_email(session=session, email=user_create.email):
        raise EmailAlreadyExistsError(user_create.email)
    hashed_password = await hash_password(user_create.password)
    user = User.model_validate(user_create, update={"hashed_password": hashed_password})
    return await _commit_user(session, user)


async def update_user(
    *, session: AsyncSession, user: User, user_in: UserUpdate | UserUpdateMe
) -> User:
    """Raises EmailAlreadyExistsError when the new email belongs to another user."""
    data = user_in.model_dump(exclude_unset=True)
    if "email" in data:
        owner = await get_user_by_email(session=session, email=data["email"])
        if owner and owner.id != user.id:
            raise EmailAlreadyExistsError(data["email"])
    if "password" in data:
        data["hashed_password"] = await hash_password(data.pop("password"))
    user.sqlmodel_update(data)
    return await _commit_user(session, user)


async def update_password(
    *, session: AsyncSession, user: User, new_password: str
) -> User:
    user.hashed_password = await hash_password(new_password)
    return await _commit_user(session, user)


async def authenticate(
    *, session: AsyncSession, email: str, password: str
) -> User | None:
    """The user with these credentials, or None. Upgrades an outdated password hash."""
    user = await get_user_by_email(session=session, email=email)
    if user is None:
        # Spend the same time as a real check so the answer time does not
        # reveal whether the email is registered.
        await verify_password(password, dummy_hash())
        return None
    verified, new_hash = await verify_password(password, user.hashed_password)
    if not verified:
        return None
    if new_hash:
        user.hashed_password = new_hash
        await _commit_user(session, user)
    return user


async def delete_user(*, session: AsyncSession, user: User) -> None:
    """Deletes the user; the database deletes their items (ON DELETE CASCADE)."""
    await session.delete(user)
    await session.commit()


# Items


async def get_item(*, session: AsyncSession, item_id: uuid.UUID) -> Item | None:
    return await session.get(Item, item_id)


async def list_items(
    *, session: AsyncSession, owner_id: uuid.UUID | None, page: Page
) -> tuple[list[Item], int]:
    """Items of `owner_id`, or of everyone when it is None; newest first."""
    statement = select(Item)
    if owner_id is not None:
        statement = statement.where(Item.owner_id == owner_id)
    return await _paginate(session, statement, model=Item, page=page)


async def create_item(
    *, session: AsyncSession, item_in: ItemCreate, owner_id: uuid.UUID
) -> Item:
    item = Item.model_validate(item_in, update={"owner_id": owner_id})
    session.add(item)
    await session.commit()
    return item


async def update_item(
    *, session: AsyncSession, item: Item, item_in: ItemUpdate
) -> Item:
    item.sqlmodel_update(item_in.model_dump(exclude_unset=True))
    session.add(item)
    await session.commit()
    return item


async def delete_item(*, session: AsyncSession, item: Item) -> None:
    await session.delete(item)
    await session.commit()
