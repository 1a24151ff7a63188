"""Every error the API answers with, each defined once: raised as
`raise ItemNotFound()`, documented as `responses=document(ItemNotFound)`, so that
the OpenAPI document lists every status code an operation can answer with (the
fuzz tests hold the server to it); and the handlers of the errors that start
outside the API layer (rate limits, the database, validation)."""

import logging
import math
from collections.abc import Iterable
from typing import Any, ClassVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.core import metrics, ratelimit, supabase
from app.core.db import is_unavailability

logger = logging.getLogger(__name__)


class ErrorResponse(BaseModel):
    """A handled error: FastAPI's `{"detail": "..."}`."""

    detail: str = Field(examples=["Item not found"])


class ApiError(HTTPException):
    """An answer with a fixed status and `detail`, both given by each subclass."""

    status_code: int
    detail: str
    # For a `detail` that is a pattern (`<Retry-After>`): the text with examples.
    example: ClassVar[str | None] = None
    # Other texts the same error may carry (raised with the text).
    variants: ClassVar[tuple[str, ...]] = ()

    def __init__(self, detail: str | None = None) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if self.status_code == 401 else None
        super().__init__(self.status_code, detail or type(self).detail, headers)


# Raised by FastAPI itself, documented here.
class NotAuthenticated(ApiError):
    status_code = 401
    detail = "Not authenticated"


class UnparsableBody(ApiError):
    status_code = 400
    detail = "There was an error parsing the body"


# Handled below.
class DatabaseUnavailable(ApiError):
    status_code = 503
    detail = "Database unavailable, try again later"


class TooManyRequests(ApiError):
    status_code = 429
    detail = "Too many attempts: try again in <Retry-After> seconds"
    example = "Too many attempts: try again in 60 seconds"


# Authentication and authorization (app/api/deps.py).
class BadCredentials(ApiError):
    status_code = 401
    detail = "Could not validate credentials"


class InactiveUser(ApiError):
    status_code = 400
    detail = "Inactive user"


class NotEnoughPrivileges(ApiError):
    status_code = 403
    detail = "The user doesn't have enough privileges"


class OnlySuperadminManagesStaff(ApiError):
    status_code = 403
    detail = "Only a superadmin can create, change or delete admins and superadmins"


class EmailNotVerified(ApiError):
    status_code = 403
    detail = "Email not verified: use the link we sent, or ask for a new one"


class NotEnoughPermissions(ApiError):
    status_code = 403
    detail = "Not enough permissions"


# Login, tokens and links.
class IncorrectLogin(ApiError):
    status_code = 400
    detail = "Incorrect email or password"


class InvalidRefreshToken(ApiError):
    status_code = 401
    detail = "Invalid refresh token"


class InvalidToken(ApiError):
    status_code = 400
    detail = "Invalid token"


class IncorrectPassword(ApiError):
    status_code = 400
    detail = "Incorrect password"


class SamePassword(ApiError):
    status_code = 400
    detail = "New password cannot be the same as the current one"


class SupabaseTokenRejected(ApiError):
    status_code = 401
    detail = supabase.MISSING_TOKEN
    variants = supabase.REJECTIONS


class SupabaseUnavailable(ApiError):
    status_code = 503
    detail = supabase.UNAVAILABLE


# Users and items.
class UserNotFound(ApiError):
    status_code = 404
    detail = "User not found"


class UserIdNotFound(ApiError):
    status_code = 404
    detail = "The user with this id does not exist in the system"


class UserEmailNotFound(ApiError):
    status_code = 404
    detail = "The user with this username does not exist in the system."


class UserExists(ApiError):
    status_code = 400
    detail = "The user with this email already exists in the system."


class SignupEmailTaken(ApiError):
    status_code = 400
    detail = "The user with this email already exists in the system"


class EmailTaken(ApiError):
    status_code = 409
    detail = "User with this email already exists"


class SuperuserSelfDeletion(ApiError):
    status_code = 403
    detail = "Super users are not allowed to delete themselves"


class LastSuperadmin(ApiError):
    status_code = 409
    detail = "At least one active superadmin must remain: promote another user first"


class SessionNotFound(ApiError):
    status_code = 404
    detail = "Session not found"


class ItemNotFound(ApiError):
    status_code = 404
    detail = "Item not found"


# Utilities.
class EmailNotConfigured(ApiError):
    status_code = 503
    detail = "Email is not configured: set SMTP_HOST and EMAILS_FROM_EMAIL"


