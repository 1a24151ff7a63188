import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest
from httpx import AsyncClient, Response
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import settings
from app.models import Item, User
from tests.utils import factories
from tests.utils.api import auth_headers

ITEMS = f"{settings.API_V1_STR}/items/"


def item_url(item_id: uuid.UUID | str) -> str:
    return f"{ITEMS}{item_id}"


async def create_dated_items(
    db: AsyncSession, *, owner: User, count: int, newest: datetime
) -> list[Item]:
    """Items with distinct `created_at`, returned newest first."""
    items = []
    for age in range(count):
        item = await factories.create_item(db, owner=owner, title=f"item-{age}")
        item.created_at = newest - timedelta(minutes=age)
        db.add(item)
        items.append(item)
    await db.commit()
    return items


def assert_validation_error(response_json: dict[str, object], field: str) -> None:
    detail = response_json["detail"]
    assert isinstance(detail, list)
    assert any(error["loc"][-1] == field for error in detail), detail


class TestReadItems:
    async def test_read_items_own_only_newest_first(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
    ) -> None:
        now = datetime.now(UTC)
        own = await create_dated_items(db, owner=user, count=3, newest=now)
        other = await factories.create_user(db)
        await create_dated_items(
            db, owner=other, count=2, newest=now + timedelta(hours=1)
        )

        response = await client.get(ITEMS, headers=user_headers)

        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 3
        assert [entry["id"] for entry in body["data"]] == [str(item.id) for item in own]
        assert {entry["owner_id"] for entry in body["data"]} == {str(user.id)}

    async def test_read_items_public_fields(
        self, client: AsyncClient, item: Item, user_headers: dict[str, str]
    ) -> None:
        response = await client.get(ITEMS, headers=user_headers)

        assert response.status_code == 200
        (entry,) = response.json()["data"]
        assert {"id", "title", "description", "owner_id", "created_at"} <= set(entry)
        assert entry["title"] == item.title
        created_at = datetime.fromisoformat(entry["created_at"])
        assert created_at.utcoffset() is not None

    async def test_read_items_paging_count_is_total(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
    ) -> None:
        own = await create_dated_items(
            db, owner=user, count=5, newest=datetime.now(UTC)
        )

        response = await client.get(
            ITEMS, params={"skip": 1, "limit": 2}, headers=user_headers
        )

        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 5
        assert [entry["id"] for entry in body["data"]] == [
            str(item.id) for item in own[1:3]
        ]

    async def test_read_items_skip_past_end_empty(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
    ) -> None:
        await create_dated_items(db, owner=user, count=2, newest=datetime.now(UTC))

        response = await client.get(ITEMS, params={"skip": 10}, headers=user_headers)

        assert response.status_code == 200
        assert response.json() == {"data": [], "count": 2, "next_cursor": None}

    async def test_read_items_superuser_sees_all(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        superuser: User,
        superuser_headers: dict[str, str],
    ) -> None:
        now = datetime.now(UTC)
        users_items = await create_dated_items(db, owner=user, count=2, newest=now)
        own = await create_dated_items(
            db, owner=superuser, count=1, newest=now + timedelta(hours=1)
        )

        response = await client.get(ITEMS, headers=superuser_headers)

        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 3
        assert [entry["id"] for entry in body["data"]] == [
            str(item.id) for item in own + users_items
        ]

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": 101},
            {"limit": 0},
            {"skip": -1},
            {"skip": "99999999999999999999"},
            {"limit": "abc"},
        ],
    )
    async def test_read_items_bad_paging_422(
        self,
        client: AsyncClient,
        user_headers: dict[str, str],
        params: dict[str, int | str],
    ) -> None:
        response = await client.get(ITEMS, params=params, headers=user_headers)

        assert response.status_code == 422
        assert_validation_error(response.json(), next(iter(params)))

    async def test_read_items_anonymous_401(self, client: AsyncClient) -> None:
        response = await client.get(ITEMS)

        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated"}

    async def test_read_items_invalid_token_401(self, client: AsyncClient) -> None:
        response = await client.get(
            ITEMS, headers={"Authorization": "Bearer not-a-jwt"}
        )

        assert response.status_code == 401
        assert response.json() == {"detail": "Could not validate credentials"}


