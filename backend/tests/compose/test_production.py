"""The production file alone (`docker compose -f docker-compose.yml`) on a real
engine, with a .env of real secrets and the `monitoring` profile (Prometheus):
what a deployment gets, through Traefik."""

import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.utils import prometheus
from tests.utils.compose import (
    SUPERUSER,
    Engine,
    Stack,
    production_env,
    stack,
)
from tests.utils.servers import live_login, wait_until

NAME = "fsm-production"
HTTPS = "https://localhost:18443"
HTTP = "http://localhost:18080"
ADMINER = "https://localhost:18081"
PROMETHEUS = "http://127.0.0.1:19090"  # published by ports-production.yml only
HEALTH = f"{HTTPS}/api/v1/utils/health-check/"
UP = ("up", "-d", "--wait")
IN_FLIGHT = 3.0  # seconds after a replica dies in which requests may fail


@pytest.fixture(scope="module")
def production(
    engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("production")
    with stack(
        engine,
        directory,
        NAME,
        ["docker-compose.yml"],
        "ports-production.yml",
        COMPOSE_PROFILES="monitoring",
        **production_env(),
    ) as project:
        project.compose("build", timeout=900)
        project.compose(*UP, timeout=600)
        project.wait_healthy(HEALTH)
        yield project


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=HTTPS, verify=False, timeout=10) as client:
        yield client


def login(client: httpx.Client) -> dict[str, str]:
    return live_login(client, *SUPERUSER)


def test_a_required_variable_missing_stops_up_with_its_name(
    production: Stack,
) -> None:
    env = (production.directory / ".env").read_text()
    broken = production.directory / "missing.env"
    broken.write_text(re.sub(r"(?m)^SECRET_KEY=.*\n", "", env))
    refused = production.compose(
        "--env-file", str(broken), "up", "-d", check=False, timeout=60
    )
    assert refused.returncode != 0
    assert "SECRET_KEY" in refused.stderr


def test_every_service_is_healthy_and_prestart_ran_once(production: Stack) -> None:
    for service in ("db", "backend", "worker"):
        state = production.container(service)["State"]
        assert state["Health"]["Status"] == "healthy", service
    for service in ("adminer", "proxy"):
        assert production.container(service)["State"]["Status"] == "running"
    prestart = production.container("prestart")["State"]
    assert (prestart["Status"], prestart["ExitCode"]) == ("exited", 0)
    # Without `healthcheck: disable` it inherited the image's API health check.
    assert "Health" not in prestart or prestart["Health"] is None


def test_only_the_proxy_publishes_ports(production: Stack) -> None:
    publishing = set()
    for service in ("db", "prestart", "backend", "worker", "adminer", "proxy"):
        ports = production.container(service)["HostConfig"]["PortBindings"] or {}
        if any(ports.values()):
            publishing.add(service)
    assert publishing == {"proxy"}
    # Not Traefik's metrics entrypoint (8082).
    bindings = production.container("proxy")["HostConfig"]["PortBindings"]
    assert set(bindings) == {"80/tcp", "443/tcp", "8080/tcp"}


@pytest.mark.usefixtures("production")
def test_metrics_are_not_served_through_the_published_ports() -> None:
    """Traefik's own 404 over HTTPS (no router matches /metrics), HTTP only
    redirects there, and Adminer's entrypoint answers with Adminer."""
    response = httpx.get(f"{HTTPS}/metrics", verify=False, timeout=10)
    assert (response.status_code, response.text) == (404, "404 page not found\n")
    redirect = httpx.get(f"{HTTP}/metrics", timeout=10)
    assert redirect.status_code in (301, 308)
    assert redirect.headers["location"] == "https://localhost/metrics"
    adminer = httpx.get(f"{ADMINER}/metrics", verify=False, timeout=10)
    assert "<title>Login - Adminer</title>" in adminer.text


@pytest.mark.usefixtures("production")
def test_prometheus_scrapes_the_backend_workers_and_traefik(
    client: httpx.Client,
) -> None:
    """docker-compose.yml's `prometheus` config on the compose network: the backend (found by
    Docker's DNS, its 2 gunicorn workers summed) and proxy:8082. Requests sent
    through Traefik come back by route from Prometheus's HTTP API."""
    prometheus.wait_for_targets_up(PROMETHEUS, {"backend": 1, "traefik": 1}, 60)
    item = f"/api/v1/items/{uuid.uuid4()}"
    traffic = {
        "/api/v1/items/{id}": (item, 7),
        "/api/v1/users/me": ("/api/v1/users/me", 5),
    }
    # Each series exists before the counted traffic (one replica: its workers
    # share their series); a scrape of both jobs after it (every 15 s) is the
    # baseline.
    for path, _ in traffic.values():
        assert client.get(path).status_code == 401
    first = prometheus.scrapes_after(PROMETHEUS, time.time(), timeout=40)
    for path, times in traffic.values():
        for _ in range(times):
            assert client.get(path).status_code == 401
    last = prometheus.scrapes_after(PROMETHEUS, time.time(), timeout=40)

    routes, routers = prometheus.answered_between(PROMETHEUS, 401, first, last)
    assert routes == {route: times for route, (_, times) in traffic.items()}
    assert routers == {"backend@file": sum(times for _, times in traffic.values())}


