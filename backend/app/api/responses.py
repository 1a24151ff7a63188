"""The error responses routes document (`responses=` of their decorators), built
from the exact `detail` texts, so that the OpenAPI document lists every status
code an operation can answer with (the fuzz tests hold the server to it)."""

from collections.abc import Iterable
from typing import Any, NamedTuple

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """A handled error: FastAPI's `{"detail": "..."}`."""

    detail: str = Field(examples=["Item not found"])


class Error(NamedTuple):
    status_code: int
    detail: str  # the exact text, or its pattern with the example's values
    example: str | None = None


Responses = dict[int | str, dict[str, Any]]

WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "`Bearer`: the scheme to authenticate with.",
        "required": True,
        "schema": {"type": "string"},
    }
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until the next attempt is allowed.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
HEADERS = {401: WWW_AUTHENTICATE, 429: RETRY_AFTER}

# Raised by the framework and the shared dependencies (app/api/deps.py, app/main.py).
NOT_AUTHENTICATED = Error(401, "Not authenticated")
BAD_CREDENTIALS = Error(401, "Could not validate credentials")
INACTIVE_USER = Error(400, "Inactive user")
NOT_ENOUGH_PRIVILEGES = Error(403, "The user doesn't have enough privileges")
ONLY_SUPERADMIN = Error(
    403, "Only a superadmin can create, change or delete admins and superadmins"
)
UNPARSABLE_BODY = Error(400, "There was an error parsing the body")
DATABASE_UNAVAILABLE = Error(503, "Database unavailable, try again later")
TOO_MANY_ATTEMPTS = Error(
    429,
    "Too many attempts: try again in <Retry-After> seconds",
    "Too many attempts: try again in 60 seconds",
)
EMAIL_NOT_VERIFIED = Error(
    403, "Email not verified: use the link we sent, or ask for a new one"
)

# Groups for the common cases.
DATABASE = (DATABASE_UNAVAILABLE,)
# A JSON or form body that is not UTF-8 fails before validation.
BODY = (UNPARSABLE_BODY,)
# Any route behind CurrentUser: a missing, invalid or ended token, or an
# inactive account (its sessions end on deactivation, so that one is rare).
AUTHENTICATED = (NOT_AUTHENTICATED, BAD_CREDENTIALS, INACTIVE_USER, *DATABASE)
STAFF = (*AUTHENTICATED, NOT_ENOUGH_PRIVILEGES)
SUPERUSER = STAFF


def document(*groups: Error | Iterable[Error], json_only: bool = False) -> Responses:
    """`responses=` for these errors: one entry per status code, its description
    the `detail` texts it may carry. `json_only` for routes whose own response is
    not JSON (their errors still are)."""
    errors: list[Error] = []
    for group in groups:
        errors.extend([group] if isinstance(group, Error) else group)
    by_status: dict[int, list[Error]] = {}
    for error in errors:
        same_status = by_status.setdefault(error.status_code, [])
        if error not in same_status:
            same_status.append(error)
    responses: Responses = {}
    for status_code, same_status in sorted(by_status.items()):
        examples = {
            f"example-{number}": {
                "summary": error.detail,
                "value": {"detail": error.example or error.detail},
            }
            for number, error in enumerate(same_status, start=1)
        }
        description = "; ".join(error.detail for error in same_status)
        response: dict[str, Any] = {"description": description}
        if json_only:
            schema = ErrorResponse.model_json_schema()
            response["content"] = {
                "application/json": {"schema": schema, "examples": examples}
            }
        else:
            response["model"] = ErrorResponse
            response["content"] = {"application/json": {"examples": examples}}
        if status_code in HEADERS:
            response["headers"] = HEADERS[status_code]
        responses[status_code] = response
    return responses
