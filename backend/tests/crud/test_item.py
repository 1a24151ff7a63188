import uuid
from datetime import UTC, datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession

from app import crud
from app.core.pagination import Page, Position
from app.models import Item, ItemCreate, ItemUpdate, User
from tests.utils import factories


async def test_create_item_belongs_to_owner(db: AsyncSession, user: User) -> None:
    item = await crud.create_item(
        session=db, item_in=ItemCreate(title="Title"), owner_id=user.id
    )
    assert (item.owner_id, item.title, item.description) == (user.id, "Title", None)


async def test_list_items_of_owner_newest_first(db: AsyncSession, user: User) -> None:
    other = await factories.create_user(db)
    await factories.create_item(db, owner=other)
    now = datetime.now(UTC)
    items = [await factories.create_item(db, owner=user) for _ in range(3)]
    for age, item in enumerate(items):
        item.created_at = now - timedelta(seconds=age)
        db.add(item)
    await db.commit()

    own, own_count = await crud.list_items(
        session=db, owner_id=user.id, page=Page(skip=0, limit=2)
    )
    assert own_count == 3
    assert [i.id for i in own] == [items[0].id, items[1].id]
    _, all_count = await crud.list_items(
        session=db, owner_id=None, page=Page(skip=0, limit=100)
    )
    assert all_count == 4


async def test_update_item_keeps_unset_fields(db: AsyncSession, user: User) -> None:
    item = await factories.create_item(db, owner=user, title="Old", description="Kept")
    updated = await crud.update_item(
        session=db, item=item, item_in=ItemUpdate(title="New")
    )
    assert (updated.title, updated.description) == ("New", "Kept")


async def test_delete_item(db: AsyncSession, item: Item) -> None:
    await crud.delete_item(session=db, item=item)
    db.expunge_all()
    assert await crud.get_item(session=db, item_id=item.id) is None


async def test_list_items_after_position_continues_newest_first(
    db: AsyncSession, user: User
) -> None:
    created_at = datetime.now(UTC)
    # Equal timestamps: the id breaks the tie, so no row is skipped or repeated.
    items = [await factories.create_item(db, owner=user) for _ in range(5)]
    for item in items:
        item.created_at = created_at
    await db.commit()
    expected = sorted(items, key=lambda item: item.id, reverse=True)

    seen: list[uuid.UUID] = []
    after = None
    while True:
        page, count = await crud.list_items(
            session=db, owner_id=user.id, page=Page(skip=0, limit=2, after=after)
        )
        assert count == 5
        if not page:
            break
        seen += [row.id for row in page]
        after = Position(page[-1].created_at, page[-1].id)
    assert seen == [i.id for i in expected]


async def test_list_items_total_beside_empty_pages(
    db: AsyncSession, user: User
) -> None:
    # The total usually comes with the page's rows; these pages have none.
    assert await crud.list_items(
        session=db, owner_id=user.id, page=Page(skip=0, limit=10)
    ) == ([], 0)
    await factories.create_item(db, owner=user)
    await factories.create_item(db, owner=user)
    past_the_end = await crud.list_items(
        session=db, owner_id=user.id, page=Page(skip=5, limit=10)
    )
    assert past_the_end == ([], 2)
