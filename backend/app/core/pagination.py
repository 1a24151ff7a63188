"""List pages, newest first: by offset (`skip`) or by keyset (`cursor`, the opaque
position after the previous page, fast at any depth)."""

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, NamedTuple, Protocol, TypeVar

from fastapi import Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from app.core.config import settings


class Position(NamedTuple):
    """Where a page ends: lists sort by (created_at, id), newest first."""

    created_at: datetime
    id: uuid.UUID


class Page(NamedTuple):
    skip: int
    limit: int
    after: Position | None = None


class Listed(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


def next_cursor(rows: Sequence[Listed], page: Page) -> str | None:
    """The cursor of the rows after a full page, else None."""
    if len(rows) < page.limit:
        return None
    position = f"{rows[-1].created_at.isoformat()}|{rows[-1].id}"
    return base64.urlsafe_b64encode(position.encode()).decode()


def decode_cursor(cursor: str) -> Position:
    """The position a cursor holds; ValueError if it holds none."""
    created_at, row_id = base64.urlsafe_b64decode(cursor).decode().split("|")
    position = Position(datetime.fromisoformat(created_at), uuid.UUID(row_id))
    if position.created_at.tzinfo is None:
        raise ValueError("naive datetime")
    return position


async def page_params(
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
) -> Page:
    if cursor is None:
        return Page(skip, limit)
    try:
        return Page(skip, limit, decode_cursor(cursor))
    except ValueError:  # bad base64, UTF-8, shape, date or UUID
        error = {"type": "value_error", "loc": ("query", "cursor")}
        raise RequestValidationError(
            [{**error, "msg": "Invalid cursor", "input": cursor}]
        )


PageModel = TypeVar("PageModel", bound=BaseModel)


def page_of(
    model: type[PageModel], rows: Sequence[Listed], count: int, page: Page
) -> PageModel:
    """The answer for one page: its rows, the total count and the next cursor."""
    # One validation of the whole page (not one per row): pydantic-core reads the rows.
    content = {"data": rows, "count": count, "next_cursor": next_cursor(rows, page)}
    return model.model_validate(content, from_attributes=True)
