from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.initial_data import ensure_superuser
from app.models import User


async def test_ensure_superuser_is_idempotent(db: AsyncSession) -> None:
    first = await ensure_superuser(db, email="root@example.com", password="password123")
    again = await ensure_superuser(
        db, email="ROOT@example.com", password="other-password"
    )
    assert first.is_superuser
    assert again.id == first.id
    assert len((await db.exec(select(User))).all()) == 1
