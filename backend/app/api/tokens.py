"""Sessions opened for a user who just proved who they are (password, provider
token), answered with their tokens."""

import uuid
from typing import Annotated

from fastapi import Depends, Request

from app import crud
from app.api import errors
from app.api.deps import ClientAddress, SessionDep
from app.core import security
from app.core.config import settings
from app.models import Token, User


def ensure_may_log_in(user: User) -> None:
    """The account rules for opening a session, whatever proved the identity."""
    if not user.is_active:
        raise errors.InactiveUser()
    if settings.REQUIRE_EMAIL_VERIFICATION and user.email_verified_at is None:
        raise errors.EmailNotVerified()


def token_response(user: User, session_id: uuid.UUID, refresh_token: str) -> Token:
    return Token(
        access_token=security.create_access_token(user.id, session_id),
        refresh_token=refresh_token,
        expires_in=settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60,
    )


class TokenIssuer:
    """Opens a session for `user` on this request's client, and answers with its
    tokens (400 inactive, 403 unverified)."""

    def __init__(
        self, request: Request, session: SessionDep, client_address: ClientAddress
    ) -> None:
        self.session = session
        self.client_address = client_address
        self.user_agent = request.headers.get("user-agent")

    async def __call__(self, user: User) -> Token:
        ensure_may_log_in(user)
        user_session, refresh_token = await crud.create_session(
            session=self.session,
            user=user,
            client_address=self.client_address,
            user_agent=self.user_agent,
        )
        return token_response(user, user_session.id, refresh_token)


IssueTokens = Annotated[TokenIssuer, Depends()]
