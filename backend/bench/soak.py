"""Soak test of the API: minutes of mixed traffic at a fixed rate, on a database of its own.

Usage, from the repository root (soak.sh installs uv and the locked dependencies
if missing, then runs this module with `uv run`):

    bash backend/bench/soak.sh [--minutes 10] [--rate 150] [--warmup 60] [--keep]

PostgreSQL: POSTGRES_SERVER/PORT/USER/PASSWORD, as for bench/run.sh.

1. Creates `bench_soak_<timestamp>_<pid>`, migrates it, seeds 1,000 users (one
   Argon2 hash of a known password) and 50,000 items (about 50 per user).
2. Serves the app the production way (gunicorn, 2 uvicorn workers,
   ENVIRONMENT=production, JSON log lines to a log file) and logs in
   `--sessions` users (not counted).
3. Sends `--rate` requests per second, open loop (one every 1/rate s whatever
   the answers; HTTP/1.1 keep-alive, at most 32 connections, 10 s per request,
   a timeout counts as an error) for `--minutes`:
     GET /users/me, GET /items/ (first page, then the pages after it through
     `next_cursor`), GET, PUT and DELETE /items/{id} of the session's own items
     (DELETE only of those it created), POST /items/, refresh-token rotation
     (the newest pair is used from then on); a login every 1/`--login-rate` s,
     each new session pushing the oldest out (POST /logout, then its access token
     must get 401); and the expected 4xx: a wrong password every 12 s (on
     rotating accounts, under the per-address limit), an unknown item (404), a
     bad body (422). 429s are counted apart.
4. Every second: the database's connections and those `idle in transaction`
   (pg_stat_activity); every 10 s also each worker's RSS, req/s, running counts.
5. Prints Markdown tables and PASS/FAIL lines: zero 5xx, zero timeouts and
   connection errors, only the expected 4xx, per-worker RSS at the end within
   10% of its lowest sample in the 30 s after `--warmup` s (no worker replaced),
   connections never above workers x (DB_POOL_SIZE + DB_MAX_OVERFLOW) and within
   workers x DB_POOL_SIZE at the end, no connection idle in transaction at the
   end. Writes backend/bench/results/soak-<timestamp>.json.

Drops the database at the end unless --keep. The server log goes to a
temporary directory, removed on success, kept and named on failure or with
--keep; its WARNING and ERROR lines are summed up in the report either way.
Exit status: 0 when every check passes, 1 when one fails, 2 on an error.
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench import db
from bench.openloop import percentiles
from bench.run import (
    API,
    HEALTH,
    PASSWORD,
    RESULTS_DIR,
    Check,
    git_state,
    out,
    server_env,
)
from bench.run import say as bench_say
from bench.servers import (
    BACKEND_DIR,
    CpuSample,
    Process,
    cpu_used,
    gunicorn,
    rss_kib,
    sample_cpu,
)

WORKERS = 2
TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
# Operations under way; beyond, a tick is skipped (and counted) rather than
# queued, so that a server slowed down by the rest of the machine is not also
# buried under a backlog that turns into client-side timeouts.
MAX_IN_FLIGHT = 2 * MAX_CONNECTIONS
PAGE = 20
SAMPLE_EVERY_S = 10
WARM_WINDOW_S = 30  # the RSS after the warm-up: the lowest of these samples
WRONG_PASSWORD = "not-the-password-1234"
# The mix, in percent of the ticks that no scheduled login or logout takes.
MIX = {
    "GET /users/me": 24,
    "GET /items/": 14,
    "GET /items/?cursor": 10,
    "GET /items/{id}": 14,
    "POST /items/": 10,
    "PUT /items/{id}": 10,
    "DELETE /items/{id}": 8,
    "POST /login/refresh-token": 4,
    "GET /items/{unknown id}": 3,
    "POST /items/ (bad body)": 3,
}
# The answer each operation must get; any other is "unexpected" (429 aside).
EXPECTED = {
    **dict.fromkeys(MIX, 200),
    "GET /items/{unknown id}": 404,
    "POST /items/ (bad body)": 422,
    "POST /login/access-token": 200,
    "POST /login/access-token (wrong password)": 400,
    "POST /logout": 200,
    "GET /users/me (after logout)": 401,
    "setup: POST /login/access-token": 200,
}
WRONG_ACCOUNTS = 100  # the top users: wrong passwords only, in turn


say = partial(bench_say, tool="soak")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak.sh",
        description="Soak test of the API (see the module docstring).",
    )
    parser.add_argument(
        "--minutes", type=float, default=10, help="length of the load (10)"
    )
    parser.add_argument(
        "--rate", type=float, default=150, help="requests per second (150)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=60,
        help="seconds before the RSS baseline (60; at most half the run)",
    )
    parser.add_argument(
        "--sessions", type=int, default=20, help="logged-in sessions in use (20)"
    )
    parser.add_argument(
        "--login-rate", type=float, default=0.5, help="logins per second (0.5)"
    )
    parser.add_argument("--users", type=int, default=1000, help="users seeded (1000)")
    parser.add_argument(
        "--items", type=int, default=50_000, help="items seeded (50000)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the database and the server log"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.login_rate <= 0:
        parser.error("--minutes, --rate and --login-rate must be positive")
    if args.users < args.sessions + 200 or args.items < 2 * db.OWN_ITEMS:
        parser.error("need --users >= --sessions + 200 and --items >= 200")
    return args


# --- load --------------------------------------------------------------------


@dataclass(eq=False)
class Session:
    """A logged-in user as the load generator sees it."""

    user: int
    access: str
    refresh: str
    known: set[str] = field(default_factory=set)  # item ids seen or created
    created: set[str] = field(default_factory=set)  # deletable
    busy: set[str] = field(default_factory=set)  # a request on them is under way
    gone: set[str] = field(default_factory=set)  # deleted
    cursor: str | None = None
    in_flight: int = 0
    refreshing: bool = False
    retired: bool = False

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}

    def take_item(self, pool: set[str]) -> str | None:
        free = [item for item in pool if item not in self.busy]
        if not free:
            return None
        item = random.choice(free)
        self.busy.add(item)
        return item

    def learn(self, items: list[str]) -> None:
        self.known.update(item for item in items if item not in self.gone)


@dataclass
class Tally:
    """Answers of one operation."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    unexpected: int = 0


