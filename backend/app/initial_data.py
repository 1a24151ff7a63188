"""Create the first superuser from FIRST_SUPERUSER / FIRST_SUPERUSER_PASSWORD (idempotent)."""

import asyncio
import logging

from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud
from app.core.config import settings
from app.core.db import engine, session_factory
from app.models import User, UserCreate

logger = logging.getLogger(__name__)


async def ensure_superuser(session: AsyncSession, *, email: str, password: str) -> User:
    """The user with this email, created as a superuser when missing."""
    user = await crud.get_user_by_email(session=session, email=email)
    if user is not None:
        return user
    user_in = UserCreate(email=email, password=password, is_superuser=True)
    try:
        return await crud.create_user(
            session=session, user_create=user_in, verified=True
        )
    except crud.EmailAlreadyExistsError:  # another replica created it meanwhile
        existing = await crud.get_user_by_email(session=session, email=email)
        assert existing is not None
        return existing


async def create_superuser(*, email: str, password: str) -> User:
    async with session_factory() as session:
        user = await ensure_superuser(session, email=email, password=password)
    await engine.dispose()
    return user


async def main() -> None:
    user = await create_superuser(
        email=settings.FIRST_SUPERUSER, password=settings.FIRST_SUPERUSER_PASSWORD
    )
    logger.info("First superuser: %s", user.email)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
