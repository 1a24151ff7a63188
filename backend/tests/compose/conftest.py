"""Fixtures of the compose tests: a Docker Engine of this package's own, removed
with everything it added afterwards. Helpers are in tests/utils/compose.py."""

from collections.abc import Iterator

import pytest

from tests.utils.compose import Engine, running_engine


@pytest.fixture(scope="package")
def engine() -> Iterator[Engine]:
    """dockerd on private paths, with the stand-in images built; stopped by PID."""
    with running_engine() as engine:
        yield engine