class TestCreateItem:
    async def test_create_item_owned_by_caller(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
    ) -> None:
        payload = {"title": "Groceries", "description": "Milk, eggs"}

        response = await client.post(ITEMS, json=payload, headers=user_headers)

        assert response.status_code == 200
        body = response.json()
        assert body["title"] == "Groceries"
        assert body["description"] == "Milk, eggs"
        assert body["owner_id"] == str(user.id)
        assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None
        stored = await db.get(Item, uuid.UUID(body["id"]))
        assert stored is not None
        assert stored.owner_id == user.id
        assert stored.title == "Groceries"

    async def test_create_item_without_description(
        self, client: AsyncClient, user_headers: dict[str, str]
    ) -> None:
        response = await client.post(
            ITEMS, json={"title": "Only a title"}, headers=user_headers
        )

        assert response.status_code == 200
        assert response.json()["description"] is None

    async def test_create_item_ignores_mass_assignment(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
    ) -> None:
        other = await factories.create_user(db)
        forged_id = uuid.uuid4()
        payload = {
            "title": "Mine",
            "owner_id": str(other.id),
            "id": str(forged_id),
            "created_at": "2000-01-01T00:00:00+00:00",
        }

        response = await client.post(ITEMS, json=payload, headers=user_headers)

        assert response.status_code == 200
        body = response.json()
        assert body["owner_id"] == str(user.id)
        assert body["id"] != str(forged_id)
        assert datetime.fromisoformat(body["created_at"]).year != 2000
        assert await db.get(Item, forged_id) is None

    async def test_create_item_max_lengths_accepted(
        self, client: AsyncClient, user_headers: dict[str, str]
    ) -> None:
        payload = {"title": "t" * 255, "description": "d" * 255}

        response = await client.post(ITEMS, json=payload, headers=user_headers)

        assert response.status_code == 200
        assert response.json()["title"] == "t" * 255

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"description": "no title"}, "title"),
            ({"title": ""}, "title"),
            ({"title": "t" * 256}, "title"),
            ({"title": "ok", "description": "d" * 256}, "description"),
            ({"title": "nul\x00byte"}, "title"),
            ({"title": "ok", "description": "nul\x00byte"}, "description"),
            ({"title": None}, "title"),
            ({"title": 123}, "title"),
        ],
    )
    async def test_create_item_bad_payload_422(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
        payload: dict[str, object],
        field: str,
    ) -> None:
        response = await client.post(ITEMS, json=payload, headers=user_headers)

        assert response.status_code == 422
        assert_validation_error(response.json(), field)
        listing = await client.get(ITEMS, headers=user_headers)
        assert listing.json()["count"] == 0

    async def test_create_item_not_json_422(
        self, client: AsyncClient, user_headers: dict[str, str]
    ) -> None:
        response = await client.post(
            ITEMS,
            content=b"title=x",
            headers={**user_headers, "Content-Type": "application/json"},
        )

        assert response.status_code == 422

    async def test_create_item_anonymous_401(self, client: AsyncClient) -> None:
        response = await client.post(ITEMS, json={"title": "x"})

        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated"}


class ItemRoute(NamedTuple):
    """One of GET, PUT (with a valid body) and DELETE /items/{id}."""

    method: str
    body: dict[str, str] | None = None

    async def send(
        self, client: AsyncClient, url: str, headers: dict[str, str] | None = None
    ) -> Response:
        return await client.request(self.method, url, json=self.body, headers=headers)


# The access rules in TestItemAccess hold for every route of one item.
ITEM_ROUTES = [
    pytest.param(ItemRoute("GET"), id="read_item"),
    pytest.param(ItemRoute("PUT", {"title": "Hijacked"}), id="update_item"),
    pytest.param(ItemRoute("DELETE"), id="delete_item"),
]


async def assert_item_unchanged(
    client: AsyncClient,
    db: AsyncSession,
    item: Item,
    title: str,
    owner_headers: dict[str, str],
) -> None:
    """The owner still gets the item, and the database still has its old title."""
    response = await client.get(item_url(item.id), headers=owner_headers)
    assert response.status_code == 200
    await db.refresh(item)
    assert item.title == title


