"""Processes the benchmark starts: gunicorn servers, Traefik, wrk.

Each runs in its own session (process group = its PID) and is stopped by that
PID: TERM to the group, KILL after a grace period.
"""

import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKEND_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = BACKEND_DIR.parent
LOAD_SCRIPT = Path(__file__).with_name("load.lua")
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A started process group; output goes to `log`."""

    def __init__(
        self, name: str, cmd: list[str], *, env: dict[str, str], cwd: Path, log: Path
    ) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                cmd,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        """TERM to the group (gunicorn waits for its workers), KILL after `grace` s."""
        if not self.running():
            return
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(5)

    def wait_http(
        self, url: str, *, host: str | None = None, timeout: float = 60
    ) -> None:
        """Until `url` answers 200; fails early when the process exits."""
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(url, headers={"Host": host} if host else {})
        while True:
            if not self.running():
                raise RuntimeError(f"{self.name} exited; log: {self.log}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer {url}; log: {self.log}")
            time.sleep(0.2)

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` (those still alive)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # gone, or going, already
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds spent by every CPU of the machine, idle and I/O wait excepted."""
    fields = [
        int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def backends(database: str) -> list[int]:
    """PostgreSQL's processes serving `database` (their title names it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"postgres: ") and f" {database} ".encode() in title:
                pids.append(int(entry.name))
    return pids


@dataclass
class CpuSample:
    machine: float
    processes: dict[int, tuple[str, float]]  # pid -> (group, CPU seconds)
    load: float  # this process and its finished children (wrk)


def sample_cpu(groups: dict[str, list[int]], databases: list[str]) -> CpuSample:
    groups = {
        **groups,
        "postgres": [pid for name in databases for pid in backends(name)],
    }
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSample(
        machine=machine_busy(),
        processes={
            pid: (name, cpu_seconds([pid]))
            for name, pids in groups.items()
            for pid in pids
        },
        load=own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
    )


def cpu_used(start: CpuSample, end: CpuSample) -> dict[str, float]:
    """CPU seconds between two samples by group, "load" (wrk, this client) and
    "other": the rest of the machine (the kernel, processes of others)."""
    used: dict[str, float] = {}
    for pid, (name, seconds) in end.processes.items():
        used[name] = (
            used.get(name, 0.0) + seconds - start.processes.get(pid, (name, 0.0))[1]
        )
    used["load"] = end.load - start.load
    used["other"] = end.machine - start.machine - sum(used.values())
    return used


def wait_idle(processes: list[Process], timeout: float = 60) -> None:
    """Until the servers are idle (< 5% of a CPU over 0.5 s): a scenario must not
    inherit the previous one's backlog (logins still hashing after wrk left)."""
    pids = [pid for proc in processes for pid in (proc.pid, *proc.children())]
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        after = cpu_seconds(pids)
        if after - before < 0.025:
            return
        before = after
    raise RuntimeError(f"servers still busy after {timeout:.0f} s")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def gunicorn(
    name: str, app: str, *, env: dict[str, str], state: Path, workers: int = 2
) -> tuple[Process, str]:
    """gunicorn with uvicorn workers, as in production; returns it and its base URL."""
    port = free_port()
    cmd = [
        str(VENV_BIN / "gunicorn"),
        app,
        "-k",
        "uvicorn_worker.UvicornWorker",
        "-w",
        str(workers),
        "-b",
        f"{HOST}:{port}",
        "--no-control-socket",
        # A listening socket per worker, the kernel spreading connections over
        # them: with one shared socket the workers race for each accept, and one
        # of them could take 28 of wrk's 32 connections, moving every ratio.
        "--reuse-port",
        "--graceful-timeout",
        "10",
    ]
    proc = Process(name, cmd, env=env, cwd=BACKEND_DIR, log=state / f"{name}.log")
    return proc, f"http://{HOST}:{port}"


def traefik(backend_url: str, *, state: Path) -> tuple[Process, str]:
    """Traefik with the repo's routing files (traefik/dynamic) in front of `backend_url`.

    The static configuration mirrors scripts/stack.sh: plain HTTP entrypoints on
    loopback, the JSON access log of errors, retries and slow requests to a
    file, the file provider on traefik/dynamic, GOMAXPROCS=PROXY_GOMAXPROCS (1).
    """
    binary = VENV_BIN / "traefik"
    if not binary.exists():
        raise RuntimeError(f"no {binary}: run `uv sync` (dev dependencies) in backend/")
    web, adminer, dashboard = free_port(), free_port(), free_port()
    config = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": "INFO", "noColor": True},
        "accessLog": {
            "filePath": str(state / "traefik-access.log"),
            "format": "json",
            "fields": {"headers": {"names": {"X-Request-Id": "keep"}}},
            "filters": {
                "statusCodes": ["400-599"],
                "retryAttempts": True,
                "minDuration": "1s",
            },
        },
        "api": {"dashboard": True},
        "providers": {"file": {"directory": str(REPO_DIR / "traefik" / "dynamic")}},
        "entryPoints": {
            name: {
                "address": f"{HOST}:{port}",
                "http": {"aliasHeadersStrategy": "delete"},
            }
            for name, port in (
                ("web", web),
                ("adminer", adminer),
                ("dashboard", dashboard),
            )
        },
    }
    workdir = state / "traefik"  # no stray ./traefik.yml in Traefik's directory
    workdir.mkdir(exist_ok=True)
    config_file = workdir / "static.json"
    config_file.write_text(json.dumps(config))
    env = {
        **os.environ,
        "GOMAXPROCS": os.environ.get("PROXY_GOMAXPROCS") or "1",
        "DOMAIN": "localhost",
        "PROXY_HTTPS": "false",
        "BACKEND_SERVERS": backend_url,
    }
    cmd = [str(binary), f"--configFile={config_file}"]
    proc = Process("traefik", cmd, env=env, cwd=workdir, log=state / "traefik.log")
    return proc, f"http://{HOST}:{web}"


