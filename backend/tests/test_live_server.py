"""The production path on an empty database: scripts/prestart.sh, then gunicorn
with two uvicorn workers, exercised over real HTTP."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import URL

from tests.conftest import free_port

BACKEND_DIR = Path(__file__).resolve().parents[1]
SUPERUSER = ("live-admin@example.com", "live-admin-password")


@pytest.fixture
def live_server(scratch_database_url: URL, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DATABASE_URL": scratch_database_url.render_as_string(hide_password=False),
        "FIRST_SUPERUSER": SUPERUSER[0],
        "FIRST_SUPERUSER_PASSWORD": SUPERUSER[1],
        # One key for both workers: a token from one must work on the other.
        "SECRET_KEY": "live-server-test-secret-key-0123456789abcdef",
        "LOGIN_MAX_FAILURES_PER_ACCOUNT": "3",
    }
    prestart = subprocess.run(
        ["bash", "scripts/prestart.sh"],
        cwd=BACKEND_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert prestart.returncode == 0, prestart.stderr
    command = [
        *("gunicorn", "app.main:app", "-k", "uvicorn_worker.UvicornWorker", "-w", "2"),
        *(
            "-b",
            f"127.0.0.1:{port}",
            "--control-socket",
            str(tmp_path / "gunicorn.ctl"),
        ),
    ]
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen(
        command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if (
                    httpx.get(f"{base_url}/api/v1/utils/health-check/").status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail(
                f"gunicorn did not start: {(tmp_path / 'gunicorn.log').read_text()}"
            )
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


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
