"""The fault tests' PostgreSQL cluster (initdb and pg_ctl on a free port, so a test
can stop, restart or crash it), and gunicorn with two uvicorn workers, as in
production, on one of its databases; queries of what the app stored."""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
import pytest
from sqlalchemy import URL
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import create_engine
from app.initial_data import ensure_superuser
from tests.utils.servers import answers, free_port, wait_until

BACKEND_DIR = Path(__file__).resolve().parents[2]
SUPERUSER = ("faults-admin@example.com", "faults-admin-password")
WORKERS = 2
# Small, so that the tests can hold requests to them: none may take longer.
POOL_TIMEOUT = 2
CONNECT_TIMEOUT = 2
# What a client waits at most: beyond any bound asserted, so a hang is measured.
CLIENT_TIMEOUT = 15.0
STARTUP_TIMEOUT = 30.0

StopMode = Literal["fast", "immediate"]


def postgres_bin_dir() -> Path:
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    # Debian and Ubuntu keep the server binaries off PATH, one directory per version.
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: int(path.parents[1].name),
    )
    if not installed:
        pytest.fail(
            "The fault tests run a PostgreSQL cluster of their own: install the "
            "server binaries (initdb, pg_ctl; Debian package postgresql)."
        )
    return installed[-1].parent


@dataclass(frozen=True)
class Cluster:
    root: Path  # owned by the account that runs the cluster; holds its socket too
    bin_dir: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:  # initdb refuses root: the cluster runs as postgres
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{tool} {args[0]} failed: {done.stderr}"

    def init(self) -> None:
        self._run(
            "initdb",
            *("-D", str(self.data_dir), "-A", "trust", "-U", "postgres"),
            *("-E", "UTF8", "--no-sync"),
        )

    def start(self) -> None:
        # fsync off: only PostgreSQL's processes die in these tests, never the
        # machine, so the OS cache keeps every commit through a crash.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        log = str(self.root / "postgres.log")
        self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", log, "-w", "-o", options
        )

    def stop(self, mode: StopMode = "fast") -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w")

    def is_running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def conninfo(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def connect(
        self, database: str = "postgres", *, autocommit: bool = True
    ) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            self.conninfo(database), autocommit=autocommit, connect_timeout=5
        )

    def create_database(self, name: str, template: str = "template1") -> None:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def app_env(cluster: Cluster, database: str, **overrides: str) -> dict[str, str]:
    """The environment of the app's processes (prestart, gunicorn) on `database`."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "ENVIRONMENT": "local",
        "DATABASE_URL": cluster.url(database),
        "FIRST_SUPERUSER": SUPERUSER[0],
        "FIRST_SUPERUSER_PASSWORD": SUPERUSER[1],
        # One key for both workers: a token from one must work on the other.
        "SECRET_KEY": "faults-test-secret-key-0123456789abcdefghij",
        "DB_POOL_TIMEOUT": str(POOL_TIMEOUT),
        "DB_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
        **overrides,
    }


def start_prestart(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "scripts/prestart.sh"],
        cwd=BACKEND_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def create_superuser(url: URL) -> None:
    engine = create_engine(url)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            await ensure_superuser(session, email=SUPERUSER[0], password=SUPERUSER[1])
    finally:
        await engine.dispose()


def database_of_test(cluster: Cluster, template: str) -> Iterator[str]:
    name = f"faults_{uuid.uuid4().hex[:12]}"
    cluster.create_database(name, template=template)
    yield name
    if not cluster.is_running():  # the test left it down
        cluster.start()
    cluster.drop_database(name)


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def serve(env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    """gunicorn as in production, answering its liveness check; stopped afterwards
    unless the test already ended it."""
    port = free_port()
    command = [
        *("gunicorn", "app.main:app", "-k", "uvicorn_worker.UvicornWorker"),
        *("-w", str(WORKERS), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10"),
        *("--control-socket", str(tmp_path / "gunicorn.ctl")),
    ]
    log = tmp_path / "gunicorn.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command, cwd=BACKEND_DIR, env=env, stdout=log_file, stderr=log_file
        )
    server = Server(process=process, port=port, log=log)
    try:
        wait_until(
            lambda: (
                process.poll() is not None
                or answers(f"{server.url}/api/v1/utils/health-check/")
            ),
            STARTUP_TIMEOUT,
            "gunicorn to answer",
        )
        assert process.poll() is None, f"gunicorn exited: {server.log_tail()}"
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def login(base_url: str) -> dict[str, str]:
    """Bearer headers of the superuser, from a real password login."""
    response = httpx.post(
        f"{base_url}/api/v1/login/access-token",
        data={"username": SUPERUSER[0], "password": SUPERUSER[1]},
        timeout=CLIENT_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def app_sessions(cluster: Cluster, database: str) -> list[tuple[str, bool]]:
    """(state, in a transaction) of each client connection to `database` but ours."""
    with cluster.connect() as conn:
        rows = conn.execute(
            "SELECT coalesce(state, ''), xact_start IS NOT NULL FROM pg_stat_activity"
            " WHERE datname = %s AND backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return [(str(state), bool(in_transaction)) for state, in_transaction in rows]


def stored_items(cluster: Cluster, database: str) -> dict[str, str]:
    """title -> id of every item in `database`."""
    with cluster.connect(database) as conn:
        rows = conn.execute("SELECT title, id::text FROM items").fetchall()
    return {str(title): str(item_id) for title, item_id in rows}


def settled_sessions(cluster: Cluster, database: str) -> list[tuple[str, bool]]:
    """The app's connections once none is in a transaction (within 5 s)."""

    def settled() -> list[tuple[str, bool]] | None:
        sessions = app_sessions(cluster, database)
        return None if any(busy for _, busy in sessions) else sessions

    deadline = time.monotonic() + 5
    while (sessions := settled()) is None:
        assert time.monotonic() < deadline, app_sessions(cluster, database)
        time.sleep(0.05)
    return sessions


def lock_waiters(cluster: Cluster, database: str) -> int:
    """How many connections to `database` wait for a lock."""
    with cluster.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = %s AND wait_event_type = 'Lock'",
            (database,),
        ).fetchone()
    assert row is not None
    return int(row[0])


Record = Callable[[str, object], None]
