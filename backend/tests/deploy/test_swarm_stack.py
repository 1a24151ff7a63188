"""deploy/swarm/stack.yml, read by the real Docker Compose binary (it parses
Swarm's `deploy` keys too) and checked against the files it must agree with:
the Dockerfile's command, the compose file's proxy flags and backend labels.
tests/swarm/ deploys it on a real swarm."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.utils.compose_config import REPO, config, env_file_with, run_compose

STACK = "deploy/swarm/stack.yml"
# What `docker stack deploy` needs from the shell (it does not read .env).
REQUIRED = ("FIRST_SUPERUSER", "ACME_EMAIL", "DOMAIN")
SECRETS = ("SECRET_KEY", "POSTGRES_PASSWORD", "FIRST_SUPERUSER_PASSWORD")
SWARM_FLAGS = {
    "--providers.swarm=true",
    "--providers.swarm.exposedByDefault=false",
    "--providers.swarm.defaultRule=ClientIP(`0.0.0.0/32`)",
    "--providers.swarm.refreshSeconds=2s",
}


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    """As `docker stack deploy` reads it: paths relative to the file's own
    directory, variables from the shell (here .env's, as after `set -a; . .env`)."""
    return config(STACK, env_file=REPO / ".env", project_directory=None)


@pytest.fixture(scope="module")
def compose_file() -> dict[str, Any]:
    return config("docker-compose.yml")


def dockerfile_cmd() -> list[str]:
    text = (REPO / "backend" / "Dockerfile").read_text()
    match = re.search(r"^CMD (\[.*?\])", text, re.MULTILINE | re.DOTALL)
    assert match is not None
    cmd: list[str] = json.loads(match.group(1).replace("\\\n", ""))
    return cmd


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match is not None, duration
    return int(match.group(1))


def test_backend_replicas_update_start_first_and_roll_back(
    stack: dict[str, Any],
) -> None:
    deploy = stack["services"]["backend"]["deploy"]
    assert deploy["replicas"] >= 2
    assert deploy["update_config"]["order"] == "start-first"
    assert deploy["update_config"]["failure_action"] == "rollback"
    assert deploy["rollback_config"]["order"] == "start-first"
    # Health-gated: Swarm counts a replica as running once its check passes.
    test = " ".join(stack["services"]["backend"]["healthcheck"]["test"])
    assert "/api/v1/utils/health-check/" in test


def test_backend_migrates_then_runs_the_image_command(stack: dict[str, Any]) -> None:
    command = stack["services"]["backend"]["command"]
    assert command == ["bash", "scripts/start.sh", *dockerfile_cmd()]
    assert (REPO / "backend" / "scripts" / "start.sh").is_file()


def test_stop_grace_period_covers_drain_and_graceful_timeout(
    stack: dict[str, Any],
) -> None:
    backend = stack["services"]["backend"]
    command = backend["command"]
    graceful = int(command[command.index("--graceful-timeout") + 1])
    drain = int(backend["environment"]["DRAIN_SECONDS"])
    # Docker's SIGKILL must not come before gunicorn's own deadline.
    assert seconds(backend["stop_grace_period"]) > drain + graceful


def test_secrets_come_from_docker_secrets_as_files(stack: dict[str, Any]) -> None:
    for name in ("backend", "db"):
        service = stack["services"][name]
        mounted = {secret["source"] for secret in service["secrets"]}
        environment = service["environment"]
        for key, value in environment.items():
            if key.endswith("_FILE"):
                assert value.removeprefix("/run/secrets/") in mounted, key
        assert not set(SECRETS) & set(environment), name
    assert all(secret["external"] for secret in stack["secrets"].values())


def test_proxy_flags_are_the_compose_ones_with_the_swarm_provider(
    stack: dict[str, Any], compose_file: dict[str, Any]
) -> None:
    swarm = set(stack["services"]["proxy"]["command"])
    compose = set(compose_file["services"]["proxy"]["command"])
    assert swarm - compose == SWARM_FLAGS
    assert {flag for flag in compose - swarm if "providers.docker" not in flag} == set()
    assert stack["services"]["proxy"]["environment"]["BACKEND_PROVIDER"] == "swarm"


def test_backend_labels_are_the_compose_ones(
    stack: dict[str, Any], compose_file: dict[str, Any]
) -> None:
    labels = stack["services"]["backend"]["deploy"]["labels"]
    assert labels == compose_file["services"]["backend"]["labels"]


def test_proxy_reads_the_repo_routing_files(stack: dict[str, Any]) -> None:
    targets = {c["target"] for c in stack["services"]["proxy"]["configs"]}
    assert targets == {
        f"/etc/traefik/dynamic/{path.name}"
        for path in (REPO / "traefik" / "dynamic").glob("*.yml")
    }
    for swarm_config in stack["configs"].values():
        assert swarm_config["file"].startswith(str(REPO / "traefik" / "dynamic"))


def test_one_database_with_its_volume_never_two_at_once(
    stack: dict[str, Any],
) -> None:
    db = stack["services"]["db"]
    assert db["deploy"].get("replicas", 1) == 1
    assert db["deploy"]["update_config"]["order"] == "stop-first"
    (volume,) = db["volumes"]
    assert volume["target"] == db["environment"]["PGDATA"]


@pytest.mark.parametrize("variable", REQUIRED)
def test_required_variable_missing_fails(variable: str, tmp_path: Path) -> None:
    result = run_compose(
        STACK, env_file=env_file_with(tmp_path, variable, None), project_directory=None
    )
    assert result.returncode != 0
    assert variable in result.stderr


def test_worker_runs_the_backend_image_with_the_compose_health_check(
    stack: dict[str, Any], compose_file: dict[str, Any]
) -> None:
    worker = stack["services"]["worker"]
    assert worker["image"] == stack["services"]["backend"]["image"]
    assert worker["command"] == compose_file["services"]["worker"]["command"]
    assert worker["healthcheck"] == compose_file["services"]["worker"]["healthcheck"]
    assert {s["source"] for s in worker["secrets"]} == {
        s["source"] for s in stack["services"]["backend"]["secrets"]
    }
