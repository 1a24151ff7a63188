import uuid

from fastapi import APIRouter, BackgroundTasks, Depends

from app import crud, emails
from app.api import errors
from app.api.deps import (
    CheckedUserCreate,
    CheckedUserUpdate,
    CurrentSessionId,
    CurrentStaff,
    CurrentUser,
    ManagedUser,
    PageDep,
    SessionDep,
    ensure_can_manage,
)
from app.api.errors import AUTHENTICATED, BODY, DATABASE, STAFF, document
from app.api.limits import EmailRequestsDep, PasswordAttemptsDep, count_signup
from app.core import security
from app.core.pagination import page_of
from app.models import (
    Message,
    SessionPublic,
    SessionsPublic,
    UpdatePassword,
    User,
    UserCreate,
    UserPublic,
    UserRegister,
    UsersPublic,
    UserUpdateMe,
)

# Included with the current-user dependency (app/api/main.py); `public_router`
# holds what works without an access token.
router = APIRouter(prefix="/users", tags=["users"])
public_router = APIRouter(prefix="/users", tags=["users"])


def forbid_self_deletion_of_superuser(user: User) -> None:
    if user.is_superuser:
        raise errors.SuperuserSelfDeletion()


def send_verification_email(background_tasks: BackgroundTasks, user: User) -> None:
    token = security.create_email_verification_token(user.id, user.email)
    background_tasks.add_task(
        emails.send_email, emails.verify_email_email(user.email, token)
    )


@router.get("/", response_model=UsersPublic, responses=document(STAFF))
async def read_users(
    session: SessionDep, _staff: CurrentStaff, page: PageDep
) -> UsersPublic:
    """List users, newest first (admins and superadmins)."""
    users, count = await crud.list_users(session=session, page=page)
    return page_of(UsersPublic, users, count, page)


@router.post(
    "/",
    response_model=UserPublic,
    responses=document(
        STAFF, errors.OnlySuperadminManagesStaff, BODY, errors.UserExists
    ),
)
async def create_user(
    session: SessionDep, user_in: CheckedUserCreate, background_tasks: BackgroundTasks
) -> User:
    """Create a user (admins create ordinary users; a superadmin, any role); they
    get a welcome email with a verification link."""
    try:
        user = await crud.create_user(session=session, user_create=user_in)
    except crud.EmailAlreadyExistsError:
        raise errors.UserExists()
    token = security.create_email_verification_token(user.id, user.email)
    background_tasks.add_task(
        emails.send_email, emails.new_account_email(user.email, token)
    )
    return user


@router.get("/me", response_model=UserPublic, responses=document(AUTHENTICATED))
async def read_user_me(current_user: CurrentUser) -> User:
    """Get the current user."""
    return current_user


@router.patch(
    "/me",
    response_model=UserPublic,
    responses=document(AUTHENTICATED, BODY, errors.EmailTaken, errors.TooManyRequests),
)
async def update_user_me(
    session: SessionDep,
    current_user: CurrentUser,
    user_in: UserUpdateMe,
    background_tasks: BackgroundTasks,
    email_requests: EmailRequestsDep,
) -> User:
    """Update the current user's name or email (a new email must be verified again;
    the old address is told of the change)."""
    old_email = current_user.email
    if (
        "email" in user_in.model_fields_set
        and user_in.email.lower() != old_email.lower()
    ):
        await email_requests.count("verification", user_in.email)  # to the new address
    try:
        user = await crud.update_user(
            session=session, user=current_user, user_in=user_in
        )
    except crud.EmailAlreadyExistsError:
        raise errors.EmailTaken()
    if user.email.lower() != old_email.lower():
        send_verification_email(background_tasks, user)
        background_tasks.add_task(
            emails.send_email, emails.email_changed_email(old_email, user.email)
        )
    return user


@router.patch(
    "/me/password",
    responses=document(
        AUTHENTICATED,
        BODY,
        errors.IncorrectPassword,
        errors.SamePassword,
        errors.TooManyRequests,
    ),
)
async def update_password_me(
    session: SessionDep,
    current_user: CurrentUser,
    session_id: CurrentSessionId,
    body: UpdatePassword,
    background_tasks: BackgroundTasks,
    attempts: PasswordAttemptsDep,
) -> Message:
    """Change the current user's password; every other session ends."""
    # Limited like logins: a stolen access token is no password-guessing oracle.
    counted = await attempts.start(current_user.email)
    verified, _ = await security.verify_password(
        body.current_password, current_user.hashed_password
    )
    if not verified:
        raise errors.IncorrectPassword()
    await attempts.succeeded(counted)
    if body.current_password == body.new_password:
        raise errors.SamePassword()
    await crud.update_password(
        session=session,
        user=current_user,
        new_password=body.new_password,
        keep_session_id=session_id,
    )
    background_tasks.add_task(
        emails.send_email, emails.password_changed_email(current_user.email)
    )
    return Message(message="Password updated successfully")


