"""GET /metrics in process (the default registry): requests by route template,
logins, rate-limit refusals, the job queue. Across gunicorn workers:
tests/test_live_server.py."""

import uuid

import pytest
from httpx import AsyncClient
from sqlmodel.ext.asyncio.session import AsyncSession

from app import jobs
from app.core.config import settings
from app.models import Item, User
from tests.utils import factories
from tests.utils.api import API, login, probe_route
from tests.utils.metrics import Samples, label_values, parse, value

ITEM_ROUTE = f"{API}/items/{{id}}"


async def scrape(client: AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def requests(samples: Samples, route: str, status: str, method: str = "GET") -> float:
    labels = {"method": method, "route": route, "status": status}
    return value(samples, "http_requests_total", **labels)


def timed(samples: Samples, route: str, status: str) -> float:
    labels = {"method": "GET", "route": route, "status": status}
    return value(samples, "http_request_duration_seconds_count", **labels)


async def test_requests_counted_by_route_template(
    client: AsyncClient, user_headers: dict[str, str], item: Item
) -> None:
    before = await scrape(client)
    for _ in range(3):
        found = await client.get(f"{API}/items/{item.id}", headers=user_headers)
        assert found.status_code == 200
    missing = await client.get(f"{API}/items/{uuid.uuid4()}", headers=user_headers)
    assert missing.status_code == 404
    text = (await client.get("/metrics")).text
    after = parse(text)

    for status, sent in (("200", 3), ("404", 1)):
        assert (
            requests(after, ITEM_ROUTE, status) - requests(before, ITEM_ROUTE, status)
            == sent
        )
        assert (
            timed(after, ITEM_ROUTE, status) - timed(before, ITEM_ROUTE, status) == sent
        )
    assert str(item.id) not in text  # ids never become labels


async def test_unmatched_paths_share_one_label(client: AsyncClient) -> None:
    before = await scrape(client)
    probes = [f"/wp-admin/{uuid.uuid4().hex}.php" for _ in range(5)]
    for path in probes:
        assert (await client.get(path)).status_code == 404
    text = (await client.get("/metrics")).text
    after = parse(text)

    assert (
        requests(after, "unmatched", "404") - requests(before, "unmatched", "404") == 5
    )
    assert label_values(after, "route") - label_values(before, "route") <= {"unmatched"}
    assert not any(path in text for path in probes)


async def test_login_successes_and_failures_by_reason(
    client: AsyncClient, db: AsyncSession, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    inactive = await factories.create_user(db, is_active=False)
    unverified = await factories.create_user(db, verified=False)
    monkeypatch.setattr(settings, "REQUIRE_EMAIL_VERIFICATION", True)
    password = factories.DEFAULT_PASSWORD
    before = await scrape(client)

    assert (await login(client, user.email, password)).status_code == 200
    assert (await login(client, user.email, "wrong-password")).status_code == 400
    assert (await login(client, "nobody@example.com", password)).status_code == 400
    assert (await login(client, inactive.email, password)).status_code == 400
    assert (await login(client, unverified.email, password)).status_code == 403
    after = await scrape(client)

    def failures(samples: Samples, reason: str) -> float:
        return value(samples, "login_failures_total", reason=reason)

    assert (
        value(after, "login_successes_total") - value(before, "login_successes_total")
        == 1
    )
    for reason, failed in (("bad_credentials", 2), ("inactive", 1), ("unverified", 1)):
        assert failures(after, reason) - failures(before, reason) == failed


async def test_rate_limit_refusals_by_rule(
    client: AsyncClient, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "REDIS_URL", None)
    monkeypatch.setattr(settings, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 2)
    rule = "login:account-client"
    before = await scrape(client)

    codes = [
        (await login(client, user.email, "wrong-password")).status_code
        for _ in range(4)
    ]
    assert codes == [400, 400, 429, 429]
    after = await scrape(client)

    refusals = "rate_limit_refusals_total"
    assert value(after, refusals, rule=rule) - value(before, refusals, rule=rule) == 2
    rate_limited = value(after, "login_failures_total", reason="rate_limited")
    assert (
        rate_limited - value(before, "login_failures_total", reason="rate_limited") == 2
    )


@pytest.mark.queue
async def test_job_queue_depth_by_status(
    client: AsyncClient, db: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "in_process", False)
    before = await scrape(client)
    for _ in range(2):
        await jobs.defer(db, jobs.send_test_email, email="queued@example.com")
    await db.commit()
    after = await scrape(client)

    todo = value(after, "job_queue_jobs", status="todo")
    assert todo - value(before, "job_queue_jobs", status="todo") == 2
    assert value(after, "job_queue_jobs", status="doing") == 0


async def test_no_job_queue_without_one(client: AsyncClient) -> None:
    """On SQLite (and in these tests' in-process mode) jobs have no queue."""
    samples = await scrape(client)

    assert not any(name == "job_queue_jobs" for name, _ in samples)


@pytest.mark.slow
def test_metrics_switched_off() -> None:
    assert probe_route("GET", "/metrics", METRICS_ENABLED="false")["status"] == 404
    assert probe_route("GET", "/metrics", METRICS_ENABLED="true")["status"] == 200