@pytest.mark.usefixtures("production")
def test_http_redirects_to_https() -> None:
    answer = httpx.get(f"{HTTP}/api/v1/utils/health-check/", timeout=10)
    assert answer.status_code in (301, 308)
    assert answer.headers["location"].startswith("https://localhost")


@pytest.mark.usefixtures("production")
def test_docs_are_off_by_default(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 404
    assert client.get("/api/v1/openapi.json").status_code == 404


@pytest.mark.usefixtures("production")
def test_login_users_me_and_security_headers(client: httpx.Client) -> None:
    me = client.get("/api/v1/users/me", headers=login(client))
    assert me.status_code == 200
    assert me.json()["email"] == SUPERUSER[0]
    assert me.headers["x-content-type-options"] == "nosniff"
    assert me.headers["x-frame-options"] == "DENY"
    assert "max-age=" in me.headers["strict-transport-security"]


def test_adminer_logs_in_to_db_and_lists_users(production: Stack) -> None:
    env = _current(production.directory / ".env")
    with httpx.Client(base_url=ADMINER, verify=False, timeout=20) as adminer:
        assert adminer.get("/").status_code == 200
        logged_in = adminer.post(
            "/",
            data={
                "auth[driver]": "pgsql",
                "auth[server]": "db",
                "auth[username]": env["POSTGRES_USER"],
                "auth[password]": env["POSTGRES_PASSWORD"],
                "auth[db]": env["POSTGRES_DB"],
            },
            follow_redirects=True,
        )
        assert logged_in.status_code == 200
        tables = adminer.get(
            "/",
            params={
                "pgsql": "db",
                "username": env["POSTGRES_USER"],
                "db": env["POSTGRES_DB"],
                "ns": "public",
            },
        )
    assert tables.status_code == 200
    assert re.search(r"table=users['\"&]", tables.text), tables.text[:2000]


def test_alembic_in_the_container_reports_head(production: Stack) -> None:
    production.compose("exec", "-T", "backend", "alembic", "upgrade", "head")
    current = production.compose("exec", "-T", "backend", "alembic", "current")
    assert "(head)" in current.stdout


@pytest.mark.parametrize("service", ["backend", "worker"])
def test_backend_runs_as_non_root(production: Stack, service: str) -> None:
    status = production.compose("exec", "-T", service, "cat", "/proc/1/status")
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status.stdout, re.MULTILINE)
    assert uids is not None
    assert uids.groups() == ("10001", "10001")


def test_the_worker_runs_the_jobs_of_a_signup(
    production: Stack, client: httpx.Client
) -> None:
    email = f"worker-{uuid.uuid4().hex[:8]}@example.com"
    answer = client.post(
        "/api/v1/users/signup", json={"email": email, "password": "a-long-password-1"}
    )
    assert answer.status_code == 200, answer.text

    def verification_job_done() -> bool:
        logs = production.compose("logs", "--no-log-prefix", "worker").stdout
        return any(
            "send_verification" in line and "Success" in line
            for line in logs.splitlines()
        )

    wait_until(verification_job_done, timeout=60, what="the job", interval=1)
    counts = client.get("/api/v1/utils/jobs/", headers=login(client)).json()
    assert counts["in_process"] is False and counts["succeeded"] >= 1, counts


def test_traefik_starts_without_warnings(production: Stack) -> None:
    logs = production.compose("logs", "--no-log-prefix", "proxy").stdout
    assert "Starting provider *docker.Provider" in logs, logs
    assert [line for line in logs.splitlines() if " WRN " in line] == []


def test_docs_switch_on_with_docs_enabled(
    production: Stack, client: httpx.Client
) -> None:
    env_file = production.directory / ".env"
    before = env_file.read_text()
    try:
        env_file.write_text(before + "DOCS_ENABLED=true\n")
        production.compose(*UP, timeout=300)
        production.wait_healthy(f"{HTTPS}/docs")
        assert client.get("/api/v1/openapi.json").json()["info"]["title"]
    finally:
        env_file.write_text(before)
        production.compose(*UP, timeout=300)
        production.wait_healthy(HEALTH)
    assert client.get("/docs").status_code == 404


