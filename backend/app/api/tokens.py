"""Sessions opened for a user who just proved who they are (password, provider
token), answered with their tokens."""

import uuid
from typing import Annotated

from fastapi import Depends

from app import crud
from app.api import errors
from app.api.audit import AuditDep, LoginMethod
from app.api.deps import SessionDep
from app.core import security
from app.core.config import settings
from app.models import AuditAction, LoginFailure, Token, User


def login_refusal(user: User) -> LoginFailure | None:
    """Why the account rules refuse to open a session, whatever proved the identity."""
    if not user.is_active:
        return LoginFailure.inactive
    if settings.REQUIRE_EMAIL_VERIFICATION and user.email_verified_at is None:
        return LoginFailure.unverified
    return None


REFUSALS: dict[LoginFailure, type[errors.ApiError]] = {
    LoginFailure.inactive: errors.InactiveUser,
    LoginFailure.unverified: errors.EmailNotVerified,
}


def token_response(user: User, session_id: uuid.UUID, refresh_token: str) -> Token:
    return Token(
        access_token=security.create_access_token(user.id, session_id),
        refresh_token=refresh_token,
        expires_in=settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60,
    )


class TokenIssuer:
    """Opens a session for `user` on this request's client, and answers with its
    tokens (400 inactive, 403 unverified); the login is audited either way."""

    def __init__(self, session: SessionDep, audit: AuditDep) -> None:
        self.session = session
        self.audit = audit

    async def __call__(self, user: User, method: LoginMethod = "password") -> Token:
        refusal = login_refusal(user)
        if refusal is not None:
            await self.audit.login_failed(refusal, user=user, method=method)
            raise REFUSALS[refusal]()
        action = (
            AuditAction.supabase_exchange
            if method == "supabase"
            else AuditAction.login_succeeded
        )
        self.audit.record(action, actor=user, target=user)
        user_session, refresh_token = await crud.create_session(
            session=self.session,
            user=user,
            client_address=self.audit.context.client_address,
            user_agent=self.audit.context.user_agent,
        )
        return token_response(user, user_session.id, refresh_token)


IssueTokens = Annotated[TokenIssuer, Depends()]