def status_class(key: str) -> str:
    return f"{key[0]}xx" if key.isdigit() else "errors"


class Load:
    """The open-loop load generator and its tallies."""

    def __init__(self, args: argparse.Namespace, client: httpx.AsyncClient) -> None:
        self.args = args
        self.client = client
        self.tallies: dict[str, Tally] = {}
        self.totals: Counter[str] = Counter()  # status code or error kind
        self.sessions: list[Session] = []
        self.live_users: set[int] = set()
        self.next_user = 2  # users 0 and 1 own exactly 100 items; unused here
        self.next_wrong = 0
        self.pending: deque[Callable[[], Awaitable[None]]] = deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self.skipped = 0  # ticks dropped: MAX_IN_FLIGHT reached
        self.late = 0  # ticks dropped: the generator fell a second behind
        self.client_errors: Counter[str] = Counter()  # bugs of this script
        self.requests = 0
        self.lost = 0  # sessions ended by a failure (401, a refresh without answer)
        # httpx degrades badly (timeouts against a trivial server) with more
        # requests in flight than pooled connections: the rest wait here.
        self.gate = asyncio.Semaphore(MAX_CONNECTIONS)

    # --- one request -----------------------------------------------------

    async def call(
        self,
        op: str,
        method: str,
        path: str,
        session: Session | None = None,
        **kwargs: Any,
    ) -> httpx.Response | None:
        """One request, tallied under `op`; None on a timeout or a connection error."""
        headers = session.headers() if session else {}
        if session:
            session.in_flight += 1
        tally = self.tallies.setdefault(op, Tally())
        started = time.perf_counter()
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout(TIMEOUT_S), self.gate:
                response = await self.client.request(
                    method, API + path, headers=headers, **kwargs
                )
            key = str(response.status_code)
        except (TimeoutError, httpx.TimeoutException):
            key = "timeout"
        except httpx.TransportError as error:
            key = f"connection error ({type(error).__name__})"
        finally:
            if session:
                session.in_flight -= 1
        self.requests += 1
        tally.latencies.append(time.perf_counter() - started)
        tally.statuses[key] += 1
        self.totals[key] += 1
        if key != str(EXPECTED[op]) and key != "429":
            tally.unexpected += 1
            if session and key == "401" and not session.retired:
                self.lose(session)
        return response

    # --- sessions ----------------------------------------------------------

    def active(self) -> list[Session]:
        return [s for s in self.sessions if not s.retired]

    def lose(self, session: Session) -> None:
        """A session the server ended: out of use, replaced by the next logins."""
        self.lost += 1
        session.retired = True
        self.sessions.remove(session)
        self.live_users.discard(session.user)

    def take_user(self) -> int:
        first, end = 2, self.args.users - WRONG_ACCOUNTS
        for _ in range(end - first):
            user = self.next_user
            self.next_user = first + (user + 1 - first) % (end - first)
            if user not in self.live_users:
                self.live_users.add(user)
                return user
        raise RuntimeError("no user without a session left")

    async def login(self, op: str = "POST /login/access-token") -> None:
        user = self.take_user()
        form = {"username": db.email(user), "password": PASSWORD}
        response = await self.call(op, "POST", "/login/access-token", data=form)
        if response is None or response.status_code != 200:
            self.live_users.discard(user)
            return
        body = response.json()
        self.sessions.append(Session(user, body["access_token"], body["refresh_token"]))
        active = self.active()
        if len(active) > self.args.sessions:
            oldest = active[0]
            oldest.retired = True  # no new request picks it
            self.pending.append(lambda: self.logout(oldest))

    async def logout(self, session: Session) -> None:
        while session.in_flight:  # its last requests first
            await asyncio.sleep(0.05)
        response = await self.call("POST /logout", "POST", "/logout", session)
        self.sessions.remove(session)
        if response is not None and response.status_code == 200:
            self.pending.append(lambda: self.me_after_logout(session))
        else:
            self.live_users.discard(session.user)

    async def me_after_logout(self, session: Session) -> None:
        await self.call("GET /users/me (after logout)", "GET", "/users/me", session)
        self.live_users.discard(session.user)

    async def wrong_password(self) -> None:
        user = self.args.users - WRONG_ACCOUNTS + self.next_wrong
        self.next_wrong = (self.next_wrong + 1) % WRONG_ACCOUNTS
        form = {"username": db.email(user), "password": WRONG_PASSWORD}
        await self.call(
            "POST /login/access-token (wrong password)",
            "POST",
            "/login/access-token",
            data=form,
        )

    async def refresh(self, session: Session) -> None:
        if session.refreshing:  # a refresh token works once
            await self.me(session)
            return
        session.refreshing = True
        try:
            response = await self.call(
                "POST /login/refresh-token",
                "POST",
                "/login/refresh-token",
                session,
                json={"refresh_token": session.refresh},
            )
            if response is not None and response.status_code == 200:
                body = response.json()
                session.access, session.refresh = (
                    body["access_token"],
                    body["refresh_token"],
                )
            elif response is None and not session.retired:
                # The server may have rotated the token: the old one is spent,
                # and presenting it would end the session (theft detection).
                self.lose(session)
        finally:
            session.refreshing = False

    # --- the mix -------------------------------------------------------------

    async def me(self, session: Session) -> None:
        await self.call("GET /users/me", "GET", "/users/me", session)

    async def list_items(self, session: Session, *, next_page: bool = False) -> None:
        params: dict[str, str | int] = {"limit": PAGE}
        op = "GET /items/"
        if next_page and session.cursor:
            params["cursor"] = session.cursor
            op = "GET /items/?cursor"
        response = await self.call(op, "GET", "/items/", session, params=params)
        if response is not None and response.status_code == 200:
            body = response.json()
            session.learn([item["id"] for item in body["data"]])
            session.cursor = body["next_cursor"]  # None after the last page

    async def read_item(self, session: Session) -> None:
        item = session.take_item(session.known)
        if item is None:
            await self.list_items(session)
            return
        try:
            await self.call("GET /items/{id}", "GET", f"/items/{item}", session)
        finally:
            session.busy.discard(item)

    async def update_item(self, session: Session) -> None:
        item = session.take_item(session.known)
        if item is None:
            await self.list_items(session)
            return
        body = {"title": f"Soak {random.randrange(10**6)}", "description": "PUT"}
        try:
            await self.call(
                "PUT /items/{id}", "PUT", f"/items/{item}", session, json=body
            )
        finally:
            session.busy.discard(item)

    async def create_item(self, session: Session) -> None:
        body = {"title": "Soak", "description": "POST by bench/soak.py"}
        response = await self.call(
            "POST /items/", "POST", "/items/", session, json=body
        )
        if response is not None and response.status_code == 200:
            item = response.json()["id"]
            session.known.add(item)
            session.created.add(item)

    async def delete_item(self, session: Session) -> None:
        item = session.take_item(session.created)
        if item is None:
            await self.create_item(session)
            return
        session.gone.add(item)
        session.known.discard(item)
        session.created.discard(item)
        try:
            await self.call("DELETE /items/{id}", "DELETE", f"/items/{item}", session)
        finally:
            session.busy.discard(item)

    async def unknown_item(self, session: Session) -> None:
        await self.call(
            "GET /items/{unknown id}", "GET", f"/items/{uuid.uuid4()}", session
        )

    async def bad_body(self, session: Session) -> None:
        await self.call(
            "POST /items/ (bad body)", "POST", "/items/", session, json={"title": ""}
        )

    def mixed(self) -> Callable[[], Awaitable[None]]:
        active = self.active()
        if not active:
            return self.login
        session = random.choice(active)
        op = random.choices(list(MIX), weights=list(MIX.values()))[0]
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "GET /users/me": lambda: self.me(session),
            "GET /items/": lambda: self.list_items(session),
            "GET /items/?cursor": lambda: self.list_items(session, next_page=True),
            "GET /items/{id}": lambda: self.read_item(session),
            "POST /items/": lambda: self.create_item(session),
            "PUT /items/{id}": lambda: self.update_item(session),
            "DELETE /items/{id}": lambda: self.delete_item(session),
            "POST /login/refresh-token": lambda: self.refresh(session),
            "GET /items/{unknown id}": lambda: self.unknown_item(session),
            "POST /items/ (bad body)": lambda: self.bad_body(session),
        }
        action = actions[op]
        # Counted from now, not from its first request: a logout waits for it.
        session.in_flight += 1

        async def pinned() -> None:
            try:
                await action()
            finally:
                session.in_flight -= 1

        return pinned

    # --- the clock -----------------------------------------------------------

    def spawn(self, action: Callable[[], Awaitable[None]]) -> None:
        async def guarded() -> None:
            try:
                await action()
            except Exception as error:  # a bug here, not an answer of the server
                kind = f"{type(error).__name__}: {error}"
                if not self.client_errors[kind]:
                    say(f"load generator error: {traceback.format_exc()}")
                self.client_errors[kind] += 1

        task = asyncio.create_task(guarded())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        interval = 1 / self.args.rate
        start = loop.time()
        end = start + seconds
        next_login = start + 1 / self.args.login_rate
        # Under the per-address limit of failed logins, whatever the run's length.
        from app.core.config import settings

        wrong_every = settings.LOGIN_FAILURE_WINDOW_SECONDS / (
            0.75 * settings.LOGIN_MAX_FAILURES_PER_ADDRESS
        )
        next_wrong = start + wrong_every / 2
        tick = start
        while tick < end:
            now = loop.time()
            if now < tick:
                await asyncio.sleep(tick - now)
            elif now - tick > 1:  # a second behind: drop the backlog
                missed = int((now - tick) / interval)
                self.late += missed
                tick += missed * interval
            tick += interval
            # Before an action is picked: a picked one counts as under way for
            # its session (a logout waits for it), so it must run.
            if len(self.tasks) >= MAX_IN_FLIGHT:
                self.skipped += 1
                continue
            action: Callable[[], Awaitable[None]]
            if self.pending:
                action = self.pending.popleft()
            elif loop.time() >= next_login:
                action = self.login
                next_login += 1 / self.args.login_rate
            elif loop.time() >= next_wrong:
                action = self.wrong_password
                next_wrong += wrong_every
            else:
                action = self.mixed()
            self.spawn(action)

    async def drain(self, timeout: float = TIMEOUT_S + 5) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)

    def by_class(self) -> dict[str, int]:
        classes: Counter[str] = Counter()
        for key, n in self.totals.items():
            classes[status_class(key)] += n
        return dict(classes)


