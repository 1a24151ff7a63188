import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import EmailStr, field_validator, model_validator
from sqlalchemy import JSON, DateTime, Dialect, Enum, Index, func
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel, col

# Predictable constraint and index names keep Alembic diffs stable.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use timezone-aware UTC datetimes")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(
        self, value: datetime | None, dialect: Dialect
    ) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class InputModel(SQLModel):
    """Base of request bodies: PostgreSQL cannot store NUL characters, so refuse them here."""

    @field_validator("*", mode="after")
    @classmethod
    def _reject_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class Message(SQLModel):
    message: str


class Token(SQLModel):
    access_token: str
    token_type: str = "bearer"
    # Absent only from tokens that belong to no session (none are issued today).
    refresh_token: str | None = Field(
        default=None,
        description="Single use: trade it at /login/refresh-token for a new pair.",
        schema_extra={"examples": ["Vb3kq0lJ8r7J5bZ0Ffx2m2Vw3V0sS9kq8F1hVfQ2b3c"]},
    )
    expires_in: int | None = Field(
        default=None,
        description="Seconds until the access token expires.",
        schema_extra={"examples": [1800]},
    )


class RefreshRequest(InputModel):
    refresh_token: str = Field(
        max_length=512,
        schema_extra={"examples": ["Vb3kq0lJ8r7J5bZ0Ffx2m2Vw3V0sS9kq8F1hVfQ2b3c"]},
    )


class NewPassword(InputModel):
    token: str = Field(max_length=1024)
    new_password: str = Field(min_length=8, max_length=128)


class EmailVerification(InputModel):
    token: str = Field(
        max_length=1024,
        description="The `token` parameter of the emailed verification link.",
        schema_extra={
            "examples": ["eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOi..."]
        },
    )


class EmailAddress(InputModel):
    email: EmailStr = Field(
        max_length=255, schema_extra={"examples": ["ada@example.com"]}
    )


# Users


class Role(StrEnum):
    """superadmin: everything; admin: ordinary users and all items; user: their own data."""

    user = "user"
    admin = "admin"
    superadmin = "superadmin"


class RoleInput(InputModel):
    """`role` and the contract's `is_superuser` (true exactly for superadmin) in one body."""

    role: Role = Field(default=None)
    is_superuser: bool = Field(default=None)

    @model_validator(mode="after")
    def _role_agrees_with_is_superuser(self) -> Self:
        if self.role is not None and self.is_superuser is not None:
            if (self.role == Role.superadmin) != self.is_superuser:
                raise ValueError("is_superuser must be true exactly for superadmin")
        return self

    def requested_role(self, current: Role = Role.user) -> Role:
        """The role these fields ask for, starting from `current`."""
        if self.role is not None:
            return self.role
        if self.is_superuser:
            return Role.superadmin
        if self.is_superuser is False and current == Role.superadmin:
            return Role.user
        return current


class UserBase(InputModel):
    email: EmailStr = Field(max_length=255)
    is_active: bool = True
    full_name: str | None = Field(default=None, max_length=255)


class UserCreate(UserBase, RoleInput):
    password: str = Field(min_length=8, max_length=128)


class UserRegister(InputModel):
    email: EmailStr = Field(max_length=255)
    password: str = Field(min_length=8, max_length=128)
    full_name: str | None = Field(default=None, max_length=255)


# In update bodies a field typed without `| None` may be omitted (kept as is)
# but not sent as null: null would reach a NOT NULL column.
class UserUpdate(RoleInput):
    email: EmailStr = Field(default=None, max_length=255)
    password: str = Field(default=None, min_length=8, max_length=128)
    full_name: str | None = Field(default=None, max_length=255)
    is_active: bool = Field(default=None)


class UserUpdateMe(InputModel):
    full_name: str | None = Field(default=None, max_length=255)
    email: EmailStr = Field(default=None, max_length=255)


class UpdatePassword(InputModel):
    current_password: str = Field(min_length=8, max_length=128)
    new_password: str = Field(min_length=8, max_length=128)


class PrivateUserCreate(InputModel):
    email: EmailStr = Field(max_length=255)
    password: str = Field(min_length=8, max_length=128)
    full_name: str = Field(max_length=255)
    is_verified: bool = False


