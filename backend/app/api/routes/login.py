import uuid
from typing import Annotated

from fastapi import (
    APIRouter,
    BackgroundTasks,
    Depends,
    Form,
    HTTPException,
    Path,
    status,
)
from fastapi.responses import HTMLResponse
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import EmailStr

from app import crud, emails
from app.api.deps import (
    CurrentSessionId,
    CurrentSuperuser,
    CurrentUser,
    EmailRequestsDep,
    IssueTokens,
    PasswordAttemptsDep,
    SessionDep,
    access_token_response,
)
from app.api.responses import (
    AUTHENTICATED,
    BODY,
    DATABASE,
    EMAIL_NOT_VERIFIED,
    INACTIVE_USER,
    SUPERUSER,
    TOO_MANY_ATTEMPTS,
    Error,
    document,
)
from app.core import security
from app.models import (
    EmailAddress,
    EmailVerification,
    Message,
    NewPassword,
    RefreshRequest,
    Token,
    UserPublic,
)

router = APIRouter(tags=["login"])

RECOVERY_MESSAGE = "If that email is registered, we sent a password recovery link"
VERIFICATION_MESSAGE = (
    "If that email is registered and not yet verified, we sent a verification link"
)
EmailPath = Annotated[EmailStr, Path(max_length=255)]
invalid_token = HTTPException(
    status_code=status.HTTP_400_BAD_REQUEST, detail="Invalid token"
)
inactive_user = HTTPException(
    status_code=status.HTTP_400_BAD_REQUEST, detail="Inactive user"
)
INVALID_TOKEN = Error(400, "Invalid token")


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


@router.post(
    "/login/access-token",
    responses=document(
        Error(400, "Incorrect email or password"),
        INACTIVE_USER,
        BODY,
        EMAIL_NOT_VERIFIED,  # when REQUIRE_EMAIL_VERIFICATION
        TOO_MANY_ATTEMPTS,  # failed logins, per account and per client
        DATABASE,
    ),
)
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
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST,
            detail="Incorrect email or password",
        )
    await attempts.succeeded(counted)
    return await issue_tokens(user)  # 400 inactive, 403 unverified


@router.post(
    "/login/refresh-token",
    responses=document(Error(401, "Invalid refresh token"), BODY, DATABASE),
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
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Invalid refresh token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    user_session, refresh_token = rotated
    return access_token_response(user, user_session.id, refresh_token)


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


@router.post(
    "/password-recovery/{email}",
    responses=document(TOO_MANY_ATTEMPTS, DATABASE),
)
async def recover_password(
    email: EmailPath,
    session: SessionDep,
    background_tasks: BackgroundTasks,
    email_requests: EmailRequestsDep,
) -> Message:
    """Send a password recovery email; the answer is the same for unknown emails."""
    await email_requests.count("recovery", email)
    user = await crud.get_user_by_email(session=session, email=email)
    # An unknown address gets the same work (a token and an email, never sent),
    # so that the time of the answer does not tell which addresses are registered.
    token = security.create_password_reset_token(
        user.id if user else uuid.uuid4(),
        user.hashed_password if user else security.dummy_hash(),
    )
    recovery = emails.reset_password_email(user.email if user else email, token)
    if user is not None:
        background_tasks.add_task(emails.send_email, recovery)
    return Message(message=RECOVERY_MESSAGE)


@router.post(
    "/reset-password/",
    responses=document(INVALID_TOKEN, INACTIVE_USER, BODY, DATABASE),
)
async def reset_password(
    session: SessionDep, body: NewPassword, background_tasks: BackgroundTasks
) -> Message:
    """Set a new password with a password recovery token (usable once); every
    session of the account ends."""
    token = security.decode_token(body.token, token_type="password_reset")
    user = (
        await crud.get_user(session=session, user_id=token.user_id) if token else None
    )
    if (
        token is None
        or user is None
        or token.claims.get("pwd")
        != security.password_fingerprint(user.hashed_password)
    ):
        raise invalid_token
    if not user.is_active:
        raise inactive_user
    await crud.update_password(
        session=session, user=user, new_password=body.new_password
    )
    background_tasks.add_task(
        emails.send_email, emails.password_changed_email(user.email)
    )
    return Message(message="Password updated successfully")


@router.post("/verify-email/", responses=document(INVALID_TOKEN, BODY, DATABASE))
async def verify_email(session: SessionDep, body: EmailVerification) -> Message:
    """Confirm an email address with the token of a verification link."""
    token = security.decode_token(body.token, token_type="email_verification")
    user = (
        await crud.get_user(session=session, user_id=token.user_id) if token else None
    )
    if (
        token is None
        or user is None
        or token.claims.get("eml") != security.fingerprint(user.email.lower())
    ):
        raise invalid_token
    await crud.mark_email_verified(session=session, user=user)
    return Message(message="Email verified successfully")


@router.post(
    "/verify-email/resend",
    responses=document(BODY, TOO_MANY_ATTEMPTS, DATABASE),
)
async def resend_verification_email(
    session: SessionDep,
    body: EmailAddress,
    background_tasks: BackgroundTasks,
    email_requests: EmailRequestsDep,
) -> Message:
    """Send a new verification link; the answer is the same for unknown emails."""
    await email_requests.count("verification", body.email)
    user = await crud.get_user_by_email(session=session, email=body.email)
    # The same work whatever the address (see recover_password).
    unverified = user is not None and user.email_verified_at is None
    address = user.email if user else body.email
    token = security.create_email_verification_token(
        user.id if user else uuid.uuid4(), address
    )
    verification = emails.verify_email_email(address, token)
    if unverified:
        background_tasks.add_task(emails.send_email, verification)
    return Message(message=VERIFICATION_MESSAGE)


@router.post(
    "/password-recovery-html-content/{email}",
    response_class=HTMLResponse,
    responses=document(
        SUPERUSER,
        Error(404, "The user with this username does not exist in the system."),
        json_only=True,
    ),
)
async def recover_password_html_content(
    email: EmailPath, session: SessionDep, _superuser: CurrentSuperuser
) -> HTMLResponse:
    """Show the password recovery email a user would get (superuser only)."""
    user = await crud.get_user_by_email(session=session, email=email)
    if user is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail="The user with this username does not exist in the system.",
        )
    token = security.create_password_reset_token(user.id, user.hashed_password)
    email_content = emails.reset_password_email(user.email, token)
    return HTMLResponse(
        content=email_content.html, headers={"subject": email_content.subject}
    )