# --- samples -------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the load started
    requests: int
    rps: float  # over the last interval
    by_class: dict[str, int]  # running counts: 2xx, 4xx, 5xx, errors
    rss_kib: dict[str, int]  # worker pid -> RSS
    connections: int
    idle_in_transaction: int
    connections_opened: int  # since the database was created


def connections(server: db.Server, database: str) -> tuple[int, int]:
    """Connections to `database` now, and how many are idle in a transaction."""
    with server.connect("postgres") as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE state = 'idle in transaction')"
            " FROM pg_stat_activity WHERE datname = %s",
            (database,),
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


@dataclass
class Probe:
    """What the sampler reads outside the event loop (the database, /proc)."""

    t: float
    connections: int
    idle_in_transaction: int
    workers: list[int] = field(default_factory=list)
    rss_kib: dict[str, int] = field(default_factory=dict)
    connections_opened: int = 0


class Monitor:
    """Connections every second, everything every SAMPLE_EVERY_S seconds."""

    def __init__(
        self, server: db.Server, database: str, api: Process, load: Load
    ) -> None:
        self.server = server
        self.database = database
        self.api = api
        self.load = load
        self.workers = api.children()
        self.replaced: list[int] = []  # workers that went away
        self.samples: list[Sample] = []
        self.per_second: list[tuple[float, int, int]] = []  # t, connections, idle in tx
        self.started = time.monotonic()
        self.last = (0.0, 0)  # t, requests

    def probe(self, full: bool) -> Probe:
        t = time.monotonic() - self.started
        conns, idle = connections(self.server, self.database)
        probe = Probe(round(t, 1), conns, idle)
        if full:
            probe.workers = self.api.children()
            probe.rss_kib = {str(pid): rss_kib(pid) for pid in probe.workers}
            probe.connections_opened = db.sessions(self.server, self.database)
        return probe

    def record(self, probe: Probe) -> Sample:
        """On the event loop: the load's counters change only there."""
        self.per_second.append((probe.t, probe.connections, probe.idle_in_transaction))
        self.replaced.extend(pid for pid in self.workers if pid not in probe.workers)
        self.workers = probe.workers
        requests = self.load.requests
        elapsed = probe.t - self.last[0]
        sample = Sample(
            t=probe.t,
            requests=requests,
            rps=(requests - self.last[1]) / elapsed if elapsed > 0 else 0.0,
            by_class=self.load.by_class(),
            rss_kib=probe.rss_kib,
            connections=probe.connections,
            idle_in_transaction=probe.idle_in_transaction,
            connections_opened=probe.connections_opened,
        )
        self.last = (probe.t, requests)
        self.samples.append(sample)
        return sample

    async def sample(self) -> Sample:
        return self.record(await asyncio.to_thread(self.probe, True))

    async def run(self) -> None:
        seconds = 0
        while True:
            await asyncio.sleep(1 - (time.monotonic() - self.started) % 1)
            seconds += 1
            if seconds % SAMPLE_EVERY_S:
                probe = await asyncio.to_thread(self.probe, False)
                self.per_second.append(
                    (probe.t, probe.connections, probe.idle_in_transaction)
                )
                continue
            s = await self.sample()
            classes = ", ".join(f"{k} {v:,}" for k, v in sorted(s.by_class.items()))
            rss = " / ".join(f"{kib / 1024:.1f}" for kib in s.rss_kib.values())
            say(
                f"{s.t:5.0f} s: {s.rps:6.1f} req/s; {classes}; RSS {rss} MiB;"
                f" {s.connections} connections, {s.idle_in_transaction} idle in tx"
            )


