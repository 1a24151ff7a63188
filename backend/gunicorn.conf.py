"""gunicorn's settings for this app: gunicorn reads ./gunicorn.conf.py from its
working directory (backend/), so every gunicorn command started here uses them."""

import os
import shutil
import tempfile
from pathlib import Path

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from app.core.config import settings

# Only the reverse proxy may set X-Forwarded-For/-Proto (the client address
# behind the rate limits and the sessions list): gunicorn's own default trusted
# 127.0.0.1. Flags on the command line still win.
forwarded_allow_ips = settings.FORWARDED_ALLOW_IPS

# Prometheus metrics of every worker (app/core/metrics.py): each worker writes
# its counts to files in this directory, a scrape of any worker sums them.
# prometheus_client picks its mode when first imported, so the variable is set
# here, in the master, before any worker imports the app; and prometheus_client
# is imported only in the hooks below, never while this file loads.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
OWN_DIR_PREFIX = "prometheus-multiproc-"


def on_starting(_server: Arbiter) -> None:
    """Start every count at zero: the files of a previous run are deleted from
    a directory given in PROMETHEUS_MULTIPROC_DIR; without one, a new directory
    of this server's own (removed when it exits)."""
    if not settings.METRICS_ENABLED:
        return
    given = os.environ.get(MULTIPROC_DIR)
    if given is None:
        os.environ[MULTIPROC_DIR] = tempfile.mkdtemp(prefix=OWN_DIR_PREFIX)
        return
    Path(given).mkdir(parents=True, exist_ok=True)
    for stale in Path(given).glob("*.db"):
        stale.unlink()


def child_exit(_server: Arbiter, worker: Worker) -> None:
    """A dead worker's gauges (connections in use) leave the sums; its counters stay."""
    if settings.METRICS_ENABLED:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(_server: Arbiter) -> None:
    # Recognised by its name: a reload (SIGHUP) runs this file again, so no
    # variable here remembers the directory on_starting created.
    directory = Path(os.environ.get(MULTIPROC_DIR, "/"))
    if directory.parent == Path(tempfile.gettempdir()) and directory.name.startswith(
        OWN_DIR_PREFIX
    ):
        shutil.rmtree(directory, ignore_errors=True)
