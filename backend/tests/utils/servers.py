"""For tests that run real servers: a free port, bounded polling, a login over
HTTP, the app on gunicorn after prestart.sh."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from httpx import Client
from sqlalchemy import URL

T = TypeVar("T")

BACKEND_DIR = Path(__file__).resolve().parents[2]
SUPERUSER = ("live-admin@example.com", "live-admin-password")
GUNICORN = ("gunicorn", "app.main:app", "-k", "uvicorn_worker.UvicornWorker")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    log: Path | None = None,
) -> T:
    """Poll `probe` until it returns something other than None or False; on a
    timeout, fail with the text of `log` (a server's output, say)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            output = f":\n{log.read_text()}" if log else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{output}")
        time.sleep(interval)


def answers(url: str) -> bool:
    """Whether a GET of `url` answers 200 (a health check, say)."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def live_login(client: Client, email: str, password: str) -> dict[str, str]:
    """The Authorization header for a user, from a running server's login route."""
    answer = client.post(
        "/api/v1/login/access-token", data={"username": email, "password": password}
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


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