# --- the run ---------------------------------------------------------------------


@dataclass
class Outcome:
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    per_second: list[tuple[float, int, int]] = field(default_factory=list)
    end: Sample | None = None
    replaced: list[int] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


async def setup_sessions(load: Load, count: int) -> None:
    """The first sessions (not counted), enough at a time that every hashing
    thread of every worker hashes: from then on each keeps its Argon2 block
    (ARGON2_MEMORY_KIB, reused by the allocator), before the memory baseline."""
    from app.core.config import settings

    gate = asyncio.Semaphore(2 * WORKERS * settings.PASSWORD_HASH_CONCURRENCY)

    async def one() -> None:
        async with gate:
            await load.login("setup: POST /login/access-token")

    await asyncio.gather(*(one() for _ in range(count)))
    del load.tallies["setup: POST /login/access-token"]
    load.totals.clear()
    load.requests = 0
    if len(load.sessions) < count:
        raise RuntimeError(f"only {len(load.sessions)} of {count} setup logins passed")


async def soak(
    args: argparse.Namespace, url: str, api: Process, server: db.Server, database: str
) -> tuple[Load, Outcome]:
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_CONNECTIONS,
        # Under gunicorn's keep-alive (2 s): never reuse a connection the
        # server is closing at that moment.
        keepalive_expiry=1.0,
    )
    outcome = Outcome()
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=httpx.Timeout(TIMEOUT_S)
    ) as client:
        load = Load(args, client)
        say(f"logging in {args.sessions} sessions")
        await setup_sessions(load, args.sessions)
        monitor = Monitor(server, database, api, load)
        groups = {"app": [api.pid, *monitor.workers]}
        cpu_start: CpuSample = sample_cpu(groups, [database])
        await monitor.sample()
        sampler = asyncio.create_task(monitor.run())
        seconds = args.minutes * 60
        say(f"{seconds:.0f} s at {args.rate:g} req/s")
        started = time.monotonic()
        try:
            await load.run(seconds)
            await load.drain()
        finally:
            outcome.seconds = time.monotonic() - started
            sampler.cancel()
        outcome.cpu_s = cpu_used(cpu_start, sample_cpu(groups, [database]))
        await asyncio.sleep(2)  # the last transactions end, overflow connections close
        outcome.end = await monitor.sample()
    outcome.samples = monitor.samples
    outcome.per_second = monitor.per_second
    outcome.replaced = monitor.replaced
    return load, outcome


