from fastapi import APIRouter, HTTPException, status

from app import crud
from app.api.deps import SessionDep
from app.api.responses import BODY, DATABASE, Error, document
from app.models import PrivateUserCreate, User, UserCreate, UserPublic

router = APIRouter(prefix="/private", tags=["private"])


@router.post(
    "/users/",
    response_model=UserPublic,
    responses=document(
        BODY,
        Error(400, "The user with this email already exists in the system"),
        DATABASE,
    ),
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
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST,
            detail="The user with this email already exists in the system",
        )
