"""Audit trail: the table of security events (logins, password and role
changes, session revocations...), kept AUDIT_RETENTION_DAYS.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("client_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=255), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("target_id", sa.Uuid(), nullable=True),
        sa.Column("target_role", sa.String(length=16), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(
        "ix_audit_events_created_at_id", "audit_events", ["created_at", "id"]
    )
    for column in ("target_role", "action", "actor_id", "target_id"):
        op.create_index(
            f"ix_audit_events_{column}_created_at_id",
            "audit_events",
            [column, "created_at", "id"],
        )


def downgrade() -> None:
    op.drop_table("audit_events")
