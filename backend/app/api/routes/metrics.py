"""GET /metrics for Prometheus, at the root: the proxy's public routers do not
route it; Prometheus scrapes each backend directly (README, "Metrics")."""

import logging

from fastapi import APIRouter
from fastapi.responses import Response
from procrastinate.jobs import Status
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.concurrency import run_in_threadpool

from app import jobs
from app.api.deps import SessionDep
from app.core import metrics

logger = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def read_metrics(session: SessionDep) -> Response:
    """Every worker's metrics in Prometheus's text format, and the job queue."""
    families = []
    if not jobs.in_process:  # on SQLite jobs run in the API's process: no queue
        try:
            counts = await jobs.count_jobs(session)
        except (DBAPIError, PoolTimeoutError, OSError) as exc:
            # The request metrics still matter most while the database is down.
            logger.warning("Job queue not measured: %s", type(exc).__name__)
        else:
            queue = GaugeMetricFamily(
                "job_queue_jobs", "Background jobs by status", labels=["status"]
            )
            for status in Status:
                queue.add_metric([status.value], counts.get(status.value, 0))
            families.append(queue)
    # Reading every worker's files is blocking I/O: off the event loop.
    body = await run_in_threadpool(metrics.exposition, *families)
    # The classic text format, which every Prometheus version reads.
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)
