from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request

from app import crud
from app.api import errors
from app.api.audit import AuditDep
from app.api.deps import CurrentUser, SessionDep
from app.api.errors import AUTHENTICATED, DATABASE, document
from app.api.tokens import IssueTokens
from app.core import supabase
from app.models import AuthMe, AuthUser, LoginFailure, SupabaseExchange, utcnow

# Included only when Supabase is configured, `router` with the current-user
# dependency (app/api/main.py).
router = APIRouter(prefix="/auth", tags=["auth"])
public_router = APIRouter(prefix="/auth", tags=["auth"])


def _example(body: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"example": body}}}


USER_EXAMPLE = {
    "id": "4f8a3c2e-6b1d-4e7a-9c55-2d7f0e9b1a63",
    "email": "ada@example.com",
}


@public_router.get(
    "/verify_supabase_token",
    responses={
        **document(
            errors.InactiveUser,
            errors.EmailNotVerified,  # when REQUIRE_EMAIL_VERIFICATION
            errors.SupabaseTokenRejected,
            errors.SupabaseUnavailable,
            DATABASE,
        ),
        200: _example(
            {
                "message": "Token verified",
                "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9...",
                "user": USER_EXAMPLE,
                "expires_at": "2026-01-01T12:30:00Z",
                "refresh_token": "Jx3m0T1v9bq5...",
                "expires_in": 1800,
            }
        ),
    },
)
async def verify_supabase_token(
    request: Request, session: SessionDep, issue_tokens: IssueTokens, audit: AuditDep
) -> SupabaseExchange:
    """Exchange a Supabase access token (`Authorization: Bearer`, or the
    `sb-<project-ref>-auth-token` cookie) for this API's tokens; the user is
    found by email, or created."""
    token = supabase.token_from_request(request)
    if token is None:
        raise errors.SupabaseTokenRejected()  # missing
    try:
        identity = await supabase.verify_supabase_token(token)
    except supabase.ProviderUnavailableError:
        raise errors.SupabaseUnavailable()
    except supabase.ProviderTokenError as exc:
        await audit.login_failed(
            LoginFailure.provider_token_rejected, method="supabase"
        )
        raise errors.SupabaseTokenRejected(exc.detail)
    user = await crud.get_or_create_external_user(session=session, email=identity.email)
    tokens = await issue_tokens(user, "supabase")  # 400 inactive, 403 unverified
    assert tokens.refresh_token is not None and tokens.expires_in is not None
    return SupabaseExchange(
        message="Token verified",
        token=tokens.access_token,
        user=AuthUser(id=user.id, email=user.email),
        expires_at=utcnow() + timedelta(seconds=tokens.expires_in),
        refresh_token=tokens.refresh_token,
        expires_in=tokens.expires_in,
    )


@router.get(
    "/me",
    responses={
        200: _example({"user": USER_EXAMPLE}),
        **document(AUTHENTICATED),
    },
)
async def read_me(current_user: CurrentUser) -> AuthMe:
    """Get the user of this API's access token (as issued by the exchange)."""
    return AuthMe(user=AuthUser(id=current_user.id, email=current_user.email))
