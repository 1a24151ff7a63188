import uuid

from fastapi import APIRouter, BackgroundTasks, HTTPException, status

from app import crud, emails
from app.api.deps import (
    CurrentSuperuser,
    CurrentUser,
    PageDep,
    SessionDep,
    next_cursor,
)
from app.core import security
from app.models import (
    Message,
    UpdatePassword,
    User,
    UserCreate,
    UserPublic,
    UserRegister,
    UsersPublic,
    UserUpdate,
    UserUpdateMe,
)

router = APIRouter(prefix="/users", tags=["users"])

EMAIL_TAKEN = "User with this email already exists"


def forbid_self_deletion_of_superuser(user: User) -> None:
    if user.is_superuser:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="Super users are not allowed to delete themselves",
        )


@router.get("/", response_model=UsersPublic)
async def read_users(
    session: SessionDep, _superuser: CurrentSuperuser, page: PageDep
) -> UsersPublic:
    """List users, newest first (superuser only)."""
    users, count = await crud.list_users(session=session, page=page)
    # One validation of the whole page (not one per row): pydantic-core reads the rows.
    page_content = {
        "data": users,
        "count": count,
        "next_cursor": next_cursor(users, page),
    }
    return UsersPublic.model_validate(page_content, from_attributes=True)


@router.post("/", response_model=UserPublic)
async def create_user(
    session: SessionDep,
    _superuser: CurrentSuperuser,
    user_in: UserCreate,
    background_tasks: BackgroundTasks,
) -> User:
    """Create a user (superuser only); they get a welcome email."""
    try:
        user = await crud.create_user(session=session, user_create=user_in)
    except crud.EmailAlreadyExistsError:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST,
            detail="The user with this email already exists in the system.",
        )
    background_tasks.add_task(emails.send_email, emails.new_account_email(user.email))
    return user


@router.get("/me", response_model=UserPublic)
async def read_user_me(current_user: CurrentUser) -> User:
    """Get the current user."""
    return current_user


@router.patch("/me", response_model=UserPublic)
async def update_user_me(
    session: SessionDep, current_user: CurrentUser, user_in: UserUpdateMe
) -> User:
    """Update the current user's name or email."""
    try:
        return await crud.update_user(
            session=session, user=current_user, user_in=user_in
        )
    except crud.EmailAlreadyExistsError:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=EMAIL_TAKEN)


@router.patch("/me/password")
async def update_password_me(
    session: SessionDep, current_user: CurrentUser, body: UpdatePassword
) -> Message:
    """Change the current user's password."""
    verified, _ = await security.verify_password(
        body.current_password, current_user.hashed_password
    )
    if not verified:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST, detail="Incorrect password"
        )
    if body.current_password == body.new_password:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST,
            detail="New password cannot be the same as the current one",
        )
    await crud.update_password(
        session=session, user=current_user, new_password=body.new_password
    )
    return Message(message="Password updated successfully")


@router.delete("/me")
async def delete_user_me(session: SessionDep, current_user: CurrentUser) -> Message:
    """Delete the current user and their items."""
    forbid_self_deletion_of_superuser(current_user)
    await crud.delete_user(session=session, user=current_user)
    return Message(message="User deleted successfully")


@router.post("/signup", response_model=UserPublic)
async def register_user(session: SessionDep, user_in: UserRegister) -> User:
    """Create an account without being logged in."""
    try:
        return await crud.create_user(
            session=session, user_create=UserCreate.model_validate(user_in)
        )
    except crud.EmailAlreadyExistsError:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST,
            detail="The user with this email already exists in the system",
        )


@router.get("/{user_id}", response_model=UserPublic)
async def read_user_by_id(
    user_id: uuid.UUID, session: SessionDep, current_user: CurrentUser
) -> User:
    """Get a user by id: yourself, or anyone as a superuser."""
    if user_id == current_user.id:
        return current_user
    if not current_user.is_superuser:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="The user doesn't have enough privileges",
        )
    user = await crud.get_user(session=session, user_id=user_id)
    if user is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND, detail="User not found"
        )
    return user


@router.patch("/{user_id}", response_model=UserPublic)
async def update_user(
    user_id: uuid.UUID,
    session: SessionDep,
    _superuser: CurrentSuperuser,
    user_in: UserUpdate,
) -> User:
    """Update a user (superuser only)."""
    user = await crud.get_user(session=session, user_id=user_id)
    if user is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail="The user with this id does not exist in the system",
        )
    try:
        return await crud.update_user(session=session, user=user, user_in=user_in)
    except crud.EmailAlreadyExistsError:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=EMAIL_TAKEN)


@router.delete("/{user_id}")
async def delete_user(
    user_id: uuid.UUID, session: SessionDep, superuser: CurrentSuperuser
) -> Message:
    """Delete a user and their items (superuser only)."""
    user = await crud.get_user(session=session, user_id=user_id)
    if user is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND, detail="User not found"
        )
    if user.id == superuser.id:
        forbid_self_deletion_of_superuser(user)
    await crud.delete_user(session=session, user=user)
    return Message(message="User deleted successfully")