@router.delete("/me", responses=document(AUTHENTICATED, errors.SuperuserSelfDeletion))
async def delete_user_me(session: SessionDep, current_user: CurrentUser) -> Message:
    """Delete the current user and their items."""
    forbid_self_deletion_of_superuser(current_user)
    await crud.delete_user(session=session, user=current_user)  # never a superadmin
    return Message(message="User deleted successfully")


@router.get("/me/sessions", responses=document(AUTHENTICATED))
async def read_sessions_me(
    session: SessionDep, current_user: CurrentUser, session_id: CurrentSessionId
) -> SessionsPublic:
    """List your live sessions (devices), most recently used first."""
    sessions = await crud.list_sessions(session=session, user_id=current_user.id)
    data = [
        SessionPublic.model_validate(
            user_session,
            from_attributes=True,
            update={"current": user_session.id == session_id},
        )
        for user_session in sessions
    ]
    return SessionsPublic(data=data, count=len(data))


@router.delete(
    "/me/sessions/{session_id}",
    responses=document(AUTHENTICATED, errors.SessionNotFound),
)
async def revoke_session_me(
    session_id: uuid.UUID, session: SessionDep, current_user: CurrentUser
) -> Message:
    """End one of your sessions (e.g. a lost device)."""
    sessions = await crud.list_sessions(session=session, user_id=current_user.id)
    if session_id not in {user_session.id for user_session in sessions}:
        raise errors.SessionNotFound()
    await crud.revoke_session_by_id(session=session, session_id=session_id)
    return Message(message="Session revoked")


@public_router.post(
    "/signup",
    response_model=UserPublic,
    responses=document(DATABASE, BODY, errors.SignupEmailTaken, errors.TooManyRequests),
    dependencies=[Depends(count_signup)],
)
async def register_user(
    session: SessionDep,
    user_in: UserRegister,
    background_tasks: BackgroundTasks,
) -> User:
    """Create an account without being logged in; a verification link is emailed."""
    try:
        user = await crud.create_user(
            session=session, user_create=UserCreate.model_validate(user_in)
        )
    except crud.EmailAlreadyExistsError:
        raise errors.SignupEmailTaken()
    send_verification_email(background_tasks, user)
    return user


@router.get(
    "/{user_id}",
    response_model=UserPublic,
    responses=document(STAFF, errors.UserNotFound),
)
async def read_user_by_id(
    user_id: uuid.UUID, session: SessionDep, current_user: CurrentUser
) -> User:
    """Get a user by id: yourself, or anyone as an admin or superadmin."""
    if user_id == current_user.id:
        return current_user
    if not current_user.is_staff:
        raise errors.NotEnoughPrivileges()
    user = await crud.get_user(session=session, user_id=user_id)
    if user is None:
        raise errors.UserNotFound()
    return user


@router.patch(
    "/{user_id}",
    response_model=UserPublic,
    responses=document(
        STAFF,
        errors.OnlySuperadminManagesStaff,
        BODY,
        errors.UserIdNotFound,
        errors.EmailTaken,
        errors.LastSuperadmin,
    ),
)
async def update_user(
    session: SessionDep,
    user: ManagedUser,
    user_in: CheckedUserUpdate,
    background_tasks: BackgroundTasks,
) -> User:
    """Update a user (admins: ordinary users only, without promoting them; a
    superadmin: anyone). A new password or deactivation ends their sessions; a new
    email must be verified again."""
    try:
        user = await crud.update_user(session=session, user=user, user_in=user_in)
    except crud.EmailAlreadyExistsError:
        raise errors.EmailTaken()
    except crud.LastSuperadminError:
        raise errors.LastSuperadmin()
    if user.email_verified_at is None and "email" in user_in.model_fields_set:
        send_verification_email(background_tasks, user)
    return user


@router.delete(
    "/{user_id}",
    responses=document(
        STAFF,
        errors.OnlySuperadminManagesStaff,
        errors.SuperuserSelfDeletion,
        errors.UserNotFound,
        errors.LastSuperadmin,
    ),
)
async def delete_user(
    user_id: uuid.UUID, session: SessionDep, staff: CurrentStaff
) -> Message:
    """Delete a user and their items (admins: ordinary users only)."""
    user = await crud.get_user(session=session, user_id=user_id)
    if user is None:
        raise errors.UserNotFound()
    if user.id == staff.id:
        forbid_self_deletion_of_superuser(user)
    ensure_can_manage(staff, user.role)
    try:
        await crud.delete_user(session=session, user=user)
    except crud.LastSuperadminError:
        raise errors.LastSuperadmin()
    return Message(message="User deleted successfully")