class DatabaseNotReady(ApiError):
    status_code = 503
    detail = "Database unavailable"


Error = type[ApiError]

# Groups for the common cases.
DATABASE: tuple[Error, ...] = (DatabaseUnavailable,)
# A JSON or form body that is not UTF-8 fails before validation.
BODY: tuple[Error, ...] = (UnparsableBody,)
# Any route behind CurrentUser: a missing, invalid or ended token, or an
# inactive account (its sessions end on deactivation, so that one is rare).
AUTHENTICATED: tuple[Error, ...] = (
    NotAuthenticated,
    BadCredentials,
    InactiveUser,
    *DATABASE,
)
STAFF: tuple[Error, ...] = (*AUTHENTICATED, NotEnoughPrivileges)
SUPERUSER = STAFF

Responses = dict[int | str, dict[str, Any]]

HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "`Bearer`: the scheme to authenticate with.",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds until the next attempt is allowed.",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


def document(*groups: Error | Iterable[Error], json_only: bool = False) -> Responses:
    """`responses=` for these errors: one entry per status code, its description
    the `detail` texts it may carry. `json_only` for routes whose own response is
    not JSON (their errors still are)."""
    # status -> {detail text: the detail an example shows}
    by_status: dict[int, dict[str, str]] = {}
    for group in groups:
        for error in [group] if isinstance(group, type) else group:
            texts = by_status.setdefault(error.status_code, {})
            texts.setdefault(error.detail, error.example or error.detail)
            for text in error.variants:
                texts.setdefault(text, text)
    responses: Responses = {}
    for status_code, texts in sorted(by_status.items()):
        examples = {
            f"example-{number}": {"summary": text, "value": {"detail": example}}
            for number, (text, example) in enumerate(texts.items(), start=1)
        }
        response: dict[str, Any] = {"description": "; ".join(texts)}
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


# Handlers


async def too_many_attempts(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ratelimit.TooManyAttempts)
    metrics.RATE_LIMIT_REFUSALS.labels(rule=exc.rule.name).inc()
    detail = TooManyRequests.detail.replace("<Retry-After>", str(exc.retry_after))
    return JSONResponse(
        status_code=TooManyRequests.status_code,
        content={"detail": detail},
        headers={"Retry-After": str(exc.retry_after)},
    )


def database_unavailable() -> JSONResponse:
    return JSONResponse(
        status_code=DatabaseUnavailable.status_code,
        content={"detail": DatabaseUnavailable.detail},
    )


async def pool_exhausted(_request: Request, _exc: Exception) -> JSONResponse:
    return database_unavailable()


async def database_error(_request: Request, exc: Exception) -> JSONResponse:
    """A lost or refused connection, or a statement timeout: 503, not a 500
    with a traceback. Other database errors are bugs and stay 500s."""
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated or is_unavailability(exc.orig):
        logger.warning("Database unavailable: %s", type(exc.orig).__name__)
        return database_unavailable()
    raise exc


# Never echoed back in a 422's `input`: the error says what is wrong with them.
SECRET_FIELDS = frozenset(
    {
        "password",
        "new_password",
        "current_password",
        "token",
        "refresh_token",
        "access_token",
        "client_secret",
    }
)


def _json_safe(value: Any) -> Any:
    """`value` as strict JSON can carry it: Python's JSON parser accepts NaN,
    Infinity and lone surrogates ("\\ud800"), which the 422 answer echoes back."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode()
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _without_secrets(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error without the secrets it may carry: its own `input` for a
    secret field, the secret fields of an object `input` (a missing field's error
    holds the whole body)."""
    field = error["loc"][-1] if error.get("loc") else None
    if field in SECRET_FIELDS:
        return {key: value for key, value in error.items() if key != "input"}
    if isinstance(error.get("input"), dict):
        shown = {
            key: "[redacted]" if key in SECRET_FIELDS else value
            for key, value in error["input"].items()
        }
        return {**error, "input": shown}
    return error


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, made safe to encode whatever the client sent, and without
    the secrets it sent."""
    assert isinstance(exc, RequestValidationError)
    errors = [_without_secrets(error) for error in exc.errors()]
    return JSONResponse(
        status_code=422, content={"detail": _json_safe(jsonable_encoder(errors))}
    )


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ratelimit.TooManyAttempts, too_many_attempts)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(PoolTimeoutError, pool_exhausted)
    app.add_exception_handler(DBAPIError, database_error)
