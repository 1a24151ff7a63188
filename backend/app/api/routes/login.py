import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, ParamSpec

from fastapi import APIRouter, Depends, Form, Path
from fastapi.responses import HTMLResponse
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import EmailStr
from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud, emails, jobs
from app.api import errors
from app.api.deps import (
    CurrentSessionId,
    CurrentSuperuser,
    CurrentUser,
    SessionDep,
)
from app.api.errors import AUTHENTICATED, BODY, DATABASE, SUPERUSER, document
from app.api.limits import EmailRequestsDep, PasswordAttemptsDep
from app.api.tokens import IssueTokens, token_response
from app.core import metrics, ratelimit, security
from app.models import (
    EmailAddress,
    EmailVerification,
    Message,
    NewPassword,
    RefreshRequest,
    Token,
    User,
    UserPublic,
)

# Included with the current-user dependency (app/api/main.py); `public_router`
# holds what works without an access token.
router = APIRouter(tags=["login"])
public_router = APIRouter(tags=["login"])

RECOVERY_MESSAGE = "If that email is registered, we sent a password recovery link"
VERIFICATION_MESSAGE = (
    "If that email is registered and not yet verified, we sent a verification link"
)
EmailPath = Annotated[EmailStr, Path(max_length=255)]
P = ParamSpec("P")
# Login failures by reason, a fixed set (metrics.LOGIN_FAILURES): unknown
# emails and wrong passwords are one reason, as in the answer.
LOGIN_FAILURE_REASONS: dict[type[Exception], str] = {
    errors.IncorrectLogin: "bad_credentials",
    ratelimit.TooManyAttempts: "rate_limited",
    errors.InactiveUser: "inactive",
    errors.EmailNotVerified: "unverified",
}


def count_logins(login: Callable[P, Awaitable[Token]]) -> Callable[P, Awaitable[Token]]:
    """Count the logins of `login` that succeed, and those refused by reason."""

    @functools.wraps(login)
    async def counted(*args: P.args, **kwargs: P.kwargs) -> Token:
        try:
            token = await login(*args, **kwargs)
        except tuple(LOGIN_FAILURE_REASONS) as refused:
            metrics.LOGIN_FAILURES.labels(LOGIN_FAILURE_REASONS[type(refused)]).inc()
            raise
        metrics.LOGIN_SUCCESSES.inc()
        return token

    return counted


async def link_user(
    session: AsyncSession,
    token: str,
    token_type: security.TokenType,
    fits: tuple[str, Callable[[User], str]],
) -> User:
    """The user a recovery or verification link was made for, while the link still
    fits the account: its claim `fits[0]` is `fits[1](user)` (a fingerprint of the
    password or email it was sent for). 400 Invalid token otherwise."""
    claims = security.decode_token(token, token_type=token_type)
    user = (
        await crud.get_user(session=session, user_id=claims.user_id) if claims else None
    )
    claim, expected = fits
    if claims is None or user is None or claims.claims.get(claim) != expected(user):
        raise errors.InvalidToken()
    return user


class LoginForm(OAuth2PasswordRequestForm):
    """The OAuth2 password form with bounded fields (NUL bytes and huge inputs get 422)."""

    def __init__(
        self,
        username: Annotated[str, Form(max_length=255, pattern=r"^[^\x00]*$")],
        password: Annotated[str, Form(max_length=128, pattern=r"^[^\x00]*$")],
        grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
        scope: Annotated[str, Form(max_length=1024)] = "",
        client_id: Annotated[str | None, Form(max_length=255)] = None,
        client_secret: Annotated[str | None, Form(max_length=255)] = None,
    ) -> None:
        super().__init__(
            username=username,
            password=password,
            grant_type=grant_type,
            scope=scope,
            client_id=client_id,
            client_secret=client_secret,
        )


@public_router.post(
    "/login/access-token",
    responses=document(
        errors.IncorrectLogin,
        errors.InactiveUser,
        BODY,
        errors.EmailNotVerified,  # when REQUIRE_EMAIL_VERIFICATION
        errors.TooManyRequests,  # failed logins, per account and per client
        DATABASE,
    ),
)
@count_logins
async def login_access_token(
    session: SessionDep,
    form_data: Annotated[LoginForm, Depends()],
    attempts: PasswordAttemptsDep,
    issue_tokens: IssueTokens,
) -> Token:
    """Log in with email and password (OAuth2 password flow): a new session with a
    short-lived access token and a refresh token."""
    # Unknown emails count too: the limits reveal nothing about accounts.
    counted = await attempts.start(form_data.username)
    user = await crud.authenticate(
        session=session, email=form_data.username, password=form_data.password
    )
    if user is None:
        raise errors.IncorrectLogin()
    await attempts.succeeded(counted)
    return await issue_tokens(user)  # 400 inactive, 403 unverified


