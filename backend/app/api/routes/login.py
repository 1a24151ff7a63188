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
from app.api.deps import CurrentSuperuser, CurrentUser, SessionDep
from app.core import security
from app.models import Message, NewPassword, Token, UserPublic

router = APIRouter(tags=["login"])

RECOVERY_MESSAGE = "If that email is registered, we sent a password recovery link"
EmailPath = Annotated[EmailStr, Path(max_length=255)]


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


@router.post("/login/access-token")
async def login_access_token(
    session: SessionDep, form_data: Annotated[LoginForm, Depends()]
) -> Token:
    """Log in with email and password (OAuth2 password flow); get an access token."""
    user = await crud.authenticate(
        session=session, email=form_data.username, password=form_data.password
    )
    if user is None:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST,
            detail="Incorrect email or password",
        )
    if not user.is_active:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST, detail="Inactive user"
        )
    return Token(access_token=security.create_access_token(user.id))


@router.post("/login/test-token", response_model=UserPublic)
async def test_token(current_user: CurrentUser) -> CurrentUser:
    """Check an access token; answer with its user."""
    return current_user


@router.post("/password-recovery/{email}")
async def recover_password(
    email: EmailPath, session: SessionDep, background_tasks: BackgroundTasks
) -> Message:
    """Send a password recovery email; the answer is the same for unknown emails."""
    user = await crud.get_user_by_email(session=session, email=email)
    if user is not None:
        token = security.create_password_reset_token(user.id, user.hashed_password)
        background_tasks.add_task(
            emails.send_email, emails.reset_password_email(user.email, token)
        )
    return Message(message=RECOVERY_MESSAGE)


@router.post("/reset-password/")
async def reset_password(session: SessionDep, body: NewPassword) -> Message:
    """Set a new password with a password recovery token (usable once)."""
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
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST, detail="Invalid token"
        )
    if not user.is_active:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST, detail="Inactive user"
        )
    await crud.update_password(
        session=session, user=user, new_password=body.new_password
    )
    return Message(message="Password updated successfully")


@router.post("/password-recovery-html-content/{email}", response_class=HTMLResponse)
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