@dataclass
class Load:
    """One wrk run's results."""

    requests: int
    seconds: float
    non2xx: int
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    latency_us: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.non2xx + sum(self.socket_errors.values())

    def ms(self, percentile: str) -> float:
        return self.latency_us[percentile] / 1000


def combine(loads: list[Load]) -> Load:
    """Runs of one scenario as one: counts summed, latency percentiles averaged."""
    statuses: dict[str, int] = {}
    socket_errors: dict[str, int] = {}
    for load in loads:
        for code, count in load.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
        for kind, count in load.socket_errors.items():
            socket_errors[kind] = socket_errors.get(kind, 0) + count
    return Load(
        requests=sum(load.requests for load in loads),
        seconds=sum(load.seconds for load in loads),
        non2xx=sum(load.non2xx for load in loads),
        statuses=statuses,
        socket_errors=socket_errors,
        latency_us={
            key: statistics.fmean(load.latency_us[key] for load in loads)
            for key in loads[0].latency_us
        },
    )


def start_wrk(
    url: str,
    *,
    concurrency: int,
    seconds: float,
    threads: int,
    args: dict[str, str],
    log: Path,
) -> subprocess.Popen[str]:
    cmd = [
        "wrk",
        f"-t{min(threads, concurrency)}",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LOAD_SCRIPT),
        url,
        "--",
        *(f"{key}={value}" for key, value in args.items()),
    ]
    with log.open("a") as out:  # without the arguments: they hold a token
        out.write("$ " + " ".join(cmd[: cmd.index("--")]) + " -- ...\n")
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish_wrk(popen: subprocess.Popen[str], *, timeout: float, log: Path) -> Load:
    try:
        output, _ = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.communicate()
        raise
    with log.open("a") as out:
        out.write(output)
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            data = json.loads(line.removeprefix("BENCH_RESULT "))
            return Load(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                non2xx=data["non2xx"],
                statuses=data["statuses"],
                socket_errors=data["socket_errors"],
                latency_us=data["latency_us"],
            )
    raise RuntimeError(f"wrk failed (exit {popen.returncode}):\n{output}")


def open_loop(
    url: str,
    *,
    rate: float,
    seconds: float,
    headers: list[str],
) -> tuple[Load, dict[str, Any]]:
    """bench/openloop.py in its own process: `rate` requests/s for `seconds`.
    Returns the load and the generator's own figures (CPU, lag, connections)."""
    cmd = [
        sys.executable,
        "-m",
        "bench.openloop",
        url,
        f"--rate={rate:.1f}",
        f"--seconds={seconds}",
        *(f"--header={header}" for header in headers),
    ]
    done = subprocess.run(
        cmd,
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.openloop failed ({done.returncode}):\n{done.stderr}")
    data: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    load = Load(
        requests=data["requests"],
        seconds=data["seconds"],
        non2xx=sum(data["statuses"].values()),
        statuses=data["statuses"],
        socket_errors=data["socket_errors"],
        latency_us=data["latency_us"],
    )
    return load, data


def wrk(
    url: str,
    *,
    concurrency: int,
    seconds: float,
    threads: int,
    args: dict[str, str],
    log: Path,
) -> Load:
    popen = start_wrk(
        url,
        concurrency=concurrency,
        seconds=seconds,
        threads=threads,
        args=args,
        log=log,
    )
    return finish_wrk(popen, timeout=seconds + 60, log=log)