def scan_log(path: Path) -> dict[str, Any]:
    """Lines by level, and the WARNING-or-worse messages (JSON lines or gunicorn's)."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            level, text = str(entry["level"]), f"{entry['logger']}: {entry['message']}"
        except (ValueError, KeyError, TypeError):
            level = next(
                (
                    name
                    for name in ("CRITICAL", "ERROR", "WARNING")
                    if f"[{name}]" in line
                ),
                "other" if "Traceback" not in line else "ERROR",
            )
            text = line.split("] ", 3)[-1]
        levels[level] += 1
        if level in ("WARNING", "ERROR", "CRITICAL"):
            messages[f"{level} {text[:200]}"] += 1
    return {
        "lines": sum(levels.values()),
        "levels": dict(levels),
        "messages": dict(messages),
    }


def checks(load: Load, outcome: Outcome, warm: Sample) -> list[Check]:
    from app.core.config import settings

    end = outcome.end
    assert end is not None
    fivexx = {k: n for k, n in load.totals.items() if k.startswith("5")}
    errors = {k: n for k, n in load.totals.items() if not k.isdigit()}
    unexpected = {
        op: dict(t.statuses) for op, t in load.tallies.items() if t.unexpected
    }
    growth = {
        pid: end.rss_kib[pid] / kib - 1
        for pid, kib in warm.rss_kib.items()
        if pid in end.rss_kib
    }
    peak = max(c for _, c, _ in outcome.per_second)
    ceiling = WORKERS * (settings.DB_POOL_SIZE + settings.DB_MAX_OVERFLOW)
    pool = WORKERS * settings.DB_POOL_SIZE
    return [
        Check("zero 5xx", not fivexx, str(fivexx or f"{load.requests:,} requests")),
        Check(
            "zero timeouts and connection errors",
            not errors,
            str(errors or "none"),
        ),
        Check(
            "only the expected 4xx (429 apart)",
            not unexpected,
            str(unexpected or "every answer as expected"),
        ),
        Check(
            f"per-worker RSS within 10% from {warm.t:.0f} s to the end,"
            " no worker replaced",
            len(growth) == WORKERS
            and not outcome.replaced
            and all(g <= 0.10 for g in growth.values()),
            ", ".join(
                f"pid {pid}: {warm.rss_kib[pid] / 1024:.1f} -> "
                f"{end.rss_kib[pid] / 1024:.1f} MiB ({g:+.1%})"
                for pid, g in growth.items()
            )
            + (f"; replaced: {outcome.replaced}" if outcome.replaced else ""),
        ),
        Check(
            f"connections never above {WORKERS} x ({settings.DB_POOL_SIZE} + "
            f"{settings.DB_MAX_OVERFLOW}) = {ceiling}, within {pool} at the end",
            peak <= ceiling and end.connections <= pool,
            f"max {peak}, at the end {end.connections}",
        ),
        Check(
            "no connection idle in transaction at the end",
            end.idle_in_transaction == 0,
            f"{end.idle_in_transaction} at the end,"
            f" max {max(i for _, _, i in outcome.per_second)} during the run",
        ),
    ]


def warm_sample(outcome: Outcome, warmup: float) -> Sample:
    """The first sample after the warm-up (at most half the run in), with each
    worker's lowest RSS of the samples in the WARM_WINDOW_S after it: a login
    being hashed adds its Argon2 memory (64 MiB) to one sample, not a leak."""
    cutoff = min(warmup, outcome.seconds / 2)
    window = [
        s
        for s in outcome.samples
        if cutoff <= s.t <= cutoff + WARM_WINDOW_S and s is not outcome.end
    ] or outcome.samples[:1]
    rss = {
        pid: min(s.rss_kib[pid] for s in window if pid in s.rss_kib)
        for pid in window[0].rss_kib
    }
    return replace(window[0], rss_kib=rss)


def report(
    args: argparse.Namespace,
    load: Load,
    outcome: Outcome,
    warm: Sample,
    result_checks: list[Check],
    path: Path,
) -> None:
    from app.core.config import settings

    end = outcome.end
    assert end is not None
    every = [x for t in load.tallies.values() for x in t.latencies]
    lat = percentiles(every, unit=1e3)
    out(
        f"Soak: {outcome.seconds:.0f} s at {args.rate:g} req/s target, {WORKERS} workers,"
        f" DB_POOL_SIZE={settings.DB_POOL_SIZE}, DB_MAX_OVERFLOW={settings.DB_MAX_OVERFLOW},"
        f" {args.sessions} sessions, {os.cpu_count()} CPUs"
    )
    out()
    out("| measure | value |")
    out("|---|---:|")
    out(f"| duration | {outcome.seconds:.0f} s |")
    out(f"| requests | {load.requests:,} |")
    out(f"| req/s | {load.requests / outcome.seconds:,.1f} |")
    for key in sorted(load.totals, key=lambda k: (not k.isdigit(), k)):
        ops = ", ".join(
            f"{op} {t.statuses[key]:,}"
            for op, t in load.tallies.items()
            if t.statuses[key] and not key.startswith("2")
        )
        out(f"| {key} | {load.totals[key]:,}{f' ({ops})' if ops else ''} |")
    fivexx = sum(n for k, n in load.totals.items() if k.startswith("5"))
    errors = {k: n for k, n in load.totals.items() if not k.isdigit()}
    if not fivexx:
        out("| 5xx | 0 |")
    for kind in ("timeout", "connection error"):
        if not any(k.startswith(kind) for k in errors):
            out(f"| {kind}s | 0 |")
    out(
        f"| latency p50 / p90 / p99 / max | {lat['p50']:.1f} / {lat['p90']:.1f}"
        f" / {lat['p99']:.1f} / {lat['max']:.0f} ms |"
    )
    if load.lost:
        out(f"| sessions lost (401, refresh without answer) | {load.lost} |")
    if load.skipped or load.late:
        out(
            f"| ticks not sent ({MAX_IN_FLIGHT} under way / a second behind)"
            f" | {load.skipped:,} / {load.late:,} |"
        )
    out()
    out("| operation | requests | expected | p50 ms | p99 ms | max ms |")
    out("|---|---:|---:|---:|---:|---:|")
    for op in sorted(load.tallies, key=lambda o: -len(load.tallies[o].latencies)):
        t = load.tallies[op]
        p = percentiles(t.latencies, unit=1e3)
        out(
            f"| {op} | {len(t.latencies):,} | {EXPECTED[op]} | {p['p50']:.1f}"
            f" | {p['p99']:.1f} | {p['max']:.0f} |"
        )
    out()
    out(
        f"| gunicorn worker | RSS at {warm.t:.0f} s | RSS at the end | change"
        " | highest sample |"
    )
    out("|---|---:|---:|---:|---:|")
    for pid, kib in warm.rss_kib.items():
        after = end.rss_kib.get(pid)
        change = f"{after / kib - 1:+.1%}" if after else "gone"
        peak = max(s.rss_kib.get(pid, 0) for s in outcome.samples)
        out(
            f"| pid {pid} | {kib / 1024:.1f} MiB |"
            f" {after / 1024 if after else 0:.1f} MiB | {change}"
            f" | {peak / 1024:.1f} MiB |"
        )
    out()
    conns = [c for _, c, _ in outcome.per_second]
    idle = [i for _, _, i in outcome.per_second]
    opened = end.connections_opened - warm.connections_opened
    out(
        f"Database connections (every second): min {min(conns)}, max {max(conns)},"
        f" {end.connections} at the end; idle in transaction: max {max(idle)},"
        f" {end.idle_in_transaction} at the end; {opened} opened after {warm.t:.0f} s."
    )
    cpus = outcome.cpu_s
    out(
        "CPU (cores busy on average): "
        + ", ".join(
            f"{name} {seconds / outcome.seconds:.2f}" for name, seconds in cpus.items()
        )
        + f" ({os.cpu_count()} cores)."
    )
    levels = outcome.log.get("levels", {})
    out(
        f"Server log: {outcome.log.get('lines', 0):,} lines, "
        + ", ".join(f"{level} {n:,}" for level, n in sorted(levels.items()))
        + "."
    )
    for message, n in list(outcome.log.get("messages", {}).items())[:10]:
        out(f"  {n:,} x {message}")
    if load.client_errors:
        out(f"Load generator errors (bugs of soak.py): {dict(load.client_errors)}")
    if load.skipped or load.late:
        out(
            f"NOTE: {load.skipped + load.late:,} of"
            f" {load.requests + load.skipped + load.late:,} ticks not sent: the"
            " the server fell behind the rate (on a shared machine: other processes"
            " took the CPU)."
        )
    out()
    for check in result_checks:
        out(f"{'PASS' if check.passed else 'FAIL'}: {check.name}: {check.detail}")
    out()
    out(f"Results: {path}")


def to_json(
    args: argparse.Namespace,
    load: Load,
    outcome: Outcome,
    warm: Sample,
    result_checks: list[Check],
    stamp: str,
) -> dict[str, Any]:
    from app.core.config import settings

    every = [x for t in load.tallies.values() for x in t.latencies]
    return {
        "timestamp": stamp,
        "git": git_state(),
        "cpus": os.cpu_count(),
        "options": vars(args),
        "settings": {
            "workers": WORKERS,
            "DB_POOL_SIZE": settings.DB_POOL_SIZE,
            "DB_MAX_OVERFLOW": settings.DB_MAX_OVERFLOW,
            "PASSWORD_HASH_CONCURRENCY": settings.PASSWORD_HASH_CONCURRENCY,
        },
        "timings_s": outcome.timings_s,
        "seconds": outcome.seconds,
        "requests": load.requests,
        "rps": load.requests / outcome.seconds if outcome.seconds else 0.0,
        "statuses": dict(load.totals),
        "latency_ms": percentiles(every, unit=1e3),
        "operations": {
            op: {
                "requests": len(t.latencies),
                "expected": EXPECTED[op],
                "statuses": dict(t.statuses),
                "unexpected": t.unexpected,
                "latency_ms": percentiles(t.latencies, unit=1e3),
            }
            for op, t in load.tallies.items()
        },
        "ticks_skipped": load.skipped,
        "ticks_late": load.late,
        "sessions_lost": load.lost,
        "load_generator_errors": dict(load.client_errors),
        "warm_sample_t": warm.t,
        "samples": [asdict(s) for s in outcome.samples],
        "connections_per_second": outcome.per_second,
        "workers_replaced": outcome.replaced,
        "cpu_s": outcome.cpu_s,
        "server_log": outcome.log,
        "checks": [asdict(c) for c in result_checks],
    }


def prepare(
    args: argparse.Namespace,
    env: dict[str, str],
    state: Path,
    server: db.Server,
    database: str,
    timings: dict[str, float],
) -> None:
    started = time.monotonic()
    db.create_database(server, database)
    say(f"database {database}: alembic upgrade head")
    with (state / "alembic.log").open("w") as log:
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=BACKEND_DIR,
            env=env,
            check=True,
            timeout=300,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    timings["migrate"] = time.monotonic() - started

    from app.core.security import password_hash  # after the environment is set

    say(f"seeding {args.users:,} users, {args.items:,} items")
    started = time.monotonic()
    with server.connect(database) as conn:
        db.seed_users(conn, args.users, password_hash.hash(PASSWORD))
        db.add_items(conn, args.items)
    timings["seed"] = time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    random.seed(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    database = f"bench_soak_{stamp.lower()}_{os.getpid()}"
    server = db.Server.from_env()
    env = server_env(server.url(database))
    os.environ.clear()
    os.environ.update(env)
    state = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    api: Process | None = None
    failed = True
    passed = False
    try:
        timings: dict[str, float] = {}
        prepare(args, env, state, server, database, timings)
        api, url = gunicorn(
            "api", "app.main:app", env=env, state=state, workers=WORKERS
        )
        api.wait_http(url + HEALTH)
        load, outcome = asyncio.run(soak(args, url, api, server, database))
        api.stop()
        outcome.timings_s = timings
        outcome.log = scan_log(api.log)
        warm = warm_sample(outcome, args.warmup)
        result_checks = checks(load, outcome, warm)
        passed = all(c.passed for c in result_checks)
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"soak-{stamp}.json"
        document = to_json(args, load, outcome, warm, result_checks, stamp)
        path.write_text(json.dumps(document, indent=2) + "\n")
        out()
        report(args, load, outcome, warm, result_checks, path)
        failed = False
    except (Exception, KeyboardInterrupt):
        sys.stderr.write(traceback.format_exc())
    finally:
        if api is not None:
            api.stop()
        if args.keep:
            say(f"kept database {database} and the server log in {state}")
        else:
            db.drop_database(server, database)
            if passed:
                shutil.rmtree(state, ignore_errors=True)
            else:
                say(f"server log kept in {state}")
    if failed:
        return 2
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
