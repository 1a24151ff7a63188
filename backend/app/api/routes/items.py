from fastapi import APIRouter

from app import crud
from app.api.deps import CurrentUser, OwnedItemDep, PageDep, SessionDep, next_cursor
from app.models import Item, ItemCreate, ItemPublic, ItemsPublic, ItemUpdate, Message

router = APIRouter(prefix="/items", tags=["items"])


@router.get("/", response_model=ItemsPublic)
async def read_items(
    session: SessionDep, current_user: CurrentUser, page: PageDep
) -> ItemsPublic:
    """List your items, newest first (a superuser sees everyone's)."""
    owner_id = None if current_user.is_superuser else current_user.id
    items, count = await crud.list_items(session=session, owner_id=owner_id, page=page)
    # One validation of the whole page (not one per row): pydantic-core reads the rows.
    page_content = {
        "data": items,
        "count": count,
        "next_cursor": next_cursor(items, page),
    }
    return ItemsPublic.model_validate(page_content, from_attributes=True)


@router.get("/{id}", response_model=ItemPublic)
async def read_item(item: OwnedItemDep) -> Item:
    """Get an item by id."""
    return item


@router.post("/", response_model=ItemPublic)
async def create_item(
    session: SessionDep, current_user: CurrentUser, item_in: ItemCreate
) -> Item:
    """Create an item owned by you."""
    return await crud.create_item(
        session=session, item_in=item_in, owner_id=current_user.id
    )


@router.put("/{id}", response_model=ItemPublic)
async def update_item(
    session: SessionDep, item: OwnedItemDep, item_in: ItemUpdate
) -> Item:
    """Update an item."""
    return await crud.update_item(session=session, item=item, item_in=item_in)


@router.delete("/{id}")
async def delete_item(session: SessionDep, item: OwnedItemDep) -> Message:
    """Delete an item."""
    await crud.delete_item(session=session, item=item)
    return Message(message="Item deleted successfully")
