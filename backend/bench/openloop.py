"""Open-loop load at a constant rate: requests leave on a fixed schedule, whether
or not the earlier ones have been answered (wrk waits for each answer before the
next request on a connection, so a slow server slows its own load down and
hides its queueing: coordinated omission).

    python -m bench.openloop URL --rate 600 --seconds 5 [--header 'Name: value']...

Request i is due at start + i / rate. A loop sends every request that is due on
an idle keep-alive connection, opening another when none is idle (each
connection carries one request at a time, HTTP/1.1 without pipelining).
Latency runs from the due time to the last byte of the answer, so the time a
request waited for the generator or for a connection counts too; `lag` is the
generator's own part (due to sent), printed so that its distortion shows.
Prints one line of JSON: requests, errors by kind, latencies (microseconds,
every sample's percentile), CPU seconds of this process.

Plain asyncio on uvloop (installed with uvicorn[standard]), no dependency of
its own: Debian 12 packages no open-loop generator (wrk2, vegeta and oha are
not in it; hey and h2load pace each connection, closed loop again).
"""

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
import urllib.parse
from typing import cast

import uvloop

TIMEOUT_S = 10.0


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; answers must carry Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).lower()
        start = head.find(b"content-length:")
        if start < 0:
            self.waiter.set_exception(ValueError("no content-length"))
            return
        length = int(head[start + 15 :].split(b"\r\n", 1)[0])
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        self.waiter.set_result(int(head[9:12]))

    async def exchange(self, request: bytes) -> int:
        """Send `request`, return the answer's status."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.waiter, TIMEOUT_S)


class Generator:
    def __init__(self, url: str, headers: list[str]) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if not any(header.lower().startswith("host:") for header in headers):
            headers = [f"Host: {parts.netloc}", *headers]
        lines = [f"GET {path} HTTP/1.1", *headers]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.idle: list[Connection] = []
        self.opened = 0
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.statuses: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.record = True

    async def connection(self) -> Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Connection, self.host, self.port)
        self.opened += 1
        return conn

    async def one(self, due: float) -> None:
        try:
            conn = await self.connection()
            lag = time.perf_counter() - due
            status = await conn.exchange(self.request)
        except TimeoutError:
            self.count(self.errors, "timeout")
            return
        except (OSError, ValueError):
            self.count(self.errors, "connection")
            return
        done = time.perf_counter()
        self.idle.append(conn)
        if not self.record:
            return
        self.latencies.append(done - due)
        self.lags.append(lag)
        if not 200 <= status < 300:
            self.count(self.statuses, str(status))

    @staticmethod
    def count(counter: dict[str, int], key: str) -> None:
        counter[key] = counter.get(key, 0) + 1

    async def run(self, rate: float, seconds: float, record: bool = True) -> None:
        self.record = record
        tasks: set[asyncio.Task[None]] = set()
        total = round(rate * seconds)
        start = time.perf_counter()
        sent = 0
        while sent < total:
            now = time.perf_counter()
            due_now = min(total, int((now - start) * rate) + 1)
            while sent < due_now:
                task = asyncio.create_task(self.one(start + sent / rate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            # Until the next request is due (the loop's timer wakes within ~1 ms).
            await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT_S + 1)


def percentiles(samples: list[float], unit: float = 1e6) -> dict[str, float]:
    """p50, p90, p99, max and mean of `samples` (seconds) times `unit`
    (1e6: microseconds); every one is the sample when there is only one."""
    if len(samples) < 2:
        value = samples[0] * unit if samples else 0.0
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"), value)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50": cuts[49] * unit,
        "p90": cuts[89] * unit,
        "p99": cuts[98] * unit,
        "max": max(samples) * unit,
        "mean": statistics.fmean(samples) * unit,
    }


async def main(args: argparse.Namespace) -> dict[str, object]:
    generator = Generator(args.url, args.header)
    if args.warmup:
        await generator.run(args.rate, args.warmup, record=False)
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await generator.run(args.rate, args.seconds)
    elapsed = time.perf_counter() - started
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_end.ru_utime + cpu_end.ru_stime) - (
        cpu_start.ru_utime + cpu_start.ru_stime
    )
    return {
        "rate": args.rate,
        "requests": len(generator.latencies),
        "seconds": elapsed,
        "statuses": generator.statuses,
        "socket_errors": generator.errors,
        "connections": generator.opened,
        "latency_us": percentiles(generator.latencies),
        "lag_us": percentiles(generator.lags),
        "cpu_s": cpu,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.openloop")
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests/s")
    parser.add_argument("--seconds", type=float, default=5, help="measured (5)")
    parser.add_argument("--warmup", type=float, default=0, help="not measured (0)")
    parser.add_argument(
        "--header", action="append", default=[], help="'Name: value', repeatable"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    result = uvloop.run(main(parse_args()))
    sys.stdout.write(json.dumps(result) + "\n")
