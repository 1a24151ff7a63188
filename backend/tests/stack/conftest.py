"""Fixtures of the stack tests: the stack, started once for this package on a
PostgreSQL database of its own (`<POSTGRES_DB>_test_stack`, dropped afterwards),
and stopped after its last test. Helpers are in tests/utils/stack.py."""

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import URL

from tests.utils.database import empty_database
from tests.utils.stack import Stack, new_stack, running


@pytest.fixture(scope="package")
def stack_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    """`<POSTGRES_DB>_test_stack`: empty, never the app's own database."""
    tmp_dir = tmp_path_factory.mktemp("stack-db")
    for url in empty_database("test_stack", tmp_dir):
        if url.get_backend_name() != "postgresql":
            pytest.fail(
                "The stack tests need PostgreSQL (Adminer, two replicas on one "
                "database): set POSTGRES_SERVER, or leave tests/stack out of a "
                "SQLite run."
            )
        yield url


@pytest.fixture(scope="package")
def stack(
    stack_database_url: URL, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("stack")
    # Prometheus scrapes every second: tests/stack/test_metrics.py queries it.
    settings = new_stack(
        state_dir,
        stack_database_url,
        STACK_PROMETHEUS="true",
        STACK_SCRAPE_INTERVAL="1s",
    )
    with running(settings) as started:
        yield started


@pytest.fixture
def proxy(stack: Stack) -> Iterator[httpx.Client]:
    """A client of the API through Traefik."""
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        yield client
