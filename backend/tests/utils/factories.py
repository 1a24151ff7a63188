"""Test data: plain functions with random defaults and keyword overrides."""

import secrets
from functools import cache

from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.security import password_hash
from app.models import Item, Role, User, utcnow

DEFAULT_PASSWORD = "correct-horse-battery"


@cache
def default_password_hash() -> str:
    # Hashing costs ~0.1 s; every factory user shares one hash of DEFAULT_PASSWORD.
    return password_hash.hash(DEFAULT_PASSWORD)


def random_email() -> str:
    return f"user-{secrets.token_hex(6)}@example.com"


def random_string(length: int = 16) -> str:
    return secrets.token_hex(length // 2)


async def create_user(
    session: AsyncSession,
    *,
    email: str | None = None,
    password: str | None = None,
    full_name: str | None = None,
    is_superuser: bool = False,
    role: Role = Role.user,
    is_active: bool = True,
    verified: bool = True,
) -> User:
    hashed = password_hash.hash(password) if password else default_password_hash()
    user = User(
        email=email or random_email(),
        hashed_password=hashed,
        full_name=full_name,
        role=Role.superadmin if is_superuser else role,
        is_active=is_active,
        email_verified_at=utcnow() if verified else None,
    )
    session.add(user)
    await session.commit()
    return user


async def create_item(
    session: AsyncSession,
    *,
    owner: User,
    title: str | None = None,
    description: str | None = None,
) -> Item:
    item = Item(
        title=title or random_string(), description=description, owner_id=owner.id
    )
    session.add(item)
    await session.commit()
    return item
