from fastapi import APIRouter

from app import crud
from app.api import errors
from app.api.deps import SessionDep
from app.api.errors import BODY, DATABASE, document
from app.models import PrivateUserCreate, User, UserCreate, UserPublic

# Public on purpose, and included in the local environment only (app/api/main.py).
public_router = APIRouter(prefix="/private", tags=["private"])


@public_router.post(
    "/users/",
    response_model=UserPublic,
    responses=document(BODY, errors.SignupEmailTaken, DATABASE),
)
async def create_user(user_in: PrivateUserCreate, session: SessionDep) -> User:
    """Create a user directly, without authentication (local environment only)."""
    try:
        return await crud.create_user(
            session=session,
            user_create=UserCreate.model_validate(user_in),
            verified=user_in.is_verified,
        )
    except crud.EmailAlreadyExistsError:
        raise errors.SignupEmailTaken()
