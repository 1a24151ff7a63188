import json
import os
import secrets
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AnyUrl,
    BeforeValidator,
    EmailStr,
    Field,
    HttpUrl,
    computed_field,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy import URL, make_url

BACKEND_DIR = Path(__file__).resolve().parents[2]
PLACEHOLDER_SECRET = "changethis"
# Settings that hold credentials. Each may instead be read from the file that
# the environment variable <NAME>_FILE names (the convention of Docker, Swarm
# and Kubernetes secrets), never from both.
SECRET_SETTINGS = (
    "SECRET_KEY",
    "POSTGRES_PASSWORD",
    "FIRST_SUPERUSER_PASSWORD",
    "SMTP_PASSWORD",
    "SUPABASE_JWT_SECRET",
    "DATABASE_URL",
    "REDIS_URL",
)


def parse_cors(value: Any) -> list[str] | Any:
    """Accept a JSON list or a comma-separated string."""
    if isinstance(value, str) and value.strip().startswith("["):
        return json.loads(value)
    if isinstance(value, str):
        return [origin.strip() for origin in value.split(",") if origin.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        # The top-level .env, shared with docker compose; real env vars win.
        env_file=BACKEND_DIR.parent / ".env",
        env_ignore_empty=True,
        extra="ignore",
    )

    # General
    ENVIRONMENT: Literal["local", "staging", "production"] = "local"
    PROJECT_NAME: str = "FastAPI SQLModel Backend"
    API_V1_STR: str = "/api/v1"
    FRONTEND_HOST: str = "http://localhost:5173"
    BACKEND_CORS_ORIGINS: Annotated[
        list[AnyUrl] | str, NoDecode, BeforeValidator(parse_cors)
    ] = []
    LOG_LEVEL: str = "INFO"
    MAX_PAGE_SIZE: int = Field(default=100, ge=1)
    # Largest request body (bytes): above it, 413 before the body is read whole.
    MAX_REQUEST_BODY_BYTES: int = Field(default=1024 * 1024, ge=0)
    # Peers trusted to set X-Forwarded-For/-Proto (comma-separated IPs or
    # networks): the reverse proxy's address, nothing else. Empty: none (the
    # servers' own default trusted 127.0.0.1, so anything relaying on the same
    # host could choose its client address). Read by gunicorn.conf.py and
    # `manage.py run`; Docker Compose sets the proxy's.
    FORWARDED_ALLOW_IPS: str = ""
    # Swagger UI, ReDoc and the OpenAPI document; unset: on, except in production.
    DOCS_ENABLED: bool | None = None
    SENTRY_DSN: HttpUrl | None = None
    # GET /metrics (Prometheus) and the request metrics middleware; off: neither.
    METRICS_ENABLED: bool = True

    # Auth. SECRET_KEY has no default: outside local it must be set.
    SECRET_KEY: str = ""
    ACCESS_TOKEN_EXPIRE_MINUTES: int = Field(default=30, ge=1)
    # A refresh token lives this long unused; a session, however used, at most
    # SESSION_MAX_AGE_DAYS. Each refresh rotates the refresh token.
    REFRESH_TOKEN_EXPIRE_DAYS: int = Field(default=7, ge=1)
    SESSION_MAX_AGE_DAYS: int = Field(default=30, ge=1)
    PASSWORD_HASH_CONCURRENCY: int = Field(default=2, ge=1)
    # Argon2id cost of new hashes; the defaults are OWASP's first recommended
    # configuration (19 MiB, 2 passes, 1 lane). Stored hashes of other costs
    # still verify and are re-hashed at the next login.
    ARGON2_MEMORY_KIB: int = Field(default=19_456, ge=7_168)
    ARGON2_TIME_COST: int = Field(default=2, ge=1)
    ARGON2_PARALLELISM: int = Field(default=1, ge=1)
    REQUIRE_EMAIL_VERIFICATION: bool = False
    EMAIL_VERIFY_TOKEN_EXPIRE_HOURS: int = Field(default=48, ge=1)

    # Rate limits (sliding windows), shared by all workers and replicas: kept in
    # PostgreSQL (or the SQLite file), or in Redis when REDIS_URL is set. Client
    # limits are per IP address: sized so that an office or a school behind one
    # NAT address gets through its launch day (README, "Rate limits and lockout").
    REDIS_URL: str | None = None
    # Failed logins for one account from one client address (then that address
    # waits, not the account's owner), from all addresses together (then only
    # addresses that signed in to the account before get through), and from one
    # address across all accounts.
    LOGIN_MAX_FAILURES_PER_ACCOUNT: int = Field(default=10, ge=1)
    LOGIN_MAX_FAILURES_PER_ACCOUNT_ALL_ADDRESSES: int = Field(default=100, ge=1)
    LOGIN_MAX_FAILURES_PER_ADDRESS: int = Field(default=100, ge=1)
    LOGIN_FAILURE_WINDOW_SECONDS: int = Field(default=15 * 60, ge=1)
    # Sign-ups per client address (they send no email twice to one address).
    SIGNUPS_PER_CLIENT: int = Field(default=40, ge=1)
    SIGNUP_WINDOW_SECONDS: int = Field(default=60, ge=1)
    # Emails on request (recovery, verification, email change): one of a kind per
    # address per cooldown; per address, per address from one client, per client.
    EMAIL_COOLDOWN_SECONDS: int = Field(default=60, ge=1)
    EMAIL_REQUESTS_PER_ADDRESS: int = Field(default=10, ge=1)
    EMAIL_REQUESTS_PER_ADDRESS_AND_CLIENT: int = Field(default=3, ge=1)
    EMAIL_REQUESTS_PER_CLIENT: int = Field(default=100, ge=1)
    EMAIL_REQUEST_WINDOW_SECONDS: int = Field(default=60 * 60, ge=1)

    # Supabase token exchange: off unless SUPABASE_URL (JWKS) or
    # SUPABASE_JWT_SECRET (legacy HS256 secret) is set.
    SUPABASE_URL: HttpUrl | None = None
    SUPABASE_JWT_SECRET: str | None = None
    SUPABASE_JWT_AUDIENCE: str = "authenticated"
    SUPABASE_JWKS_CACHE_SECONDS: int = Field(default=600, ge=0)

    # Database: DATABASE_URL wins, else POSTGRES_* when POSTGRES_SERVER is set,
    # else an embedded SQLite file so a local run needs no server.
    DATABASE_URL: str | None = None
    POSTGRES_SERVER: str | None = None
    POSTGRES_PORT: int = 5432
    POSTGRES_USER: str = "postgres"
    POSTGRES_PASSWORD: str = ""
    POSTGRES_DB: str = "app"
    SQLITE_PATH: Path = BACKEND_DIR / "app.db"
    DB_POOL_SIZE: int = Field(default=20, ge=1)
    DB_MAX_OVERFLOW: int = Field(default=10, ge=0)
    DB_POOL_TIMEOUT: float = Field(default=10.0, gt=0)
    DB_POOL_RECYCLE: int = 1800
    DB_POOL_PRE_PING: bool = True
    DB_STATEMENT_TIMEOUT_MS: int = Field(default=15_000, ge=0)
    # Seconds to open a connection: with the database down, requests fail with
    # 503 after this long instead of hanging.
    DB_CONNECT_TIMEOUT: int = Field(default=5, ge=2)

    # First superuser, created by prestart / `manage.py initdb`
    FIRST_SUPERUSER: EmailStr = "admin@example.com"
    FIRST_SUPERUSER_PASSWORD: str = PLACEHOLDER_SECRET

    # Email
    SMTP_HOST: str | None = None
    SMTP_PORT: int = 587
    SMTP_USER: str | None = None
    SMTP_PASSWORD: str | None = None
    SMTP_TLS: bool = True
    SMTP_SSL: bool = False
    SMTP_TIMEOUT: float = Field(default=10.0, gt=0)
    EMAILS_FROM_EMAIL: EmailStr | None = None
    EMAILS_FROM_NAME: str | None = None
    EMAIL_RESET_TOKEN_EXPIRE_HOURS: int = Field(default=1, ge=1)
    # Transient SMTP failures (connection refused, 4xx replies) are retried.
    EMAIL_SEND_ATTEMPTS: int = Field(default=3, ge=1)
    EMAIL_RETRY_WAIT_SECONDS: float = Field(default=2.0, ge=0)
    # An email job whose sends keep failing transiently is retried, waits doubling
    # from EMAIL_JOB_RETRY_WAIT_SECONDS up to an hour, for EMAIL_DELIVERY_HOURS;
    # then it is marked failed (`manage.py jobs retry` sends it again).
    EMAIL_DELIVERY_HOURS: float = Field(default=24, gt=0)
    EMAIL_JOB_RETRY_WAIT_SECONDS: float = Field(default=60, gt=0)

    # Background jobs (procrastinate, in PostgreSQL; in process on SQLite)
    JOBS_WORKER_CONCURRENCY: int = Field(default=4, ge=1)
    # How often an idle worker looks for jobs that became due (new jobs wake it
    # at once through LISTEN/NOTIFY).
    JOBS_POLL_SECONDS: float = Field(default=5.0, gt=0)
    # A worker silent this long is taken for dead: its running jobs run again.
    JOBS_STALLED_SECONDS: float = Field(default=60, ge=5)
    # Succeeded and cancelled jobs are deleted after this long; failed ones stay.
    JOBS_KEEP_DAYS: int = Field(default=14, ge=1)
    # Ended sessions (expired or revoked) stay listed for the lockout's "signed in
    # from this address before" this long, then are deleted.
    SESSIONS_KEEP_DAYS: int = Field(default=90, ge=1)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def all_cors_origins(self) -> list[str]:
        origins = [str(origin).rstrip("/") for origin in self.BACKEND_CORS_ORIGINS]
        return [*origins, self.FRONTEND_HOST.rstrip("/")]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def SQLALCHEMY_DATABASE_URI(self) -> URL:
        if self.DATABASE_URL:
            url = make_url(self.DATABASE_URL)
            if url.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
                url = url.set(drivername="postgresql+psycopg")
            if url.drivername == "sqlite":
                url = url.set(drivername="sqlite+aiosqlite")
            return url
        if self.POSTGRES_SERVER:
            return URL.create(
                "postgresql+psycopg",
                username=self.POSTGRES_USER,
                password=self.POSTGRES_PASSWORD or None,
                host=self.POSTGRES_SERVER,
                port=self.POSTGRES_PORT,
                database=self.POSTGRES_DB,
            )
        return URL.create("sqlite+aiosqlite", database=str(self.SQLITE_PATH))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def docs_enabled(self) -> bool:
        if self.DOCS_ENABLED is None:
            return self.ENVIRONMENT != "production"
        return self.DOCS_ENABLED

    @computed_field  # type: ignore[prop-decorator]
    @property
    def supabase_enabled(self) -> bool:
        return bool(self.SUPABASE_URL or self.SUPABASE_JWT_SECRET)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def emails_enabled(self) -> bool:
        return bool(self.SMTP_HOST and self.EMAILS_FROM_EMAIL)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, values: dict[str, Any]) -> dict[str, Any]:
        for name in SECRET_SETTINGS:
            path = os.environ.get(f"{name}_FILE")
            if not path:
                continue
            if values.get(name) is not None:
                raise ValueError(
                    f"{name} is set both directly and by {name}_FILE: keep one"
                )
            try:
                # Secret files usually end with a newline that is not the secret's.
                values[name] = Path(path).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(
                    f"{name}_FILE: cannot read {path}: {exc.strerror}"
                ) from None
        return values

    @model_validator(mode="after")
    def _enforce_secrets(self) -> Self:
        if not self.EMAILS_FROM_NAME:
            self.EMAILS_FROM_NAME = self.PROJECT_NAME
        checked = ["SECRET_KEY", "FIRST_SUPERUSER_PASSWORD"]
        if self.POSTGRES_SERVER and not self.DATABASE_URL:
            checked.append("POSTGRES_PASSWORD")
        for name in checked:
            if getattr(self, name) != PLACEHOLDER_SECRET:
                continue
            message = f'{name} is "{PLACEHOLDER_SECRET}"; change it, at least for deployments.'
            if self.ENVIRONMENT != "local":
                raise ValueError(message)
            warnings.warn(message, stacklevel=1)
        if not self.SECRET_KEY:
            if self.ENVIRONMENT != "local":
                raise ValueError("SECRET_KEY must be set outside local development.")
            # A per-process key: tokens do not survive restarts in local runs.
            self.SECRET_KEY = secrets.token_urlsafe(32)
        elif self.ENVIRONMENT != "local" and len(self.SECRET_KEY) < 32:
            raise ValueError("SECRET_KEY must be at least 32 characters long.")
        return self


settings = Settings()
