"""For tests that run real servers: a free port, bounded polling, a login over HTTP."""

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from httpx import Client

T = TypeVar("T")


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
