import uuid

from fastapi import APIRouter, Depends
from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud, jobs
from app.api import errors
from app.api.audit import AuditDep
from app.api.deps import (
    CheckedUserCreate,
    CheckedUserUpdate,
    CurrentSessionId,
    CurrentStaff,
    CurrentUser,
    DeletableUser,
    ManagedUser,
    PageDep,
    SessionDep,
)
from app.api.errors import AUTHENTICATED, BODY, DATABASE, STAFF, document
from app.api.limits import EmailRequestsDep, PasswordAttemptsDep, count_signup
from app.core import security
from app.core.pagination import page_of
from app.models import (
    AuditAction,
    Message,
    SessionPublic,
    SessionsPublic,
    UpdatePassword,
    User,
    UserCreate,
    UserPublic,
    UserRegister,
    UsersPublic,
    UserUpdate,
    UserUpdateMe,
)

# Included with the current-user dependency (app/api/main.py); `public_router`
# holds what works without an access token.
router = APIRouter(prefix="/users", tags=["users"])
public_router = APIRouter(prefix="/users", tags=["users"])


async def save_user_update(
    session: AsyncSession, user: User, user_in: UserUpdate | UserUpdateMe
) -> User:
    """crud.update_user, with its refusals as the API's errors."""
    try:
        return await crud.update_user(session=session, user=user, user_in=user_in)
    except crud.EmailAlreadyExistsError:
        raise errors.EmailTaken()
    except crud.LastSuperadminError:
        raise errors.LastSuperadmin()


def forbid_self_deletion_of_superuser(user: User) -> None:
    if user.is_superuser:
        raise errors.SuperuserSelfDeletion()


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
async def create_user(session: SessionDep, user_in: CheckedUserCreate) -> User:
    """Create a user (admins create ordinary users; a superadmin, any role); they
    get a welcome email with a verification link."""
    # Emails are jobs deferred before the change that causes them: both are
    # committed together, or neither is (app/jobs.py).
    await jobs.defer(session, jobs.send_new_account, email=user_in.email)
    try:
        user = await crud.create_user(session=session, user_create=user_in)
    except crud.EmailAlreadyExistsError:
        raise errors.UserExists()
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
    email_requests: EmailRequestsDep,
    audit: AuditDep,
) -> User:
    """Update the current user's name or email (a new email must be verified again;
    the old address is told of the change)."""
    old_email = current_user.email
    if (
        "email" in user_in.model_fields_set
        and user_in.email.lower() != old_email.lower()
    ):
        await email_requests.count("verification", user_in.email)  # to the new address
        await jobs.defer(session, jobs.send_verification, email=user_in.email)
        await jobs.defer(
            session,
            jobs.send_email_changed,
            old_email=old_email,
            new_email=user_in.email,
        )
    audit.user_updated(actor=current_user, user=current_user, user_in=user_in)
    return await save_user_update(session, current_user, user_in)


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
    attempts: PasswordAttemptsDep,
    audit: AuditDep,
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
    audit.record(AuditAction.password_changed, actor=current_user, target=current_user)
    await jobs.defer(session, jobs.send_password_changed, user_id=str(current_user.id))
    await crud.update_password(
        session=session,
        user=current_user,
        new_password=body.new_password,
        keep_session_id=session_id,
    )
    return Message(message="Password updated successfully")


@router.delete("/me", responses=document(AUTHENTICATED, errors.SuperuserSelfDeletion))
async def delete_user_me(
    session: SessionDep, current_user: CurrentUser, audit: AuditDep
) -> Message:
    """Delete the current user and their items."""
    forbid_self_deletion_of_superuser(current_user)
    audit.record(
        AuditAction.user_deleted,
        actor=current_user,
        target=current_user,
        email=current_user.email,
    )
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
    session_id: uuid.UUID,
    session: SessionDep,
    current_user: CurrentUser,
    audit: AuditDep,
) -> Message:
    """End one of your sessions (e.g. a lost device)."""
    sessions = await crud.list_sessions(session=session, user_id=current_user.id)
    if session_id not in {user_session.id for user_session in sessions}:
        raise errors.SessionNotFound()
    audit.record(
        AuditAction.session_revoked,
        actor=current_user,
        target=current_user,
        session_id=str(session_id),
    )
    await crud.revoke_session_by_id(session=session, session_id=session_id)
    return Message(message="Session revoked")


@public_router.post(
    "/signup",
    response_model=UserPublic,
    responses=document(DATABASE, BODY, errors.SignupEmailTaken, errors.TooManyRequests),
    dependencies=[Depends(count_signup)],
)
async def register_user(session: SessionDep, user_in: UserRegister) -> User:
    """Create an account without being logged in; a verification link is emailed."""
    await jobs.defer(session, jobs.send_verification, email=user_in.email)
    try:
        user = await crud.create_user(
            session=session, user_create=UserCreate.model_validate(user_in)
        )
    except crud.EmailAlreadyExistsError:
        raise errors.SignupEmailTaken()
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
    staff: CurrentStaff,
    audit: AuditDep,
) -> User:
    """Update a user (admins: ordinary users only, without promoting them; a
    superadmin: anyone). A new password or deactivation ends their sessions; a new
    email must be verified again."""
    if "email" in user_in.model_fields_set and user_in.email is not None:
        # Sent if the address is not verified (a new one never is).
        await jobs.defer(session, jobs.send_verification, email=user_in.email)
    audit.user_updated(actor=staff, user=user, user_in=user_in)
    return await save_user_update(session, user, user_in)


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
    session: SessionDep, user: DeletableUser, staff: CurrentStaff, audit: AuditDep
) -> Message:
    """Delete a user and their items (admins: ordinary users only)."""
    if user.id == staff.id:
        forbid_self_deletion_of_superuser(user)
    audit.record(AuditAction.user_deleted, actor=staff, target=user, email=user.email)
    try:
        await crud.delete_user(session=session, user=user)
    except crud.LastSuperadminError:
        raise errors.LastSuperadmin()
    return Message(message="User deleted successfully")
