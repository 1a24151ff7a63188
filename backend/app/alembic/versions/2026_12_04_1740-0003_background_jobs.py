"""Background jobs: procrastinate's schema (its version 3.10.0), on PostgreSQL only.

The SQL is procrastinate's own `schema.sql` of that version, kept beside the
migrations: a later procrastinate adds a migration that applies its files from
`procrastinate/sql/migrations` (backend/README.md, "Background jobs").

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 17:40:00
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = Path(__file__).parents[1] / "sql" / "procrastinate-3.10.0.sql"


def _on_postgresql() -> bool:
    # SQLite runs jobs in process (app/jobs.py): no queue tables.
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _on_postgresql():
        # Several statements with `%` in their text: sent as they are, unparsed.
        op.get_bind().exec_driver_sql(
            SCHEMA.read_text(), execution_options={"no_parameters": True}
        )


def downgrade() -> None:
    if not _on_postgresql():
        return
    op.execute(
        "DROP TABLE procrastinate_events, procrastinate_periodic_defers,"
        " procrastinate_jobs, procrastinate_workers CASCADE"
    )
    op.execute(
        """
        DO $$
        DECLARE routine regprocedure;
        BEGIN
            FOR routine IN
                SELECT oid::regprocedure FROM pg_proc
                WHERE proname LIKE 'procrastinate\\_%'
                  AND pronamespace = current_schema()::regnamespace
            LOOP
                EXECUTE 'DROP ROUTINE ' || routine;
            END LOOP;
        END $$
        """
    )
    op.execute(
        "DROP TYPE procrastinate_job_to_defer_v1, procrastinate_job_event_type,"
        " procrastinate_job_status"
    )
