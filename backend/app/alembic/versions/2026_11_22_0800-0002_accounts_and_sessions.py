"""Accounts: roles (replacing is_superuser), email verification, sessions with
rotating refresh tokens, and the attempts table of the rate limiter.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("user", "admin", "superadmin")


def _restore_email_index_after_sqlite_batch() -> None:
    # A batch on SQLite copies the table and cannot reflect the expression
    # index on lower(email), so the copy would lose it.
    if op.get_bind().dialect.name == "sqlite":
        op.create_index(
            "uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True
        )


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column(
                "role",
                sa.Enum(*ROLES, name="role", native_enum=False, length=16),
                nullable=False,
                server_default="user",
            )
        )
        batch.add_column(
            sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.execute("UPDATE users SET role = 'superadmin' WHERE is_superuser")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("is_superuser")
        batch.alter_column("role", server_default=None)
        batch.create_check_constraint("role", sa.column("role").in_(ROLES))
    _restore_email_index_after_sqlite_batch()

    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("client_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
    )
    op.create_index("ix_user_sessions_user_id", "user_sessions", ["user_id"])

    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["user_sessions.id"],
            name=op.f("fk_refresh_tokens_session_id_user_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_refresh_tokens")),
    )
    op.create_index("ix_refresh_tokens_session_id", "refresh_tokens", ["session_id"])

    op.create_table(
        "auth_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=320), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_attempts")),
    )
    op.create_index(
        "ix_auth_attempts_key_attempted_at", "auth_attempts", ["key", "attempted_at"]
    )
    op.create_index("ix_auth_attempts_attempted_at", "auth_attempts", ["attempted_at"])


def downgrade() -> None:
    op.drop_table("auth_attempts")
    op.drop_table("refresh_tokens")
    op.drop_table("user_sessions")
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column(
                "is_superuser", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
    op.execute("UPDATE users SET is_superuser = (role = 'superadmin')")
    with op.batch_alter_table("users") as batch:
        batch.alter_column("is_superuser", server_default=None)
        batch.drop_constraint(op.f("ck_users_role"), type_="check")
        batch.drop_column("email_verified_at")
        batch.drop_column("role")
    _restore_email_index_after_sqlite_batch()
