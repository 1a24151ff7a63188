"""Load benchmark of the API, end to end, on a database of its own.

Usage, from the repository root (run.sh installs uv, the locked dependencies
and wrk if missing, then runs this module with `uv run`):

    bash backend/bench/run.sh [--duration 10] [--warmup 3] [--concurrency 32]
                              [--threads 1] [--keep] [--no-check-exit]

PostgreSQL: POSTGRES_SERVER/PORT/USER/PASSWORD (default 127.0.0.1:5432, user
postgres), which must allow CREATE DATABASE. Everything listens on 127.0.0.1.

1. Creates `bench_<timestamp>_<pid>` and `bench_<timestamp>_<pid>_small`
   (never the app's database), migrates both with `alembic upgrade head`,
   seeds each with 10,000 users (one Argon2 hash of a known password) and
   10,000 items: the reader (user 0) and the writer (user 1) own exactly 100
   items each. Then tops the first up to 1,000,000 items (VACUUM ANALYZE,
   CHECKPOINT).
2. Serves the app the production way: gunicorn with 2 uvicorn workers, each
   on a listening socket of its own (--reuse-port: no racing accept),
   ENVIRONMENT=production (JSON log lines, to a log file), a fixed SECRET_KEY,
   metrics on (the default). Each scenario is a warm-up (`--warmup` s) then
   `--duration` s of wrk (bench/load.lua) at `--concurrency` connections:
     list ceiling     bench/ceiling.py `items`: the list's own SQL and JSON,
                      no framework, no ORM (its body checked equal to the
                      API's first), in turn with
     items 10k / 1M   GET /items/?limit=100 as the reader, on the small
                      database and on the 1M one (a server each)
     sequential       200 GET /items/?limit=100 one after the other (1M rows)
     ceiling          bench/ceiling.py `app`, one SELECT 1 per request, in
                      turn with users/me, metrics on and off (one server up
                      at a time: their pools would not fit PostgreSQL's
                      default 100 connections)
     PUT /items/{id} (the writer's 100, rotating), POST /items/,
     POST /login/access-token (Argon2: CPU-bound, few per second),
     users/me at 8 connections alone, then during 16 concurrent logins,
     users/me open loop (bench/openloop.py) at half the users/me maximum,
                      direct and through Traefik (the repo's traefik/dynamic
                      routing files), in turn.
   The scenarios a target compares by a ratio run in turn, four rounds of half
   `--duration` each (a, b, a, b...), so that the drift of a shared machine
   touches them alike.
   Then a fresh server for memory: each worker's RSS after 10,000 and after
   100,000 requests of /users/me.
3. Prints a Markdown table (req/s, latency percentiles, errors = every non-2xx
   response and socket error, ratio to the ceiling, the busier worker's share
   of the workers' CPU), the targets as PASS/FAIL
   lines, and writes everything to backend/bench/results/<timestamp>.json.

Drops the databases at the end unless --keep. Logs (servers, wrk, Traefik) go to
a temporary directory, removed on success, kept and named on failure or with
--keep. Exit status: 0 when every target passes, 1 when one fails (0 with
--no-check-exit), 2 on an error.
"""

import argparse
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import db
from bench.openloop import percentiles
from bench.servers import (
    BACKEND_DIR,
    CpuSample,
    Load,
    Process,
    combine,
    cpu_seconds,
    cpu_used,
    finish_wrk,
    gunicorn,
    open_loop,
    rss_kib,
    sample_cpu,
    start_wrk,
    traefik,
    wait_idle,
    wrk,
)

RESULTS_DIR = Path(__file__).with_name("results")
CEILING = "ceiling: SELECT 1 (bench/ceiling.py)"
LIST_CEILING = "list ceiling: the items list's SQL and JSON (bench/ceiling.py)"
ME = "GET /users/me"
ME_NO_METRICS = "GET /users/me, METRICS_ENABLED=false"
OPEN_DIRECT = "GET /users/me, open loop, direct"
OPEN_PROXIED = "GET /users/me, open loop, through Traefik"
SECRET_KEY = "bench-only-secret-key-0123456789-abcdefghijklmnop"
PASSWORD = "bench-password-1234"
API = "/api/v1"
HEALTH = f"{API}/utils/health-check/"
JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"


