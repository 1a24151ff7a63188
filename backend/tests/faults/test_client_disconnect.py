"""Clients that hang up while their request waits on the database leave no open
transaction and no connection checked out: more of them than the pools hold,
and the pools still serve everyone afterwards."""

import asyncio
import json
import socket
import struct
import time
from pathlib import Path

import httpx

from tests.utils.faults import (
    CLIENT_TIMEOUT,
    POOL_TIMEOUT,
    WORKERS,
    Cluster,
    Record,
    app_env,
    lock_waiters,
    login,
    serve,
    settled_sessions,
)
from tests.utils.servers import wait_until

POOL_SIZE = 2
# One connection lost per hang-up would leave a worker's pool empty by then.
HANG_UPS = WORKERS * POOL_SIZE + 1
DISCONNECT_SECONDS = 0.3  # the server sees the hang-up before the lock goes


def put_request(item_id: str, headers: dict[str, str], title: str) -> bytes:
    body = json.dumps({"title": title}).encode()
    head = (
        f"PUT /api/v1/items/{item_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {headers['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def hang_up(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Close the connection: with a TCP reset when `reset`, else orderly (FIN)."""
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    await writer.wait_closed()


async def test_client_hang_ups_leave_no_transaction_or_connection(
    cluster: Cluster, database: str, tmp_path: Path, record: Record
) -> None:
    env = app_env(cluster, database, DB_POOL_SIZE=str(POOL_SIZE), DB_MAX_OVERFLOW="0")
    with serve(env, tmp_path) as server:
        headers = login(server.url)
        created = httpx.post(
            f"{server.url}/api/v1/items/", json={"title": "held"}, headers=headers
        )
        item_id = created.json()["id"]
        for n in range(HANG_UPS):
            with cluster.connect(database, autocommit=False) as locker:
                locker.execute(
                    "SELECT 1 FROM items WHERE id = %s FOR UPDATE", (item_id,)
                )
                _, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(put_request(item_id, headers, f"abandoned-{n}"))
                await writer.drain()
                wait_until(
                    lambda: lock_waiters(cluster, database) == 1, 5, "the PUT to wait"
                )
                await hang_up(writer, reset=n % 2 == 1)
                time.sleep(DISCONNECT_SECONDS)
                locker.rollback()
        sessions = settled_sessions(cluster, database)

        async with httpx.AsyncClient(
            base_url=server.url, timeout=CLIENT_TIMEOUT
        ) as client:
            started = time.monotonic()
            answers = await asyncio.gather(
                *(
                    client.get("/api/v1/items/", headers=headers)
                    for _ in range(4 * WORKERS * POOL_SIZE)
                )
            )
            seconds = time.monotonic() - started
        final = httpx.get(f"{server.url}/api/v1/items/{item_id}", headers=headers)

    record("app_connections_after_hang_ups", len(sessions))
    record("title_after_hang_ups", final.json()["title"])
    record("burst_seconds", round(seconds, 3))
    assert len(sessions) <= WORKERS * POOL_SIZE, sessions
    assert [a.status_code for a in answers] == [200] * len(answers), answers
    assert seconds < POOL_TIMEOUT, f"{len(answers)} reads took {seconds:.2f} s"
