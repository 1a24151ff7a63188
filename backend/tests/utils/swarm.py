"""Docker Swarm on the compose tests' engine (tests/utils/compose.py): a
single-node swarm, the backend image built as the README says, the stack of
deploy/swarm/stack.yml deployed with `docker stack deploy`, all of it removed
afterwards and the engine left as it was found (no swarm)."""

import secrets
import subprocess
from dataclasses import dataclass, field
from typing import Any

from tests.utils.compose import REPO, SUPERUSER, Engine, run
from tests.utils.servers import wait_until

NAME = "fsm"  # the stack: services fsm_backend, fsm_db, fsm_proxy...
STACK_FILE = REPO / "deploy" / "swarm" / "stack.yml"
IMAGE = "fsm-swarm-backend"
PORTS = {"HTTP_PORT": "28080", "HTTPS_PORT": "28443", "ADMINER_PORT": "28081"}
HTTPS = f"https://localhost:{PORTS['HTTPS_PORT']}"
ADMINER = f"https://localhost:{PORTS['ADMINER_PORT']}"
HEALTH = f"{HTTPS}/api/v1/utils/health-check/"
# What the shell exports for `docker stack deploy` (it does not read .env).
SHELL = {
    "FIRST_SUPERUSER": SUPERUSER[0],
    "DOMAIN": "localhost",
    "ACME_EMAIL": "admin@example.com",
    "FRONTEND_HOST": "https://localhost",
    "DOCKER_IMAGE_BACKEND": IMAGE,
    **PORTS,
}
# What each deploy and update measured, printed at the end of the run.
NUMBERS: list[str] = []


@dataclass
class Swarm:
    engine: Engine
    env: dict[str, str] = field(default_factory=lambda: dict(SHELL))

    def deploy(self, tag: str) -> None:
        """The README's command: images are local, no registry to resolve."""
        run(
            ["docker", "stack", "deploy", "-c", str(STACK_FILE),
             "--resolve-image", "never", NAME],
            {**self.engine.env, **self.env, "TAG": tag},
            timeout=120,
        )  # fmt: skip

    def service(self, name: str) -> dict[str, Any]:
        return self.engine.inspect("service", f"{NAME}_{name}")

    def running_tasks(self, name: str) -> list[dict[str, str]]:
        """Running tasks of a service: their id and image."""
        lines = self.engine.docker(
            "service", "ps", f"{NAME}_{name}", "--no-trunc",
            "--filter", "desired-state=running",
            "--format", "{{.ID}} {{.Image}} {{.CurrentState}}",
        ).stdout.splitlines()  # fmt: skip
        tasks = []
        for line in lines:
            task_id, image, state = line.split(" ", 2)
            if state.startswith("Running"):
                tasks.append({"id": task_id, "image": image})
        return tasks

    def containers(self, name: str) -> list[str]:
        """Containers of a service still running (old ones draining included)."""
        return self.engine.docker(
            "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={NAME}_{name}"
        ).stdout.split()

    def converged(self, name: str, replicas: int) -> bool:
        return (
            len(self.running_tasks(name)) == replicas
            and len(self.containers(name)) == replicas
        )

    def psql(self, sql: str) -> list[list[str]]:
        """Rows of a query, run in the database's container."""
        (db,) = self.containers("db")
        out = self.engine.docker(
            "exec", db, "psql", "-U", "postgres", "-d", "app", "-At", "-F", "\t",
            "-c", sql,
        ).stdout  # fmt: skip
        return [line.split("\t") for line in out.splitlines()]


def build_images(engine: Engine) -> None:
    """Release 1 as the README builds it, release 2 (the same code, a new
    image), and a broken release whose API moved (its health check fails)."""
    env = {**engine.env, "DOCKER_IMAGE_BACKEND": IMAGE, "TAG": "1"}
    run(["docker", "compose", "-f", "docker-compose.yml", "build", "backend"],
        env, timeout=900, cwd=REPO)  # fmt: skip
    for tag, change in (("2", "LABEL release=2"), ("broken", "ENV API_V1_STR=/api/v2")):
        subprocess.run(
            ["docker", "build", "--quiet", "-t", f"{IMAGE}:{tag}", "-"],
            input=f"FROM {IMAGE}:1\n{change}\n", env=engine.env,
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip


def create_secrets(engine: Engine) -> None:
    values = {
        "secret_key": secrets.token_urlsafe(32),
        "postgres_password": secrets.token_urlsafe(32),
        "first_superuser_password": SUPERUSER[1],
    }
    for name, value in values.items():
        subprocess.run(
            ["docker", "secret", "create", name, "-"], input=value,
            env=engine.env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip


def init(engine: Engine) -> Swarm:
    leave(engine)  # a swarm a crashed run left in the engine's data root
    # One node; loopback, as a host with several addresses needs one named.
    engine.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    build_images(engine)
    create_secrets(engine)
    return Swarm(engine)


def remove(engine: Engine) -> None:
    """The stack, then swarm mode (its secrets and networks go with it)."""
    engine.docker("stack", "rm", NAME, check=False, timeout=120)
    wait_until(
        lambda: (
            not engine.docker(
                "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={NAME}"
            ).stdout.split()
        ),
        timeout=120,
        what="the stack's containers to go",
        interval=1,
    )
    leave(engine)


def leave(engine: Engine) -> None:
    engine.docker("swarm", "leave", "--force", check=False, timeout=120)
    # The bridge `swarm init` made stays behind otherwise.
    engine.docker("network", "rm", "docker_gwbridge", check=False)