@pytest.mark.parametrize("route", ITEM_ROUTES)
class TestItemAccess:
    async def test_item_unknown_404(
        self, client: AsyncClient, route: ItemRoute, user_headers: dict[str, str]
    ) -> None:
        response = await route.send(client, item_url(uuid.uuid4()), user_headers)

        assert response.status_code == 404
        assert response.json() == {"detail": "Item not found"}

    @pytest.mark.parametrize("bad_id", ["not-a-uuid", "123"])
    async def test_item_malformed_id_422(
        self,
        client: AsyncClient,
        route: ItemRoute,
        user_headers: dict[str, str],
        bad_id: str,
    ) -> None:
        response = await route.send(client, item_url(bad_id), user_headers)

        assert response.status_code == 422
        assert_validation_error(response.json(), "id")

    async def test_item_anonymous_401(
        self,
        client: AsyncClient,
        db: AsyncSession,
        route: ItemRoute,
        item: Item,
        user_headers: dict[str, str],
    ) -> None:
        title = item.title

        response = await route.send(client, item_url(item.id))

        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated"}
        await assert_item_unchanged(client, db, item, title, user_headers)

    async def test_item_other_user_403(
        self,
        client: AsyncClient,
        db: AsyncSession,
        route: ItemRoute,
        item: Item,
        user_headers: dict[str, str],
    ) -> None:
        other = await factories.create_user(db)
        title = item.title

        response = await route.send(
            client, item_url(item.id), await auth_headers(db, other)
        )

        assert response.status_code == 403
        assert response.json() == {"detail": "Not enough permissions"}
        await assert_item_unchanged(client, db, item, title, user_headers)


class TestReadItem:
    async def test_read_item_owner(
        self, client: AsyncClient, item: Item, user_headers: dict[str, str]
    ) -> None:
        response = await client.get(item_url(item.id), headers=user_headers)

        assert response.status_code == 200
        body = response.json()
        assert body["id"] == str(item.id)
        assert body["title"] == item.title
        assert body["owner_id"] == str(item.owner_id)

    async def test_read_item_superuser_any(
        self, client: AsyncClient, item: Item, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.get(item_url(item.id), headers=superuser_headers)

        assert response.status_code == 200
        assert response.json()["id"] == str(item.id)


class TestUpdateItem:
    async def test_update_item_owner(
        self,
        client: AsyncClient,
        db: AsyncSession,
        item: Item,
        user_headers: dict[str, str],
    ) -> None:
        payload = {"title": "New title", "description": "New description"}

        response = await client.put(
            item_url(item.id), json=payload, headers=user_headers
        )

        assert response.status_code == 200
        body = response.json()
        assert body["id"] == str(item.id)
        assert body["title"] == "New title"
        assert body["description"] == "New description"
        assert body["owner_id"] == str(item.owner_id)
        await db.refresh(item)
        assert item.title == "New title"

    async def test_update_item_partial_keeps_other_fields(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
    ) -> None:
        item = await factories.create_item(
            db, owner=user, title="Old", description="Keep me"
        )

        response = await client.put(
            item_url(item.id), json={"title": "New"}, headers=user_headers
        )

        assert response.status_code == 200
        body = response.json()
        assert body["title"] == "New"
        assert body["description"] == "Keep me"

        response = await client.put(
            item_url(item.id), json={"description": "Changed"}, headers=user_headers
        )

        assert response.status_code == 200
        assert response.json()["title"] == "New"
        assert response.json()["description"] == "Changed"

    async def test_update_item_null_description_clears(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
    ) -> None:
        item = await factories.create_item(
            db, owner=user, title="T", description="Gone soon"
        )

        response = await client.put(
            item_url(item.id), json={"description": None}, headers=user_headers
        )

        assert response.status_code == 200
        assert response.json()["description"] is None
        assert response.json()["title"] == "T"
        await db.refresh(item)
        assert item.description is None

    async def test_update_item_ignores_owner_and_id(
        self,
        client: AsyncClient,
        db: AsyncSession,
        item: Item,
        user_headers: dict[str, str],
    ) -> None:
        other = await factories.create_user(db)
        payload = {"title": "X", "owner_id": str(other.id), "id": str(uuid.uuid4())}

        response = await client.put(
            item_url(item.id), json=payload, headers=user_headers
        )

        assert response.status_code == 200
        assert response.json()["id"] == str(item.id)
        assert response.json()["owner_id"] == str(item.owner_id)
        assert response.json()["owner_id"] != str(other.id)

    async def test_update_item_superuser_any(
        self, client: AsyncClient, item: Item, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.put(
            item_url(item.id), json={"title": "By admin"}, headers=superuser_headers
        )

        assert response.status_code == 200
        assert response.json()["title"] == "By admin"
        assert response.json()["owner_id"] == str(item.owner_id)

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"title": None}, "title"),
            ({"title": ""}, "title"),
            ({"title": "t" * 256}, "title"),
            ({"description": "d" * 256}, "description"),
            ({"title": "a\x00b"}, "title"),
            ({"description": "a\x00b"}, "description"),
        ],
    )
    async def test_update_item_bad_payload_422(
        self,
        client: AsyncClient,
        db: AsyncSession,
        item: Item,
        user_headers: dict[str, str],
        payload: dict[str, object],
        field: str,
    ) -> None:
        title = item.title

        response = await client.put(
            item_url(item.id), json=payload, headers=user_headers
        )

        assert response.status_code == 422
        assert_validation_error(response.json(), field)
        await assert_item_unchanged(client, db, item, title, user_headers)


