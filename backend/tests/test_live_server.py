"""The production path on an empty database: scripts/prestart.sh, then gunicorn
with two uvicorn workers, exercised over real HTTP."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import URL

from app.core.config import settings
from tests.utils.metrics import Samples, label_values, parse, value
from tests.utils.servers import answers, free_port, wait_until

# Each test runs prestart.sh and a server of its own.
pytestmark = pytest.mark.slow

BACKEND_DIR = Path(__file__).resolve().parents[1]
SUPERUSER = ("live-admin@example.com", "live-admin-password")


GUNICORN = ("gunicorn", "app.main:app", "-k", "uvicorn_worker.UvicornWorker")


def server_env(database_url: URL, **settings: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "FIRST_SUPERUSER": SUPERUSER[0],
        "FIRST_SUPERUSER_PASSWORD": SUPERUSER[1],
        # One key for both workers: a token from one must work on the other.
        "SECRET_KEY": "live-server-test-secret-key-0123456789abcdef",
        **settings,
    }


def prestart(env: dict[str, str]) -> None:
    done = subprocess.run(
        ["bash", "scripts/prestart.sh"],
        cwd=BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@contextmanager
def serving(
    command: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` (a server on env["PORT"]) running in backend/ until the block ends."""
    base_url = f"http://127.0.0.1:{env['PORT']}"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            health = f"{base_url}/api/v1/utils/health-check/"
            wait_until(lambda: answers(health), 30, "the server to start", log=log_path)
            yield server
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture
def live_server(scratch_database_url: URL, tmp_path: Path) -> Iterator[str]:
    port = str(free_port())
    env = server_env(
        scratch_database_url, LOGIN_MAX_FAILURES_PER_ACCOUNT="3", PORT=port
    )
    prestart(env)
    command = [
        *GUNICORN,
        *("-w", "2", "-b", f"127.0.0.1:{port}"),
        *("--control-socket", str(tmp_path / "gunicorn.ctl")),
    ]
    with serving(command, env, tmp_path / "gunicorn.log"):
        yield f"http://127.0.0.1:{port}"


def test_contract_over_http_on_gunicorn(live_server: str) -> None:
    with httpx.Client(base_url=f"{live_server}/api/v1", timeout=10) as api:
        login = api.post(
            "/login/access-token",
            data={"username": SUPERUSER[0].upper(), "password": SUPERUSER[1]},
        )
        assert login.status_code == 200
        admin = {"Authorization": f"Bearer {login.json()['access_token']}"}

        signup = api.post(
            "/users/signup",
            json={"email": "live@example.com", "password": "live-password"},
        )
        assert signup.status_code == 200
        again = api.post(
            "/users/signup",
            json={"email": "LIVE@example.com", "password": "live-password"},
        )
        assert again.json() == {
            "detail": "The user with this email already exists in the system"
        }

        token = api.post(
            "/login/access-token",
            data={"username": "live@example.com", "password": "live-password"},
        )
        user = {"Authorization": f"Bearer {token.json()['access_token']}"}
        # Several calls so both workers answer with the same token.
        for _ in range(6):
            assert (
                api.get("/users/me", headers=user).json()["email"] == "live@example.com"
            )
        created = api.post("/items/", headers=user, json={"title": "live item"})
        assert created.status_code == 200
        item_id = created.json()["id"]
        assert api.get("/items/", headers=user).json()["count"] == 1
        assert api.get(f"/items/{item_id}", headers=admin).status_code == 200
        assert (
            api.put(f"/items/{item_id}", headers=user, json={"title": None}).status_code
            == 422
        )
        assert api.get("/users/", headers=user).status_code == 403
        assert api.get("/users/", headers=admin).json()["count"] == 2
        assert api.get("/items/?limit=101", headers=user).status_code == 422
        assert api.delete(f"/items/{item_id}", headers=user).json() == {
            "message": "Item deleted successfully"
        }
        assert api.get(f"/items/{item_id}", headers=user).json() == {
            "detail": "Item not found"
        }
        assert api.get("/users/me").status_code == 401

        response = api.get(
            "/utils/health-check/", headers={"X-Request-ID": "live-check-1"}
        )
        assert response.json() is True
        assert response.headers["x-request-id"] == "live-check-1"


