"""deploy/swarm/stack.yml on a real single-node swarm, under a steady write
load through Traefik: a rolling update, an update that fails its health check
and rolls back by itself, a replica killed. Each prints its numbers (`-s`)."""

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.compose.conftest import SUPERUSER
from tests.conftest import live_login, wait_until
from tests.swarm.conftest import ADMINER, HEALTH, HTTPS, IMAGE, NAME, NUMBERS, Swarm

WRITERS = 2
LOAD_LIMIT = 600.0  # seconds: a load stops by itself at the latest after this
IN_FLIGHT = 3.0  # seconds after a replica is killed in which requests may fail
SETTLE = 3.0  # seconds of load before and after each change
UPDATE_DONE = {"completed", "paused", "rollback_completed", "rollback_paused"}


@dataclass(frozen=True)
class Write:
    started: float
    seconds: float
    item_id: str | None  # None: no acknowledgement
    outcome: str  # status code or error


class Load:
    """WRITERS threads posting items through Traefik until the block ends."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.title = f"load-{uuid.uuid4().hex[:12]}"
        self.writes: list[Write] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._write) for _ in range(WRITERS)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        time.sleep(SETTLE)
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(SETTLE)
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _write(self) -> None:
        deadline = time.monotonic() + LOAD_LIMIT
        with httpx.Client(base_url=HTTPS, verify=False, timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    answer = client.post(
                        "/api/v1/items/",
                        json={"title": self.title},
                        headers=self.headers,
                    )
                    ok = answer.status_code == 200
                    item_id = answer.json()["id"] if ok else None
                    outcome = str(answer.status_code)
                except httpx.HTTPError as error:
                    item_id, outcome = None, repr(error)
                write = Write(started, time.monotonic() - started, item_id, outcome)
                with self._lock:
                    self.writes.append(write)

    @property
    def failed(self) -> list[Write]:
        return [w for w in self.writes if w.item_id is None]

    def lost(self, client: httpx.Client) -> set[str]:
        """Acknowledged items the database does not have."""
        stored: set[str] = set()
        skip = 0
        while page := client.get(
            "/api/v1/items/", params={"skip": skip, "limit": 100}, headers=self.headers
        ).json()["data"]:
            stored |= {item["id"] for item in page if item["title"] == self.title}
            skip += len(page)
        return {w.item_id for w in self.writes if w.item_id} - stored

    def report(self, what: str, lost: set[str], **timings: float) -> None:
        latencies = sorted(w.seconds for w in self.writes)
        numbers = {
            "requests": len(self.writes),
            "failed": len(self.failed),
            "acknowledged": len(self.writes) - len(self.failed),
            "lost": len(lost),
            "p50_ms": round(1000 * latencies[len(latencies) // 2]),
            "max_ms": round(1000 * latencies[-1]),
            **{name: round(seconds, 1) for name, seconds in timings.items()},
        }
        NUMBERS.append(f"{what}: {numbers}")


@pytest.fixture(scope="module")
def deployed(swarm: Swarm) -> Swarm:
    started = time.monotonic()
    for service, replicas in (("db", 1), ("backend", 2), ("adminer", 1), ("proxy", 1)):
        wait_until(
            lambda: swarm.converged(service, replicas),  # noqa: B023
            timeout=240,
            what=f"{service} to run {replicas} task(s)",
            interval=1,
        )
    wait_until(lambda: answers(HEALTH), timeout=60, what="Traefik to route", interval=1)
    NUMBERS.append(f"first deploy: serving after {time.monotonic() - started:.1f} s")
    return swarm


def answers(url: str) -> bool:
    try:
        return httpx.get(url, verify=False, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def client(deployed: Swarm) -> Iterator[httpx.Client]:  # noqa: ARG001 (order)
    with httpx.Client(base_url=HTTPS, verify=False, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def headers(client: httpx.Client) -> dict[str, str]:
    return live_login(client, *SUPERUSER)


def update(swarm: Swarm, tag: str) -> dict[str, Any]:
    """Deploy release `tag`; the backend's update status once it has ended
    (completed, rolled back, paused)."""
    before = swarm.service("backend").get("UpdateStatus") or {}
    swarm.deploy(tag)

    def ended() -> dict[str, Any] | None:
        status: dict[str, Any] = swarm.service("backend").get("UpdateStatus") or {}
        new = status.get("StartedAt") != before.get("StartedAt")
        return status if new and status.get("State") in UPDATE_DONE else None

    return wait_until(ended, timeout=300, what=f"the update to {tag}", interval=1)


def replicas_serving(swarm: Swarm, client: httpx.Client) -> set[str]:
    """Which tasks answered: each request's unique query is in exactly one
    task's gunicorn access log (`docker service logs` names the task)."""
    probes = [uuid.uuid4().hex for _ in range(20)]
    for probe in probes:
        assert (
            client.get(f"/api/v1/utils/health-check/?probe={probe}").status_code == 200
        )
    logs = swarm.engine.docker("service", "logs", f"{NAME}_backend")
    served = {
        probe: line.split("|", 1)[0].strip()
        for line in (logs.stdout + logs.stderr).splitlines()
        for probe in probes
        if probe in line
    }
    return set(served.values()) if set(served) == set(probes) else set()


