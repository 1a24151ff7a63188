import uuid
from typing import Annotated, NamedTuple

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime

from app import crud
from app.api.deps import CurrentStaff, PageDep, SessionDep
from app.api.errors import STAFF, document
from app.core.pagination import page_of
from app.models import AuditAction, AuditEventsPublic, Role

# Included with the current-user dependency (app/api/main.py).
router = APIRouter(prefix="/audit-events", tags=["audit"])


class AuditFilters(NamedTuple):
    action: AuditAction | None
    user_id: uuid.UUID | None
    since: AwareDatetime | None
    until: AwareDatetime | None


async def audit_filters(
    action: AuditAction | None = None,
    user_id: Annotated[
        uuid.UUID | None, Query(description="Events by or about this user.")
    ] = None,
    since: Annotated[
        AwareDatetime | None,
        Query(description="From this time on (inclusive), with its UTC offset."),
    ] = None,
    until: Annotated[
        AwareDatetime | None,
        Query(description="Before this time (exclusive), with its UTC offset."),
    ] = None,
) -> AuditFilters:
    if since is not None and until is not None and until <= since:
        error = {"type": "value_error", "loc": ("query", "until"), "input": until}
        raise RequestValidationError([{**error, "msg": "until must be after since"}])
    return AuditFilters(action, user_id, since, until)


AuditFiltersDep = Annotated[AuditFilters, Depends(audit_filters)]


@router.get("/", response_model=AuditEventsPublic, responses=document(STAFF))
async def read_audit_events(
    session: SessionDep, staff: CurrentStaff, page: PageDep, filters: AuditFiltersDep
) -> AuditEventsPublic:
    """List security events, newest first (superadmins: all; admins: those about
    ordinary users)."""
    events, count = await crud.list_audit_events(
        session=session,
        page=page,
        action=filters.action,
        user_id=filters.user_id,
        since=filters.since,
        until=filters.until,
        target_role=None if staff.is_superuser else Role.user,
    )
    return page_of(AuditEventsPublic, events, count, page)
