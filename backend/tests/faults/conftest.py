"""Fixtures of the fault tests: a PostgreSQL cluster of their own, a database migrated
once (as scripts/prestart.sh does) as the template of each test's database.
Helpers are in tests/utils/faults.py."""

import asyncio
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import make_url

from tests.utils.database import alembic_config
from tests.utils.faults import (
    Cluster,
    Record,
    create_superuser,
    database_of_test,
    postgres_bin_dir,
)
from tests.utils.servers import free_port


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="faults-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
    cluster = Cluster(root=root, bin_dir=postgres_bin_dir(), port=free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.is_running():
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(cluster: Cluster) -> str:
    """What prestart makes (the schema, the superuser), done here once and copied
    for each test: three fewer interpreter starts per test."""
    name = "faults_template"
    cluster.create_database(name)
    url = make_url(cluster.url(name))
    command.upgrade(alembic_config(url), "head")
    asyncio.run(create_superuser(url))
    return name


@pytest.fixture
def database(cluster: Cluster, template_database: str) -> Iterator[str]:
    """A migrated database with the superuser, of this test only."""
    yield from database_of_test(cluster, template_database)


@pytest.fixture
def empty_database(cluster: Cluster) -> Iterator[str]:
    yield from database_of_test(cluster, "template1")


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    """Keep a measured number with the test's report (JUnit XML properties)."""

    def add(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))

    return add
