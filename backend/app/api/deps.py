import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError
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

# Dependencies are `async def` even without I/O: FastAPI runs plain `def` ones
# in its thread pool, a thread hop on every request.


async def get_current_active_superuser(current_user: CurrentUser) -> User:
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


def next_cursor(rows: Sequence[Item] | Sequence[User], page: crud.Page) -> str | None:
    """An opaque cursor for the rows after a full page (newest first), else None."""
    if len(rows) < page.limit:
        return None
    position = f"{rows[-1].created_at.isoformat()}|{rows[-1].id}"
    return base64.urlsafe_b64encode(position.encode()).decode()


def decode_cursor(cursor: str) -> crud.Position:
    try:
        created_at, row_id = base64.urlsafe_b64decode(cursor).decode().split("|")
        position = crud.Position(datetime.fromisoformat(created_at), uuid.UUID(row_id))
    except ValueError:  # bad base64, UTF-8, shape, date or UUID
        position = None
    if position is None or position.created_at.tzinfo is None:
        error = {
            "type": "value_error",
            "loc": ("query", "cursor"),
            "msg": "Invalid cursor",
        }
        raise RequestValidationError([{**error, "input": cursor}])
    return position


async def pagination(
    skip: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[
        int, Query(ge=1, le=settings.MAX_PAGE_SIZE)
    ] = settings.MAX_PAGE_SIZE,
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            description="`next_cursor` of the previous page: keyset pagination, "
            "fast at any depth (use instead of a growing `skip`).",
        ),
    ] = None,
) -> crud.Page:
    return crud.Page(skip, limit, decode_cursor(cursor) if cursor else None)


PageDep = Annotated[crud.Page, Depends(pagination)]
