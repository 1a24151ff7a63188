"""The periodic clean-ups of sessions, refresh tokens, rate-limit rows and audit
events (on PostgreSQL and SQLite alike): old rows go, live ones stay."""

from datetime import datetime, timedelta

import pytest
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud, jobs
from app.core import ratelimit
from app.core.config import settings
from app.models import (
    AuditAction,
    AuditEvent,
    AuthAttempt,
    RefreshToken,
    UserSession,
    utcnow,
)
from tests.utils import factories


async def add_session(
    db: AsyncSession, *, expires_at: datetime, revoked_at: datetime | None = None
) -> UserSession:
    user = await factories.create_user(db)
    user_session, _ = await crud.create_session(
        session=db, user=user, client_address="192.0.2.1", user_agent="tests"
    )
    user_session.expires_at = expires_at
    user_session.revoked_at = revoked_at
    db.add(user_session)
    await db.commit()
    return user_session


async def tokens_of(db: AsyncSession, user_session: UserSession) -> int:
    statement = select(RefreshToken).where(
        col(RefreshToken.session_id) == user_session.id
    )
    return len((await db.exec(statement)).all())


async def test_ended_sessions_lose_their_tokens_then_go(db: AsyncSession) -> None:
    now = utcnow()
    keep_days = timedelta(days=settings.SESSIONS_KEEP_DAYS)
    live = await add_session(db, expires_at=now + timedelta(days=1))
    expired = await add_session(db, expires_at=now - timedelta(days=1))
    revoked = await add_session(
        db, expires_at=now + timedelta(days=1), revoked_at=now - timedelta(hours=1)
    )
    long_expired = await add_session(db, expires_at=now - keep_days - timedelta(days=1))
    long_revoked = await add_session(
        db,
        expires_at=now + timedelta(days=1),
        revoked_at=now - keep_days - timedelta(days=1),
    )

    await jobs.delete_expired_rows.func(timestamp=0)

    remaining = set((await db.exec(select(UserSession.id))).all())
    assert remaining == {live.id, expired.id, revoked.id}
    assert long_expired.id not in remaining and long_revoked.id not in remaining
    # Ended sessions stay listed for the lockout, without usable tokens.
    assert await tokens_of(db, live) == 1
    assert await tokens_of(db, expired) == 0
    assert await tokens_of(db, revoked) == 0


async def test_rate_limit_rows_older_than_every_window_go(db: AsyncSession) -> None:
    now = utcnow()
    longest = timedelta(seconds=ratelimit.longest_window_seconds())
    db.add(AuthAttempt(key="login:account:old", attempted_at=now - longest))
    db.add(AuthAttempt(key="login:account:older", attempted_at=now - 2 * longest))
    db.add(AuthAttempt(key="login:account:live", attempted_at=now - longest / 2))
    db.add(AuthAttempt(key="email:new", attempted_at=now))
    await db.commit()

    await jobs.delete_expired_rows.func(timestamp=0)

    keys = set((await db.exec(select(AuthAttempt.key))).all())
    assert keys == {"login:account:live", "email:new"}


async def test_audit_events_older_than_the_retention_go(
    db: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "AUDIT_RETENTION_DAYS", 30)
    now = utcnow()
    ages = {"new": 0, "29 days": 29, "31 days": 31, "a year": 365}
    for label, days in ages.items():
        db.add(
            AuditEvent(
                action=AuditAction.logout,
                created_at=now - timedelta(days=days),
                details={"label": label},
            )
        )
    await db.commit()

    await jobs.delete_old_audit_events.func(timestamp=0)

    kept = (await db.exec(select(AuditEvent.details))).all()
    assert sorted(details["label"] for details in kept) == ["29 days", "new"]
