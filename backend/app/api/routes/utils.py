from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, status
from pydantic import EmailStr

from app import emails
from app.api.deps import CurrentSuperuser, SessionDep
from app.api.responses import DATABASE, SUPERUSER, Error, document
from app.core.config import settings
from app.core.db import database_ready
from app.models import Message

router = APIRouter(prefix="/utils", tags=["utils"])


@router.post(
    "/test-email/",
    status_code=status.HTTP_201_CREATED,
    responses=document(
        SUPERUSER,
        Error(503, "Email is not configured: set SMTP_HOST and EMAILS_FROM_EMAIL"),
    ),
)
async def test_email(
    email_to: Annotated[EmailStr, Query(max_length=255)],
    _superuser: CurrentSuperuser,
    background_tasks: BackgroundTasks,
) -> Message:
    """Send a test email (superuser only); delivery happens after the answer."""
    if not settings.emails_enabled:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="Email is not configured: set SMTP_HOST and EMAILS_FROM_EMAIL",
        )
    background_tasks.add_task(emails.send_email, emails.test_email(email_to))
    return Message(message="Test email sent")


@router.get("/health-check/")
async def health_check() -> bool:
    """Liveness: the process answers (the database is not touched)."""
    return True


@router.get(
    "/ready/",
    responses=document(Error(503, "Database unavailable"), DATABASE),
)
async def readiness(session: SessionDep) -> bool:
    """Readiness: the database answers (503 while it does not)."""
    if not await database_ready(session):
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="Database unavailable",
        )
    return True
