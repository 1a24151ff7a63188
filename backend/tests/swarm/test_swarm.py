"""deploy/swarm/stack.yml on a real single-node swarm, under a steady write
load through Traefik: a rolling update, an update that fails its health check
and rolls back by itself, a replica killed. Their numbers are printed at the
end of the run ("docker swarm")."""

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.utils.compose import SUPERUSER
from tests.utils.servers import live_login, wait_until
from tests.utils.swarm import ADMINER, HEALTH, HTTPS, IMAGE, NAME, NUMBERS, Swarm
from tests.utils.write_load import Write, WriteLoad, stored_problems

WRITERS = 2
SETTLE = 3.0  # seconds of load before and after each change
IN_FLIGHT = 3.0  # seconds after a replica is killed in which requests may fail
# Traefik's dialTimeout: a write this slow waited on a replica already gone.
DIAL_TIMEOUT = 2.0
UPDATE_ENDED = {"completed", "paused", "rollback_completed", "rollback_paused"}


def answers(url: str) -> bool:
    try:
        return httpx.get(url, verify=False, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def deployed(swarm: Swarm) -> Swarm:
    started = time.monotonic()
    services = (("db", 1), ("backend", 2), ("worker", 1), ("adminer", 1), ("proxy", 1))
    for service, replicas in services:
        wait_until(
            lambda: swarm.converged(service, replicas),  # noqa: B023
            timeout=240,
            what=f"{service} to run {replicas} task(s)",
            interval=1,
        )
    wait_until(lambda: answers(HEALTH), timeout=60, what="Traefik to route", interval=1)
    NUMBERS.append(f"first deploy: serving after {time.monotonic() - started:.1f} s")
    return swarm


@pytest.fixture(scope="module")
def client(deployed: Swarm) -> Iterator[httpx.Client]:  # noqa: ARG001 (once deployed)
    with httpx.Client(base_url=HTTPS, verify=False, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def headers(client: httpx.Client) -> dict[str, str]:
    return live_login(client, *SUPERUSER)


async def under_load(
    swarm: Swarm,
    headers: dict[str, str],
    what: str,
    change: Callable[[], dict[str, float]],
) -> list[Write]:
    """WRITERS writers creating items through Traefik while `change` runs (in
    a thread); its timings and the load's numbers go to NUMBERS as `what`."""
    swarm.psql("DELETE FROM items")  # titles restart at load-0-0
    async with httpx.AsyncClient(base_url=HTTPS, verify=False, timeout=10) as client:
        load = WriteLoad(client, headers, WRITERS)
        load.start()
        await asyncio.sleep(SETTLE)
        timings = await asyncio.to_thread(change)
        await asyncio.sleep(SETTLE)
        writes = await load.stop()
    stored = dict(swarm.psql("SELECT title, id FROM items"))
    latencies = sorted(w.seconds for w in writes)
    numbers = {
        "requests": len(writes),
        "failed": sum(not w.ok for w in writes),
        "acknowledged": sum(w.ok for w in writes),
        "lost": len({w.title for w in writes if w.ok} - stored.keys()),
        "p50_ms": round(1000 * latencies[len(latencies) // 2]),
        "max_ms": round(1000 * latencies[-1]),
        **{name: round(seconds, 1) for name, seconds in timings.items()},
    }
    NUMBERS.append(f"{what}: {numbers}")
    assert not stored_problems(writes, stored), stored_problems(writes, stored)
    return writes


def update(swarm: Swarm, tag: str) -> dict[str, Any]:
    """Deploy release `tag`; the backend's update status once it has ended
    (completed, rolled back, paused)."""
    before = swarm.service("backend").get("UpdateStatus") or {}
    swarm.deploy(tag)

    def ended() -> dict[str, Any] | None:
        status: dict[str, Any] = swarm.service("backend").get("UpdateStatus") or {}
        new = status.get("StartedAt") != before.get("StartedAt")
        return status if new and status.get("State") in UPDATE_ENDED else None

    return wait_until(ended, timeout=300, what=f"the update to {tag}", interval=1)


def service_image(swarm: Swarm) -> str:
    spec = swarm.service("backend")["Spec"]
    image: str = spec["TaskTemplate"]["ContainerSpec"]["Image"]
    return image


def running_images(swarm: Swarm) -> set[str]:
    return {task["image"] for task in swarm.running_tasks("backend")}


def replicas_serving(swarm: Swarm, client: httpx.Client) -> set[str]:
    """Which tasks answered: each request's unique query is in exactly one
    task's gunicorn access log (`docker service logs` names the task)."""
    probes = [uuid.uuid4().hex for _ in range(20)]
    for probe in probes:
        assert client.get(f"/api/v1/utils/health-check/?probe={probe}").is_success
    logs = swarm.engine.docker("service", "logs", f"{NAME}_backend")
    served = {
        probe: line.split("|", 1)[0].strip()
        for line in (logs.stdout + logs.stderr).splitlines()
        for probe in probes
        if probe in line
    }
    return set(served.values()) if served.keys() == set(probes) else set()


def test_traefik_routes_to_both_replicas_and_secrets_are_files(
    deployed: Swarm, client: httpx.Client, headers: dict[str, str]
) -> None:
    wait_until(
        lambda: len(replicas_serving(deployed, client)) == 2,
        timeout=30,
        what="Traefik to route to both replicas",
        interval=1,
    )
    # The superuser's password and the database's came from Docker secrets.
    assert (
        client.get("/api/v1/users/me", headers=headers).json()["email"]
        == (SUPERUSER[0])
    )
    container = deployed.containers("backend")[0]
    env = deployed.engine.docker("exec", container, "env").stdout.splitlines()
    assert "SECRET_KEY_FILE=/run/secrets/secret_key" in env
    assert not [v for v in env if v.startswith(("SECRET_KEY=", "POSTGRES_PASSWORD="))]
    assert answers(ADMINER)


async def test_rolling_update_fails_no_request_and_loses_no_write(
    deployed: Swarm, headers: dict[str, str]
) -> None:
    ended: dict[str, Any] = {}

    def change() -> dict[str, float]:
        started = time.monotonic()
        ended.update(update(deployed, "2"))
        updated = time.monotonic()
        wait_until(
            lambda: deployed.converged("backend", 2),
            timeout=120,
            what="the old replicas to stop",
            interval=1,
        )
        return {
            "update_s": updated - started,
            "old_replicas_gone_s": time.monotonic() - started,
        }

    writes = await under_load(deployed, headers, "rolling update to release 2", change)
    assert ended["State"] == "completed", ended
    assert [w for w in writes if not w.ok] == []
    assert len(writes) > 50
    # Traefik dropped each old replica while it still served (Swarm polled
    # every 2 s, DRAIN_SECONDS): no write went to one already gone.
    slowest = max(writes, key=lambda w: w.seconds)
    assert slowest.seconds < DIAL_TIMEOUT, slowest
    assert running_images(deployed) == {f"{IMAGE}:2"}


async def test_update_failing_its_health_check_rolls_back_by_itself(
    deployed: Swarm, headers: dict[str, str]
) -> None:
    before = service_image(deployed)
    ended: dict[str, Any] = {}

    def change() -> dict[str, float]:
        started = time.monotonic()
        ended.update(update(deployed, "broken"))
        rolled_back = time.monotonic()
        wait_until(
            lambda: deployed.converged("backend", 2),
            timeout=120,
            what="2 replicas of the release before",
            interval=1,
        )
        return {"rolled_back_s": rolled_back - started}

    writes = await under_load(
        deployed, headers, "update failing its health check", change
    )
    NUMBERS.append(f"  Swarm said: {ended.get('Message')}")
    assert ended["State"] == "rollback_completed", ended
    assert service_image(deployed) == before
    assert running_images(deployed) == {before}
    assert [w for w in writes if not w.ok] == []


async def test_killed_replica_is_replaced(
    deployed: Swarm, headers: dict[str, str]
) -> None:
    killed: list[float] = []

    def change() -> dict[str, float]:
        victim = deployed.containers("backend")[0]
        killed.append(time.monotonic())
        deployed.engine.docker("kill", victim)
        wait_until(
            lambda: (
                victim not in deployed.containers("backend")
                and deployed.converged("backend", 2)
            ),
            timeout=120,
            what="Swarm to replace the killed replica",
            interval=0.5,
        )
        return {"replaced_s": time.monotonic() - killed[0]}

    writes = await under_load(deployed, headers, "a replica killed", change)
    # Requests the killed replica had started die with it (a 502, or the
    # connection closed); they are not re-sent (not idempotent). Later ones go
    # to the other replica (Traefik's retry middleware, then its next poll).
    failed = [w for w in writes if not w.ok]
    assert all(
        (w.status == 502 or w.error == "RemoteProtocolError")
        and killed[0] - 1 <= w.started <= killed[0] + IN_FLIGHT
        for w in failed
    ), (killed, failed)
    # The killed replica leaves the rotation at its first failure (Traefik's
    # passive health check), not at the next active check up to 8 s later: at
    # most one request per writer waited out a dial to its address, none twice.
    waited = [w for w in writes if w.seconds >= DIAL_TIMEOUT]
    assert len(waited) <= WRITERS, waited
    assert all(w.seconds < 2 * DIAL_TIMEOUT for w in waited), waited