def say(message: str, tool: str = "bench") -> None:
    sys.stderr.write(f"{tool} [{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.sh",
        description="Load benchmark of the API (see the module docstring).",
    )
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds measured per scenario (10)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="seconds of warm-up per scenario (3)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="wrk connections (32)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="wrk threads per run (1)"
    )
    parser.add_argument(
        "--users", type=int, default=10_000, help="users seeded (10000)"
    )
    parser.add_argument(
        "--small-items", type=int, default=10_000, help="items, first measure (10000)"
    )
    parser.add_argument(
        "--items", type=int, default=1_000_000, help="items, second measure (1000000)"
    )
    parser.add_argument(
        "--memory-requests",
        type=int,
        default=100_000,
        help="memory run length (100000)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the database and the logs"
    )
    parser.add_argument(
        "--no-check-exit", action="store_true", help="exit 0 even when a target fails"
    )
    args = parser.parse_args(argv)
    if (
        args.users < 3
        or args.small_items < 2 * db.OWN_ITEMS
        or args.items < args.small_items
    ):
        parser.error("need --users >= 3 and --items >= --small-items >= 200")
    return args


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Results:
    scenarios: dict[str, Load] = field(default_factory=dict)
    concurrency: dict[str, int] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    memory_kib: dict[str, dict[str, int]] = field(default_factory=dict)
    memory_requests: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, dict[str, float]] = field(default_factory=dict)
    db_sessions: dict[str, int] = field(default_factory=dict)
    # The busier gunicorn worker's share of the workers' CPU, per run.
    worker_share: dict[str, list[float]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)  # open loop, requests/s
    generator: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class OneServer:
    """One of the apps served at a time: two of them, each with 2 workers x
    (DB_POOL_SIZE 20 + DB_MAX_OVERFLOW 10) connections, would not fit
    PostgreSQL's default max_connections of 100."""

    def __init__(self, bench: "Bench") -> None:
        self.bench = bench
        self.running: tuple[str, Process, str] | None = None

    def url(
        self,
        name: str,
        app: str,
        database: str | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """The base URL of `app` (on `database`, default the main one, with `env`
        on top of the servers' environment), started (and the other one
        stopped) if needed."""
        if self.running is None or self.running[0] != name:
            self.stop()
            proc, url = self.bench.serve(name, app, database, env)
            self.running = (name, proc, url)
        return self.running[2]

    def stop(self) -> None:
        if self.running is not None:
            self.bench.stop(self.running[1])
            self.running = None


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        env: dict[str, str],
        state: Path,
        server: db.Server,
        databases: list[str],
    ) -> None:
        self.args = args
        self.env = env
        self.state = state
        self.server = server
        self.databases = databases  # the main one first
        self.wrk_log = state / "wrk.log"
        self.processes: list[Process] = []
        self.results = Results()

    def env_on(self, database: str) -> dict[str, str]:
        """The servers' environment, with `database` instead of the main one."""
        return {**self.env, "DATABASE_URL": self.server.url(database)}

    # --- processes ---------------------------------------------------------

    def serve(
        self,
        name: str,
        app: str,
        database: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> tuple[Process, str]:
        env = self.env if database is None else self.env_on(database)
        env = {**env, **(extra_env or {})}
        proc, url = gunicorn(name, app, env=env, state=self.state)
        self.processes.append(proc)
        proc.wait_http(url + (HEALTH if app.startswith("app.") else "/"))
        return proc, url

    def stop(self, proc: Process) -> None:
        proc.stop()
        self.processes.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def sample(self) -> tuple[CpuSample, int]:
        """CPU times and the database's session count, to diff around a run."""
        groups: dict[str, list[int]] = {}
        for proc in self.processes:
            group = "traefik" if proc.name == "traefik" else "app"
            groups.setdefault(group, []).extend([proc.pid, *proc.children()])
        cpu = sample_cpu(groups, self.databases)
        return cpu, sum(db.sessions(self.server, name) for name in self.databases)

    def usage(self, start: tuple[CpuSample, int]) -> dict[str, float]:
        cpu, sessions = self.sample()
        return {**cpu_used(start[0], cpu), "db_sessions": sessions - start[1]}

    def worker_cpu(self) -> dict[int, float]:
        """CPU seconds of each gunicorn worker now running."""
        return {
            pid: cpu_seconds([pid])
            for proc in self.processes
            if proc.name != "traefik"
            for pid in proc.children()
        }

    def note_split(self, name: str, start: dict[int, float]) -> None:
        """Record the busier worker's share of the workers' CPU since `start`."""
        used = [
            cpu - start[pid] for pid, cpu in self.worker_cpu().items() if pid in start
        ]
        if len(used) > 1 and sum(used) > 0:
            share = max(used) / sum(used)
            self.results.worker_share.setdefault(name, []).append(share)

    # --- load ----------------------------------------------------------------

    def run_wrk(
        self, url: str, seconds: int, concurrency: int, args: dict[str, str]
    ) -> Load:
        return wrk(
            url,
            concurrency=concurrency,
            seconds=seconds,
            threads=self.args.threads,
            args=args,
            log=self.wrk_log,
        )

    def measure(
        self, name: str, url: str, args: dict[str, str], concurrency: int | None = None
    ) -> Load:
        """Warm-up, then the measured run, recorded under `name`."""
        concurrency = concurrency or self.args.concurrency
        say(f"{name} (c{concurrency})")
        wait_idle(self.processes)
        if self.args.warmup:
            self.run_wrk(url, self.args.warmup, concurrency, args)
        start, workers = self.sample(), self.worker_cpu()
        load = self.run_wrk(url, self.args.duration, concurrency, args)
        self.note_split(name, workers)
        self.record(name, load, concurrency, self.usage(start))
        return load

    def interleaved(
        self, runs: list[tuple[str, Callable[[], str], dict[str, str]]], rounds: int = 4
    ) -> None:
        """Scenarios compared by a ratio, measured in turn (a, b, a, b...) so that
        the machine's drift (other tenants, caches) touches both alike; each is
        recorded as its rounds summed (percentiles: their mean). The rounds share
        2 x --duration: a shared machine's speed moves within seconds, so more
        and shorter turns."""
        concurrency = self.args.concurrency
        seconds = max(1, 2 * self.args.duration // rounds)
        loads: dict[str, list[Load]] = {name: [] for name, _, _ in runs}
        usages: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in runs}
        for round_number in range(1, rounds + 1):
            for name, target, args in runs:
                url = target()  # starts its server if needed
                say(f"{name} (c{concurrency}), round {round_number} of {rounds}")
                wait_idle(self.processes)
                if self.args.warmup:
                    self.run_wrk(url, self.args.warmup, concurrency, args)
                start, workers = self.sample(), self.worker_cpu()
                loads[name].append(self.run_wrk(url, seconds, concurrency, args))
                self.note_split(name, workers)
                usages[name].append(self.usage(start))
        for name, _, _ in runs:
            summed = {
                key: sum(usage.get(key, 0.0) for usage in usages[name])
                for key in {key for usage in usages[name] for key in usage}
            }
            self.record(name, combine(loads[name]), concurrency, summed)

    def open_loop_pair(
        self, runs: list[tuple[str, str, list[str]]], rate: float, rounds: int = 4
    ) -> None:
        """Like `interleaved`, at a constant offered `rate` (bench/openloop.py)
        instead of wrk's closed loop: latency under a load the server keeps up with."""
        seconds = max(1, 2 * self.args.duration // rounds)
        loads: dict[str, list[Load]] = {name: [] for name, _, _ in runs}
        usages: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in runs}
        for round_number in range(1, rounds + 1):
            for name, url, headers in runs:
                say(f"{name} ({rate:,.0f} req/s), round {round_number} of {rounds}")
                wait_idle(self.processes)
                if self.args.warmup:
                    open_loop(url, rate=rate, seconds=self.args.warmup, headers=headers)
                start = self.sample()
                load, generator = open_loop(
                    url, rate=rate, seconds=seconds, headers=headers
                )
                usages[name].append(self.usage(start))
                loads[name].append(load)
                self.results.generator.setdefault(name, []).append(generator)
        for name, _, _ in runs:
            summed = {
                key: sum(usage.get(key, 0.0) for usage in usages[name])
                for key in {key for usage in usages[name] for key in usage}
            }
            self.results.rates[name] = rate
            self.record(name, combine(loads[name]), 0, summed)

    def record(
        self,
        name: str,
        load: Load,
        concurrency: int,
        usage: dict[str, float] | None = None,
    ) -> None:
        """`usage`: CPU seconds by process group and new database sessions."""
        self.results.scenarios[name] = load
        self.results.concurrency[name] = concurrency
        if usage:
            self.results.db_sessions[name] = int(usage.pop("db_sessions"))
            self.results.cpu_s[name] = usage
        say(
            f"  {load.rps:,.1f} req/s, p50 {load.ms('p50'):.2f} ms,"
            f" p99 {load.ms('p99'):.2f} ms, errors {load.errors}"
        )

    def sequential(
        self, name: str, base: str, path: str, token: str, count: int
    ) -> None:
        """`count` requests one after the other on one keep-alive connection."""
        say(f"{name} ({count} sequential requests)")
        wait_idle(self.processes)
        conn = http.client.HTTPConnection(
            urllib.parse.urlsplit(base).netloc, timeout=10
        )
        headers = {"Authorization": f"Bearer {token}"}
        latencies: list[float] = []
        statuses: dict[str, int] = {}

        def get() -> None:
            started = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            if not 200 <= response.status < 300:
                key = str(response.status)
                statuses[key] = statuses.get(key, 0) + 1

        try:
            for _ in range(20):  # warm-up
                get()
            latencies.clear()
            statuses.clear()
            start = self.sample()
            for _ in range(count):
                get()
            cpu = self.usage(start)
        finally:
            conn.close()
        load = Load(
            requests=count,
            seconds=sum(latencies),
            non2xx=sum(statuses.values()),
            statuses=statuses,
            socket_errors={},
            latency_us=percentiles(latencies),
        )
        self.record(name, load, 1, cpu)

    def during_logins(
        self, name: str, url: str, me: dict[str, str], login_args: dict[str, str]
    ) -> None:
        """/users/me at 8 connections while 16 connections log in without pause."""
        say(f"{name}: 16 logging in, /users/me at c8")
        wait_idle(self.processes)
        seconds = self.args.warmup + self.args.duration + 1
        logins = start_wrk(
            url + f"{API}/login/access-token",
            concurrency=16,
            seconds=seconds,
            threads=self.args.threads,
            args=login_args,
            log=self.wrk_log,
        )
        try:
            time.sleep(self.args.warmup)  # the burst is under way
            probe = self.run_wrk(url + f"{API}/users/me", self.args.duration, 8, me)
            login_load = finish_wrk(logins, timeout=seconds + 60, log=self.wrk_log)
        finally:
            if logins.poll() is None:
                logins.kill()
                logins.wait()
        self.record(name, probe, 8)
        self.record("POST /login/access-token, beside it", login_load, 16)

    def memory(self, url: str, proc: Process, me: dict[str, str]) -> None:
        """Each worker's RSS after the first 10k requests and after `--memory-requests`."""
        workers = proc.children()
        done = 0
        deadline = time.monotonic() + 600
        for target in (10_000, self.args.memory_requests):
            say(f"memory: /users/me until {target:,} requests")
            while done < target and time.monotonic() < deadline:
                per_thread = math.ceil((target - done) / self.args.threads)
                load = self.run_wrk(
                    url + f"{API}/users/me",
                    5,
                    self.args.concurrency,
                    {**me, "stop": str(per_thread)},
                )
                if load.errors:
                    self.record(
                        f"memory run, errors ({target:,})", load, self.args.concurrency
                    )
                done += load.requests
            label = f"after_{target}"
            self.results.memory_requests[label] = done
            for pid in workers:
                self.results.memory_kib.setdefault(str(pid), {})[label] = rss_kib(pid)
        if proc.children() != workers:
            raise RuntimeError("a gunicorn worker was replaced during the memory run")


def login(base: str, user: int) -> str:
    body = urllib.parse.urlencode(
        {"username": db.email(user), "password": PASSWORD}
    ).encode()
    with urllib.request.urlopen(
        f"{base}{API}/login/access-token", data=body, timeout=30
    ) as response:
        token: str = json.load(response)["access_token"]
        return token


def fetch(url: str, token: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        body: bytes = response.read()
        return body


def same_json(api: bytes, ceiling: bytes) -> None:
    """The list ceiling must write the very bytes the API does."""
    if api != ceiling:
        raise RuntimeError(
            f"the list ceiling's body differs from the API's:\n{api[:300]!r}\n{ceiling[:300]!r}"
        )


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def migrate(bench: Bench, database: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=BACKEND_DIR,
        env=bench.env_on(database),
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
        stderr=(bench.state / f"alembic-{database}.log").open("w"),
    )


def run(bench: Bench) -> None:
    args, state, results, server = bench.args, bench.state, bench.results, bench.server
    large_db, small_db = bench.databases
    started = time.monotonic()
    for name in bench.databases:
        db.create_database(server, name)
        say(f"database {name}: alembic upgrade head")
        migrate(bench, name)
    results.timings_s["migrate"] = time.monotonic() - started

    from app.core import security  # after the environment is set

    say(f"seeding {args.users:,} users, {args.small_items:,} items (in each database)")
    started = time.monotonic()
    hashed = security.password_hash.hash(PASSWORD)
    for name in bench.databases:
        with server.connect(name) as conn:
            db.seed_users(conn, args.users, hashed)
            db.add_items(conn, args.small_items)
    with server.connect(large_db) as conn:
        put_ids = db.own_item_ids(conn, 1)
    results.timings_s["seed_small"] = time.monotonic() - started

    say(
        f"topping items up to {args.items:,} rows in {large_db}, VACUUM ANALYZE, CHECKPOINT"
    )
    started = time.monotonic()
    with server.connect(large_db) as conn:
        db.add_items(conn, args.items)
        if not db.checkpoint(conn):
            say(
                "CHECKPOINT refused: the seeding's pages may be written during the scenarios"
            )
    results.timings_s["seed_large"] = time.monotonic() - started
    say(f"  {results.timings_s['seed_large']:.1f} s")

    servers = OneServer(bench)
    small_token = login(servers.url("api-10k", "app.main:app", small_db), 0)
    me_small = {"token": small_token}
    items = f"{API}/items/?limit=100"
    claims = security.decode_token(small_token, token_type="access")
    assert claims is not None and claims.session_id is not None
    ceiling_items = (
        f"/?user_id={claims.user_id}&session_id={claims.session_id}&limit=100"
    )
    same_json(
        fetch(servers.url("api-10k", "app.main:app", small_db) + items, small_token),
        fetch(
            servers.url("ceiling-items", "bench.ceiling:items", small_db)
            + ceiling_items
        ),
    )
    url = servers.url("api", "app.main:app")
    me = {"token": login(url, 0)}
    writer = {"token": login(url, 1), "type": JSON_TYPE}
    bench.interleaved(
        [
            (
                LIST_CEILING,
                lambda: (
                    servers.url("ceiling-items", "bench.ceiling:items", small_db)
                    + ceiling_items
                ),
                {},
            ),
            (
                f"GET /items/?limit=100, {args.small_items:,} rows",
                lambda: servers.url("api-10k", "app.main:app", small_db) + items,
                me_small,
            ),
            (
                f"GET /items/?limit=100, {args.items:,} rows",
                lambda: servers.url("api", "app.main:app") + items,
                me,
            ),
        ]
    )
    url = servers.url("api", "app.main:app")
    bench.sequential(
        f"GET /items/?limit=100, {args.items:,} rows, sequential",
        url,
        f"{API}/items/?limit=100",
        me["token"],
        200,
    )
    no_metrics = {"METRICS_ENABLED": "false"}
    bench.interleaved(
        [
            (CEILING, lambda: servers.url("ceiling", "bench.ceiling:app") + "/", {}),
            (ME, lambda: servers.url("api", "app.main:app") + f"{API}/users/me", me),
            (
                ME_NO_METRICS,
                lambda: (
                    servers.url("api-no-metrics", "app.main:app", env=no_metrics)
                    + f"{API}/users/me"
                ),
                me,
            ),
        ]
    )
    url = servers.url("api", "app.main:app")
    put_body = json.dumps({"title": "Updated by bench", "description": "PUT by wrk"})
    ids_file = write_lines(state / "put-ids.txt", put_ids)
    bench.measure(
        "PUT /items/{id}",
        url + f"{API}/items/{{id}}",
        {**writer, "method": "PUT", "body": put_body, "ids": ids_file},
    )
    post_body = json.dumps({"title": "Posted by bench", "description": "POST by wrk"})
    bench.measure(
        "POST /items/",
        url + f"{API}/items/",
        {**writer, "method": "POST", "body": post_body},
    )
    forms = [
        urllib.parse.urlencode({"username": db.email(n), "password": PASSWORD})
        for n in range(min(args.users, 1000))
    ]
    login_args = {
        "method": "POST",
        "type": FORM_TYPE,
        "bodies": write_lines(state / "logins.txt", forms),
    }
    bench.measure(
        "POST /login/access-token", url + f"{API}/login/access-token", login_args
    )
    bench.measure("GET /users/me, c8 idle", url + f"{API}/users/me", me, concurrency=8)
    bench.during_logins("GET /users/me, c8 during 16 logins", url, me, login_args)

    proxy, proxy_url = traefik(url, state=state)
    bench.processes.append(proxy)
    proxy.wait_http(proxy_url + HEALTH, host="localhost", timeout=30)
    bearer = f"Authorization: Bearer {me['token']}"
    bench.open_loop_pair(
        [
            (OPEN_DIRECT, url + f"{API}/users/me", [bearer]),
            (OPEN_PROXIED, proxy_url + f"{API}/users/me", [bearer, "Host: localhost"]),
        ],
        rate=results.scenarios[ME].rps / 2,
    )
    bench.stop(proxy)
    servers.stop()

    api, url = bench.serve("api-memory", "app.main:app")
    bench.memory(url, api, {"token": login(url, 0)})
    bench.stop(api)


def ratio(value: float, reference: float) -> float:
    return value / reference if reference else math.nan


def cpu_per_request(res: Results, name: str, group: str) -> float:
    """Microseconds of `group`'s CPU per request of scenario `name`."""
    cpu = res.cpu_s.get(name, {})
    requests = res.scenarios[name].requests
    return cpu.get(group, math.nan) * 1e6 / requests if requests else math.nan


def generator_figures(res: Results, name: str) -> str:
    """The open-loop generator's own cost: its CPU per request and its lag."""
    runs = res.generator.get(name, [])
    requests = sum(run["requests"] for run in runs)
    cpu = sum(run["cpu_s"] for run in runs)
    lag50 = statistics.fmean(run["lag_us"]["p50"] for run in runs) / 1000
    lag99 = statistics.fmean(run["lag_us"]["p99"] for run in runs) / 1000
    return (
        f"generator {cpu * 1e6 / requests:,.0f} us CPU/request,"
        f" lag p50 {lag50:.2f} / p99 {lag99:.2f} ms"
        if requests
        else "no request"
    )


def checks(bench: Bench) -> list[Check]:
    args, res = bench.args, bench.results
    s = res.scenarios
    ceiling = s[CEILING]
    list_ceiling = s[LIST_CEILING]
    me = s[ME]
    small = s[f"GET /items/?limit=100, {args.small_items:,} rows"]
    large = s[f"GET /items/?limit=100, {args.items:,} rows"]
    single = s[f"GET /items/?limit=100, {args.items:,} rows, sequential"]
    direct, proxied = s[OPEN_DIRECT], s[OPEN_PROXIED]
    idle = s["GET /users/me, c8 idle"]
    burst = s["GET /users/me, c8 during 16 logins"]
    added_p50 = proxied.ms("p50") - direct.ms("p50")
    added_p99 = proxied.ms("p99") - direct.ms("p99")
    result = [
        Check(
            f"items list at {args.small_items:,} rows >= 75% of the list ceiling",
            small.rps >= 0.75 * list_ceiling.rps,
            f"{small.rps:,.0f} vs {list_ceiling.rps:,.0f} req/s"
            f" = {ratio(small.rps, list_ceiling.rps):.0%}",
        ),
        Check(
            "/users/me req/s >= 55% of the ceiling",
            me.rps >= 0.55 * ceiling.rps,
            f"{me.rps:,.0f} vs {ceiling.rps:,.0f} req/s = {ratio(me.rps, ceiling.rps):.0%}",
        ),
        Check(
            f"items list at {args.items:,} rows: req/s within 1.3x of {args.small_items:,}",
            large.rps * 1.3 >= small.rps,
            f"{large.rps:,.0f} vs {small.rps:,.0f} req/s = 1/{ratio(small.rps, large.rps):.2f}",
        ),
        Check(
            f"items list at {args.items:,} rows: p50 within 1.3x of {args.small_items:,}",
            large.ms("p50") <= 1.3 * small.ms("p50"),
            f"{large.ms('p50'):.2f} vs {small.ms('p50'):.2f} ms = {ratio(large.ms('p50'), small.ms('p50')):.2f}x",
        ),
        Check(
            "single-request p50 of the items list at 1M rows < 10 ms",
            single.ms("p50") < 10,
            f"{single.ms('p50'):.2f} ms",
        ),
        Check(
            "Traefik at half the direct maximum (open loop): adds <= 1 ms p50,"
            " <= 5 ms p99, no error",
            added_p50 <= 1 and added_p99 <= 5 and not direct.errors + proxied.errors,
            f"{res.rates[OPEN_PROXIED]:,.0f} req/s: p50 {direct.ms('p50'):.2f} ->"
            f" {proxied.ms('p50'):.2f} ms ({added_p50:+.2f}), p99 {direct.ms('p99'):.2f}"
            f" -> {proxied.ms('p99'):.2f} ms ({added_p99:+.2f}), errors"
            f" {direct.errors} / {proxied.errors}; CPU per request: Traefik"
            f" {cpu_per_request(res, OPEN_PROXIED, 'traefik'):,.0f} us, the workers"
            f" {cpu_per_request(res, OPEN_PROXIED, 'app'):,.0f} us behind it and"
            f" {cpu_per_request(res, OPEN_DIRECT, 'app'):,.0f} us without;"
            f" {generator_figures(res, OPEN_PROXIED)}",
        ),
    ]
    with_errors = {name: load.errors for name, load in s.items() if load.errors}
    result.append(
        Check(
            "zero errors in every scenario",
            not with_errors,
            ", ".join(
                f"{name}: {n} ({s[name].statuses or s[name].socket_errors})"
                for name, n in with_errors.items()
            )
            or f"{sum(load.requests for load in s.values()):,} requests, none failed",
        )
    )
    growth = {
        pid: ratio(kib["after_" + str(args.memory_requests)], kib["after_10000"]) - 1
        for pid, kib in res.memory_kib.items()
    }
    result.append(
        Check(
            f"per-worker RSS after {args.memory_requests:,} requests within 10% of after 10,000",
            all(abs(g) <= 0.10 for g in growth.values()),
            ", ".join(
                f"pid {pid}: {res.memory_kib[pid]['after_10000'] / 1024:.1f} -> "
                f"{res.memory_kib[pid]['after_' + str(args.memory_requests)] / 1024:.1f} MiB ({g:+.1%})"
                for pid, g in growth.items()
            ),
        )
    )
    result.append(
        Check(
            "/users/me p99 during 16 concurrent logins <= 3x idle p99",
            burst.ms("p99") <= 3 * idle.ms("p99"),
            f"{burst.ms('p99'):.2f} vs {idle.ms('p99'):.2f} ms = {ratio(burst.ms('p99'), idle.ms('p99')):.1f}x",
        )
    )
    return result


def report(bench: Bench, result_checks: list[Check], wall: float, path: Path) -> None:
    res = bench.results
    ceiling = res.scenarios[CEILING].rps
    cpus = os.cpu_count() or 1
    out(
        "| scenario | conc. | req/s | p50 ms | p90 ms | p99 ms | errors"
        " | ratio to ceiling | app CPU ms/req | new DB conn/s | busier worker |"
    )
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    # The ceiling first: the ratios are to it.
    for name, load in sorted(res.scenarios.items(), key=lambda kv: kv[0] != CEILING):
        cpu = res.cpu_s.get(name)
        app_cpu = (
            f"{cpu['app'] * 1000 / load.requests:.2f}" if cpu and load.requests else "-"
        )
        sessions = res.db_sessions.get(name)
        conns = "-" if sessions is None else f"{sessions / load.seconds:,.0f}"
        shares = res.worker_share.get(name)
        # The busier worker's share of the workers' CPU (its range over the rounds).
        split = (
            f"{min(shares):.0%}-{max(shares):.0%}"
            if shares and len(shares) > 1
            else f"{shares[0]:.0%}"
            if shares
            else "-"
        )
        rate = res.rates.get(name)
        conc = f"{rate:,.0f}/s" if rate else str(res.concurrency[name])
        out(
            f"| {name} | {conc} | {load.rps:,.1f} | {load.ms('p50'):.2f}"
            f" | {load.ms('p90'):.2f} | {load.ms('p99'):.2f} | {load.errors}"
            f" | {ratio(load.rps, ceiling):.2f} | {app_cpu} | {conns} | {split} |"
        )
        if cpu and cpu["other"] > 0.1 * load.seconds * cpus:
            notes.append(
                f"NOTE: {name}: {cpu['other'] / load.seconds:.2f} of {cpus} CPUs went"
                " to other processes (the kernel, PostgreSQL sessions that ended"
                " during the run, other users of the machine)"
            )
    out()
    if notes:
        out("\n".join(notes) + "\n")
    counts = res.memory_requests
    out(
        f"| gunicorn worker | RSS after {counts['after_10000']:,} req"
        f" | RSS after {counts[f'after_{bench.args.memory_requests}']:,} req | change |"
    )
    out("|---|---:|---:|---:|")
    for pid, kib in res.memory_kib.items():
        before, after = kib["after_10000"], kib[f"after_{bench.args.memory_requests}"]
        out(
            f"| pid {pid} | {before / 1024:.1f} MiB | {after / 1024:.1f} MiB | {ratio(after, before) - 1:+.1%} |"
        )
    out()
    for check in result_checks:
        out(f"{'PASS' if check.passed else 'FAIL'}: {check.name}: {check.detail}")
    on, off = res.scenarios[ME], res.scenarios[ME_NO_METRICS]
    out(
        f"\nMetrics (in turn): /users/me {on.rps:,.0f} req/s with METRICS_ENABLED=true,"
        f" {off.rps:,.0f} with false ({ratio(on.rps, off.rps) - 1:+.1%}); app CPU"
        f" {cpu_per_request(res, ME, 'app'):,.0f} vs {cpu_per_request(res, ME_NO_METRICS, 'app'):,.0f} us/request"
    )
    out()
    timings = ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in res.timings_s.items()
    )
    out(f"Wall time {wall:.0f} s ({timings}). Results: {path}")


def git_state() -> dict[str, str | bool]:
    def git(*cmd: str) -> str:
        done = subprocess.run(
            ["git", *cmd], cwd=BACKEND_DIR, capture_output=True, text=True, timeout=30
        )
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", ".")),
    }