class User(UserBase, table=True):
    __tablename__ = "users"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    hashed_password: str = Field(max_length=255)
    role: Role = Field(
        default=Role.user,
        sa_type=Enum(
            Role,
            name="role",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda roles: [role.value for role in roles],
        ),
    )
    email_verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(
        default_factory=utcnow,
        sa_type=UTCDateTime,
        sa_column_kwargs={"onupdate": utcnow},
    )

    @property
    def is_superuser(self) -> bool:
        return self.role == Role.superadmin

    @property
    def is_staff(self) -> bool:
        """Admins and superadmins: they manage users and every item."""
        return self.role in (Role.admin, Role.superadmin)


# Emails are unique whatever their case; lookups use lower(email) to hit this index.
Index("uq_users_email_lower", func.lower(col(User.email)), unique=True)
# The user list sorts by newest first.
Index("ix_users_created_at_id", col(User.created_at), col(User.id))


class UserPublic(SQLModel):
    id: uuid.UUID
    email: str
    is_active: bool
    is_superuser: bool
    full_name: str | None = None
    created_at: datetime | None = None
    role: Role = Field(schema_extra={"examples": ["user"]})
    email_verified_at: datetime | None = Field(
        default=None, schema_extra={"examples": ["2026-11-22T08:00:00Z"]}
    )


class UsersPublic(SQLModel):
    data: list[UserPublic]
    count: int
    next_cursor: str | None = None


# Items


class ItemBase(InputModel):
    title: str = Field(min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=255)


class ItemCreate(ItemBase):
    pass


class ItemUpdate(InputModel):
    title: str = Field(default=None, min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=255)


class Item(ItemBase, table=True):
    __tablename__ = "items"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(
        default_factory=utcnow,
        sa_type=UTCDateTime,
        sa_column_kwargs={"onupdate": utcnow},
    )


# A user's items, newest first: the filter and the sort in one index (it also
# serves the foreign key). The superuser's list of all items sorts on the second.
Index(
    "ix_items_owner_id_created_at_id",
    col(Item.owner_id),
    col(Item.created_at),
    col(Item.id),
)
Index("ix_items_created_at_id", col(Item.created_at), col(Item.id))


class ItemPublic(SQLModel):
    id: uuid.UUID
    title: str
    description: str | None = None
    owner_id: uuid.UUID
    created_at: datetime | None = None


class ItemsPublic(SQLModel):
    data: list[ItemPublic]
    count: int
    next_cursor: str | None = None


# Sessions: one row per login; its refresh tokens rotate, the used ones are kept
# so that replaying one is recognised (and ends the session).


class UserSession(SQLModel, table=True):
    __tablename__ = "user_sessions"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    client_address: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=255)


class RefreshToken(SQLModel, table=True):
    __tablename__ = "refresh_tokens"

    token_hash: str = Field(primary_key=True, max_length=64)  # SHA-256, hex
    session_id: uuid.UUID = Field(
        foreign_key="user_sessions.id", ondelete="CASCADE", index=True
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SessionPublic(SQLModel):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    client_address: str | None = Field(schema_extra={"examples": ["203.0.113.7"]})
    user_agent: str | None = Field(
        schema_extra={"examples": ["Mozilla/5.0 (X11; Linux x86_64)"]}
    )
    current: bool = Field(description="The session of the token making this request.")


class SessionsPublic(SQLModel):
    data: list[SessionPublic]
    count: int


# Rate limiting: one row per counted event (a failed login, a recovery email)
# under a key such as "login:account:<email>"; windows slide over attempted_at.


class AuthAttempt(SQLModel, table=True):
    __tablename__ = "auth_attempts"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=320)
    attempted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


Index(
    "ix_auth_attempts_key_attempted_at",
    col(AuthAttempt.key),
    col(AuthAttempt.attempted_at),
)
Index("ix_auth_attempts_attempted_at", col(AuthAttempt.attempted_at))


# Supabase token exchange (shapes fixed by the contract)


class AuthUser(SQLModel):
    id: uuid.UUID
    email: str


class SupabaseExchange(SQLModel):
    message: str
    token: str
    user: AuthUser
    expires_at: datetime
    refresh_token: str
    expires_in: int


# Audit trail: one row per security event, written in the transaction of the
# change it records (a failed login in one of its own).


class AuditAction(StrEnum):
    login_succeeded = "login_succeeded"
    login_failed = "login_failed"  # details: reason, method
    logout = "logout"
    refresh_reuse_detected = "refresh_reuse_detected"
    password_changed = "password_changed"
    password_reset = "password_reset"
    email_changed = "email_changed"
    email_verified = "email_verified"
    role_changed = "role_changed"
    user_activated = "user_activated"
    user_deactivated = "user_deactivated"
    user_deleted = "user_deleted"
    session_revoked = "session_revoked"
    supabase_exchange = "supabase_exchange"