def test_limits_and_sessions_shared_by_the_workers(live_server: str) -> None:
    """Each request on a new connection, so both workers take turns: the failure
    count and the refresh-token family live in the database, not in a worker."""
    api = f"{live_server}/api/v1"
    codes = [
        httpx.post(
            f"{api}/login/access-token",
            data={"username": SUPERUSER[0], "password": "wrong-password"},
        ).status_code
        for _ in range(6)
    ]
    assert codes == [400, 400, 400, 429, 429, 429]

    httpx.post(
        f"{api}/users/signup", json={"email": "s@example.com", "password": "s-password"}
    )
    login = httpx.post(
        f"{api}/login/access-token",
        data={"username": "s@example.com", "password": "s-password"},
    ).json()
    chain = [login["refresh_token"]]
    for _ in range(4):
        rotated = httpx.post(
            f"{api}/login/refresh-token", json={"refresh_token": chain[-1]}
        )
        assert rotated.status_code == 200
        chain.append(rotated.json()["refresh_token"])
    replay = httpx.post(f"{api}/login/refresh-token", json={"refresh_token": chain[0]})
    assert replay.status_code == 401
    latest = httpx.post(f"{api}/login/refresh-token", json={"refresh_token": chain[-1]})
    assert latest.status_code == 401  # the replay ended the whole family


@pytest.mark.parametrize(
    "start",
    [
        # As the README and the Dockerfile start it (gunicorn.conf.py)...
        lambda port, tmp: [
            *GUNICORN,
            "-b",
            f"127.0.0.1:{port}",
            "--control-socket",
            str(tmp / "g.ctl"),
        ],
        # ...and as scripts/run.sh does.
        lambda port, _tmp: [sys.executable, "manage.py", "run", "--port", port],
    ],
    ids=["gunicorn", "manage.py run"],
)
def test_forwarded_headers_trusted_only_from_configured_addresses(
    scratch_database_url: URL, tmp_path: Path, start: Callable[[str, Path], list[str]]
) -> None:
    """A relay on the same host (127.0.0.1) cannot choose the client address that
    the per-address limits and the sessions list see, unless it is configured as
    the proxy (FORWARDED_ALLOW_IPS)."""
    port = str(free_port())
    env = server_env(scratch_database_url, PORT=port)
    prestart(env)
    seen = {}
    for trusted in ("unset", "127.0.0.1"):
        # Unset is the default, where the servers' own default trusted 127.0.0.1.
        env.pop("FORWARDED_ALLOW_IPS", None)
        if trusted != "unset":
            env["FORWARDED_ALLOW_IPS"] = trusted
        with serving(start(port, tmp_path), env, tmp_path / "server.log"):
            api = f"http://127.0.0.1:{port}/api/v1"
            login = httpx.post(
                f"{api}/login/access-token",
                data={"username": SUPERUSER[0], "password": SUPERUSER[1]},
                headers={"X-Forwarded-For": "203.0.113.9"},
            )
            token = login.json()["access_token"]
            sessions = httpx.get(
                f"{api}/users/me/sessions", headers={"Authorization": f"Bearer {token}"}
            ).json()["data"]
            seen[trusted] = next(s["client_address"] for s in sessions if s["current"])
    assert seen == {"unset": "127.0.0.1", "127.0.0.1": "203.0.113.9"}


def test_start_script_migrates_serves_and_drains_before_stopping(
    scratch_database_url: URL, tmp_path: Path
) -> None:
    """scripts/start.sh (a Swarm replica's command) on an empty database: it
    migrates, serves, and after SIGTERM still serves DRAIN_SECONDS, then stops."""
    port = str(free_port())
    env = server_env(scratch_database_url, PORT=port, DRAIN_SECONDS="2")
    health = f"http://127.0.0.1:{port}/api/v1/utils/health-check/"
    command = [
        "bash", "scripts/start.sh", *GUNICORN, "-b", f"127.0.0.1:{port}",
        "--control-socket", str(tmp_path / "g.ctl"),
    ]  # fmt: skip
    log_path = tmp_path / "start.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_until(lambda: answers(health), timeout=60, what="start.sh to serve")
            login = httpx.post(
                f"http://127.0.0.1:{port}/api/v1/login/access-token",
                data={"username": SUPERUSER[0], "password": SUPERUSER[1]},
            )
            assert login.status_code == 200  # migrated, superuser created
            server.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            time.sleep(1)
            assert server.poll() is None
            assert answers(health), log_path.read_text()  # draining: still serving
            assert server.wait(timeout=30) == 0, log_path.read_text()
        finally:
            server.kill()
    assert time.monotonic() - sent >= 2
    assert not answers(health)


# Metrics across the workers (app/core/metrics.py, gunicorn.conf.py).

ITEM_ROUTE = "/api/v1/items/{id}"
HEALTH_ROUTE = "/api/v1/utils/health-check/"  # polled by serving()


def scrape(base_url: str) -> Samples:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    return parse(response.text)


def served(samples: Samples, route: str, status: str) -> float:
    labels = {"method": "GET", "route": route, "status": status}
    return value(samples, "http_requests_total", **labels)


