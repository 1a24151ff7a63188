import uuid
from typing import Annotated, NamedTuple

from fastapi import Depends, HTTPException, Query, status
from fastapi.security import OAuth2PasswordBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud
from app.core import security
from app.core.config import settings
from app.core.db import get_db
from app.models import Item, User

reusable_oauth2 = OAuth2PasswordBearer(
    tokenUrl=f"{settings.API_V1_STR}/login/access-token"
)

SessionDep = Annotated[AsyncSession, Depends(get_db)]
TokenDep = Annotated[str, Depends(reusable_oauth2)]

credentials_exception = HTTPException(
    status_code=status.HTTP_401_UNAUTHORIZED,
    detail="Could not validate credentials",
    headers={"WWW-Authenticate": "Bearer"},
)


async def get_current_user(session: SessionDep, token: TokenDep) -> User:
    token_claims = security.decode_token(token, token_type="access")
    if token_claims is None:
        raise credentials_exception
    user = await crud.get_user(session=session, user_id=token_claims.user_id)
    if user is None:
        raise credentials_exception
    if not user.is_active:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST, detail="Inactive user"
        )
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_current_active_superuser(current_user: CurrentUser) -> User:
    if not current_user.is_superuser:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="The user doesn't have enough privileges",
        )
    return current_user


CurrentSuperuser = Annotated[User, Depends(get_current_active_superuser)]


async def get_owned_item(
    session: SessionDep, current_user: CurrentUser, id: uuid.UUID
) -> Item:
    item = await crud.get_item(session=session, item_id=id)
    if item is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND, detail="Item not found"
        )
    if not current_user.is_superuser and item.owner_id != current_user.id:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN, detail="Not enough permissions"
        )
    return item


OwnedItemDep = Annotated[Item, Depends(get_owned_item)]


class Page(NamedTuple):
    skip: int
    limit: int


def pagination(
    skip: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[
        int, Query(ge=1, le=settings.MAX_PAGE_SIZE)
    ] = settings.MAX_PAGE_SIZE,
) -> Page:
    return Page(skip=skip, limit=limit)


PageDep = Annotated[Page, Depends(pagination)]