class LoginFailure(StrEnum):
    """Why a login failed (`details.reason` of a login_failed event)."""

    unknown_user = "unknown_user"
    wrong_password = "wrong_password"
    inactive = "inactive"
    unverified = "unverified"
    rate_limited = "rate_limited"  # this address, for the account or for all
    locked = "locked"  # the account, from every address not signed in from before
    provider_token_rejected = "provider_token_rejected"


def _string_enum(enum: type[StrEnum], length: int) -> Enum:
    # No CHECK constraint: a value added to the enum later would need a migration
    # that autogenerate does not notice, and inserts would fail until then.
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [member.value for member in members],
    )


AuditDetails = dict[str, str | bool | None]


class AuditContext(SQLModel):
    """Where a request came from, as its audit events record it."""

    client_address: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=255)
    request_id: str | None = Field(default=None, max_length=128)


class AuditEvent(AuditContext, table=True):
    __tablename__ = "audit_events"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    action: AuditAction = Field(sa_type=_string_enum(AuditAction, 32))
    # Plain ids, no foreign keys: the history outlives deleted users.
    actor_id: uuid.UUID | None = None
    target_id: uuid.UUID | None = None
    # The target's role when it happened: admins read ordinary users' events only.
    target_role: Role | None = Field(default=None, sa_type=_string_enum(Role, 16))
    details: AuditDetails = Field(default_factory=dict, sa_type=JSON)

    @classmethod
    def about(
        cls,
        target: User | None,
        action: AuditAction,
        *,
        context: AuditContext,
        actor_id: uuid.UUID | None,
        details: AuditDetails | None = None,
    ) -> Self:
        """An event about `target` (None: no account), with its role now."""
        return cls.model_validate(
            context,
            update={
                "action": action,
                "actor_id": actor_id,
                "target_id": target.id if target else None,
                "target_role": target.role if target else None,
                "details": details or {},
            },
        )


# Newest first, alone (and the retention's cutoff) or within each filter.
Index("ix_audit_events_created_at_id", col(AuditEvent.created_at), col(AuditEvent.id))
Index(
    "ix_audit_events_target_role_created_at_id",
    col(AuditEvent.target_role),
    col(AuditEvent.created_at),
    col(AuditEvent.id),
)
Index(
    "ix_audit_events_action_created_at_id",
    col(AuditEvent.action),
    col(AuditEvent.created_at),
    col(AuditEvent.id),
)
Index(
    "ix_audit_events_actor_id_created_at_id",
    col(AuditEvent.actor_id),
    col(AuditEvent.created_at),
    col(AuditEvent.id),
)
Index(
    "ix_audit_events_target_id_created_at_id",
    col(AuditEvent.target_id),
    col(AuditEvent.created_at),
    col(AuditEvent.id),
)


class AuditEventPublic(SQLModel):
    id: uuid.UUID
    created_at: datetime
    action: AuditAction = Field(schema_extra={"examples": ["login_failed"]})
    actor_id: uuid.UUID | None = Field(description="Who did it (none: unknown).")
    target_id: uuid.UUID | None = Field(description="The account it concerns.")
    target_role: Role | None = Field(description="The target's role at the time.")
    client_address: str | None = Field(schema_extra={"examples": ["203.0.113.7"]})
    user_agent: str | None = Field(
        schema_extra={"examples": ["Mozilla/5.0 (X11; Linux x86_64)"]}
    )
    request_id: str | None = Field(
        schema_extra={"examples": ["4f1c0e2a9b3d4c5e8f7a6b5c4d3e2f1a"]}
    )
    details: AuditDetails = Field(
        schema_extra={"examples": [{"reason": "wrong_password", "method": "password"}]}
    )


class AuditEventsPublic(SQLModel):
    data: list[AuditEventPublic]
    count: int
    next_cursor: str | None = None


class JobCounts(SQLModel):
    """Background jobs by status (procrastinate's statuses)."""

    todo: int = Field(default=0, schema_extra={"examples": [2]})
    doing: int = Field(default=0, schema_extra={"examples": [1]})
    succeeded: int = Field(default=0, schema_extra={"examples": [5120]})
    failed: int = Field(default=0, schema_extra={"examples": [1]})
    cancelled: int = 0
    aborted: int = 0
    # True without PostgreSQL: jobs run in the API's process, none are counted.
    in_process: bool = Field(default=False, schema_extra={"examples": [False]})


class AuthMe(SQLModel):
    user: AuthUser
