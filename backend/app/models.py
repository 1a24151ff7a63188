import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import EmailStr, field_validator
from sqlalchemy import DateTime, Dialect, Index, func
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


class NewPassword(InputModel):
    token: str = Field(max_length=1024)
    new_password: str = Field(min_length=8, max_length=128)


# Users


class UserBase(InputModel):
    email: EmailStr = Field(max_length=255)
    is_active: bool = True
    is_superuser: bool = False
    full_name: str | None = Field(default=None, max_length=255)


class UserCreate(UserBase):
    password: str = Field(min_length=8, max_length=128)


class UserRegister(InputModel):
    email: EmailStr = Field(max_length=255)
    password: str = Field(min_length=8, max_length=128)
    full_name: str | None = Field(default=None, max_length=255)


# In update bodies a field typed without `| None` may be omitted (kept as is)
# but not sent as null: null would reach a NOT NULL column.
class UserUpdate(InputModel):
    email: EmailStr = Field(default=None, max_length=255)
    password: str = Field(default=None, min_length=8, max_length=128)
    full_name: str | None = Field(default=None, max_length=255)
    is_active: bool = Field(default=None)
    is_superuser: bool = Field(default=None)


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
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(
        default_factory=utcnow,
        sa_type=UTCDateTime,
        sa_column_kwargs={"onupdate": utcnow},
    )


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