class TestDeleteItem:
    async def test_delete_item_owner(
        self,
        client: AsyncClient,
        db: AsyncSession,
        item: Item,
        user_headers: dict[str, str],
    ) -> None:
        item_id = item.id

        response = await client.delete(item_url(item_id), headers=user_headers)

        assert response.status_code == 200
        assert response.json() == {"message": "Item deleted successfully"}
        again = await client.get(item_url(item_id), headers=user_headers)
        assert again.status_code == 404
        assert again.json() == {"detail": "Item not found"}
        db.expunge_all()
        assert await db.get(Item, item_id) is None

    async def test_delete_item_superuser_any(
        self, client: AsyncClient, item: Item, superuser_headers: dict[str, str]
    ) -> None:
        response = await client.delete(item_url(item.id), headers=superuser_headers)

        assert response.status_code == 200
        assert response.json() == {"message": "Item deleted successfully"}
        again = await client.get(item_url(item.id), headers=superuser_headers)
        assert again.status_code == 404


class TestConcurrentUpdates:
    async def test_update_item_parallel_puts_all_succeed(
        self, committing_client: AsyncClient, engine: AsyncEngine
    ) -> None:
        sessions = async_sessionmaker(
            engine, class_=AsyncSession, expire_on_commit=False
        )
        async with sessions() as session:
            owner = await factories.create_user(session)
            item = await factories.create_item(session, owner=owner, title="start")
            headers = await auth_headers(session, owner)
        titles = [f"title-{n}" for n in range(50)]

        results = await asyncio.gather(
            *(
                committing_client.put(
                    item_url(item.id), json={"title": title}, headers=headers
                )
                for title in titles
            ),
            return_exceptions=True,
        )

        # An exception here is what a client would see as a 500.
        outcomes = [
            result.status_code if isinstance(result, Response) else repr(result)
            for result in results
        ]
        assert outcomes == [200] * 50
        assert {
            result.json()["title"] for result in results if isinstance(result, Response)
        } == set(titles)
        async with sessions() as session:
            stored = await session.get(Item, item.id)
            assert stored is not None
            assert stored.title in titles


class TestReadItemsCursor:
    async def test_read_items_cursor_walks_every_item_once(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
    ) -> None:
        items = await create_dated_items(
            db, owner=user, count=5, newest=datetime.now(UTC)
        )
        seen: list[str] = []
        url = f"{ITEMS}?limit=2"
        while True:
            body = (await client.get(url, headers=user_headers)).json()
            assert body["count"] == 5
            seen += [item["id"] for item in body["data"]]
            if body["next_cursor"] is None:
                break
            url = f"{ITEMS}?limit=2&cursor={body['next_cursor']}"
        assert seen == [str(item.id) for item in items]

    async def test_read_items_last_partial_page_has_no_cursor(
        self,
        client: AsyncClient,
        db: AsyncSession,
        user: User,
        user_headers: dict[str, str],
    ) -> None:
        await create_dated_items(db, owner=user, count=3, newest=datetime.now(UTC))
        body = (await client.get(f"{ITEMS}?limit=5", headers=user_headers)).json()
        assert len(body["data"]) == 3
        assert body["next_cursor"] is None

    @pytest.mark.parametrize(
        "cursor",
        [
            "not-base64!",
            "bm90IGEgY3Vyc29y",  # "not a cursor"
            "MjAyNi0wMS0wMVQwMDowMDowMHxub3QtYS11dWlk",  # date|not-a-uuid
            "MjAyNi0wMS0wMVQwMDowMDowMHwwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDA=",  # naive date
            "x" * 201,
        ],
    )
    async def test_read_items_bad_cursor_422(
        self, client: AsyncClient, user_headers: dict[str, str], cursor: str
    ) -> None:
        response = await client.get(f"{ITEMS}?cursor={cursor}", headers=user_headers)
        assert response.status_code == 422
        assert_validation_error(response.json(), "cursor")
