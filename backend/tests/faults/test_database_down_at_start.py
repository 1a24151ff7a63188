"""The database is down when the service starts: prestart waits for it, and the
server answers liveness at once but readiness only once the database is back."""

import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from tests.utils.faults import (
    CLIENT_TIMEOUT,
    CONNECT_TIMEOUT,
    Cluster,
    app_env,
    login,
    serve,
    start_prestart,
)
from tests.utils.servers import wait_until

READY = "/api/v1/utils/ready/"
HEALTH = "/api/v1/utils/health-check/"
DOWN_SECONDS = 3.0  # prestart retries once a second: it has to wait a few times
MARGIN = 1.0
RECOVERY_LIMIT = 5.0


class Probe(NamedTuple):
    ready: int
    body: Any
    seconds: float
    health: int


def probe(api: httpx.Client) -> Probe:
    started = time.monotonic()
    ready = api.get(READY)
    seconds = time.monotonic() - started
    return Probe(ready.status_code, ready.json(), seconds, api.get(HEALTH).status_code)


def test_prestart_waits_for_the_database_and_readiness_follows(
    cluster: Cluster, empty_database: str, tmp_path: Path
) -> None:
    env = app_env(cluster, empty_database)
    cluster.stop()
    prestart = start_prestart(env)
    down_since = time.monotonic()
    try:
        with (
            serve(env, tmp_path) as server,
            httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as api,
        ):
            probes = [probe(api)]
            while time.monotonic() < down_since + DOWN_SECONDS:
                time.sleep(0.1)
                probes.append(probe(api))
            assert prestart.poll() is None, (
                f"prestart ended with the database down: {prestart.communicate()}"
            )

            cluster.start()
            up_at = time.monotonic()
            wait_until(lambda: api.get(READY).status_code == 200, 10, "readiness")
            ready_seconds = time.monotonic() - up_at
            _, stderr = prestart.communicate(timeout=60)
            prestart_seconds = time.monotonic() - up_at
            login(
                server.url
            )  # the superuser prestart creates, in the tables it migrates
    finally:
        if prestart.poll() is None:
            prestart.kill()
            prestart.wait()

    assert prestart.returncode == 0, stderr
    assert "Retrying" in stderr, f"prestart did not wait: {stderr}"
    unexpected = [
        p
        for p in probes
        if (p.ready, p.body, p.health) != (503, {"detail": "Database unavailable"}, 200)
    ]
    assert not unexpected, (
        f"{len(unexpected)} of {len(probes)} probes: {unexpected[:3]}"
    )
    longest = max(p.seconds for p in probes)
    assert longest < CONNECT_TIMEOUT + MARGIN, (
        f"readiness took up to {longest:.2f} s with the database down"
    )
    assert ready_seconds < RECOVERY_LIMIT, (
        f"ready {ready_seconds:.2f} s after the return"
    )
    assert prestart_seconds < 20, (
        f"prestart ended {prestart_seconds:.1f} s after the return"
    )
