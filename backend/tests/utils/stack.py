"""The stack of scripts/stack.sh (Traefik in front of two backend replicas, Adminer,
an SMTP sink, Prometheus if asked): starting it, stopping it, checking no process
it started is left."""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL

from tests.utils.servers import free_port, wait_until

BACKEND_DIR = Path(__file__).resolve().parents[2]
STACK_SH = BACKEND_DIR / "scripts" / "stack.sh"
SUPERUSER = ("stack-admin@example.com", "stack-admin-password")
DOMAIN = "localhost"
PROCESSES = ("smtp", "backend-1", "backend-2", "worker", "adminer", "traefik")


@dataclass(frozen=True)
class Stack:
    state_dir: Path
    proxy_port: int
    https_port: int
    adminer_port: int
    dashboard_port: int
    metrics_url: str  # Traefik's own metrics, on its internal entrypoint
    prometheus_url: str  # Prometheus, when STACK_PROMETHEUS is true
    backend_ports: tuple[int, int]
    smtp_port: int
    database_url: URL
    env: dict[str, str]

    @property
    def url(self) -> str:
        """The API and docs through Traefik."""
        return f"http://{DOMAIN}:{self.proxy_port}"

    @property
    def adminer_url(self) -> str:
        return f"http://{DOMAIN}:{self.adminer_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{DOMAIN}:{self.dashboard_port}"

    @property
    def processes(self) -> tuple[str, ...]:
        """The names of the processes stack.sh starts with these settings."""
        prometheus = self.env.get("STACK_PROMETHEUS") == "true"
        return (*PROCESSES, "prometheus") if prometheus else PROCESSES

    def backend_url(self, replica: int) -> str:
        """One replica directly, without the proxy."""
        return f"http://127.0.0.1:{self.backend_ports[replica - 1]}"

    def pid(self, name: str) -> int:
        return int((self.state_dir / f"{name}.pid").read_text().split()[0])

    def log(self, name: str) -> str:
        return (self.state_dir / f"{name}.log").read_text(errors="replace")


def stop(process: subprocess.Popen[bytes]) -> None:
    """A process a test started: TERM, KILL if it is still there after 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def process_groups() -> dict[int, int]:
    """pid -> process group id of every process (zombies included)."""
    groups = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        groups[int(entry.name)] = int(fields[2])
    return groups


def new_stack(
    state_dir: Path,
    database_url: URL,
    *,
    proxy_port: int | None = None,
    https_port: int | None = None,
    **settings: str,
) -> Stack:
    """The settings of a stack on free loopback ports (or the given proxy ports),
    with `settings` (environment variables) added."""
    ports = [free_port() for _ in range(8)]
    proxy_port = proxy_port or free_port()
    https_port = https_port or free_port()
    return Stack(
        state_dir=state_dir,
        proxy_port=proxy_port,
        https_port=https_port,
        adminer_port=ports[0],
        dashboard_port=ports[1],
        metrics_url=f"http://127.0.0.1:{ports[6]}/metrics",
        prometheus_url=f"http://127.0.0.1:{ports[7]}",
        backend_ports=(ports[2], ports[3]),
        smtp_port=ports[4],
        database_url=database_url,
        env={
            **os.environ,
            "STACK_STATE_DIR": str(state_dir),
            "STACK_VENV": sys.prefix,
            "STACK_PROXY_PORT": str(proxy_port),
            "STACK_HTTPS_PORT": str(https_port),
            "STACK_ADMINER_PORT": str(ports[0]),
            "STACK_DASHBOARD_PORT": str(ports[1]),
            "STACK_BACKEND_PORTS": f"{ports[2]} {ports[3]}",
            "STACK_SMTP_PORT": str(ports[4]),
            "STACK_ADMINER_PHP_PORT": str(ports[5]),
            "STACK_METRICS_PORT": str(ports[6]),
            "STACK_PROMETHEUS_PORT": str(ports[7]),
            "STACK_HEALTHCHECK_INTERVAL": "1s",
            # Retries are logged at DEBUG only (not in the access log's RetryAttempts).
            "STACK_TRAEFIK_LOG_LEVEL": "DEBUG",
            "STACK_START_TIMEOUT": "60",
            "DOMAIN": DOMAIN,
            "DATABASE_URL": database_url.render_as_string(hide_password=False),
            "FIRST_SUPERUSER": SUPERUSER[0],
            "FIRST_SUPERUSER_PASSWORD": SUPERUSER[1],
            "SECRET_KEY": "stack-test-secret-key-0123456789abcdefghij",
            "ENVIRONMENT": "local",
            **settings,
        },
    )


def tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """`stack.sh start`, then `stop` with a check that no process it started is left."""
    state_dir = stack.state_dir
    groups: set[int] = set()
    try:
        # Output to a file, not a pipe that a process left behind could hold open;
        # the trace (-x) apart, shown on a hang: the line it stopped on.
        output = state_dir.with_name(f"{state_dir.name}-start.log")
        trace = state_dir.with_name(f"{state_dir.name}-start.trace")
        with output.open("w") as log_file, trace.open("w") as trace_file:
            starting = subprocess.Popen(
                ["bash", "-x", str(STACK_SH), "start"],
                env={**stack.env, "BASH_XTRACEFD": str(trace_file.fileno())},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=[trace_file.fileno()],
            )
            try:
                returncode = starting.wait(timeout=150)
            except subprocess.TimeoutExpired:
                processes = subprocess.run(
                    [
                        "ps",
                        "-eo",
                        "pid,ppid,pgid,etimes,stat,wchan:24,args",
                        "--forest",
                    ],
                    capture_output=True,
                    text=True,
                ).stdout
                starting.kill()
                starting.wait()
                raise AssertionError(
                    f"stack.sh start hung:\n{output.read_text()}\n"
                    f"last traced lines:\n{tail(trace.read_text(), 40)}\n{processes}"
                ) from None
        started_output = output.read_text()
        groups = {
            int((state_dir / f"{name}.pid").read_text().split()[0])
            for name in stack.processes
            if (state_dir / f"{name}.pid").exists()
        }
        assert returncode == 0, f"stack.sh start failed:\n{started_output}"
        assert groups == {stack.pid(name) for name in stack.processes}
        yield stack
    finally:
        stopped = subprocess.run(
            ["bash", str(STACK_SH), "stop"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        # Stopped processes vanish once reaped (by init: they outlive stack.sh).
        wait_until(
            lambda: not any(g in groups for g in process_groups().values()),
            timeout=15,
            what=f"the stack's processes to end ({stopped.stderr})",
        )
        assert stopped.returncode == 0, stopped.stderr
        assert not list(state_dir.glob("*.pid"))
