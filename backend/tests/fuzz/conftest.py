"""Fixtures of the fuzz tests: a live server on a PostgreSQL database of its own
(`<POSTGRES_DB>_fuzz`, dropped afterwards) and its identities; the run's summary.
Helpers are in tests/utils/fuzz.py."""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from sqlalchemy import URL

from tests.utils.database import empty_database
from tests.utils.fuzz import (
    API_PREFIX,
    BACKEND_DIR,
    RUNS,
    SUPERUSER,
    USER,
    FuzzRun,
    Identities,
    Identity,
    Server,
)
from tests.utils.servers import answers, free_port, prestart, wait_until


@pytest.fixture(scope="session")
def runs() -> list[FuzzRun]:
    return RUNS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RUNS:
        return
    terminalreporter.section("fuzzing")
    for run in RUNS:
        terminalreporter.line(run.summary())
    total = sum(run.cases for run in RUNS)
    operations = set().union(*(run.operations for run in RUNS))
    authenticated = set().union(*(run.with_valid_token for run in RUNS))
    terminalreporter.line(
        f"total: {total} cases; {len(authenticated)} of {len(operations)} "
        "operations exercised with a valid token"
    )
    for run in RUNS:
        if run.failures:
            terminalreporter.line(run.report())


@pytest.fixture(scope="session")
def fuzz_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    url: URL
    for url in empty_database("fuzz", tmp_path_factory.mktemp("fuzz-db")):
        if url.get_backend_name() != "postgresql":
            pytest.skip("the fuzz tests run a multi-worker server on PostgreSQL")
        yield url


@pytest.fixture(scope="session")
def server(
    fuzz_database_url: URL, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("fuzz-server")
    port = free_port()
    env = {
        # Mail stays unconfigured (unless the developer's .env configures it):
        # nothing the fuzzer triggers is sent, and test-email answers 503.
        **{k: v for k, v in os.environ.items() if not k.startswith("SMTP_")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "ENVIRONMENT": "local",  # the /private routes are fuzzed too
        "DOCS_ENABLED": "true",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": fuzz_database_url.render_as_string(hide_password=False),
        "FIRST_SUPERUSER": SUPERUSER[0],
        "FIRST_SUPERUSER_PASSWORD": SUPERUSER[1],
        # One key for both workers: a token from one must work on the other.
        "SECRET_KEY": "fuzz-server-test-secret-key-0123456789abcdef",
        # The Supabase exchange configured (legacy secret): it answers 401s, not 501.
        "SUPABASE_JWT_SECRET": "fuzz-supabase-jwt-secret-0123456789abcdef",
        # High limits so the fuzzer meets the handlers, not only 429s (which
        # stay documented wherever they can happen).
        "LOGIN_MAX_FAILURES_PER_ACCOUNT": "1000000",
        "LOGIN_MAX_FAILURES_PER_ADDRESS": "1000000",
        "EMAIL_REQUESTS_PER_ADDRESS": "1000000",
        "EMAIL_REQUESTS_PER_CLIENT": "1000000",
        "EMAIL_REQUESTS_PER_ADDRESS_AND_CLIENT": "1000000",
        "LOGIN_MAX_FAILURES_PER_ACCOUNT_ALL_ADDRESSES": "1000000",
        "SIGNUPS_PER_CLIENT": "1000000",
    }
    env.pop("SUPABASE_URL", None)
    prestart(env)
    command = [
        *("gunicorn", "app.main:app", "-k", "uvicorn_worker.UvicornWorker", "-w", "2"),
        *("-b", f"127.0.0.1:{port}", "--control-socket", str(tmp_path / "g.ctl")),
    ]
    log_path = tmp_path / "gunicorn.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base_url = f"http://127.0.0.1:{port}"
    dsn = fuzz_database_url.set(drivername="postgresql").render_as_string(
        hide_password=False
    )
    try:
        health = f"{base_url}{API_PREFIX}/utils/health-check/"
        wait_until(lambda: answers(health), 30, "gunicorn to start", log=log_path)
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as database:
            yield Server(base_url=base_url, database=database, log_path=log_path)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def identities(server: Server) -> Identities:
    created = httpx.post(
        f"{server.api_url}/private/users/",
        json={
            "email": USER[0],
            "password": USER[1],
            "full_name": "Fuzz User",
            "is_verified": True,
        },
    )
    assert created.status_code == 200, created.text
    superuser_row = server.database.execute(
        "SELECT id FROM users WHERE email = %s", (SUPERUSER[0],)
    ).fetchone()
    assert superuser_row is not None
    found = Identities(
        user=Identity(
            "user", *USER, server=server, user_id=uuid.UUID(created.json()["id"])
        ),
        superuser=Identity(
            "superuser", *SUPERUSER, server=server, user_id=superuser_row["id"]
        ),
    )
    for identity in found.all():
        identity.snapshot()
    return found
