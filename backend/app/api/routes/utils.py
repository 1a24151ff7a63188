from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, status
from pydantic import EmailStr

from app import emails
from app.api import errors
from app.api.deps import CurrentSuperuser, SessionDep
from app.api.errors import DATABASE, SUPERUSER, document
from app.core.config import settings
from app.core.db import database_ready
from app.models import Message

# Included with the current-user dependency (app/api/main.py); `public_router`
# holds what works without an access token.
router = APIRouter(prefix="/utils", tags=["utils"])
public_router = APIRouter(prefix="/utils", tags=["utils"])


@router.post(
    "/test-email/",
    status_code=status.HTTP_201_CREATED,
    responses=document(SUPERUSER, errors.EmailNotConfigured),
)
async def test_email(
    email_to: Annotated[EmailStr, Query(max_length=255)],
    _superuser: CurrentSuperuser,
    background_tasks: BackgroundTasks,
) -> Message:
    """Send a test email (superuser only); delivery happens after the answer."""
    if not settings.emails_enabled:
        raise errors.EmailNotConfigured()
    background_tasks.add_task(emails.send_email, emails.test_email(email_to))
    return Message(message="Test email sent")


@public_router.get("/health-check/")
async def health_check() -> bool:
    """Liveness: the process answers (the database is not touched)."""
    return True


@public_router.get("/ready/", responses=document(errors.DatabaseNotReady, DATABASE))
async def readiness(session: SessionDep) -> bool:
    """Readiness: the database answers (503 while it does not)."""
    if not await database_ready(session):
        raise errors.DatabaseNotReady()
    return True
