import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import OAuth2PasswordBearer
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.background import BackgroundTask

from app import crud, emails
from app.core import ratelimit, security
from app.core.config import settings
from app.core.db import get_db
from app.models import Item, Role, Token, User, UserCreate, UserUpdate

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


not_enough_privileges = HTTPException(
    status_code=status.HTTP_403_FORBIDDEN,
    detail="The user doesn't have enough privileges",
)


async def get_access_claims(token: TokenDep) -> security.TokenClaims:
    claims = security.decode_token(token, token_type="access")
    if claims is None or claims.session_id is None:
        raise credentials_exception
    return claims


AccessClaims = Annotated[security.TokenClaims, Depends(get_access_claims)]


async def get_current_user(session: SessionDep, claims: AccessClaims) -> User:
    assert claims.session_id is not None
    user = await crud.get_active_user(
        session=session, user_id=claims.user_id, session_id=claims.session_id
    )
    if user is None:  # deleted, or the token's session ended
        raise credentials_exception
    if not user.is_active:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST, detail="Inactive user"
        )
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_current_session_id(
    claims: AccessClaims, _current_user: CurrentUser
) -> uuid.UUID:
    """The session of the request's access token (checked live by CurrentUser)."""
    assert claims.session_id is not None
    return claims.session_id


CurrentSessionId = Annotated[uuid.UUID, Depends(get_current_session_id)]

# Dependencies are `async def` even without I/O: FastAPI runs plain `def` ones
# in its thread pool, a thread hop on every request.

# Authorization: one dependency per rule.
# - superadmin: everything; CurrentSuperuser guards what only it may do.
# - admin: ordinary users and every item (CurrentStaff, manageable_user,
#   assignable roles), never admins or superadmins.
# - user: their own account and items.


async def get_current_active_superuser(current_user: CurrentUser) -> User:
    if not current_user.is_superuser:
        raise not_enough_privileges
    return current_user


CurrentSuperuser = Annotated[User, Depends(get_current_active_superuser)]


async def get_current_staff(current_user: CurrentUser) -> User:
    if not current_user.is_staff:
        raise not_enough_privileges
    return current_user


CurrentStaff = Annotated[User, Depends(get_current_staff)]

only_superadmin_manages_staff = HTTPException(
    status_code=status.HTTP_403_FORBIDDEN,
    detail="Only a superadmin can create, change or delete admins and superadmins",
)


def ensure_can_manage(actor: User, role: Role) -> None:
    """Admins manage ordinary users only; superadmins manage everyone."""
    if not actor.is_superuser and role != Role.user:
        raise only_superadmin_manages_staff


async def checked_user_create(staff: CurrentStaff, user_in: UserCreate) -> UserCreate:
    ensure_can_manage(staff, user_in.requested_role())
    return user_in


CheckedUserCreate = Annotated[UserCreate, Depends(checked_user_create)]


async def get_managed_user(
    user_id: uuid.UUID, session: SessionDep, staff: CurrentStaff
) -> User:
    """The user `user_id`, if the caller may manage them."""
    user = await crud.get_user(session=session, user_id=user_id)
    if user is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail="The user with this id does not exist in the system",
        )
    ensure_can_manage(staff, user.role)
    return user


ManagedUser = Annotated[User, Depends(get_managed_user)]


async def checked_user_update(
    staff: CurrentStaff, user: ManagedUser, user_in: UserUpdate
) -> UserUpdate:
    ensure_can_manage(staff, user_in.requested_role(user.role))
    return user_in


CheckedUserUpdate = Annotated[UserUpdate, Depends(checked_user_update)]


async def get_client_address(request: Request) -> str:
    """The client's IP (behind the proxy, uvicorn takes it from X-Forwarded-For,
    trusted only from FORWARDED_ALLOW_IPS)."""
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(get_client_address)]


def ensure_may_log_in(user: User) -> None:
    """The account rules for opening a session, whatever proved the identity."""
    if not user.is_active:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST, detail="Inactive user"
        )
    if settings.REQUIRE_EMAIL_VERIFICATION and user.email_verified_at is None:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="Email not verified: use the link we sent, or ask for a new one",
        )


class TokenIssuer:
    """Opens a session for a user who just proved who they are (password, provider
    token) and answers with its tokens."""

    def __init__(
        self, request: Request, session: SessionDep, client_address: ClientAddress
    ) -> None:
        self.session = session
        self.client_address = client_address
        self.user_agent = request.headers.get("user-agent")

    async def __call__(self, user: User) -> Token:
        ensure_may_log_in(user)
        user_session, refresh_token = await crud.create_session(
            session=self.session,
            user=user,
            client_address=self.client_address,
            user_agent=self.user_agent,
        )
        return access_token_response(user, user_session.id, refresh_token)


