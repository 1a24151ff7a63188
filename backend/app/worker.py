"""The worker process (`python manage.py worker`) and the job commands."""

import asyncio
import logging
import signal
import tempfile
from contextlib import suppress
from pathlib import Path

import procrastinate
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Job
from psycopg_pool import PoolTimeout

from app import jobs
from app.core.config import settings
from app.core.logging import setup_logging
from app.models import utcnow

logger = logging.getLogger(__name__)

# Touched while the worker runs and reaches the database: the container's
# health check reads its age (docker-compose.yml).
ALIVE_FILE = Path(tempfile.gettempdir()) / "app-worker-alive"
# Waits before starting again, doubling up to the longest.
FIRST_RECONNECT_WAIT = 1.0
LONGEST_RECONNECT_WAIT = 30.0


async def run() -> None:
    """Run jobs until SIGINT/SIGTERM (running jobs finish first). While the
    database cannot be reached, at start or later, wait and try again: the
    worker recovers by itself."""
    setup_logging(json_lines=settings.ENVIRONMENT != "local", level=settings.LOG_LEVEL)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    wait = FIRST_RECONNECT_WAIT
    while not stop.is_set():
        try:
            async with jobs.opened() as queue:
                wait = FIRST_RECONNECT_WAIT
                await _work(queue, stop)
        except (ConnectorException, PoolTimeout, OSError) as exc:
            logger.warning("Database unreachable (%r)", exc.__cause__ or exc)
        if stop.is_set():
            return
        logger.warning("Worker stopped by itself: starting again in %.0f s", wait)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        wait = min(wait * 2, LONGEST_RECONNECT_WAIT)


async def _work(queue: procrastinate.App, stop: asyncio.Event) -> None:
    """Run procrastinate's worker until `stop` is set, or until it stops by
    itself (it does when its connection for notifications is lost)."""
    # A worker starting is often one replacing a dead one: pick up its jobs
    # without waiting for the periodic check.
    await jobs.retry_stalled()
    worker = asyncio.create_task(
        queue.run_worker_async(
            concurrency=settings.JOBS_WORKER_CONCURRENCY,
            fetch_job_polling_interval=settings.JOBS_POLL_SECONDS,
            update_heartbeat_interval=settings.JOBS_STALLED_SECONDS / 4,
            stalled_worker_timeout=settings.JOBS_STALLED_SECONDS,
            # Our handlers tell a stop asked for from a stop by itself.
            install_signal_handlers=False,
        )
    )
    stopping = asyncio.create_task(stop.wait())
    alive = asyncio.create_task(_keep_alive_file(queue))
    await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    alive.cancel()
    if stop.is_set():
        worker.cancel()  # procrastinate's graceful stop: running jobs finish
        with suppress(asyncio.CancelledError):
            await worker
        return
    await worker  # raises what stopped it, if anything


async def _keep_alive_file(queue: procrastinate.App) -> None:
    while True:
        if await queue.job_manager.check_connection_async():
            ALIVE_FILE.touch()
        await asyncio.sleep(settings.JOBS_STALLED_SECONDS / 4)


async def failed_jobs() -> list[Job]:
    async with jobs.opened() as queue:
        return list(await queue.job_manager.list_jobs_async(status="failed"))


async def retry_failed(job_ids: list[int] | None) -> int:
    """Queue again the failed jobs among `job_ids` (None: all); their number."""
    async with jobs.opened() as queue:
        failed = await queue.job_manager.list_jobs_async(status="failed")
        retried = [
            job.id
            for job in failed
            if job.id is not None and (job_ids is None or job.id in job_ids)
        ]
        for job_id in retried:
            await queue.job_manager.retry_job_by_id_async(job_id, retry_at=utcnow())
    return len(retried)
