"""For tests of background jobs: an SMTP server that goes down and comes back,
`manage.py worker` processes, a TCP relay that cuts the database off."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import URL
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import BACKEND_DIR
from tests.utils.servers import free_port
from tests.utils.smtp import SmtpSink

FRONTEND = "https://app.example.com"
# Short enough for tests, long enough for a loaded 2-core machine.
STALLED_SECONDS = 5

Sessions = async_sessionmaker[AsyncSession]


def libpq_url(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Mailbox:
    """A real SMTP server on a fixed loopback port that can be taken down (the
    port then refuses connections) and brought back; messages accumulate."""

    port: int = field(default_factory=free_port)
    sink: SmtpSink = field(init=False)
    controller: Controller | None = None
    # Seconds each message takes to accept: lets a test kill a worker mid-send.
    delay: float = 0.0

    def __post_init__(self) -> None:
        self.sink = SlowSink(host="127.0.0.1", port=self.port, mailbox=self)

    def up(self) -> None:
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def down(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def message_ids(self) -> list[str]:
        return [str(message["Message-ID"]) for message in self.sink.messages]


@dataclass
class SlowSink(SmtpSink):
    mailbox: Mailbox | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.mailbox is not None and self.mailbox.delay:
            await asyncio.sleep(self.mailbox.delay)
        return await super().handle_DATA(server, session, envelope)


class WorkerProcess:
    """`python manage.py worker` in a process of its own, stopped by its pid."""

    def __init__(self, env: dict[str, str], log: Path, tmp: Path) -> None:
        tmp.mkdir()
        self.env = {**env, "TMPDIR": str(tmp)}
        self.log = log
        # Touched while it runs and reaches the database (its health check).
        self.alive_file = tmp / "app-worker-alive"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "worker"],
                cwd=BACKEND_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a container is killed."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def worker_env(database_url: URL, mailbox: Mailbox, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(mailbox.port),
        "SMTP_TLS": "false",
        "EMAILS_FROM_EMAIL": "noreply@example.com",
        "FRONTEND_HOST": FRONTEND,
        "SMTP_TIMEOUT": "5",
        # One quick send attempt per try: the job's retries are under test.
        "EMAIL_SEND_ATTEMPTS": "1",
        "EMAIL_JOB_RETRY_WAIT_SECONDS": "0.5",
        "JOBS_POLL_SECONDS": "0.2",
        "JOBS_STALLED_SECONDS": str(STALLED_SECONDS),
        "LOG_LEVEL": "INFO",
        **extra,
    }
    env.pop("SMTP_USER", None)
    env.pop("SMTP_PASSWORD", None)
    return env


async def poll(probe: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Await `probe()` until it returns something truthy, at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


class TcpProxy:
    """A loopback TCP relay to PostgreSQL that a test can cut (connections
    dropped, new ones refused) and restore: a database that goes away."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            client_writer.transport.abort()
            return
        self.writers |= {client_writer, writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))
        self.writers -= {client_writer, writer}
