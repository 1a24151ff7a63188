from fastapi import APIRouter

from app import crud
from app.api.deps import CurrentUser, OwnedItemDep, PageDep, SessionDep, next_cursor
from app.api.responses import AUTHENTICATED, BODY, Error, document
from app.models import Item, ItemCreate, ItemPublic, ItemsPublic, ItemUpdate, Message

router = APIRouter(prefix="/items", tags=["items"])

OWNED_ITEM = (
    *AUTHENTICATED,
    Error(404, "Item not found"),
    Error(403, "Not enough permissions"),
)


@router.get("/", response_model=ItemsPublic, responses=document(AUTHENTICATED))
async def read_items(
    session: SessionDep, current_user: CurrentUser, page: PageDep
) -> ItemsPublic:
    """List your items, newest first (admins and superadmins see everyone's)."""
    owner_id = None if current_user.is_staff else current_user.id
    items, count = await crud.list_items(session=session, owner_id=owner_id, page=page)
    # One validation of the whole page (not one per row): pydantic-core reads the rows.
    page_content = {
        "data": items,
        "count": count,
        "next_cursor": next_cursor(items, page),
    }
    return ItemsPublic.model_validate(page_content, from_attributes=True)


@router.get("/{id}", response_model=ItemPublic, responses=document(OWNED_ITEM))
async def read_item(item: OwnedItemDep) -> Item:
    """Get an item by id."""
    return item


@router.post("/", response_model=ItemPublic, responses=document(AUTHENTICATED, BODY))
async def create_item(
    session: SessionDep, current_user: CurrentUser, item_in: ItemCreate
) -> Item:
    """Create an item owned by you."""
    return await crud.create_item(
        session=session, item_in=item_in, owner_id=current_user.id
    )


@router.put("/{id}", response_model=ItemPublic, responses=document(OWNED_ITEM, BODY))
async def update_item(
    session: SessionDep, item: OwnedItemDep, item_in: ItemUpdate
) -> Item:
    """Update an item."""
    return await crud.update_item(session=session, item=item, item_in=item_in)


@router.delete("/{id}", responses=document(OWNED_ITEM))
async def delete_item(session: SessionDep, item: OwnedItemDep) -> Message:
    """Delete an item."""
    await crud.delete_item(session=session, item=item)
    return Message(message="Item deleted successfully")
