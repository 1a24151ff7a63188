"""Fixtures of the Swarm tests: the compose tests' kind of Docker Engine, in
swarm mode, with the stack deployed. Helpers are in tests/utils/swarm.py."""

from collections.abc import Iterator

import pytest

from tests.utils.compose import Engine, running_engine
from tests.utils.swarm import NUMBERS, Swarm, init, remove


@pytest.fixture(scope="package")
def engine() -> Iterator[Engine]:
    with running_engine() as engine:
        yield engine


@pytest.fixture(scope="package")
def swarm(engine: Engine) -> Iterator[Swarm]:
    try:
        swarm = init(engine)
        swarm.deploy("1")
        yield swarm
    finally:
        remove(engine)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if NUMBERS:
        terminalreporter.section("docker swarm")
        for line in NUMBERS:
            terminalreporter.line(line)