def access_token_response(
    user: User, session_id: uuid.UUID, refresh_token: str
) -> Token:
    lifetime = settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60
    return Token(
        access_token=security.create_access_token(user.id, session_id),
        refresh_token=refresh_token,
        expires_in=lifetime,
    )


IssueTokens = Annotated[TokenIssuer, Depends()]


async def get_owned_item(
    session: SessionDep, current_user: CurrentUser, id: uuid.UUID
) -> Item:
    item = await crud.get_item(session=session, item_id=id)
    if item is None:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND, detail="Item not found"
        )
    if not current_user.is_staff and item.owner_id != current_user.id:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN, detail="Not enough permissions"
        )
    return item


OwnedItemDep = Annotated[Item, Depends(get_owned_item)]


def next_cursor(rows: Sequence[Any], page: crud.Page) -> str | None:
    """An opaque cursor for the rows (with `created_at` and `id`) after a full page
    (newest first), else None."""
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


async def get_rate_limiter(session: SessionDep) -> ratelimit.RateLimiter:
    return ratelimit.rate_limiter_for(session)


RateLimiterDep = Annotated[ratelimit.RateLimiter, Depends(get_rate_limiter)]


class PasswordAttempts:
    """Password checks (login, password change). Each check counts as a failure
    before the password is hashed, so neither a blocked client nor a burst of
    parallel guesses gets more checks than the limits; a correct password takes
    its counts back.

    Lockout an attacker cannot aim: failures block the failing address for that
    account, not the account. Only when the account fails from everywhere
    together (many addresses) are unknown addresses refused too; an address that
    signed in to the account before still gets through. The owner is emailed
    once per window while their account refuses logins."""

    def __init__(
        self,
        session: SessionDep,
        limiter: RateLimiterDep,
        client_address: ClientAddress,
    ) -> None:
        self.session = session
        self.limiter = limiter
        self.client_address = client_address

    async def start(self, email: str) -> list[ratelimit.Counted]:
        account = email.lower()
        per_account_client, per_account, per_client = ratelimit.login_limits(
            account, self.client_address
        )
        try:
            counted = await ratelimit.attempt_all(
                self.limiter, [per_account_client, per_client]
            )
        except ratelimit.TooManyAttempts as refused:
            if refused.rule == per_account_client[0]:
                refused.background = await self._owner_alert(account)
            raise
        try:
            counted += await ratelimit.attempt_all(self.limiter, [per_account])
        except ratelimit.TooManyAttempts as refused:
            if not await crud.has_signed_in_from(
                session=self.session, email=account, client_address=self.client_address
            ):
                await ratelimit.forgive_all(self.limiter, counted)
                refused.background = await self._owner_alert(account)
                raise
        return counted

    async def succeeded(self, counted: list[ratelimit.Counted]) -> None:
        this_address_for_account, *others = counted
        await self.limiter.reset(
            this_address_for_account.rule, this_address_for_account.key
        )
        await ratelimit.forgive_all(self.limiter, others)

    async def _owner_alert(self, account: str) -> BackgroundTask | None:
        """The email to the owner of `account`, unless sent in this window already."""
        try:
            await self.limiter.attempt(ratelimit.login_alert_rule(), account)
        except ratelimit.TooManyAttempts:
            return None
        user = await crud.get_user_by_email(session=self.session, email=account)
        if user is None:
            return None
        return BackgroundTask(
            emails.send_email, emails.login_attempts_email(user.email)
        )


PasswordAttemptsDep = Annotated[PasswordAttempts, Depends()]


class EmailRequests:
    """Requests that send an email (recovery, verification, email change), limited
    per target address (a cooldown per kind of email, an hourly cap), per target
    address from one client (so that no client can use up another's), and per
    client, whether or not the address is registered."""

    def __init__(self, limiter: RateLimiterDep, client_address: ClientAddress) -> None:
        self.limiter = limiter
        self.client_address = client_address

    async def count(self, purpose: ratelimit.EmailPurpose, recipient: str) -> None:
        """Count one request for an email of kind `purpose` (429 beyond the limits)."""
        limits = ratelimit.email_request_limits(
            purpose, recipient.lower(), self.client_address
        )
        await ratelimit.attempt_all(self.limiter, limits)


EmailRequestsDep = Annotated[EmailRequests, Depends()]


async def count_signup(limiter: RateLimiterDep, client_address: ClientAddress) -> None:
    """Sign-ups per client address (429 beyond the limit), counted before the
    password is hashed: a script cannot burn CPU or mail strangers without limit."""
    await ratelimit.attempt_all(limiter, [ratelimit.signup_limit(client_address)])