@public_router.post(
    "/login/refresh-token",
    responses=document(errors.InvalidRefreshToken, BODY, DATABASE),
)
async def refresh_access_token(session: SessionDep, body: RefreshRequest) -> Token:
    """Trade a refresh token for a new access token and a new refresh token. Each
    refresh token works once: replaying a used one ends its session."""
    rotated = await crud.rotate_refresh_token(
        session=session, refresh_token=body.refresh_token
    )
    user = (
        await crud.get_user(session=session, user_id=rotated[0].user_id)
        if rotated
        else None
    )
    if rotated is None or user is None or not user.is_active:
        raise errors.InvalidRefreshToken()
    user_session, refresh_token = rotated
    return token_response(user, user_session.id, refresh_token)


@router.post("/logout", responses=document(AUTHENTICATED))
async def logout(session: SessionDep, session_id: CurrentSessionId) -> Message:
    """End this session: its access and refresh tokens stop working at once."""
    await crud.revoke_session_by_id(session=session, session_id=session_id)
    return Message(message="Logged out")


@router.post("/logout/all", responses=document(AUTHENTICATED))
async def logout_everywhere(session: SessionDep, current_user: CurrentUser) -> Message:
    """End every session of the current user, this one included."""
    await crud.revoke_sessions(session=session, user_id=current_user.id)
    await session.commit()
    return Message(message="Logged out of all sessions")


@router.post(
    "/login/test-token", response_model=UserPublic, responses=document(AUTHENTICATED)
)
async def test_token(current_user: CurrentUser) -> CurrentUser:
    """Check an access token; answer with its user."""
    return current_user


@public_router.post(
    "/password-recovery/{email}",
    responses=document(errors.TooManyRequests, DATABASE),
)
async def recover_password(
    email: EmailPath, session: SessionDep, email_requests: EmailRequestsDep
) -> Message:
    """Send a password recovery email; the answer is the same for unknown emails."""
    await email_requests.count("recovery", email)
    # A job for every address: the job looks the account up, so that the time
    # of the answer does not tell which addresses are registered.
    await jobs.send_soon(session, jobs.send_password_recovery, email=email)
    return Message(message=RECOVERY_MESSAGE)


@public_router.post(
    "/reset-password/",
    responses=document(errors.InvalidToken, errors.InactiveUser, BODY, DATABASE),
)
async def reset_password(session: SessionDep, body: NewPassword) -> Message:
    """Set a new password with a password recovery token (usable once); every
    session of the account ends."""
    user = await link_user(
        session,
        body.token,
        "password_reset",
        ("pwd", lambda user: security.password_fingerprint(user.hashed_password)),
    )
    if not user.is_active:
        raise errors.InactiveUser()
    await jobs.defer(session, jobs.send_password_changed, user_id=str(user.id))
    await crud.update_password(
        session=session, user=user, new_password=body.new_password
    )
    return Message(message="Password updated successfully")


@public_router.post(
    "/verify-email/", responses=document(errors.InvalidToken, BODY, DATABASE)
)
async def verify_email(session: SessionDep, body: EmailVerification) -> Message:
    """Confirm an email address with the token of a verification link."""
    user = await link_user(
        session,
        body.token,
        "email_verification",
        ("eml", lambda user: security.fingerprint(user.email.lower())),
    )
    await crud.mark_email_verified(session=session, user=user)
    return Message(message="Email verified successfully")


@public_router.post(
    "/verify-email/resend",
    responses=document(BODY, errors.TooManyRequests, DATABASE),
)
async def resend_verification_email(
    session: SessionDep, body: EmailAddress, email_requests: EmailRequestsDep
) -> Message:
    """Send a new verification link; the answer is the same for unknown emails."""
    await email_requests.count("verification", body.email)
    # The job decides whether the address gets a link (see recover_password).
    await jobs.send_soon(session, jobs.send_verification, email=body.email)
    return Message(message=VERIFICATION_MESSAGE)


@router.post(
    "/password-recovery-html-content/{email}",
    response_class=HTMLResponse,
    responses=document(SUPERUSER, errors.UserEmailNotFound, json_only=True),
)
async def recover_password_html_content(
    email: EmailPath, session: SessionDep, _superuser: CurrentSuperuser
) -> HTMLResponse:
    """Show the password recovery email a user would get (superuser only)."""
    user = await crud.get_user_by_email(session=session, email=email)
    if user is None:
        raise errors.UserEmailNotFound()
    token = security.create_password_reset_token(user.id, user.hashed_password)
    email_content = emails.reset_password_email(user.email, token)
    return HTMLResponse(
        content=email_content.html, headers={"subject": email_content.subject}
    )
