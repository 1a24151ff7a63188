import asyncio
import os
import threading
import time

from app.core import security
from app.core.config import settings


def _thread_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_hashing_runs_in_a_lower_priority_pool() -> None:
    assert await security._run_hashing(_thread_niceness) == security.HASHING_NICENESS
    assert _thread_niceness() < security.HASHING_NICENESS
    assert (
        security._hashing_executor()._max_workers == settings.PASSWORD_HASH_CONCURRENCY
    )


async def test_event_loop_stays_free_while_hashing() -> None:
    hashes = [
        asyncio.create_task(security.hash_password("password-123")) for _ in range(4)
    ]
    started = time.perf_counter()
    longest_pause = 0.0
    while not all(task.done() for task in hashes):
        before = time.perf_counter()
        await asyncio.sleep(0.005)
        longest_pause = max(longest_pause, time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    # Four Argon2 hashes take a few hundred ms; the loop never stalls for one.
    assert elapsed > 0.1
    assert longest_pause < 0.1
    assert all(task.result().startswith("$argon2id$") for task in hashes)
