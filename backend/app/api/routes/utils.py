from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import EmailStr

from app import jobs
from app.api import errors
from app.api.deps import CurrentStaff, CurrentSuperuser, SessionDep
from app.api.errors import DATABASE, STAFF, SUPERUSER, document
from app.core.config import settings
from app.core.db import database_ready
from app.models import JobCounts, Message

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
    session: SessionDep,
    _superuser: CurrentSuperuser,
) -> Message:
    """Send a test email (superuser only); delivery happens after the answer."""
    if not settings.emails_enabled:
        raise errors.EmailNotConfigured()
    await jobs.send_soon(session, jobs.send_test_email, email=email_to)
    return Message(message="Test email sent")


@router.get("/jobs/", responses=document(STAFF, DATABASE))
async def read_job_counts(session: SessionDep, _staff: CurrentStaff) -> JobCounts:
    """Count background jobs by status (admins and superadmins): failed ones
    wait for `manage.py jobs retry`. All zero without PostgreSQL (jobs then run
    in the API's process)."""
    counts = await jobs.count_jobs(session)
    return JobCounts.model_validate({**counts, "in_process": jobs.in_process})


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