def send_traffic(base_url: str, rounds: int) -> None:
    """`rounds` times: a route with an id, a fixed one, a 404 scan; each request
    on a new connection, so that the workers take turns."""
    for _ in range(rounds):
        assert httpx.get(f"{base_url}/api/v1/items/{uuid.uuid4()}").status_code == 401
        assert httpx.get(f"{base_url}/").status_code == 200
        assert httpx.get(f"{base_url}/{uuid.uuid4().hex}.php").status_code == 404


def assert_counted(samples: Samples, rounds: int) -> None:
    assert served(samples, ITEM_ROUTE, "401") == rounds
    assert served(samples, "/", "200") == rounds
    assert served(samples, "unmatched", "404") == rounds
    # No id and no scanned path became a label value.
    expected = {ITEM_ROUTE, "/", "unmatched", HEALTH_ROUTE, "/metrics"}
    assert label_values(samples, "route") <= expected


def workers(server: subprocess.Popen[bytes]) -> list[int]:
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def worker_value(metrics_dir: Path, file: str, pid: int, name: str) -> float:
    """One worker's own value of `name`, from its file (`counter`, `gauge_livesum`)."""
    path = metrics_dir / f"{file}_{pid}.db"
    if not path.exists():
        return 0
    return sum(
        sample.value
        for family in MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        for sample in family.samples
        if sample.name == name
    )


def requests_of(metrics_dir: Path, pid: int) -> float:
    return worker_value(metrics_dir, "counter", pid, "http_requests_total")


def test_metrics_sum_the_workers_and_survive_a_killed_one(
    scratch_database_url: URL, tmp_path: Path
) -> None:
    """One scrape answers for both workers; a worker killed (SIGKILL) and
    replaced loses none of its counts and counts nothing twice; its gauges
    leave the sums."""
    port = str(free_port())
    metrics_dir = tmp_path / "metrics"
    env = server_env(
        scratch_database_url, PORT=port, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    )
    prestart(env)
    command = [*GUNICORN, "-w", "2", "-b", f"127.0.0.1:{port}", "--no-control-socket"]
    base_url = f"http://127.0.0.1:{port}"
    with serving(command, env, tmp_path / "gunicorn.log") as server:
        rounds = 0
        while rounds < 200 and not all(
            requests_of(metrics_dir, pid) for pid in workers(server)
        ):
            send_traffic(base_url, 10)
            rounds += 10
        assert all(requests_of(metrics_dir, pid) for pid in workers(server))
        samples = scrape(base_url)
        assert_counted(samples, rounds)
        pool_size = value(samples, "db_pool_size")
        assert pool_size == 2 * settings.DB_POOL_SIZE

        pids = workers(server)
        killed = pids[0]
        os.kill(killed, signal.SIGKILL)
        wait_until(
            lambda: killed not in workers(server) and len(workers(server)) == 2,
            30,
            "gunicorn to replace the killed worker",
        )
        (replacement,) = set(workers(server)) - set(pids)
        wait_until(
            lambda: (
                worker_value(metrics_dir, "gauge_livesum", replacement, "db_pool_size")
                > 0
            ),
            30,
            "the new worker's pool",
        )
        # The new worker's pool counts, the dead one's no longer.
        assert value(scrape(base_url), "db_pool_size") == pool_size
        send_traffic(base_url, 10)
        assert_counted(scrape(base_url), rounds + 10)


def test_metrics_start_at_zero_on_every_start(
    scratch_database_url: URL, tmp_path: Path
) -> None:
    """A restarted server does not count its predecessor's requests: a
    directory given in PROMETHEUS_MULTIPROC_DIR is emptied at start; without
    one, gunicorn.conf.py makes one of its own and removes it at exit."""
    port = str(free_port())
    base_url = f"http://127.0.0.1:{port}"
    command = [*GUNICORN, "-w", "2", "-b", f"127.0.0.1:{port}", "--no-control-socket"]
    temp = tmp_path / "tmp"  # the servers' temporary directory, no one else's
    temp.mkdir()

    def own_dirs() -> set[Path]:
        return set(temp.glob("prometheus-multiproc-*"))

    given = server_env(
        scratch_database_url,
        PORT=port,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "m"),
        TMPDIR=str(temp),
    )
    prestart(given)
    default = {k: v for k, v in given.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    for env in (given, given, default):
        before = own_dirs()
        with serving(command, env, tmp_path / "gunicorn.log"):
            send_traffic(base_url, 3)
            assert_counted(scrape(base_url), 3)
            made = own_dirs() - before
            assert len(made) == (1 if env is default else 0)
        assert own_dirs() == before
