"""Wait until the database answers (bounded), so migrations do not race its start."""

import asyncio
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import after_log, before_sleep_log, retry, stop_after_delay, wait_fixed

from app.core.db import engine

logger = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 300


@retry(
    stop=stop_after_delay(MAX_WAIT_SECONDS),
    wait=wait_fixed(1),
    before_sleep=before_sleep_log(logger, logging.WARNING),
    after=after_log(logger, logging.DEBUG),
    reraise=True,
)
async def wait_for_database(db_engine: AsyncEngine) -> None:
    async with db_engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def main() -> None:
    logger.info("Waiting for the database")
    await wait_for_database(engine)
    await engine.dispose()
    logger.info("The database is up")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
