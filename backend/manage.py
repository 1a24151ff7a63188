"""Management commands: `uv run python manage.py --help`."""

import asyncio
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from alembic import command
from alembic.config import Config

from app import jobs, worker
from app.core.config import settings
from app.initial_data import create_superuser

cli = typer.Typer(
    help="Manage the backend: serve, migrate, seed, run jobs.", no_args_is_help=True
)
jobs_cli = typer.Typer(
    help="Background jobs: failed ones, retries.", no_args_is_help=True
)
cli.add_typer(jobs_cli, name="jobs")
ALEMBIC_INI = Path(__file__).parent / "alembic.ini"


def alembic_config() -> Config:
    return Config(str(ALEMBIC_INI))


@cli.command()
def run(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    reload: Annotated[bool, typer.Option(help="Restart on code changes.")] = False,
) -> None:
    """Serve the API with uvicorn (development server)."""
    typer.echo(f"API docs: http://{host}:{port}/docs")
    uvicorn.run(
        "app.main:app",
        host=host,
        port=port,
        reload=reload,
        forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS,
    )


@cli.command()
def migrate(
    message: Annotated[str, typer.Option("-m", "--message", help="Revision message.")],
) -> None:
    """Autogenerate a migration from the models (review it before committing)."""
    command.revision(alembic_config(), message=message, autogenerate=True)


@cli.command()
def upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: head)."""
    command.upgrade(alembic_config(), revision)


@cli.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target, e.g. -1 or base.")],
) -> None:
    """Revert migrations down to REVISION."""
    command.downgrade(alembic_config(), revision)


@cli.command()
def createsuperuser(
    email: Annotated[str, typer.Option(prompt=True)],
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)
    ],
) -> None:
    """Create a superuser (or report that the email is taken)."""
    user = asyncio.run(create_superuser(email=email, password=password))
    typer.echo(
        f"Superuser: {user.email}"
        if user.is_superuser
        else f"{user.email} exists and is not a superuser"
    )


@cli.command()
def initdb() -> None:
    """Apply all migrations, then create the first superuser from the settings."""
    command.upgrade(alembic_config(), "head")
    createsuperuser(
        email=settings.FIRST_SUPERUSER, password=settings.FIRST_SUPERUSER_PASSWORD
    )


@cli.command("worker")
def run_worker() -> None:
    """Run background jobs (emails, clean-ups) until stopped (SIGINT/SIGTERM)."""
    if jobs.in_process:
        typer.echo("No job queue on SQLite: jobs run in the API's process.", err=True)
        raise typer.Exit(1)
    asyncio.run(worker.run())


@jobs_cli.command("failed")
def list_failed_jobs() -> None:
    """List the jobs that failed for good (newest last)."""
    failed = asyncio.run(worker.failed_jobs())
    for job in failed:
        typer.echo(
            f"{job.id}\t{job.task_name}\ttries={job.attempts + 1}"
            f"\trequest_id={job.task_kwargs.get('request_id', '-')}"
        )
    typer.echo(f"{len(failed)} failed job(s)")


@jobs_cli.command("retry")
def retry_jobs(
    job_ids: Annotated[list[int] | None, typer.Argument(help="Job ids.")] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Every failed job.")
    ] = False,
) -> None:
    """Queue failed jobs again, by id or all of them."""
    if not job_ids and not all_failed:
        raise typer.BadParameter("give job ids or --all-failed")
    retried = asyncio.run(worker.retry_failed(job_ids if not all_failed else None))
    typer.echo(f"{retried} job(s) queued again")


if __name__ == "__main__":
    cli()
