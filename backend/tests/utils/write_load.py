"""A steady write load: concurrent writers, each creating items with unique titles
one after another, every outcome recorded with its client-side timing."""

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import httpx

# What a client does after a failed write before the next one, as a real one
# would; it also keeps the writers from spinning on instant refusals.
BACKOFF_SECONDS = 0.05
TITLE_PREFIX = "load-"


@dataclass(frozen=True)
class Write:
    title: str
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer at all
    item_id: str | None = None
    error: str = ""  # the answer's body, or the transport error

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class WriteLoad:
    client: httpx.AsyncClient
    headers: dict[str, str]
    writers: int
    writes: list[Write] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write(writer)) for writer in range(self.writers)
        ]

    async def stop(self) -> list[Write]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.writes

    async def _write(self, writer: int) -> None:
        for n in itertools.count():
            if self._stop.is_set():
                return
            write = await self._create(f"{TITLE_PREFIX}{writer}-{n}")
            self.writes.append(write)
            if not write.ok:
                await asyncio.sleep(BACKOFF_SECONDS)

    async def _create(self, title: str) -> Write:
        started = time.monotonic()
        try:
            response = await self.client.post(
                "/api/v1/items/", json={"title": title}, headers=self.headers
            )
        except httpx.TransportError as error:
            return Write(
                title, started, time.monotonic(), None, error=type(error).__name__
            )
        ended = time.monotonic()
        if response.status_code == 200:
            return Write(title, started, ended, 200, item_id=response.json()["id"])
        return Write(title, started, ended, response.status_code, error=response.text)


def stored_problems(writes: list[Write], stored: dict[str, str]) -> list[str]:
    """Where the database (title -> id) disagrees with the acknowledged writes."""
    problems = []
    acknowledged = {w.title: w.item_id for w in writes if w.ok}
    missing = sorted(acknowledged.keys() - stored.keys())
    if missing:
        problems.append(f"{len(missing)} acknowledged writes missing: {missing[:5]}")
    moved = sorted(
        t for t in acknowledged.keys() & stored.keys() if acknowledged[t] != stored[t]
    )
    if moved:
        problems.append(f"{len(moved)} stored under another id: {moved[:5]}")
    sent = {w.title for w in writes}
    unknown = sorted(t for t in stored if t.startswith(TITLE_PREFIX) and t not in sent)
    if unknown:
        problems.append(f"{len(unknown)} rows no writer sent: {unknown[:5]}")
    return problems


def stored_unacknowledged(writes: list[Write], stored: dict[str, str]) -> list[Write]:
    """Writes the database committed although their client got no 2xx."""
    return [w for w in writes if not w.ok and w.title in stored]