def _current(env_file: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in env_file.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def test_backend_heals_itself_after_its_main_process_is_killed(
    production: Stack, client: httpx.Client
) -> None:
    before = production.container("backend")
    os.kill(before["State"]["Pid"], signal.SIGKILL)

    def healthy_again() -> bool:
        after = production.container("backend")
        restarted: bool = after["RestartCount"] > before["RestartCount"]
        return restarted and after["State"]["Health"]["Status"] == "healthy"

    wait_until(healthy_again, timeout=90, what="backend to heal", interval=1)
    production.wait_healthy(HEALTH)
    assert client.get("/api/v1/users/me", headers=login(client)).status_code == 200


def replicas_serving(production: Stack, client: httpx.Client) -> set[str]:
    """Which replicas answered: each request's unique query is in exactly one
    replica's gunicorn access log (`docker compose logs` names the replica)."""
    probes = [uuid.uuid4().hex for _ in range(30)]
    for probe in probes:
        assert (
            client.get(f"/api/v1/utils/health-check/?probe={probe}").status_code == 200
        )
    logs = production.compose("logs", "backend").stdout.splitlines()
    served = {}
    for line in logs:
        for probe in probes:
            if probe in line:
                served[probe] = line.split("|", 1)[0].strip()
    assert set(served) == set(probes)
    return set(served.values())


@dataclass(frozen=True)
class Write:
    started: float
    ended: float
    item_id: str | None  # None: the request failed
    outcome: str  # status code or error


def write_items(
    client: httpx.Client, headers: dict[str, str], until: float
) -> list[Write]:
    writes = []
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            answer = client.post(
                "/api/v1/items/", json={"title": "load"}, headers=headers
            )
            item_id = answer.json()["id"] if answer.status_code == 200 else None
            outcome = str(answer.status_code)
        except httpx.HTTPError as error:
            item_id, outcome = None, repr(error)
        writes.append(Write(started, time.monotonic(), item_id, outcome))
    return writes


def test_traefik_spreads_over_three_replicas_and_survives_losing_one(
    production: Stack, client: httpx.Client
) -> None:
    production.compose(*UP, "--scale", "backend=3", timeout=300)
    wait_until(
        lambda: (
            replicas_serving(production, client) == {f"backend-{n}" for n in (1, 2, 3)}
        ),
        timeout=60,
        what="Traefik to route to 3 replicas",
        interval=1,
    )
    headers = login(client)
    results: list[list[Write]] = [[], []]
    until = time.monotonic() + 12

    def load(slot: int) -> None:
        results[slot] = write_items(client, headers, until)

    threads = [threading.Thread(target=load, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    time.sleep(4)
    killed_at = time.monotonic()
    os.kill(production.container("backend", 2)["State"]["Pid"], signal.SIGKILL)
    for thread in threads:
        thread.join()
    writes = results[0] + results[1]
    failed = [w for w in writes if w.item_id is None]
    # The in-flight window: a request Traefik sends to the dead replica over a
    # kept-alive connection before it drops the replica (docker event, then its
    # 2 s provider throttle) gets a 502, or its connection closed without an
    # answer when the replica died mid-request; it is not re-sent (not
    # idempotent). Refused connections afterwards are retried by `retry`.
    in_flight_failures = ("502", "RemoteProtocolError('Server disconnected")
    assert all(
        w.outcome.startswith(in_flight_failures)
        and killed_at - 1 <= w.started <= killed_at + IN_FLIGHT
        for w in failed
    ), (killed_at, failed)
    acknowledged = [w.item_id for w in writes if w.item_id is not None]
    assert len(acknowledged) > 20
    for item_id in acknowledged:
        assert (
            client.get(f"/api/v1/items/{item_id}", headers=headers).status_code == 200
        )
    production.compose(*UP, "--scale", "backend=1", timeout=300)
    production.wait_healthy(HEALTH)


def test_data_survives_down_and_up_and_goes_with_down_v(
    production: Stack, client: httpx.Client
) -> None:
    volumes_before = set(production.engine.docker("volume", "ls", "-q").stdout.split())
    item = client.post(
        "/api/v1/items/", json={"title": "kept"}, headers=login(client)
    ).json()
    production.compose("down", timeout=180)
    production.compose(*UP, timeout=300)
    production.wait_healthy(HEALTH)
    found = client.get(f"/api/v1/items/{item['id']}", headers=login(client))
    assert found.status_code == 200
    production.compose("down", timeout=180)
    # The db volume mounted where postgres:17 declares VOLUME: no anonymous one.
    volumes_after = set(production.engine.docker("volume", "ls", "-q").stdout.split())
    assert volumes_after - volumes_before == set()
    production.compose("down", "-v", timeout=180)
    production.compose(*UP, timeout=300)
    production.wait_healthy(HEALTH)
    gone = client.get(f"/api/v1/items/{item['id']}", headers=login(client))
    assert gone.status_code == 404
