import asyncio
import os
import threading
import time
import uuid
from datetime import timedelta

import pytest
import time_machine
from pwdlib.hashers.argon2 import Argon2Hasher

from app.core import security
from app.core.config import settings
from app.models import utcnow


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
        asyncio.create_task(security.hash_password("password-123")) for _ in range(16)
    ]
    started = time.perf_counter()
    longest_pause = 0.0
    while not all(task.done() for task in hashes):
        before = time.perf_counter()
        await asyncio.sleep(0.005)
        longest_pause = max(longest_pause, time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    # Sixteen Argon2 hashes take a few hundred ms; the loop never stalls for one.
    assert elapsed > 0.1
    assert longest_pause < 0.1
    assert all(task.result().startswith("$argon2id$") for task in hashes)


def test_new_hashes_use_the_configured_argon2_cost() -> None:
    cost = (
        f"m={settings.ARGON2_MEMORY_KIB},t={settings.ARGON2_TIME_COST},"
        f"p={settings.ARGON2_PARALLELISM}"
    )
    assert f"$argon2id$v=19${cost}$" in security.password_hash.hash("password-123")


async def test_hashes_of_another_cost_verify_and_are_upgraded() -> None:
    """Hashes made with other parameters (the template's older 64 MiB default)
    still verify, and come back re-hashed at the configured cost."""
    older = Argon2Hasher(memory_cost=65_536, time_cost=3, parallelism=4)
    stored = older.hash("password-123")

    verified, upgraded = await security.verify_password("password-123", stored)

    assert verified
    assert upgraded is not None and upgraded != stored
    assert f"m={settings.ARGON2_MEMORY_KIB}," in upgraded
    assert await security.verify_password("password-123", upgraded) == (True, None)


def test_a_checked_token_still_expires() -> None:
    """Decoding is cached per token string; its expiry is checked at every use."""
    user_id, session_id = uuid.uuid4(), uuid.uuid4()
    with time_machine.travel(utcnow(), tick=False) as clock:
        token = security.create_access_token(user_id, session_id, timedelta(seconds=1))

        claims = security.decode_token(token, token_type="access")
        assert claims is not None and claims.user_id == user_id
        assert claims.session_id == session_id
        assert security.decode_token(token, token_type="password_reset") is None

        clock.shift(1.1)
        assert security.decode_token(token, token_type="access") is None


def test_a_cached_token_dies_with_its_signing_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = security.create_access_token(uuid.uuid4(), uuid.uuid4())
    assert security.decode_token(token, token_type="access") is not None

    monkeypatch.setattr(settings, "SECRET_KEY", "another-secret-key-0123456789-abcdef")
    assert security.decode_token(token, token_type="access") is None


def test_tampered_tokens_are_refused_even_after_the_real_one_was_cached() -> None:
    token = security.create_access_token(uuid.uuid4(), uuid.uuid4())
    assert security.decode_token(token, token_type="access") is not None
    header, payload, signature = token.split(".")
    first = "B" if signature[0] == "A" else "A"  # all 6 bits of it are signature
    forged = f"{header}.{payload}.{first}{signature[1:]}"

    assert security.decode_token(forged, token_type="access") is None