def to_json(
    bench: Bench, result_checks: list[Check], wall: float, stamp: str
) -> dict[str, Any]:
    res = bench.results
    ceiling = res.scenarios[CEILING].rps
    return {
        "timestamp": stamp,
        "git": git_state(),
        "cpus": os.cpu_count(),
        "options": vars(bench.args),
        "timings_s": {**res.timings_s, "wall": wall},
        "scenarios": {
            name: {
                **asdict(load),
                "concurrency": res.concurrency[name],
                "rps": load.rps,
                "errors": load.errors,
                "ratio_to_ceiling": ratio(load.rps, ceiling),
                "cpu_s": res.cpu_s.get(name),
                "new_db_sessions": res.db_sessions.get(name),
            }
            for name, load in res.scenarios.items()
        },
        "memory_rss_kib": res.memory_kib,
        "memory_requests": res.memory_requests,
        "worker_share": res.worker_share,
        "open_loop_generator": res.generator,
        "checks": [asdict(check) for check in result_checks],
    }


def server_env(database_url: str) -> dict[str, str]:
    """The production configuration the servers (and this process) run with."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in ("SENTRY_DSN", "SMTP_HOST", "GUNICORN_CMD_ARGS", "WEB_CONCURRENCY")
    }
    env.update(
        DATABASE_URL=database_url,
        ENVIRONMENT="production",
        SECRET_KEY=SECRET_KEY,
        FIRST_SUPERUSER_PASSWORD="bench-superuser-password",
        LOG_LEVEL="INFO",
    )
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk"):
        say("wrk not found: apt-get install -y wrk (run.sh does it)")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wall_start = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    db_name = f"bench_{stamp.lower()}_{os.getpid()}"
    databases = [db_name, f"{db_name}_small"]  # 1M items, and the 10k of step 1
    server = db.Server.from_env()
    env = server_env(server.url(db_name))
    os.environ.clear()
    os.environ.update(env)
    state = Path(tempfile.mkdtemp(prefix="bench-"))
    bench = Bench(args, env, state, server, databases)
    failed = True
    try:
        run(bench)
        failed = False
    except (Exception, KeyboardInterrupt):
        sys.stderr.write(traceback.format_exc())
        say(f"failed; logs kept in {state}")
    finally:
        bench.stop_all()
        if args.keep:
            say(f"kept databases {', '.join(databases)} and logs in {state}")
        else:
            for name in databases:
                db.drop_database(server, name)
            if not failed:
                shutil.rmtree(state, ignore_errors=True)
    if failed:
        return 2
    wall = time.monotonic() - wall_start
    result_checks = checks(bench)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{stamp}.json"
    path.write_text(
        json.dumps(to_json(bench, result_checks, wall, stamp), indent=2) + "\n"
    )
    out()
    report(bench, result_checks, wall, path)
    all_passed = all(check.passed for check in result_checks)
    return 0 if all_passed or args.no_check_exit else 1


if __name__ == "__main__":
    sys.exit(main())
