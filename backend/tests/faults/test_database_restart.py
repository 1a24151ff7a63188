"""The database restarts under a steady write load, once cleanly (fast shutdown)
and once as after a crash (immediate): requests fail fast with 503, the service
recovers by itself, and every acknowledged write is in the database."""

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.utils.faults import (
    CLIENT_TIMEOUT,
    CONNECT_TIMEOUT,
    POOL_TIMEOUT,
    WORKERS,
    Cluster,
    Record,
    StopMode,
    app_env,
    login,
    serve,
    settled_sessions,
    stored_items,
)
from tests.utils.write_load import (
    Write,
    WriteLoad,
    stored_problems,
    stored_unacknowledged,
)

WRITERS = 12
POOL_SIZE, MAX_OVERFLOW = 8, 2
STEADY_SECONDS = 1.0
OUTAGE_SECONDS = 1.5
RECOVERY_LIMIT = 5.0
AFTER_RECOVERY_SECONDS = 1.0
MARGIN = 1.0
MODES: tuple[StopMode, ...] = ("fast", "immediate")
UNAVAILABLE = '{"detail":"Database unavailable, try again later"}'
EXPECTED = {(200, ""), (503, UNAVAILABLE)}


@dataclass(frozen=True)
class Outage:
    mode: StopMode
    down_at: float
    up_at: float


async def restart(cluster: Cluster, mode: StopMode) -> Outage:
    down_at = time.monotonic()
    await asyncio.to_thread(cluster.stop, mode)
    await asyncio.sleep(OUTAGE_SECONDS)
    await asyncio.to_thread(cluster.start)
    return Outage(mode, down_at, time.monotonic())


async def observe_recovery(load: WriteLoad, since: float) -> None:
    """Until writes started after `since` succeed for a while (or past the limit)."""
    deadline = since + RECOVERY_LIMIT + AFTER_RECOVERY_SECONDS
    while time.monotonic() < deadline:
        failures = [w.ended for w in load.writes if not w.ok and w.ended > since]
        recovered_at = max(failures, default=since)
        if time.monotonic() > recovered_at + AFTER_RECOVERY_SECONDS and any(
            w.ok and w.started > recovered_at for w in load.writes
        ):
            return
        await asyncio.sleep(0.1)


def recovery_seconds(writes: list[Write], outage: Outage) -> float:
    """From the database's return to the end of the last failed write."""
    failed = [w.ended for w in writes if not w.ok and w.ended > outage.up_at]
    return max(failed, default=outage.up_at) - outage.up_at


async def test_database_restarts_under_write_load(
    cluster: Cluster,
    database: str,
    tmp_path: Path,
    record: Record,
) -> None:
    env = app_env(
        cluster,
        database,
        DB_POOL_SIZE=str(POOL_SIZE),
        DB_MAX_OVERFLOW=str(MAX_OVERFLOW),
    )
    with serve(env, tmp_path) as server:
        headers = login(server.url)
        limits = httpx.Limits(max_connections=WRITERS)
        async with httpx.AsyncClient(
            base_url=server.url, timeout=CLIENT_TIMEOUT, limits=limits
        ) as client:
            load = WriteLoad(client, headers, WRITERS)
            load.start()
            outages = []
            for mode in MODES:
                await asyncio.sleep(STEADY_SECONDS)
                outages.append(await restart(cluster, mode))
                await observe_recovery(load, outages[-1].up_at)
            writes = await load.stop()
        ended_at = time.monotonic()
        sessions = settled_sessions(cluster, database)
        server_log = server.log_tail()

    odd = [w for w in writes if (w.status, w.error) not in EXPECTED]
    assert not odd, f"{len(odd)} writes neither 200 nor 503: {odd[:3]}\n{server_log}"
    early = [w for w in writes if w.ended < outages[0].down_at and not w.ok]
    assert not early, f"failures before any outage: {early[:3]}"

    longest = max(writes, key=lambda w: w.seconds)
    record("longest_write_seconds", round(longest.seconds, 3))
    bound = max(POOL_TIMEOUT, CONNECT_TIMEOUT) + MARGIN
    assert longest.seconds < bound, f"longest write {longest.seconds:.2f} s: {longest}"

    ends = [o.down_at for o in outages[1:]] + [ended_at]
    for outage, until in zip(outages, ends, strict=True):
        window = [w for w in writes if outage.down_at <= w.ended < until]
        unavailable = sum(w.status == 503 for w in window)
        recovery = recovery_seconds(window, outage)
        record(f"{outage.mode}_503", unavailable)
        record(f"{outage.mode}_recovery_seconds", round(recovery, 3))
        assert unavailable > 0, f"{outage.mode} restart unnoticed: {len(window)} writes"
        assert recovery < RECOVERY_LIMIT, (
            f"{outage.mode}: last failure {recovery:.2f} s after the database's return"
        )
        assert any(w.ok and w.started > outage.up_at + recovery for w in window)

    stored = stored_items(cluster, database)
    acknowledged = sum(w.ok for w in writes)
    unacknowledged = stored_unacknowledged(writes, stored)
    record("acknowledged", acknowledged)
    record("stored", len(stored))
    record("stored_unacknowledged", len(unacknowledged))
    assert not stored_problems(writes, stored), stored_problems(writes, stored)
    assert len(stored) == acknowledged + len(unacknowledged), (
        f"{len(stored)} rows, {acknowledged} acknowledged, {len(unacknowledged)} not"
    )
    record("app_connections", len(sessions))
    assert len(sessions) <= WORKERS * (POOL_SIZE + MAX_OVERFLOW), sessions
