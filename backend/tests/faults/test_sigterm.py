"""SIGTERM to gunicorn under a write load: the requests it has started complete
(one of them held on a row lock past the signal), no 5xx, then it exits."""

import asyncio
import signal
import time
from pathlib import Path

import httpx

from tests.utils.faults import (
    CLIENT_TIMEOUT,
    Cluster,
    Record,
    app_env,
    app_sessions,
    lock_waiters,
    login,
    serve,
    stored_items,
)
from tests.utils.servers import wait_until
from tests.utils.write_load import WriteLoad, stored_problems, stored_unacknowledged

WRITERS = 12
STEADY_SECONDS = 1.0
HELD_SECONDS = 1.0  # the held request outlasts the signal by this much
EXIT_LIMIT = 5.0  # from the held request's end to gunicorn's exit
HELD_TITLE = "renamed while stopping"


async def test_sigterm_during_load_completes_started_requests(
    cluster: Cluster, database: str, tmp_path: Path, record: Record
) -> None:
    with serve(app_env(cluster, database), tmp_path) as server:
        headers = login(server.url)
        created = httpx.post(
            f"{server.url}/api/v1/items/", json={"title": "held"}, headers=headers
        )
        item_id = created.json()["id"]
        limits = httpx.Limits(max_connections=WRITERS + 1)
        with cluster.connect(database, autocommit=False) as locker:
            locker.execute("SELECT 1 FROM items WHERE id = %s FOR UPDATE", (item_id,))
            async with httpx.AsyncClient(
                base_url=server.url, timeout=CLIENT_TIMEOUT, limits=limits
            ) as client:
                load = WriteLoad(client, headers, WRITERS)
                load.start()
                held = asyncio.create_task(
                    client.put(
                        f"/api/v1/items/{item_id}",
                        json={"title": HELD_TITLE},
                        headers=headers,
                    )
                )
                await asyncio.to_thread(
                    wait_until,
                    lambda: lock_waiters(cluster, database) == 1,
                    5,
                    "the PUT to wait on the row lock",
                )
                await asyncio.sleep(STEADY_SECONDS)
                signalled_at = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(HELD_SECONDS)
                running_while_held = server.process.poll() is None
                locker.rollback()
                released_at = time.monotonic()
                held_response = await held
                exit_code = await asyncio.to_thread(server.process.wait, 20)
                exit_seconds = time.monotonic() - released_at
                writes = await load.stop()
        server_log = server.log_tail()

    assert running_while_held, f"gunicorn exited with a request running\n{server_log}"
    assert held_response.status_code == 200, held_response.text
    assert held_response.json()["title"] == HELD_TITLE
    assert exit_code == 0, server_log
    record("exit_seconds_after_last_request", round(exit_seconds, 3))
    assert exit_seconds < EXIT_LIMIT, (
        f"exited {exit_seconds:.2f} s after the last request"
    )
    wait_until(
        lambda: not app_sessions(cluster, database), 5, "its connections to close"
    )

    answered = [w for w in writes if w.status is not None]
    in_flight = [w for w in answered if w.started < signalled_at < w.ended]
    refused = [w for w in writes if w.status is None]
    record("answered", len(answered))
    record("in_flight_at_signal", len(in_flight))
    record("unanswered", len(refused))
    record(
        "unanswered_sent_before_signal", sum(w.started < signalled_at for w in refused)
    )
    not_ok = [w for w in answered if not w.ok]
    assert not not_ok, f"{len(not_ok)} of {len(answered)} answers not 2xx: {not_ok[:3]}"
    assert in_flight, "no write was in flight at the signal"
    assert refused, "no write came after the listener closed: the signal went unseen"

    stored = stored_items(cluster, database)
    assert not stored_problems(writes, stored), stored_problems(writes, stored)
    # A write the database has but its client never heard of: started, then dropped.
    dropped = stored_unacknowledged(writes, stored)
    assert not dropped, f"{len(dropped)} writes stored without an answer: {dropped[:3]}"
    assert stored[HELD_TITLE] == item_id
