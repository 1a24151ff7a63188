"""What routes inject: the database session, the authenticated user and the
authorization rules (token issuing: tokens.py; rate-limit flows: limits.py)."""

import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud
from app.api import errors
from app.core import security
from app.core.config import settings
from app.core.db import get_db
from app.core.pagination import Page, page_params
from app.models import Item, Role, User, UserCreate, UserUpdate

# Dependencies are `async def` even without I/O: FastAPI runs plain `def` ones
# in its thread pool, a thread hop on every request.

reusable_oauth2 = OAuth2PasswordBearer(
    tokenUrl=f"{settings.API_V1_STR}/login/access-token"
)

SessionDep = Annotated[AsyncSession, Depends(get_db)]
TokenDep = Annotated[str, Depends(reusable_oauth2)]
PageDep = Annotated[Page, Depends(page_params)]


async def get_client_address(request: Request) -> str:
    """The client's IP (behind the proxy, uvicorn takes it from X-Forwarded-For,
    trusted only from FORWARDED_ALLOW_IPS)."""
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(get_client_address)]


# Authentication


async def get_access_claims(token: TokenDep) -> security.TokenClaims:
    claims = security.decode_token(token, token_type="access")
    if claims is None or claims.session_id is None:
        raise errors.BadCredentials()
    return claims


AccessClaims = Annotated[security.TokenClaims, Depends(get_access_claims)]


async def get_current_user(session: SessionDep, claims: AccessClaims) -> User:
    assert claims.session_id is not None
    user = await crud.get_active_user(
        session=session, user_id=claims.user_id, session_id=claims.session_id
    )
    if user is None:  # deleted, or the token's session ended
        raise errors.BadCredentials()
    if not user.is_active:
        raise errors.InactiveUser()
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_current_session_id(
    claims: AccessClaims, _current_user: CurrentUser
) -> uuid.UUID:
    """The session of the request's access token (checked live by CurrentUser)."""
    assert claims.session_id is not None
    return claims.session_id


CurrentSessionId = Annotated[uuid.UUID, Depends(get_current_session_id)]


# Authorization: one dependency per rule.
# - superadmin: everything; CurrentSuperuser guards what only it may do.
# - admin: ordinary users and every item (CurrentStaff, ManagedUser, the
#   Checked* inputs), never admins or superadmins.
# - user: their own account and items.


async def get_current_active_superuser(current_user: CurrentUser) -> User:
    if not current_user.is_superuser:
        raise errors.NotEnoughPrivileges()
    return current_user


CurrentSuperuser = Annotated[User, Depends(get_current_active_superuser)]


async def get_current_staff(current_user: CurrentUser) -> User:
    if not current_user.is_staff:
        raise errors.NotEnoughPrivileges()
    return current_user


CurrentStaff = Annotated[User, Depends(get_current_staff)]


def ensure_can_manage(actor: User, role: Role) -> None:
    """Admins manage ordinary users only; superadmins manage everyone."""
    if not actor.is_superuser and role != Role.user:
        raise errors.OnlySuperadminManagesStaff()


async def checked_user_create(staff: CurrentStaff, user_in: UserCreate) -> UserCreate:
    ensure_can_manage(staff, user_in.requested_role())
    return user_in


CheckedUserCreate = Annotated[UserCreate, Depends(checked_user_create)]


class ManagedUserLoader:
    """The user of the path's `user_id`, if the caller may manage them; a missing
    one answers `not_found` (the contract's texts differ by route)."""

    def __init__(self, not_found: type[errors.ApiError]) -> None:
        self.not_found = not_found

    async def __call__(
        self, user_id: uuid.UUID, session: SessionDep, staff: CurrentStaff
    ) -> User:
        user = await crud.get_user(session=session, user_id=user_id)
        if user is None:
            raise self.not_found()
        ensure_can_manage(staff, user.role)
        return user


ManagedUser = Annotated[User, Depends(ManagedUserLoader(errors.UserIdNotFound))]
DeletableUser = Annotated[User, Depends(ManagedUserLoader(errors.UserNotFound))]


async def checked_user_update(
    staff: CurrentStaff, user: ManagedUser, user_in: UserUpdate
) -> UserUpdate:
    ensure_can_manage(staff, user_in.requested_role(user.role))
    return user_in


CheckedUserUpdate = Annotated[UserUpdate, Depends(checked_user_update)]


async def get_owned_item(
    session: SessionDep, current_user: CurrentUser, id: uuid.UUID
) -> Item:
    item = await crud.get_item(session=session, item_id=id)
    if item is None:
        raise errors.ItemNotFound()
    if not current_user.is_staff and item.owner_id != current_user.id:
        raise errors.NotEnoughPermissions()
    return item


OwnedItemDep = Annotated[Item, Depends(get_owned_item)]