def test_traefik_routes_to_both_replicas_and_secrets_are_files(
    deployed: Swarm, client: httpx.Client, headers: dict[str, str]
) -> None:
    wait_until(
        lambda: len(replicas_serving(deployed, client)) == 2,
        timeout=30,
        what="Traefik to route to both replicas",
        interval=1,
    )
    me = client.get("/api/v1/users/me", headers=headers)  # the superuser's password
    assert me.json()["email"] == SUPERUSER[0]  # came from its Docker secret
    container = deployed.containers("backend")[0]
    env = deployed.engine.docker("exec", container, "env").stdout.splitlines()
    assert "SECRET_KEY_FILE=/run/secrets/secret_key" in env
    assert not [
        line for line in env if line.startswith(("SECRET_KEY=", "POSTGRES_PASSWORD="))
    ]
    assert httpx.get(ADMINER, verify=False, timeout=10).status_code == 200


def test_rolling_update_fails_no_request_and_loses_no_write(
    deployed: Swarm, client: httpx.Client, headers: dict[str, str]
) -> None:
    with Load(headers) as load:
        started = time.monotonic()
        status = update(deployed, "2")
        updated = time.monotonic()
        wait_until(
            lambda: deployed.converged("backend", 2),
            timeout=120,
            what="the old replicas to stop",
            interval=1,
        )
        drained = time.monotonic()
    lost = load.lost(client)
    load.report(
        "rolling update to release 2",
        lost,
        update_s=updated - started,
        old_replicas_gone_s=drained - started,
    )
    assert status["State"] == "completed", status
    assert load.failed == []
    assert lost == set()
    assert len(load.writes) > 50
    images = {task["image"] for task in deployed.running_tasks("backend")}
    assert images == {f"{IMAGE}:2"}


def test_update_failing_its_health_check_rolls_back_by_itself(
    deployed: Swarm, client: httpx.Client, headers: dict[str, str]
) -> None:
    spec_image = service_image(deployed)
    with Load(headers) as load:
        started = time.monotonic()
        status = update(deployed, "broken")
        rolled_back = time.monotonic()
        wait_until(
            lambda: deployed.converged("backend", 2),
            timeout=120,
            what="2 replicas of the release before",
            interval=1,
        )
    lost = load.lost(client)
    load.report("update to a broken release", lost, rolled_back_s=rolled_back - started)
    NUMBERS.append(f"  Swarm: {status.get('Message')}")
    assert status["State"] == "rollback_completed", status
    assert service_image(deployed) == spec_image
    assert load.failed == []
    assert lost == set()
    images = {task["image"] for task in deployed.running_tasks("backend")}
    assert images == {spec_image.split("@")[0]}


def service_image(swarm: Swarm) -> str:
    image: str = swarm.service("backend")["Spec"]["TaskTemplate"]["ContainerSpec"][
        "Image"
    ]
    return image


def test_killed_replica_is_replaced(
    deployed: Swarm, client: httpx.Client, headers: dict[str, str]
) -> None:
    with Load(headers) as load:
        victim = deployed.containers("backend")[0]
        killed_at = time.monotonic()
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
        restored = time.monotonic()
    lost = load.lost(client)
    load.report("replica killed", lost, restored_s=restored - killed_at)
    # Requests the killed replica had started die with it (a 502 or a closed
    # connection); they are not re-sent (not idempotent). Later ones go to the
    # other replica (Traefik's retry middleware, then its next look at Swarm).
    in_flight_failures = ("502", "RemoteProtocolError('Server disconnected")
    assert all(
        w.outcome.startswith(in_flight_failures)
        and killed_at - 1 <= w.started <= killed_at + IN_FLIGHT
        for w in load.failed
    ), (killed_at, load.failed)
    assert lost == set()
