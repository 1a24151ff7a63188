from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status

from app import crud
from app.api.deps import CurrentUser, IssueTokens, SessionDep
from app.api.responses import AUTHENTICATED, DATABASE_UNAVAILABLE, document
from app.core import supabase
from app.models import AuthMe, AuthUser, SupabaseExchange, utcnow

MISSING_TOKEN = "Missing Supabase token"

# Included only when Supabase is configured (app/api/main.py).
router = APIRouter(prefix="/auth", tags=["auth"])


def _example(body: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"example": body}}}


USER_EXAMPLE = {
    "id": "4f8a3c2e-6b1d-4e7a-9c55-2d7f0e9b1a63",
    "email": "ada@example.com",
}


@router.get(
    "/verify_supabase_token",
    responses={
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
        400: {"description": "Inactive user"},
        403: {"description": "Email not verified (when REQUIRE_EMAIL_VERIFICATION)"},
        401: {
            "description": f"{MISSING_TOKEN}; {supabase.INVALID_TOKEN} (bad signature, "
            "issuer or audience, unknown key, alg none); Supabase token has expired; "
            "Supabase token carries no valid email; Anonymous Supabase users cannot sign in",
            **_example({"detail": supabase.INVALID_TOKEN}),
        },
        503: {
            "description": f"{supabase.UNAVAILABLE}; {DATABASE_UNAVAILABLE.detail}",
            **_example({"detail": supabase.UNAVAILABLE}),
        },
    },
)
async def verify_supabase_token(
    request: Request, session: SessionDep, issue_tokens: IssueTokens
) -> SupabaseExchange:
    """Exchange a Supabase access token (`Authorization: Bearer`, or the
    `sb-<project-ref>-auth-token` cookie) for this API's tokens; the user is
    found by email, or created."""
    token = supabase.token_from_request(request)
    try:
        if token is None:
            raise supabase.ProviderTokenError(MISSING_TOKEN)
        identity = await supabase.verify_supabase_token(token)
    except supabase.ProviderUnavailableError as exc:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE, detail=exc.detail
        )
    except supabase.ProviderTokenError as exc:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=exc.detail,
            headers={"WWW-Authenticate": "Bearer"},
        )
    user = await crud.get_or_create_external_user(session=session, email=identity.email)
    tokens = await issue_tokens(user)  # 400 inactive, 403 unverified
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
