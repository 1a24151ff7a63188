"""Every path in .vscode/ resolves, and the launch configurations run as written."""

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import URL

from tests.utils.servers import answers, free_port, wait_until

REPO = Path(__file__).resolve().parents[3]
VSCODE = REPO / ".vscode"


def resolve(value: str) -> str:
    return value.replace("${workspaceFolder}", str(REPO))


def load(name: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads((VSCODE / name).read_text())
    return parsed


def launch_configuration(name: str) -> dict[str, Any]:
    configurations: dict[str, dict[str, Any]] = {
        c["name"]: c for c in load("launch.json")["configurations"]
    }
    return configurations[name]


def test_interpreter_and_test_folder_exist() -> None:
    settings = load("settings.json")
    interpreter = Path(resolve(settings["python.defaultInterpreterPath"]))
    assert os.access(interpreter, os.X_OK)
    assert Path(resolve(settings["python.envFile"])).is_file()
    assert Path(resolve(launch_configuration("Debug tests")["envFile"])).is_file()
    testing_cwd = Path(resolve(settings["python.testing.cwd"]))
    for arg in settings["python.testing.pytestArgs"]:
        assert (testing_cwd / arg).is_dir()


def test_testing_panel_discovers_the_suite() -> None:
    settings = load("settings.json")
    result = subprocess.run(
        [
            resolve(settings["python.defaultInterpreterPath"]),
            "-m",
            "pytest",
            "--collect-only",
            "-q",
        ]
        + settings["python.testing.pytestArgs"],
        cwd=resolve(settings["python.testing.cwd"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tests/api/routes/test_items.py::" in result.stdout


def test_attach_maps_the_backend_folder_to_the_image_workdir() -> None:
    attach = launch_configuration("Attach to backend in Docker")
    (mapping,) = attach["pathMappings"]
    assert (Path(resolve(mapping["localRoot"])) / "app" / "main.py").is_file()
    dockerfile = (REPO / "backend" / "Dockerfile").read_text()
    assert f"WORKDIR {mapping['remoteRoot']}\n" in dockerfile
    compose = (REPO / "docker-compose.override.yml").read_text()
    assert f"0.0.0.0:{attach['connect']['port']}" in compose


def test_launch_paths_exist() -> None:
    for configuration in load("launch.json")["configurations"]:
        for key in ("cwd", "python"):
            if key in configuration:
                assert Path(resolve(configuration[key])).exists(), (
                    configuration["name"],
                    key,
                )
    tasks = {task["label"]: task for task in load("tasks.json")["tasks"]}
    assert launch_configuration("Debug backend")["preLaunchTask"] in tasks


def test_initdb_task_runs(scratch_database_url: URL) -> None:
    (task,) = load("tasks.json")["tasks"]
    env = {
        **os.environ,
        "DATABASE_URL": scratch_database_url.render_as_string(hide_password=False),
    }
    result = subprocess.run(
        [resolve(task["command"]), *task["args"]],
        cwd=resolve(task["options"]["cwd"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Superuser:" in result.stdout


def debugpy_command(configuration: dict[str, Any], debug_port: int) -> list[str]:
    """What VS Code runs for a launch configuration, with debugpy listening."""
    return [
        resolve(configuration["python"]),
        *("-m", "debugpy", "--listen", f"127.0.0.1:{debug_port}"),
        *("-m", configuration["module"]),
        *configuration["args"],
    ]


def test_debug_backend_serves_the_api(tmp_path: Path) -> None:
    configuration = launch_configuration("Debug backend")
    args = configuration["args"]
    base_url = (
        f"http://{args[args.index('--host') + 1]}:{args[args.index('--port') + 1]}"
    )
    with pytest.raises(httpx.TransportError):
        httpx.get(base_url, timeout=1)  # the port must be free for the run as written
    log = (tmp_path / "debug-backend.log").open("w")
    server = subprocess.Popen(
        debugpy_command(configuration, free_port()),
        cwd=resolve(configuration["cwd"]),
        env={**os.environ, **configuration.get("env", {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # --reload starts children: stop the whole group
    )
    try:
        health = f"{base_url}/api/v1/utils/health-check/"
        wait_until(
            lambda: answers(health),
            60,
            "the debugged backend to answer",
            log=tmp_path / "debug-backend.log",
        )
        assert httpx.get(health).json() is True
        assert httpx.get(f"{base_url}/docs").status_code == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
