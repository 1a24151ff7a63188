from fastapi import APIRouter

from app import crud
from app.api import errors
from app.api.deps import CurrentUser, OwnedItemDep, PageDep, SessionDep
from app.api.errors import AUTHENTICATED, BODY, document
from app.core.pagination import page_of
from app.models import Item, ItemCreate, ItemPublic, ItemsPublic, ItemUpdate, Message

# Included with the current-user dependency (app/api/main.py).
router = APIRouter(prefix="/items", tags=["items"])

OWNED_ITEM: tuple[errors.Error, ...] = (
    *AUTHENTICATED,
    errors.ItemNotFound,
    errors.NotEnoughPermissions,
)


@router.get("/", response_model=ItemsPublic, responses=document(AUTHENTICATED))
async def read_items(
    session: SessionDep, current_user: CurrentUser, page: PageDep
) -> ItemsPublic:
    """List your items, newest first (admins and superadmins see everyone's)."""
    owner_id = None if current_user.is_staff else current_user.id
    items, count = await crud.list_items(session=session, owner_id=owner_id, page=page)
    return page_of(ItemsPublic, items, count, page)


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
